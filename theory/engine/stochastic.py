"""Trackers for minibatch training: full-batch, batch and step sharpness, and the angular update.

Under minibatch training (:class:`theory.core.minibatch.Minibatch`,
:func:`theory.engine.sgd.sgd_wd`) the step's objective is the loss ``L_B`` of the step's
batch ``B`` (its gradient ``g_B`` drives the update) and ``StepContext.full`` is the whole
data's loss ``L``. :class:`StochasticTracker` computes ``L_B(w)`` and ``g_B`` itself (it is
complete on its own: no other tracker is needed) and, on tracked steps, any of

* the **full-batch sharpness** ``lambda_1(hess L(w))`` (``full``): Lanczos on ``lr hess L(w)``
  warm-started from the previous tracked step's eigenvector (a cold, accurate solve at the
  start), recorded as the row's ``eos = lr lambda_1`` and as the extra ``full_sharpness``; with
  one group also the spherical sharpness ``eos |w|^2 / lr`` (``sharpness``; NaN with several
  groups);
* the **batch sharpness** (Andreyev & Beneventano, "Edge of Stochastic Stability", arXiv
  2412.20553): ``E_B[g_B^T H_B g_B / |g_B|^2]``, the expectation over batches of the Rayleigh
  quotient of the batch Hessian ``H_B = hess L_B(w)`` along the batch's own gradient (``batch``).
  Each tracked step records its own batch's quotient (extra ``batch_sharpness``); the mean over
  rows estimates the expectation. Cost: one HVP on the batch objective, sharing the primal pass
  of the gradient (``linearize``: the HVP's direction ``g_B`` is known only after that pass, so
  the one-pass ``value_grad_hvp(w, v)``, which needs ``v`` first, cannot be used);
* the **step sharpness** (``step``): the Rayleigh quotient of the FULL Hessian along the step's
  batch gradient, ``g_B^T H g_B / |g_B|^2`` (extra ``step_sharpness``), and along the executed
  update ``u = w_{t+1} - w_t`` (with momentum and weight decay; extra ``update_sharpness``): two
  HVPs of the whole objective. The paper's v5 text available here defines batch sharpness only;
  these two are our definitions of "the curvature the step actually sees".

Every step (tracked or not, it is free) also records the executed angular update
``angle(w_t, w_{t+1})`` of the whole vector and of each group (extras ``angle``, ``group_angle``)
and the per-group norms of the batch gradient (``group_grad_norm``),
and, on each recorded row, the mean of ``1 - cos angle(w_s, w_{s+1})`` over every step ``s`` of
the block of steps since the previous row (``block_one_minus_cos``, per group
``block_group_one_minus_cos``; NaN on row 0): rows every ``k`` steps sample one parity only
when ``k`` is even, which at the Edge of Stability (period-2 oscillation) biases the sampled
angles; the block means count every step. These quantities are computed
from the method's own update applied to ``g_B`` (``StepContext.method`` and ``method_state``),
by the formula ``2 atan2(|a - b|, |a + b|)`` for the unit vectors ``a, b`` (accurate for small
angles, unlike ``arccos``). Untracked steps record NaN in the curvature extras.

In the engine's units the quantities to compare with the stability edge are ``lr`` times them:
on a scale-invariant loss ``hess L(w) = hess L(w_hat) / |w|^2`` (per group), so
``eta * lambda(w)`` is the effective-learning-rate quantity ``eta_eff * lambda(w_hat)`` and the
edge is :func:`theory.engine.sgd.sgd_edge` times ``eta``: ``2 (1 + beta) - eta wd``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.core import validate as check
from theory.core.lanczos import default_tol, lanczos
from theory.core.objective import Objective
from theory.core.types import Array, Groups
from theory.engine.trackers import AbstractTracker, Obs, StepContext

_EVERY_STEP = (
    "angle",
    "group_angle",
    "group_grad_norm",
    "block_one_minus_cos",
    "block_group_one_minus_cos",
)


class StochasticState(NamedTuple):
    """The warm start of the full-batch Lanczos solve (the last top eigenvector, unit norm) and
    the running sums of ``1 - cos angle(w_t, w_{t+1})`` since the last recorded row (whole
    vector first, then each group) with their count."""

    v: Array
    acc: Array  # (1 + G,)
    summed: Array  # steps summed in acc


def _rayleigh(hvp: Any, v: Array) -> Array:
    """``v^T A v / |v|^2`` (NaN for ``v = 0``)."""
    vv = jnp.vdot(v, v)
    return jnp.where(vv > 0, jnp.vdot(v, hvp(v)) / jnp.where(vv > 0, vv, 1), jnp.nan)


def _angle(a: Array, b: Array) -> Array:
    """``angle(a, b)`` in radians by ``2 atan2(|a^ - b^|, |a^ + b^|)`` (unit vectors)."""
    a = a / jnp.linalg.norm(a)
    b = b / jnp.linalg.norm(b)
    return 2 * jnp.arctan2(jnp.linalg.norm(a - b), jnp.linalg.norm(a + b))


def group_angles(w: Array, w_next: Array, groups: Groups) -> Array:
    """``(G,)`` angles between ``w_g`` and ``w_next_g`` for each contiguous group ``g``."""
    ids = jnp.asarray(np.repeat(np.arange(len(groups)), groups))
    k = len(groups)

    def seg(x: Array) -> Array:
        return jax.ops.segment_sum(x, ids, k)

    na = jnp.sqrt(seg(w * w))[ids]
    nb = jnp.sqrt(seg(w_next * w_next))[ids]
    a, b = w / na, w_next / nb
    return 2 * jnp.arctan2(jnp.sqrt(seg((a - b) ** 2)), jnp.sqrt(seg((a + b) ** 2)))


class StochasticTracker(AbstractTracker):
    """Full-batch, batch and step sharpness under minibatch training (module docstring).

    Attributes:
        every: tracking period in steps (>= 1).
        full: solve ``lambda_1`` of the whole objective's Hessian (warm-started Lanczos).
        batch: the batch sharpness ``g_B^T H_B g_B / |g_B|^2`` (one batch HVP).
        step: the full Hessian's Rayleigh quotients along ``g_B`` and the executed update.
        tol: relative Ritz residual of the full solve (``None``: ``3 sqrt(eps)``).
        max_iters: HVP cap per warm-started full solve.
        init_iters: Krylov cap of the cold solve at the start.
    """

    every: int = eqx.field(static=True, default=1)
    full: bool = eqx.field(static=True, default=True)
    batch: bool = eqx.field(static=True, default=True)
    step: bool = eqx.field(static=True, default=True)
    tol: float | None = eqx.field(static=True, default=None)
    max_iters: int = eqx.field(static=True, default=24)
    init_iters: int = eqx.field(static=True, default=64)

    def __check_init__(self) -> None:
        for name in ("every", "max_iters", "init_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{type(self).__name__}.{name} must be a positive int, got {value!r}"
                )
        for name in ("full", "batch", "step"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"{type(self).__name__}.{name} must be a bool, got {getattr(self, name)!r}"
                )
        if self.tol is not None:
            check.positive(self.tol, f"{type(self).__name__}.tol")

    def _tol(self, dtype: Any) -> Array:
        return jnp.asarray(default_tol(dtype) if self.tol is None else self.tol, dtype)

    def extra_names(self) -> tuple[str, ...]:
        """The names this tracker records in ``result.observed``."""
        names = list(_EVERY_STEP)
        if self.full or self.step:
            names += ["full_loss", "full_grad_norm"]
        if self.full:
            names.append("full_sharpness")
        if self.batch:
            names.append("batch_sharpness")
        if self.step:
            names += ["step_sharpness", "update_sharpness"]
        return tuple(names)

    def init(
        self, objective: Objective, w: Array, lr: Array, groups: Groups, key: Array
    ) -> StochasticState:
        """A cold, accurate Lanczos solve of the whole objective at ``w`` (when ``full``)."""
        acc = jnp.zeros((1 + len(groups),), w.dtype)
        summed = jnp.zeros((), w.dtype)
        if not self.full:
            return StochasticState(jnp.zeros_like(w), acc, summed)
        _, hvp = objective.linearize(w)
        v0 = jax.random.normal(jax.random.fold_in(key, 1), w.shape, w.dtype)
        m = min(w.shape[0], self.init_iters)
        res = lanczos(lambda x: lr * hvp(x), v0, max_iters=m, tol=self._tol(w.dtype))
        return StochasticState(res.eigenvectors[:, 0], acc, summed)

    def observe(
        self,
        objective: Objective,
        w: Array,
        lr: Array,
        groups: Groups,
        state: StochasticState,
        t: Array,
        key: Array,
        tracked: Array,
        record: bool,
        ctx: StepContext,
    ) -> tuple[Obs, StochasticState]:
        nan = jnp.asarray(jnp.nan, w.dtype)

        def update_of(g: Array) -> Array:
            return ctx.method.update(w, g, ctx.method_state, t, key)[0]

        def solve(state: StochasticState) -> tuple[Obs, dict[str, Array], StochasticState]:
            extra: dict[str, Array] = {}
            matvecs = jnp.asarray(0, jnp.int32)
            if self.batch:
                (val, g), hvp_b = objective.linearize(w)
                extra["batch_sharpness"] = _rayleigh(hvp_b, g)
                matvecs = matvecs + 1
            else:
                val, g = objective.value_and_grad(w)
            eos, sharp, resid, v = nan, nan, nan, state.v
            if self.full or self.step:
                (fval, fgrad), hvp = ctx.full.linearize(w)
                extra["full_loss"] = fval
                extra["full_grad_norm"] = jnp.linalg.norm(fgrad)
            if self.full:
                res = lanczos(
                    lambda x: lr * hvp(x),
                    state.v,
                    max_iters=min(self.max_iters, w.shape[0]),
                    tol=self._tol(w.dtype),
                )
                eos, v = res.eigenvalues[0], res.eigenvectors[:, 0]
                resid = res.residuals[0] / jnp.abs(eos)
                matvecs = matvecs + jnp.asarray(res.num_matvecs, jnp.int32)
                extra["full_sharpness"] = eos / lr
                if len(groups) == 1:
                    sharp = eos * jnp.vdot(w, w) / lr
            if self.step:
                extra["step_sharpness"] = _rayleigh(hvp, g)
                extra["update_sharpness"] = _rayleigh(hvp, update_of(g) - w)
                matvecs = matvecs + 2
            obs = Obs(val, g, eos, sharp, matvecs, resid)
            return obs, extra, state._replace(v=v)

        def skip(state: StochasticState) -> tuple[Obs, dict[str, Array], StochasticState]:
            val, g = objective.value_and_grad(w)
            names = [n for n in self.extra_names() if n not in _EVERY_STEP]
            extra = {n: nan for n in names}
            return Obs(val, g, nan, nan, jnp.asarray(0, jnp.int32), nan), extra, state

        obs, extra, state = jax.lax.cond(tracked, solve, skip, state)
        w_next = update_of(obs.grad)
        extra["angle"] = _angle(w, w_next)
        extra["group_angle"] = group_angles(w, w_next, groups)
        ids = jnp.asarray(np.repeat(np.arange(len(groups)), groups))
        extra["group_grad_norm"] = jnp.sqrt(jax.ops.segment_sum(obs.grad**2, ids, len(groups)))
        # 1 - cos = 2 sin^2(angle / 2), summed over every step of a recorded block.
        angles = jnp.concatenate([extra["angle"][None], extra["group_angle"]])
        one_minus = 2 * jnp.sin(angles / 2) ** 2
        if record:  # this row reports the block that ends here; a new block starts
            block = state.acc / jnp.where(state.summed > 0, state.summed, jnp.nan)
            state = state._replace(acc=one_minus, summed=jnp.ones_like(state.summed))
        else:
            block = jnp.full_like(one_minus, jnp.nan)
            state = state._replace(acc=state.acc + one_minus, summed=state.summed + 1)
        extra["block_one_minus_cos"] = block[0]
        extra["block_group_one_minus_cos"] = block[1:]
        return obs._replace(extra=extra), state

    def top_vector(self, state: StochasticState, w: Array) -> Array:
        del w
        return state.v

    def config(self) -> dict[str, Any]:
        return {
            "tracker": "stochastic",
            "sharpness_every": self.every,
            "full_sharpness": self.full,
            "batch_sharpness": self.batch,
            "step_sharpness": self.step,
            **(
                {
                    "lanczos_tol": self.tol,
                    "lanczos_iters": self.max_iters,
                    "init_iters": self.init_iters,
                }
                if self.full
                else {}
            ),
        }


def full_batch_sharpness(every: int = 1, **kwargs: Any) -> StochasticTracker:
    """:class:`StochasticTracker` recording only the full-batch sharpness (and the angles)."""
    return StochasticTracker(every=every, full=True, batch=False, step=False, **kwargs)


def batch_sharpness(every: int = 1) -> StochasticTracker:
    """:class:`StochasticTracker` recording only the batch sharpness (no full-data pass)."""
    return StochasticTracker(every=every, full=False, batch=True, step=False)


def step_sharpness(every: int = 1) -> StochasticTracker:
    """:class:`StochasticTracker` recording only the step sharpness (two full-data HVPs)."""
    return StochasticTracker(every=every, full=False, batch=False, step=True)
