"""The IRE speed-up study (sims.studies.ire_flow): the derived formula, a tiny run, the figure,
checks."""

from __future__ import annotations

import numpy as np
import pytest

from sims.studies import ire_flow
from theory.flows.compare import eos_equilibrium_start, ire_equilibrium_start
from theory.optim.ire import flow_gains, flow_speedup, flow_time
from theory.problems.analytic import PROBLEMS


def test_local_speedup_limits() -> None:
    g_sq = np.array([0.0, 0.3, 1.0, 4.0])
    for kappa in (1.0, 10.0, 300.0):
        # radial mode: exactly 1 + kappa whatever |g|
        np.testing.assert_allclose(flow_speedup(1 + kappa, 1 + kappa, g_sq), 1 + kappa)
        tangent = flow_speedup(1 + kappa, 1.0, g_sq)
        assert tangent[0] == pytest.approx(1 + kappa)  # |g| -> 0: the naive 1 + kappa
        assert np.all(tangent[1:] < 1 + 4 / g_sq[1:] + 1e-12)  # the norm limit
    # kappa = 0 is GD+WD; a reversed drift without an equilibrium is undefined
    np.testing.assert_allclose(flow_speedup(1.0, 1.0, g_sq), 1.0)
    assert np.isnan(flow_speedup(-9.0, 1.0, np.array([1.0])))[0]


def test_gains_and_flow_time() -> None:
    assert flow_gains(3.0, radial=False, reversed_drift=False) == (4.0, 1.0)
    assert flow_gains(3.0, radial=True, reversed_drift=False) == (4.0, 4.0)
    assert flow_gains(3.0, radial=False, reversed_drift=True) == (-2.0, 1.0)
    assert ire_flow.gains(3.0, "tangent", "current:1") == (-2.0, 1.0)
    assert ire_flow.gains(3.0, "radial", "midpoint:1") == (4.0, 4.0)
    # constant |g|^2 along the flow: tau_eff = speed * tau exactly (RK4 of a constant speed)
    grid = np.linspace(-5.0, 5.0, 11)
    tau = np.linspace(0.0, 1.0, 5)
    te = flow_time(tau, grid, np.full(11, 0.5), 4.0, 1.0)
    np.testing.assert_allclose(te, flow_speedup(4.0, 1.0, 0.5) * tau, rtol=1e-13)
    # leaving the grid: NaN from there on
    assert np.isnan(flow_time(np.array([0.0, 10.0]), grid, np.full(11, 0.5), 1.0, 1.0)[1])


@pytest.mark.slow  # default-suite budget
def test_ire_equilibrium_start_is_the_closed_form_gd_one_at_unit_gains() -> None:
    import jax.numpy as jnp

    from theory.flows.manifold import project_to_manifold

    prob = PROBLEMS["great_circle"]()
    theta = project_to_manifold(prob.loss, jnp.asarray(prob.start, jnp.float64))
    w_ire = ire_equilibrium_start(prob, theta, eta=0.1, wd=0.01)
    w_gd = eos_equilibrium_start(prob.loss, theta, eta=0.1, wd=0.01, form="F1")
    np.testing.assert_allclose(np.asarray(w_ire), np.asarray(w_gd), rtol=1e-10, atol=1e-12)
    # radial amplification (a = b): the amplitude is GD+WD's (F1) one, the norm the same
    w_rad = ire_equilibrium_start(prob, theta, eta=0.1, wd=0.01, a=4.0, b=4.0)
    np.testing.assert_allclose(np.asarray(w_rad), np.asarray(w_gd), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="wd must be a positive"):
        ire_equilibrium_start(prob, theta, eta=0.1, wd=0.0)


@pytest.mark.slow
def test_tiny_run_matches_the_derived_speedups_and_draws(tmp_path) -> None:
    # One kappa, both modes, no projector variants (the reversal is pinned in test_ire.py):
    # two compiled programs.
    cfg = ire_flow.Config(
        problems=("great_circle",), kappas=(3.0,), projectors=(), rows=12, tau_target=0.4
    )
    stored = ire_flow.run_and_store(cfg, results_dir=tmp_path, progress=False)
    rows = {(r["mode"], r["kappa"]): r for r in stored.meta["summary"]["table"]}
    assert len(rows) == 2
    radial = rows[("radial", 3.0)]
    assert radial["speedup"] == pytest.approx(4.0, rel=0.03)  # measured 3.99
    tangent = rows[("tangent", 3.0)]
    assert tangent["speedup"] == pytest.approx(tangent["predicted"], rel=0.03)  # 2.65 vs 2.67
    assert tangent["speedup"] < 3.0  # far from 1 + kappa = 4
    key = radial["key"]
    assert stored.arrays[f"{key}.tau_eff"].shape == (13,)
    import figures.ire_flow

    paths = figures.ire_flow.main(tmp_path, tmp_path / "out")
    assert len(paths) == 1 and paths[0].stat().st_size > 20_000


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="closed-form flows"):
        ire_flow.Config(problems=("curved_manifold",))
    with pytest.raises(ValueError, match="projector must look like 'current:K'"):
        ire_flow.Config(projector="midpoint:0")
    with pytest.raises(ValueError, match="kappas must be finite and >= 0"):
        ire_flow.Config(kappas=(-1.0,))


def test_format_table_shows_divergence_steps():
    # diverged_at is None (no divergence) or the first non-finite step; -1 in older results.
    row = {
        "problem": "great_circle",
        "eta_wd": 1e-3,
        "mode": "exact",
        "projector": "iterate",
        "kappa": 1.0,
        "naive": 2.0,
        "predicted": 1.5,
        "speedup": 1.4,
        "ratio": 0.93,
        "mean_eos": 2.0,
    }
    lines = ire_flow.format_table([{**row, "diverged_at": d} for d in (None, -1, 120)])
    assert [line.split()[-1] for line in lines[1:]] == ["-", "-", "120"]
