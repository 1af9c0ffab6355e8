"""The sharpness-reduction flow: closed forms, an independent integration, orders, errors."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from theory.analysis.fits import loglog_fit
from theory.core.errors import DegenerateSharpnessError, DegenerateSharpnessWarning
from theory.core.invariance import make_scale_invariant
from theory.engine import NoTracking, SaveAt
from theory.flows.common import RK4, Dense, FixedSteps, GaussNewton, Lanczos, SaveTimes
from theory.flows.compare import compare_with_flow, eos_equilibrium_start
from theory.flows.reduction import Degeneracy, SharpnessFlowField, sharpness_flow, velocity
from theory.problems.analytic import PROBLEMS


@pytest.mark.parametrize("name", [pytest.param("great_circle", marks=pytest.mark.slow), "ire_toy"])
@pytest.mark.parametrize("form", ["F1", pytest.param("F0", marks=pytest.mark.slow)])
def test_flow_matches_closed_form(name, form):
    # Adaptive (rtol 1e-10) against the closed-form solution at every save; lambda_1 falls.
    prob = PROBLEMS[name]()
    res = sharpness_flow(
        prob.loss,
        jnp.asarray(prob.start),
        SaveTimes(4.0, n=9),
        form=form,
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
    )
    assert res.tau[0] == 0 and res.tau[-1] == 4.0
    ref = np.asarray(prob.flow_closed_form(jnp.asarray(res.theta[0]), jnp.asarray(res.tau), form))
    np.testing.assert_allclose(res.theta, ref, atol=1e-8)  # relative to unit vectors
    assert np.all(np.diff(res.sharpness) <= 1e-12 * res.sharpness[0])
    np.testing.assert_allclose(res.sharpness, jax.vmap(prob.lambda1)(jnp.asarray(ref)), rtol=1e-8)
    assert np.all(np.asarray(jax.vmap(prob.distance_to_manifold)(jnp.asarray(res.theta))) < 1e-12)


@pytest.mark.slow
def test_vector_field_against_closed_form():
    prob = PROBLEMS["curved_manifold"]()
    field = SharpnessFlowField(prob.loss, Dense(rank=2))
    for k in range(3):
        u = prob.sample_on_manifold(jax.random.PRNGKey(k), jnp.float64)
        q = field.quantities(u)
        g = prob.riemannian_grad_log_lambda1(u)
        np.testing.assert_allclose(q.g, g, atol=1e-10)
        np.testing.assert_allclose(q.lam1, prob.lambda1(u), rtol=1e-12)
        np.testing.assert_allclose(field(0.0, u, None), velocity(g, "F1"), atol=1e-10)
        lz = SharpnessFlowField(prob.loss, Lanczos(rank=2)).quantities(u)
        np.testing.assert_allclose(lz.g, g, atol=1e-8)


@pytest.mark.slow
def test_curved_manifold_against_independent_integration():
    # No closed form here: integrate the closed-form Riemannian field with scipy (DOP853,
    # rtol 1e-12, no projection) and compare endpoints at tau = 2 within 1e-6 relative.
    prob = PROBLEMS["curved_manifold"]()
    res = sharpness_flow(
        prob.loss,
        jnp.asarray(prob.start),
        SaveTimes(2.0, n=3),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
    )
    g = jax.jit(prob.riemannian_grad_log_lambda1)

    def rhs(t, y):
        gv = np.asarray(g(jnp.asarray(y)))
        return -0.25 * gv / (1 + 0.25 * gv @ gv)

    sol = solve_ivp(rhs, (0, 2.0), res.theta[0], method="DOP853", rtol=1e-12, atol=1e-14)
    ref = sol.y[:, -1] / np.linalg.norm(sol.y[:, -1])
    assert np.linalg.norm(res.theta[-1] - ref) <= 1e-6 * np.linalg.norm(ref)
    assert res.sharpness[-1] < res.sharpness[0]


@pytest.mark.slow
def test_rk4_order_and_adaptive_tolerance():
    prob = PROBLEMS["great_circle"]()
    start = jnp.asarray(prob.start)
    errs = []
    for dt in (0.2, 0.1, 0.05):
        res = sharpness_flow(
            prob.loss,
            start,
            SaveTimes(2.0, n=3),
            solver=RK4(),
            stepsize_controller=FixedSteps(dt),
        )
        ref = np.asarray(prob.flow_closed_form(jnp.asarray(res.theta[0]), 2.0, "F1"))
        errs.append(np.linalg.norm(res.theta[-1] - ref))
    order = loglog_fit(np.array([0.2, 0.1, 0.05]), np.array(errs)).slope
    assert 3.5 <= order <= 4.6, (order, errs)
    for rtol in (1e-6, 1e-9):
        pid = diffrax.PIDController(rtol=rtol, atol=rtol * 1e-2)
        res = sharpness_flow(prob.loss, start, SaveTimes(2.0, n=3), stepsize_controller=pid)
        ref = np.asarray(prob.flow_closed_form(jnp.asarray(res.theta[0]), 2.0, "F1"))
        assert np.linalg.norm(res.theta[-1] - ref) <= 30 * rtol


def _crossing(u):
    """Two normal curvatures a = 2 + u1, b = 2 - u1 on the circle u3 = u4 = 0: they cross at
    u1 = 0, which is exactly where the flow reducing lambda_1 = max(a, b) goes."""
    return 0.5 * ((2 + u[0]) * u[2] ** 2 + (2 - u[0]) * u[3] ** 2)


@pytest.mark.slow
def test_degenerate_top_eigenvalue_is_reported():
    loss = make_scale_invariant(_crossing)
    start = jnp.array([0.8, 0.6, 0.0, 0.0])
    with pytest.raises(DegenerateSharpnessError, match=r"degenerate along the flow near tau = "):
        sharpness_flow(loss, start, SaveTimes(30.0, n=31))
    with pytest.warns(DegenerateSharpnessWarning):
        res = sharpness_flow(
            loss, start, SaveTimes(30.0, n=31), degeneracy=Degeneracy(action="stop")
        )
    assert 1 < len(res.tau) < 31
    assert np.all((res.sharpness - res.lambda2) / res.sharpness >= 1e-3)


def test_bad_inputs():
    prob = PROBLEMS["great_circle"]()
    s = jnp.asarray(prob.start)
    with pytest.raises(ValueError, match="form"):
        sharpness_flow(prob.loss, s, 1.0, form="F2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"SaveTimes\.t1 must be"):
        sharpness_flow(prob.loss, s, -1.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        sharpness_flow(prob.loss, s, [0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="equally spaced"):
        sharpness_flow(prob.loss, s, [0.0, 1.0, 3.0], stepsize_controller=FixedSteps(0.1))
    with pytest.raises(ValueError, match="theta0 must be nonzero"):
        sharpness_flow(prob.loss, jnp.zeros(3), 1.0)
    with pytest.raises(TypeError, match=r"theory.Dense\(\)"):
        sharpness_flow(prob.loss, s, 1.0, geometry="dense")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="FixedSteps"):
        sharpness_flow(prob.loss, s, 1.0, stepsize_controller=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Degeneracy\.action"):
        Degeneracy(action="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Degeneracy\.gap_tol"):
        Degeneracy(gap_tol=-1.0)


@pytest.mark.slow
def test_gd_tracks_the_flow_from_the_equilibrium():
    # eta*wd = 1e-3, tau up to 1: |Phi(w_t) - theta(tau)| ~ 6e-5 * tau (docs/theory.md measured 1e-5
    # at 3e-4); the direction itself is off by the amplitude sqrt(eta wd / 2) ~ 0.022.
    from theory.engine.gd import gd_wd

    prob = PROBLEMS["great_circle"]()
    eta, wd = 0.1, 0.01
    w0 = eos_equilibrium_start(prob.loss, jnp.asarray(prob.start), eta=eta, wd=wd)
    lam1 = prob.lambda1(w0 / jnp.linalg.norm(w0))
    assert float(jnp.vdot(w0, w0)) == pytest.approx(eta * float(lam1) / 2, rel=1e-3)
    run = gd_wd(
        prob.loss, w0, eta=eta, wd=wd, steps=500, tracker=NoTracking(), saveat=SaveAt(every=50)
    )
    cmp = compare_with_flow(prob.loss, run.step, run.w, eta=eta, wd=wd, t0=0)
    assert cmp.tau[-1] == pytest.approx(1.0)
    assert cmp.dist_phi.max() < 3e-4
    assert 0.01 < np.median(cmp.dist_w) < 0.04
    np.testing.assert_allclose(cmp.angle, cmp.dist_phi, rtol=1e-3, atol=1e-12)
    np.testing.assert_allclose(cmp.sharpness_phi, cmp.sharpness_flow, rtol=1e-3)
    with pytest.raises(ValueError, match="t0=7 must be one of the recorded steps"):
        compare_with_flow(prob.loss, run.step, run.w, eta=eta, wd=wd, t0=7)


@pytest.mark.slow
def test_gauss_newton_geometry_matches_dense():
    # Least-squares geometry (Lanczos + residual-Jacobian projector + GN retraction) against the
    # dense geometry from the same point of Gamma: same flow to the integrator's accuracy.
    prob = PROBLEMS["curved_manifold"]()
    assert prob.residuals is not None
    dense = sharpness_flow(prob.loss, jnp.asarray(prob.start), SaveTimes(1.0, n=3))
    for geometry in (GaussNewton(prob.residuals), GaussNewton(prob.residuals, jacobian=True)):
        gn = sharpness_flow(
            prob.loss, jnp.asarray(dense.theta[0]), SaveTimes(1.0, n=3), geometry=geometry
        )
        assert gn.rank == 2
        np.testing.assert_allclose(gn.theta, dense.theta, atol=1e-8)
        np.testing.assert_allclose(gn.sharpness, dense.sharpness, rtol=1e-8)
