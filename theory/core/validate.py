"""Input validation shared by the public functions: clear errors that name the bad argument."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from theory.core.invariance import as_groups, group_norms
from theory.core.types import Array, Groups


def is_traced(x: Any) -> bool:
    """Whether ``x`` is an abstract value inside a JAX transformation (no concrete checks)."""
    return isinstance(x, jax.core.Tracer)


def flat_vector(w: Any, name: str, groups: Sequence[int] | None = None) -> tuple[Array, Groups]:
    """``w`` as a 1-D floating array with finite entries and no zero group, and its groups."""
    if is_traced(w):
        return w, as_groups(groups, w.shape[0])
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
        which = int(np.flatnonzero(norms == 0)[0])
        where = "" if len(sizes) == 1 else f" (group {which} of sizes {sizes} is all zeros)"
        raise ValueError(f"{name} must be nonzero: a scale-invariant loss is undefined at 0{where}")
    return arr, sizes


def loss_output(loss: Any, w: Array, name: str = "loss") -> None:
    """``loss(w)`` must be a scalar of ``w``'s floating dtype (checked abstractly, no FLOPs).

    A loss that promotes (float64 data with a float32 ``w0``, say) would otherwise fail deep
    inside the compiled step with a ``lax.cond`` dtype mismatch.
    """
    if is_traced(w):
        return
    out = jax.eval_shape(loss, jax.ShapeDtypeStruct(w.shape, w.dtype))
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape != ():
        raise ValueError(
            f"{name}(w) must return a scalar, got {type(out).__name__} of shape {shape}"
        )
    if dtype != w.dtype:
        raise TypeError(
            f"{name}(w) returns {dtype} but w0 is {w.dtype}: the loss must return w0's dtype "
            f"(pass w0 as {dtype}, or keep the loss's data and constants in {w.dtype})"
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
