"""Symmetric eigen-decomposition that is never batched inside one LAPACK call.

Why. Under ``jax.vmap`` (or on a stacked ``(..., m, m)`` input) ``jnp.linalg.eigh`` lowers on CPU
to one batched LAPACK ``syevd`` custom call, which jaxlib 0.10 splits over the intra-op thread
pool (``jax::ParallelBatchMap``) and waits for with a blocking counter. On a 2-core machine that
wait intermittently never returns: every worker idles in ``WaitForWork``, the main thread in
``BlockUntilReady``, 0% CPU, forever (seen in ``sims.studies.regime_map``: 3 hangs in 3 runs, each
after a tracked sweep, in the vmapped Lanczos of the midpoint curvature; the native stacks and
the two XLA/JAX options that did *not* help, ``--xla_cpu_multi_thread_eigen=false`` and
``jax_cpu_enable_async_dispatch=False``, are in docs/conventions.md item 13).

What. :func:`eigh` computes the same thing as ``jnp.linalg.eigh`` but batches by a loop
(``lax.map``), one unbatched ``syevd`` per matrix, at any vmap depth (the vmap rule maps this
same function, so an outer vmap applies the rule again). The matrices it serves are small
(Lanczos tridiagonals, ``m <= ~100``; dense Hessians of small problems), where a loop costs
little against the rest of a step. Derivatives: a ``custom_jvp`` with the usual perturbation
formula, itself free of batched LAPACK calls (reverse mode follows by transposition).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

from theory.core.types import Array


@custom_vmap
def _eigh_looped(a: Array) -> tuple[Array, Array]:
    if a.ndim > 2:
        flat = a.reshape((-1, *a.shape[-2:]))
        vals, vecs = jax.lax.map(_eigh_looped, flat)
        return vals.reshape(a.shape[:-1]), vecs.reshape(a.shape)
    vals, vecs = jnp.linalg.eigh(a)
    return vals, vecs


@_eigh_looped.def_vmap
def _eigh_looped_vmap(
    axis_size: int, in_batched: list[bool], a: Array
) -> tuple[tuple[Array, Array], tuple[bool, bool]]:
    (batched,) = in_batched
    if not batched:  # the same matrix for every member: decompose it once
        return _eigh_looped(a), (False, False)
    return jax.lax.map(_eigh_looped, a), (True, True)


@jax.custom_jvp
def eigh(a: Array) -> tuple[Array, Array]:
    """``(eigenvalues ascending, eigenvectors as columns)`` of symmetric ``a`` ``(..., m, m)``:
    ``jnp.linalg.eigh`` with batches looped (module docstring)."""
    return _eigh_looped(a)


@eigh.defjvp
def _eigh_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Any, Any]:
    """The standard first-order perturbation of a symmetric eigen-decomposition (distinct
    eigenvalues): ``dw = diag(V^T dA V)``, ``dV = V (F o V^T dA V)`` with
    ``F_ij = 1 / (w_j - w_i)`` off the diagonal, on the symmetrized ``dA`` (as the primal
    symmetrizes ``A``)."""
    (a,), (da,) = primals, tangents
    w, v = eigh(a)
    da = 0.5 * (da + jnp.swapaxes(da, -1, -2))
    vt_da_v = jnp.swapaxes(v, -1, -2) @ da @ v
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    f = 1.0 / (eye + w[..., None, :] - w[..., :, None]) - eye
    return (w, v), (jnp.diagonal(vt_da_v, axis1=-2, axis2=-1), v @ (f * vt_da_v))


def eigvalsh(a: Array) -> Array:
    """Eigenvalues ascending of symmetric ``a`` (:func:`eigh`'s first output)."""
    return eigh(a)[0]
