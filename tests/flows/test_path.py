"""The path rule (theory/flows/path.py): choose_path's decision and central_path's comparison.

The rule is checked on hand-made loss histories (its thresholds are exact comparisons), and the
central-flow branch end to end on a small LayerNorm MLP with more residuals than weights, where
``Gamma`` does not exist: the flow, started from GD's iterate before the onset, has to track
GD's moving averages of the loss and of ``eta_eff S`` after the onset.
"""

from __future__ import annotations

import math

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest

from theory import Budget, BudgetExceeded, Dense, EdgeSettings, LanczosTracker, eos_quantity, gd_wd
from theory.flows.path import PathRule, central_path, choose_path
from theory.problems import nets


def test_interpolating_run_that_fitted_takes_gamma():
    loss = np.geomspace(1.0, 1e-6, 50)  # fitted long before the onset
    choice = choose_path(loss, onset=40, dim=100, groups=2, n_residuals=32)
    assert choice.branch == "gamma" and choice.reasons == ()
    assert choice.interpolable and choice.codimension_slack == 100 - 2 - 32
    assert choice.loss_ratio == pytest.approx(loss[40])


def test_unfinished_phase_one_takes_the_central_flow():
    loss = np.linspace(2.0, 0.5, 50)
    choice = choose_path(loss, onset=30, dim=2372, groups=3, n_residuals=640)
    assert choice.branch == "central" and choice.interpolable
    assert choice.loss_ratio == pytest.approx(loss[30] / 2.0)
    assert len(choice.reasons) == 1 and "phase I has not finished" in choice.reasons[0]


def test_too_many_residuals_take_the_central_flow_even_when_fitted():
    loss = np.geomspace(1.0, 1e-9, 20)
    choice = choose_path(loss, onset=10, dim=32, groups=1, n_residuals=48)
    assert choice.branch == "central" and not choice.interpolable
    assert choice.codimension_slack == -17
    assert choice.reasons == ("no interpolating minimizers: n = 48 residuals exceed D - k = 31",)
    # At n = D - k exactly interpolation is still possible by counting.
    assert choose_path(loss, onset=10, dim=32, n_residuals=31).branch == "gamma"


def test_loss_ratio_threshold_is_inclusive_and_configurable():
    loss = np.array([1.0, 0.5, 1e-3, 1e-3])
    assert choose_path(loss, onset=2, dim=10).branch == "gamma"  # ratio == 1e-3
    assert choose_path(loss, onset=1, dim=10).branch == "central"
    assert choose_path(loss, onset=1, dim=10, rule=PathRule(max_loss_ratio=0.6)).branch == "gamma"


def test_grad_ratio_is_reported():
    loss = np.array([1.0, 0.5, 0.25])
    choice = choose_path(loss, onset=2, dim=10, grad_norm=np.array([4.0, 2.0, 1.0]))
    assert choice.grad_ratio == pytest.approx(0.25)
    assert math.isnan(choose_path(loss, onset=2, dim=10).grad_ratio)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"onset": 5}, ValueError, r"onset must be a step of the run \(< 5 loss rows\), got 5"),
        ({"onset": 0}, ValueError, "onset must be >= 1, got 0"),
        ({"onset": 2, "groups": 11}, ValueError, "groups must be at most dim = 10, got 11"),
        ({"onset": 2, "n_residuals": 0}, ValueError, "n_residuals must be >= 1, got 0"),
        ({"onset": 2, "grad_norm": [1.0]}, ValueError, r"grad_norm must have the shape"),
        ({"onset": 2, "rule": 0.1}, TypeError, "rule must be a PathRule, got 0.1"),
    ],
)
def test_choose_path_refuses_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        choose_path(np.linspace(1.0, 0.5, 5), dim=10, **kwargs)


def test_bad_rule_and_bad_loss_are_refused():
    with pytest.raises(ValueError, match=r"max_loss_ratio must be in \(0, 1\), got 1.0"):
        PathRule(max_loss_ratio=1.0)
    with pytest.raises(ValueError, match="loss must be a finite 1-d array"):
        choose_path([1.0, float("nan")], onset=1, dim=10)
    with pytest.raises(ValueError, match="loss at the start must be > 0"):
        choose_path([0.0, 0.0], onset=1, dim=10)


def test_central_path_refuses_bad_rows_before_integrating():
    w = jnp.ones(3)
    common = {"loss": np.ones(5), "eos": np.ones(5), "w_start": w, "eta": 0.1, "wd": 0.1}
    with pytest.raises(ValueError, match="consecutive integer steps"):
        central_path(lambda v: v[0], step=np.array([0, 2, 3, 4, 5]), start=0, gd_onset=3, **common)
    with pytest.raises(ValueError, match=r"need step\[0\] <= start < gd_onset <= step\[-1\]"):
        central_path(lambda v: v[0], step=np.arange(5), start=3, gd_onset=3, **common)
    with pytest.raises(ValueError, match="window must be >= 2 steps, got 1"):
        central_path(lambda v: v[0], step=np.arange(5), start=0, gd_onset=3, window=1, **common)
    with pytest.raises(ValueError, match="no compared row between gd_onset"):
        central_path(lambda v: v[0], step=np.arange(5), start=0, gd_onset=3, window=2, **common)
    with pytest.raises(ValueError, match=r"iterates must be \(40, D\), got shape \(39, 3\)"):
        central_path(
            lambda v: v[0],
            step=np.arange(40),
            loss=np.ones(40),
            eos=np.ones(40),
            w_start=w,
            start=0,
            gd_onset=3,
            eta=0.1,
            wd=0.1,
            iterates=np.ones((39, 3)),
        )


def small_mlp(n: int, width: int):
    """A two-layer LayerNorm MLP (gelu) on a tanh teacher, one group, MSE on ``n`` samples."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 4))
    y = np.tanh(x @ rng.standard_normal((4, 8)) / 2) @ rng.standard_normal(8)
    y = ((y - y.mean()) / y.std())[:, None]
    model = nets.mlp((width, width), norm="layer", activation="gelu")
    return nets.make_problem(model, x, y, x[:4], y[:4], loss="mse", groups="all", dtype=np.float64)


@pytest.mark.slow
def test_without_gamma_the_central_flow_tracks_gd_averages():
    # Width 4: D = 32 weights, 48 residuals > D - 1, so Gamma does not exist. eta = 0.1 from
    # eta_eff S = 0.6, eta wd = 2e-3: GD reaches the edge at step 49 with its loss at a quarter
    # of the start, oscillates, then falls back below the edge (the flow does too).
    net = small_mlp(48, 4)
    lam, _ = eos_quantity(net.loss, net.w0, 1.0)
    eta, ewd = 0.1, 2e-3
    w0 = net.w0 * math.sqrt(float(lam) * eta / 0.6)
    run = gd_wd(net.loss, w0, eta=eta, wd=ewd / eta, steps=140, tracker=LanczosTracker(every=1))
    assert run.onset_step is not None and run.w is not None
    onset = int(run.onset_step)
    choice = choose_path(run.loss, onset=onset, dim=32, n_residuals=48)
    assert choice.branch == "central" and not choice.interpolable
    assert choice.loss_ratio > 0.1  # measured 0.25
    start = onset - 30
    res = central_path(
        net.loss,
        step=run.step,
        loss=run.loss,
        eos=run.eos,
        w_start=jnp.asarray(run.w[start]),
        start=start,
        gd_onset=onset,
        eta=eta,
        wd=ewd / eta,
        iterates=run.w,
        geometry=Dense(),
        edge=EdgeSettings(max_edge=3, leave_tol=1e-2),
    )
    # Horizon: GD's steps onset + 16 .. 132 (the moving average's window is 16 steps).
    assert res.step[res.after][0] == onset + 16 and res.step[res.after][-1] == 132
    # Measured: onset error -1.9%, averaged loss 0.28% off, mean eta_eff S 1.19 (GD) / 1.08
    # (flow): 0.095, angle at most 0.011 rad. The flow leaves the edge with GD near step 75.
    assert abs(res.onset_err) < 0.05
    assert res.loss_err < 0.02
    assert res.eos_err < 0.15
    assert res.max_angle < 0.03


@pytest.mark.slow  # compile-bound: ~20 s CPU for the central flow's program
def test_central_path_passes_controller_progress_and_budget():
    # A scale-invariant loss on R^3 far below the edge (eta lambda_1 ~ 0.01): plain gradient
    # flow, a few integrator steps per save; the pass-through is what is tested.
    def loss(v):
        u = v / jnp.linalg.norm(v)
        return 0.5 * u[0] ** 2 + 0.25 * u[1] ** 2

    rows = 40
    common = {
        "step": np.arange(rows),
        "loss": np.ones(rows),
        "eos": np.ones(rows),
        "w_start": jnp.asarray([0.6, 0.8, 1.0]),
        "start": 0,
        "gd_onset": 3,
        "eta": 0.01,
        "wd": 0.1,
        "geometry": Dense(),
    }
    controller = diffrax.PIDController(rtol=1e-4, atol=1e-7)
    seen = []
    res = central_path(
        loss,
        **common,
        stepsize_controller=controller,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert res.flow.config["rtol"] == 1e-4 and res.flow.config["atol"] == 1e-7
    assert seen and seen[-1] == (rows - 1, rows - 1)
    with pytest.raises(BudgetExceeded, match="steps") as info:
        central_path(loss, **common, stepsize_controller=controller, budget=Budget(steps=1))
    assert 0 < len(info.value.partial.t) < rows
