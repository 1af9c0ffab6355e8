"""The tame-regime and crossing studies (sims/studies/tame.py, sims/studies/crossing.py), their
checks, figures."""

from __future__ import annotations

import numpy as np
import pytest

from sims.studies import crossing, tame


def test_configs_validate_and_presets():
    assert tame.Config.preset("quick") == tame.Config()
    full = tame.Config.preset("full")
    assert len(full.eta_wd) > len(tame.Config().eta_wd) and set(full.datasets) == set(tame.DATASETS)
    assert len(tame.Config().eta_wd) >= 3 and len(crossing.Config().eta_wd) >= 3  # a slope
    assert crossing.Config.preset("full").rows > crossing.Config().rows
    assert crossing.Config.preset("quick") == crossing.Config()
    assert tame.SIM.name == tame.NAME and crossing.SIM.name == crossing.NAME
    with pytest.raises(ValueError, match="datasets"):
        tame.Config(datasets=("cifar10",))
    with pytest.raises(ValueError, match="decreasing"):
        tame.Config(eta_wd=(1e-4, 1e-3))
    with pytest.raises(ValueError, match="eta_wd"):
        tame.Config(eta_wd=(1e-3,))
    with pytest.raises(ValueError, match="relax"):
        crossing.Config(relax=-1.0)
    with pytest.raises(ValueError, match="scale"):
        crossing.Config.preset("huge")


def test_binary_target():
    y = tame.binary_target(np.array([0, 4, 5, 9]))
    np.testing.assert_array_equal(y, [[1.0], [1.0], [-1.0], [-1.0]])


def test_interp_rows():
    grid = np.array([0.0, 1.0, 2.0])
    theta = np.array([[0.0, 1.0], [1.0, 3.0], [2.0, 5.0]])
    np.testing.assert_allclose(
        crossing._interp_rows(np.array([0.5, 2.0]), grid, theta), [[0.5, 2.0], [2.0, 5.0]]
    )


@pytest.mark.slow
def test_tame_tiny_run_checks_and_figures(tmp_path):
    import figures.tame
    from sims._store import ResultStore
    from sims.checks import Context, run_checks

    cfg = tame.Config(
        datasets=("digits",), eta_wd=(2e-3, 1e-3), f0_eta_wd=1e-3, tau_end=0.1, rows=3
    )
    stored = tame.run_and_store(cfg, results_dir=tmp_path, progress=False)
    s = stored.meta["summary"]["digits"]
    assert len(s["dist_end"]) == 2 and all(d < 0.05 for d in s["dist_end"])
    assert all(0.5 < r < 1.5 for r in s["drop_ratio"])
    assert set(s["f0f1"]) == {"eta_wd", "F0", "F1"}
    ctx = Context(ResultStore(tmp_path))
    ctx._cache[tame.NAME] = stored
    results = run_checks(ctx, ["tame_tracking", "tame_projection", "tame_collapse"])
    assert len(results) == 4 and all(np.isfinite(r.measured) for r in results)
    paths = figures.tame.main(tmp_path, tmp_path / "out")
    assert len(paths) == 3 and all(p.stat().st_size > 5_000 for p in paths)


def _fake_crossing(gap_means):
    from types import SimpleNamespace

    ewds = [1e-3, 2.5e-4, 6.25e-5, 1.5625e-5][: len(gap_means)]
    runs = [
        {
            "eta_wd": e,
            "dist_end": 1e-3,
            "dist_before_crossing": 1e-4,
            "tau_end": 1.2,
            "gap_gd_after_max": 2 * g,
            "gap_gd_after_mean": g,
        }
        for e, g in zip(ewds, gap_means, strict=True)
    ]
    summary = {
        "tau_cluster": 0.8, "smooth_tau_end": 0.75, "smooth_stop": "stop", "flow_gap_after": 1e-5,
        "flow_stopped": None, "flow_tau_end": 1.2, "lambda_start": [1, 1], "lambda_end": [1, 1],
        "flow_sigma_eigs_end": [0.5, 0.5], "slope_end": 0.4, "eta_wd": ewds, "runs": runs,
    }  # fmt: skip
    return SimpleNamespace(
        meta={"summary": summary, "config": {"cluster_tol": 1e-4, "tau_end": 1.2}}, path="fake"
    )


@pytest.mark.parametrize(
    ("gaps", "passes"),
    [
        ([0.020, 0.012, 0.0059, 0.0031], True),  # the full run's means: slope ~0.45
        ([0.01, 0.01, 0.01, 0.01], False),  # a gap that does not close
        ([0.04, 0.01, 0.0025, 0.000625], False),  # second order: slope 1
    ],
)
def test_crossing_gap_is_a_rate_check(tmp_path, gaps, passes):
    from sims._store import ResultStore
    from sims.checks import Context, run_checks

    ctx = Context(ResultStore(tmp_path))
    ctx._cache[crossing.NAME] = _fake_crossing(gaps)
    rows = {r.name: r for r in run_checks(ctx, ["crossing"])}
    gap = rows["crossing BN: GD's top-pair gap past the crossing closes like sqrt(eta*wd)"]
    assert gap.kind == "derived" and gap.predicted == 0.5 and gap.passed is passes
    flow = rows["crossing BN: the continued flow runs past the crossing"]
    assert flow.passed and flow.details["flow_gap_after"] == 1e-5
