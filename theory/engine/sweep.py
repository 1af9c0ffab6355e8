"""Sweeps: many GD+WD configurations at once, one program per device.

A grid over ``(eta, wd, w0, key, perturbation)`` runs the same per-step program as
:func:`theory.gd_wd` (the engine's :func:`theory.engine.run_batch`): the configuration axis is
split over a 1-D ``Mesh`` named ``"sweep"`` with ``shard_map``, so every device runs its own
compiled loop on its configurations (vmapped): its own Lanczos iteration counts, no
communication. The grid is padded to a multiple of the device count (the padding repeats the
last configuration and is dropped). Tracking uses the same tracker, warm start and tolerance as
:func:`theory.gd_wd`.

Multi-process: call ``jax.distributed.initialize()`` in every process first and pass the same
full grid everywhere; inputs are placed with ``jax.make_array_from_callback`` (each process
supplies its own devices' slices) and results are gathered with
``jax.experimental.multihost_utils.process_allgather`` (``docs/distributed.md``).

Differences from a one-by-one loop: within a device, configurations step in lockstep (a
``lax.cond`` whose predicate differs between them becomes a select; the Lanczos loop runs to the
largest iteration count of the device's configurations), a divergence stops the sweep only once
every configuration has diverged (a diverged configuration freezes and its later rows are NaN;
nothing is raised), and results equal the sequential ones to rounding, not bitwise. The chunk
loop, its hooks (progress, ``on_snapshot``, ``resume``) and the result assembly are those of
:func:`theory.gd_wd` (:mod:`theory.engine.driver`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from theory.core import validate as check
from theory.core.edge import warn_if_above_edge
from theory.core.invariance import check_scale_invariance, leaves_of
from theory.core.objective import as_objective
from theory.core.types import Array, LossFn
from theory.engine.core import SaveAt
from theory.engine.driver import run_batch
from theory.engine.gd import check_rates, default_parts, gd_config
from theory.engine.methods import GDWD
from theory.engine.results import GDSnapshot
from theory.engine.results import SweepResult as SweepResult
from theory.engine.trackers import AbstractTracker


def _broadcast(x: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {arr.shape}")
    return arr


def _grid_size(w0: np.ndarray, *values: Any) -> int:
    sizes = {int(np.size(v)) for v in values if np.ndim(v) > 0}
    if w0.ndim == 2:
        sizes.add(int(w0.shape[0]))
    if len(sizes) > 1:
        raise ValueError(f"the sweep arguments disagree on the number of configurations: {sizes}")
    return sizes.pop() if sizes else 1


def gd_wd_sweep(
    loss: LossFn,
    w0: Array,
    *,
    eta: float | Sequence[float] | np.ndarray,
    wd: float | Sequence[float] | np.ndarray,
    steps: int,
    groups: Sequence[int] | None = None,
    tracker: AbstractTracker | None = None,
    saveat: SaveAt | None = None,
    seeds: Sequence[int] | np.ndarray | None = None,
    perturbation: float | Sequence[float] | np.ndarray = 0.0,
    perturb_every: int = 1,
    chunk_steps: int = 20_000,
    callback: Callable[[int, int], None] | None = None,
    devices: Sequence[Any] | None = None,
    check_invariance: bool = True,
    on_snapshot: Callable[[GDSnapshot], None] | None = None,
    resume: GDSnapshot | None = None,
    warn_above_edge: bool = True,
) -> SweepResult:
    """GD+WD for a grid of configurations at once (see the module docstring).

    Args:
        loss: scale-invariant loss shared by all configurations.
        w0: ``(D,)`` shared start or ``(B, D)`` one per configuration.
        eta, wd, perturbation: scalars (shared) or ``(B,)`` arrays.
        seeds: ``(B,)`` integer seeds of the per-configuration PRNG keys (default
            ``0 .. B-1``); seed ``s`` gives the same key as ``gd_wd(key=PRNGKey(s))``.
        devices: devices to shard the sweep axis over (default all ``jax.devices()``).
        on_snapshot, resume: checkpoints of the whole sweep after each chunk, and a resume
            from one (same grid, settings and device count), as :func:`theory.gd_wd`.
        warn_above_edge: one :class:`theory.AboveEdgeWarning` after the sweep naming the
            configurations whose step-0 EoS quantity is already ``>= 2`` (the first one's value
            and a suggested ``eta``); nothing without tracking. ``False`` where a grid
            deliberately crosses the edge.
        Other arguments as :func:`theory.gd_wd` (shared by all configurations), including the
        defaults of ``tracker=`` and ``saveat=``.
    """
    check.not_pytree(w0, "w0")
    w0_host = np.asarray(w0)
    if w0_host.ndim not in (1, 2):
        raise ValueError(f"w0 must have shape (D,) or (B, D), got {w0_host.shape}")
    n = _grid_size(w0_host, eta, wd, perturbation, *([seeds] if seeds is not None else []))
    etas, wds = _broadcast(eta, n, "eta"), _broadcast(wd, n, "wd")
    kicks = _broadcast(perturbation, n, "perturbation")
    for i in range(n):
        check_rates(etas[i], wds[i], kicks[i], where=f" for configuration {i}")
    w0s = np.broadcast_to(w0_host, (n, w0_host.shape[-1])) if w0_host.ndim == 1 else w0_host
    leaves = leaves_of(loss)
    first, sizes = check.flat_vector(jnp.asarray(w0s[0]), "w0", groups, leaves=leaves)
    for i in range(1, n):
        check.flat_vector(jnp.asarray(w0s[i]), f"w0[{i}]", sizes, leaves=leaves)
    check.loss_output(loss, first)
    dtype = first.dtype
    perturb_every = check.positive_int(perturb_every, "perturb_every")
    methods = GDWD(
        jnp.asarray(etas, dtype),
        jnp.asarray(wds, dtype),
        jnp.asarray(kicks, dtype),
        sizes,
        perturb_every=perturb_every,
        kicks=bool(np.any(kicks > 0)),
    )
    tracker, saveat = default_parts(methods, tracker, saveat)
    if check_invariance:
        check_scale_invariance(loss, first, groups=sizes)
    seeds_arr = np.arange(n) if seeds is None else np.asarray(seeds, dtype=np.int64)
    keys = np.stack([np.asarray(jax.random.PRNGKey(int(s))) for s in seeds_arr])
    devices = list(jax.devices() if devices is None else devices)
    config = {
        "groups": list(sizes),
        **gd_config(tracker, saveat),
        "perturb_every": perturb_every,
        "devices": len(devices),
        "seeds": seeds_arr.tolist(),
    }
    result = run_batch(
        as_objective(loss),
        methods,
        np.asarray(w0s, dtype),
        keys,
        steps=steps,
        groups=sizes,
        tracker=tracker,
        saveat=saveat,
        chunk_steps=chunk_steps,
        devices=devices,
        progress=callback,
        on_snapshot=on_snapshot,
        resume=resume,
        on_nonfinite="stop",
        config=config,
        settings={"eta": etas, "wd": wds, "perturbation": kicks},
    )
    if warn_above_edge:
        warn_if_above_edge(result.eos, result.step, result.eta)
    return result
