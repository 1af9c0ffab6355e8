"""Curvature at the midpoints of GD's period-2 oscillation (docs/theory.md section 3).

At the Edge of Stability GD+WD oscillates across ``Gamma`` along the top eigenvector, and the
curvature at the iterates ``w_t`` is inflated by that oscillation through the third derivative.
Its midpoint ``(w_t + w_{t+1}) / 2`` cancels the oscillation to first order and is the proxy of
the point ``Phi(w_t)`` the iterates straddle. This module is the one place that measures there:

* :func:`gd_wd_step` and :func:`gd_midpoint`: the next GD+WD iterate and the midpoint, from
  ``w_t`` alone (runs without a perturbation, where ``w_{t+1}`` need not be stored);
  :func:`iterate_midpoints` from two stored consecutive iterates (runs with kicks);
* :func:`curvature_along`: the top-``k`` eigenvalues of the Hessian ``H(p)`` and of the
  spherical Hessian ``M H(p) M`` (``M`` the per-group norms of ``p``; for a scale-invariant loss
  ``M H(p) M = H(p_hat)``, ``p_hat`` normalized per group, so its top eigenvalue is the
  spherical sharpness ``S(p)``) at a sequence of points: dense ``jax.hessian`` +
  :func:`theory.core.linalg.eigh` (``lanczos_iters=None``, small ``D``) or Lanczos warm-started
  from the previous point's top eigenvector (one ``lax.scan``; jit- and vmap-able);
* :func:`midpoint_curvature`: :func:`curvature_along` at :func:`gd_midpoint` of every row;
* :func:`top_hessian_eigenvalues`: ``lambda_1(H(p))`` at each row on the host, dense up to
  :data:`DENSE_MAX_DIM` parameters and Lanczos above (the choice a study makes by dimension).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.core import linalg
from theory.core import validate as check
from theory.core.curvature import linearize_grad
from theory.core.invariance import as_groups, expand_groups, group_norms
from theory.core.lanczos import lanczos
from theory.core.types import Array, Groups, LossFn


class Curvature(NamedTuple):
    """Top eigenvalues at each of ``N`` points, algebraically largest first.

    Attributes:
        hessian: ``(N, k)`` eigenvalues of ``H(p)`` (``None`` if not asked for). Times ``eta``
            it is GD's EoS quantity ``eta * lambda_1`` at ``p``.
        spherical: ``(N, k)`` eigenvalues of ``M H(p) M`` (``None`` if not asked for): the
            spherical Hessian's, ``lambda_1`` the spherical sharpness ``S(p)``.
    """

    hessian: Array | None
    spherical: Array | None


def gd_wd_step(loss: LossFn, w: Array, eta: Array | float, wd: Array | float) -> Array:
    """One GD+WD step ``(1 - eta wd) w - eta grad L(w)`` (:class:`theory.engine.methods.GDWD`
    without kicks); ``w`` is ``(D,)``."""
    return (1 - eta * wd) * w - eta * jax.grad(loss)(w)


def gd_midpoint(loss: LossFn, w: Array, eta: Array | float, wd: Array | float) -> Array:
    """``(w + w_next) / 2`` with ``w_next = gd_wd_step(loss, w, eta, wd)``, i.e.
    ``w - (eta / 2) (wd w + grad L(w))``; ``w`` is ``(D,)``. ``eta = 0`` gives ``w``."""
    return w - 0.5 * eta * (wd * w + jax.grad(loss)(w))


def iterate_midpoints(w: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``(w[t] + w[t + 1]) / 2`` for ``t`` in ``rows``, from stored consecutive iterates
    ``w`` ``(T, D)`` (every step recorded)."""
    w = np.asarray(w)
    rows = np.asarray(rows, dtype=np.int64)
    if w.ndim != 2:
        raise ValueError(f"w must be stored iterates of shape (T, D), got shape {w.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= w.shape[0] - 1):
        raise ValueError(
            f"rows must be in [0, {w.shape[0] - 2}] (each needs the next iterate), got "
            f"[{rows.min()}, {rows.max()}]"
        )
    return 0.5 * (w[rows] + w[rows + 1])


def _top_k(mat: Array, k: int) -> tuple[Array, Array]:
    vals, vecs = linalg.eigh(mat)
    return vals[::-1][:k], vecs[:, -1]


@eqx.filter_jit
def _along(
    loss: LossFn,
    points: Array,
    v0: Array,
    groups: Groups,
    k: int,
    lanczos_iters: int | None,
    hessian: bool,
    spherical: bool,
    tol: float | None = None,
    stop: str = "residual",
) -> Curvature:
    def body(carry: tuple[Array, Array], p: Array) -> tuple[tuple[Array, Array], Curvature]:
        v, vs = carry
        m = expand_groups(group_norms(p, groups), groups)
        lam = sph = None
        if lanczos_iters is None:
            h = jax.hessian(loss)(p)
            if hessian:
                lam, v = _top_k(h, k)
            if spherical:
                sph, vs = _top_k(m[:, None] * h * m[None, :], k)
        else:
            _, lin = linearize_grad(loss, p)
            if hessian:
                res = lanczos(lin, v, k=k, max_iters=lanczos_iters, tol=tol, stop=stop)
                lam, v = res.eigenvalues, res.eigenvectors[:, 0]
            if spherical:
                res_s = lanczos(
                    lambda x: m * lin(m * x), vs, k=k, max_iters=lanczos_iters, tol=tol, stop=stop
                )
                sph, vs = res_s.eigenvalues, res_s.eigenvectors[:, 0]
        return (v, vs), Curvature(lam, sph)

    _, out = jax.lax.scan(body, (v0, v0), points)
    return out


def curvature_along(
    loss: LossFn,
    points: Array | np.ndarray,
    *,
    groups: Sequence[int] | None = None,
    k: int = 1,
    lanczos_iters: int | None = None,
    v0: Array | None = None,
    hessian: bool = True,
    spherical: bool = True,
    tol: float | None = None,
    stop: str = "residual",
) -> Curvature:
    """Top-``k`` eigenvalues of ``H(p)`` and of ``M H(p) M`` at each row ``p`` of ``points``.

    Args:
        loss: the loss on flat vectors (scale invariance is not required: ``M H M`` is then
            only the Hessian rescaled by the group norms).
        points: ``(N, D)`` points, in the order a warm start should follow (a trajectory).
        groups: contiguous group sizes of ``M`` (default: one group).
        k: eigenvalues per point (``<= D``, and ``<= lanczos_iters``).
        lanczos_iters: Krylov dimension of each Lanczos solve; ``None``: dense ``jax.hessian``
            and ``eigh`` (small ``D`` only).
        v0: ``(D,)`` Lanczos start at the first point (default: a fixed normal draw); each
            later point starts from the previous point's top eigenvector.
        hessian, spherical: which of the two operators to measure.
        tol, stop: each Lanczos solve's stopping rule (:func:`theory.core.lanczos.lanczos`):
            ``stop="residual"`` at relative Ritz residual ``tol`` (default ``3 sqrt(eps)``), or
            ``stop="error"`` (``k = 1``) at relative eigenvalue error ``tol`` (Kato-Temple
            estimate); either way at most ``lanczos_iters`` HVPs.

    Returns:
        :class:`Curvature` with ``(N, k)`` arrays. Jit-, vmap- and scan-compatible (no
        validation of traced inputs).
    """
    if not (hessian or spherical):
        raise ValueError("curvature_along needs hessian=True or spherical=True (or both)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if lanczos_iters is not None:
        check.positive_int(lanczos_iters, "lanczos_iters")
        if k > lanczos_iters:
            raise ValueError(f"k={k} exceeds lanczos_iters={lanczos_iters}")
    points = jnp.asarray(points)
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"points must have shape (N, D) with N >= 1, got {points.shape}")
    dim = points.shape[1]
    if k > dim:
        raise ValueError(f"k={k} exceeds the dimension D={dim}")
    sizes = as_groups(groups, dim)
    if v0 is None:
        v0 = jax.random.normal(jax.random.PRNGKey(0), (dim,), points.dtype)
    v0 = jnp.asarray(v0, points.dtype)
    if v0.shape != (dim,):
        raise ValueError(f"v0 must have shape ({dim},), got {v0.shape}")
    if stop not in ("residual", "error"):
        raise ValueError(f"stop must be 'residual' or 'error', got {stop!r}")
    if tol is not None:
        check.positive(tol, "tol")
    return _along(
        loss,
        points,
        v0,
        sizes,
        int(k),
        lanczos_iters,
        bool(hessian),
        bool(spherical),
        None if tol is None else float(tol),
        stop,
    )


DENSE_MAX_DIM = 16
"""The dimension up to which :func:`top_hessian_eigenvalues` uses the dense Hessian."""


def top_hessian_eigenvalues(
    loss: LossFn,
    points: Array | np.ndarray,
    *,
    dense_max_dim: int = DENSE_MAX_DIM,
    lanczos_iters: int = 64,
    v0: Array | None = None,
) -> np.ndarray:
    """``lambda_1(H(p))``, the top Hessian eigenvalue, at each row ``p`` of ``points`` ``(N, D)``.

    Dense (``jax.hessian`` and :func:`theory.core.linalg.eigh`: exact) when
    ``D <= dense_max_dim``, else a Lanczos solve of ``lanczos_iters`` vectors per row, started
    at ``v0`` and warm-started along the rows from the previous row's top eigenvector
    (:func:`curvature_along` with ``spherical=False``). Times ``eta`` it is GD's EoS quantity
    at each row.

    Args:
        loss: the loss on flat vectors.
        points: ``(N, D)`` points, in the order a warm start should follow (a trajectory).
        dense_max_dim: the largest ``D`` solved densely (``>= 0``; 0: always Lanczos).
        lanczos_iters: Krylov dimension of each Lanczos solve (``>= 1``; unused when dense).
        v0: ``(D,)`` Lanczos start at the first row (default: :func:`curvature_along`'s).

    Returns:
        ``(N,)`` NumPy array.
    """
    if (
        isinstance(dense_max_dim, bool)
        or not isinstance(dense_max_dim, (int, np.integer))
        or dense_max_dim < 0
    ):
        raise ValueError(f"dense_max_dim must be an int >= 0, got {dense_max_dim!r}")
    check.positive_int(lanczos_iters, "lanczos_iters")
    points = jnp.asarray(points)
    if points.ndim != 2:
        raise ValueError(f"points must have shape (N, D), got shape {points.shape}")
    dense = points.shape[1] <= dense_max_dim
    curv = curvature_along(
        loss,
        points,
        lanczos_iters=None if dense else int(lanczos_iters),
        v0=v0,
        spherical=False,
    )
    assert curv.hessian is not None
    return np.asarray(curv.hessian[:, 0])


def midpoint_curvature(
    loss: LossFn,
    w: Array | np.ndarray,
    eta: Array | float,
    wd: Array | float,
    *,
    groups: Sequence[int] | None = None,
    k: int = 1,
    lanczos_iters: int | None = None,
    v0: Array | None = None,
    hessian: bool = True,
    spherical: bool = True,
    tol: float | None = None,
    stop: str = "residual",
) -> Curvature:
    """:func:`curvature_along` at the GD+WD midpoints ``(w_t + w_{t+1}) / 2`` of the rows
    ``w_t`` of ``w`` ``(N, D)`` (``w_{t+1}`` recomputed by :func:`gd_wd_step`, so only for runs
    without perturbation; with kicks use :func:`iterate_midpoints` and
    :func:`curvature_along`). ``eta``, ``wd`` are scalars (traced under ``vmap`` over runs);
    ``eta = 0`` measures at the rows themselves."""
    w = jnp.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"w must be rows of shape (N, D), got shape {w.shape}")
    if not check.is_traced(eta):
        check.nonnegative(eta, "eta")
    if not check.is_traced(wd):
        check.nonnegative(wd, "wd")
    eta_a, wd_a = jnp.asarray(eta, w.dtype), jnp.asarray(wd, w.dtype)
    mids = _midpoints(loss, w, eta_a, wd_a)
    return curvature_along(
        loss,
        mids,
        groups=groups,
        k=k,
        lanczos_iters=lanczos_iters,
        v0=v0,
        hessian=hessian,
        spherical=spherical,
        tol=tol,
        stop=stop,
    )


@eqx.filter_jit
def _midpoints(loss: LossFn, w: Array, eta: Array, wd: Array) -> Array:
    # One row at a time (``lax.map``), not vmapped over the rows: a gradient's activations for
    # every row at once do not fit in memory for convolutional networks (a VGG 16-32 on 1024
    # images, the regime map's former full-scale VGG, asked for 49 GB with 42 rows x 15
    # vmapped runs).
    return jax.lax.map(lambda p: gd_midpoint(loss, p, eta, wd), w)
