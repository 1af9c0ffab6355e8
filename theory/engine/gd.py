"""GD with weight decay on a scale-invariant loss, compiled whole, with EoS tracking.

The update (docs/theory.md section 2; ``wd`` is LLA22's lambda, never the eigenvalue):

    w_{t+1} = (1 - eta * wd) w_t - eta * grad L(w_t)

Recorded per recorded step ``t`` (one row; row 0 is step 0, the last row is step ``steps``): the
iterate, its norm (and per-group norms), the effective learning rate ``eta / |w_t|^2``, the loss,
``|grad L(w_t)|``, the spherical sharpness ``S(w_t) = lambda_1(hess L(w_hat_t))`` and the EoS
quantity ``eta * lambda_1(hess L(w_t))`` (``= eta_eff * S`` for one group; the top eigenvalue of
``D^{1/2} H(w_hat) D^{1/2}`` with per-group effective rates for several groups).

The EoS quantity is computed on every tracked step (every ``sharpness_every`` steps) by Lanczos
on ``eta H(w_t)``, warm-started from an earlier tracked step's eigenvector (of the same parity
when ``sharpness_every`` is odd: the EoS oscillation has period 2) and stopped at the first
Krylov dimension whose relative Ritz residual meets ``lanczos_tol``; the gradient that the GD step
needs comes from the same linearization, so the primal pass is shared. With several groups the
spherical sharpness is a second operator and is solved only on recorded rows (by default). The
whole run is a ``lax.scan`` over recorded blocks inside ``jit``, split into equal chunks (one
compilation) so long runs can report progress between chunks.

Cost and accuracy (measured, ``benchmarks/bench_networks.py``): one HVP costs about 1.5-2.0
gradients on a dense network (its tangent program has about twice the gradient's matmuls), so
tracking every step costs at least ``1 + 1.5 m`` gradients per step with ``m`` HVPs per solve.
A relative residual ``r`` gives an eigenvalue error of at most ``r`` and about ``r^2 / gap``
(relative gap to the next eigenvalue), so ``lanczos_tol = 1e-2`` already gives about 1e-3 when
the top gap is a few percent. Where the top two eigenvalues nearly cross, a warm-started solve
can converge on the second one (an error up to their gap, rare: measured once in 1000 steps on
a small problem at ``lanczos_tol = 1e-3``); the residual does not reveal it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp

from theory.core import validate as check
from theory.core.invariance import check_scale_invariance
from theory.core.objective import as_objective
from theory.core.types import Array, LossFn
from theory.engine import GDWD, LanczosTracker, NoTracking, SaveAt
from theory.engine import run as engine_run
from theory.engine.results import DivergenceError as DivergenceError
from theory.engine.results import GDResult as GDResult
from theory.engine.results import GDSnapshot as GDSnapshot
from theory.engine.trackers import LanczosState

__all__ = [
    "DivergenceError",
    "GDResult",
    "GDSnapshot",
    "check_rates",
    "check_schedule",
    "gd_wd",
    "predicted_eos_onset",
]


def predicted_eos_onset(eta: float, wd: float, eos0: float, *, exact: bool = True) -> float:
    """Steps for ``eta_eff * S`` to grow from ``eos0`` to 2 when the gradient is negligible.

    Near the minimizer manifold ``|w_t|^2 = (1 - eta wd)^{2t} |w_0|^2``, so
    ``eta_eff_t S = eos0 (1 - eta wd)^{-2t}`` reaches 2 after
    ``log(2 / eos0) / (-2 log(1 - eta wd))`` steps (``exact=True``), which is
    ``log(2 / eos0) / (2 eta wd)`` to first order (``exact=False``; docs/theory.md section 3)
    [derived]. Assumes the sharpness stays at its initial value (phase I has already converged).
    """
    eta, wd, eos0 = (
        check.positive(eta, "eta"),
        check.positive(wd, "wd"),
        check.positive(eos0, "eos0"),
    )
    if eta * wd >= 1:
        raise ValueError(f"eta * wd must be < 1, got {eta * wd}")
    if eos0 >= 2:
        return 0.0
    rate = -2.0 * math.log1p(-eta * wd) if exact else 2.0 * eta * wd
    return math.log(2.0 / eos0) / rate


def check_rates(
    eta: Any, wd: Any, perturbation: Any = 0.0, where: str = ""
) -> tuple[float, float, float]:
    """Validated ``(eta > 0, wd >= 0, perturbation >= 0)`` with ``eta * wd < 1``."""
    eta = check.positive(eta, "eta")
    wd = check.nonnegative(wd, "wd")
    perturbation = check.nonnegative(perturbation, "perturbation")
    if eta * wd >= 1:
        raise ValueError(
            f"eta * wd must be < 1 (the decay factor 1 - eta*wd must stay positive), "
            f"got eta={eta}, wd={wd}{where}"
        )
    return eta, wd, perturbation


def check_schedule(steps: Any, record_every: Any, sharpness_every: Any) -> tuple[int, int, int]:
    """Validated ``(steps, record_every, sharpness_every)``; the last divides the second."""
    steps = check.positive_int(steps, "steps")
    record_every = check.positive_int(record_every, "record_every")
    s_every = record_every if sharpness_every is None else sharpness_every
    s_every = check.positive_int(s_every, "sharpness_every")
    if record_every % s_every:
        raise ValueError(
            f"sharpness_every ({s_every}) must divide record_every ({record_every}) so that every "
            "recorded row carries the sharpness of its own step"
        )
    return steps, record_every, s_every


def gd_wd(
    loss: LossFn,
    w0: Array,
    *,
    eta: float,
    wd: float,
    steps: int,
    record_every: int | None = None,
    groups: Sequence[int] | None = None,
    track_sharpness: bool | None = None,
    sharpness_every: int | None = None,
    lanczos_tol: float | None = None,
    lanczos_iters: int | None = None,
    warm_start: Literal["parity", "last"] | None = None,
    v0: Array | None = None,
    perturbation: float = 0.0,
    perturb_every: int = 1,
    key: Array | None = None,
    record_iterates: bool | None = None,
    chunk_steps: int = 20_000,
    callback: Callable[[int, int], None] | None = None,
    on_nonfinite: Literal["raise", "stop"] = "raise",
    check_invariance: bool = True,
    on_snapshot: Callable[[GDSnapshot], None] | None = None,
    resume: GDSnapshot | None = None,
    tracker: Any = None,
    saveat: SaveAt | None = None,
) -> GDResult:
    """Run GD with weight decay on a scale-invariant loss, tracking sharpness and the EoS.

    ``w_{t+1} = (1 - eta wd) w_t - eta grad L(w_t)`` for ``steps`` steps, compiled as one
    ``lax.scan`` per chunk. The dtype is ``w0``'s (float64 needs x64 enabled).

    Args:
        loss: scale-invariant loss ``(D,) -> ()``; data-carrying losses should be pytrees
            (``jax.tree_util.Partial``, ``eqx.Module``) so data are jit arguments.
        w0: initial point ``(D,)``, finite, nonzero in every group.
        eta: learning rate ``> 0``.
        wd: weight decay ``>= 0`` (0 is the no-WD ablation).
        steps: number of GD steps ``>= 1``.
        record_every: record a row every this many steps (and always at step ``steps``).
        groups: contiguous block sizes for multi-group invariance (``None``: one group).
        track_sharpness: compute ``S`` and the EoS quantity (Lanczos); ``False`` runs bare GD.
        sharpness_every: track every this many steps (must divide ``record_every``; default
            ``record_every``). EoS onset is detected at this resolution.
        lanczos_tol: relative Ritz residual at which every solve stops (default
            ``3 sqrt(eps)``: float32 ~1e-3, float64 ~4.5e-8). The eigenvalue error is at most
            the residual and about ``residual^2 / relative gap`` (module docstring): ``1e-2``
            gives ~1e-3 on a network whose top gap is a few percent, for about half the HVPs
            of the default.
        lanczos_iters: Krylov dimension (= HVP) cap per solve. The first eigenvector is solved
            cold and accurately before the run; later steps start warm and stop as soon as the
            residual meets ``lanczos_tol`` (one HVP when the warm start already does). The
            cap binds only where the top eigenvalues cluster or cross; a step that hits it
            shows it in ``lanczos_residual``.
        warm_start: ``"parity"`` (default) starts each tracked step's EoS solve from the
            eigenvector of two tracked steps before when ``sharpness_every`` is odd (the EoS
            oscillation has period 2, and so does the Hessian; measured on small multi-group
            problems at the EoS: 30-70% fewer HVPs, and fewer solves stuck on the second
            eigenvalue);
            ``"last"`` always from the previous tracked step's.
        v0: start vector for the first tracked step (default: an accurate cold solve).
        perturbation: relative size of a random tangent kick that seeds the EoS oscillation when
            exact arithmetic sits exactly on the manifold (ALP22); 0 disables it.
        perturb_every: kick every this many steps (when ``perturbation > 0``).
        key: PRNG key for the start vector, kicks and Lanczos restarts (default ``PRNGKey(0)``).
        record_iterates: store ``w`` per row (``False`` for large ``D``: ``w`` is then None).
        chunk_steps: steps per compiled chunk (rounded to whole recorded blocks); the callback
            runs and divergence is checked between chunks.
        callback: ``callback(steps_done, steps)`` after each chunk (for progress bars).
        on_nonfinite: ``"raise"`` a :class:`DivergenceError` (carrying the rows before the bad
            step) or ``"stop"`` and return those rows with ``diverged_at`` set.
        check_invariance: reject a loss that is not scale-invariant around ``w0``.
        on_snapshot: ``on_snapshot(GDSnapshot)`` after each chunk (to write a checkpoint).
        resume: a snapshot of this same run (same ``w0`` and settings) to continue from; the
            continued run is bitwise identical to an uninterrupted one (same machine, dtype and
            ``chunk_steps``), because the remaining chunks run the same compiled program on the
            same state.
        tracker: a tracker object instead of the tracking keywords (``track_sharpness``,
            ``sharpness_every``, ``lanczos_tol``, ``lanczos_iters``, ``warm_start``), e.g.
            ``LanczosTracker(every=10, tol=1e-2)`` or ``NoTracking()``.
        saveat: a :class:`theory.engine.SaveAt` instead of ``record_every`` /
            ``record_iterates`` (it can also record ``observe(w)`` on every row).

    Returns:
        :class:`GDResult`.
    """
    eta, wd, perturbation = check_rates(eta, wd, perturbation)
    perturb_every = check.positive_int(perturb_every, "perturb_every")
    w0, sizes = check.flat_vector(w0, "w0", groups)
    check.loss_output(loss, w0)
    saveat = _saveat(saveat, record_every, record_iterates)
    tracker = _tracker(
        tracker, saveat, track_sharpness, sharpness_every, lanczos_tol, lanczos_iters, warm_start
    )
    if check_invariance:
        check_scale_invariance(loss, w0, groups=sizes)
    dtype = w0.dtype
    method = GDWD(
        jnp.asarray(eta, dtype),
        jnp.asarray(wd, dtype),
        jnp.asarray(perturbation, dtype),
        sizes,
        perturb_every=perturb_every,
        kicks=perturbation > 0,
    )
    tstate = None
    if v0 is not None and resume is None:
        v0, _ = check.flat_vector(v0, "v0")
        if v0.shape != w0.shape:
            raise ValueError(f"v0 must have the shape of w0 {w0.shape}, got {v0.shape}")
        v0 = v0.astype(dtype) / jnp.linalg.norm(v0)
        zero = jnp.zeros((), dtype)
        tstate = (
            LanczosState(v0, v0, v0, zero, zero) if isinstance(tracker, LanczosTracker) else None
        )
    config = {
        "eta": eta,
        "wd": wd,
        "groups": list(sizes),
        "track_sharpness": not isinstance(tracker, NoTracking),
        "sharpness_every": max(tracker.every, 0) or saveat.every,
        "perturbation": perturbation,
        "perturb_every": perturb_every,
    }
    return engine_run(
        as_objective(loss),
        method,
        w0,
        steps=steps,
        groups=sizes,
        tracker=tracker,
        saveat=saveat,
        key=jax.random.PRNGKey(0) if key is None else key,
        tracker_state=tstate,
        chunk_steps=chunk_steps,
        progress=callback,
        on_snapshot=on_snapshot,
        resume=resume,
        on_nonfinite=on_nonfinite,
        config=config,
    )


def _saveat(saveat: SaveAt | None, record_every: Any, record_iterates: Any) -> SaveAt:
    if saveat is not None:
        if record_every is not None or record_iterates is not None:
            raise ValueError("pass either saveat= or record_every/record_iterates, not both")
        if not isinstance(saveat, SaveAt):
            raise TypeError(f"saveat must be a theory.engine.SaveAt, got {saveat!r}")
        return saveat
    every = 1 if record_every is None else check.positive_int(record_every, "record_every")
    iterates = True if record_iterates is None else bool(record_iterates)
    return SaveAt(every=every, iterates=iterates)


def _tracker(
    tracker: Any,
    saveat: SaveAt,
    track: bool | None,
    every: Any,
    tol: Any,
    iters: Any,
    warm_start: Any,
) -> Any:
    """The tracker object: ``tracker`` itself, or one built from the tracking keywords."""
    legacy = {
        "track_sharpness": track,
        "sharpness_every": every,
        "lanczos_tol": tol,
        "lanczos_iters": iters,
        "warm_start": warm_start,
    }
    if tracker is not None:
        given = sorted(k for k, v in legacy.items() if v is not None)
        if given:
            raise ValueError(f"pass either tracker= or the tracking keywords {given}, not both")
        if not all(hasattr(tracker, a) for a in ("every", "init", "observe", "config")):
            raise TypeError(
                f"tracker must be a tracker object (e.g. LanczosTracker), got {tracker!r}"
            )
        return tracker
    if track is False:
        return NoTracking()
    every = saveat.every if every is None else check.positive_int(every, "sharpness_every")
    if saveat.every % every:
        raise ValueError(
            f"sharpness_every ({every}) must divide record_every ({saveat.every}) so that every "
            "recorded row carries the sharpness of its own step"
        )
    if warm_start is not None and warm_start not in ("parity", "last"):
        raise ValueError(f"warm_start must be 'parity' or 'last', got {warm_start!r}")
    return LanczosTracker(
        every=every,
        tol=None if tol is None else check.positive(tol, "lanczos_tol"),
        max_iters=24 if iters is None else check.positive_int(iters, "lanczos_iters"),
        warm_start=warm_start or "parity",
    )
