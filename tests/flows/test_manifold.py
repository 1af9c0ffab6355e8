"""Phi (projection onto Gamma) and tangent spaces against independent oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from theory.core.errors import ProjectionError
from theory.core.invariance import make_scale_invariant
from theory.flows.manifold import (
    dense_tangent_projector,
    hessian_rank,
    project_to_manifold,
    projection_info,
    tangent_projector,
)
from theory.problems.analytic import PROBLEMS


def _phi_scipy(loss, w):
    """The gradient-flow limit by scipy's DOP853 (independent of diffrax), float64."""
    grad = jax.jit(jax.grad(loss))
    sol = solve_ivp(
        lambda s, y: -np.asarray(grad(jnp.asarray(y))),
        (0, 400),
        np.asarray(w),
        method="DOP853",
        rtol=1e-13,
        atol=1e-15,
    )
    y = sol.y[:, -1]
    return y / np.linalg.norm(y), float(np.linalg.norm(grad(jnp.asarray(y))))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_phi_against_scipy_and_closed_forms(name):
    prob = PROBLEMS[name]()
    key = jax.random.PRNGKey(3)
    on = prob.sample_on_manifold(key, jnp.float64)
    starts = jnp.stack([jnp.asarray(prob.start), on + 0.05 * jax.random.normal(key, on.shape)])
    theta = project_to_manifold(prob.loss, 2.5 * starts)  # batch, and the norm is irrelevant
    for i in range(2):
        ref, g_ref = _phi_scipy(prob.loss, starts[i])
        # scipy itself stops at |grad| ~1e-13 (distance ~1e-13 / lambda_min): compare to 1e-10.
        assert g_ref < 1e-11
        np.testing.assert_allclose(theta[i], ref, atol=1e-10)
        assert float(prob.distance_to_manifold(theta[i])) < 1e-12
        assert abs(float(jnp.linalg.norm(theta[i])) - 1) < 1e-14
    single = projection_info(prob.loss, starts[0])
    assert bool(single.converged) and float(single.grad_norm) <= 1e-11
    np.testing.assert_allclose(single.theta, theta[0], atol=1e-13)
    # A point on Gamma projects to itself.
    np.testing.assert_allclose(project_to_manifold(prob.loss, on), on, atol=1e-12)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n == "curved_manifold" else n
        for n in sorted(PROBLEMS)
    ],
)
def test_tangent_projectors(name):
    prob = PROBLEMS[name]()
    u = prob.sample_on_manifold(jax.random.PRNGKey(5), jnp.float64)
    rank = hessian_rank(prob.loss, u)
    assert rank == prob.dim - 1 - prob.manifold_dim
    dense = dense_tangent_projector(prob.loss, u, rank)
    np.testing.assert_allclose(dense, prob.tangent_projector(u), atol=1e-10)
    lz = tangent_projector(prob.loss, u, rank=rank, method="lanczos")
    as_matrix = jax.vmap(lz)(jnp.eye(prob.dim)).T
    np.testing.assert_allclose(as_matrix, dense, atol=1e-9)
    np.testing.assert_allclose(dense @ dense, dense, atol=1e-12)
    np.testing.assert_allclose(dense @ u, 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="method"):
        tangent_projector(prob.loss, u, rank=rank, method="svd")


def _saddle(u):
    return -(u[2] ** 2) + 0.5 * u[0] ** 2


@pytest.mark.slow
def test_projection_failures_are_clear():
    loss = make_scale_invariant(_saddle)
    # Started exactly on a saddle: the gradient is 0 but it is not a minimizer.
    with pytest.raises(ProjectionError, match="not a minimizer"):
        project_to_manifold(loss, jnp.array([0.0, 1.0, 0.0]))
    # Too few steps to get anywhere.
    with pytest.raises(ProjectionError, match=r"\|grad L\| = .* after 3 steps"):
        project_to_manifold(loss, jnp.array([0.3, 1.0, 0.1]), max_steps=3)
    info = projection_info(loss, jnp.array([0.3, 1.0, 0.1]), max_steps=3)
    assert not bool(info.converged)
    with pytest.raises(ProjectionError, match=r"for rows \[1\]"):
        project_to_manifold(loss, jnp.array([[0.3, 1.0, 0.1], [0.0, 1.0, 0.0]]))
    np.testing.assert_allclose(
        project_to_manifold(loss, jnp.array([0.3, 1.0, 0.1])), [0, 0, 1], atol=1e-12
    )
    with pytest.raises(ValueError, match="w must be nonzero"):
        project_to_manifold(loss, jnp.zeros(3))
    with pytest.raises(ValueError, match="w must be finite"):
        project_to_manifold(loss, jnp.array([jnp.nan, 1.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        project_to_manifold(loss, jnp.ones((2, 2, 3)))


# Stiff: the normal eigenvalues at Gamma = {z = 0} span four decades (10 .. 1e-3).
_STIFF_A = jnp.array([10.0, 1.0, 0.1, 1e-3])


def _stiff(w):
    """``sum_i a_i z_i^2 / 2`` at ``u = w / |w| = (t, z)``, ``t`` in ``R^2``, ``z`` in ``R^4``."""
    u = w / jnp.linalg.norm(w)
    return 0.5 * jnp.sum(_STIFF_A * u[2:] ** 2)


@pytest.mark.slow
def test_implicit_solver_on_a_stiff_flow():
    # On the sphere dt/ds = 2 L t: the flow keeps the direction of t, so Phi(w) = (t / |t|, 0)
    # in closed form; it ends within |grad L| / a_min = gtol / 1e-3 of Gamma.
    starts = jnp.array([[0.6, 0.8, 0.1, -0.2, 0.15, 0.3], [1.0, -0.5, 0.05, 0.1, -0.2, -0.25]])
    exact = np.asarray(starts[:, :2]) / np.linalg.norm(np.asarray(starts[:, :2]), axis=1)[:, None]
    exact = np.concatenate([exact, np.zeros((2, 4))], axis=1)
    # The explicit path sits at its stability limit (dt ~ 3 / a_max = 0.3) while the slowest
    # mode needs s ~ 1e4 (> 3e4 steps), and its Newton polish skips eigenvalues below
    # 1e-3 lambda_1: it cannot finish (a cap of 1500 steps keeps the test short).
    cap = 1500
    explicit = projection_info(_stiff, starts, max_steps=cap)
    assert not np.asarray(explicit.converged).any()
    assert np.asarray(explicit.grad_norm).min() > 1e-9
    with pytest.raises(ProjectionError, match="solver='implicit'"):
        project_to_manifold(_stiff, starts, max_steps=cap)
    for solver in ("implicit", "auto"):
        info = projection_info(_stiff, starts, solver=solver, max_steps=4000)
        assert np.asarray(info.converged).all()
        assert np.asarray(info.grad_norm).max() <= 1e-11
        assert np.asarray(info.steps).max() < 2500
        np.testing.assert_allclose(info.theta, exact, atol=1.1e-8)  # = gtol / a_min
    single = project_to_manifold(_stiff, starts[0], solver="implicit", max_steps=4000)
    np.testing.assert_allclose(single, exact[0], atol=1.1e-8)
    # A looser ODE tolerance still meets gtol, in fewer steps, and stays close.
    loose = projection_info(_stiff, starts, solver="implicit", implicit_rtol=1e-7)
    assert np.asarray(loose.converged).all()
    assert np.asarray(loose.steps).max() < np.asarray(info.steps).max()
    np.testing.assert_allclose(loose.theta, exact, atol=1e-6)
    with pytest.raises(ValueError, match="solver"):
        projection_info(_stiff, starts, solver="rk4")
    with pytest.raises(ValueError, match="implicit_rtol"):
        projection_info(_stiff, starts, solver="implicit", implicit_rtol=-1.0)


@pytest.mark.parametrize("name", ["curved_manifold"])
@pytest.mark.slow  # default-suite budget (13 s idle)
def test_implicit_solver_agrees_where_both_work(name):
    prob = PROBLEMS[name]()
    key = jax.random.PRNGKey(3)
    on = prob.sample_on_manifold(key, jnp.float64)
    starts = jnp.stack([jnp.asarray(prob.start), on + 0.05 * jax.random.normal(key, on.shape)])
    explicit = projection_info(prob.loss, starts)
    implicit = projection_info(prob.loss, starts, solver="implicit")
    assert np.asarray(explicit.converged).all() and np.asarray(implicit.converged).all()
    # Both end within gtol / mu_min of the same limit (mu_min >= ~0.1 on these problems).
    np.testing.assert_allclose(implicit.theta, explicit.theta, atol=1e-9)
    assert float(jnp.max(prob.distance_to_manifold(implicit.theta[0]))) < 1e-10
    # auto = explicit where the explicit solver converges.
    auto = projection_info(prob.loss, starts, solver="auto")
    np.testing.assert_array_equal(auto.theta, explicit.theta)
