"""The spectral-density study (sims/studies/spectrum.py), its checks and its figure."""

from __future__ import annotations

import numpy as np
import pytest

from sims.studies import spectrum


def test_config_validates_and_presets() -> None:
    assert spectrum.Config.preset("quick") == spectrum.Config()
    assert spectrum.Config.preset("full").steps > spectrum.Config().steps
    assert spectrum.SIM.name == spectrum.NAME
    with pytest.raises(ValueError, match=r"slq_every \(25\) must be a multiple of record_every"):
        spectrum.Config(slq_every=25)
    with pytest.raises(ValueError, match="probes"):
        spectrum.Config(probes=0)
    with pytest.raises(ValueError, match="scale"):
        spectrum.Config.preset("huge")


def test_weighted_median_of_pooled_rules() -> None:
    nodes = np.array([[0.0, 1.0, 5.0], [0.5, 2.0, 3.0]])
    weights = np.array([[0.2, 0.2, 0.6], [0.5, 0.25, 0.25]])
    # pooled: 0(.2) .5(.5) 1(.2) 2(.25) 3(.25) 5(.6), total 2: the median is where the cdf
    # reaches 1, at 2.0 (cdf 0.2, 0.7, 0.9, 1.15)
    assert spectrum.weighted_median(nodes, weights) == 2.0


@pytest.mark.slow
def test_tiny_run_checks_and_figure(tmp_path) -> None:
    import figures.spectrum
    from sims._store import ResultStore
    from sims.checks import Context, run_checks

    cfg = spectrum.Config(
        n_train=64, widths=(8, 8), steps=40, record_every=10, slq_every=20, probes=2, m=6
    )
    stored = spectrum.run_and_store(cfg, results_dir=tmp_path, progress=False)
    arrays, s = stored.arrays, stored.meta["summary"]
    np.testing.assert_array_equal(arrays["gd.slq_step"], [0, 20, 40])
    assert arrays["gd.slq_nodes"].shape == (3, 2, 6)
    np.testing.assert_allclose(arrays["gd.slq_weights"].sum(axis=-1), 1.0, atol=1e-5)
    # the top Ritz value of 2 probes at depth 6 is a lower bound of the sharpness
    top, lanczos = np.asarray(s["slq_top"]), np.asarray(s["lanczos_at_slq"])
    assert np.all(top <= lanczos * (1 + 1e-4))
    # the midpoint of row 0, recomputed by one GD+WD step (eta = 0 would give the iterate)
    assert arrays["gd.mid_sharpness"].shape == arrays["gd.mid_norm_sq"].shape == (3,)
    assert len(s["mid_over_edge_after"]) == len(s["top_over_edge_after"])
    ctx = Context(ResultStore(tmp_path))
    ctx._cache[spectrum.NAME] = stored
    results = run_checks(ctx, ["spectrum"])
    assert len(results) == 3
    assert np.isfinite(results[0].measured)
    paths = figures.spectrum.main(tmp_path, tmp_path / "out")
    assert len(paths) == 1 and paths[0].stat().st_size > 5_000


def _arrays(mid_sharpness: list[float]) -> dict[str, np.ndarray]:
    """Three SLQ rows at steps 0, 20, 40 of rows every 10 steps; |w|^2 = 1 on every row and
    midpoint, so the edge 2 |w|^2 / eta is 4 at eta = 0.5."""
    nodes = np.array([[[1.0, 3.0]], [[1.0, 5.0]], [[2.0, 6.0]]])
    return {
        "gd.step": np.arange(0, 50, 10),
        "gd.sharpness": np.array([3.0, np.nan, 5.0, np.nan, 6.0]),
        "gd.norm_sq": np.ones(5),
        "gd.slq_step": np.array([0, 20, 40]),
        "gd.slq_nodes": nodes,
        "gd.slq_weights": np.full_like(nodes, 0.5),
        "gd.mid_sharpness": np.asarray(mid_sharpness),
        "gd.mid_norm_sq": np.ones(3),
    }


def test_bulk_and_top_compares_at_the_midpoints() -> None:
    # onset 10: row 0 before, rows 20 and 40 after; explicit ratios and changes
    out = spectrum.bulk_and_top(_arrays([3.0, 4.4, 3.6]), eta=0.5, onset=10)
    assert out["edge"] == out["mid_edge"] == [4.0, 4.0, 4.0]
    np.testing.assert_allclose(out["top_over_edge_after"], [5 / 4, 6 / 4])
    np.testing.assert_allclose(out["mid_over_edge_after"], [4.4 / 4, 3.6 / 4])
    assert out["top_change"] == abs(6 - 3) / 3 and out["mid_top_change"] == abs(3.6 - 3) / 3
    assert "mid_over_edge_after" not in spectrum.bulk_and_top(_arrays([3, 4, 5]), 0.5, None)


def _fake_result(mid_sharpness: list[float], onset: int | None = 10):
    from dataclasses import asdict
    from pathlib import Path
    from types import SimpleNamespace

    arrays = _arrays(mid_sharpness)
    cfg = spectrum.Config(eta=0.5, eta_wd=4e-3, steps=40, record_every=10, slq_every=20)
    summary = {"onset": onset, **spectrum.bulk_and_top(arrays, cfg.eta, onset)}
    meta = {"summary": summary, "config": asdict(cfg)}
    return SimpleNamespace(meta=meta, path=Path("fake"), arrays=arrays)


@pytest.mark.parametrize(
    ("mids", "passes"),
    [
        ([3.0, 3.9, 4.1], True),  # median 1.0 at the midpoints: at the edge
        ([3.0, 4.8, 5.2], False),  # 25% above the edge, like the iterates' 1.24
    ],
)
def test_the_edge_check_reads_the_midpoints_and_can_fail(tmp_path, mids, passes) -> None:
    from sims._store import ResultStore
    from sims.checks import Context, run_checks

    ctx = Context(ResultStore(tmp_path))
    ctx._cache[spectrum.NAME] = _fake_result(mids)
    rows = {r.name: r for r in run_checks(ctx, ["spectrum"])}
    edge = rows["spectrum: at the midpoints the top eigenvalue sits at 2 / eta_eff after the onset"]
    assert edge.predicted == pytest.approx(1 - 4e-3 / 2) and edge.passed is passes
    assert edge.measured == pytest.approx(np.median(mids[1:]) / 4)
    bulk = rows["spectrum: the bulk moves less than the top across the onset"]
    # median of the pooled rule: 1.0 before, 2.0 at the last row (change 1.0) against the
    # midpoint top's change |m_2 - 3| / 3 (< 1 in both cases): fails, as it must
    assert bulk.measured == 1.0 and bulk.passed is False


def test_the_checks_skip_a_result_stored_before_the_midpoints(tmp_path) -> None:
    from sims._store import ResultStore
    from sims.checks import Context, run_checks

    old = _fake_result([3.0, 4.0, 4.0])
    for key in ("mid_sharpness", "mid_edge", "mid_over_edge_after", "mid_top_change"):
        del old.meta["summary"][key]
    ctx = Context(ResultStore(tmp_path))
    ctx._cache[spectrum.NAME] = old
    rows = run_checks(ctx, ["spectrum"])
    assert [r.tolerance for r in rows[1:]] == ["skipped", "skipped"]
    assert all("stored before the midpoint rows" in r.skipped for r in rows[1:])
