"""The host driver: compiled chunks one after another, with progress, checkpoints and
non-finite handling as hooks; and the same for a batch of configurations over devices.

:func:`run` is the one loop behind :func:`theory.gd_wd` and :func:`theory.run_optimizer`;
:func:`run_batch` is the one behind :func:`theory.engine.sweep.gd_wd_sweep`.

Hooks (all optional): ``progress(steps_done, steps)`` after each chunk; ``on_snapshot(snap)``
with a :class:`GDSnapshot` after each chunk (write it to disk to survive a crash); ``resume``: a
snapshot of the same run to continue from, bitwise identical to an uninterrupted run;
``on_nonfinite``: ``"raise"`` a :class:`DivergenceError` carrying the rows before the first
non-finite iterate, or ``"stop"`` and return them.
"""

from __future__ import annotations

import dataclasses
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
from theory.engine.results import DivergenceError, GDResult, GDSnapshot
from theory.engine.trackers import NoTracking


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


def _check_schedule(tracker: Any, saveat: SaveAt, steps: Any, chunk_steps: Any) -> tuple[int, int]:
    steps = check.positive_int(steps, "steps")
    chunk_steps = check.positive_int(chunk_steps, "chunk_steps")
    if tracker.every > 0 and saveat.every % tracker.every:
        raise ValueError(
            f"the tracker's period ({tracker.every}, sharpness_every) must divide SaveAt.every "
            f"({saveat.every}, record_every) so that every recorded row carries the sharpness of "
            "its own step"
        )
    return steps, chunk_steps


def engine_config(tracker: Any, saveat: SaveAt, w0: Array, steps: int) -> dict[str, Any]:
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


def run(
    objective: Objective,
    method: Any,
    w0: Array,
    *,
    steps: int,
    groups: Groups,
    tracker: Any = None,
    saveat: SaveAt | None = None,
    key: Array | None = None,
    tracker_state: Any = None,
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
        method: :class:`theory.engine.GDWD`, :class:`theory.engine.Optax` or any pytree with
            ``lr``, ``init`` and ``update``.
        w0: ``(D,)`` start (validated by the caller).
        steps, groups: number of steps; scale-invariance groups.
        tracker: :class:`theory.engine.LanczosTracker`, ... (default :class:`NoTracking`).
        saveat: :class:`SaveAt` (default: every step, with iterates).
        key: PRNG key of the tracker's random starts and the method's kicks.
        tracker_state: the tracker's initial state (default ``tracker.init``: a cold solve).
        chunk_steps: steps per compiled chunk (rounded to whole recorded blocks).
        progress, on_snapshot, resume, on_nonfinite: hooks (module docstring).
        config: the caller's settings, stored in the result and compared on resume.
    """
    tracker = NoTracking() if tracker is None else tracker
    saveat = SaveAt() if saveat is None else saveat
    steps, chunk_steps = _check_schedule(tracker, saveat, steps, chunk_steps)
    if on_nonfinite not in ("raise", "stop"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}")
    key = jax.random.PRNGKey(0) if key is None else key
    prog = Program(objective, tracker, saveat, tuple(groups))
    cfg = {
        **(config or {}),
        **engine_config(tracker, saveat, w0, steps),
        "chunk_steps": chunk_steps,
    }
    if resume is not None or tracker_state is not None:
        tstate = tracker_state
    else:
        tstate = _init_tracker(prog, w0, method.lr, key)
    if tstate is None:  # resume: any state of the right structure, replaced below
        tstate = jax.eval_shape(lambda: _init_tracker(prog, w0, method.lr, key))
        tstate = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tstate)
    s = State(w0, method.init(w0), tstate, jnp.asarray(0), jnp.asarray(-1), jnp.asarray(-1), key)
    n_blocks, last_len, per_chunk = _blocks(steps, saveat.every, chunk_steps)
    rows: list[Row] = []
    done = 0
    if resume is not None:
        s, rows, done = _restore(resume, cfg, s)
    while done < n_blocks and int(s.bad) < 0:
        active = min(per_chunk, n_blocks - done)
        last = last_len if done + active == n_blocks else saveat.every
        s, seg = chunk_jit(
            prog, method, s, per_chunk, jnp.asarray(active), jnp.asarray(last), jnp.asarray(False)
        )
        rows.append(jax.tree.map(lambda a, n=active: np.asarray(a[:n]), seg))
        done += active
        if on_snapshot is not None:
            on_snapshot(_snapshot(s, rows, done, cfg))
        if progress is not None:
            progress(min(int(s.t), steps), steps)
    s, final = final_row(chunk_jit, prog, method, s, per_chunk)
    rows.append(jax.tree.map(lambda a: np.asarray(a)[:1], final))
    result = _assemble(_concat(rows), s, method, groups, cfg)
    if result.diverged_at is not None and on_nonfinite == "raise":
        raise DivergenceError(result.diverged_at, result)
    return result


_init_tracker_jit = eqx.filter_jit(
    lambda prog, w, lr, key: prog.tracker.init(prog.objective, w, lr, prog.groups, key)
)


def _init_tracker(prog: Program, w: Array, lr: Array, key: Array) -> Any:
    return _init_tracker_jit(prog, w, lr, key)


def _concat(rows: list[Row], axis: int = 0) -> dict[str, np.ndarray]:
    flat = [_row_columns(r) for r in rows]
    return {n: np.concatenate([f[n] for f in flat], axis=axis) for n in flat[0]}


def _row_columns(r: Row) -> dict[str, np.ndarray]:
    cols = {n: np.asarray(getattr(r, n)) for n in Row._fields if n != "observed"}
    cols.update({f"observed.{k}": np.asarray(v) for k, v in r.observed.items()})
    return cols


def _columns_to_rows(cols: dict[str, np.ndarray]) -> Row:
    plain = {n: cols[n] for n in Row._fields if n != "observed"}
    observed = {k[9:]: v for k, v in cols.items() if k.startswith("observed.")}
    return Row(**plain, observed=observed)  # type: ignore[arg-type]


def _state_leaves(s: State) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(s)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def _snapshot(s: State, rows: list[Row], done: int, config: dict[str, Any]) -> GDSnapshot:
    return GDSnapshot(_state_leaves(s), _concat(rows), done, dict(config))


def _restore(snap: GDSnapshot, config: dict[str, Any], like: State) -> tuple[State, list[Row], int]:
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
        if getattr(ref, "weak_type", False):  # keep Python-scalar counters weakly typed, or
            leaves.append(jnp.asarray(value.item()))  # the resumed run compiles a second program
        else:
            leaves.append(jnp.asarray(value, dtype=ref.dtype))
    s = jax.tree_util.tree_unflatten(treedef, leaves)
    return s, [_columns_to_rows(dict(snap.rows))], int(snap.done_blocks)


def _scalar(x: Any) -> float:
    return float(np.asarray(x)) if x is not None else float("nan")


def _assemble(
    cols: dict[str, np.ndarray], s: State, method: Any, groups: Groups, cfg: dict[str, Any]
) -> GDResult:
    bad = int(s.bad)
    if bad >= 0:
        keep = cols["step"] < bad
        cols = {n: a[keep] for n, a in cols.items()}
    eta = _scalar(method.lr)
    gsq = cols["group_norms"] ** 2
    norm = np.sqrt(gsq.sum(axis=1))
    onset = int(s.onset)
    tstate = s.tracker
    v1 = np.asarray(tstate.v) if hasattr(tstate, "v") else np.zeros_like(np.asarray(s.w))
    return GDResult(
        step=cols["step"].astype(np.int64),
        w=cols["w"] if cfg["record_iterates"] else None,
        norm=norm,
        group_norms=cols["group_norms"],
        eta_eff=eta / norm**2,
        group_eta_eff=eta / gsq,
        loss=cols["loss"],
        grad_norm=cols["grad_norm"],
        sharpness=cols["sharpness"],
        eos=cols["eos"],
        lanczos_matvecs=cols["matvecs"],
        lanczos_residual=cols["residual"],
        block_matvecs=cols["block_matvecs"],
        onset_step=onset if onset >= 0 else None,
        diverged_at=bad if bad >= 0 else None,
        v1=v1,
        eta=eta,
        wd=_scalar(getattr(method, "wd", None)),
        groups=tuple(groups),
        config=cfg,
        observed={k[9:]: v for k, v in cols.items() if k.startswith("observed.")},
        final_state=None if isinstance(s.method, tuple) and not s.method else s.method,
    )


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
    if jax.process_count() > 1 and not getattr(x, "is_fully_addressable", True):
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
    methods: Any,
    w0: np.ndarray,
    keys: np.ndarray,
    *,
    steps: int,
    groups: Groups,
    tracker: Any = None,
    saveat: SaveAt | None = None,
    chunk_steps: int = 20_000,
    devices: Sequence[Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """``B`` configurations at once: ``methods`` has array leaves with a leading axis ``B``,
    ``w0`` is ``(B, D)`` and ``keys`` ``(B, 2)`` (host arrays). The configuration axis is padded
    to a multiple of the device count (repeating the last configuration), laid over a 1-D mesh
    ``"sweep"`` and run with :func:`theory.engine.core.sharded_chunk` (one program per device).

    Returns ``(columns, final, config)``: row columns ``(B, n, ...)``, the final ``onset``,
    ``bad`` and ``v1`` per configuration, and the engine settings.
    """
    tracker = NoTracking() if tracker is None else tracker
    saveat = SaveAt() if saveat is None else saveat
    steps, chunk_steps = _check_schedule(tracker, saveat, steps, chunk_steps)
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
    if hasattr(tracker, "batched"):
        tracker = dataclasses.replace(tracker, batched=True)
    prog = Program(objective, tracker, saveat, tuple(groups))
    tstate = _init_batch(prog, w_dev, methods.lr, k_dev)
    minus = np.full(n + pad, -1, np.asarray(jnp.asarray(0)).dtype)
    onset0, bad0 = _place((minus, minus), sharding)
    mstate = jax.vmap(lambda m, w: m.init(w))(methods, w_dev)
    s = State(w_dev, mstate, tstate, jnp.asarray(0), onset0, bad0, k_dev)
    n_blocks, last_len, per_chunk = _blocks(steps, saveat.every, chunk_steps)
    run_chunk = sharded_chunk(mesh)
    rows: list[Row] = []
    done = 0
    while done < n_blocks:
        active = min(per_chunk, n_blocks - done)
        last = last_len if done + active == n_blocks else saveat.every
        s, seg = run_chunk(
            prog, methods, s, per_chunk, jnp.asarray(active), jnp.asarray(last), jnp.asarray(False)
        )
        # The counter back as a fresh (weakly typed, uncommitted) scalar, like the first
        # call's: the one out of shard_map is committed to a device and would make the next
        # call (and the final row) compile the program a second time.
        s = s._replace(t=jnp.asarray(int(s.t)))
        rows.append(jax.tree.map(lambda a, k=active: gather(a)[:, :k], seg))
        done += active
        if progress is not None:
            progress(min(done * saveat.every, steps), steps)
    s, final = final_row(run_chunk, prog, methods, s, per_chunk)
    rows.append(jax.tree.map(lambda a: gather(a)[:, :1], final))
    cols = {k: v[:n] for k, v in _concat(rows, axis=1).items()}
    v1 = gather(s.tracker.v)[:n] if hasattr(s.tracker, "v") else np.zeros_like(np.asarray(w0))
    last_state = {"onset": gather(s.onset)[:n], "bad": gather(s.bad)[:n], "v1": v1}
    cfg = {**engine_config(tracker, saveat, jnp.asarray(w0[0]), steps), "chunk_steps": chunk_steps}
    return cols, last_state, cfg
