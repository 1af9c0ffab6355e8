"""Scale-invariant losses: groups, normalization, wrappers and the invariance check.

A loss ``L : R^D \\ {0} -> R`` is scale-invariant if ``L(c w) = L(w)`` for all ``c > 0``
(docs/theory.md section 1). With ``G`` normalized blocks it is invariant to each block's scale
separately; a block is a contiguous slice of the flat vector, described by ``groups``, the tuple of
block sizes. ``groups=None`` means one group (the whole vector).

Identities that follow (each is tested, and the first two are what :func:`check_scale_invariance`
measures): per group ``g``, ``<grad_g L(w), w_g> = 0`` (Euler); ``grad L(M w) = M^{-1} grad L(w)``
and ``hess L(M w) = M^{-1} hess L(w) M^{-1}`` for ``M`` = positive per-group scaling; hence
``hess L(w) w_g = -grad_g L(w)`` (``w_g``: ``w`` with other groups zeroed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from theory.core.types import Array, Groups, LossFn


class ScaleInvarianceError(ValueError):
    """Raised where a loss must be scale-invariant and measurably is not."""


# --------------------------------------------------------------------------------------------
# Groups
# --------------------------------------------------------------------------------------------


def as_groups(groups: Sequence[int] | None, dim: int) -> Groups:
    """Validate contiguous block sizes ``groups`` against ``dim``; ``None`` means ``(dim,)``."""
    if groups is None:
        return (int(dim),)
    try:
        sizes = tuple(int(g) for g in groups)
    except TypeError as err:
        raise TypeError(f"groups must be a sequence of positive ints, got {groups!r}") from err
    if any(isinstance(g, bool) for g in groups):
        raise TypeError(f"groups must be a sequence of positive ints, got {groups!r}")
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"groups must be non-empty positive block sizes, got {sizes}")
    if sum(sizes) != dim:
        raise ValueError(
            f"groups {sizes} add up to {sum(sizes)} but the parameter vector has {dim} entries"
        )
    return sizes


def group_ids(groups: Groups) -> np.ndarray:
    """Index of the group of each coordinate, shape ``(D,)`` (a static NumPy array)."""
    return np.repeat(np.arange(len(groups)), groups)


def group_sq_norms(w: Array, groups: Groups) -> Array:
    """Squared norm of each group, shape ``(G,)``."""
    if len(groups) == 1:
        return jnp.vdot(w, w)[None]
    return jax.ops.segment_sum(w * w, jnp.asarray(group_ids(groups)), num_segments=len(groups))


def group_norms(w: Array, groups: Groups) -> Array:
    """Norm of each group, shape ``(G,)``."""
    return jnp.sqrt(group_sq_norms(w, groups))


def expand_groups(per_group: Array, groups: Groups) -> Array:
    """Broadcast a per-group value ``(G,)`` to every coordinate ``(D,)``."""
    if len(groups) == 1:
        return jnp.broadcast_to(per_group[0], (groups[0],))
    return per_group[jnp.asarray(group_ids(groups))]


def normalize(w: Array, groups: Groups | None = None) -> Array:
    """``w`` with each group scaled to unit norm (``w / |w|`` for one group)."""
    groups = as_groups(groups, w.shape[0])
    return w / expand_groups(group_norms(w, groups), groups)


# --------------------------------------------------------------------------------------------
# Wrappers
# --------------------------------------------------------------------------------------------


class ScaleInvariant(eqx.Module):
    """``w -> fn(normalize(w, groups))``: any function made scale-invariant per group.

    A pytree: if ``fn`` carries data as array leaves (a ``jax.tree_util.Partial`` or an
    ``eqx.Module``), the data stay arguments of the compiled runners, never constants.
    """

    fn: Callable[[Array], Array]
    groups: Groups | None = eqx.field(static=True, default=None)

    def __call__(self, w: Array) -> Array:
        return self.fn(normalize(w, self.groups))


def make_scale_invariant(
    fn: Callable[[Array], Array], groups: Sequence[int] | None = None
) -> ScaleInvariant:
    """Make ``fn`` scale-invariant by normalizing its argument, as one group or per group.

    Args:
        fn: any function ``(D,) -> ()``.
        groups: contiguous block sizes (multi-group invariance, one block per normalized layer);
            ``None`` for a single group.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    return ScaleInvariant(fn, None if groups is None else tuple(int(g) for g in groups))


class _Raveled(eqx.Module):
    """A pytree loss seen as a loss on the flat vector."""

    loss_fn: Callable[[Any], Array]
    unravel: Callable[[Array], Any] = eqx.field(static=True)

    def __call__(self, w: Array) -> Array:
        return self.loss_fn(self.unravel(w))


class FlatLoss(NamedTuple):
    """A pytree loss flattened for :mod:`theory`: ``loss(w0)`` equals the original at ``params``."""

    loss: LossFn
    w0: Array
    groups: Groups
    unravel: Callable[[Array], Any]


def flatten_loss(
    loss_fn: Callable[[Any], Array],
    params: Any,
    *,
    groups: Literal["leaf", "all"] | Sequence[int] = "leaf",
    normalize_groups: bool = False,
) -> FlatLoss:
    """Adapter from a loss on a parameter pytree to a loss on a flat vector.

    The flat order is ``jax.flatten_util.ravel_pytree``'s (the order of ``jax.tree.leaves``).

    Args:
        loss_fn: ``params -> scalar``. Keep data in a ``jax.tree_util.Partial`` so it is passed to
            ``jit`` as an argument.
        params: the parameter pytree (its values become ``w0``).
        groups: ``"leaf"`` -- one scale-invariance group per leaf (one per normalized layer);
            ``"all"`` -- a single group; or explicit contiguous block sizes.
        normalize_groups: wrap the flat loss in :class:`ScaleInvariant` (enforces invariance
            for a model that is not invariant by construction).
    """
    w0, unravel = ravel_pytree(params)
    if groups == "leaf":
        sizes: Groups = tuple(int(np.size(x)) for x in jax.tree.leaves(params))
    elif groups == "all":
        sizes = (int(w0.shape[0]),)
    elif isinstance(groups, str):
        raise ValueError(f"groups must be 'leaf', 'all' or a sequence of sizes, got {groups!r}")
    else:
        sizes = as_groups(groups, int(w0.shape[0]))
    flat: LossFn = _Raveled(loss_fn, unravel)
    if normalize_groups:
        flat = ScaleInvariant(flat, sizes)
    return FlatLoss(flat, w0, sizes, unravel)


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------


class InvarianceReport(NamedTuple):
    """Largest violations measured by :func:`check_scale_invariance` (relative, see there)."""

    homogeneity: float
    euler: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.homogeneity <= self.tolerance and self.euler <= self.tolerance


def default_invariance_rtol(dtype: Any) -> float:
    """Relative tolerance of the invariance check for ``dtype``.

    Rounding in one loss evaluation is ``~eps * condition``; the tolerance leaves room for a
    condition number of ~1e4 in float32 (eps 1.2e-7) and ~1e8 in float64 (eps 2.2e-16), while a
    non-invariant loss (an extra ``|w|^2`` term, a bias) violates it by O(1) or by the ratio of
    the extra term to the loss, which random points make visible.
    """
    return 2e-3 if jnp.finfo(dtype).bits <= 32 else 1e-7


@eqx.filter_jit
def _measure(loss: LossFn, points: Array, scales: Array, groups: Groups) -> tuple[Array, Array]:
    vals = jax.vmap(loss)(points)  # (P,)
    grads = jax.vmap(jax.grad(loss))(points)  # (P, D)
    scaled = jax.vmap(lambda s: jax.vmap(loss)(points * s))(scales)  # (C, P)
    tiny = jnp.finfo(points.dtype).tiny
    loss_scale = jnp.max(jnp.abs(vals)) + tiny
    homog = jnp.max(jnp.abs(scaled - vals[None, :])) / loss_scale
    ids = jnp.asarray(group_ids(groups))
    dots = jax.vmap(lambda g, p: jax.ops.segment_sum(g * p, ids, num_segments=len(groups)))(
        grads, points
    )  # (P, G)
    pnorms = jax.vmap(lambda p: group_norms(p, groups))(points)  # (P, G)
    grad_scale = jnp.max(jnp.linalg.norm(grads, axis=1)) + tiny
    euler = jnp.max(jnp.abs(dots) / (pnorms * grad_scale + tiny))
    return homog, euler


def check_scale_invariance(
    loss: LossFn,
    w: Array,
    *,
    groups: Sequence[int] | None = None,
    key: Array | None = None,
    num_points: int = 3,
    rtol: float | None = None,
    raise_on_failure: bool = True,
    name: str = "loss",
) -> InvarianceReport:
    """Measure scale invariance of ``loss`` around ``w`` and reject a loss that lacks it.

    At ``w`` and at ``num_points - 1`` random points near it (perturbations of relative size
    0.3), it measures

    * homogeneity: ``max |L(s * p) - L(p)| / max_p |L(p)|`` over common scales
      ``c in {0.5, 2, 7}`` and, with several groups, random per-group scales in ``[0.3, 3]``;
    * Euler: ``max |<grad_g L(p), p_g>| / (|p_g| * max_p |grad L(p)|)`` per group ``g``
      (normalized by the largest gradient seen, since the gradient vanishes on minimizers).

    Args:
        loss: the loss, ``(D,) -> ()``.
        w: the point to check around, ``(D,)``.
        groups: contiguous block sizes for multi-group invariance (``None``: one group).
        key: PRNG key for the random points (default ``PRNGKey(0)``: deterministic).
        num_points: number of points, ``w`` included.
        rtol: tolerance on both measures; default :func:`default_invariance_rtol`.
        raise_on_failure: raise :class:`ScaleInvarianceError` when a measure exceeds ``rtol``.
        name: what to call the loss in the error message.

    Returns:
        An :class:`InvarianceReport` with both measures and the tolerance.
    """
    w = jnp.asarray(w)
    if w.ndim != 1:
        raise ValueError(f"w must be a flat vector of shape (D,), got shape {w.shape}")
    sizes = as_groups(groups, w.shape[0])
    if key is None:
        key = jax.random.PRNGKey(0)
    dtype = w.dtype
    tol = default_invariance_rtol(dtype) if rtol is None else float(rtol)
    k_pts, k_sc = jax.random.split(key)
    noise = jax.random.normal(k_pts, (max(num_points - 1, 0), w.shape[0]), dtype)
    # Perturb each group relative to its own norm, so small groups are not swamped.
    gn = expand_groups(group_norms(w, sizes), sizes)
    per_dim = gn / jnp.sqrt(expand_groups(jnp.asarray(sizes, dtype), sizes))
    points = jnp.concatenate([w[None], w[None] + 0.3 * per_dim[None] * noise], axis=0)
    common = jnp.asarray([0.5, 2.0, 7.0], dtype)[:, None] * jnp.ones((1, w.shape[0]), dtype)
    if len(sizes) > 1:
        per_group = jax.random.uniform(k_sc, (3, len(sizes)), dtype, 0.3, 3.0)
        scales = jnp.concatenate([common, jax.vmap(lambda c: expand_groups(c, sizes))(per_group)])
    else:
        scales = common
    homog, euler = (float(x) for x in _measure(loss, points, scales, sizes))
    report = InvarianceReport(homog, euler, tol)
    if raise_on_failure and not report.ok:
        what = []
        if not homog <= tol:
            what.append(f"|L(c w) - L(w)| reaches {homog:.3g} of the loss scale")
        if not euler <= tol:
            what.append(f"|<grad L(w), w_group>| reaches {euler:.3g} of |grad L| |w_group|")
        raise ScaleInvarianceError(
            f"{name} is not scale-invariant{' per group' if len(sizes) > 1 else ''} around the "
            f"given point: {'; '.join(what)} (tolerance {tol:.1g} for {jnp.dtype(dtype).name}). "
            "Wrap it with theory.make_scale_invariant(fn, groups) or give the right `groups`; "
            "pass check_invariance=False to skip this check."
        )
    return report
