"""Types shared across ``theory``: flat parameter vectors, losses and matvecs.

Everything in :mod:`theory` works on a flat parameter vector ``w`` of shape ``(D,)`` (see
docs/conventions.md, "flat vectors in the geometry, pytrees at the edges"). Group structure for
multi-group scale invariance is a tuple of contiguous group sizes that add up to ``D``.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias

import jax

Array: TypeAlias = jax.Array
Groups: TypeAlias = tuple[int, ...]
"""Sizes of contiguous groups of coordinates, each scale-invariant on its own; sum = D."""


class LossFn(Protocol):
    """A scale-invariant loss on a flat vector: ``L(c w) = L(w)`` for every ``c > 0``.

    Shape: ``(D,) -> ()``. With several groups, invariance holds for each group's scale
    separately. A loss that depends on data should be a ``jax.tree_util.Partial`` (or any pytree
    callable) whose array leaves are the data: the runners then pass the data to ``jit`` as
    arguments instead of baking them into the compiled program as constants.
    """

    def __call__(self, w: Array, /) -> Array: ...


class MatVec(Protocol):
    """A symmetric linear operator given by its action: ``(D,) -> (D,)``."""

    def __call__(self, v: Array, /) -> Array: ...
