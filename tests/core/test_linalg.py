"""theory.core.linalg.eigh: the values and derivatives of ``jnp.linalg.eigh``, never a batched
LAPACK
call (theory/core/linalg.py explains the hang that batched ``syevd`` causes on CPU)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory.core import linalg
from theory.core.lanczos import lanczos


def _sym(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    a = jax.random.normal(key, shape, jnp.float64)
    return a + jnp.swapaxes(a, -1, -2)


def _syevd_batch_dims(fn, *args) -> list[int]:
    """``num_batch_dims`` of every LAPACK ``syevd`` call in ``fn``'s lowering."""
    text = jax.jit(fn).lower(*args).as_text()
    calls = [line for line in text.splitlines() if "syevd" in line and "custom_call" in line]
    assert calls, "no syevd call found: the test would pass vacuously"
    dims = []
    for line in calls:
        m = re.search(r'num_batch_dims = "(\d+)"', line)
        dims.append(int(m.group(1)) if m else 0)
    return dims


def _same_decomposition(w, v, w_ref, v_ref) -> None:
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-12)
    # Eigenvectors up to sign (eigenvalues of random symmetric matrices are distinct).
    np.testing.assert_allclose(jnp.abs(v), jnp.abs(v_ref), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 6), (3, 6, 6), (2, 3, 5, 5)])
def test_values_match_jnp_on_stacked_inputs(shape):
    a = _sym(jax.random.PRNGKey(0), shape)
    _same_decomposition(*linalg.eigh(a), *jnp.linalg.eigh(a))
    np.testing.assert_allclose(linalg.eigvalsh(a), jnp.linalg.eigvalsh(a), rtol=0, atol=1e-12)


def test_values_match_under_nested_vmap_and_unbatched_argument():
    a = _sym(jax.random.PRNGKey(1), (3, 4, 6, 6))
    _same_decomposition(*jax.vmap(jax.vmap(linalg.eigh))(a), *jnp.linalg.eigh(a))
    # An argument that is not batched: decomposed once, broadcast by vmap.
    b = a[0, 0]
    w, v = jax.vmap(lambda _x: linalg.eigh(b))(jnp.arange(4.0))
    _same_decomposition(w, v, *jnp.linalg.eigh(jnp.broadcast_to(b, (4, 6, 6))))


def test_no_batched_lapack_call_at_any_depth():
    a = _sym(jax.random.PRNGKey(2), (3, 4, 6, 6))
    # The oracle: jnp.linalg.eigh under vmap is one batched call (what this module avoids).
    assert max(_syevd_batch_dims(jax.vmap(jax.vmap(jnp.linalg.eigh)), a)) == 2
    assert set(_syevd_batch_dims(jax.vmap(jax.vmap(linalg.eigh)), a)) == {0}
    assert set(_syevd_batch_dims(linalg.eigh, a)) == {0}


def test_vmapped_lanczos_has_no_batched_lapack_call():
    """The case that hung: Lanczos under vmap (the sweeps' trackers, the regime map)."""
    mats = _sym(jax.random.PRNGKey(3), (5, 12, 12))
    v0 = jnp.ones((5, 12), jnp.float64)

    def top(m, v):
        return lanczos(lambda x: m @ x, v, max_iters=8).eigenvalues[0]

    assert set(_syevd_batch_dims(jax.vmap(top), mats, v0)) == {0}


@pytest.mark.slow
def test_derivatives_match_jnp():
    a = _sym(jax.random.PRNGKey(4), (4, 6, 6))
    da = _sym(jax.random.PRNGKey(5), (4, 6, 6))

    def loss(eigh_fn):
        def f(x):
            w, v = eigh_fn(x)
            return jnp.sum(w[..., -1] ** 2) + jnp.sum(v[..., :, -1] ** 4)

        return f

    ours, ref = loss(linalg.eigh), loss(jnp.linalg.eigh)
    np.testing.assert_allclose(jax.grad(ours)(a), jax.grad(ref)(a), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        jax.vmap(jax.grad(ours))(a), jax.vmap(jax.grad(ref))(a), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        jax.jvp(ours, (a,), (da,))[1], jax.jvp(ref, (a,), (da,))[1], rtol=1e-10, atol=1e-12
    )
    top = lambda x: linalg.eigvalsh(x)[-1]  # noqa: E731
    top_ref = lambda x: jnp.linalg.eigvalsh(x)[-1]  # noqa: E731
    np.testing.assert_allclose(
        jax.hessian(top)(a[0]), jax.hessian(top_ref)(a[0]), rtol=1e-10, atol=1e-12
    )
    # The derivative is itself free of batched LAPACK calls.
    assert set(_syevd_batch_dims(jax.vmap(jax.grad(ours)), a)) == {0}
