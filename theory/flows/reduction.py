"""The sharpness-reduction flow on the minimizer manifold (docs/theory.md section 3; LLA22, ALP22).

With ``g(theta) = P_Gamma(theta) grad log lambda_1(hess L(theta))`` and the slow time
``tau = 2 eta wd t`` (``t`` = GD steps):

    (F0)  d theta / d tau = -(1/4) g                      small-|g| limit (direction: LLA22)
    (F1)  d theta / d tau = -(1/4) g / (1 + |g|^2 / 4)    norm-balanced  [derived in docs/theory.md]

``grad lambda_1 = D^3 L[v_1, v_1, .]`` (one third-order autodiff pass, :func:`grad_lambda1`);
``P_Gamma`` removes the Hessian's range and the radial direction. (F1) is the default. Along
either flow ``d log lambda_1 / d tau = <g, d theta / d tau> <= 0``. The two trace the same path on
clocks that differ by ``1 + |g|^2 / 4`` (independent of ``eta wd``); (F0) lets ``log lambda_1``
fall faster than the norm can shrink (``d log S / d tau >= -1``) when ``|g| > 2``
(docs/theory.md section 3).

Vector fields (:class:`SharpnessFlowField`) have diffrax's ``f(t, y, args)`` signature and are
separate from the integrators: :func:`sharpness_flow` takes the save times
(:class:`theory.SaveTimes`), a geometry (:class:`theory.Dense`, :class:`theory.Lanczos`,
:class:`theory.GaussNewton`: the local frame on ``Gamma``, the projection of the start and the
retraction after every step), diffrax's solver and step-size controller (adaptive ``Tsit5`` +
PID control by default; :class:`theory.FixedSteps` with :class:`theory.RK4` for the fixed-step
projected RK4) and :class:`Degeneracy`: a top eigenvalue that becomes degenerate (relative gap
below ``gap_tol``) stops the solve with :class:`theory.core.errors.DegenerateSharpnessError`
naming the ``tau`` where it happened, or returns the solution before it with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.core import validate as check
from theory.core.curvature import grad_lambda1
from theory.core.errors import DegenerateSharpnessError, DegenerateSharpnessWarning
from theory.core.types import Array, LossFn
from theory.flows.common import (
    AbstractGeometry,
    Budget,
    Dense,
    FixedSteps,
    Progress,
    SaveTimes,
    controller_config,
    geometry_of,
    integrator,
    solve_on_gamma,
)
from theory.flows.monitor import activated, meter_for

Form = Literal["F0", "F1"]
FORMS = ("F0", "F1")


def check_form(form: Any) -> Form:
    """``form`` if it is ``"F0"`` or ``"F1"``."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    return form


class FlowQuantities(NamedTuple):
    """What the flow needs at a point: ``lambda_1, lambda_2, v_1`` and ``g``."""

    lam1: Array
    lam2: Array
    v1: Array
    g: Array  # Riemannian gradient of log lambda_1 on Gamma


def velocity(g: Array, form: str) -> Array:
    """``d theta / d tau`` from ``g`` for form ``F0`` or ``F1``."""
    if form == "F0":
        return -0.25 * g
    return -0.25 * g / (1.0 + 0.25 * jnp.vdot(g, g))


class SharpnessFlowField(eqx.Module):
    """``f(tau, theta, args) = d theta / d tau`` of the sharpness-reduction flow.

    Attributes:
        loss: the scale-invariant loss.
        geometry: the local frame on ``Gamma`` (:meth:`theory.Dense.frame` etc.) with its
            ``rank`` (codimension of ``Gamma`` in the sphere) known: ``lambda_1, lambda_2,
            v_1`` and ``P_Gamma``.
        form: ``"F1"`` (default) or ``"F0"``.
    """

    loss: LossFn
    geometry: AbstractGeometry
    form: str = eqx.field(static=True, default="F1")

    def __check_init__(self) -> None:
        geometry_of(self.geometry)
        self.geometry.known_rank()
        check_form(self.form)

    def quantities(self, y: Array) -> FlowQuantities:
        u = y / jnp.linalg.norm(y)
        frame = self.geometry.frame(self.loss, u, 2)
        lam1, lam2, v1 = frame.values[0], frame.values[1], frame.vectors[:, 0]
        grad = frame.project(grad_lambda1(self.loss, u, v1))
        return FlowQuantities(lam1, lam2, v1, grad / lam1)

    def __call__(self, t: Any, y: Array, args: Any) -> Array:
        return velocity(self.quantities(y).g, self.form)


class Degeneracy(eqx.Module):
    """What :func:`sharpness_flow` does where ``lambda_1`` stops being simple.

    Attributes:
        gap_tol: ``lambda_1`` counts as degenerate when ``(lambda_1 - lambda_2) / lambda_1 <
            gap_tol`` (>= 0).
        action: ``"raise"`` :class:`theory.DegenerateSharpnessError`, or ``"stop"``: warn
            (:class:`theory.DegenerateSharpnessWarning`) and return the solution up to the last
            save before the degeneracy.
    """

    gap_tol: float = eqx.field(static=True, default=1e-3)
    action: Literal["raise", "stop"] = eqx.field(static=True, default="raise")

    def __check_init__(self) -> None:
        check.nonnegative(self.gap_tol, "Degeneracy.gap_tol")
        if self.action not in ("raise", "stop"):
            raise ValueError(f"Degeneracy.action must be 'raise' or 'stop', got {self.action!r}")


@dataclass(frozen=True)
class SharpnessFlowResult:
    """A solution of the sharpness-reduction flow at the saved times (NumPy, host).

    Attributes:
        tau: ``(n,)`` slow times, ``tau[0] = 0``.
        theta: ``(n, D)`` points on ``Gamma``; row 0 is the projection of ``theta0``.
        sharpness: ``(n,)`` ``lambda_1`` at ``theta``.
        lambda2: ``(n,)`` second eigenvalue (the gap shows how simple ``lambda_1`` is).
        g_norm: ``(n,)`` ``|g|``, the Riemannian gradient of ``log lambda_1``.
        num_steps: accepted integrator steps; ``num_evals`` vector-field evaluations.
        form, rank: the form and the codimension of ``Gamma``; ``config`` every setting
            (form, solver, controller, geometry, degeneracy, max_steps).
    """

    tau: np.ndarray
    theta: np.ndarray
    sharpness: np.ndarray
    lambda2: np.ndarray
    g_norm: np.ndarray
    num_steps: int
    num_evals: int
    form: str
    rank: int
    config: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Integrators
# --------------------------------------------------------------------------------------------


class _GapStop(eqx.Module):
    """The stop event of the adaptive solve: ``lambda_1`` has met ``lambda_2``."""

    flow_field: SharpnessFlowField
    gap_tol: Array

    def __call__(self, t: Any, y: Array, args: Any, **kwargs: Any) -> Array:
        q = self.flow_field.quantities(y)
        return ~((q.lam1 - q.lam2) >= self.gap_tol * jnp.abs(q.lam1))


def rk4_step(f: Callable[[Any], Any], y: Any, h: Any) -> Any:
    """One classical Runge-Kutta step of ``dy/dt = f(y)`` with step ``h``.

    Plain arithmetic: ``y`` may be a JAX or NumPy array or a Python float (then ``f`` may return
    NaN, which propagates). The independent integration of the checks and the IRE flow-time
    prediction use it (the flows' fixed steps are :class:`theory.RK4` with
    :class:`theory.FixedSteps`).
    """
    k1 = f(y)
    k2 = f(y + h * k1 / 2)
    k3 = f(y + h * k2 / 2)
    k4 = f(y + h * k3)
    return y + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6


@eqx.filter_jit
def _measure(field_: SharpnessFlowField, ys: Array) -> FlowQuantities:
    return jax.vmap(field_.quantities)(ys)


def sharpness_flow(
    loss: LossFn,
    theta0: Array,
    saveat: SaveTimes | float | Sequence[float] | np.ndarray,
    *,
    form: Form = "F1",
    geometry: AbstractGeometry | None = None,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | FixedSteps | None = None,
    degeneracy: Degeneracy | None = None,
    max_steps: int = 100_000,
    progress: Progress | Callable[[int, int], None] | bool | None = None,
    budget: Budget | None = None,
) -> SharpnessFlowResult:
    """Integrate the sharpness-reduction flow from the projection of ``theta0`` onto ``Gamma``.

    Args:
        loss: scale-invariant loss whose minimizers on the sphere form ``Gamma``.
        theta0: start ``(D,)``; projected onto ``Gamma`` first (row 0 of the result) by the
            geometry (:meth:`theory.Dense.resolve`: ``Phi``, or Gauss-Newton).
        saveat: the slow times ``tau`` to save at (:class:`theory.SaveTimes`, or what
            :meth:`theory.SaveTimes.of` accepts: an end time or an array of times).
        form: ``"F1"`` (norm-balanced, default) or ``"F0"`` (its small-``|g|`` limit).
        geometry: :class:`theory.Dense` (``None``: ``Dense()``), :class:`theory.Lanczos` or
            :class:`theory.GaussNewton` (interpolating least squares); its ``rank`` is counted
            at the start unless given.
        solver: a diffrax solver (``None``: ``Tsit5()``); every step is followed by the geometry's
            retraction onto ``Gamma``.
        stepsize_controller: a diffrax controller (``None``: ``PIDController(rtol=1e-8,
            atol=1e-10)``) or :class:`theory.FixedSteps` (equally spaced saves; with
            :class:`theory.RK4` the projected RK4).
        degeneracy: the gap tolerance and what to do when ``lambda_1`` becomes degenerate
            (:class:`Degeneracy`; ``None``: ``Degeneracy()``, ``gap_tol=1e-3``, raise).
        max_steps: cap on adaptive steps.
        progress: ``progress(saves_done, saves)`` after each segment, ``True`` for a tqdm bar,
            or :class:`theory.Progress` (phases ``"projection"`` for a Gauss-Newton start, then
            ``"flow"``); ``None``: the active meter of an enclosing call, if any.
        budget: :class:`theory.Budget`; when it runs out,
            :class:`theory.core.errors.BudgetExceeded` with ``.partial`` the
            :class:`theory.flows.common.GammaSolution` of the saves reached. With neither the
            solve is one compiled call (bitwise as before); with either it runs in segments
            (docs/central_flow.md, "Progress and budgets").

    Returns:
        :class:`SharpnessFlowResult`.
    """
    check_form(form)
    geometry = Dense() if geometry is None else geometry_of(geometry)
    saveat = SaveTimes.of(saveat)
    solver, stepsize_controller = integrator(solver, stepsize_controller)
    degeneracy = Degeneracy() if degeneracy is None else degeneracy
    if not isinstance(degeneracy, Degeneracy):
        raise TypeError(f"degeneracy must be a theory.Degeneracy, got {degeneracy!r}")
    max_steps = check.positive_int(max_steps, "max_steps")
    meter = meter_for(progress, budget)
    with activated(meter):
        start, geometry = geometry.resolve(loss, theta0)
        field_ = SharpnessFlowField(loss, geometry, form)
        stop = _GapStop(field_, jnp.asarray(degeneracy.gap_tol, start.dtype))
        sol = solve_on_gamma(
            field_,
            geometry,
            loss,
            start,
            saveat,
            solver,
            stepsize_controller,
            stop,
            max_steps,
            meter,
        )
    ts, ys, q = _until_degenerate(sol.ts, sol.ys, _measure(field_, sol.ys), sol, degeneracy)
    config = {
        "form": form,
        "solver": type(solver).__name__,
        **controller_config(stepsize_controller),
        **geometry.config(),
        "gap_tol": degeneracy.gap_tol,
        "on_degenerate": degeneracy.action,
        "max_steps": max_steps,
    }
    return SharpnessFlowResult(
        tau=np.asarray(ts),
        theta=np.asarray(ys),
        sharpness=np.asarray(q.lam1),
        lambda2=np.asarray(q.lam2),
        g_norm=np.asarray(jnp.linalg.norm(q.g, axis=-1)),
        num_steps=sol.num_steps,
        num_evals=sol.num_evals,
        form=form,
        rank=geometry.known_rank(),
        config=config,
    )


def _until_degenerate(
    ts: np.ndarray, ys: Array, q: FlowQuantities, sol: Any, degeneracy: Degeneracy
) -> tuple[np.ndarray, Array, FlowQuantities]:
    """The saves before ``lambda_1`` becomes degenerate (or an error, per ``degeneracy``)."""
    lam1, lam2 = np.asarray(q.lam1), np.asarray(q.lam2)
    gap_tol = degeneracy.gap_tol
    low = (lam1 - lam2) / np.abs(lam1) < gap_tol
    if sol.stopped_at is None and not np.any(low):
        return ts, ys, q
    if np.any(low):
        last = int(np.argmax(low))
        where, l1, l2 = float(ts[last]), lam1[last], lam2[last]
    else:  # the event fired between saves: report the last save before it
        where, l1, l2 = sol.stopped_at, lam1[-1], lam2[-1]
    msg = (
        f"the top Hessian eigenvalue becomes degenerate along the flow near tau = "
        f"{where:.4g} (relative gap below {gap_tol:g}; at the last save before it "
        f"lambda_1 = {l1:.6g}, lambda_2 = {l2:.6g}): grad log lambda_1 is undefined there"
    )
    if degeneracy.action == "raise":
        raise DegenerateSharpnessError(msg)
    warnings.warn(
        msg + "; returning the solution before it", DegenerateSharpnessWarning, stacklevel=3
    )
    keep = ~low
    return ts[keep], ys[keep], jax.tree.map(lambda a: a[keep], q)
