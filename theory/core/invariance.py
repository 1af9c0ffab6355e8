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

import math
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


class Leaf(NamedTuple):
    """One leaf of a flattened parameter pytree: its path, offset and size in the flat vector."""

    path: str
    offset: int
    size: int


def leaf_layout(params: Any) -> tuple[Leaf, ...]:
    """The leaves of ``params`` in ``ravel_pytree``'s order, named by their ``/``-joined path
    (``jax.tree_util.keystr(path, simple=True, separator="/")``, e.g. ``params/Dense_0/kernel``)."""
    out, offset = [], 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        size = int(np.size(leaf))
        out.append(Leaf(jax.tree_util.keystr(path, simple=True, separator="/"), offset, size))
        offset += size
    return tuple(out)


class _Raveled(eqx.Module):
    """A pytree loss seen as a loss on the flat vector (it remembers the pytree's leaves)."""

    loss_fn: Callable[[Any], Array]
    unravel: Callable[[Array], Any] = eqx.field(static=True)
    leaves: tuple[Leaf, ...] = eqx.field(static=True, default=())

    def __call__(self, w: Array) -> Array:
        return self.loss_fn(self.unravel(w))


def leaves_of(loss: Any) -> tuple[Leaf, ...]:
    """The pytree leaves behind a flat loss made by :func:`flatten_loss` (also through a
    :class:`ScaleInvariant` wrapper); ``()`` for any other loss."""
    while isinstance(loss, ScaleInvariant):
        loss = loss.fn
    return loss.leaves if isinstance(loss, _Raveled) else ()


def describe_group(index: int, groups: Groups, leaves: Sequence[Leaf] = ()) -> str:
    """``group i (size s, entries a:b)`` and, when known, the pytree leaves it overlaps."""
    start = sum(groups[:index])
    stop = start + groups[index]
    text = f"group {index} (size {groups[index]}, entries {start}:{stop}"
    names = [leaf.path for leaf in leaves if leaf.offset < stop and leaf.offset + leaf.size > start]
    if names:
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} leaves)" if len(names) > 4 else "")
        text += f"; leaf {shown}" if len(names) == 1 else f"; leaves {shown}"
    return text + ")"


class FlatLoss(NamedTuple):
    """A pytree loss flattened for :mod:`theory`: ``loss(w0)`` equals the original at ``params``.

    ``leaves`` (a property, so the tuple still unpacks into four) names the pytree leaf behind
    each slice of ``w0``; the checks use it to say which layer a bad group is.
    """

    loss: LossFn
    w0: Array
    groups: Groups
    unravel: Callable[[Array], Any]

    @property
    def leaves(self) -> tuple[Leaf, ...]:
        """The parameter pytree's leaves (path, offset, size) in the flat order."""
        return leaves_of(self.loss)


def flatten_loss(
    loss_fn: Callable[[Any], Array],
    params: Any,
    *,
    groups: Literal["leaf", "all"] | Sequence[int] = "leaf",
    normalize_groups: bool = False,
) -> FlatLoss:
    """Adapter from a loss on a parameter pytree to a loss on a flat vector.

    The flat order is ``jax.flatten_util.ravel_pytree``'s (the order of ``jax.tree.leaves``).
    The flat loss remembers the leaves' paths (:attr:`FlatLoss.leaves`), so an error about a
    group of ``w0`` (all zeros, not invariant) names the layer.

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
    flat: LossFn = _Raveled(loss_fn, unravel, leaf_layout(params))
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


DIAGNOSIS_SCALES = (1e-3, 1e-2, 0.1, 0.5, 2.0, 10.0)
"""Scales ``c`` by which :func:`diagnose_groups` multiplies one group at a time."""


class GroupDiagnosis(NamedTuple):
    """One group scaled alone (:func:`diagnose_groups`).

    ``violation[i] = |L(w with w_g -> c_i w_g) - L(w)| / |L(w)|`` for ``c_i`` in ``scales``
    (``inf`` where the scaled loss is not finite); ``cause`` is ``"invariant"``, ``"nonfinite"``,
    ``"epsilon"`` (the violation grows as the group shrinks: a normalization with epsilon > 0) or
    ``"unnormalized"`` (a parameter that no normalization undoes); ``group`` is the group's
    index, ``where`` names it and, when known, its pytree leaves.
    """

    group: int
    where: str
    scales: tuple[float, ...]
    violation: tuple[float, ...]
    cause: str

    def advice(self) -> str:
        """What the cause means and what to do, in words."""
        pairs = list(zip(self.scales, self.violation, strict=True))
        vals = ", ".join(f"{v:.1e} at c={c:g}" for c, v in pairs)
        head = f"{self.where}: |L(c w_g) - L(w)| / |L(w)| = {vals}"
        if self.cause == "nonfinite":
            bad = [f"{c:g}" for c, v in pairs if not math.isfinite(v)]
            return (
                f"{head}. The loss is NaN/inf with this group scaled by c = {', '.join(bad)}: "
                "a normalization with epsilon=0 divides by a zero variance there (a dead "
                "channel, or an all-zero group); start from a point where every normalized "
                "layer has a nonzero variance"
            )
        if self.cause == "epsilon":
            return (
                f"{head}. The violation grows as the group is scaled down: a normalization with "
                "epsilon > 0 is invariant only for |w_g| >> sqrt(epsilon); use epsilon=0 (e.g. "
                "nn.BatchNorm(epsilon=0.0) or nn.LayerNorm(epsilon=0.0))"
            )
        return (
            f"{head}. Scaling this group changes the loss at every scale: a parameter that no "
            "normalization undoes (a bias, or a norm layer's scale or offset, after the last "
            "normalization, or a trained last layer); use use_bias=False / use_scale=False on "
            "that layer, or fix the last layer (make it a constant, not a trained parameter), "
            "or give the right `groups`"
        )


@eqx.filter_jit
def _scaled_losses(loss: LossFn, w: Array, scales: Array) -> tuple[Array, Array]:
    return loss(w), jax.vmap(lambda s: loss(w * s))(scales)


def diagnose_groups(
    loss: LossFn,
    w: Array,
    groups: Sequence[int] | None = None,
    *,
    rtol: float | None = None,
    leaves: Sequence[Leaf] = (),
) -> tuple[GroupDiagnosis, ...]:
    """Scale one group at a time by each of :data:`DIAGNOSIS_SCALES` and classify the change.

    Costs ``G * 6`` loss evaluations. A group is ``"invariant"`` when every relative change is
    at most ``rtol`` (default :func:`default_invariance_rtol`); ``"nonfinite"`` when a scaled
    loss is NaN/inf; ``"epsilon"`` when the change at the smallest scale is at least 10 times
    that at the largest (invariance that degrades as ``|w_g| -> 0``, the signature of
    ``x / sqrt(var + eps)``); else ``"unnormalized"``.
    """
    w = jnp.asarray(w)
    sizes = as_groups(groups, w.shape[0])
    tol = default_invariance_rtol(w.dtype) if rtol is None else float(rtol)
    cs = jnp.asarray(DIAGNOSIS_SCALES, w.dtype)
    out = []
    for g in range(len(sizes)):
        mask = np.zeros(len(sizes))
        mask[g] = 1.0
        sel = expand_groups(jnp.asarray(mask, w.dtype), sizes)
        scales = 1.0 + (cs[:, None] - 1.0) * sel[None, :]  # group g scaled, the rest kept
        base, vals = _scaled_losses(loss, w, scales)
        base_f = float(base)
        rel = np.abs(np.asarray(vals, np.float64) - base_f) / max(abs(base_f), 1e-300)
        rel = np.where(np.isfinite(rel), rel, np.inf)
        if not math.isfinite(base_f) or not np.all(np.isfinite(rel)):
            cause = "nonfinite"
        elif np.all(rel <= tol):
            cause = "invariant"
        elif rel[0] >= 10.0 * rel[-1]:
            cause = "epsilon"
        else:
            cause = "unnormalized"
        out.append(
            GroupDiagnosis(
                g,
                describe_group(g, sizes, leaves),
                DIAGNOSIS_SCALES,
                tuple(float(x) for x in rel),
                cause,
            )
        )
    return tuple(out)


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

    On failure the error carries a diagnosis per group (:func:`diagnose_groups`: each group
    scaled alone, which names the layer that breaks invariance and the likely cause: a
    parameter after the last normalization, an epsilon > 0, a NaN), with the pytree leaves of a
    :func:`flatten_loss` loss.

    Args:
        loss: the loss, ``(D,) -> ()``.
        w: the point to check around, ``(D,)`` (a flat vector, nonzero in every group, of the
            dtype of the loss's data).
        groups: contiguous block sizes for multi-group invariance (``None``: one group).
        key: PRNG key for the random points (default ``PRNGKey(0)``: deterministic).
        num_points: number of points, ``w`` included.
        rtol: tolerance on both measures; default :func:`default_invariance_rtol`.
        raise_on_failure: raise :class:`ScaleInvarianceError` when a measure exceeds ``rtol``.
        name: what to call the loss in the error message.

    Returns:
        An :class:`InvarianceReport` with both measures and the tolerance.
    """
    # validate imports this module (groups), so it is imported here, not at the top.
    from theory.core import validate as check

    leaves = leaves_of(loss)
    w, sizes = check.flat_vector(w, "w", groups, leaves=leaves)
    check.loss_output(loss, w, name, wname="w")
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
        raise ScaleInvarianceError(_failure_message(loss, w, sizes, leaves, report, name, dtype))
    return report


def _failure_message(
    loss: LossFn,
    w: Array,
    sizes: Groups,
    leaves: Sequence[Leaf],
    report: InvarianceReport,
    name: str,
    dtype: Any,
) -> str:
    homog, euler, tol = report
    what = []
    if not homog <= tol:
        what.append(f"|L(c w) - L(w)| reaches {homog:.3g} of the loss scale")
    if not euler <= tol:
        what.append(f"|<grad L(w), w_group>| reaches {euler:.3g} of |grad L| |w_group|")
    diag = diagnose_groups(loss, w, sizes, rtol=tol, leaves=leaves)
    bad = [d for d in diag if d.cause != "invariant"]
    several = len(sizes) > 1
    if bad:
        shown = "\n  ".join(d.advice() for d in bad[:5])
        more = f"\n  ... and {len(bad) - 5} more groups" if len(bad) > 5 else ""
        kept = len(diag) - len(bad)
        per_group = (
            f"\nEach group scaled alone by c in {DIAGNOSIS_SCALES}: {len(bad)} of {len(diag)} "
            f"break invariance{f' ({kept} are invariant)' if kept else ''}:\n  {shown}{more}"
        )
    else:
        per_group = (
            "\nScaled one group at a time at w, every group keeps the loss within the "
            "tolerance: the violation is at the random points near w or in the gradient (Euler)."
        )
    return (
        f"{name} is not scale-invariant{' per group' if several else ''} around the given point: "
        f"{'; '.join(what)} (tolerance {tol:.1g} for {jnp.dtype(dtype).name}).{per_group}\n"
        "Fix the model (above). If it cannot be changed, theory.make_scale_invariant(fn, groups) "
        "normalizes each group before the loss, which changes the model (it trains a different "
        "function). check_invariance=False skips this check."
    )


class IdentityErrors(NamedTuple):
    """How far a loss is from the exact consequences of (one-group) scale invariance at a set of
    points (:func:`identity_errors`); each is 0 in exact arithmetic for an invariant loss.

    Attributes:
        homogeneity: ``max_i |L(c p_i) - L(p_i)| / max_i |L(p_i)|`` (degree-0 homogeneity).
        euler: ``max_i |<grad L(p_i), p_i>| / (|grad L(p_i)| |p_i|)`` (Euler's identity, as a
            cosine).
        hessian: ``max_i |H(p_i) p_i + grad L(p_i)| / |grad L(p_i)|`` (the derivative of Euler's
            identity), with the dense ``jax.hessian``: an oracle independent of the
            Hessian-vector products the rest of the library uses.
    """

    homogeneity: float
    euler: float
    hessian: float


def identity_errors(loss: LossFn, points: Array, scale: float = 0.31) -> IdentityErrors:
    """The three identity errors of :class:`IdentityErrors` of ``loss`` at the rows of
    ``points`` ``(N, D)``, with the rescaling ``c = scale``. Dense Hessians: small ``D`` only.
    At points where ``grad L = 0`` the last two are undefined (NaN)."""
    points = jnp.asarray(points)
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"points must have shape (N, D) with N >= 1, got shape {points.shape}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    vals = jax.vmap(loss)(points)
    homog = float(jnp.max(jnp.abs(jax.vmap(loss)(scale * points) - vals)) / jnp.max(jnp.abs(vals)))
    grads = jax.vmap(jax.grad(loss))(points)
    euler = float(
        jnp.max(
            jnp.abs(jnp.sum(grads * points, 1))
            / (jnp.linalg.norm(grads, axis=1) * jnp.linalg.norm(points, axis=1))
        )
    )
    hess = jax.vmap(jax.hessian(loss))(points)
    hw = float(
        jnp.max(
            jnp.linalg.norm(jnp.einsum("nij,nj->ni", hess, points) + grads, axis=1)
            / jnp.linalg.norm(grads, axis=1)
        )
    )
    return IdentityErrors(homog, euler, hw)
