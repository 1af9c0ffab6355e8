"""Stochastic Lanczos quadrature against dense eigen-decompositions.

Oracles: ``eigvalsh`` of a known symmetric matrix and of the dense ``jax.hessian`` of a tiny
normalized MLP (D = 54); the exactness of Gauss quadrature (degree <= 2m - 1 per probe; the
eigenvalues themselves when m = D); the trace identity with D orthonormal probes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._losses import random_spd
from theory.core import slq
from theory.core.invariance import expand_groups, group_norms


@functools.cache
def _spherical_hessian() -> np.ndarray:
    """``M H(w) M`` (= ``H(w_hat)``) of a tiny LayerNorm MLP, two groups (30, 24)."""
    from theory.problems import nets

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5))
    y = rng.integers(0, 3, size=16)
    model = nets.mlp((6, 4), norm="layer", activation="tanh")
    p = nets.make_problem(model, x, y, x, y, num_outputs=3, dtype=np.float64)
    m = expand_groups(group_norms(p.w0, p.groups), p.groups)
    h = jax.jit(jax.hessian(p.loss))(p.w0)
    return np.asarray(m[:, None] * h * m[None, :])


def test_full_depth_gives_the_eigenvalues_and_the_probe_projections() -> None:
    a, _ = random_spd(12, seed=1)
    ev, vecs = np.linalg.eigh(np.asarray(a))
    v = slq.probes(jax.random.PRNGKey(0), 3, 12, dtype=jnp.float64)
    quad = slq.slq(lambda x: a @ x, v, 12)
    for i in range(3):
        np.testing.assert_allclose(quad.nodes[i], ev, atol=1e-10)
        u = np.asarray(v[i]) / np.linalg.norm(v[i])
        np.testing.assert_allclose(quad.weights[i], (vecs.T @ u) ** 2, atol=1e-10)
    np.testing.assert_allclose(jnp.sum(quad.weights, axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("m", [3, pytest.param(7, marks=pytest.mark.slow)])
def test_moments_up_to_degree_2m_minus_1_are_exact_with_orthonormal_probes(m: int) -> None:
    a = jnp.asarray(_spherical_hessian())
    dim = a.shape[0]
    ev = np.linalg.eigvalsh(np.asarray(a))
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(dim, dim)))
    quad = slq.slq(lambda x: a @ x, jnp.asarray(q.T), m)  # D orthonormal probes
    est = slq.moments(quad, 2 * m - 1)
    exact = np.array([np.mean(ev**k) for k in range(2 * m)])
    np.testing.assert_allclose(est, exact, rtol=1e-10, atol=1e-10)
    # Degree 2m is beyond the rule: it is not exact (the test can fail).
    assert abs(float(slq.moments(quad, 2 * m)[-1]) - np.mean(ev ** (2 * m))) > 1e-6


def test_the_rule_of_one_probe_is_exact_to_degree_2m_minus_1() -> None:
    a = jnp.asarray(_spherical_hessian())
    u = np.random.default_rng(3).normal(size=a.shape[0])
    u /= np.linalg.norm(u)
    quad = slq.slq(lambda x: a @ x, jnp.asarray(u)[None], 5)
    ak = np.eye(a.shape[0])
    for k in range(10):
        rule = float(jnp.sum(quad.weights[0] * quad.nodes[0] ** k))
        np.testing.assert_allclose(rule, u @ ak @ u, rtol=1e-10, atol=1e-10)
        ak = ak @ np.asarray(a)


def test_smoothed_density_of_20_probes_is_close_to_the_dense_one() -> None:
    """L1 distance of the kernel-smoothed densities (each integrates to 1, so the distance is in
    [0, 2]) with 20 Rademacher probes and m = 20, kernel width 5% of the spectrum's range.
    Tolerance 0.15: over 200 probe seeds the distance had mean 0.046, 99% quantile 0.082 and
    maximum 0.096 (a regression threshold, set from that measurement); a spectrum shifted by 2
    kernel widths is at distance > 0.5 (checked below, so the test can fail)."""
    a = jnp.asarray(_spherical_hessian())
    ev = np.linalg.eigvalsh(np.asarray(a))
    width = 0.05 * (ev[-1] - ev[0])
    grid = jnp.linspace(ev[0] - 5 * width, ev[-1] + 5 * width, 801)
    dx = float(grid[1] - grid[0])
    exact = slq.exact_density(ev, grid, width)
    np.testing.assert_allclose(float(jnp.sum(exact)) * dx, 1.0, atol=1e-6)
    v = slq.probes(jax.random.PRNGKey(7), 20, a.shape[0], dtype=jnp.float64)
    est = slq.density(slq.slq(lambda x: a @ x, v, 20), grid, width)
    assert float(jnp.sum(jnp.abs(est - exact))) * dx < 0.15
    shifted = slq.exact_density(ev + 2 * width, grid, width)
    assert float(jnp.sum(jnp.abs(shifted - exact))) * dx > 0.5


def test_gaussian_probes_and_an_exact_breakdown() -> None:
    # A matrix with 3 distinct eigenvalues: the Krylov space of any probe is invariant after 3
    # steps; deeper rules give the extra nodes weight 0 and stay exact.
    d = jnp.asarray(np.repeat([-1.0, 2.0, 5.0], 4))
    v = slq.probes(jax.random.PRNGKey(1), 2, 12, kind="gaussian", dtype=jnp.float64)
    quad = slq.slq(lambda x: d * x, v, 6)
    assert bool(jnp.all(jnp.isfinite(quad.nodes)))
    for i in range(2):
        u = np.asarray(v[i]) / np.linalg.norm(v[i])
        for k in range(8):
            rule = float(jnp.sum(quad.weights[i] * quad.nodes[i] ** k))
            np.testing.assert_allclose(rule, np.sum(u**2 * np.asarray(d) ** k), rtol=1e-9)


def test_bad_inputs_are_refused_with_the_value() -> None:
    a = jnp.eye(4)
    with pytest.raises(ValueError, match=r"Lanczos depth\) must be an int in \[1, D=4\], got 5"):
        slq.tridiagonalize(lambda x: a @ x, jnp.ones(4), 5)
    with pytest.raises(ValueError, match="must be 'rademacher' or 'gaussian', got 'unif'"):
        slq.probes(jax.random.PRNGKey(0), 2, 4, kind="unif")
    with pytest.raises(ValueError, match="number of probes must be a positive int, got 0"):
        slq.probes(jax.random.PRNGKey(0), 0, 4)
    with pytest.raises(ValueError, match=r"probe vectors must have shape \(P, D\)"):
        slq.slq(lambda x: a @ x, jnp.ones(4), 2)
    quad = slq.slq(lambda x: a @ x, jnp.ones((1, 4)), 2)
    with pytest.raises(ValueError, match=r"kernel width must be positive, got -1\.0"):
        slq.density(quad, jnp.zeros(3), -1.0)
    with pytest.raises(ValueError, match="order must be a non-negative int, got -1"):
        slq.moments(quad, -1)
