"""Input validation shared by the public functions: clear errors that name the bad argument."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._types import Array, Groups
from .invariance import as_groups, group_norms


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
