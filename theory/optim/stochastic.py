"""Any optax optimizer trained on minibatches through the engine (SGD, SAM, IRE on step batches).

:func:`theory.optim.transforms.run_optimizer` hands the optimizer the same ``loss_args`` at every
step (full-batch training). Here the data are drawn by a :class:`theory.core.minibatch.Minibatch`:
step ``t`` takes the batch ``B_t`` (a pure function of the run's key and ``t``), the engine's
gradient is that of the batch loss, and the optimizer's update is called with

    ``opt.update(grad L_{B_t}(p), state, p, loss_args=(*loss_args, *B_t))``,

so the transformations that evaluate the loss themselves see the same batch as the gradient: SAM
(:func:`theory.optim.transforms.sam`) takes its ascent step and its perturbed gradient on
``B_t``; IRE (:func:`theory.optim.ire.ire`) refreshes its mask (e.g. the sampled-label Fisher
diagonal, :func:`theory.optim.ire.fisher_diagonal`) on the batch of the refresh step, as the
IRE paper's Algorithm 1 does with minibatch gradients.

The loss contract is :class:`theory.core.minibatch.Minibatch`'s: ``loss_fn(params, *loss_args,
*batch)`` is the MEAN over the batch's examples; ``loss_args`` are fixed arrays (a model's fixed
head, a module carrying its parameters) passed as arguments, never closed over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from theory.core import validate as check
from theory.core.invariance import as_groups
from theory.core.minibatch import Minibatch, Scheme
from theory.engine import AbstractMethod, AbstractTracker, GDResult, SaveAt
from theory.engine import run as engine_run
from theory.engine.driver import check_parts

Array = jax.Array
PyTree = Any
LossFn = Callable[..., Array]

__all__ = ["MinibatchOptax", "MinibatchState", "run_optimizer_minibatch"]


class _FlatBatchLoss(eqx.Module):
    """``(w, *batch) -> loss_fn(unravel(w), *loss_args, *batch)`` (the Minibatch's loss)."""

    loss_fn: LossFn
    unravel: Callable[[Array], PyTree] = eqx.field(static=True)
    loss_args: tuple

    def __call__(self, w: Array, *batch: Any) -> Array:
        return self.loss_fn(self.unravel(w), *self.loss_args, *batch)


class _FlatBatchObserve(eqx.Module):
    """``w -> observe(unravel(w), *loss_args)`` (recorded on every row; the fixed arguments
    only, no batch)."""

    observe: Callable[..., dict[str, Array]]
    unravel: Callable[[Array], PyTree] = eqx.field(static=True)
    loss_args: tuple

    def __call__(self, w: Array) -> dict[str, Array]:
        return dict(self.observe(self.unravel(w), *self.loss_args))


class MinibatchState(NamedTuple):
    """:class:`MinibatchOptax`'s state: the optimizer's, and the current epoch's permutation."""

    opt: Any
    perm: Array  # (N,) the permutation of epoch ``epoch`` (unused outside the epoch scheme)
    epoch: Array  # the epoch ``perm`` belongs to (-1: none yet)


class MinibatchOptax(AbstractMethod):
    """An optax optimizer whose update sees step ``t``'s batch (module docstring).

    ``update(w, grad, state, t, key)`` takes the examples ``batches.indices(t, key)`` -- the
    batch whose loss the engine differentiated at this step
    (:func:`theory.core.objective.step_objective` uses the same ``t`` and run key) -- and calls
    ``opt.update(unravel(grad), state, unravel(w), loss_args=(*loss_args, *batch))``.

    Under the ``"epoch"`` scheme the epoch's permutation is kept in the state
    (:class:`MinibatchState`) and drawn again only when the epoch changes, by
    :meth:`theory.core.minibatch.Minibatch.epoch_permutation` and ``epoch_slice`` (the rule of
    ``Minibatch.indices``; tested equal): a permutation of ``N`` is a sort, which cost about half
    of a whole SGD step of the ``ire_practice`` network (0.46 of 0.9 ms, measured), and XLA
    did not merge it with the engine's own draw of the same batch.

    Attributes:
        opt: the optimizer (static; ``optax.with_extra_args_support`` applied).
        unravel: flat vector -> parameter pytree (static).
        loss_args: fixed arguments before the batch (leaves).
        batches: the :class:`theory.core.minibatch.Minibatch` that draws the batches.
        lr: step size of the EoS quantity (``nan`` when unknown).
    """

    opt: optax.GradientTransformationExtraArgs = eqx.field(static=True)
    unravel: Callable[[Array], Any] = eqx.field(static=True)
    loss_args: tuple
    batches: Minibatch
    lr: Array

    def init(self, w: Array) -> MinibatchState:
        n = self.batches.num_examples
        return MinibatchState(self.opt.init(self.unravel(w)), jnp.arange(n), jnp.asarray(-1))

    def weight_decay(self) -> Array:
        return jnp.full_like(self.lr, jnp.nan)

    def _cached(self) -> bool:
        b = self.batches
        return b.scheme == "epoch" and b.batch_size < b.num_examples

    def indices(self, t: Array, key: Array, state: MinibatchState) -> tuple[Array, Array, Array]:
        """Step ``t``'s example indices, and the permutation and epoch to keep."""
        if not self._cached():
            return self.batches.indices(t, key), state.perm, state.epoch
        batches = self.batches
        epoch = jnp.asarray(t) // batches.steps_per_epoch
        perm = jax.lax.cond(
            epoch != state.epoch,
            lambda: batches.epoch_permutation(epoch, key).astype(state.perm.dtype),
            lambda: state.perm,
        )
        return batches.epoch_slice(perm, t), perm, epoch

    def update(
        self, w: Array, grad: Array, state: MinibatchState, t: Array, key: Array
    ) -> tuple[Array, MinibatchState]:
        idx, perm, epoch = self.indices(t, key, state)
        batch = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), self.batches.data)
        params = self.unravel(w)
        u, opt_state = self.opt.update(
            self.unravel(grad), state.opt, params, loss_args=(*self.loss_args, *batch)
        )
        return w + ravel_pytree(u)[0].astype(w.dtype), MinibatchState(opt_state, perm, epoch)


def run_optimizer_minibatch(
    opt: optax.GradientTransformation,
    loss_fn: LossFn,
    params0: PyTree,
    data: Any,
    batch_size: int,
    steps: int,
    *,
    loss_args: tuple = (),
    scheme: Scheme = "epoch",
    key: Array | None = None,
    saveat: SaveAt | None = None,
    tracker: AbstractTracker | None = None,
    lr: float | None = None,
    groups: Any = None,
    chunk_steps: int = 20_000,
    callback: Callable[[int, int], None] | None = None,
) -> GDResult:
    """Train ``params0`` with ``opt`` for ``steps`` minibatch steps through the engine.

    Step ``t``: ``B_t = Minibatch.batch(t, key)`` (``scheme`` ``"epoch"``: shuffled epochs,
    drop-last; ``"iid"``: an independent draw per step), ``g = grad_p loss_fn(p, *loss_args,
    *B_t)``, ``u = opt.update(g, s, p, loss_args=(*loss_args, *B_t))``, ``p += u``. A
    non-finite iterate stops the run (``diverged_at``), as in
    :func:`theory.optim.transforms.run_optimizer`.

    Args:
        opt: the optimizer (SGD, ``optax.chain(sam(...), ...)``, ``ire(...)``).
        loss_fn: ``loss_fn(params, *loss_args, *batch) -> scalar``, the mean over the batch.
        params0: initial parameters (a pytree; the rows' ``w`` is its flattened vector).
        data: an array ``(N, ...)`` or a tuple of arrays with the example axis first.
        batch_size: examples per step, ``1 <= batch_size <= N``.
        steps: number of steps, a multiple of ``saveat.every``.
        loss_args: fixed arguments passed before the batch.
        scheme: ``"epoch"`` or ``"iid"`` (:class:`theory.core.minibatch.Minibatch`).
        key: PRNG key of the batches (default ``PRNGKey(0)``; the tracker's starts use it too).
        saveat: the rows; its ``observe`` is called as ``observe(params, *loss_args)``.
        tracker: a sharpness tracker (of the step's batch loss; needs ``lr``).
        lr: step size of the EoS quantity ``lr * lambda_1``.
        groups: scale-invariance groups of the flat parameters (default one group).
        chunk_steps, callback: as :func:`theory.gd_wd`.

    Returns:
        :class:`theory.GDResult` (``final_state`` the optimizer's state after the run, without
        the epoch's permutation).
    """
    steps = check.positive_int(steps, "steps")
    if not isinstance(loss_args, tuple):
        raise TypeError(f"loss_args must be a tuple, got {type(loss_args).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable (params, *loss_args, *batch), got {loss_fn!r}")
    flat, unravel = ravel_pytree(params0)
    batches = Minibatch(
        _FlatBatchLoss(loss_fn, unravel, loss_args), data, batch_size, scheme=scheme
    )
    rate = jnp.asarray(np.nan if lr is None else lr, flat.dtype)
    method = MinibatchOptax(
        optax.with_extra_args_support(opt), unravel, tuple(loss_args), batches, rate
    )
    tracker, saveat = check_parts(method, tracker, saveat)
    if steps % saveat.every:
        raise ValueError(f"steps ({steps}) must be a multiple of SaveAt.every ({saveat.every})")
    if tracker.every > 0 and lr is None:
        raise ValueError("a sharpness tracker needs lr= (the scale of the EoS quantity)")
    if saveat.observe is not None:
        observe = _FlatBatchObserve(saveat.observe, unravel, loss_args)
        saveat = SaveAt(every=saveat.every, iterates=saveat.iterates, observe=observe)
    result = engine_run(
        batches,
        method,
        flat,
        steps=steps,
        groups=as_groups(groups, int(flat.shape[0])),
        tracker=tracker,
        saveat=saveat,
        key=jax.random.PRNGKey(0) if key is None else key,
        chunk_steps=chunk_steps,
        progress=callback,
        on_nonfinite="stop",
        config={"method": "optax_minibatch", "lr": lr, "batch_size": batch_size},
    )
    final = result.final_state
    if isinstance(final, MinibatchState):
        result = dataclasses.replace(result, final_state=final.opt)
    return result
