"""Objectives: how the engine evaluates a loss, its gradient and Hessian-vector products.

The engine (:mod:`theory.engine`) never differentiates a loss itself; it asks an objective for

* ``value_and_grad(w) -> (L(w), grad L(w))`` on an untracked step;
* ``linearize(w) -> ((L(w), grad L(w)), hvp)`` on a tracked step: one primal pass, then
  ``hvp(v) = hess L(w) v`` as often as the eigen-solver needs;
* ``value_grad_hvp(w, v) -> (L(w), grad L(w), hess L(w) v)``: the gradient and one HVP in one
  forward-over-reverse pass (what a streaming tracker spends per step).

:class:`FullBatch` does this for any loss ``(D,) -> ()`` with ``jax.linearize``/``jax.jvp``.
:class:`Chunked` does it for a loss that is a mean over ``N`` examples, accumulating the value,
gradient and HVPs over chunks of examples in ``lax.scan`` (memory of one chunk, not of ``N``
examples; equal to the full-batch pass up to rounding when the loss decomposes over examples).
An objective is itself a loss (``objective(w) = L(w)``), so every function of :mod:`theory`
that takes a loss takes an objective too. Objectives are pytrees (``equinox.Module``): data they
carry are leaves, handed to ``jit`` as arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.core.types import Array, LossFn


@runtime_checkable
class Objective(Protocol):
    """A loss with the derivative passes the engine needs (module docstring)."""

    def __call__(self, w: Array, /) -> Array: ...

    def value_and_grad(self, w: Array) -> tuple[Array, Array]: ...

    def linearize(self, w: Array) -> tuple[tuple[Array, Array], Callable[[Array], Array]]: ...

    def value_grad_hvp(self, w: Array, v: Array) -> tuple[Array, Array, Array]: ...


class FullBatch(eqx.Module):
    """The objective of a loss evaluated at once (the whole data set in one pass).

    ``linearize`` is ``jax.linearize`` of ``value_and_grad``: the primal pass (shared with the
    GD step) stores its residuals, and each HVP evaluates only the tangent program (about 1.5-2
    gradients on a dense network). Memory: the residuals of one full forward and backward pass.
    """

    loss: LossFn

    def __call__(self, w: Array) -> Array:
        return self.loss(w)

    def value_and_grad(self, w: Array) -> tuple[Array, Array]:
        return jax.value_and_grad(self.loss)(w)

    def linearize(self, w: Array) -> tuple[tuple[Array, Array], Callable[[Array], Array]]:
        primal, lin = jax.linearize(jax.value_and_grad(self.loss), w)

        def hvp(v: Array) -> Array:
            return lin(v)[1]

        return primal, hvp

    def value_grad_hvp(self, w: Array, v: Array) -> tuple[Array, Array, Array]:
        (val, grad), (_, hv) = jax.jvp(jax.value_and_grad(self.loss), (w,), (v,))
        return val, grad, hv


def draws_minibatches(objective: Any) -> bool:
    """Whether ``objective`` draws a minibatch per step (defines ``at(t, key)``)."""
    return callable(getattr(objective, "at", None))


def step_objective(objective: Objective, t: Array, key: Array) -> Objective:
    """The objective of step ``t``: ``objective.at(t, key)`` for an objective that draws a
    minibatch per step (one that defines ``at(t, key) -> Objective``, the draw a pure function
    of the run's key and the step, so that runs are reproducible and resume bitwise), else
    ``objective`` itself. The engine's step hands this to the tracker (whose gradient drives
    the update) and the whole objective beside it (``StepContext.full``)."""
    return objective.at(t, key) if draws_minibatches(objective) else objective  # type: ignore[attr-defined]


def as_objective(loss: Any) -> Objective:
    """``loss`` itself if it is an :class:`Objective`, else ``FullBatch(loss)``."""
    if isinstance(loss, Objective):
        return loss
    if not callable(loss):
        raise TypeError(f"loss must be a callable (D,) -> () or an Objective, got {loss!r}")
    return FullBatch(loss)


def _check_chunk_size(chunk_size: Any) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (>= 1), got {chunk_size}")
    return int(chunk_size)


def _as_data(data: Any) -> tuple[Any, ...]:
    """``data`` as a tuple of pytrees of arrays (a lone array becomes a 1-tuple)."""
    items = tuple(data) if isinstance(data, (list, tuple)) else (data,)
    if not items:
        raise ValueError("data must hold at least one array with a leading example axis (N, ...)")

    def to_array(leaf: Any) -> Array:
        if isinstance(leaf, jax.Array):
            return leaf
        if isinstance(leaf, (np.ndarray, np.generic, int, float)):
            return jnp.asarray(leaf)
        raise TypeError(
            f"data must be arrays (or pytrees of arrays) with a leading example axis, got a "
            f"leaf of type {type(leaf).__name__}"
        )

    return tuple(jax.tree.map(to_array, item) for item in items)


def _num_examples(data: tuple[Any, ...]) -> int:
    """The common leading axis ``N`` of every leaf of ``data`` (ValueError naming the mismatch)."""
    sizes = []
    for i, item in enumerate(data):
        for path, leaf in jax.tree_util.tree_flatten_with_path(item)[0]:
            where = f"data[{i}]" + jax.tree_util.keystr(path)
            if leaf.ndim == 0:
                raise ValueError(f"{where} must have a leading example axis (N, ...), got a scalar")
            sizes.append((where, int(leaf.shape[0]), tuple(leaf.shape)))
    if not sizes:
        raise ValueError("data must hold at least one array with a leading example axis (N, ...)")
    n = sizes[0][1]
    if n == 0:
        raise ValueError(
            f"data must hold N >= 1 examples, got {sizes[0][0]} of shape {sizes[0][2]}"
        )
    for where, m, shape in sizes[1:]:
        if m != n:
            raise ValueError(
                f"every data array must have the same leading example axis N: {sizes[0][0]} "
                f"has N = {n} (shape {sizes[0][2]}) but {where} has shape {shape}"
            )
    return n


class Chunked(eqx.Module):
    """The objective of a mean over examples, accumulated over chunks of examples in ``lax.scan``.

    The loss is ``L(w) = (1/N) sum_i l_i(w)`` over ``N`` examples, given as a per-chunk loss
    ``chunk_loss(w, *chunk) = (1/c) sum_{i in chunk} l_i(w)``: the MEAN over one chunk of
    ``c = chunk_size`` examples (``chunk`` = every array of ``data`` restricted to those
    examples, leading axis ``c``). With ``K = N / c`` chunks of equal size,

        ``L(w) = (1/K) sum_k chunk_loss(w, *chunk_k)``,

    and likewise ``grad L = (1/K) sum_k grad chunk_loss_k`` and ``hess L v = (1/K) sum_k
    hess chunk_loss_k v``: sums accumulated in the dtype of ``w`` over the ``K`` chunks of the
    data reshaped ``(N, ...) -> (K, c, ...)`` (a free reshape; chunk ``k`` holds examples
    ``k c, ..., (k+1) c - 1``), divided by ``K`` at the end. This equals the loss evaluated on all
    ``N`` examples at once up to rounding exactly when that loss decomposes over examples, i.e.
    ``chunk_loss`` of any subset is the mean of per-example terms (no batch statistics).

    Passes (``D`` = ``w.size``):

    * ``value_and_grad(w)``: one scan, a forward and reverse pass per chunk.
    * ``linearize(w)``: the same scan for ``(L, grad L)``; the returned ``hvp(v)`` scans over
      the chunks AGAIN, each chunk's HVP by forward-over-reverse ``jax.jvp(jax.grad(.))``. It
      does not store the residuals of all chunks (that is what ``jax.linearize`` over the scan
      would do): memory stays that of one chunk, at the price of recomputing each chunk's
      forward and reverse pass per HVP (about 2x the tangent-only cost of
      :class:`FullBatch`'s ``linearize`` HVP).
    * ``value_grad_hvp(w, v)``: one scan, forward-over-reverse per chunk.

    Memory: the data, ``O(D)`` accumulators, and the intermediates of ONE chunk's
    forward-over-reverse pass (instead of all ``N`` examples'). It works under ``jit``,
    ``vmap`` (over ``w`` or ``v``; over the objective's data too) and inside ``lax.scan``, in
    float32 and float64 (the accumulators have the dtype of ``w``).

    Args:
        chunk_loss: ``(w (D,), *chunk) -> ()``, the mean loss over a chunk. Prefer a pytree
            callable (``equinox.Module``, ``jax.tree_util.Partial``) for anything that carries
            arrays; a plain function is a static part of the compiled program.
        data: an array ``(N, ...)``, or a tuple of arrays (or pytrees of arrays) all with the
            same leading example axis ``N``; passed to ``chunk_loss`` positionally, in order.
        chunk_size: ``c``, a positive int dividing ``N`` (``c = N``: one chunk, the full batch).

    Raises:
        TypeError: ``chunk_loss`` not callable, ``chunk_size`` not an int, data not arrays.
        ValueError: ``chunk_size < 1`` or not dividing ``N``; data without a leading axis, or
            leading axes that differ.
    """

    chunk_loss: Callable[..., Array]
    data: tuple[Any, ...]
    chunk_size: int = eqx.field(static=True)

    def __init__(self, chunk_loss: Callable[..., Array], data: Any, *, chunk_size: int):
        if not callable(chunk_loss):
            raise TypeError(
                f"chunk_loss must be a callable (w, *chunk) -> () (the mean over a chunk), "
                f"got {chunk_loss!r}"
            )
        chunk_size = _check_chunk_size(chunk_size)
        items = _as_data(data)
        n = _num_examples(items)
        if n % chunk_size != 0:
            raise ValueError(
                f"chunk_size must divide the number of examples N = {n}, got chunk_size = "
                f"{chunk_size} (N % chunk_size = {n % chunk_size}); divisors near it: "
                f"{_nearby_divisors(n, chunk_size)}"
            )
        self.chunk_loss = chunk_loss
        self.data = items
        self.chunk_size = chunk_size

    @property
    def num_examples(self) -> int:
        """``N``, the leading axis of the data."""
        return int(jax.tree.leaves(self.data)[0].shape[0])

    @property
    def num_chunks(self) -> int:
        """``K = N / chunk_size``."""
        return self.num_examples // self.chunk_size

    def _chunks(self) -> tuple[Any, ...]:
        """The data reshaped ``(N, ...) -> (K, c, ...)`` (scanned over the leading axis)."""
        k, c = self.num_chunks, self.chunk_size
        return jax.tree.map(lambda a: a.reshape(k, c, *a.shape[1:]), self.data)

    def _scan(self, body: Callable[[Any], Any], init: Any) -> Any:
        """``sum_k body(chunk_k)`` (a pytree like ``init``) by ``lax.scan``, divided by ``K``."""

        def step(carry: Any, chunk: tuple[Any, ...]) -> tuple[Any, None]:
            return jax.tree.map(jnp.add, carry, body(chunk)), None

        total, _ = jax.lax.scan(step, init, self._chunks())
        k = self.num_chunks
        return jax.tree.map(lambda t: t / jnp.asarray(k, t.dtype), total)

    def _value(self, w: Array, chunk: tuple[Any, ...]) -> Array:
        val = jnp.asarray(self.chunk_loss(w, *chunk))
        if val.shape != ():
            raise ValueError(
                f"chunk_loss must return a scalar (the mean over a chunk), got shape {val.shape}"
            )
        return val.astype(w.dtype)

    def __call__(self, w: Array) -> Array:
        w = jnp.asarray(w)
        return self._scan(lambda chunk: self._value(w, chunk), jnp.zeros((), w.dtype))

    def value_and_grad(self, w: Array) -> tuple[Array, Array]:
        w = jnp.asarray(w)

        def body(chunk: tuple[Any, ...]) -> tuple[Array, Array]:
            return jax.value_and_grad(self._value)(w, chunk)

        return self._scan(body, (jnp.zeros((), w.dtype), jnp.zeros_like(w)))

    def hvp(self, w: Array, v: Array) -> Array:
        """``hess L(w) v``, ``(D,)``: per chunk forward-over-reverse, accumulated."""
        w = jnp.asarray(w)
        v = jnp.asarray(v, w.dtype)

        def body(chunk: tuple[Any, ...]) -> Array:
            grad = jax.grad(self._value)
            return jax.jvp(lambda x: grad(x, chunk), (w,), (v,))[1]

        return self._scan(body, jnp.zeros_like(w))

    def linearize(self, w: Array) -> tuple[tuple[Array, Array], Callable[[Array], Array]]:
        w = jnp.asarray(w)
        primal = self.value_and_grad(w)

        def hvp(v: Array) -> Array:
            return self.hvp(w, v)

        return primal, hvp

    def value_grad_hvp(self, w: Array, v: Array) -> tuple[Array, Array, Array]:
        w = jnp.asarray(w)

        def body(chunk: tuple[Any, ...]) -> tuple[Array, Array, Array]:
            vg = jax.value_and_grad(self._value)
            (val, grad), (_, hv) = jax.jvp(lambda x: vg(x, chunk), (w,), (v,))
            return val, grad, hv

        v = jnp.asarray(v, w.dtype)
        zero = jnp.zeros_like(w)
        return self._scan(body, (jnp.zeros((), w.dtype), zero, zero))


def _nearby_divisors(n: int, c: int) -> list[int]:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    below = [d for d in divisors if d < c][-1:]
    above = [d for d in divisors if d > c][:1]
    return below + above
