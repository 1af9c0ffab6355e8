"""The compiled core of the engine: one step, recorded blocks, chunks (single and batched).

A run is a ``lax.scan`` over recorded blocks inside ``jit``: a block records the row of its
first step and runs ``every`` steps in all (``SaveAt.every``); the host driver
(:mod:`theory.engine.driver`) calls one compiled chunk of blocks after another, so that long
runs report progress, write checkpoints and stop on divergence between chunks.

One step at ``w_t`` (:func:`step`): the tracker evaluates the loss and gradient (and, on tracked
steps, the curvature) at ``w_t``; the method maps ``(w_t, grad)`` to ``w_{t+1}``; the step
counter, the EoS onset (first tracked step with ``lr lambda_1 >= 2``) and the divergence step
(first non-finite iterate; the run then freezes) are updated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from theory.core.invariance import group_norms
from theory.core.objective import Objective, step_objective
from theory.core.types import Array, Groups
from theory.engine.methods import AbstractMethod
from theory.engine.trackers import AbstractTracker, Obs, StepContext


class SaveAt(eqx.Module):
    """What the engine records, and how often (in the spirit of diffrax's ``SaveAt``).

    Attributes:
        every: one row every this many steps, plus the final step (row 0 is step 0).
        iterates: store ``w`` on every row (``False`` for large ``D``).
        observe: optional ``observe(w) -> dict`` of arrays recorded on every row (e.g. test
            accuracy); a pytree callable whose data are leaves.
    """

    every: int = eqx.field(static=True, default=1)
    iterates: bool = eqx.field(static=True, default=True)
    observe: Callable[[Array], dict[str, Array]] | None = None

    def __check_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"SaveAt.every must be a positive int, got {self.every!r}")
        if not isinstance(self.iterates, bool):
            raise TypeError(f"SaveAt.iterates must be a bool, got {self.iterates!r}")
        if self.observe is not None and not callable(self.observe):
            raise TypeError(f"SaveAt.observe must be callable or None, got {self.observe!r}")


class State(NamedTuple):
    """The engine's state between steps (a pytree; everything needed to continue bitwise)."""

    w: Array
    method: Any  # the method's state (optax state, or ())
    tracker: Any  # the tracker's own state (e.g. its warm starts)
    t: Array  # step counter (shared by every configuration of a sweep)
    onset: Array  # first tracked step with eos >= 2, or -1
    bad: Array  # first step with a non-finite iterate, or -1
    key: Array


class Row(NamedTuple):
    step: Array
    w: Array
    group_norms: Array
    loss: Array
    grad_norm: Array
    sharpness: Array
    eos: Array
    matvecs: Array
    residual: Array
    block_matvecs: Array  # HVPs spent by all steps of the row's block
    observed: dict[str, Array]


class Program(eqx.Module):
    """What a run shares with every configuration of a sweep: objective, tracker, recorder.

    (The method, whose hyperparameters a sweep batches, is passed beside it.)
    """

    objective: Objective
    tracker: AbstractTracker
    saveat: SaveAt
    groups: Groups = eqx.field(static=True)


def step(
    prog: Program, method: AbstractMethod, s: State, record: bool, force: Array | bool = False
) -> tuple[State, Obs]:
    """One step from ``s`` (frozen once the run has diverged). ``record`` (static): the step's
    row is stored (a multi-group tracker solves the spherical sharpness only then); ``force``:
    track this step whatever the tracker's period says (the final row)."""
    every = prog.tracker.every
    tracked = force | ((s.t % every) == 0) if every > 0 else jnp.asarray(force)
    ctx = StepContext(prog.objective, method, s.method)
    objective = step_objective(prog.objective, s.t, s.key)
    obs, tstate = prog.tracker.observe(
        objective, s.w, method.lr, prog.groups, s.tracker, s.t, s.key, tracked, record, ctx
    )
    w_new, mstate = method.update(s.w, obs.grad, s.method, s.t, s.key)
    finite = jnp.all(jnp.isfinite(w_new)) & jnp.isfinite(obs.loss)
    ok = s.bad < 0
    keep = ok & finite
    onset = jnp.where(ok & tracked & (obs.eos >= 2) & (s.onset < 0), s.t, s.onset)
    bad = jnp.where(ok & ~finite, s.t + jnp.where(jnp.isfinite(obs.loss), 1, 0), s.bad)
    mstate = jax.tree.map(lambda a, b: jnp.where(keep, a, b), mstate, s.method)
    w_next = jnp.where(keep, w_new, s.w)
    return State(w_next, mstate, tstate, s.t + 1, onset, bad, s.key), obs


def _row(prog: Program, s: State, obs: Obs, block_matvecs: Array) -> Row:
    w = s.w if prog.saveat.iterates else jnp.zeros((0,), s.w.dtype)
    observed = {} if prog.saveat.observe is None else dict(prog.saveat.observe(s.w))
    extra = obs.extra or {}
    clash = sorted(set(extra) & set(observed))
    if clash:
        raise ValueError(
            f"the tracker records {clash} and SaveAt.observe returns the same names: rename "
            "the observed arrays (both are stored in result.observed)"
        )
    observed.update(extra)
    return Row(
        s.t,
        w,
        group_norms(s.w, prog.groups),
        obs.loss,
        jnp.linalg.norm(obs.grad),
        obs.sharpness,
        obs.eos,
        obs.matvecs,
        obs.residual,
        jnp.asarray(block_matvecs, jnp.int32),
        observed,
    )


def chunk(
    prog: Program,
    method: AbstractMethod,
    s: State,
    n_blocks: int,
    active: Array,
    last: Array,
    final: Array,
) -> tuple[State, Row]:
    """``active`` of ``n_blocks`` recorded blocks, the last of them ``last`` steps long.

    Blocks past ``active`` pad the last chunk to the compiled length and are discarded.
    ``final`` (with ``active = last = 1``) makes the one block the run's final row: tracked
    whatever the period says; the caller keeps only its row and the tracker's warm starts
    (:func:`final_row`), so the final row reuses the chunk's compiled program.
    """
    every = prog.saveat.every

    def quiet(_: Any, sn: tuple[State, Array]) -> tuple[State, Array]:
        # No branch on "has this run diverged?": under vmap a per-configuration predicate
        # turns a cond into a select that batches everything inside it, the step counter
        # included, and every later "track this step?" would become a select too (running the
        # tracker on every step). A diverged run is frozen by ``step`` itself.
        s, n = sn
        ok = s.bad < 0
        s, obs = step(prog, method, s, record=False)
        return s, n + jnp.where(ok, obs.matvecs, 0)

    def block(s: State, i: Array) -> tuple[State, Row]:
        def run(s: State) -> tuple[State, Row]:
            s_next, obs = step(prog, method, s, record=True, force=final)
            length = jnp.where(i == active - 1, last, every)
            s_next, spent = jax.lax.fori_loop(1, length, quiet, (s_next, obs.matvecs))
            return s_next, _row(prog, s, obs, spent)

        def skip(s: State) -> tuple[State, Row]:
            # A padding block: zeros of the recorded row's structure (the tracker's extras
            # included), with the step counter.
            shapes = jax.eval_shape(run, s)[1]
            row = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
            return s, row._replace(step=s.t)

        return jax.lax.cond(i < active, run, skip, s)

    return jax.lax.scan(block, s, jnp.arange(n_blocks))


chunk_jit = eqx.filter_jit(chunk)


def final_row(
    run_chunk: Callable[..., tuple[State, Row]],
    prog: Program,
    method: AbstractMethod,
    s: State,
    n_blocks: int,
) -> tuple[State, Row]:
    """The final row at ``s`` (no step): one forced-tracked block of the compiled chunk, whose
    rows the caller cuts to the first block. Of the stepped state only the tracker's warm
    starts are kept."""
    one = jnp.asarray(1)
    stepped, rows = run_chunk(prog, method, s, n_blocks, one, one, jnp.asarray(True))
    return s._replace(tracker=stepped.tracker), rows


# --------------------------------------------------------------------------------------------
# Batched: many configurations, one program per device
# --------------------------------------------------------------------------------------------

# The step counter is shared by every configuration (they step in lockstep), so it stays
# unbatched: "track this step?" and "kick this step?" are scalar predicates and their
# ``lax.cond`` remain real branches under vmap instead of selects that would run both sides.
_STATE_AXES = State(0, 0, 0, None, 0, 0, 0)  # type: ignore[arg-type]


def _batched_chunk(
    prog: Program,
    method: AbstractMethod,
    s: State,
    n_blocks: int,
    active: Array,
    last: Array,
    final: Array,
) -> tuple[State, Row]:
    """``chunk`` vmapped over configurations: the method's array leaves and the state carry a
    leading configuration axis; the program (objective, tracker, recorder) is shared."""

    def one(method: Any, s: State) -> tuple[State, Row]:
        return chunk(prog, method, s, n_blocks, active, last, final)

    return jax.vmap(one, in_axes=(0, _STATE_AXES), out_axes=0)(method, s)


@functools.cache
def sharded_chunk(mesh: jax.sharding.Mesh) -> Callable[..., tuple[State, Row]]:
    """A compiled batched chunk whose configuration axis is split over ``mesh``'s one axis with
    ``shard_map``: every device runs its own program (its own while-loop trip counts) on its
    configurations, vmapped; nothing is communicated between devices."""
    from jax.sharding import PartitionSpec as P

    batch = P(mesh.axis_names[0])

    @eqx.filter_jit
    def run(
        prog: Program,
        method: Any,
        s: State,
        n_blocks: int,
        active: Array,
        last: Array,
        final: Array,
    ) -> tuple[State, Row]:
        p_dyn, p_static = eqx.partition(prog, eqx.is_array)
        m_dyn, m_static = eqx.partition(method, eqx.is_array)

        def local(
            p_dyn: Any, m_dyn: Any, s: State, t: Array, active: Array, last: Array, final: Array
        ) -> tuple[State, Row]:
            prog = eqx.combine(p_dyn, p_static)
            method = eqx.combine(m_dyn, m_static)
            out, rows = _batched_chunk(prog, method, s._replace(t=t), n_blocks, active, last, final)
            return out, rows  # the counter: one (equal) copy per configuration

        fn = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(), batch, batch, P(), P(), P(), P()),
            out_specs=(batch, batch),
            check_vma=False,
        )
        out, rows = fn(p_dyn, m_dyn, s._replace(t=None), s.t, active, last, final)  # type: ignore[arg-type]
        return out._replace(t=out.t[0]), rows

    return run
