"""Which continuous model to follow after a GD+WD run's EoS onset, and the central-flow path.

The sharpness-reduction flows (F1, the cluster flow, the prediction's phase III) live on
``Gamma``, the manifold of interpolating minimizers on the sphere, and start from a projection
onto it. That presupposes that phase I (fitting) is over at the Edge-of-Stability onset. On a
network that reaches the edge long before it fits (the CNN of ``examples/tutorial_cnn.py``, the
project's MLP in docs/central_flow.md section 3), ``Gamma`` is far away or empty: the
Gauss-Newton projection from the onset does not converge, and ``Phi(w0)`` is not where GD goes.
The central flow (:mod:`theory.flows.central`) needs no ``Gamma``: it models GD's time-averaged
trajectory from any point below the edge, holding the top eigenvalue(s) at the edge.

:func:`choose_path` decides between the two from the run up to its onset (docs/predict.md,
"When phase I has not finished at the onset"):

* **Gamma is reachable** (branch ``"gamma"``) when both hold:

  1. *interpolation is possible by counting*: with ``n`` residuals (least squares) the
     minimizers ``{r = 0}`` on the sphere of ``D`` weights in ``k`` scale groups have
     codimension ``n`` in a ``D - k`` dimensional product of spheres, so ``n <= D - k`` is
     needed for them to exist generically [derived];
  2. *phase I is over at the onset*: the loss at the onset is at most
     ``PathRule.max_loss_ratio`` (default ``1e-3``) times the loss at the start. The
     threshold is the one that examples/tutorial.py uses for the end of phase I; it is
     [measured] to separate the problems: ratios ``<= 1e-9`` on the analytic problems and the
     interpolating tutorial MLP, ``0.1-0.3`` on the CNN and the project's MLP (docs/predict.md).

* otherwise **the central flow** (branch ``"central"``): :func:`central_path` runs it from GD's
  iterate at a step before the onset (where GD is still below the edge and not oscillating)
  and compares it on matched time with GD's centered moving averages of the loss and of
  ``eta_eff S`` (GD oscillates with period 2 at the edge; the central flow models the mean).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import diffrax
import numpy as np

from theory.analysis.trajectory import angle_between, moving_average
from theory.core import validate as check
from theory.core.types import Array, LossFn
from theory.flows.central import CentralFlowResult, EdgeSettings, central_flow
from theory.flows.common import AbstractGeometry, Budget, Lanczos, Progress, SaveTimes

__all__ = [
    "CentralPathResult",
    "PathChoice",
    "PathRule",
    "central_path",
    "choose_path",
]

Branch = Literal["gamma", "central"]


@dataclass(frozen=True)
class PathRule:
    """The thresholds of :func:`choose_path` (module docstring).

    Attributes:
        max_loss_ratio: phase I counts as over at the onset when ``L(onset) / L(0)`` is at most
            this (in ``(0, 1)``; default ``1e-3``, [measured] threshold: docs/predict.md).
    """

    max_loss_ratio: float = 1e-3

    def __post_init__(self) -> None:
        ratio = check.positive(self.max_loss_ratio, "PathRule.max_loss_ratio")
        if ratio >= 1.0:
            raise ValueError(f"PathRule.max_loss_ratio must be in (0, 1), got {ratio!r}")


@dataclass(frozen=True)
class PathChoice:
    """What :func:`choose_path` decided, and the numbers it decided on.

    Attributes:
        branch: ``"gamma"`` (project onto the minimizers and follow a sharpness-reduction
            flow) or ``"central"`` (follow the central flow from before the onset).
        interpolable: ``n <= D - k`` (``True`` when the residual count is not given).
        loss_ratio: ``L(onset) / L(0)``.
        grad_ratio: ``|grad L(onset)| / |grad L(0)|`` (NaN when not given).
        codimension_slack: ``D - k - n`` (``None`` without a residual count).
        reasons: one sentence per failed condition (empty for ``"gamma"``).
    """

    branch: Branch
    interpolable: bool
    loss_ratio: float
    grad_ratio: float
    codimension_slack: int | None
    reasons: tuple[str, ...] = field(default=())


def choose_path(
    loss: Any,
    *,
    onset: int,
    dim: int,
    groups: int = 1,
    n_residuals: int | None = None,
    grad_norm: Any | None = None,
    rule: PathRule | None = None,
) -> PathChoice:
    """Decide whether ``Gamma`` is reachable at a GD run's EoS onset (module docstring).

    Args:
        loss: the run's loss at steps ``0, 1, ..., >= onset`` (one row per step).
        onset: the EoS onset step (the first step with ``eta_eff S >= 2``), ``>= 1``.
        dim: ``D``, the number of weights.
        groups: ``k``, the number of scale-invariance groups (``>= 1``).
        n_residuals: ``n``, the number of residuals of a least-squares loss (samples times
            outputs); ``None`` for another loss (only the loss ratio then decides).
        grad_norm: optional ``|grad L|`` per step like ``loss`` (reported, not used).
        rule: the thresholds (default ``PathRule()``).

    Returns:
        :class:`PathChoice`.
    """
    rule = PathRule() if rule is None else rule
    if not isinstance(rule, PathRule):
        raise TypeError(f"rule must be a PathRule, got {rule!r}")
    losses = np.asarray(loss, dtype=np.float64)
    if losses.ndim != 1 or not np.all(np.isfinite(losses)):
        raise ValueError(f"loss must be a finite 1-d array, got shape {losses.shape}")
    onset = check.positive_int(onset, "onset")
    if onset >= losses.shape[0]:
        raise ValueError(
            f"onset must be a step of the run (< {losses.shape[0]} loss rows), got {onset}"
        )
    dim = check.positive_int(dim, "dim")
    groups = check.positive_int(groups, "groups")
    if groups > dim:
        raise ValueError(f"groups must be at most dim = {dim}, got {groups}")
    if losses[0] <= 0.0:
        raise ValueError(f"the loss at the start must be > 0 for a ratio, got {losses[0]!r}")
    ratio = float(losses[onset] / losses[0])
    reasons = []
    slack = None
    if n_residuals is not None:
        n = check.positive_int(n_residuals, "n_residuals")
        slack = dim - groups - n
        if slack < 0:
            reasons.append(
                f"no interpolating minimizers: n = {n} residuals exceed D - k = {dim - groups}"
            )
    if ratio > rule.max_loss_ratio:
        reasons.append(
            f"phase I has not finished at the onset: L(onset) / L(0) = {ratio:.3g} > "
            f"{rule.max_loss_ratio:g}"
        )
    grad_ratio = float("nan")
    if grad_norm is not None:
        g = np.asarray(grad_norm, dtype=np.float64)
        if g.shape != losses.shape:
            raise ValueError(f"grad_norm must have the shape of loss {losses.shape}, got {g.shape}")
        grad_ratio = float(g[onset] / g[0])
    return PathChoice(
        branch="gamma" if not reasons else "central",
        interpolable=slack is None or slack >= 0,
        loss_ratio=ratio,
        grad_ratio=grad_ratio,
        codimension_slack=slack,
        reasons=tuple(reasons),
    )


@dataclass(frozen=True)
class CentralPathResult:
    """The central flow from a GD iterate next to GD's moving averages on matched steps.

    Attributes:
        step: ``(m,)`` the compared GD steps (from ``start`` on).
        start: the GD step the flow starts from.
        gd_onset: GD's EoS onset step (given).
        flow: the :class:`theory.CentralFlowResult` at ``step - start``.
        gd_loss: GD's centered moving average of the loss at ``step``.
        flow_loss: the flow's predicted time-averaged loss (``avg_loss``).
        gd_eos: GD's centered moving average of ``eta_eff S`` at ``step``.
        flow_eos: the flow's ``eta_eff S``.
        angle: angle (rad) between GD's moving-average iterate and the flow's iterate (NaN
            without iterates).
        after: ``(m,)`` mask of the compared rows: from GD's onset plus ``window`` (the moving
            average of the first ``window / 2`` steps after the onset mixes in phase I) to
            ``window / 2`` steps before GD's last row.
        loss_err: mean over ``after`` of ``|gd_loss - flow_loss| / gd_loss``.
        eos_err: ``|mean(gd_eos) - mean(flow_eos)| / mean(flow_eos)`` over ``after``.
        eos_gd_mean: ``mean(gd_eos)`` over ``after``; eos_flow_mean: the flow's.
        onset_err: ``(flow.onset + start - gd_onset) / gd_onset`` (NaN if the flow never
            reached the edge).
        max_angle: largest ``angle`` over ``after``.
        window: the moving-average window (steps).
    """

    step: np.ndarray
    start: int
    gd_onset: int
    flow: CentralFlowResult
    gd_loss: np.ndarray
    flow_loss: np.ndarray
    gd_eos: np.ndarray
    flow_eos: np.ndarray
    angle: np.ndarray
    after: np.ndarray
    loss_err: float
    eos_err: float
    eos_gd_mean: float
    eos_flow_mean: float
    onset_err: float
    max_angle: float
    window: int


def central_path(
    loss_fn: LossFn,
    *,
    step: Any,
    loss: Any,
    eos: Any,
    w_start: Array,
    start: int,
    gd_onset: int,
    eta: float,
    wd: float,
    window: int = 16,
    iterates: Any | None = None,
    geometry: AbstractGeometry | None = None,
    edge: EdgeSettings | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    progress: Progress | Callable[[int, int], None] | bool | None = None,
    budget: Budget | None = None,
) -> CentralPathResult:
    """Run the central flow from GD's iterate at ``start`` and compare it with GD's averages.

    GD's rows are one per step (``step`` consecutive integers). The flow starts at
    ``w_start`` (GD's iterate at step ``start``, below the edge) and is saved at every step from
    ``start`` to the last row; both sides are then compared on the same steps: GD's centered
    moving averages (``window`` steps, :func:`theory.analysis.trajectory.moving_average`) of the
    loss and of ``eta_eff S`` (= ``eos``, measured at GD's iterates) against the flow's
    predicted time-averaged loss and its ``eta_eff S``.

    Args:
        loss_fn: the scale-invariant loss ``(D,) -> ()``.
        step: ``(T,)`` GD's steps, consecutive integers.
        loss: ``(T,)`` GD's loss at those steps; eos: ``(T,)`` its ``eta_eff S``.
        w_start: ``(D,)`` GD's iterate at ``start``.
        start: the step to start the flow from (``step[0] <= start < gd_onset``).
        gd_onset: GD's onset step.
        eta, wd: GD's learning rate and weight decay.
        window: moving-average window in steps (``>= 2``; even windows average whole periods
            of GD's period-2 oscillation).
        iterates: optional ``(T, D)`` GD's iterates (for the direction ``angle``).
        geometry: the flow's eigen-solver (default ``Lanczos()``).
        edge: the flow's edge settings (default ``EdgeSettings()``).
        stepsize_controller: the flow's adaptive controller (default: :func:`central_flow`'s,
            ``PIDController(rtol=1e-7, atol=1e-10)``).
        progress, budget: passed to :func:`central_flow` (docs/central_flow.md, "Progress and
            budgets").

    Returns:
        :class:`CentralPathResult`.
    """
    steps = np.asarray(step)
    if steps.ndim != 1 or steps.size < 2 or np.any(np.diff(steps) != 1):
        raise ValueError("step must hold consecutive integer steps (one row per step)")
    losses = np.asarray(loss, dtype=np.float64)
    eoss = np.asarray(eos, dtype=np.float64)
    for name, arr in (("loss", losses), ("eos", eoss)):
        if arr.shape != steps.shape:
            raise ValueError(f"{name} must have the shape of step {steps.shape}, got {arr.shape}")
    window = check.positive_int(window, "window")
    if window < 2:
        raise ValueError(f"window must be >= 2 steps, got {window}")
    start = int(start)
    gd_onset = int(gd_onset)
    if not steps[0] <= start < gd_onset <= steps[-1]:
        raise ValueError(
            f"need step[0] <= start < gd_onset <= step[-1]; got step[0] = {steps[0]}, "
            f"start = {start}, gd_onset = {gd_onset}, step[-1] = {steps[-1]}"
        )
    rows = np.flatnonzero(steps >= start)
    # Rows whose window reaches past either end of GD's run are left out: the moving average
    # repeats the end row there, one parity of GD's period-2 oscillation.
    after = (steps[rows] >= gd_onset + window) & (steps[rows] <= steps[-1] - window // 2)
    if not np.any(after):
        raise ValueError(
            f"no compared row between gd_onset + window = {gd_onset + window} and the last "
            f"step - window / 2 = {steps[-1] - window // 2}: run GD longer or shorten the "
            f"window"
        )
    ws = None if iterates is None else np.asarray(iterates, dtype=np.float64)
    if ws is not None and (ws.ndim != 2 or ws.shape[0] != steps.shape[0]):
        raise ValueError(f"iterates must be ({steps.shape[0]}, D), got shape {ws.shape}")
    times = (steps[rows] - start).astype(np.float64)
    # central_flow's own default controller unless one is given
    controller: dict[str, Any] = (
        {} if stepsize_controller is None else {"stepsize_controller": stepsize_controller}
    )
    flow = central_flow(
        loss_fn,
        w_start,
        eta=eta,
        wd=wd,
        saveat=SaveTimes(ts=times),
        geometry=Lanczos() if geometry is None else geometry,
        edge=EdgeSettings() if edge is None else edge,
        progress=progress,
        budget=budget,
        **controller,
    )
    m = len(flow.t)  # the flow may stop early (more eigenvalues at the edge than max_edge)
    rows, after = rows[:m], after[:m]
    if not np.any(after):
        raise RuntimeError(
            f"the central flow stopped at step {start + flow.t[-1]:g}, before any compared row "
            f"(mode {int(flow.mode[-1])}; more eigenvalues at the edge than max_edge?)"
        )
    gd_loss = moving_average(losses, window)[rows]
    gd_eos = moving_average(eoss, window)[rows]
    angle = np.full(m, np.nan)
    if ws is not None:
        angle = angle_between(moving_average(ws, window)[rows], flow.w)
    loss_err = float(np.mean(np.abs(gd_loss - flow.avg_loss) / gd_loss, where=after))
    eos_gd = float(np.mean(gd_eos[after]))
    eos_flow = float(np.mean(flow.eos[after]))
    onset_err = float("nan") if flow.onset is None else (flow.onset + start - gd_onset) / gd_onset
    return CentralPathResult(
        step=steps[rows],
        start=start,
        gd_onset=gd_onset,
        flow=flow,
        gd_loss=gd_loss,
        flow_loss=flow.avg_loss,
        gd_eos=gd_eos,
        flow_eos=flow.eos,
        angle=angle,
        after=after,
        loss_err=loss_err,
        eos_err=abs(eos_gd - eos_flow) / eos_flow,
        eos_gd_mean=eos_gd,
        eos_flow_mean=eos_flow,
        onset_err=float(onset_err),
        max_angle=float(np.max(angle[after])) if ws is not None else float("nan"),
        window=window,
    )
