"""The GD+WD-vs-AdamW study (sims/studies/adamw.py), its checks and figure, on a tiny config."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sims.studies import adamw


def test_config_validates_and_presets() -> None:
    assert adamw.Config.preset("quick") == adamw.Config()
    assert adamw.Config.preset("full").steps > adamw.Config().steps
    assert adamw.SIM.name == adamw.NAME
    with pytest.raises(ValueError, match=r"every \(7\) must divide steps \(2000\)"):
        adamw.Config(every=7)
    with pytest.raises(ValueError, match=r"AdaptiveSpec.b1 must be in \[0, 1\), got 1.0"):
        adamw.Config(b1=1.0)
    with pytest.raises(ValueError, match="adam_wd"):
        adamw.Config(adam_wd=0.0)
    with pytest.raises(ValueError, match="scale"):
        adamw.Config.preset("huge")


def test_equilibrium_angle_is_the_norm_balance() -> None:
    """A step ``(1 - lr wd) w - lr u`` with ``u`` orthogonal to ``w`` and ``|w'| = |w|`` turns
    ``w`` by the predicted angle (built by hand in 2-D)."""
    lr, wd = 0.1, 0.3
    c = 1 - lr * wd
    w = np.array([1.0, 0.0])
    u_size = math.sqrt(1 - c * c) / lr  # so that |w'| = |w|
    w_next = c * w - lr * np.array([0.0, u_size])
    assert np.linalg.norm(w_next) == pytest.approx(1.0, rel=1e-14)
    angle = math.acos(w @ w_next / np.linalg.norm(w_next))
    assert adamw.equilibrium_angle(lr, wd) == pytest.approx(angle, rel=1e-12)
    assert adamw.equilibrium_angle(1e-4, 1e-2) == pytest.approx(math.sqrt(2e-6), rel=1e-5)


@pytest.mark.slow  # two engine programs compiled (Lanczos on GD+WD, two on AdamW), a figure
def test_tiny_run_checks_and_figure(tmp_path) -> None:
    import figures.adamw
    from sims._store import ResultStore
    from sims.checks import Context, run_checks

    cfg = adamw.Config(n_train=32, widths=(4,), steps=40, every=5, lanczos_tol=1e-3)
    stored = adamw.run_and_store(cfg, results_dir=tmp_path, progress=False)
    s = stored.meta["summary"]
    a, g = s["adamw"], s["gdwd"]
    assert a["dim"] == g["dim"] == 64 * 4
    arrays = stored.arrays
    assert arrays["adamw.step"].tolist() == list(range(0, 41, 5))
    np.testing.assert_allclose(arrays["adamw.precond_edge"], 38 / cfg.adam_lr, rtol=1e-12)
    pe = arrays["adamw.precond_eos"]
    np.testing.assert_allclose(pe, arrays["adamw.precond_sharpness"] / (38 / cfg.adam_lr))
    assert np.isfinite(pe).all() and (pe > 0).all()
    # The step's radial part is a component of the step (StepGeometry's own oracle test is in
    # tests/engine/test_adaptive.py).
    size, rad = arrays["adamw.step_size"], arrays["adamw.radial"]
    assert np.all(size > 0) and np.all(np.abs(rad) <= size * (1 + 1e-12))
    assert a["norm2_predicted_rms1"] == pytest.approx(
        cfg.adam_lr * a["dim"] / (cfg.adam_wd * (2 - cfg.adam_lr * cfg.adam_wd))
    )
    ctx = Context(ResultStore(tmp_path))
    ctx._cache[adamw.NAME] = stored
    results = run_checks(ctx, ["adamw"])
    assert len(results) == 8 and all(np.isfinite(r.measured) for r in results)
    paths = figures.adamw.main(tmp_path, tmp_path / "out")
    assert len(paths) == 1 and paths[0].stat().st_size > 5_000
