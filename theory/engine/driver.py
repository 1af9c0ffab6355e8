"""The host driver: compiled chunks one after another, with progress, checkpoints and
non-finite handling as hooks, for one run or a batch of configurations over devices.

:func:`run` (behind :func:`theory.gd_wd` and :func:`theory.run_optimizer`) and :func:`run_batch`
(behind :func:`theory.gd_wd_sweep`) share one chunk loop (:func:`_drive`) and one result
assembly (:func:`theory.engine.results.assemble`); they differ only in the compiled chunk (one
configuration under ``jit``, or many vmapped under ``shard_map``) and in how arrays move
between host and devices.

Hooks (all optional): ``progress(steps_done, steps)`` after each chunk; ``on_snapshot(snap)``
with a :class:`GDSnapshot` after each chunk (write it to disk to survive a crash); ``resume``: a
snapshot of the same run to continue from, bitwise identical to an uninterrupted run;
``on_nonfinite``: ``"raise"`` a :class:`DivergenceError` carrying the rows before the first
non-finite iterate, or ``"stop"`` and return them. A batch stops once every configuration has
diverged (a diverged configuration freezes; its rows from then on are NaN) and raises if any
has, with ``"raise"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from theory.core import validate as check
from theory.core.objective import Objective
from theory.core.types import Array, Groups
from theory.engine.core import Program, Row, SaveAt, State, chunk_jit, final_row, sharded_chunk
from theory.engine.methods import AbstractMethod
from theory.engine.results import DivergenceError, GDResult, GDSnapshot, SweepResult, assemble
from theory.engine.trackers import AbstractTracker, NoTracking


def check_same_everywhere(what: str, *args: Any) -> None:
    """Under ``jax.distributed`` (several processes), require every process to pass the same
    arguments: a fixed-size digest of their host values is compared across processes (one
    small all-gather), so that processes disagreeing even on shapes get a ``ValueError`` naming
    the problem instead of a silently mixed grid or a collective that aborts."""
    if jax.process_count() == 1:
        return
    import hashlib

    from jax.experimental import multihost_utils

    h = hashlib.sha256()
    for a in jax.tree.leaves(args):
        arr = np.ascontiguousarray(np.asarray(a))
        h.update(repr((arr.shape, arr.dtype.str)).encode())
        h.update(arr.tobytes())
    digest = np.frombuffer(h.digest(), np.uint8)
    try:
        multihost_utils.assert_equal(digest, f"{what} differ across processes")
    except AssertionError as err:
        raise ValueError(
            f"{what} differ across processes (process {jax.process_index()} of "
            f"{jax.process_count()}): every process must pass the same arguments"
        ) from err


def _blocks(steps: int, every: int, chunk_steps: int) -> tuple[int, int, int]:
    """``(recorded blocks before the final row, length of the last block, blocks per chunk)``."""
    n_blocks = -(-steps // every)
    last_len = steps - (n_blocks - 1) * every
    per_chunk = max(1, min(n_blocks, chunk_steps // every))
    return n_blocks, last_len, per_chunk


def check_parts(
    method: Any, tracker: Any, saveat: Any, *, method_name: str = "method"
) -> tuple[AbstractTracker, SaveAt]:
    """``(tracker, saveat)`` with their defaults (:class:`NoTracking`, :class:`SaveAt`), after
    checking that each part is an instance of its base class (a ``TypeError`` naming it)."""
    if not isinstance(method, AbstractMethod):
        raise TypeError(
            f"{method_name} must be a theory.engine.AbstractMethod (e.g. GDWD, Optax), got "
            f"{type(method).__name__}: {method!r}"
        )
    tracker = NoTracking() if tracker is None else tracker
    if not isinstance(tracker, AbstractTracker):
        raise TypeError(
            "tracker must be a theory.engine.AbstractTracker (e.g. LanczosTracker, NoTracking), "
            f"got {type(tracker).__name__}: {tracker!r}"
        )
    saveat = SaveAt() if saveat is None else saveat
    if not isinstance(saveat, SaveAt):
        raise TypeError(f"saveat must be a theory.engine.SaveAt, got {type(saveat).__name__}")
    return tracker, saveat


def _check_schedule(
    tracker: AbstractTracker, saveat: SaveAt, steps: Any, chunk_steps: Any, on_nonfinite: Any
) -> tuple[int, int]:
    steps = check.positive_int(steps, "steps")
    chunk_steps = check.positive_int(chunk_steps, "chunk_steps")
    if tracker.every > 0 and saveat.every % tracker.every:
        raise ValueError(
            f"the tracker's period (every={tracker.every}) must divide SaveAt.every "
            f"({saveat.every}) so that every recorded row carries the sharpness of its own step"
        )
    if on_nonfinite not in ("raise", "stop"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}")
    return steps, chunk_steps


def engine_config(
    tracker: AbstractTracker, saveat: SaveAt, w0: Array, steps: int
) -> dict[str, Any]:
    """The settings that decide a run's arrays (compared on resume)."""
    tc = dict(tracker.config())
    if "lanczos_tol" in tc and tc["lanczos_tol"] is None:
        from theory.core.lanczos import default_tol

        tc["lanczos_tol"] = default_tol(w0.dtype)
    if "lanczos_iters" in tc:
        tc["lanczos_iters"] = min(int(tc["lanczos_iters"]), int(w0.shape[-1]))
    observe = None
    if saveat.observe is not None:  # the recorded names and shapes (compared on resume)
        shapes = jax.eval_shape(saveat.observe, jax.ShapeDtypeStruct(w0.shape[-1:], w0.dtype))
        observe = sorted((k, list(v.shape)) for k, v in dict(shapes).items())
    return {
        **tc,
        "steps": steps,
        "record_every": saveat.every,
        "record_iterates": saveat.iterates,
        "observe": observe,
        "dtype": jnp.dtype(w0.dtype).name,
        "dim": int(w0.shape[-1]),
    }


class _Mode(eqx.Module):
    """How the shared chunk loop talks to one run or to a batch (host side only)."""

    run_chunk: Callable[..., tuple[State, Row]] = eqx.field(static=True)
    batched: bool = eqx.field(static=True)
    sharding: NamedSharding | None = eqx.field(static=True, default=None)

    def host(self, a: Array) -> np.ndarray:
        return gather(a) if self.batched else np.asarray(a)

    def rows(self, seg: Row, k: int) -> Row:
        """The first ``k`` rows of a chunk on the host, with a leading configuration axis."""
        if self.batched:
            return jax.tree.map(lambda a: gather(a)[:, :k], seg)
        return jax.tree.map(lambda a: np.asarray(a[:k])[None], seg)

    def put(self, value: np.ndarray, ref: Any) -> Array:
        """A restored state leaf onto the devices like ``ref``."""
        if isinstance(ref, jax.Array) and ref.weak_type:  # keep Python-scalar counters weakly
            return jnp.asarray(value.item())  # typed, or the resumed run compiles a second program
        if self.batched and np.ndim(value) > 0:
            return _place(value.astype(ref.dtype), self.sharding)  # type: ignore[arg-type]
        return jnp.asarray(value, dtype=ref.dtype)


def _drive(
    mode: _Mode,
    prog: Program,
    method: AbstractMethod,
    s: State,
    *,
    steps: int,
    chunk_steps: int,
    cfg: dict[str, Any],
    progress: Callable[[int, int], None] | None,
    on_snapshot: Callable[[GDSnapshot], None] | None,
    resume: GDSnapshot | None,
) -> tuple[State, dict[str, np.ndarray]]:
    """The chunk loop shared by :func:`run` and :func:`run_batch`: chunks until the schedule
    is done or every configuration has diverged, then the final row. Returns the final state
    and the recorded columns ``name -> (B, n, ...)``."""
    n_blocks, last_len, per_chunk = _blocks(steps, prog.saveat.every, chunk_steps)
    rows: list[Row] = []
    done = 0
    if resume is not None:
        s, rows, done = _restore(resume, cfg, s, mode)
    while done < n_blocks and not np.all(mode.host(s.bad) >= 0):
        active = min(per_chunk, n_blocks - done)
        last = last_len if done + active == n_blocks else prog.saveat.every
        s, seg = mode.run_chunk(
            prog, method, s, per_chunk, jnp.asarray(active), jnp.asarray(last), jnp.asarray(False)
        )
        # The counter back as a fresh (weakly typed, uncommitted) scalar, like the first
        # call's: the one out of shard_map is committed to a device and would make the next
        # call (and the final row) compile the program a second time.
        s = s._replace(t=jnp.asarray(int(s.t)))
        rows.append(mode.rows(seg, active))
        done += active
        if on_snapshot is not None:
            on_snapshot(GDSnapshot(_state_leaves(s, mode), _concat(rows, mode), done, dict(cfg)))
        if progress is not None:
            progress(min(int(s.t), steps), steps)
    s, final = final_row(mode.run_chunk, prog, method, s, per_chunk)
    rows.append(mode.rows(final, 1))
    return s, _concat(rows, mode, batched=True)


def _finish(
    mode: _Mode,
    prog: Program,
    method: AbstractMethod,
    s: State,
    cols: dict[str, np.ndarray],
    n: int,
    cfg: dict[str, Any],
    settings: dict[str, np.ndarray] | None,
    on_nonfinite: str,
) -> SweepResult:
    """The run's result (:func:`theory.engine.results.assemble`), raising on divergence."""
    settings = {} if settings is None else dict(settings)

    def per_config(x: Any) -> np.ndarray:
        a = mode.host(x) if mode.batched else np.asarray(x)[None]
        return a[:n]

    final = None
    if not (isinstance(s.method, tuple) and not s.method):  # a method with a state
        final = (
            jax.tree.map(lambda a: mode.host(a)[:n], s.method)
            if mode.batched
            else jax.tree.map(lambda a: a[None], s.method)
        )
    if mode.batched:
        v1 = per_config(jax.vmap(prog.tracker.top_vector)(s.tracker, s.w))
        eta, wd = per_config(method.lr), per_config(jax.vmap(type(method).weight_decay)(method))
    else:
        v1 = per_config(prog.tracker.top_vector(s.tracker, s.w))
        eta, wd = per_config(method.lr), per_config(method.weight_decay())
    result = assemble(
        {k: v[:n] for k, v in cols.items()},
        per_config(s.onset),
        per_config(s.bad),
        v1,
        np.asarray(settings.get("eta", eta), np.float64),
        np.asarray(settings.get("wd", wd), np.float64),
        groups=prog.groups,
        config=cfg,
        iterates=prog.saveat.iterates,
        settings=settings,
        final_state=final,
    )
    if on_nonfinite == "raise" and np.any(result.diverged_at >= 0):
        i = int(np.flatnonzero(result.diverged_at >= 0)[0])
        raise DivergenceError(int(result.diverged_at[i]), result.run(i))
    return result


def run(
    objective: Objective,
    method: AbstractMethod,
    w0: Array,
    *,
    steps: int,
    groups: Groups,
    tracker: AbstractTracker | None = None,
    saveat: SaveAt | None = None,
    key: Array | None = None,
    chunk_steps: int = 20_000,
    progress: Callable[[int, int], None] | None = None,
    on_snapshot: Callable[[GDSnapshot], None] | None = None,
    resume: GDSnapshot | None = None,
    on_nonfinite: Literal["raise", "stop"] = "raise",
    config: dict[str, Any] | None = None,
) -> GDResult:
    """Run ``method`` on ``objective`` from ``w0`` for ``steps`` steps (module docstring).

    Args:
        objective: :class:`theory.core.objective.Objective` (a plain loss: wrap it with
            :func:`theory.core.objective.as_objective`).
        method: an :class:`theory.engine.AbstractMethod` (:class:`theory.engine.GDWD`,
            :class:`theory.engine.Optax`, or your own subclass).
        w0: ``(D,)`` start (validated by the caller).
        steps, groups: number of steps; scale-invariance groups.
        tracker: an :class:`theory.engine.AbstractTracker` (default :class:`NoTracking`); its
            state (warm starts, e.g. ``LanczosTracker(v0=...)``) is its own.
        saveat: :class:`SaveAt` (default: every step, with iterates).
        key: PRNG key of the tracker's random starts and the method's kicks.
        chunk_steps: steps per compiled chunk (rounded to whole recorded blocks).
        progress, on_snapshot, resume, on_nonfinite: hooks (module docstring).
        config: the caller's settings, stored in the result and compared on resume.
    """
    tracker, saveat = check_parts(method, tracker, saveat)
    steps, chunk_steps = _check_schedule(tracker, saveat, steps, chunk_steps, on_nonfinite)
    key = jax.random.PRNGKey(0) if key is None else key
    prog = Program(objective, tracker, saveat, tuple(groups))
    cfg = {
        **(config or {}),
        **engine_config(tracker, saveat, w0, steps),
        "chunk_steps": chunk_steps,
    }
    if resume is None:
        tstate = _init_tracker(prog, w0, method.lr, key)
    else:  # any state of the right structure, replaced by the snapshot's
        tstate = jax.eval_shape(lambda: _init_tracker(prog, w0, method.lr, key))
        tstate = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tstate)
    s = State(w0, method.init(w0), tstate, jnp.asarray(0), jnp.asarray(-1), jnp.asarray(-1), key)
    mode = _Mode(chunk_jit, batched=False)
    s, cols = _drive(
        mode,
        prog,
        method,
        s,
        steps=steps,
        chunk_steps=chunk_steps,
        cfg=cfg,
        progress=progress,
        on_snapshot=on_snapshot,
        resume=resume,
    )
    return _finish(mode, prog, method, s, cols, 1, cfg, None, on_nonfinite).run(0)


_init_tracker_jit = eqx.filter_jit(
    lambda prog, w, lr, key: prog.tracker.init(prog.objective, w, lr, prog.groups, key)
)


def _init_tracker(prog: Program, w: Array, lr: Array, key: Array) -> Any:
    return _init_tracker_jit(prog, w, lr, key)


def _concat(rows: list[Row], mode: _Mode, *, batched: bool = False) -> dict[str, np.ndarray]:
    """Host rows (leading configuration axis) as columns; a single run's snapshot columns
    carry no configuration axis (``batched=False``)."""
    flat = [_row_columns(r) for r in rows]
    cols = {n: np.concatenate([f[n] for f in flat], axis=1) for n in flat[0]}
    if mode.batched or batched:
        return cols
    return {n: a[0] for n, a in cols.items()}


def _row_columns(r: Row) -> dict[str, np.ndarray]:
    cols = {n: np.asarray(v) for n, v in r._asdict().items() if n != "observed"}
    cols.update({f"observed.{k}": np.asarray(v) for k, v in r.observed.items()})
    return cols


def _columns_to_rows(cols: dict[str, np.ndarray], mode: _Mode) -> Row:
    """Snapshot columns back as host rows with a leading configuration axis."""
    lift = (lambda a: a) if mode.batched else (lambda a: np.asarray(a)[None])
    plain = {n: lift(cols[n]) for n in Row._fields if n != "observed"}
    observed = {k[9:]: lift(v) for k, v in cols.items() if k.startswith("observed.")}
    return Row(**plain, observed=observed)  # type: ignore[arg-type]


def _state_leaves(s: State, mode: _Mode) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(s)
    return {jax.tree_util.keystr(path): mode.host(leaf) for path, leaf in flat}


def _restore(
    snap: GDSnapshot, config: dict[str, Any], like: State, mode: _Mode
) -> tuple[State, list[Row], int]:
    differ = sorted(
        k for k in set(config) | set(snap.config) if snap.config.get(k) != config.get(k)
    )
    if differ:
        raise ValueError(
            f"cannot resume: the snapshot was taken with different settings ({differ}); "
            "start the run afresh or pass the same settings"
        )
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for path, ref in flat:
        name = jax.tree_util.keystr(path)
        if name not in snap.carry:
            raise ValueError(f"cannot resume: the snapshot has no state entry {name!r}")
        value = np.asarray(snap.carry[name])
        if value.shape != tuple(ref.shape):
            raise ValueError(
                f"cannot resume: the snapshot's state entry {name!r} has shape {value.shape}, "
                f"the run's has {tuple(ref.shape)}"
            )
        leaves.append(mode.put(value, ref))
    s = jax.tree_util.tree_unflatten(treedef, leaves)
    return s, [_columns_to_rows(dict(snap.rows), mode)], int(snap.done_blocks)


# --------------------------------------------------------------------------------------------
# Batches of configurations
# --------------------------------------------------------------------------------------------


def _place(tree: Any, sharding: NamedSharding) -> Any:
    """Host arrays with a leading configuration axis onto the devices (single- or multi-host):
    each process supplies its own devices' slices."""

    def put(x: Any) -> Array:
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)


def gather(x: Array) -> np.ndarray:
    """A (possibly multi-process) sharded array as one NumPy array on every process."""
    if jax.process_count() > 1 and isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


_init_batch = eqx.filter_jit(
    eqx.filter_vmap(
        lambda prog, w, lr, key: prog.tracker.init(prog.objective, w, lr, prog.groups, key),
        in_axes=(None, 0, 0, 0),
    )
)


def run_batch(
    objective: Objective,
    methods: AbstractMethod,
    w0: np.ndarray,
    keys: np.ndarray,
    *,
    steps: int,
    groups: Groups,
    tracker: AbstractTracker | None = None,
    saveat: SaveAt | None = None,
    chunk_steps: int = 20_000,
    devices: Sequence[Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_snapshot: Callable[[GDSnapshot], None] | None = None,
    resume: GDSnapshot | None = None,
    on_nonfinite: Literal["raise", "stop"] = "raise",
    config: dict[str, Any] | None = None,
    settings: dict[str, np.ndarray] | None = None,
) -> SweepResult:
    """``B`` configurations at once: ``methods`` has array leaves with a leading axis ``B``,
    ``w0`` is ``(B, D)`` and ``keys`` ``(B, 2)`` (host arrays). The configuration axis is padded
    to a multiple of the device count (repeating the last configuration), laid over a 1-D mesh
    ``"sweep"`` and run with :func:`theory.engine.core.sharded_chunk` (one program per device),
    chunk after chunk by the same loop as :func:`run` (hooks as there; ``on_nonfinite="raise"``
    raises if any configuration diverged, the loop stops once all have).

    ``settings``: per-configuration settings ``name -> (B,)`` recorded in the result (each
    configuration's ``config``); ``eta`` and ``wd`` among them are recorded as the result's
    ``eta``/``wd`` (default: the methods' ``lr`` and ``weight_decay()``).
    """
    tracker, saveat = check_parts(methods, tracker, saveat, method_name="methods")
    steps, chunk_steps = _check_schedule(tracker, saveat, steps, chunk_steps, on_nonfinite)
    n = int(w0.shape[0])
    m_host = [np.asarray(a) for a in jax.tree.leaves(eqx.filter(methods, eqx.is_array))]
    check_same_everywhere(
        "the sweep's arguments",
        m_host,
        np.asarray(w0),
        np.asarray(keys),
        repr((steps, chunk_steps, saveat.every, saveat.iterates, tracker.config())),
    )
    devices = list(jax.devices() if devices is None else devices)
    pad = (-n) % len(devices)
    idx = np.concatenate([np.arange(n), np.full(pad, n - 1)]).astype(int)
    mesh = Mesh(np.asarray(devices), ("sweep",))
    sharding = NamedSharding(mesh, PartitionSpec("sweep"))
    m_dyn, m_static = eqx.partition(methods, eqx.is_array)
    m_dyn = _place(jax.tree.map(lambda a: np.asarray(a)[idx], m_dyn), sharding)
    methods = eqx.combine(m_dyn, m_static)
    w_dev, k_dev = _place((np.asarray(w0)[idx], np.asarray(keys)[idx]), sharding)
    tracker = tracker.for_batch()
    prog = Program(objective, tracker, saveat, tuple(groups))
    cfg = {
        **(config or {}),
        **engine_config(tracker, saveat, jnp.asarray(w0[0]), steps),
        "chunk_steps": chunk_steps,
    }
    if resume is None:
        tstate = _init_batch(prog, w_dev, methods.lr, k_dev)
    else:  # any state of the right structure, replaced by the snapshot's
        tstate = jax.eval_shape(lambda: _init_batch(prog, w_dev, methods.lr, k_dev))
        tstate = _place(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), tstate), sharding)
    minus = np.full(n + pad, -1, np.asarray(jnp.asarray(0)).dtype)
    onset0, bad0 = _place((minus, minus), sharding)
    mstate = jax.vmap(lambda m, w: m.init(w))(methods, w_dev)
    s = State(w_dev, mstate, tstate, jnp.asarray(0), onset0, bad0, k_dev)
    mode = _Mode(sharded_chunk(mesh), batched=True, sharding=sharding)
    s, cols = _drive(
        mode,
        prog,
        methods,
        s,
        steps=steps,
        chunk_steps=chunk_steps,
        cfg=cfg,
        progress=progress,
        on_snapshot=on_snapshot,
        resume=resume,
    )
    return _finish(mode, prog, methods, s, cols, n, cfg, settings, on_nonfinite)
