"""Edge Flow (theory/flows/edge.py) against independent oracles, float64.

* the vector field at points of the analytic problems against dense ``jax.hessian`` and
  ``eigvalsh`` (the Rayleigh dynamics, the growth rate), against central finite differences of
  the symmetrized loss (the center), and against the closed forms of the great circle on
  ``Gamma`` (``v_1 = e_3``, ``lambda_1 = (1 + beta u_1^2) / |w|^2``); the center's force is
  ``-(eta/2) rho^2 grad lambda_1 + O(rho^4)`` with ``grad lambda_1`` by autodiff through
  ``eigvalsh`` (no Hellmann-Feynman);
* ``rho -> 0``: the center follows gradient flow on ``f = L + wd/2 |w|^2`` (``solve_ivp``);
* a quadratic: closed forms ``x(t) = exp(-eta (A + wd) t) x0``, ``rho(t) = rho0 |1 - eta (a_1 +
  wd)|^t`` (GD's own oscillation along ``v_1``, exactly);
* the convergence order of fixed-step integration; Lanczos against dense geometry;
* :func:`first_overshoot` on a sine; bad inputs.
"""

from __future__ import annotations

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from theory.flows.common import Dense, Lanczos, SaveTimes
from theory.flows.edge import EdgeFlowField, Oscillation, edge_flow, first_overshoot
from theory.problems.analytic import PROBLEMS, great_circle

ETA = 0.1


def _field(loss, eta=ETA, wd=0.05, kick=0.0):
    return EdgeFlowField(loss, jnp.asarray(eta), jnp.asarray(wd), jnp.asarray(kick))


def _point(name, seed, scale=1.0):
    """A generic point off ``Gamma`` and a generic unit direction."""
    prob = PROBLEMS[name]()
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    u = prob.sample_on_manifold(k1, jnp.float64)
    w = scale * (u + 0.05 * jax.random.normal(k2, u.shape, jnp.float64))
    v = jax.random.normal(jax.random.fold_in(k2, 1), u.shape, jnp.float64)
    return prob, w, v / jnp.linalg.norm(v)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("great_circle", marks=pytest.mark.slow),
        "ire_toy",
        pytest.param("curved_manifold", marks=pytest.mark.slow),
    ],
)  # default-suite budget: the others in make test-slow
def test_field_against_dense_and_finite_differences(name):
    prob, x, v = _point(name, 3, scale=0.4)
    eta, wd, rho = ETA, 0.05, 0.02
    field_ = _field(prob.loss, eta, wd)
    dx, dv, dlog = eqx.filter_jit(field_)(0.0, (x, 2.0 * v, jnp.log(rho)), None)

    # Center: -eta (grad F + wd x), F = symmetrized loss, grad F by central differences.
    @jax.jit
    def sym(z):
        return 0.5 * (prob.loss(z + rho * v) + prob.loss(z - rho * v))

    h = 1e-5
    eye = np.eye(len(x))
    fd = np.array([(sym(x + h * e) - sym(x - h * e)) / (2 * h) for e in eye])
    np.testing.assert_allclose(dx, -eta * (fd + wd * np.asarray(x)), rtol=1e-7, atol=1e-9)
    # Direction (|v| = 2 is kept): eta (H v - q v) with the dense Hessian.
    hess = np.asarray(jax.hessian(prob.loss)(x))
    q = float(v @ hess @ v)
    np.testing.assert_allclose(dv, eta * 2.0 * (hess @ v - q * v), rtol=1e-10, atol=1e-12)
    assert abs(float(jnp.vdot(dv, v))) < 1e-12  # |v| is conserved
    np.testing.assert_allclose(dlog, math.log(abs(1 - eta * (q + wd))), rtol=1e-12)


@pytest.mark.parametrize(
    "name", ["great_circle", pytest.param("curved_manifold", marks=pytest.mark.slow)]
)  # default-suite budget: the second problem (15 s) in make test-slow
def test_center_force_is_third_order_sharpness_gradient(name):
    """``dx/dt + eta grad f = -(eta/2) rho^2 grad lambda_1 + O(rho^4)`` along the top
    eigenvector; ``grad lambda_1`` by autodiff through the dense ``eigvalsh``."""
    prob, x, _ = _point(name, 5, scale=0.5)
    eta, wd = ETA, 0.02
    _, vecs = np.linalg.eigh(np.asarray(jax.hessian(prob.loss)(x)))
    v1 = jnp.asarray(vecs[:, -1])
    grad_lam = jax.jit(jax.grad(lambda z: jnp.linalg.eigvalsh(jax.hessian(prob.loss)(z))[-1]))(x)
    grad_f = jax.grad(prob.loss)(x) + wd * x
    field_ = eqx.filter_jit(_field(prob.loss, eta, wd))
    errs = []
    for rho in (4e-2, 2e-2, 1e-2):
        dx, _, _ = field_(0.0, (x, v1, jnp.log(rho)), None)
        force = (dx + eta * grad_f) / (eta * rho**2)
        errs.append(float(jnp.linalg.norm(force + 0.5 * grad_lam)))
    # O(rho^2) relative remainder: halving rho divides the error by ~4.
    assert errs[-1] < 1e-2 * float(jnp.linalg.norm(grad_lam))
    assert 3.5 < errs[0] / errs[1] < 4.5 and 3.5 < errs[1] / errs[2] < 4.5, errs


def test_field_closed_forms_on_great_circle():
    prob = great_circle()
    beta = 3.0
    for phi in (0.2, 1.0, 2.5):
        r = 0.37
        c = math.cos(phi)
        x = r * jnp.asarray([c, math.sin(phi), 0.0])
        e3 = jnp.asarray([0.0, 0.0, 1.0])
        eta, wd, rho, kick = ETA, 0.03, 1e-6, 1e-5
        _, dv, dlog = _field(prob.loss, eta, wd, kick)(0.0, (x, e3, jnp.log(rho)), None)
        lam1 = (1 + beta * c**2) / r**2
        np.testing.assert_allclose(dv, 0.0, atol=1e-12)  # e_3 is the top eigenvector
        expect = math.log(abs(1 - eta * (lam1 + wd))) + 0.5 * (kick * r / rho) ** 2
        np.testing.assert_allclose(float(dlog), expect, rtol=1e-10)


@pytest.mark.slow  # default-suite budget
def test_without_oscillation_the_center_is_gradient_flow_on_f():
    prob, w0, _ = _point("ire_toy", 7, scale=1.0)
    eta, wd, t1 = ETA, 0.05, 40.0
    res = edge_flow(
        prob.loss, w0, eta=eta, wd=wd, saveat=SaveTimes(t1, n=9), oscillation=Oscillation(1e-30)
    )
    assert np.all(res.eos + eta * wd < 1.9)  # below the edge: rho stays negligible
    grad = jax.jit(jax.grad(prob.loss))

    def rhs(_, w):
        return -eta * (np.asarray(grad(jnp.asarray(w))) + wd * w)

    ref = solve_ivp(rhs, (0, t1), np.asarray(w0), t_eval=res.t, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(res.x, ref.y.T, rtol=0, atol=1e-8)


class _Quadratic(eqx.Module):
    mat: jax.Array  # a leaf: both parametrizations share one compilation

    def __call__(self, w):
        return 0.5 * w @ self.mat @ w


@pytest.mark.parametrize(
    "a1", [15.0, pytest.param(25.0, marks=pytest.mark.slow)]
)  # eta (a1 + wd) below / above the edge 2
def test_quadratic_closed_form(a1):
    """``L = 1/2 w^T A w``: the magnitude grows at GD's linearized rate, exactly."""
    a = jnp.asarray([a1, 6.0, 2.0, 0.5])
    q_mat = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(0), (4, 4), jnp.float64))[0]
    loss = _Quadratic(q_mat @ jnp.diag(a) @ q_mat.T)

    w0 = jnp.asarray([1.0, -0.5, 0.3, 0.2])
    eta, wd, t1, rho0 = ETA, 0.04, 30.0, 1e-3
    res = edge_flow(
        loss, w0, eta=eta, wd=wd, saveat=SaveTimes(t1, n=31), oscillation=Oscillation(rho0)
    )
    x_ref = np.stack([q_mat @ (np.exp(-eta * (a + wd) * t) * (q_mat.T @ w0)) for t in res.t])
    np.testing.assert_allclose(res.x, x_ref, rtol=1e-7, atol=1e-10)
    factor = abs(1 - eta * (a1 + wd))
    rho_ref = rho0 * float(jnp.linalg.norm(w0)) * factor**res.t
    np.testing.assert_allclose(res.rho, rho_ref, rtol=1e-7)
    np.testing.assert_allclose(res.alignment, 1.0, atol=1e-10)
    # GD's own oscillation along v_1: its component there is multiplied by 1 - eta (a1 + wd).
    assert (factor > 1) == (a1 > 2 / eta - wd)


@eqx.filter_jit
def _fixed_step(field_, y0, t1, dt):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field_),
        diffrax.Heun(),
        t0=0.0,
        t1=t1,
        dt0=dt,
        y0=y0,
        stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=1024,
    )
    return jax.tree.map(lambda a: a[-1], sol.ys)


@pytest.mark.slow
def test_convergence_order_of_fixed_step_integration():
    """Heun (order 2), fixed steps of 1/4 .. 1/16 GD step: halving the step divides the error
    against the adaptive Tsit5 solve (rtol 1e-8) by ~4; ``edge_flow`` with
    ``ConstantStepSize()`` takes the gap between save times as its step."""
    prob = great_circle()
    eta, wd, rho0, kick, t1 = ETA, 0.1, 1e-3, 1e-4, 16.0
    w0 = jnp.asarray([0.8, 0.6, 0.05]) * math.sqrt(ETA * 1.9 / 1.7)  # eta lambda_1 = 2.6
    kw = {"eta": eta, "wd": wd, "oscillation": Oscillation(rho0, kick)}
    ref = edge_flow(prob.loss, w0, saveat=SaveTimes(t1, n=2), **kw)
    field_ = _field(prob.loss, eta, wd, kick)
    y0 = (w0, jnp.asarray(ref.v[0]), jnp.log(rho0 * jnp.linalg.norm(w0)))
    errs = []
    for dt in (0.25, 0.125, 0.0625):
        x, _, log_rho = _fixed_step(field_, y0, t1, jnp.asarray(dt))
        errs.append(np.linalg.norm(x - ref.x[-1]) + abs(float(log_rho) - math.log(ref.rho[-1])))
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(1.8 < p < 2.3 for p in orders), (errs, orders)
    fixed = edge_flow(
        prob.loss,
        w0,
        saveat=SaveTimes(t1, n=int(t1 / 0.125) + 1),
        solver=diffrax.Heun(),
        stepsize_controller=diffrax.ConstantStepSize(),
        **kw,
    )
    x, _, log_rho = _fixed_step(field_, y0, t1, jnp.asarray(0.125))
    np.testing.assert_allclose(fixed.x[-1], x, rtol=1e-12)
    assert fixed.num_steps == int(t1 / 0.125)


@pytest.mark.slow  # default-suite budget; the field against dense stays default
def test_lanczos_geometry_equals_dense():
    prob = great_circle()
    w0 = jnp.asarray(prob.start) * 0.5
    kw = {
        "eta": ETA,
        "wd": 0.1,
        "saveat": SaveTimes(30.0, n=7),
        "oscillation": Oscillation(1e-6, 1e-8),
    }
    a = edge_flow(prob.loss, w0, geometry=Dense(), **kw)
    b = edge_flow(prob.loss, w0, geometry=Lanczos(iters=3), **kw)
    np.testing.assert_allclose(a.x, b.x, atol=1e-9)
    np.testing.assert_allclose(a.eos, b.eos, rtol=1e-9)
    assert a.config["geometry"] == "Dense" and b.config["geometry"] == "Lanczos"


def test_first_overshoot_of_a_sine():
    t = np.linspace(0.0, 10.0, 20001)
    o = first_overshoot(t, np.sin(t), 0.5)
    assert abs(o.onset - math.pi / 6) < 1e-6
    assert abs(o.peak - 1.0) < 1e-6 and abs(o.t_peak - math.pi / 2) < 1e-3
    assert abs(o.duration - 2 * math.pi / 3) < 1e-6
    assert abs(o.period - 2 * math.pi) < 1e-6
    never = first_overshoot(t, np.zeros_like(t), 0.5)
    assert all(math.isnan(x) for x in never)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"eta": 0.0}, ValueError, "eta must be a positive"),
        ({"eta": -0.1}, ValueError, "eta must be a positive"),
        ({"wd": 10.0}, ValueError, "eta \\* wd must be < 1"),
        ({"geometry": "dense"}, TypeError, "geometry must be a geometry object"),
        ({"w0": jnp.zeros(3)}, ValueError, "w0 must be nonzero"),
        ({"oscillation": 1e-6}, TypeError, "oscillation must be theory.Oscillation"),
        ({"solver": "tsit5"}, TypeError, "solver must be a diffrax solver"),
        ({"stepsize_controller": 1e-8}, TypeError, "stepsize_controller must be a diffrax"),
        ({"saveat": -1.0}, ValueError, "SaveTimes.t1 must be a positive"),
    ],
)
def test_bad_inputs(kwargs, err, match):
    prob = great_circle()
    args = {
        "w0": jnp.asarray(prob.start),
        "eta": ETA,
        "wd": 0.01,
        "saveat": 10.0,
        "oscillation": Oscillation(1e-6),
    }
    args |= kwargs
    with pytest.raises(err, match=match):
        edge_flow(prob.loss, **args)


@pytest.mark.parametrize(
    ("args", "match"),
    [((0.0,), "Oscillation.rho0 must be a positive"), ((1e-6, -1.0), "Oscillation.kick must be")],
)
def test_oscillation_settings_are_checked(args, match):
    with pytest.raises(ValueError, match=match):
        Oscillation(*args)
