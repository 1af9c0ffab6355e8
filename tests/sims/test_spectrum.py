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
    ctx = Context(ResultStore(tmp_path))
    ctx._cache[spectrum.NAME] = stored
    results = run_checks(ctx, ["spectrum"])
    assert len(results) == 3
    assert np.isfinite(results[0].measured)
    paths = figures.spectrum.main(tmp_path, tmp_path / "out")
    assert len(paths) == 1 and paths[0].stat().st_size > 5_000
