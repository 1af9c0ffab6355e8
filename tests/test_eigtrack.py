"""theory.eigtrack against dense eigh: static, rotating, near-crossing, period-2 sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory.eigtrack import track_top

D = 60


def _spectrum(rng: np.random.Generator, top: tuple[float, ...]) -> np.ndarray:
    """Eigenvalues: the given top ones, then a bulk in [-0.2, 0.6] (like a Hessian's)."""
    bulk = rng.uniform(-0.2, 0.6, D - len(top))
    return np.concatenate([np.asarray(top), bulk])


def _rotation(rng: np.random.Generator, angle: float) -> np.ndarray:
    """exp(angle * S) for a random skew S of unit spectral norm."""
    s = rng.normal(size=(D, D))
    s = s - s.T
    s /= np.linalg.norm(s, 2)
    vals, vecs = np.linalg.eig(angle * s)
    return np.real(vecs @ np.diag(np.exp(vals)) @ np.linalg.inv(vecs))


def _top(a: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(a)[-1])


solve = jax.jit(
    lambda a, start, tol: track_top(lambda x: a @ x, start, tol=tol, max_matvecs=40),
)
solve_res = jax.jit(
    lambda a, start, tol: track_top(
        lambda x: a @ x, start, tol=tol, max_matvecs=40, rule="residual"
    ),
)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_static_against_eigh(seed, tol):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    a = q @ np.diag(_spectrum(rng, (2.0, 1.9, 1.7))) @ q.T
    res = solve(jnp.asarray(a), jnp.asarray(rng.normal(size=D)), tol)
    lam = _top(a)
    assert bool(res.converged)
    # theta is a lower bound; the error meets tol (Kato-Temple, gap resolved here).
    assert float(res.eigenvalue) <= lam + 1e-12
    assert (lam - float(res.eigenvalue)) / lam <= tol
    assert float(res.error_estimate) <= tol
    # The carried Ritz vectors are orthonormal and the values descending.
    v = np.asarray(res.ritz_vectors)
    np.testing.assert_allclose(v @ v.T, np.eye(3), atol=1e-8)
    assert np.all(np.diff(np.asarray(res.ritz_values)) <= 0)
    # The reported residual is the true one.
    y = np.asarray(res.eigenvector)
    r = np.linalg.norm(a @ y - float(res.eigenvalue) * y) / abs(float(res.eigenvalue))
    np.testing.assert_allclose(float(res.residual), r, rtol=1e-6, atol=1e-12)


def test_kato_temple_is_cheaper_than_residual_rule():
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    a = jnp.asarray(q @ np.diag(_spectrum(rng, (2.0, 1.6))) @ q.T)
    v0 = jnp.asarray(rng.normal(size=D))
    kt, rr = solve(a, v0, 1e-4), solve_res(a, v0, 1e-4)
    lam = _top(np.asarray(a))
    assert (lam - float(kt.eigenvalue)) / lam <= 1e-4
    assert int(kt.num_matvecs) < int(rr.num_matvecs)


@pytest.mark.parametrize("block", [1, 2])
def test_slowly_rotating_sequence(block):
    """Warm-started from the previous solve's top Ritz vectors; error <= tol at every step."""
    rng = np.random.default_rng(4)
    spec = _spectrum(rng, (2.0, 1.95, 1.8))
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    rot = _rotation(rng, 0.02)
    start = jnp.asarray(rng.normal(size=D))
    counts, tol = [], 1e-3
    for t in range(30):
        a = q @ np.diag(spec * (1 + 0.01 * np.sin(t))) @ q.T
        res = solve(jnp.asarray(a), start, tol)
        lam = _top(a)
        assert (lam - float(res.eigenvalue)) / lam <= tol, t
        counts.append(int(res.num_matvecs))
        start = res.ritz_vectors[:block] if block > 1 else res.eigenvector
        q = rot @ q
    assert np.mean(counts[1:]) < 0.5 * counts[0]


def test_near_crossing():
    """Top two eigenvalues cross with an avoided gap of 1e-4: the error stays within tol."""
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    start = jnp.asarray(rng.normal(size=D))
    tol = 1e-3
    for t in range(21):
        s = -1.0 + 0.1 * t
        top2 = 1.9 + 0.05 * np.array([[s, 2e-3], [2e-3, -s]])
        a = np.zeros((D, D))
        a[:2, :2] = top2
        a[2:, 2:] = np.diag(_spectrum(rng, ())[2:])
        a = q @ a @ q.T
        res = solve(jnp.asarray(a), start, tol)
        lam = _top(a)
        assert (lam - float(res.eigenvalue)) / lam <= tol, t
        start = res.ritz_vectors[:2]


def test_period_two_parity_chains():
    """A_t alternates between two matrices with different top eigenvectors (EoS-like): each
    parity chain warm-starts from its own previous solve and then needs few matvecs."""
    rng = np.random.default_rng(6)
    mats = []
    for _ in range(2):
        q, _ = np.linalg.qr(rng.normal(size=(D, D)))
        mats.append(q @ np.diag(_spectrum(rng, (2.0, 1.97, 1.9))) @ q.T)
    starts = [jnp.asarray(rng.normal(size=D))] * 2
    tol, counts = 1e-3, []
    for t in range(12):
        a = mats[t % 2] * (1 + 1e-4 * t)
        # A cold start uses the residual rule: before lambda_2 is resolved the Ritz gap can
        # overestimate the true one and the Kato-Temple estimate stop on a mixture.
        cold = solve_res if t < 2 else solve
        res = cold(jnp.asarray(a), starts[t % 2], tol)
        lam = _top(a)
        assert (lam - float(res.eigenvalue)) / lam <= tol
        starts[t % 2] = res.eigenvector
        counts.append(int(res.num_matvecs))
    assert max(counts[2:]) <= 3


def test_bad_arguments():
    a = jnp.eye(4)
    with pytest.raises(ValueError):
        track_top(lambda x: a @ x, jnp.ones((2, 2, 4)))
    with pytest.raises(ValueError):
        track_top(lambda x: a @ x, jnp.ones(4), rule="nope")
    with pytest.raises(ValueError):
        track_top(lambda x: a @ x, jnp.ones((5, 4)), max_matvecs=4)
