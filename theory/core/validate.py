"""Input validation shared by the public functions: clear errors that name the bad argument."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from theory.core.invariance import Leaf, as_groups, describe_group, group_norms
from theory.core.types import Array, Groups


def is_traced(x: Any) -> bool:
    """Whether ``x`` is an abstract value inside a JAX transformation (no concrete checks)."""
    return isinstance(x, jax.core.Tracer)


FLATTEN_HINT = (
    "flatten it with `theory.flatten_loss(loss_fn, params)` (it returns the flat loss, w0 and "
    "the groups)"
)


def _pytree_leaves(w: Any) -> int | None:
    """The number of array leaves if ``w`` is a parameter pytree rather than one array, else
    ``None`` (a list of numbers is a vector; a mapping, or a container of arrays, is a pytree)."""
    if isinstance(w, (jax.Array, np.ndarray, np.generic, int, float)):
        return None
    leaves = jax.tree.leaves(w)
    if isinstance(w, Mapping) or any(np.ndim(x) > 0 for x in leaves):
        return len(leaves)
    return None


def not_pytree(w: Any, name: str) -> None:
    """Refuse a parameter pytree (dict, list of arrays, flax ``FrozenDict``) where a flat vector
    is expected, saying how to flatten it."""
    n_leaves = _pytree_leaves(w)
    if n_leaves is not None:
        raise TypeError(
            f"{name} must be a flat vector of shape (D,), got a parameter pytree "
            f"({type(w).__name__}) with {n_leaves} leaves: {FLATTEN_HINT}"
        )


def flat_vector(
    w: Any, name: str, groups: Sequence[int] | None = None, *, leaves: Sequence[Leaf] = ()
) -> tuple[Array, Groups]:
    """``w`` as a 1-D floating array with finite entries and no zero group, and its groups.

    ``leaves`` (from :func:`theory.core.invariance.leaves_of` of the loss) names the pytree leaves
    of a zero group in the error.
    """
    if is_traced(w):
        return w, as_groups(groups, w.shape[0])
    not_pytree(w, name)
    arr = jnp.asarray(w)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat vector of shape (D,), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must not be empty")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point vector, got dtype {arr.dtype}")
    sizes = as_groups(groups, arr.shape[0])
    host = np.asarray(arr)
    if not np.all(np.isfinite(host)):
        bad = np.flatnonzero(~np.isfinite(host))
        raise ValueError(
            f"{name} must be finite, but has {bad.size} non-finite entries (first at index "
            f"{int(bad[0])}: {host[bad[0]]})"
        )
    norms = np.asarray(group_norms(arr, sizes))
    if np.any(norms == 0):
        zero = np.flatnonzero(norms == 0)
        where = "; ".join(describe_group(int(i), sizes, leaves) for i in zero[:3])
        more = f" and {zero.size - 3} more" if zero.size > 3 else ""
        raise ValueError(
            f"{name} must be nonzero in every group: a scale-invariant loss is undefined at 0, "
            f"but {where}{more} {'is' if zero.size == 1 else 'are'} all zeros. A zero-initialized "
            "parameter (a bias, or a norm "
            "layer's scale or offset) cannot be a scale-invariant group: remove it from the "
            "model (use_bias=False / use_scale=False) or initialize it nonzero"
        )
    return arr, sizes


def loss_output(loss: Any, w: Array, name: str = "loss", wname: str = "w0") -> None:
    """``loss(w)`` must be a scalar of ``w``'s floating dtype (checked abstractly, no FLOPs).

    Also :func:`same_precision`. A loss that promotes (float64 data with a float32 ``w0``, say)
    would otherwise fail deep inside the compiled step with a ``lax.cond`` dtype mismatch.
    """
    if is_traced(w):
        return
    same_precision(loss, w, name, wname)
    out = jax.eval_shape(loss, jax.ShapeDtypeStruct(w.shape, w.dtype))
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape != ():
        raise ValueError(
            f"{name}(w) must return a scalar, got {type(out).__name__} of shape {shape}"
        )
    if dtype != w.dtype:
        raise TypeError(
            f"{name}(w) returns {dtype} but {wname} is {w.dtype} (mixed precision): the loss must "
            f"return {wname}'s dtype (pass {wname} as {dtype}, or keep the loss's data and "
            f"constants in {w.dtype})"
        )


def same_precision(loss: Any, w: Array, name: str = "loss", wname: str = "w") -> None:
    """No floating array leaf of ``loss`` (its data, when the loss is a pytree such as a
    ``jax.tree_util.Partial`` or a :func:`theory.flatten_loss` loss) is less precise than ``w``.

    float32 data with float64 weights compute a float64 loss from rounded data: refused here,
    naming the leaf. Data *more* precise than ``w`` are allowed: a loss may cast its data to
    ``w``'s dtype (the project's analytic problems and networks store float64 data and compute
    in the dtype of ``w``); one that does not promotes its output, which :func:`loss_output`
    refuses (naming both dtypes). Data closed over (not leaves) are not seen here.
    """
    if is_traced(w):
        return
    wdtype = jnp.dtype(w.dtype)
    for path, leaf in jax.tree_util.tree_flatten_with_path(loss)[0]:
        dtype = getattr(leaf, "dtype", None)
        if (
            dtype is None
            or getattr(leaf, "weak_type", False)  # a Python scalar: adopts w's dtype
            or not jnp.issubdtype(dtype, jnp.floating)
            or jnp.finfo(dtype).bits >= jnp.finfo(wdtype).bits
        ):
            continue
        parts = jax.tree_util.keystr(path, simple=True, separator="/").split("/")
        where = "/".join(p for p in parts if p and not p.startswith("<flat index")) or "(root)"
        raise TypeError(
            f"mixed precision: {wname} is {wdtype.name} but {name}'s data leaf {where} "
            f"(shape {tuple(np.shape(leaf))}) is {jnp.dtype(dtype).name}; use one dtype for both: "
            f"cast the weights ({wname}.astype(jnp.{jnp.dtype(dtype).name})) or the data "
            f"(jax.tree.map(lambda x: x.astype(jnp.{wdtype.name}), data)) before flattening"
        )


def positive(x: Any, name: str) -> float:
    """A finite float ``> 0``."""
    try:
        val = float(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a positive float, got {x!r}") from err
    if not (math.isfinite(val) and val > 0):
        raise ValueError(f"{name} must be a positive finite float, got {x!r}")
    return val


def nonnegative(x: Any, name: str) -> float:
    """A finite float ``>= 0``."""
    try:
        val = float(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a non-negative float, got {x!r}") from err
    if not (math.isfinite(val) and val >= 0):
        raise ValueError(f"{name} must be a non-negative finite float, got {x!r}")
    return val


def positive_int(x: Any, name: str) -> int:
    """An ``int >= 1`` (bools and non-integral floats rejected)."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {x!r}")
    if x < 1:
        raise ValueError(f"{name} must be >= 1, got {x}")
    return int(x)


def finite(x: Any, name: str) -> float:
    """A finite float."""
    try:
        val = float(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a finite float, got {x!r}") from err
    if not math.isfinite(val):
        raise ValueError(f"{name} must be finite, got {x!r}")
    return val


def in_interval(x: Any, name: str, lo: float, hi: float) -> float:
    """A float in the open interval ``(lo, hi)``."""
    val = finite(x, name)
    if not lo < val < hi:
        raise ValueError(f"{name} must be in ({lo:g}, {hi:g}), got {x!r}")
    return val


def positive_fields(obj: Any, *names: str) -> None:
    """Every named attribute of ``obj`` (a config dataclass) is a finite float ``> 0``."""
    for name in names:
        positive(getattr(obj, name), name)


def nonnegative_fields(obj: Any, *names: str) -> None:
    """Every named attribute of ``obj`` (a config dataclass) is a finite float ``>= 0``."""
    for name in names:
        nonnegative(getattr(obj, name), name)


def finite_fields(obj: Any, *names: str) -> None:
    """Every named attribute of ``obj`` is a finite float."""
    for name in names:
        finite(getattr(obj, name), name)


def int_fields_at_least(obj: Any, minimum: int, *names: str) -> None:
    """Every named attribute of ``obj`` is an int ``>= minimum``."""
    for name in names:
        val = getattr(obj, name)
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
            raise TypeError(f"{name} must be an int >= {minimum}, got {val!r}")
        if val < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {val!r}")


def all_in_interval(
    values: Sequence[Any], name: str, lo: float, hi: float, *, min_len: int = 1
) -> tuple[float, ...]:
    """A sequence of at least ``min_len`` (default 1) floats, each in the open interval
    ``(lo, hi)``."""
    vals = tuple(values)
    if len(vals) < min_len:
        raise ValueError(
            f"{name} values must be in ({lo:g}, {hi:g}), at least {min_len} of them; got {values!r}"
        )
    if any(not (math.isfinite(float(x)) and lo < float(x) < hi) for x in vals):
        raise ValueError(f"{name} values must be in ({lo:g}, {hi:g}), got {values!r}")
    return tuple(float(x) for x in vals)


def decreasing(values: Sequence[Any], name: str) -> tuple[float, ...]:
    """A sequence of floats in strictly decreasing order."""
    vals = tuple(float(x) for x in values)
    if any(a <= b for a, b in itertools.pairwise(vals)):
        raise ValueError(f"{name} must be strictly decreasing, got {values!r}")
    return vals


def all_ints_at_least(values: Sequence[Any], name: str, minimum: int) -> tuple[int, ...]:
    """A sequence (may be empty) of ints, each ``>= minimum`` (bools rejected)."""
    vals = tuple(values)
    if any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum for v in vals
    ):
        raise ValueError(f"{name} must be ints >= {minimum}, got {values!r}")
    return tuple(int(v) for v in vals)


def all_nonnegative(values: Sequence[Any], name: str, *, empty: bool = False) -> tuple[float, ...]:
    """A sequence of finite floats ``>= 0``, non-empty unless ``empty``."""
    vals = tuple(values)
    if (not vals and not empty) or any(
        not (math.isfinite(float(x)) and float(x) >= 0) for x in vals
    ):
        raise ValueError(f"{name} must be finite and >= 0, got {values!r}")
    return tuple(float(x) for x in vals)


def all_positive(values: Sequence[Any], name: str) -> tuple[float, ...]:
    """A sequence of finite floats ``> 0`` (may be empty)."""
    vals = tuple(values)
    if any(not (math.isfinite(float(x)) and float(x) > 0) for x in vals):
        raise ValueError(f"{name} must be positive and finite, got {values!r}")
    return tuple(float(x) for x in vals)


def among(values: Sequence[str], name: str, allowed: Sequence[str], *, empty: bool = False) -> None:
    """Every entry of ``values`` is one of ``allowed`` (and there is one, unless ``empty``)."""
    bad = [v for v in values if v not in allowed]
    if bad or (not values and not empty):
        raise ValueError(f"{name} must be among {tuple(allowed)}, got {tuple(values)}")
