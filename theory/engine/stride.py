"""Tracking on a coarser grid of steps after a dense start: :class:`RowStrideTracker`.

A run that is classified from its recorded rows (the regime map, ``sims/studies/regime_map.py``)
needs the EoS quantity at full row resolution only until its onset; afterwards its means over
many rows are what is read. :class:`RowStrideTracker` wraps a tracker and lets it solve on its
own steps before ``dense_steps`` and only on every ``period``-th step after them; on every other
step it passes ``tracked = False`` to the wrapped tracker, which then takes one
``value_and_grad`` and reports NaN (the engine's protocol for untracked steps).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from theory.core.objective import Objective
from theory.core.types import Array, Groups
from theory.engine.trackers import AbstractTracker, NoTracking, Obs, StepContext


def _int_at_least(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"RowStrideTracker.{name} must be an int >= {low}, got {value!r}")
    return value


class RowStrideTracker(AbstractTracker):
    """``inner``'s solve on its own tracked steps (``t % inner.every == 0``) before
    ``dense_steps``, and from then on on the steps with ``t % period == 0`` only.

    On a step where ``inner`` would track but the stride skips it, ``inner.observe`` runs with
    ``tracked = False``: a plain ``value_and_grad``, ``eos`` and ``sharpness`` NaN, no HVPs, the
    state (warm starts) unchanged. So the solved steps are exactly

        ``t % inner.every == 0  and  (t < dense_steps  or  t % period == 0)``

    among the steps the driver tracks (it also forces the final row of a run to be tracked: that
    row is solved only if it satisfies the same predicate). The predicate depends on the step
    counter only, which every configuration of a batched sweep shares, so under ``vmap`` it
    stays a real branch (the solve is skipped, not computed and discarded). Warm starts carry
    over from the last solved step: with :class:`theory.engine.LanczosTracker`'s parity warm
    start, a solve after the dense start reads the solve ``2 period`` steps back, of the same
    parity when ``period`` is odd.

    Attributes:
        inner: the wrapped tracker (any :class:`AbstractTracker` that tracks, ``every >= 1``).
        period: the solving period after the dense start, a multiple of ``inner.every``.
        dense_steps: steps ``t < dense_steps`` are solved at ``inner``'s own period (0: none).
        every: ``inner.every`` (the driver's tracking period; it must divide the recording
            period).
    """

    inner: AbstractTracker
    period: int = eqx.field(static=True)
    dense_steps: int = eqx.field(static=True)
    every: int = eqx.field(static=True)

    def __init__(self, inner: AbstractTracker, period: int, dense_steps: int = 0) -> None:
        if not isinstance(inner, AbstractTracker) or isinstance(inner, NoTracking):
            raise TypeError(
                f"RowStrideTracker.inner must be a tracker that solves (an AbstractTracker other "
                f"than NoTracking), got {inner!r}"
            )
        every = _int_at_least(inner.every, "inner.every", 1)
        _int_at_least(period, "period", 1)
        if period % every:
            raise ValueError(
                f"RowStrideTracker.period ({period}) must be a multiple of the inner tracker's "
                f"every ({every})"
            )
        _int_at_least(dense_steps, "dense_steps", 0)
        self.inner = inner
        self.period = period
        self.dense_steps = dense_steps
        self.every = every

    def solves(self, t: Array) -> Array:
        """Whether step ``t`` is solved when the driver tracks it (the predicate above)."""
        return (t % self.every == 0) & ((t % self.period == 0) | (t < self.dense_steps))

    def init(self, objective: Objective, w: Array, lr: Array, groups: Groups, key: Array) -> Any:
        return self.inner.init(objective, w, lr, groups, key)

    def observe(
        self,
        objective: Objective,
        w: Array,
        lr: Array,
        groups: Groups,
        state: Any,
        t: Array,
        key: Array,
        tracked: Array,
        record: bool,
        ctx: StepContext,
    ) -> tuple[Obs, Any]:
        solve = jnp.logical_and(tracked, self.solves(t))
        return self.inner.observe(objective, w, lr, groups, state, t, key, solve, record, ctx)

    def top_vector(self, state: Any, w: jax.Array) -> jax.Array:
        return self.inner.top_vector(state, w)

    def for_batch(self) -> RowStrideTracker:
        return RowStrideTracker(self.inner.for_batch(), self.period, self.dense_steps)

    def config(self) -> dict[str, Any]:
        return {
            **self.inner.config(),
            "solve_period": self.period,
            "dense_steps": self.dense_steps,
        }
