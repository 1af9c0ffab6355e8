"""A minibatch objective: the whole data set's loss, and the loss of step ``t``'s batch.

:class:`Minibatch` is an :class:`theory.core.objective.Objective` over the whole data (what a
tracker reads as ``StepContext.full``) that also defines ``at(t, key) -> Objective``: the loss
of the batch that step ``t`` draws. The engine (:func:`theory.core.objective.step_objective`)
hands that batch objective to the tracker, whose gradient drives the update, so a run of any
engine method on a :class:`Minibatch` is minibatch SGD-style training.

The loss follows the per-example-mean contract of :class:`theory.core.objective.Chunked`:
``loss_fn(w, *batch)`` is the MEAN over the examples of ``batch`` (every array of ``data``
restricted to them, leading axis ``b``), so that the whole-data loss is
``L(w) = loss_fn(w, *data)`` and a uniformly drawn batch's loss is an unbiased estimate of it
when the loss decomposes over examples (no batch statistics; with BatchNorm a batch loss is the
ghost-batch loss of that batch).

Batches (``n`` examples, batch size ``b``; a pure function of the run's key and the step, so
the same key gives the same batches and a resumed run continues bitwise):

* ``scheme="epoch"`` (default): epoch ``e = t // (n // b)`` shuffles the examples with
  ``jax.random.permutation(fold_in(key, e), n)`` and step ``t`` takes the slice
  ``[i b, (i + 1) b)`` of that permutation, ``i = t mod (n // b)``; the last ``n mod b``
  examples of each permutation are dropped (drop-last). Every example is used at most once
  per epoch.
* ``scheme="iid"``: every step draws its batch independently from ``fold_in(key, t)``:
  ``b`` distinct examples (``jax.random.choice(..., replace=False)``), or ``b`` examples with
  replacement (``replace=True``).

A batch of the whole data (``b = N`` without replacement) is the data in its stored order
under either scheme (a shuffled order would be the same batch, summed in another order), so
that full-batch SGD does exactly the arithmetic of full-batch GD.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.core.objective import FullBatch, _as_data, _num_examples
from theory.core.types import Array

Scheme = Literal["epoch", "iid"]


class _BatchLoss(eqx.Module):
    """``w -> loss_fn(w, *batch)``: the loss of one gathered batch (its arrays are leaves)."""

    loss_fn: Callable[..., Array]
    batch: tuple[Any, ...]

    def __call__(self, w: Array) -> Array:
        val = jnp.asarray(self.loss_fn(w, *self.batch))
        if val.shape != ():
            raise ValueError(
                f"loss_fn must return a scalar (the mean over the batch), got shape {val.shape}"
            )
        return val.astype(w.dtype)


def _check_batch_size(batch_size: Any, n: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (>= 1), got {batch_size}")
    if batch_size > n:
        raise ValueError(
            f"batch_size = {batch_size} is larger than the data: N = {n} examples "
            f"(batch_size must be <= N)"
        )
    return int(batch_size)


class Minibatch(eqx.Module):
    """The whole data's loss, with ``at(t, key)``: the loss of step ``t``'s batch (module doc).

    Args:
        loss_fn: ``(w (D,), *batch) -> ()``, the mean loss over a batch. Prefer a pytree
            callable (``equinox.Module``) for anything that carries arrays.
        data: an array ``(N, ...)`` or a tuple of arrays (or pytrees of arrays) with the same
            leading example axis ``N``, passed to ``loss_fn`` positionally.
        batch_size: ``b``, ``1 <= b <= N`` (``b = N``: every step sees the whole data).
        replace: ``scheme="iid"`` only: draw with replacement within a batch.
        scheme: ``"epoch"`` or ``"iid"``.

    Raises:
        TypeError: ``loss_fn`` not callable, ``batch_size`` not an int, data not arrays.
        ValueError: ``batch_size < 1`` or ``> N`` (both numbers named); an unknown scheme;
            ``replace=True`` with ``scheme="epoch"``.
    """

    loss_fn: Callable[..., Array]
    data: tuple[Any, ...]
    batch_size: int = eqx.field(static=True)
    replace: bool = eqx.field(static=True)
    scheme: Scheme = eqx.field(static=True)

    def __init__(
        self,
        loss_fn: Callable[..., Array],
        data: Any,
        batch_size: int,
        *,
        replace: bool = False,
        scheme: Scheme = "epoch",
    ):
        if not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be a callable (w, *batch) -> () (the mean over a batch), "
                f"got {loss_fn!r}"
            )
        items = _as_data(data)
        n = _num_examples(items)
        if scheme not in ("epoch", "iid"):
            raise ValueError(f"scheme must be 'epoch' or 'iid', got {scheme!r}")
        if not isinstance(replace, bool):
            raise TypeError(f"replace must be a bool, got {replace!r}")
        if replace and scheme == "epoch":
            raise ValueError(
                "replace=True needs scheme='iid' (an epoch visits each example at most once)"
            )
        self.loss_fn = loss_fn
        self.data = items
        self.batch_size = _check_batch_size(batch_size, n)
        self.replace = replace
        self.scheme = scheme

    @property
    def num_examples(self) -> int:
        """``N``, the leading axis of the data."""
        return int(jax.tree.leaves(self.data)[0].shape[0])

    @property
    def steps_per_epoch(self) -> int:
        """``N // batch_size`` (the batches of one permutation; drop-last)."""
        return self.num_examples // self.batch_size

    def indices(self, t: Array | int, key: Array) -> Array:
        """The example indices ``(b,)`` of step ``t``'s batch (module docstring)."""
        n, b = self.num_examples, self.batch_size
        t = jnp.asarray(t)
        if b == n and not self.replace:  # the whole data, in its stored order
            return jnp.arange(n)
        if self.scheme == "iid":
            k = jax.random.fold_in(key, t)
            return jax.random.choice(k, n, (b,), replace=self.replace)
        return self.epoch_slice(self.epoch_permutation(t // self.steps_per_epoch, key), t)

    def epoch_permutation(self, epoch: Array | int, key: Array) -> Array:
        """``scheme="epoch"``: the shuffle of the examples for epoch ``epoch``,
        ``permutation(fold_in(key, epoch), N)`` (module docstring). A method that keeps it in
        its state across an epoch's steps draws the same batches as :meth:`indices`."""
        return jax.random.permutation(jax.random.fold_in(key, epoch), self.num_examples)

    def epoch_slice(self, perm: Array, t: Array | int) -> Array:
        """``scheme="epoch"``: step ``t``'s batch from its epoch's permutation ``perm``, the
        slice ``[i b, (i + 1) b)`` with ``i = t mod (N // b)``."""
        b = self.batch_size
        return jax.lax.dynamic_slice(perm, ((jnp.asarray(t) % self.steps_per_epoch) * b,), (b,))

    def batch(self, t: Array | int, key: Array) -> tuple[Any, ...]:
        """Step ``t``'s batch: every array of ``data`` at :meth:`indices`."""
        idx = self.indices(t, key)
        return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), self.data)

    def at(self, t: Array | int, key: Array) -> FullBatch:
        """The objective of step ``t``'s batch (a :class:`FullBatch` of the gathered batch)."""
        return FullBatch(_BatchLoss(self.loss_fn, self.batch(t, key)))

    def _whole(self) -> FullBatch:
        return FullBatch(_BatchLoss(self.loss_fn, self.data))

    def __call__(self, w: Array) -> Array:
        return self._whole()(w)

    def value_and_grad(self, w: Array) -> tuple[Array, Array]:
        return self._whole().value_and_grad(w)

    def linearize(self, w: Array) -> tuple[tuple[Array, Array], Callable[[Array], Array]]:
        return self._whole().linearize(w)

    def value_grad_hvp(self, w: Array, v: Array) -> tuple[Array, Array, Array]:
        return self._whole().value_grad_hvp(w, v)
