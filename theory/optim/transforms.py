"""Base optimizers as optax transformations (GD+WD, SAM) and a compiled driver for any of them.

These are the bases that :func:`theory.optim.ire.ire` wraps. All take the extra argument
``loss_args``
(a tuple passed as ``loss_fn(params, *loss_args)``) where they need the loss, so they compose with
``optax.chain`` and IRE.

* :func:`gd_wd_transform`: ``u = -eta (g + wd w)``, the update of docs/theory.md section 2.
* :func:`sam`: replaces the gradient by the gradient at a perturbed point (Foret et al. 2021):
  ``standard`` ``w + rho g/|g|``; ``average`` ``w + rho xi``, ``xi`` uniform on the unit sphere
  (the "average-direction" SAM of Wen, Ma, Li 2023 analysed in the IRE paper).
* :func:`run_optimizer`: a whole run through the engine (:func:`theory.engine.run`), recording
  the rows of a :class:`theory.engine.SaveAt`; the same :class:`theory.GDResult` as
  :func:`theory.gd_wd`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from theory.core import validate as check
from theory.core.edge import warn_if_above_edge
from theory.core.invariance import FlatLoss, as_groups
from theory.core.objective import FullBatch
from theory.engine import AbstractMethod, AbstractTracker, GDResult, Optax, SaveAt, optax_method
from theory.engine import run as engine_run
from theory.engine.driver import check_parts
from theory.problems.adapters import ModelLoss

Array = jax.Array
PyTree = Any
LossFn = Callable[..., Array]


def gd_wd_transform(eta: float, wd: float) -> optax.GradientTransformation:
    """GD with (coupled) weight decay: ``u = -eta (grad + wd * params)``."""
    eta = check.positive(eta, "eta")
    wd = check.nonnegative(wd, "wd")
    return optax.chain(optax.add_decayed_weights(wd), optax.sgd(eta))


class SAMState(NamedTuple):
    step: Array
    key: Array


def sam(
    loss_fn: LossFn, rho: float, *, variant: str = "standard", seed: int = 0
) -> optax.GradientTransformationExtraArgs:
    """Sharpness-aware minimization's gradient, as an optax transformation.

    ``update(grads, state, params, *, loss_args=())`` returns ``grad loss_fn(params + e)`` with
    ``e = rho grads / |grads|`` (``standard``; ``e = 0`` where ``grads = 0``) or ``e = rho xi``,
    ``xi`` uniform on the unit sphere of the flattened parameters (``average``). Chain it before
    the step (e.g. ``optax.chain(sam(...), optax.add_decayed_weights(wd), optax.sgd(eta))``).

    Args:
        loss_fn: ``loss_fn(params, *loss_args) -> scalar``.
        rho: perturbation radius ``> 0``.
        variant: ``"standard"`` or ``"average"``.
        seed: PRNG seed of the ``average`` directions.
    """
    rho = check.positive(rho, "rho")
    if variant not in ("standard", "average"):
        raise ValueError(f"variant must be 'standard' or 'average', got {variant!r}")

    def init_fn(params: PyTree) -> SAMState:
        del params
        return SAMState(jnp.zeros((), jnp.int32), jax.random.PRNGKey(seed))

    def update_fn(
        updates: PyTree,
        state: SAMState,
        params: PyTree | None = None,
        *,
        loss_args: tuple = (),
        **extra: Any,
    ) -> tuple[PyTree, SAMState]:
        del extra
        if params is None:
            raise ValueError("sam needs params: call update(grads, state, params, ...)")
        x, unravel = ravel_pytree(params)
        g, _ = ravel_pytree(updates)
        if variant == "standard":
            norm = jnp.linalg.norm(g)
            e = jnp.where(norm > 0, rho * g / jnp.where(norm > 0, norm, 1), 0)
        else:
            xi = jax.random.normal(jax.random.fold_in(state.key, state.step), x.shape, x.dtype)
            e = rho * xi / jnp.linalg.norm(xi)
        grads = jax.grad(loss_fn)(unravel(x + e.astype(x.dtype)), *loss_args)
        return grads, SAMState(state.step + 1, state.key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _PytreeLoss(eqx.Module):
    """``w -> loss_fn(unravel(w), *loss_args)``: a pytree loss as a flat one (data are leaves)."""

    loss_fn: LossFn  # a pytree callable's arrays are leaves (traced, not baked in)
    unravel: Callable[[Array], PyTree] = eqx.field(static=True)
    loss_args: tuple

    def __call__(self, w: Array) -> Array:
        return self.loss_fn(self.unravel(w), *self.loss_args)


class _PytreeObserve(eqx.Module):
    """``w -> observe(unravel(w), *loss_args)`` (recorded on every row)."""

    observe: Callable[..., dict[str, Array]]
    unravel: Callable[[Array], PyTree] = eqx.field(static=True)
    loss_args: tuple

    def __call__(self, w: Array) -> dict[str, Array]:
        return dict(self.observe(self.unravel(w), *self.loss_args))


def run_optimizer(
    opt: optax.GradientTransformation,
    loss_fn: LossFn | ModelLoss | FlatLoss,
    params0: PyTree = None,
    steps: int | None = None,
    *,
    loss_args: tuple = (),
    saveat: SaveAt | None = None,
    state0: Any = None,
    tracker: AbstractTracker | None = None,
    lr: float | None = None,
    groups: Sequence[int] | None = None,
    chunk_steps: int = 20_000,
    callback: Callable[[int, int], None] | None = None,
    warn_above_edge: bool = True,
) -> GDResult:
    """Run ``steps`` full-batch steps of ``opt`` on ``loss_fn`` through the engine.

    Each step: ``g = grad loss_fn(p, *loss_args)``, ``u = opt.update(g, s, p,
    loss_args=loss_args)``, ``p += u`` (:class:`theory.engine.Optax`), compiled in
    ``lax.scan`` chunks by :func:`theory.engine.run`. A non-finite iterate stops the run instead
    of raising: ``diverged_at`` is the first step whose iterate is non-finite (the update of
    step ``diverged_at - 1`` blew up), or whose loss is non-finite at a finite one, and the
    rows from it on are dropped.

    One loss contract: ``loss_fn`` may be the :class:`theory.problems.adapters.ModelLoss` of
    ``theory.from_linen`` / ``from_nnx`` / ``from_equinox`` (the object given to
    :func:`theory.gd_wd` as ``ml.loss, ml.w0, groups=ml.groups``): the run is then on its
    parameter pytree (``ml.pytree_loss`` from ``ml.params``, groups ``ml.groups``), so optax
    sees the model's leaves (masks, per-leaf states) and the rows' ``w`` is the same flat vector
    as ``gd_wd``'s. A :class:`theory.core.invariance.FlatLoss` runs on the flat vector
    (``loss`` from ``w0``, its ``groups``). Either way ``params0`` defaults to the object's start
    and ``loss_args`` must be empty (the data are inside).

    Args:
        opt: the optimizer (``loss_args`` is passed to its update as an extra argument).
        loss_fn: ``loss_fn(params, *loss_args) -> scalar``, or a ``ModelLoss`` / ``FlatLoss``.
        params0: initial parameters (pytree; flattened with ``ravel_pytree``); required with a
            plain ``loss_fn``.
        steps: number of steps, a multiple of ``saveat.every`` (required).
        loss_args: data passed to the loss (arguments, not closed over).
        saveat: the rows (:class:`theory.engine.SaveAt`; default every step, with the
            flattened parameters). Here its ``observe`` is called as
            ``observe(params, *loss_args) -> dict`` on the parameter pytree, and its arrays are
            recorded on every row (``result.observed``).
        state0: initial optimizer state (default ``opt.init(params0)``), e.g. with other
            hyperparameters set under ``optax.inject_hyperparams``.
        tracker: a sharpness tracker (default :class:`theory.engine.NoTracking`), e.g.
            ``theory.engine.LanczosTracker(every=10)``.
        lr: the step size of the EoS quantity ``lr * lambda_1(H)`` a tracker records, GD's
            stability number (``>= 2``: past the edge of stability of GD with step ``lr``);
            default ``nan``: no EoS column and no onset. Under an adaptive optimizer (Adam) the
            step is preconditioned, so ``lr * lambda_1(H)`` is only GD's number at that scale
            (e.g. Adam's base learning rate); the stability of the adaptive step is governed
            by the preconditioned sharpness (docs/engine.md, docs/models.md).
        groups: scale-invariance groups of the flat parameters (for the recorded group norms
            and a multi-group spherical sharpness); default the ``ModelLoss``'s or
            ``FlatLoss``'s groups, else one group.
        chunk_steps, callback: as :func:`theory.gd_wd`.
        warn_above_edge: with a tracker and ``lr``, warn (:class:`theory.AboveEdgeWarning`) when
            the first row's ``lr * lambda_1`` is already ``>= 2`` (as :func:`theory.gd_wd`).

    Returns:
        :class:`theory.GDResult` (``w`` the flattened parameters per row, ``observed``,
        ``final_state`` the optimizer state after the run).
    """
    if steps is None:
        raise ValueError("run_optimizer needs steps= (the number of steps)")
    steps = check.positive_int(steps, "steps")
    if not isinstance(loss_args, tuple):
        raise TypeError(f"loss_args must be a tuple, got {type(loss_args).__name__}")
    if isinstance(loss_fn, (ModelLoss, FlatLoss)):
        kind = type(loss_fn).__name__
        if loss_args:
            raise ValueError(f"loss_args must be empty with a {kind} (its data are inside)")
        if groups is None:
            groups = loss_fn.groups
        if isinstance(loss_fn, ModelLoss):
            params0 = loss_fn.params if params0 is None else params0
            loss_fn = loss_fn.pytree_loss
        else:
            params0 = loss_fn.w0 if params0 is None else params0
            loss_fn = loss_fn.loss
    elif params0 is None:
        raise ValueError(
            "run_optimizer needs params0 (the initial parameter pytree) unless loss_fn is a "
            "ModelLoss or FlatLoss"
        )
    method, w0 = optax_method(opt, params0, loss_args=loss_args, lr=lr)
    engine_method: AbstractMethod = method if state0 is None else _WithState(method, state0)
    tracker, saveat = check_parts(engine_method, tracker, saveat)
    if steps % saveat.every:
        raise ValueError(f"steps ({steps}) must be a multiple of SaveAt.every ({saveat.every})")
    if tracker.every > 0 and lr is None:
        raise ValueError(
            "a sharpness tracker needs lr= (the scale of the EoS quantity lr * lambda_1(H), "
            "GD's stability number; under an adaptive optimizer such as Adam it is not the "
            "step's stability, which the preconditioned sharpness governs: docs/models.md)"
        )
    sizes = as_groups(groups, int(w0.shape[0]))
    loss = _PytreeLoss(loss_fn, method.unravel, loss_args)
    if saveat.observe is not None:
        observe = _PytreeObserve(saveat.observe, method.unravel, loss_args)
        saveat = SaveAt(every=saveat.every, iterates=saveat.iterates, observe=observe)
    result = engine_run(
        FullBatch(loss),
        engine_method,
        w0,
        steps=steps,
        groups=sizes,
        tracker=tracker,
        saveat=saveat,
        chunk_steps=chunk_steps,
        progress=callback,
        on_nonfinite="stop",
        config={"method": "optax", "lr": lr},
    )
    if warn_above_edge and lr is not None:
        warn_if_above_edge(result.eos[None], result.step, np.asarray([float(lr)]))
    return result


class _WithState(AbstractMethod):
    """An engine method whose initial state is given (``state0``) instead of ``init(w)``."""

    base: Optax
    state0: Any

    @property
    def lr(self) -> Array:
        return self.base.lr

    def init(self, w: Array) -> Any:
        del w
        return self.state0

    def update(self, w: Array, grad: Array, state: Any, t: Array, key: Array) -> tuple[Array, Any]:
        return self.base.update(w, grad, state, t, key)

    def weight_decay(self) -> Array:
        return self.base.weight_decay()
