"""Lanczos against dense eigh, the Lanczos relation, warm starts and breakdown."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._losses import random_spd
from theory.core.lanczos import default_tol, lanczos

# Tolerances: a Ritz residual r bounds the eigenvalue error by r; with default_tol (3 sqrt(eps))
# the top eigenvalues here (gap >= 0.5 on a norm-10 matrix) are accurate to ~r^2/gap, i.e.
# ~1e-6 (float32, where rounding in the matvec itself is ~1e-6 * 10) and ~1e-13 (float64).
EIG_RTOL = {jnp.float32: 2e-5, jnp.float64: 1e-11}


TOPK_CI = "tests/core/test_lanczos.py::test_top_k_against_eigh[1-0-float64]"
STOP_CI = "tests/core/test_lanczos.py::test_error_stop_meets_tol_for_fewer_matvecs[0.001-0]"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(
    "seed", [0, *(pytest.param(s, marks=pytest.mark.heavy(covered_by=TOPK_CI)) for s in (1, 2))]
)
@pytest.mark.parametrize("k", [1, 3])
def test_top_k_against_eigh(dtype, seed, k):
    a, ev = random_spd(120, seed, dtype)
    rng = np.random.default_rng(seed + 10)
    res = jax.jit(lambda v: lanczos(lambda x: a @ x, v, k=k))(
        jnp.asarray(rng.normal(size=120), dtype)
    )
    assert bool(res.converged)
    np.testing.assert_allclose(res.eigenvalues, ev[:k], rtol=EIG_RTOL[dtype])
    # Reported residuals are the true residuals |A y - theta y| (up to rounding) and meet tol.
    true = jnp.linalg.norm(a @ res.eigenvectors - res.eigenvectors * res.eigenvalues, axis=0)
    scale = float(jnp.abs(res.eigenvalues[0]))
    assert np.all(
        np.asarray(true) <= default_tol(dtype) * scale * 1.01 + 50 * jnp.finfo(dtype).eps * scale
    )
    # Orthonormal Ritz vectors, aligned with eigh's eigenvectors.
    np.testing.assert_allclose(
        res.eigenvectors.T @ res.eigenvectors, np.eye(k), atol=20 * jnp.finfo(dtype).eps ** 0.5
    )
    _, vecs = np.linalg.eigh(np.asarray(a, np.float64))
    overlap = np.abs(np.asarray(res.eigenvectors, np.float64).T @ vecs[:, ::-1][:, :k])
    np.testing.assert_allclose(
        np.diag(overlap), 1.0, atol={jnp.float32: 1e-3, jnp.float64: 1e-7}[dtype]
    )


def test_lanczos_relation():
    # A Q_j = Q_j T_j + beta_j q_{j+1} e_j^T, checked by running a fixed number of steps
    # (tolerance 0 never stops early) and rebuilding T from the Ritz pairs.
    a, _ = random_spd(60, 3)
    v0 = jnp.asarray(np.random.default_rng(0).normal(size=60))
    m = 12
    res = lanczos(lambda x: a @ x, v0, k=m, max_iters=m, tol=0.0)
    assert int(res.num_matvecs) == m
    y, theta = res.eigenvectors, res.eigenvalues
    # Ritz pairs of the full Krylov space: Y^T A Y = diag(theta), A Y - Y diag(theta) has rank 1
    # (all residuals are along q_{m+1}), with norms equal to the reported residuals.
    np.testing.assert_allclose(y.T @ a @ y, np.diag(theta), atol=1e-11)
    r = a @ y - y * theta
    np.testing.assert_allclose(jnp.linalg.norm(r, axis=0), res.residuals, rtol=1e-8, atol=1e-12)
    s = np.linalg.svd(np.asarray(r), compute_uv=False)
    assert s[1] <= 1e-9 * s[0]
    # Krylov property: the residual direction is orthogonal to the whole basis.
    np.testing.assert_allclose(y.T @ r, 0.0, atol=1e-10)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_warm_start_needs_few_matvecs(dtype):
    a, _ = random_spd(200, 4, dtype)
    cold = lanczos(lambda x: a @ x, jnp.ones(200, dtype))
    # A slightly perturbed operator, warm-started from the old eigenvector.
    b = a + 1e-5 * jnp.asarray(random_spd(200, 5, dtype)[0])
    warm = lanczos(lambda x: b @ x, cold.eigenvectors[:, 0])
    assert int(warm.num_matvecs) <= int(cold.num_matvecs) // 2
    exact = np.linalg.eigvalsh(np.asarray(b, np.float64))[-1]
    np.testing.assert_allclose(warm.eigenvalues[0], exact, rtol=EIG_RTOL[dtype] * 10)


def test_breakdown_and_small_dimension():
    a = jnp.diag(jnp.array([1.0, 3.0, 2.0, -5.0]))
    # An exact eigenvector as start: invariant Krylov space, continued for k = 3.
    res = lanczos(lambda x: a @ x, jnp.array([0.0, 1.0, 0.0, 0.0]), k=3)
    np.testing.assert_allclose(res.eigenvalues, [3.0, 2.0, 1.0], atol=1e-12)
    assert bool(res.converged)
    # Full dimension reached: exact, and the most negative eigenvalue is not confused for the top.
    res = lanczos(lambda x: a @ x, jnp.ones(4), k=4)
    np.testing.assert_allclose(res.eigenvalues, [3.0, 2.0, 1.0, -5.0], atol=1e-12)
    assert int(res.num_matvecs) == 4
    with pytest.raises(ValueError, match="k must be"):
        lanczos(lambda x: a @ x, jnp.ones(4), k=5)


def test_not_converged_is_reported():
    a, _ = random_spd(300, 6, top=(10.0, 9.999, 9.998))
    res = lanczos(lambda x: a @ x, jnp.ones(300), max_iters=5, tol=1e-12)
    assert not bool(res.converged)
    assert int(res.num_matvecs) == 5
    assert float(res.residuals[0]) > 1e-12 * 10


@pytest.mark.parametrize(
    "seed", [0, *(pytest.param(s, marks=pytest.mark.heavy(covered_by=STOP_CI)) for s in (1, 2))]
)
@pytest.mark.parametrize(
    "tol", [1e-3, pytest.param(1e-6, marks=pytest.mark.slow)]
)  # default-suite budget: 1e-6 in make test-slow
def test_error_stop_meets_tol_for_fewer_matvecs(seed, tol):
    # stop="error": tol is the relative eigenvalue error (Kato-Temple, r^2 / gap), not the
    # residual; from a random start it must meet tol and stop no later than the residual rule.
    a, ev = random_spd(200, seed, top=(10.0, 9.7, 9.0))
    v0 = jnp.asarray(np.random.default_rng(seed + 20).normal(size=200))
    err = lanczos(lambda x: a @ x, v0, tol=tol, stop="error")
    res = lanczos(lambda x: a @ x, v0, tol=tol)
    assert abs(float(err.eigenvalues[0]) - ev[0]) / ev[0] <= tol
    assert int(err.num_matvecs) <= int(res.num_matvecs)
    # The reported residual is the true one, and the final gap the Ritz gap (>= 3 vectors).
    y = err.eigenvectors[:, 0]
    true = float(jnp.linalg.norm(a @ y - err.eigenvalues[0] * y))
    np.testing.assert_allclose(float(err.residuals[0]), true, rtol=1e-6, atol=1e-12)
    assert np.isfinite(float(err.gap)) and float(err.gap) >= 0.29  # true gap 0.3, theta_2 <= 9.7


def test_error_stop_prior_gap_and_bad_arguments():
    a, ev = random_spd(100, 3, top=(10.0, 9.99, 9.0))  # gap 1e-3 relative
    v0 = jnp.asarray(np.random.default_rng(1).normal(size=100))
    # A prior gap smaller than the Ritz one makes the rule stricter: never fewer matvecs.
    loose = lanczos(lambda x: a @ x, v0, tol=1e-4, stop="error")
    strict = lanczos(lambda x: a @ x, v0, tol=1e-4, stop="error", prior_gap=1e-3)
    assert int(strict.num_matvecs) >= int(loose.num_matvecs)
    assert abs(float(strict.eigenvalues[0]) - ev[0]) / ev[0] <= 1e-4
    with pytest.raises(ValueError, match="k must be 1"):
        lanczos(lambda x: a @ x, v0, k=2, stop="error")
    with pytest.raises(ValueError, match="stop must be"):
        lanczos(lambda x: a @ x, v0, stop="nope")
