"""Base optimizers as optax transformations (GD+WD, SAM) and a compiled driver for any of them.

These are the bases that :func:`theory.ire.ire` wraps. All take the extra argument ``loss_args``
(a tuple passed as ``loss_fn(params, *loss_args)``) where they need the loss, so they compose with
``optax.chain`` and IRE.

* :func:`gd_wd_transform`: ``u = -eta (g + wd w)``, the update of MATH.md section 2.
* :func:`sam`: replaces the gradient by the gradient at a perturbed point (Foret et al. 2021):
  ``standard`` ``w + rho g/|g|``; ``average`` ``w + rho xi``, ``xi`` uniform on the unit sphere
  (the "average-direction" SAM of Wen, Ma, Li 2023 analysed in the IRE paper).
* :func:`run_optimizer`: a whole run in one ``lax.scan``, recording every ``record_every`` steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from . import _validate as check

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


class OptRun(NamedTuple):
    """A recorded run of :func:`run_optimizer` (rows: step 0, ``record_every``, ..., ``steps``).

    Attributes:
        steps: ``(n,)`` step index of each row.
        params: ``(n, D)`` flattened parameters.
        loss: ``(n,)`` loss at the row's parameters.
        observed: dict of ``(n, ...)`` arrays from ``observe``.
        diverged_at: first step whose update was non-finite (``-1``: none); the parameters are
            frozen from then on.
        final_state: the optimizer state after the run.
    """

    steps: np.ndarray
    params: np.ndarray
    loss: np.ndarray
    observed: dict[str, np.ndarray]
    diverged_at: int
    final_state: Any


@eqx.filter_jit
def _run_core(
    opt: optax.GradientTransformationExtraArgs,
    loss_fn: LossFn,
    params: PyTree,
    loss_args: tuple,
    observe: Callable[..., dict[str, Array]] | None,
    n_rows: int,
    every: Array,
    state: Any,
) -> Any:
    def row(p: PyTree) -> tuple[Array, Array, dict[str, Array]]:
        obs = {} if observe is None else observe(p, *loss_args)
        return ravel_pytree(p)[0], loss_fn(p, *loss_args), obs

    def step(carry: tuple, _: Any) -> tuple[tuple, None]:
        p, s, t, bad = carry
        grads = jax.grad(loss_fn)(p, *loss_args)
        u, s_new = opt.update(grads, s, p, loss_args=loss_args)
        p_new = optax.apply_updates(p, u)
        finite = jnp.all(jnp.isfinite(ravel_pytree(p_new)[0]))
        ok = bad < 0
        keep = ok & finite
        p = jax.tree.map(lambda a, b: jnp.where(keep, a, b), p_new, p)
        s = jax.tree.map(lambda a, b: jnp.where(keep, a, b), s_new, s)
        bad = jnp.where(ok & ~finite, t, bad)
        return (p, s, t + 1, bad), None

    def block(carry: tuple, _: Any) -> tuple[tuple, tuple]:
        carry = jax.lax.fori_loop(0, every, lambda i, c: step(c, None)[0], carry)
        return carry, row(carry[0])

    carry0 = (params, state, jnp.zeros((), jnp.int32), -jnp.ones((), jnp.int32))
    first = row(params)
    carry, rows = jax.lax.scan(block, carry0, None, length=n_rows)
    stacked = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rows)
    return stacked, carry[1], carry[3]


def run_optimizer(
    opt: optax.GradientTransformation,
    loss_fn: LossFn,
    params0: PyTree,
    steps: int,
    *,
    loss_args: tuple = (),
    record_every: int = 1,
    observe: Callable[..., dict[str, Array]] | None = None,
    state0: Any = None,
) -> OptRun:
    """Run ``steps`` full-batch steps of ``opt`` on ``loss_fn`` in one compiled ``lax.scan``.

    Each step: ``g = grad loss_fn(p, *loss_args)``, ``u = opt.update(g, s, p,
    loss_args=loss_args)``, ``p += u``. A non-finite update stops the run (parameters frozen,
    ``diverged_at`` set) instead of raising, so a divergence can be shown.

    Args:
        opt: the optimizer (``loss_args`` is passed to its update as an extra argument).
        loss_fn: ``loss_fn(params, *loss_args) -> scalar``.
        params0: initial parameters (pytree).
        steps: number of steps, a multiple of ``record_every``.
        loss_args: data passed to the loss (arguments, not closed over).
        record_every: rows every this many steps.
        observe: ``observe(params, *loss_args) -> dict`` of arrays recorded on each row.
        state0: initial optimizer state (default ``opt.init(params0)``), e.g. with other
            hyperparameters set under ``optax.inject_hyperparams``.

    Compiled once per ``(opt, loss_fn, observe, number of rows)``: runs that differ only in
    arrays (parameters, ``loss_args``, ``state0``, ``record_every``) reuse the program.
    """
    steps = check.positive_int(steps, "steps")
    every = check.positive_int(record_every, "record_every")
    if steps % every:
        raise ValueError(f"steps ({steps}) must be a multiple of record_every ({every})")
    if not isinstance(loss_args, tuple):
        raise TypeError(f"loss_args must be a tuple, got {type(loss_args).__name__}")
    opt = optax.with_extra_args_support(opt)
    state0 = opt.init(params0) if state0 is None else state0
    (flat, loss, obs), state, bad = _run_core(
        opt, loss_fn, params0, loss_args, observe, steps // every, jnp.asarray(every), state0
    )
    return OptRun(
        steps=np.arange(0, steps + 1, every),
        params=np.asarray(flat),
        loss=np.asarray(loss),
        observed={k: np.asarray(v) for k, v in obs.items()},
        diverged_at=int(bad),
        final_state=state,
    )
