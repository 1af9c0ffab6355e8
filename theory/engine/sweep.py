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
largest iteration count of the device's configurations), divergence does not stop the sweep (a
diverged configuration freezes and its later rows are NaN), and results equal the sequential
ones to rounding, not bitwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from theory.core import validate as check
from theory.core.invariance import check_scale_invariance
from theory.core.objective import as_objective
from theory.core.types import Array, Groups, LossFn
from theory.engine import GDWD, SaveAt, run_batch
from theory.engine.gd import GDResult, _saveat, _tracker, check_rates


@dataclass(frozen=True)
class SweepResult:
    """A sweep: arrays with a leading configuration axis ``B`` (NumPy, host).

    ``step`` ``(n,)`` is shared; ``w`` ``(B, n, D)`` (or None), ``norm, eta_eff, loss, grad_norm,
    sharpness, eos, lanczos_matvecs, lanczos_residual`` ``(B, n)``, ``group_norms`` ``(B, n, G)``;
    ``eta, wd, perturbation`` ``(B,)``; ``onset_step, diverged_at`` ``(B,)`` (-1 for none).
    :meth:`run` extracts one configuration as a :class:`theory.GDResult`.
    """

    step: np.ndarray
    w: np.ndarray | None
    norm: np.ndarray
    group_norms: np.ndarray
    eta_eff: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    sharpness: np.ndarray
    eos: np.ndarray
    lanczos_matvecs: np.ndarray
    lanczos_residual: np.ndarray
    onset_step: np.ndarray
    diverged_at: np.ndarray
    eta: np.ndarray
    wd: np.ndarray
    perturbation: np.ndarray
    v1: np.ndarray
    groups: Groups
    config: dict[str, Any]
    block_matvecs: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.eta.shape[0])

    def run(self, i: int) -> GDResult:
        """Configuration ``i`` as a :class:`GDResult` (rows after a divergence dropped)."""
        bad = int(self.diverged_at[i])
        keep = self.step < bad if bad >= 0 else np.ones(self.step.shape, bool)
        gsq = self.group_norms[i][keep] ** 2
        onset = int(self.onset_step[i])
        return GDResult(
            step=self.step[keep],
            w=None if self.w is None else self.w[i][keep],
            norm=self.norm[i][keep],
            group_norms=self.group_norms[i][keep],
            eta_eff=self.eta_eff[i][keep],
            group_eta_eff=float(self.eta[i]) / gsq,
            loss=self.loss[i][keep],
            grad_norm=self.grad_norm[i][keep],
            sharpness=self.sharpness[i][keep],
            eos=self.eos[i][keep],
            lanczos_matvecs=self.lanczos_matvecs[i][keep],
            lanczos_residual=self.lanczos_residual[i][keep],
            block_matvecs=None if self.block_matvecs is None else self.block_matvecs[i][keep],
            onset_step=onset if onset >= 0 else None,
            diverged_at=bad if bad >= 0 else None,
            v1=self.v1[i],
            eta=float(self.eta[i]),
            wd=float(self.wd[i]),
            groups=self.groups,
            config={**self.config, "eta": float(self.eta[i]), "wd": float(self.wd[i])},
        )


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
    record_every: int | None = None,
    groups: Sequence[int] | None = None,
    seeds: Sequence[int] | np.ndarray | None = None,
    perturbation: float | Sequence[float] | np.ndarray = 0.0,
    perturb_every: int = 1,
    track_sharpness: bool | None = None,
    sharpness_every: int | None = None,
    lanczos_tol: float | None = None,
    lanczos_iters: int | None = None,
    warm_start: str | None = None,
    record_iterates: bool | None = None,
    chunk_steps: int = 20_000,
    callback: Callable[[int, int], None] | None = None,
    devices: Sequence[Any] | None = None,
    check_invariance: bool = True,
    tracker: Any = None,
    saveat: SaveAt | None = None,
) -> SweepResult:
    """GD+WD for a grid of configurations at once (see the module docstring).

    Args:
        loss: scale-invariant loss shared by all configurations.
        w0: ``(D,)`` shared start or ``(B, D)`` one per configuration.
        eta, wd, perturbation: scalars (shared) or ``(B,)`` arrays.
        seeds: ``(B,)`` integer seeds of the per-configuration PRNG keys (default
            ``0 .. B-1``); seed ``s`` gives the same key as ``gd_wd(key=PRNGKey(s))``.
        devices: devices to shard the sweep axis over (default all ``jax.devices()``).
        Other arguments as :func:`theory.gd_wd` (shared by all configurations), including
        ``tracker=`` and ``saveat=`` objects.
    """
    w0_host = np.asarray(w0)
    if w0_host.ndim not in (1, 2):
        raise ValueError(f"w0 must have shape (D,) or (B, D), got {w0_host.shape}")
    n = _grid_size(w0_host, eta, wd, perturbation, *([seeds] if seeds is not None else []))
    etas, wds = _broadcast(eta, n, "eta"), _broadcast(wd, n, "wd")
    kicks = _broadcast(perturbation, n, "perturbation")
    for i in range(n):
        check_rates(etas[i], wds[i], kicks[i], where=f" for configuration {i}")
    w0s = np.broadcast_to(w0_host, (n, w0_host.shape[-1])) if w0_host.ndim == 1 else w0_host
    first, sizes = check.flat_vector(jnp.asarray(w0s[0]), "w0", groups)
    for i in range(1, n):
        check.flat_vector(jnp.asarray(w0s[i]), f"w0[{i}]", sizes)
    check.loss_output(loss, first)
    dtype = first.dtype
    perturb_every = check.positive_int(perturb_every, "perturb_every")
    saveat = _saveat(saveat, record_every, record_iterates)
    tracker = _tracker(
        tracker, saveat, track_sharpness, sharpness_every, lanczos_tol, lanczos_iters, warm_start
    )
    if check_invariance:
        check_scale_invariance(loss, first, groups=sizes)
    seeds_arr = np.arange(n) if seeds is None else np.asarray(seeds, dtype=np.int64)
    keys = np.stack([np.asarray(jax.random.PRNGKey(int(s))) for s in seeds_arr])
    methods = GDWD(
        jnp.asarray(etas, dtype),
        jnp.asarray(wds, dtype),
        jnp.asarray(kicks, dtype),
        sizes,
        perturb_every=perturb_every,
        kicks=bool(np.any(kicks > 0)),
    )
    devices = list(jax.devices() if devices is None else devices)
    cols, last, engine_cfg = run_batch(
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
    )
    config = {
        **engine_cfg,
        "groups": list(sizes),
        "track_sharpness": tracker.every > 0,
        "sharpness_every": tracker.every or saveat.every,
        "perturb_every": perturb_every,
        "devices": len(devices),
        "seeds": seeds_arr.tolist(),
    }
    return _assemble_sweep(cols, last, etas, wds, kicks, sizes, saveat.iterates, config)


def _assemble_sweep(
    cols: dict[str, np.ndarray],
    last: dict[str, np.ndarray],
    etas: np.ndarray,
    wds: np.ndarray,
    kicks: np.ndarray,
    sizes: Groups,
    iterates: bool,
    config: dict[str, Any],
) -> SweepResult:
    bad = last["bad"]
    step = cols["step"][0].astype(np.int64)
    invalid = (bad[:, None] >= 0) & (step[None, :] >= bad[:, None])
    gsq = cols["group_norms"] ** 2
    norm = np.sqrt(gsq.sum(axis=2))

    def mask(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.result_type(a.dtype, np.float32))
        shape = invalid.shape + (1,) * (a.ndim - 2)
        return np.where(invalid.reshape(shape), np.nan, a)

    return SweepResult(
        step=step,
        w=mask(cols["w"]) if iterates else None,
        norm=mask(norm),
        group_norms=mask(cols["group_norms"]),
        eta_eff=mask(etas[:, None] / norm**2),
        loss=mask(cols["loss"]),
        grad_norm=mask(cols["grad_norm"]),
        sharpness=mask(cols["sharpness"]),
        eos=mask(cols["eos"]),
        lanczos_matvecs=cols["matvecs"],
        lanczos_residual=mask(cols["residual"]),
        onset_step=last["onset"].astype(np.int64),
        diverged_at=bad.astype(np.int64),
        eta=etas,
        wd=wds,
        perturbation=kicks,
        v1=last["v1"],
        groups=sizes,
        config=config,
        block_matvecs=cols["block_matvecs"],
    )
