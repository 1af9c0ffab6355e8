"""Failing fast, progress and budgets of the projections and flows (theory/flows/monitor.py).

Oracles: problems that cannot converge, built so that the stopping iteration can be counted by
hand from the residual history (``r(w) = [u_0^2 + 1]``: no zero on the sphere; ``r(w) = [u_0,
u_0 + 1]``: the Gauss-Newton system is inconsistent); the number of fixed steps per save
interval (``ceil(interval / dt)``); the unsegmented solve for the segmented one.
"""

from __future__ import annotations

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from theory.core.errors import BudgetExceeded, ProjectionError
from theory.flows import gauss_newton as gn
from theory.flows.common import RK4, Dense, FixedSteps, GammaSolution, SaveTimes, solve_on_gamma
from theory.flows.monitor import Budget, Meter, Progress, segments
from theory.flows.reduction import sharpness_flow
from theory.problems.analytic import PROBLEMS


def _no_zero(w):
    """``r = [u_0^2 + 1] >= 1``: no zero on the sphere."""
    u = w / jnp.linalg.norm(w)
    return jnp.stack([u[0] ** 2 + 1.0])


def _inconsistent(w):
    """``r = [u_0, u_0 + 1]``: ``J J^T`` is singular and ``r`` is not in its range."""
    u = w / jnp.linalg.norm(w)
    return jnp.stack([u[0], u[0] + 1.0])


def _unit(w):
    return w / jnp.linalg.norm(w)


# --------------------------------------------------------------------------------------------
# Gauss-Newton: up-front refusal and stagnation
# --------------------------------------------------------------------------------------------


def test_more_residuals_than_weights_refused_before_any_iteration():
    calls = []
    with pytest.raises(ProjectionError) as err:
        gn.gauss_newton_project(_unit, jnp.ones(3), progress=lambda k, n: calls.append(k))
    assert str(err.value).startswith(
        "Gauss-Newton projection onto Gamma = {r = 0} cannot succeed: the residual has n = 3 "
        "entries but w has D = 3 weights in 1 scale-invariance group(s) (sizes (3,)), and an "
        "interpolating Gamma needs n <= D - 1 = 2"
    )
    assert "theory.flows.manifold.project_to_manifold(loss, w)" in str(err.value)
    assert "a wider network (D >= 4)" in str(err.value)
    assert calls == []  # not one residual evaluation
    # Each group removes one direction: 2 residuals in D = 3 with groups (2, 1) is refused ...
    two = lambda w: _unit(w)[:2]  # noqa: E731
    with pytest.raises(ProjectionError, match=r"n <= D - 2 = 1 \(each group's radial"):
        gn.gauss_newton_project(two, jnp.ones(3), groups=(2, 1))
    # ... and n = D - groups is allowed (one residual, one group, D = 2: Gamma is two points).
    out = gn.gauss_newton_project(lambda w: _unit(w)[:1], jnp.asarray([0.3, 1.0]))
    assert out.converged and abs(float(out.theta[0])) < 1e-12


def test_no_zero_stalls_after_patience_iterations():
    # |r_k| = 1.333, 1.111, 1.431, 1.061, 1.612, 1.016, ...: the best value falls below 0.9 x
    # the best so far at k = 1 only (1.111 < 0.9 * 1.333); from k = 2 on no iterate beats
    # 0.9 * 1.111 = 1.0, so the idle count reaches patience p at k = p + 1.
    out = gn.gauss_newton_project(_no_zero, jnp.ones(3), raise_on_failure=False)
    hist = np.asarray(out.residual_history)
    np.testing.assert_allclose(hist[:4], [4 / 3, 10 / 9, 1.43097643, 1.06083361], rtol=1e-8)
    assert int(out.iterations) == 11 and bool(out.stalled) and not bool(out.converged)
    assert np.all(np.isfinite(hist[:12])) and np.all(np.isnan(hist[12:]))
    for patience, stop in [(3, 4), (5, 6)]:
        short = gn.gauss_newton_project(
            _no_zero, jnp.ones(3), raise_on_failure=False, patience=patience
        )
        assert int(short.iterations) == stop and bool(short.stalled)
    # Without the patience rule only max_iters stops it.
    off = gn.gauss_newton_project(
        _no_zero, jnp.ones(3), raise_on_failure=False, patience=None, max_iters=30
    )
    assert int(off.iterations) == 30 and not bool(off.stalled)
    with pytest.raises(ProjectionError) as err:
        gn.gauss_newton_project(_no_zero, jnp.ones(3))
    assert str(err.value).startswith(
        "Gauss-Newton projection onto Gamma did not converge: the residual reached "
        "|r(theta)| = 1 and stalled (no decrease below 0.9 x its best value for patience=10 "
        "iterations in a row) after 11 iterations (max_iters=50), above tol = 2.96e-13; |r| "
        "started at 1.33, last values [1, 2, 1, 2, 1]"
    )


def test_inconsistent_system_reports_cg_failures():
    out = gn.gauss_newton_project(_inconsistent, jnp.asarray([0.2, 1.0, 0.5]), patience=3,
                                  raise_on_failure=False)  # fmt: skip
    assert bool(out.stalled) and int(out.cg_failures) >= 1
    assert int(out.iterations) <= 3 + 3  # at most one improving step, then 3 idle ones
    with pytest.raises(ProjectionError, match=r"the inner CG stopped above its tolerance in \d"):
        gn.gauss_newton_project(_inconsistent, jnp.asarray([0.2, 1.0, 0.5]), patience=3)


def test_patience_does_not_change_a_converging_projection():
    prob = PROBLEMS["great_circle"]()
    fn = prob.residuals
    assert fn is not None
    w = jnp.asarray([0.3, 0.2, 1.0])
    a = gn.gauss_newton_project(fn, w)
    b = gn.gauss_newton_project(fn, w, patience=None)
    assert bool(a.converged) and int(a.iterations) == int(b.iterations)
    np.testing.assert_array_equal(np.asarray(a.theta), np.asarray(b.theta))
    assert not bool(a.stalled)


# --------------------------------------------------------------------------------------------
# Gauss-Newton: progress and budget (from inside the compiled loop)
# --------------------------------------------------------------------------------------------


def test_projection_progress_and_budget():
    seen, phases = [], []
    out = gn.gauss_newton_project(
        _no_zero,
        jnp.ones(3),
        raise_on_failure=False,
        progress=Progress(callback=lambda k, n: seen.append((k, n)), on_phase=phases.append),
    )
    assert seen == [(k, 50) for k in range(int(out.iterations) + 1)] and phases == ["projection"]
    with pytest.raises(BudgetExceeded) as err:
        gn.gauss_newton_project(_no_zero, jnp.ones(3), budget=Budget(steps=4))
    assert str(err.value) == (
        "budget exceeded in phase 'projection' (Gauss-Newton iteration 3): 4 steps used, "
        "budget 4; the part finished so far is in the error's .partial"
    )
    part = err.value.partial
    assert isinstance(part, gn.GNProjection) and int(part.iterations) == 3
    assert err.value.phase == "projection" and err.value.spent["steps"] == 4
    np.testing.assert_allclose(np.asarray(part.residual_history)[:2], [4 / 3, 10 / 9])


def test_manifold_projection_reports_and_checks_its_budget():
    prob = PROBLEMS["great_circle"]()
    phases, seen = [], []
    theta = theory.project_to_manifold(
        prob.loss, jnp.asarray(prob.start),
        progress=Progress(callback=lambda d, n: seen.append((d, n)), on_phase=phases.append),
    )  # fmt: skip
    assert phases == ["projection"] and seen == [(1, 1)]
    with pytest.raises(BudgetExceeded, match=r"budget exceeded in phase 'projection' \(after"):
        theory.project_to_manifold(prob.loss, jnp.asarray(prob.start), budget=Budget(steps=1))
    try:
        theory.project_to_manifold(prob.loss, jnp.asarray(prob.start), budget=Budget(steps=1))
    except BudgetExceeded as err:
        np.testing.assert_array_equal(np.asarray(err.partial.theta), np.asarray(theta))


# --------------------------------------------------------------------------------------------
# Flows: segments, progress, budget, non-finite states
# --------------------------------------------------------------------------------------------


def test_segments_cover_the_saves():
    assert segments(9) == [(i, i + 1) for i in range(8)]
    assert segments(101) == [(i, i + 5) for i in range(0, 100, 5)]
    assert segments(42) == [(i, min(i + 3, 41)) for i in range(0, 41, 3)]


@pytest.mark.slow
def test_flow_progress_matches_the_unsegmented_solve():
    prob = PROBLEMS["great_circle"]()
    pid = diffrax.PIDController(rtol=1e-10, atol=1e-12)
    start = jnp.asarray(prob.start)
    plain = sharpness_flow(prob.loss, start, SaveTimes(4.0, n=9), stepsize_controller=pid)
    seen, phases = [], []
    seg = sharpness_flow(
        prob.loss, start, SaveTimes(4.0, n=9), stepsize_controller=pid,
        progress=Progress(callback=lambda d, n: seen.append((d, n)), on_phase=phases.append),
    )  # fmt: skip
    assert seen == [(1, 1)] + [(k, 8) for k in range(1, 9)]
    assert phases == ["projection", "flow"]  # Dense(): Phi of the start, then the flow
    np.testing.assert_allclose(seg.theta, plain.theta, atol=1e-8)  # the controller's tolerance
    np.testing.assert_array_equal(seg.tau, plain.tau)


def test_flow_budget_keeps_the_saves_reached():
    # RK4 with dt = 0.05 takes 10 steps per save interval of 0.5; a budget of 30 steps beyond
    # the projection's ODE steps runs out after the third segment (8 intervals in 8 segments).
    prob = PROBLEMS["great_circle"]()
    start = jnp.asarray(prob.start)
    projection = int(theory.projection_info(prob.loss, start).steps)
    budget = projection + 30
    with pytest.raises(BudgetExceeded) as err:
        theory.sharpness_flow(
            prob.loss, start, SaveTimes(4.0, n=9), solver=RK4(),
            stepsize_controller=FixedSteps(0.05), budget=theory.Budget(steps=budget),
        )  # fmt: skip
    assert str(err.value) == (
        f"budget exceeded in phase 'flow' (flow at t = 1.5): {budget} steps used, budget "
        f"{budget}; the part finished so far is in the error's .partial"
    )
    part = err.value.partial
    assert isinstance(part, GammaSolution) and part.num_steps == 30
    np.testing.assert_array_equal(part.ts, [0.0, 0.5, 1.0, 1.5])
    assert part.ys.shape == (4, 3) and np.all(np.isfinite(np.asarray(part.ys)))
    assert err.value.spent["steps"] == budget


class _NanAfter:
    """A field that is zero until ``t = 1`` and NaN after."""

    def __call__(self, t, y, args):
        return jnp.where(t > 1.0, jnp.nan, 0.0) * y


def test_fixed_step_flow_stops_at_the_first_non_finite_save():
    prob = PROBLEMS["great_circle"]()
    start = jnp.asarray(prob.start) / jnp.linalg.norm(jnp.asarray(prob.start))
    geometry = Dense(rank=1)
    for meter in (None, Meter(None, None)):
        with pytest.raises(RuntimeError) as err:
            solve_on_gamma(
                _NanAfter(), geometry, prob.loss, start, SaveTimes(2.0, n=5), RK4(),
                FixedSteps(0.1), meter=meter,
            )  # fmt: skip
        assert str(err.value).startswith(
            "the fixed-step flow became non-finite: the save at t = 1.5 has non-finite "
            "entries, the one before (t = 1) is finite"
        )


def test_adaptive_flow_reports_how_it_failed():
    prob = PROBLEMS["great_circle"]()
    start = jnp.asarray(prob.start) / jnp.linalg.norm(jnp.asarray(prob.start))
    with pytest.raises(RuntimeError) as err:
        solve_on_gamma(
            _NanAfter(), Dense(rank=1), prob.loss, start, SaveTimes(2.0, n=5),
            diffrax.Tsit5(), diffrax.PIDController(rtol=1e-6, atol=1e-8), max_steps=40,
        )  # fmt: skip
    msg = str(err.value)
    assert msg.startswith("the flow integrator failed before t = 2: the step size collapsed")
    reached = float(msg.split("last time reached t = ")[1].split(";")[0])
    assert 0.999 < reached <= 1.0  # stuck where the field turns NaN


def test_bad_settings():
    with pytest.raises(ValueError, match="Budget needs seconds and/or steps, got neither"):
        Budget()
    with pytest.raises(ValueError, match=r"Budget\.seconds"):
        Budget(seconds=-1.0)
    with pytest.raises(ValueError, match=r"Budget\.steps"):
        Budget(steps=0)
    with pytest.raises(TypeError, match=r"Progress\.callback must be callable"):
        Progress(callback=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"progress must be None, True \(a tqdm bar\)"):
        Progress.of("yes")
    with pytest.raises(TypeError, match=r"budget must be None or theory.Budget"):
        gn.gauss_newton_project(_no_zero, jnp.ones(3), budget=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="patience"):
        gn.gauss_newton_project(_no_zero, jnp.ones(3), patience=0)


# --------------------------------------------------------------------------------------------
# Central flow, Edge Flow, the prediction
# --------------------------------------------------------------------------------------------


def _gc_start(eta: float, eos0: float):
    """A point of the great-circle problem with ``eta lambda_1 = eos0``."""
    prob = PROBLEMS["great_circle"]()
    u = jnp.asarray(prob.start)
    lam = float(prob.lambda1(u / jnp.linalg.norm(u)))
    return prob, u / jnp.linalg.norm(u) * float(np.sqrt(eta * lam / eos0))


@pytest.mark.slow
def test_central_flow_progress_and_budget():
    eta, wd = 0.1, 1e-2
    prob, w0 = _gc_start(eta, 0.3)
    kw = dict(eta=eta, wd=wd, saveat=SaveTimes(60.0, n=7), geometry=Dense())
    plain = theory.central_flow(prob.loss, w0, **kw)
    seen = []
    seg = theory.central_flow(prob.loss, w0, progress=lambda d, n: seen.append((d, n)), **kw)
    assert seen == [(k, 6) for k in range(1, 7)]  # one save per segment
    np.testing.assert_allclose(seg.w, plain.w, rtol=1e-6, atol=1e-9)  # rtol 1e-7, atol 1e-10
    with pytest.raises(BudgetExceeded) as err:
        theory.central_flow(prob.loss, w0, budget=Budget(steps=1), **kw)
    part = err.value.partial
    assert isinstance(part, theory.CentralFlowResult)
    np.testing.assert_array_equal(part.t, [0.0, 10.0])  # the first segment's saves
    assert err.value.phase == "flow" and part.num_steps >= 1


@pytest.mark.slow
def test_edge_flow_progress_and_budget():
    prob = PROBLEMS["ire_toy"]()
    w0 = jnp.asarray(prob.start)
    kw = dict(eta=0.1, wd=0.05, saveat=SaveTimes(40.0, n=5), oscillation=theory.Oscillation(1e-8))
    plain = theory.edge_flow(prob.loss, w0, **kw)
    seen = []
    seg = theory.edge_flow(prob.loss, w0, progress=lambda d, n: seen.append((d, n)), **kw)
    assert seen == [(k, 4) for k in range(1, 5)]
    np.testing.assert_allclose(seg.x, plain.x, rtol=1e-6, atol=1e-9)
    with pytest.raises(BudgetExceeded) as err:
        theory.edge_flow(prob.loss, w0, budget=Budget(steps=1), **kw)
    part = err.value.partial
    assert isinstance(part, theory.EdgeFlowResult)
    np.testing.assert_array_equal(part.t, [0.0, 10.0])


@pytest.mark.slow
def test_prediction_reports_its_phases_and_keeps_finished_parts():
    eta, ewd = 0.1, 0.01
    prob, w0 = _gc_start(eta, 0.3)
    phases, seen = [], []
    pred = theory.predict_from_init(
        prob.loss, w0, eta=eta, wd=ewd / eta, steps=300, record_every=5,
        progress=Progress(callback=lambda d, n: seen.append((d, n)), on_phase=phases.append),
    )  # fmt: skip
    # The flow projects its start again (Dense: Phi), then integrates.
    assert phases == ["phase I model", "projection", "rows", "projection", "flow"]
    assert seen[-1][0] == seen[-1][1] and pred.flow is not None
    with pytest.raises(BudgetExceeded) as err:
        theory.predict_from_init(
            prob.loss, w0, eta=eta, wd=ewd / eta, steps=300, record_every=5,
            budget=Budget(steps=pred.counts["ode_steps"] + 1),
        )  # fmt: skip
    part = err.value.partial
    assert err.value.phase == "flow"
    assert set(part) == {"phase1", "landing", "rows", "flow"}
    assert isinstance(part["flow"], GammaSolution) and part["flow"].ts[0] == 0.0
    with pytest.raises(BudgetExceeded) as err:
        theory.predict_from_init(
            prob.loss, w0, eta=eta, wd=ewd / eta, steps=300, record_every=5,
            budget=Budget(steps=1),
        )  # fmt: skip
    assert err.value.phase == "phase I model" and set(err.value.partial) == {"phase1"}
