"""The central flow of GD+WD (theory/flows/central.py) against independent oracles.

* a dense reference implementation: ``lambda_1`` by ``eigvalsh`` of ``jax.hessian(f)`` and its
  gradient by autodiff through ``eigvalsh`` (no Hellmann-Feynman, no Lanczos), ``sigma^2`` by
  the closed form, integrated by a fixed-step RK4;
* constructed problems where ``Sigma`` is known in closed form: the great circle on ``Gamma``
  (one eigenvalue at the edge; the equilibrium of docs/theory.md section 5) and a two-constraint
  circle with two equal eigenvalues at the edge (a 2 x 2 linear system);
* gradient flow on ``f = L + wd/2 |w|^2`` below the edge (``scipy.integrate.solve_ivp``);
* bad inputs.

All in float64 (tests/conftest.py enables x64).
"""

from __future__ import annotations

import math
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from theory.core.invariance import ScaleInvarianceError
from theory.flows.central import (
    CentralFlowField,
    EdgeSettings,
    central_flow,
    equilibrium_on_gamma,
    solve_sigma,
)
from theory.flows.common import Dense, Lanczos, SaveTimes
from theory.problems.analytic import PROBLEMS, great_circle

ETA = 0.1


GEOMETRIES = {"dense": Dense(), "lanczos": Lanczos()}


def _field(loss, eta, wd, *, kappa=0.0, max_edge=1, geometry="dense", qp_iters=200):
    return CentralFlowField(
        loss,
        jnp.asarray(eta),
        jnp.asarray(wd),
        jnp.asarray(kappa),
        geometry=GEOMETRIES[geometry],
        max_edge=max_edge,
        qp_iters=qp_iters,
    )


@eqx.filter_jit
def _quantities(field_, w, mode):
    return field_.quantities(w, mode)


def _oracle_velocity(loss, w, eta, wd, kappa=0.0, on_edge=True):
    """Dense reference: ``-eta (grad f + sigma^2/2 grad lambda_1)``, gradient through eigvalsh."""

    def f(x):
        return loss(x) + 0.5 * wd * jnp.vdot(x, x)

    def lam1(x):
        return jnp.linalg.eigvalsh(jax.hessian(f)(x))[-1]

    gf = jax.grad(f)(w)
    gl = jax.grad(lam1)(w)
    lin = jnp.vdot(gl, gf) - (kappa / eta) * (lam1(w) - 2.0 / eta)
    s2 = jnp.where(on_edge, jnp.maximum(0.0, -2.0 * lin / jnp.vdot(gl, gl)), 0.0)
    return -eta * (gf + 0.5 * s2 * gl), s2, lam1(w)


def _to_edge(loss, u, eta, wd):
    """``u`` rescaled so that ``eta (lambda_1(hess L) + wd) = 2`` (``lambda_1 ~ 1/|w|^2``)."""
    lam_u = float(jnp.linalg.eigvalsh(jax.hessian(loss)(u))[-1])
    return u * math.sqrt(eta * lam_u / (2.0 - eta * wd))


# --------------------------------------------------------------------------------------------
# One point: the vector field against the dense oracle and closed forms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, geometry",
    [
        # great_circle with Lanczos shares its compilation with the closed-form test below
        ("great_circle", "lanczos"),
        pytest.param("curved_manifold", "lanczos", marks=pytest.mark.slow),
        pytest.param("ire_toy", "dense", marks=pytest.mark.slow),
    ],
)
@pytest.mark.slow
def test_velocity_matches_dense_oracle_on_the_edge(name, geometry):
    prob = PROBLEMS[name]()
    wd = 1e-2 / ETA
    key = jax.random.PRNGKey(3)
    for i in range(3):
        k1, k2 = jax.random.split(jax.random.fold_in(key, i))
        u = prob.sample_on_manifold(k1, jnp.float64)
        u = u + 0.03 * jax.random.normal(k2, u.shape, jnp.float64)  # off Gamma: grad L != 0
        w = _to_edge(prob.loss, u / jnp.linalg.norm(u), ETA, wd)
        q = _quantities(_field(prob.loss, ETA, wd, geometry=geometry), w, jnp.asarray(1))
        v_ref, s2_ref, lam_ref = _oracle_velocity(prob.loss, w, ETA, wd)
        assert float(q.lam[0]) + wd == pytest.approx(float(lam_ref), rel=1e-10)
        assert float(q.sigma[0, 0]) == pytest.approx(float(s2_ref), rel=1e-7, abs=1e-14)
        np.testing.assert_allclose(q.velocity, v_ref, rtol=1e-7, atol=1e-12 * float(norm(v_ref)))


def norm(x):
    return jnp.linalg.norm(x)


def test_below_the_edge_sigma_is_zero_and_the_flow_is_gradient_flow_on_f():
    prob = PROBLEMS["curved_manifold"]()
    wd = 1e-2 / ETA
    u = jnp.asarray(prob.start)
    w = 1.3 * _to_edge(prob.loss, u, ETA, wd)  # eta (lambda_1 + wd) = 2 / 1.69 + ...: below
    q = _quantities(_field(prob.loss, ETA, wd, kappa=0.2), w, jnp.asarray(0))
    assert float(q.sigma[0, 0]) == 0.0
    grad_f = jax.grad(prob.loss)(w) + wd * w
    np.testing.assert_allclose(q.velocity, -ETA * grad_f, rtol=1e-13)


@pytest.mark.parametrize("phi", [0.3, 1.0, 2.2])
def test_closed_form_sigma2_on_gamma_great_circle(phi):
    """On the equator of the great circle every term is closed-form: ``grad L = 0``,
    ``grad lambda_1 = (P grad S - 2 S u) / r^3`` (no normal part, by the parity in ``u_3``),
    so ``sigma^2 = eta wd r^2 / ((2 - eta wd)(1 + |g|^2/4))``, the time-averaged loss is
    ``sigma^2 lambda_1 / 2`` and the direction drifts by ``-(eta wd / 2) g / (1 + |g|^2/4)``."""
    prob = great_circle(beta=3.0)
    eta, wd = ETA, 3e-2 / ETA
    u = prob.point(jnp.asarray(phi))
    s = float(prob.lambda1(u))
    g = np.asarray(prob.riemannian_grad_log_lambda1(u))
    eq = equilibrium_on_gamma(s, float(np.linalg.norm(g)), eta=eta, wd=wd)
    w = math.sqrt(eq["norm_sq"]) * u
    for geometry in ("dense", "lanczos"):
        q = _quantities(_field(prob.loss, eta, wd, geometry=geometry), w, jnp.asarray(1))
        assert eta * (float(q.lam[0]) + wd) == pytest.approx(2.0, rel=1e-12)
        assert float(q.sigma[0, 0]) == pytest.approx(eq["sigma2"], rel=1e-9)
        avg = float(q.loss) + 0.5 * float(q.sigma[0, 0]) * float(q.lam[0])
        assert avg == pytest.approx(eq["avg_loss"], rel=1e-9)
        r = math.sqrt(eq["norm_sq"])
        tangent = np.asarray(prob.tangent_projector(u)) @ np.asarray(q.velocity) / r
        expected = -(eta * wd / 2) * g / (1 + 0.25 * g @ g)
        np.testing.assert_allclose(tangent, expected, rtol=1e-9, atol=1e-15)
        # the norm is balanced: d|w|^2/dt = 2 <w, v> equals d(eta S / (2 - eta wd))/dt
        dnorm_sq = 2 * float(jnp.vdot(w, q.velocity))
        ds = s * float(g @ (tangent))  # d S / dt along the drift (S g = P grad S)
        assert dnorm_sq == pytest.approx(eta * ds / (2 - eta * wd), rel=1e-8)


class _TwoConstraints(eqx.Module):
    """``L = 1/2 (1 + 2 u_1^2) u_3^2 + 1/2 (1.5 + u_2^2) u_4^2``, ``u = w / |w|``, ``D = 4``.

    ``Gamma`` = the circle ``u_3 = u_4 = 0``; on it ``lambda = (1 + 2 cos^2 phi, 1.5 +
    sin^2 phi)`` with eigenvectors ``e_3, e_4``: both equal 2 at ``phi = pi/4``."""

    def __call__(self, w):
        u = w / jnp.linalg.norm(w)
        return 0.5 * (1 + 2 * u[0] ** 2) * u[2] ** 2 + 0.5 * (1.5 + u[1] ** 2) * u[3] ** 2


@pytest.mark.parametrize("geometry", ["dense", pytest.param("lanczos", marks=pytest.mark.slow)])
def test_two_eigenvalues_at_the_edge_closed_form(geometry):
    """Two equal eigenvalues at the edge. By parity the mixed gradient ``grad B_34`` vanishes
    on ``Gamma`` and ``grad lambda_i = (S_i' t - 2 S u) / r^3`` with ``S_1' = -2, S_2' = 1``
    at ``phi = pi/4``; ``Sigma = diag(s)`` with ``s = 4 wd lambda G^{-1} 1``, ``r^6 G =
    [[20, 14], [14, 17]]`` (both entries positive)."""
    loss = _TwoConstraints()
    eta, wd = ETA, 1e-2 / ETA
    c = s_ = math.sqrt(0.5)
    u = jnp.asarray([c, s_, 0.0, 0.0])
    r = math.sqrt(eta * 2.0 / (2 - eta * wd))
    w = r * u
    lam = 2.0 / r**2
    gram = np.array([[20.0, 14.0], [14.0, 17.0]]) / r**6
    s = 4 * wd * lam * np.linalg.solve(gram, np.ones(2))
    assert np.all(s > 0)
    t = np.array([-s_, c, 0.0, 0.0])
    grads = [(d * t - 2 * 2.0 * np.asarray(u)) / r**3 for d in (-2.0, 1.0)]
    v_ref = -eta * (wd * np.asarray(w) + 0.5 * (s[0] * grads[0] + s[1] * grads[1]))
    field_ = _field(loss, eta, wd, max_edge=2, geometry=geometry, qp_iters=2000)
    q = _quantities(field_, w, jnp.asarray(2))
    np.testing.assert_allclose(q.lam[:2], [lam, lam], rtol=1e-10)
    assert float(jnp.trace(q.sigma)) == pytest.approx(float(s.sum()), rel=1e-6)
    # Both constraints bind and fix the point: the velocity vanishes (to rounding).
    np.testing.assert_allclose(q.velocity, v_ref, atol=1e-9 * eta * wd * r)
    # with one mode only, sigma^2 = -2 <grad lambda_1, grad f> / |grad lambda_1|^2 on one of
    # the two (the eigenbasis of a degenerate pair is arbitrary, so only the trace is fixed
    # when both are active); here just check complementarity of the single-mode solution
    q1 = _quantities(field_, w, jnp.asarray(1))
    assert float(q1.sigma[1, 1]) == 0.0 and float(q1.sigma[0, 0]) > 0.0


def test_solve_sigma_complementarity_random():
    """The QP's KKT conditions on random small instances: ``M, Z`` PSD, ``<M, Z> = 0``."""
    rng = np.random.default_rng(0)
    solve = jax.jit(solve_sigma, static_argnums=3)  # one compilation for the five instances
    for _ in range(5):
        jac = rng.standard_normal((3, 3, 7))
        jac = 0.5 * (jac + jac.transpose(1, 0, 2))
        gram = np.einsum("abd,ced->abce", jac, jac)
        lin = rng.standard_normal((3, 3))
        lin = 0.5 * (lin + lin.T)
        m = np.asarray(solve(jnp.asarray(gram), jnp.asarray(lin), jnp.ones(3, bool), 5000))
        z = lin + 0.5 * np.einsum("abce,ce->ab", gram, m)
        assert np.linalg.eigvalsh(m).min() >= -1e-10
        assert np.linalg.eigvalsh(z).min() >= -1e-6
        assert abs(np.sum(m * z)) <= 1e-6 * (1 + np.abs(m).sum())


# --------------------------------------------------------------------------------------------
# Whole trajectories (dense geometry: one compilation shared by the tests below)
# --------------------------------------------------------------------------------------------


def _start(prob, eta, eos0):
    u = jnp.asarray(prob.start)
    lam = float(jnp.linalg.eigvalsh(jax.hessian(prob.loss)(u))[-1])
    return u * math.sqrt(eta * lam / eos0)


@pytest.mark.slow  # default-suite budget; the gradient-flow-on-f case below the edge stays default
def test_below_the_edge_the_flow_is_gradient_flow_scipy():
    prob = great_circle()
    eta, wd = ETA, 1e-2 / ETA
    w0 = _start(prob, eta, 0.3)
    res = central_flow(prob.loss, w0, eta=eta, wd=wd, saveat=SaveTimes(60.0, n=7), geometry=Dense())
    assert res.events == () and res.onset is None
    assert np.all(res.mode == 0) and np.all(res.sigma2 == 0)
    grad_f = jax.jit(jax.grad(lambda x: prob.loss(x) + 0.5 * wd * jnp.vdot(x, x)))
    ref = solve_ivp(
        lambda _, y: -eta * np.asarray(grad_f(jnp.asarray(y))),
        (0.0, 60.0),
        np.asarray(w0),
        t_eval=res.t,
        rtol=1e-11,
        atol=1e-13,
    )
    np.testing.assert_allclose(res.w, ref.y.T, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(res.avg_loss, res.loss)


def _oracle_trajectory(loss, w0, eta, wd, kappa, t_end, dt):
    """Fixed-step RK4 of the dense reference field; mode 1 once ``eta lambda_1(f) >= 2``."""

    def vel(w, on):
        return _oracle_velocity(loss, w, eta, wd, kappa, on)

    def step(carry, _):
        w, on = carry
        k1 = vel(w, on)[0]
        k2 = vel(w + 0.5 * dt * k1, on)[0]
        k3 = vel(w + 0.5 * dt * k2, on)[0]
        k4 = vel(w + dt * k3, on)[0]
        w = w + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        _, _, lam = vel(w, on)
        on = on | (eta * lam >= 2.0)
        return (w, on), w

    n = round(t_end / dt)
    _, ws = jax.lax.scan(step, (w0, jnp.asarray(False)), None, length=n)
    return jnp.concatenate([w0[None], ws])


@pytest.mark.slow
def test_trajectory_through_the_onset_matches_the_dense_oracle():
    prob = great_circle()
    eta, wd, kappa = ETA, 1e-2 / ETA, 0.2
    w0 = _start(prob, eta, 0.3)
    t_end, dt = 240.0, 0.02
    res = central_flow(
        prob.loss,
        w0,
        eta=eta,
        wd=wd,
        saveat=SaveTimes(t_end, n=13),
        geometry=Dense(),
        edge=EdgeSettings(kappa=kappa),
    )
    ref = np.asarray(eqx.filter_jit(_oracle_trajectory)(prob.loss, w0, eta, wd, kappa, t_end, dt))
    idx = np.rint(res.t / dt).astype(int)
    assert res.onset is not None and 50 < res.onset < 150
    assert [e.change for e in res.events] == [1]
    # The oracle switches on at the end of the RK4 step that crosses the edge, overshooting
    # eta lambda_1 by up to dt * d(eta lambda_1)/dt ~ 1e-3; the restoring rate kappa removes
    # that within ~30 steps. Away from the switch the two agree to the integrators' accuracy.
    settled = (res.t < res.onset) | (res.t > res.onset + 30)
    np.testing.assert_allclose(res.w[settled], ref[idx][settled], rtol=2e-6, atol=1e-8)
    np.testing.assert_allclose(res.w, ref[idx], rtol=2e-4, atol=1e-6)
    on = res.mode == 1
    # on the edge: eta (lambda_1 + wd) = 2, i.e. the project's EoS number is 2 - eta wd
    np.testing.assert_allclose(res.eos[on][1:], 2.0 - eta * wd, rtol=1e-5)
    assert np.all(res.sigma2[on][1:] > 0)


@pytest.mark.slow
def test_on_gamma_start_matches_the_equilibrium():
    """Started on ``Gamma`` at the edge, the flow stays near the derived equilibrium."""
    prob = great_circle()
    eta, wd = ETA, 1e-3 / ETA
    u = prob.point(jnp.asarray(0.6))
    g = float(jnp.linalg.norm(prob.riemannian_grad_log_lambda1(u)))
    eq = equilibrium_on_gamma(float(prob.lambda1(u)), g, eta=eta, wd=wd)
    w0 = math.sqrt(eq["norm_sq"]) * u
    res = central_flow(prob.loss, w0, eta=eta, wd=wd, saveat=SaveTimes(40.0, n=5), geometry=Dense())
    assert res.mode[0] == 1 and res.onset == 0.0 and res.events == ()
    for i in range(len(res.t)):  # the equilibrium of the point of Gamma reached at each row
        u = jnp.asarray(res.w[i] / res.norm[i])
        g = float(jnp.linalg.norm(prob.riemannian_grad_log_lambda1(u)))
        eq = equilibrium_on_gamma(float(prob.lambda1(u)), g, eta=eta, wd=wd)
        assert float(prob.distance_to_manifold(u)) < 1e-9  # the parity keeps it on Gamma
        assert res.norm[i] ** 2 == pytest.approx(eq["norm_sq"], rel=1e-6)
        # sigma^2 also carries the restoring term (kappa / eta)(lambda_1 + wd - 2 / eta): an
        # edge error of ~1e-7 (the integrator's) is amplified by kappa / (eta wd) = 200.
        assert res.sigma2[i] == pytest.approx(eq["sigma2"], rel=1e-4)
        assert res.avg_loss[i] == pytest.approx(eq["avg_loss"], rel=1e-4)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_non_invariant_loss_is_refused():
    def loss(w):
        return 0.5 * jnp.vdot(w, w) + w[0] ** 3

    with pytest.raises(ScaleInvarianceError):
        central_flow(loss, jnp.ones(3), eta=ETA, wd=0.1, saveat=10.0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"eta": 0.1, "wd": 10.0}, ValueError, "eta \\* wd must be < 1"),
        ({"eta": -0.1, "wd": 0.1}, ValueError, "eta must be a positive"),
        ({"saveat": -1.0}, ValueError, "SaveTimes.t1 must be a positive"),
        # a geometry is an object now: the old strings are refused with the objects named
        ({"geometry": "dense"}, TypeError, "geometry must be a geometry object .*Dense"),
        ({"edge": {"kappa": 0.1}}, TypeError, "edge must be a theory.EdgeSettings"),
        ({"solver": "tsit5"}, TypeError, "solver must be a diffrax solver"),
        ({"solver": diffrax.Euler()}, TypeError, "solver must be adaptive"),
        ({"stepsize_controller": 1e-7}, TypeError, "stepsize_controller must be a diffrax"),
        (
            {"stepsize_controller": diffrax.ConstantStepSize()},
            TypeError,
            "stepsize_controller must be adaptive",
        ),
        (
            {"stepsize_controller": diffrax.PIDController(rtol=-1.0, atol=1e-9)},
            ValueError,
            "stepsize_controller.rtol must be a positive",
        ),
    ],
)
def test_bad_settings(kwargs, error, match):
    prob = great_circle()
    kw = {"eta": 0.1, "wd": 0.1, "saveat": 10.0, **kwargs}
    with pytest.raises(error, match=match):
        central_flow(prob.loss, jnp.asarray(prob.start), **kw)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"kappa": float("nan")}, ValueError, "EdgeSettings.kappa must be"),
        ({"kappa": -0.1}, ValueError, "EdgeSettings.kappa must be"),
        ({"leave_tol": 0.0}, ValueError, "EdgeSettings.leave_tol must be a positive"),
        ({"start_tol": -1e-3}, ValueError, "EdgeSettings.start_tol must be"),
        ({"max_edge": 0}, ValueError, "EdgeSettings.max_edge must be"),
        ({"max_edge": 1.5}, TypeError, "EdgeSettings.max_edge must be a positive int"),
        ({"qp_iters": True}, TypeError, "EdgeSettings.qp_iters must be a positive int"),
        ({"max_segments": -2}, ValueError, "EdgeSettings.max_segments must be"),
        ({"max_steps": 0}, ValueError, "EdgeSettings.max_steps must be"),
    ],
)
def test_edge_settings_refuse_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        EdgeSettings(**kwargs)


def test_field_refuses_a_string_geometry():
    with pytest.raises(TypeError, match=r"CentralFlowField\.geometry must be a geometry object"):
        CentralFlowField(
            great_circle().loss, jnp.asarray(0.1), jnp.asarray(0.1), jnp.asarray(0.0), "dense"
        )


@pytest.mark.slow
def test_config_records_every_setting():
    """The result's config names the geometry, each edge setting, the solver and the
    controller's tolerances (a start well below the edge: a short gradient-flow solve)."""
    prob = great_circle()
    w0 = _start(prob, ETA, 0.3)
    edge = EdgeSettings(max_edge=1, kappa=0.3, leave_tol=2e-4, start_tol=0.0, qp_iters=7)
    res = central_flow(
        prob.loss, w0, eta=ETA, wd=0.1, saveat=SaveTimes(ts=[1.0, 2.0]), geometry=Dense(),
        edge=edge, stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-9),
    )  # fmt: skip
    np.testing.assert_array_equal(res.t, [0.0, 1.0, 2.0])
    assert res.config["geometry"] == "Dense" and res.config["solver"] == "Tsit5"
    assert res.config["controller"] == "PIDController"
    assert (res.config["rtol"], res.config["atol"]) == (1e-6, 1e-9)
    for name in ("max_edge", "kappa", "leave_tol", "start_tol", "qp_iters", "max_segments"):
        assert res.config[name] == getattr(edge, name), name
    assert res.config["max_steps"] == edge.max_steps and res.config["eta"] == ETA


def test_start_far_above_the_edge_is_refused_with_the_fix():
    prob = great_circle()
    eta, wd = ETA, 0.1
    w0 = _start(prob, eta, 6.0)  # eta lambda_1 = 6
    with pytest.raises(ValueError, match="above the edge of stability") as err:
        central_flow(prob.loss, w0, eta=eta, wd=wd, saveat=10.0, geometry=Dense())
    c = float(str(err.value).split("c >= ")[1].split()[0])
    lam = float(jnp.linalg.eigvalsh(jax.hessian(prob.loss)(c * w0))[-1])
    assert eta * (lam + wd) == pytest.approx(2.0, rel=1e-4)


def test_zero_start_is_refused():
    with pytest.raises(ValueError, match="w0 must be nonzero"):
        central_flow(great_circle().loss, jnp.zeros(3), eta=ETA, wd=0.1, saveat=10.0)


# --------------------------------------------------------------------------------------------
# The simulation's report and checks read stored NaN (saved as the text "nan") and None
# --------------------------------------------------------------------------------------------


def _stored_summary():
    from sims._store import StoredRun

    run = {
        "problem": "mlp_layernorm",
        "eta_wd": 0.01,
        "onset_gd": None,
        "onset_central_flow": "nan",
        "onset_predicted_phase2": 94.4,
        "max_cf_norm_after": "nan",
        "max_sr_norm": "nan",
        "max_cf_dir_after": 0.1,
        "max_sr_dir": "nan",
        "sr_failure": "ProjectionError: did not converge",
        "phase3_mean_gd_norm": 0.74,
        "phase3_mean_cf_norm": "nan",
    }
    return StoredRun(Path("/nonexistent"), {}, {"summary": {"mlp_layernorm.0": run}})


def test_report_and_checks_accept_stored_nan_and_none():
    from sims.checks import central as checks_central
    from sims.studies import central_flow as sim

    lines = sim._report(_stored_summary())
    assert "onset GD nan, central nan" in lines[0] and "SR failed" in lines[0]

    from sims._store import ResultStore
    from sims.checks.core import Context

    stored = _stored_summary()
    stored.meta["config"] = {"window": 8}
    ctx = Context(ResultStore("/nonexistent"), _cache={"central_flow": stored})
    results = checks_central._vs_gd(ctx)
    assert results and not any(r.passed for r in results)  # NaN never passes
