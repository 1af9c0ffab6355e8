"""Spherical sharpness and the Edge-of-Stability quantity (docs/theory.md sections 1-2).

* Spherical sharpness ``S(w) = lambda_1(hess L(w_hat))`` with ``w_hat`` = ``w`` normalized (per
  group for multi-group invariance). The raw ``lambda_1(hess L(w))`` scales like ``1/|w|^2`` and
  means nothing alone.
* EoS quantity ``eta * lambda_1(hess L(w))``: GD's stability number. With per-group scaling
  ``M = diag(|w_g|)``, ``hess L(w) = M^{-1} hess L(w_hat) M^{-1}``, so it equals
  ``lambda_1(D^{1/2} hess L(w_hat) D^{1/2})`` with ``D = diag(eta / |w_g|^2)`` the per-group
  effective learning rates; with one group it is ``eta_eff * S``, ``eta_eff = eta / |w|^2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from theory.core import validate as check
from theory.core.invariance import (
    check_scale_invariance,
    expand_groups,
    group_norms,
    leaves_of,
    normalize,
)
from theory.core.lanczos import LanczosResult, default_tol, lanczos
from theory.core.objective import as_objective
from theory.core.types import Array, Groups, LossFn


@eqx.filter_jit
def _top_eigs(
    loss: LossFn,
    w_hat: Array,
    scale: Array,
    v0: Array,
    tol: Array,
    key: Array,
    k: int,
    max_iters: int | None,
) -> LanczosResult:
    """Top eigenpairs of ``v -> scale * H(w_hat) (scale * v)`` (``scale`` is ``(D,)``)."""
    _, hvp_fn = as_objective(loss).linearize(w_hat)  # a chunked objective keeps its memory
    return lanczos(
        lambda v: scale * hvp_fn(scale * v), v0, k=k, max_iters=max_iters, tol=tol, key=key
    )


def _prepare(
    loss: LossFn,
    w: Array,
    groups: Sequence[int] | None,
    v0: Array | None,
    key: Array | None,
    check_invariance: bool,
) -> tuple[Array, Groups, Array, Array]:
    w, sizes = check.flat_vector(w, "w", groups, leaves=leaves_of(loss))
    check.loss_output(loss, w, wname="w")
    if check_invariance and not check.is_traced(w):
        check_scale_invariance(loss, w, groups=sizes)
    key = jax.random.PRNGKey(0) if key is None else key
    if v0 is None:
        v0 = jax.random.normal(jax.random.fold_in(key, 1), w.shape, w.dtype)
    else:
        v0 = jnp.asarray(v0, w.dtype)
        if v0.shape != w.shape:
            raise ValueError(f"v0 must have the shape of w {w.shape}, got {v0.shape}")
    return w, sizes, v0, key


def sharpness_eigs(
    loss: LossFn,
    w: Array,
    *,
    groups: Sequence[int] | None = None,
    k: int = 1,
    v0: Array | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    key: Array | None = None,
    check_invariance: bool = True,
) -> LanczosResult:
    """Top-``k`` eigenpairs of ``hess L(w_hat)`` by Lanczos, with residuals and matvec count.

    Args: as :func:`spherical_sharpness`, plus ``k``.
    """
    w, sizes, v0, key = _prepare(loss, w, groups, v0, key, check_invariance)
    w_hat = normalize(w, sizes)
    tol_arr = jnp.asarray(_tol(tol, w.dtype), w.dtype)
    return _top_eigs(loss, w_hat, jnp.ones_like(w), v0, tol_arr, key, k, max_iters)


def spherical_sharpness(
    loss: LossFn,
    w: Array,
    *,
    groups: Sequence[int] | None = None,
    v0: Array | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    key: Array | None = None,
    check_invariance: bool = True,
) -> tuple[Array, Array]:
    """Spherical sharpness ``S(w) = lambda_1(hess L(w / |w|))`` and its unit eigenvector.

    Args:
        loss: scale-invariant loss on flat vectors (checked unless ``check_invariance=False``).
        w: point ``(D,)``, nonzero (each group nonzero); its norm does not matter.
        groups: contiguous block sizes for multi-group invariance; each block is normalized.
        v0: Lanczos start (warm start: the previous eigenvector); default random.
        tol: relative Ritz residual; default ``3 sqrt(eps)``, i.e. ``lambda_1`` to ~``eps/gap``.
        max_iters: Krylov dimension cap (default ``min(D, 64)``).
        key: PRNG key for the random start (default ``PRNGKey(0)``).
        check_invariance: reject a loss that is not scale-invariant (see
            :func:`theory.check_scale_invariance`).

    Returns:
        ``(lam1, v1)``: scalar and ``(D,)``.
    """
    res = sharpness_eigs(
        loss,
        w,
        groups=groups,
        v0=v0,
        tol=tol,
        max_iters=max_iters,
        key=key,
        check_invariance=check_invariance,
    )
    return res.eigenvalues[0], res.eigenvectors[:, 0]


def eos_quantity(
    loss: LossFn,
    w: Array,
    eta: float,
    *,
    groups: Sequence[int] | None = None,
    v0: Array | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    key: Array | None = None,
    check_invariance: bool = True,
) -> tuple[Array, Array]:
    """EoS quantity ``eta * lambda_1(hess L(w)) = lambda_1(D^{1/2} hess L(w_hat) D^{1/2})``.

    ``D = diag(eta / |w_g|^2)`` (per-group effective learning rates). GD is linearly stable along
    the top direction while this is below 2. Returns the value and the unit eigenvector of
    ``D^{1/2} H(w_hat) D^{1/2}``.
    """
    eta = check.positive(eta, "eta")
    w, sizes, v0, key = _prepare(loss, w, groups, v0, key, check_invariance)
    w_hat = normalize(w, sizes)
    d_half = expand_groups(jnp.sqrt(eta) / group_norms(w, sizes), sizes)
    tol_arr = jnp.asarray(_tol(tol, w.dtype), w.dtype)
    res = _top_eigs(loss, w_hat, d_half, v0, tol_arr, key, 1, max_iters)
    return res.eigenvalues[0], res.eigenvectors[:, 0]


def _tol(tol: float | None, dtype: jnp.dtype) -> float:
    return default_tol(dtype) if tol is None else check.positive(tol, "tol")
