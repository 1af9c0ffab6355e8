"""Sweeps: many GD+WD configurations as one compiled, vmapped computation, sharded over devices.

A grid over ``(eta, wd, w0, key, perturbation)`` runs the same per-step program as
:func:`theory.gd_wd` under ``jax.vmap``; the sweep axis is laid out over all devices with
``jax.sharding`` (a 1-D ``Mesh`` named ``"sweep"`` and ``NamedSharding(mesh, P("sweep"))``), so
XLA partitions the batch and no configuration talks to another. The grid is padded to a
multiple of the device count (the padding repeats the last configuration and is dropped).

Multi-host: call ``jax.distributed.initialize()`` in every process first and pass the same full
grid everywhere; inputs are placed with ``jax.make_array_from_callback`` (each process supplies
its own devices' slices) and results are gathered with
``jax.experimental.multihost_utils.process_allgather``. (Only single-host runs, including
several forced CPU devices, are tested here.)

Differences from a one-by-one loop: every ``lax.cond`` becomes a select under ``vmap`` (both
branches run), divergence does not stop the sweep (a diverged configuration freezes and its
later rows are NaN), and results equal the sequential ones to rounding, not bitwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import _validate as check
from ._types import Array, Groups, LossFn
from .curvature import linearize_grad
from .gd import (
    GDResult,
    _Carry,
    _final_row,
    _Params,
    _Row,
    _segment_core,
    _Static,
    check_rates,
    check_schedule,
)
from .invariance import check_scale_invariance, normalize
from .lanczos import default_tol, lanczos


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


def _initial_vectors(
    loss: LossFn, w: Array, eta: Array, tol: Array, key: Array, st: _Static
) -> tuple[Array, Array]:
    """Cold top eigenvectors of ``eta H(w)`` and ``H(w_hat)`` (vmapped over configurations)."""
    _, hvp = linearize_grad(loss, w)
    v0 = jax.random.normal(jax.random.fold_in(key, 7), w.shape, w.dtype)
    m = min(w.shape[0], 64)
    v = lanczos(lambda x: eta * hvp(x), v0, max_iters=m, tol=tol).eigenvectors[:, 0]
    if len(st.groups) == 1:
        return v, v
    w_hat = normalize(w, st.groups)
    _, hvp_hat = linearize_grad(loss, w_hat)
    vs = lanczos(hvp_hat, v0, max_iters=m, tol=tol).eigenvectors[:, 0]
    return v, vs


_init_batch = eqx.filter_jit(eqx.filter_vmap(_initial_vectors, in_axes=(None, 0, 0, None, 0, None)))
# The step counter and the schedules are shared by all configurations (they step in lockstep),
# so they stay unbatched: the "track this step?" predicate is then a scalar and the tracking
# ``lax.cond`` remains a real branch under vmap instead of a select that would run Lanczos on
# every step.
_CARRY_AXES = _Carry(0, 0, 0, None, 0, 0, 0)  # type: ignore[arg-type]
_PARAM_AXES = _Params(0, 0, 0, None, None, 0, None)  # type: ignore[arg-type]
_segment_batch = eqx.filter_jit(
    eqx.filter_vmap(
        _segment_core, in_axes=(None, _CARRY_AXES, _PARAM_AXES, None, None, None, None, None)
    )
)


def _place(tree: Any, sharding: NamedSharding) -> Any:
    """Put host arrays with a leading sweep axis onto the devices (single- or multi-host)."""

    def put(x: Any) -> Array:
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)


def _gather(x: Array) -> np.ndarray:
    if jax.process_count() > 1:  # pragma: no cover - multi-host only
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def gd_wd_sweep(
    loss: LossFn,
    w0: Array,
    *,
    eta: float | Sequence[float] | np.ndarray,
    wd: float | Sequence[float] | np.ndarray,
    steps: int,
    record_every: int = 1,
    groups: Sequence[int] | None = None,
    seeds: Sequence[int] | np.ndarray | None = None,
    perturbation: float | Sequence[float] | np.ndarray = 0.0,
    perturb_every: int = 1,
    track_sharpness: bool = True,
    sharpness_every: int | None = None,
    lanczos_tol: float | None = None,
    lanczos_iters: int = 12,
    record_iterates: bool = True,
    chunk_steps: int = 20_000,
    callback: Callable[[int, int], None] | None = None,
    devices: Sequence[Any] | None = None,
    check_invariance: bool = True,
) -> SweepResult:
    """GD+WD for a grid of configurations at once (see the module docstring).

    Args:
        loss: scale-invariant loss shared by all configurations.
        w0: ``(D,)`` shared start or ``(B, D)`` one per configuration.
        eta, wd, perturbation: scalars (shared) or ``(B,)`` arrays.
        seeds: ``(B,)`` integer seeds of the per-configuration PRNG keys (default
            ``0 .. B-1``); seed ``s`` gives the same key as ``gd_wd(key=PRNGKey(s))``.
        devices: devices to shard the sweep axis over (default all ``jax.devices()``).
        Other arguments as :func:`theory.gd_wd` (shared by all configurations).
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
    dtype = first.dtype
    steps, record_every, s_every = check_schedule(steps, record_every, sharpness_every)
    perturb_every = check.positive_int(perturb_every, "perturb_every")
    lanczos_iters = check.positive_int(lanczos_iters, "lanczos_iters")
    chunk_steps = check.positive_int(chunk_steps, "chunk_steps")
    if check_invariance:
        check_scale_invariance(loss, first, groups=sizes)
    seeds_arr = np.arange(n) if seeds is None else np.asarray(seeds, dtype=np.int64)
    tol = default_tol(dtype) if lanczos_tol is None else check.positive(lanczos_tol, "lanczos_tol")
    st = _Static(sizes, bool(track_sharpness), min(lanczos_iters, first.shape[0]), record_iterates)

    devices = list(jax.devices() if devices is None else devices)
    pad = (-n) % len(devices)
    idx = np.concatenate([np.arange(n), np.full(pad, n - 1)]).astype(int)
    b = n + pad
    keys = np.stack([np.asarray(jax.random.PRNGKey(int(s))) for s in seeds_arr])[idx]
    idt = jnp.asarray(0).dtype  # int32, or int64 with x64: as in gd_wd
    batched = (
        np.asarray(etas[idx], dtype),
        np.asarray(wds[idx], dtype),
        np.full(b, tol, dtype),
        np.asarray(kicks[idx], dtype),
    )
    w_start = np.asarray(w0s[idx], dtype)
    mesh = Mesh(np.asarray(devices), ("sweep",))
    sharding = NamedSharding(mesh, PartitionSpec("sweep"))
    eta_d, wd_d, tol_d, kick_d = _place(batched, sharding)
    p = _Params(
        eta_d,
        wd_d,
        tol_d,
        jnp.asarray(record_every, idt),
        jnp.asarray(s_every, idt),
        kick_d,
        jnp.asarray(perturb_every, idt),
    )
    w_dev, k_dev = _place((w_start, keys), sharding)
    if track_sharpness:
        v, vs = _init_batch(loss, w_dev, p.eta, jnp.asarray(tol, dtype), k_dev, st)
    else:
        v = vs = jnp.zeros_like(w_dev)
    minus = np.full(b, -1, idt)
    onset0, bad0 = _place((minus, minus), sharding)
    carry = _Carry(w_dev, v, vs, jnp.asarray(0, idt), onset0, bad0, k_dev)

    n_blocks = -(-steps // record_every)
    last_len = steps - (n_blocks - 1) * record_every
    chunk = max(1, min(n_blocks, chunk_steps // record_every))
    rows: list[_Row] = []
    done = 0
    while done < n_blocks:
        active = min(chunk, n_blocks - done)
        last = last_len if done + active == n_blocks else record_every
        carry, seg = _segment_batch(
            loss, carry, p, st, chunk, jnp.asarray(active), jnp.asarray(last), jnp.asarray(False)
        )
        carry = carry._replace(t=carry.t[0])  # vmap broadcast the shared counter
        rows.append(jax.tree.map(lambda a, k=active: _gather(a)[:, :k], seg))
        done += active
        if callback is not None:
            callback(min(done * record_every, steps), steps)
    carry, final = _final_row(_segment_batch, loss, carry, p, st, chunk)
    rows.append(jax.tree.map(lambda a: _gather(a)[:, :1], final))
    return _assemble_sweep(
        rows,
        carry,
        etas,
        wds,
        kicks,
        sizes,
        st,
        n,
        {
            "steps": steps,
            "record_every": record_every,
            "sharpness_every": s_every,
            "groups": list(sizes),
            "track_sharpness": bool(track_sharpness),
            "lanczos_tol": tol,
            "lanczos_iters": st.max_iters,
            "perturb_every": perturb_every,
            "dtype": jnp.dtype(dtype).name,
            "devices": len(devices),
            "seeds": seeds_arr.tolist(),
        },
    )


def _assemble_sweep(
    rows: list[_Row],
    c: _Carry,
    etas: np.ndarray,
    wds: np.ndarray,
    kicks: np.ndarray,
    sizes: Groups,
    st: _Static,
    n: int,
    config: dict[str, Any],
) -> SweepResult:
    cols = {
        f: np.concatenate([np.asarray(getattr(r, f)) for r in rows], axis=1)[:n]
        for f in _Row._fields
    }
    bad = _gather(c.bad)[:n]
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
        w=mask(cols["w"]) if st.record_iterates else None,
        norm=mask(norm),
        group_norms=mask(cols["group_norms"]),
        eta_eff=mask(etas[:, None] / norm**2),
        loss=mask(cols["loss"]),
        grad_norm=mask(cols["grad_norm"]),
        sharpness=mask(cols["sharpness"]),
        eos=mask(cols["eos"]),
        lanczos_matvecs=cols["matvecs"],
        lanczos_residual=mask(cols["residual"]),
        onset_step=_gather(c.onset)[:n].astype(np.int64),
        diverged_at=bad.astype(np.int64),
        eta=etas,
        wd=wds,
        perturbation=kicks,
        v1=_gather(c.v)[:n],
        groups=sizes,
        config=config,
    )
