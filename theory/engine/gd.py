"""GD with weight decay on a scale-invariant loss, compiled whole, with EoS tracking.

The update (docs/theory.md section 2; ``wd`` is LLA22's lambda, never the eigenvalue):

    w_{t+1} = (1 - eta * wd) w_t - eta * grad L(w_t)

Recorded per recorded step ``t`` (one row; row 0 is step 0, the last row is step ``steps``): the
iterate, its norm (and per-group norms), the effective learning rate ``eta / |w_t|^2``, the loss,
``|grad L(w_t)|``, the spherical sharpness ``S(w_t) = lambda_1(hess L(w_hat_t))`` and the EoS
quantity ``eta * lambda_1(hess L(w_t))`` (``= eta_eff * S`` for one group; the top eigenvalue of
``D^{1/2} H(w_hat) D^{1/2}`` with per-group effective rates for several groups).

The EoS quantity is computed on every tracked step (every ``tracker.every`` steps of a
:class:`theory.engine.LanczosTracker`) by Lanczos on ``eta H(w_t)``, warm-started from an earlier
tracked step's eigenvector (of the same parity when ``every`` is odd: the EoS oscillation has
period 2) and stopped at the first Krylov dimension whose relative Ritz residual meets the
tracker's ``tol``; the gradient that the GD step
needs comes from the same linearization, so the primal pass is shared. With several groups the
spherical sharpness is a second operator and is solved only on recorded rows (by default). The
whole run is a ``lax.scan`` over recorded blocks inside ``jit``, split into equal chunks (one
compilation) so long runs can report progress between chunks.

Cost and accuracy (measured, ``benchmarks/bench_networks.py``): one HVP costs about 1.5-2.0
gradients on a dense network (its tangent program has about twice the gradient's matmuls), so
tracking every step costs at least ``1 + 1.5 m`` gradients per step with ``m`` HVPs per solve.
A relative residual ``r`` gives an eigenvalue error of at most ``r`` and about ``r^2 / gap``
(relative gap to the next eigenvalue), so ``tol = 1e-2`` already gives about 1e-3 when
the top gap is a few percent. Where the top two eigenvalues nearly cross, a warm-started solve
can converge on the second one (an error up to their gap, rare: measured once in 1000 steps on
a small problem at ``tol = 1e-3``); the residual does not reveal it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from theory.core import validate as check
from theory.core.edge import warn_if_above_edge
from theory.core.invariance import check_scale_invariance, leaves_of
from theory.core.objective import as_objective
from theory.core.types import Array, LossFn
from theory.engine.core import SaveAt
from theory.engine.driver import check_parts
from theory.engine.driver import run as engine_run
from theory.engine.methods import GDWD
from theory.engine.results import DivergenceError as DivergenceError
from theory.engine.results import GDResult as GDResult
from theory.engine.results import GDSnapshot as GDSnapshot
from theory.engine.trackers import AbstractTracker, LanczosTracker

__all__ = [
    "DivergenceError",
    "GDResult",
    "GDSnapshot",
    "check_rates",
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


def gd_wd(
    loss: LossFn,
    w0: Array,
    *,
    eta: float,
    wd: float,
    steps: int,
    groups: Sequence[int] | None = None,
    tracker: AbstractTracker | None = None,
    saveat: SaveAt | None = None,
    perturbation: float = 0.0,
    perturb_every: int = 1,
    key: Array | None = None,
    chunk_steps: int = 20_000,
    callback: Callable[[int, int], None] | None = None,
    on_nonfinite: Literal["raise", "stop"] = "raise",
    check_invariance: bool = True,
    on_snapshot: Callable[[GDSnapshot], None] | None = None,
    resume: GDSnapshot | None = None,
    warn_above_edge: bool = True,
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
        groups: contiguous block sizes for multi-group invariance (``None``: one group).
        tracker: what is learned about the curvature (:class:`theory.engine.AbstractTracker`):
            default ``LanczosTracker(every=saveat.every)`` (the EoS quantity on every recorded
            row, residual tolerance ``3 sqrt(eps)``, warm starts; module docstring);
            ``NoTracking()`` runs bare GD; ``LanczosTracker(every=k, tol=..., v0=...)`` tracks
            every ``k`` steps (``k`` divides ``saveat.every``; the EoS onset is found at that
            resolution) from the warm start ``v0``.
        saveat: which steps become rows (:class:`theory.engine.SaveAt`; default every step,
            with iterates; ``SaveAt(every=k, iterates=False, observe=fn)``).
        perturbation: relative size of a random tangent kick that seeds the EoS oscillation when
            exact arithmetic sits exactly on the manifold (ALP22); 0 disables it.
        perturb_every: kick every this many steps (when ``perturbation > 0``).
        key: PRNG key for the start vector, kicks and Lanczos restarts (default ``PRNGKey(0)``).
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
        warn_above_edge: warn (:class:`theory.AboveEdgeWarning`, after the run, also before a
            :class:`DivergenceError`) when the EoS quantity of the first row, step 0, is
            already ``>= 2``: the run starts above the edge (a catapult; ``onset_step`` 0).
            It is measured by the tracker, so with ``NoTracking()`` nothing is said. Choose
            ``eta`` with :func:`theory.edge_at_init`; pass ``False`` where the start above the
            edge is intended.

    Returns:
        :class:`GDResult`.
    """
    eta, wd, perturbation = check_rates(eta, wd, perturbation)
    perturb_every = check.positive_int(perturb_every, "perturb_every")
    w0, sizes = check.flat_vector(w0, "w0", groups, leaves=leaves_of(loss))
    check.loss_output(loss, w0)
    method = GDWD(
        jnp.asarray(eta, w0.dtype),
        jnp.asarray(wd, w0.dtype),
        jnp.asarray(perturbation, w0.dtype),
        sizes,
        perturb_every=perturb_every,
        kicks=perturbation > 0,
    )
    tracker, saveat = default_parts(method, tracker, saveat)
    if check_invariance:
        check_scale_invariance(loss, w0, groups=sizes)
    config = {
        "eta": eta,
        "wd": wd,
        "groups": list(sizes),
        **gd_config(tracker, saveat),
        "perturbation": perturbation,
        "perturb_every": perturb_every,
    }
    try:
        result = engine_run(
            as_objective(loss),
            method,
            w0,
            steps=steps,
            groups=sizes,
            tracker=tracker,
            saveat=saveat,
            key=jax.random.PRNGKey(0) if key is None else key,
            chunk_steps=chunk_steps,
            progress=callback,
            on_snapshot=on_snapshot,
            resume=resume,
            on_nonfinite=on_nonfinite,
            config=config,
        )
    except DivergenceError as err:
        if warn_above_edge:
            _warn_start(err.result)
        raise
    if warn_above_edge:
        _warn_start(result)
    return result


def _warn_start(result: GDResult) -> None:
    warn_if_above_edge(result.eos[None], result.step, np.asarray([result.eta]), stacklevel=4)


def default_parts(
    method: GDWD, tracker: AbstractTracker | None, saveat: SaveAt | None
) -> tuple[AbstractTracker, SaveAt]:
    """GD+WD's defaults: ``SaveAt()`` and ``LanczosTracker(every=saveat.every)`` (the EoS
    quantity on every recorded row); each part checked against its base class."""
    if saveat is None:
        saveat = SaveAt()
    if tracker is None and isinstance(saveat, SaveAt):
        tracker = LanczosTracker(every=saveat.every)
    return check_parts(method, tracker, saveat)


def gd_config(tracker: AbstractTracker, saveat: SaveAt) -> dict[str, Any]:
    """The tracking entries of a GD+WD run's config (as stored since before the engine)."""
    return {
        "track_sharpness": tracker.every > 0,
        "sharpness_every": tracker.every if tracker.every > 0 else saveat.every,
    }
