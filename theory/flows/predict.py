"""Predict a GD+WD run from its initialization without running GD (docs/predict.md).

The three phases of docs/theory.md section 2, each replaced by something much cheaper than GD:

* **I (to the manifold).** While ``eta_eff S < 2`` the direction follows projected GD on the
  sphere with the step ``h_t = eta / |w_t|^2``. It is modelled by an ODE in the step count ``t``
  (continuous time, diffrax ``Tsit5`` with a PID controller), for the direction ``y`` and
  ``N = |w|^2``::

      dy/dt = -h P (g + (h / 2) H g)                                   (modified flow, default)
      dN/dt = -c N + eta (-dL(y)/dt) / (1 - h R / 2),           R = g.Hg / |g|^2

  with ``g = grad L(y)``, ``H = hess L(y)``, ``P`` the projector onto the sphere's tangent space,
  ``c = -2 log(1 - eta wd)`` (the exact per-step decay of ``N``).
  ``Phase1Model(equation="flow")`` drops the ``(h/2) H g`` term: the direction then lands exactly
  on ``Phi(w0)``, the limit of the spherical gradient flow (a re-timed gradient flow has the same
  limit). The ``(h/2) H g`` term is GD's
  first-order modified equation (backward error analysis): GD with step ``h`` follows the
  gradient flow of ``L + (h/4)|grad L|^2`` up to ``O(h^2)`` per unit time, so the landing point
  moves from ``Phi(w0)`` by ``O(h)`` along ``Gamma`` [standard; applied here]. The norm's source
  is the exact norm recursion's gradient term ``eta^2 |grad L(w_hat)|^2 / |w|^2 = eta h |g|^2``.
  Along a (re-timed) flow ``h |g|^2`` is the rate at which the loss falls (times
  ``1 + h R / 2`` along the modified flow), so the source adds ``eta (L_0 - L_I)`` in total; GD's
  steps add ``sum_t h |g_t|^2 = L_0 / (1 - h lambda / 2)`` on one quadratic mode
  ``x_{t+1} = (1 - h lambda) x_t``, hence the factor ``1 / (1 - h R / 2)`` [derived].
  ``Phase1Model(gradient_term="flow")`` drops the factor, ``"none"`` the source.
  The ODE stops when the gradient falls below ``switch`` (``1e-7`` in float64) or when
  ``eta lambda_1(y) / N`` reaches 2, whichever comes first. In the second case (ill-conditioned
  problems, e.g. networks, whose slow directions have not converged by the onset) there is no
  phase II: the onset is there, and phase III starts from the projection of ``y`` onto
  ``Gamma``.
* **II (norm decay).** Once ``|g| <= switch`` the direction is polished onto ``Gamma`` (dense
  Newton via :func:`theory.project_to_manifold`, or with the :class:`theory.GaussNewton`
  geometry the matrix-free Gauss-Newton projection) and frozen there: the gradient vanishes,
  so ``N`` decays exactly as ``(1 - eta wd)^{2 t}`` and ``eta_eff S`` grows until it reaches 2
  at the onset ``t_on = t_I + log(2 / e_I) / c`` (``e_I = eta S(theta_I) / N_I`` at the end of
  phase I).
* **III (Edge of Stability).** The direction follows the sharpness-reduction flow
  (:func:`theory.sharpness_flow`, form F1 by default) from ``theta_I`` on ``tau = 2 eta wd
  (t - t_on)``, and the norm is the EoS equilibrium ``|w|^2 = eta lambda_1(theta(tau)) / 2``
  (docs/theory.md section 3).

:func:`relaxation_cycle` gives the reduced model of the relaxation cycles that GD falls into
after the onset [derived in docs/predict.md]: with ``u = log(eta_eff S / 2)`` and ``z`` the
squared oscillation amplitude, ``du/dt = c - k z`` and ``d log z / dt = 4 u``
(``k = 4 + |g|^2``), a Lotka-Volterra system with the conserved quantity
``2 u^2 + k z - c log z``. Its time averages are the EoS equilibrium (``<u> = 0``,
``<z> = c / k``), which is what the prediction's phase III rows are.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.core import validate as check
from theory.core.curvature import linearize_grad
from theory.core.errors import BudgetExceeded
from theory.core.types import Array, LossFn
from theory.flows.central import _adaptive
from theory.flows.common import (
    AbstractGeometry,
    Dense,
    GaussNewton,
    Lanczos,
    SaveTimes,
    check_controller,
    controller_config,
    geometry_of,
)
from theory.flows.manifold import _switch
from theory.flows.monitor import Budget, Meter, Progress, activated, meter_for
from theory.flows.reduction import Degeneracy, SharpnessFlowResult, sharpness_flow

__all__ = [
    "Cycle",
    "Phase1Model",
    "Phase3Flow",
    "PredictResult",
    "gauss_newton_feet",
    "predict_from_init",
    "relaxation_cycle",
    "top_eigenvalues",
]

Phase1 = Literal["modified", "flow"]
GradientTerm = Literal["discrete", "flow", "none"]
# The defaults (module-level: immutable objects, built once).
_DENSE = Dense()
_DENSE_MAX_DIM = 2048  # top_eigenvalues: a dense Hessian up to this D, Lanczos above
_CONTROLLER = diffrax.PIDController(rtol=1e-8, atol=1e-10)


@dataclass(frozen=True)
class PredictResult:
    """A GD+WD run predicted from its initialization (NumPy arrays on the host).

    Rows are the steps ``0, record_every, 2 record_every, ...`` and always ``steps`` (as in
    :func:`theory.gd_wd`).

    Attributes:
        step: ``(n,)`` step of each row.
        theta: ``(n, D)`` predicted unit direction (phase III: the flow's point of ``Gamma``, the
            centre of GD's oscillation; NaN after a flow that stopped at a degeneracy).
        sharpness: ``(n,)`` spherical sharpness ``S(theta)``.
        norm: ``(n,)`` predicted ``|w_t|`` (phase III: the EoS equilibrium
            ``sqrt(eta lambda_1 / 2)``, GD's time average over a relaxation cycle).
        eos: ``(n,)`` ``eta_eff S = eta S / |w|^2`` (2 in phase III).
        phase: ``(n,)`` 1, 2 or 3.
        tau: ``(n,)`` slow time ``2 eta wd (t - onset)`` (negative before the onset).
        onset_step: the first integer step with ``eta_eff S >= 2`` (GD's ``onset_step``).
        onset: the continuous onset time ``t_on``.
        phase1_end: ``t_I``, where phase I's ODE stopped (the gradient fell below the switch,
            or, when ``phase1_end > onset``, the EoS came first).
        theta_landing: ``(D,)`` the point of ``Gamma`` where phase I lands (``Phi(w0)`` for
            ``Phase1Model(equation="flow")``).
        phi: ``(D,)`` ``Phi(w0)`` itself, the spherical gradient flow's limit (with
            ``Phase1Model(reference_phi=True)``, else ``None``).
        sharpness_landing: ``S(theta_landing)``.
        norm_sq_landing: ``|w|^2`` at ``t_I``.
        gradient_norm_sq: what phase I's gradient term added to ``|w|^2``, discounted to step 0
            (``N_I (1 - eta wd)^{-2 t_I} - |w_0|^2``).
        flow: the phase III :class:`theory.SharpnessFlowResult` (``None`` if ``steps < onset``).
        flow_end_step: last step the flow reached (``steps`` unless it stopped at a degeneracy).
        seconds: wall-clock seconds per part (``phase1``, ``phi``, ``rows``, ``flow``, ``total``;
            compilation included).
        counts: ``ode_steps`` (phase I, 6 gradient+HVP passes each), ``flow_steps``,
            ``flow_evals``.
        config: the settings.
    """

    step: np.ndarray
    theta: np.ndarray
    sharpness: np.ndarray
    norm: np.ndarray
    eos: np.ndarray
    phase: np.ndarray
    tau: np.ndarray
    onset_step: int
    onset: float
    phase1_end: float
    theta_landing: np.ndarray
    phi: np.ndarray | None
    sharpness_landing: float
    norm_sq_landing: float
    gradient_norm_sq: float
    flow: SharpnessFlowResult | None
    flow_end_step: int
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> dict[str, np.ndarray]:
        """The per-row arrays by name (for storing)."""
        return {
            "step": self.step,
            "theta": self.theta,
            "sharpness": self.sharpness,
            "norm": self.norm,
            "eos": self.eos,
            "phase": self.phase,
            "tau": self.tau,
        }


# --------------------------------------------------------------------------------------------
# The settings of phases I and III
# --------------------------------------------------------------------------------------------


class Phase1Model(eqx.Module):
    """Phase I's ODE in the step count (module docstring).

    Attributes:
        equation: ``"modified"`` (GD's first-order modified equation: lands where GD does to
            ``O(h^2)``) or ``"flow"`` (the spherical gradient flow: lands on ``Phi(w0)``).
        gradient_term: the norm's gradient source: ``"discrete"`` (the single-mode sum of GD's
            steps), ``"flow"`` (its continuous limit, ``eta (L_0 - L_I)`` in total), ``"none"``.
        stepsize_controller: an adaptive diffrax controller for the ODE (``Tsit5``).
        max_steps: cap on the ODE's steps.
        reference_phi: also compute ``Phi(w0)`` (the spherical gradient flow's limit; slow on
            ill-conditioned problems, where it can cost more than the prediction).
    """

    equation: Phase1 = eqx.field(static=True, default="modified")
    gradient_term: GradientTerm = eqx.field(static=True, default="discrete")
    stepsize_controller: diffrax.AbstractAdaptiveStepSizeController = _CONTROLLER
    max_steps: int = eqx.field(static=True, default=100_000)
    reference_phi: bool = eqx.field(static=True, default=False)

    def __check_init__(self) -> None:
        check.among([self.equation], "Phase1Model.equation", ("modified", "flow"))
        check.among([self.gradient_term], "Phase1Model.gradient_term", ("discrete", "flow", "none"))
        _controller(self.stepsize_controller, "Phase1Model.stepsize_controller")
        check.positive_int(self.max_steps, "Phase1Model.max_steps")
        if not isinstance(self.reference_phi, bool):
            raise TypeError(f"Phase1Model.reference_phi must be a bool, got {self.reference_phi!r}")

    def config(self) -> dict[str, Any]:
        """The settings for a result's ``config`` (the controller's prefixed ``ode_``)."""
        ctrl = {f"ode_{k}": v for k, v in controller_config(self.stepsize_controller).items()}
        return {
            "phase1": self.equation,
            "gradient_term": self.gradient_term,
            **ctrl,
            "ode_max_steps": self.max_steps,
            "reference_phi": self.reference_phi,
        }


class Phase3Flow(eqx.Module):
    """Phase III's sharpness-reduction flow (:func:`theory.sharpness_flow`).

    Attributes:
        form: ``"F1"`` (norm-balanced) or ``"F0"`` (leading order).
        stepsize_controller: an adaptive diffrax controller for the flow.
        gap_tol: the flow stops when ``(lambda_1 - lambda_2) / lambda_1 < gap_tol``.
        on_degenerate: ``"stop"`` (rows after a degenerate top eigenvalue are NaN) or
            ``"raise"``.
        saves: the flow is saved at this many equally spaced ``tau`` up to the last row and
            interpolated linearly (then renormalized) onto the rows: one compiled flow for
            every run length. The interpolation error is about ``(dtau^2 / 8) |theta''|``.
    """

    form: Literal["F0", "F1"] = eqx.field(static=True, default="F1")
    stepsize_controller: diffrax.AbstractAdaptiveStepSizeController = _CONTROLLER
    gap_tol: float = eqx.field(static=True, default=1e-3)
    on_degenerate: Literal["raise", "stop"] = eqx.field(static=True, default="stop")
    saves: int = eqx.field(static=True, default=201)

    def __check_init__(self) -> None:
        check.among([self.form], "Phase3Flow.form", ("F0", "F1"))
        _controller(self.stepsize_controller, "Phase3Flow.stepsize_controller")
        check.positive(self.gap_tol, "Phase3Flow.gap_tol")
        check.among([self.on_degenerate], "Phase3Flow.on_degenerate", ("raise", "stop"))
        if check.positive_int(self.saves, "Phase3Flow.saves") < 2:
            raise ValueError(f"Phase3Flow.saves must be >= 2, got {self.saves}")

    def config(self) -> dict[str, Any]:
        """The settings for a result's ``config`` (the controller's prefixed ``flow_``)."""
        ctrl = {f"flow_{k}": v for k, v in controller_config(self.stepsize_controller).items()}
        return {
            "form": self.form,
            **ctrl,
            "gap_tol": self.gap_tol,
            "on_degenerate": self.on_degenerate,
            "flow_saves": self.saves,
        }


def _controller(controller: Any, name: str) -> diffrax.AbstractAdaptiveStepSizeController:
    """``controller`` if it is an adaptive diffrax controller with positive tolerances."""
    kind = diffrax.AbstractAdaptiveStepSizeController
    return _adaptive(check_controller(controller, name), kind, name)


_PHASE1 = Phase1Model()
_PHASE3 = Phase3Flow()


# --------------------------------------------------------------------------------------------
# Phase I: the ODE in the step count
# --------------------------------------------------------------------------------------------


class _Phase1Field(eqx.Module):
    """``d(y, N)/dt`` of phase I (module docstring)."""

    loss: LossFn
    eta: Array
    decay: Array  # c = -2 log(1 - eta wd)
    modified: bool = eqx.field(static=True)
    term: str = eqx.field(static=True)

    def parts(self, y: Array, n_sq: Array) -> tuple[Array, Array, Array, Array]:
        """``(g, tangent H g, h, |g|^2)`` at the unit direction of ``y``."""
        u = y / jnp.linalg.norm(y)
        g, hvp = linearize_grad(self.loss, u)
        hg = hvp(g)
        hg = hg - u * jnp.vdot(u, hg)
        return g, hg, self.eta / n_sq, jnp.vdot(g, g)

    def __call__(self, t: Any, state: tuple[Array, Array], args: Any) -> tuple[Array, Array]:
        y, n_sq = state
        g, hg, h, g2 = self.parts(y, n_sq)
        dy = -h * (g + 0.5 * h * hg) if self.modified else -h * g
        if self.term == "none":
            source = jnp.zeros_like(n_sq)
        else:
            # eta times the rate at which the loss falls along y (|w|^2 gains eta (L_0 - L_I)
            # in total), times 1 / (1 - h R / 2) for GD's discrete steps ("discrete").
            ray = jnp.vdot(g, hg) / jnp.maximum(g2, jnp.finfo(g2.dtype).tiny)
            rate = g2 * (1.0 + 0.5 * h * ray) if self.modified else g2
            source = self.eta**2 * rate / n_sq
            if self.term == "discrete":
                source = source / jnp.maximum(1.0 - 0.5 * h * ray, 0.05)
        return dy, -self.decay * n_sq + source


@eqx.filter_jit
def _phase1(
    field_: _Phase1Field,
    controller: diffrax.AbstractStepSizeController,
    y0: Array,
    n0: Array,
    saves: Array,
    t_max: Array,
    switch: Array,
    max_steps: int,
    eos_stop: bool = True,
) -> tuple[Array, Array, Array, Array, Array, Array]:
    def settled(t: Array, state: tuple[Array, Array], args: Any, **kwargs: Any) -> Array:
        y, n_sq = state
        u = y / jnp.linalg.norm(y)
        landed = jnp.linalg.norm(jax.grad(field_.loss)(u)) <= switch
        if not eos_stop:
            return landed
        return landed | (field_.eta * _lambda1(field_.loss, _ONSET, u) / n_sq >= 2.0)

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field_),
        diffrax.Tsit5(),
        t0=jnp.zeros((), y0.dtype),
        t1=t_max,
        dt0=None,
        y0=(y0, n0),
        saveat=diffrax.SaveAt(ts=saves, t1=True),
        stepsize_controller=controller,
        event=diffrax.Event(settled),
        max_steps=max_steps,
        throw=False,
    )
    assert sol.ys is not None and sol.ts is not None
    ys, ns = sol.ys
    ok = sol.result == diffrax.RESULTS.successful
    fired = jnp.asarray(False) if sol.event_mask is None else jnp.asarray(sol.event_mask)
    return ys, ns, sol.ts, sol.stats["num_accepted_steps"], ok, fired


# --------------------------------------------------------------------------------------------
# Sharpness of the rows
# --------------------------------------------------------------------------------------------


def _lambda1(loss: LossFn, geometry: AbstractGeometry, u: Array) -> Array:
    """``lambda_1(hess L(u))`` through ``geometry``."""
    return geometry.top_eigs(loss, u, 1)[0][0]


# Phase I's per-step onset test, whatever the rows' geometry: at most 24 Lanczos iterations from
# the all-ones vector (the test runs once per ODE step; exact for D <= 24).
_ONSET = Lanczos(iters=24, seed=None)
_onset_lambda1 = eqx.filter_jit(_lambda1)


@eqx.filter_jit
def _lambda1_rows(loss: LossFn, geometry: AbstractGeometry, ys: Array) -> Array:
    return jax.lax.map(lambda y: _lambda1(loss, geometry, y / jnp.linalg.norm(y)), ys)


def _pad_pow2(ys: np.ndarray, minimum: int = 1) -> np.ndarray:
    """``ys`` with its last row repeated up to a power-of-two length, at least ``minimum``
    (fewer compiled shapes)."""
    n = len(ys)
    size = max(1 << max(n - 1, 0).bit_length(), minimum)
    return np.concatenate([ys, np.repeat(ys[-1:], size - n, axis=0)])


# Dense rows are padded to at least this many: one compiled shape serves the landing point,
# phase I's rows and a caller's rows (a dense eigvalsh map over 256 small Hessians is cheap).
_DENSE_MIN_ROWS = 256


def _lambda1_of(loss: LossFn, geometry: AbstractGeometry, ys: np.ndarray) -> np.ndarray:
    n = len(ys)
    if n == 0:
        return np.zeros((0,))
    padded = _pad_pow2(np.asarray(ys), _DENSE_MIN_ROWS if isinstance(geometry, Dense) else 1)
    return np.asarray(_lambda1_rows(loss, geometry, jnp.asarray(padded)))[:n]


def top_eigenvalues(
    loss: LossFn, points: Any, *, geometry: AbstractGeometry | None = None
) -> np.ndarray:
    """``lambda_1(hess L(w_hat))`` at each row of ``points`` ``(n, D)`` (normalized first).

    At a point of ``Gamma`` this is the spherical sharpness ``S``; at an iterate ``w_t``,
    ``eta lambda_1 / |w_t|^2`` is GD's ``eta_eff S``. ``geometry`` computes it (its
    ``top_eigs``): :class:`theory.Dense`, :class:`theory.Lanczos` or
    :class:`theory.GaussNewton`; by default ``Dense()`` up to ``D = 2048`` and ``Lanczos()``
    above. Rows are padded to a power of two (dense: at least 256), so a few compiled shapes
    serve every batch size.
    """
    ys = np.atleast_2d(np.asarray(points, dtype=float))
    if ys.ndim != 2 or not np.all(np.isfinite(ys)):
        raise ValueError(f"points must be a finite (n, D) array, got shape {ys.shape}")
    if geometry is None:
        geometry = _DENSE if ys.shape[1] <= _DENSE_MAX_DIM else Lanczos()
    return _lambda1_of(loss, geometry_of(geometry), ys)


def _no_loss(w: Array) -> Array:
    """Gauss-Newton's projection reads only the residuals; a loss is never evaluated."""
    raise AssertionError("the Gauss-Newton projection does not evaluate the loss")


def gauss_newton_feet(residual_fn: Callable[[Array], Array], points: Any) -> np.ndarray:
    """The Gauss-Newton projection (:func:`theory.gauss_newton_project`, the foot of the normal,
    within ``O(dist^2)`` of ``Phi``) of each row of ``points`` ``(n, D)``; rows padded to a
    power of two like :func:`top_eigenvalues`. A projection that does not converge returns its
    last iterate without raising (compare with care far from ``Gamma``)."""
    ys = np.atleast_2d(np.asarray(points, dtype=float))
    if ys.ndim != 2 or not np.all(np.isfinite(ys)):
        raise ValueError(f"points must be a finite (n, D) array, got shape {ys.shape}")
    n = len(ys)
    if n == 0:
        return ys
    feet = GaussNewton(residual_fn).project_rows(_no_loss, jnp.asarray(_pad_pow2(ys)))
    return np.asarray(feet)[:n]


def _interp_rows(ts: np.ndarray, ys: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Unit vectors interpolated linearly in ``t`` between the saves, renormalized."""
    out = np.stack([np.interp(at, ts, ys[:, j]) for j in range(ys.shape[1])], axis=1)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _saves(rows: np.ndarray) -> np.ndarray:
    """The rows' steps, extended past the last one to a power-of-two length (fewer compiled
    shapes; the ODE's event comes before the extra saves are used)."""
    size = 1 << max(len(rows) - 1, 0).bit_length()
    extra = rows[-1] + 1.0 + np.arange(size - len(rows), dtype=float)
    return np.concatenate([rows.astype(float), extra])


def _row_steps(steps: int, record_every: int) -> np.ndarray:
    out = np.arange(0, steps + 1, record_every)
    return out if out[-1] == steps else np.append(out, steps)


# --------------------------------------------------------------------------------------------
# The prediction
# --------------------------------------------------------------------------------------------


class _PhaseI(NamedTuple):
    ys: np.ndarray  # (m, D) the saved directions, then the ODE's terminal state
    ns: np.ndarray  # (m,) |w|^2 at the same times
    t1: float  # where the ODE stopped
    ode_steps: int
    n0: float  # |w0|^2


def _run_phase1(
    loss: LossFn, w0: Array, eta: float, decay: float, rows: np.ndarray, model: Phase1Model
) -> _PhaseI:
    """Phase I's ODE until the gradient falls below the switch or the EoS comes first."""
    dtype = w0.dtype
    switch = _switch(dtype)[0]
    n0 = float(jnp.vdot(w0, w0))
    field_ = _Phase1Field(
        loss, jnp.asarray(eta, dtype), jnp.asarray(decay, dtype),
        model.equation == "modified", model.gradient_term,
    )  # fmt: skip
    ys_j, ns_j, ts_j, n_ode, ok, fired = _phase1(
        field_, model.stepsize_controller, w0 / jnp.sqrt(n0), jnp.asarray(n0, dtype),
        jnp.asarray(_saves(rows), dtype), jnp.asarray(1e15, dtype), jnp.asarray(switch, dtype),
        model.max_steps,
    )  # fmt: skip
    ys, ns, ts = np.asarray(ys_j), np.asarray(ns_j), np.asarray(ts_j)
    # With an event, diffrax stores the saves before it and then the terminal state, compactly,
    # followed by inf: the terminal state is the last finite entry.
    last = int(np.flatnonzero(np.isfinite(ts))[-1])
    ys, ns, t1 = ys[: last + 1], ns[: last + 1], float(ts[last])
    if not bool(fired):
        why = "" if bool(ok) else f" (the ODE stopped after {int(n_ode)} steps; raise max_steps)"
        raise RuntimeError(
            f"phase I did not reach the manifold{why}: the gradient is still above {switch:g} "
            f"at step {t1:.4g}"
        )
    return _PhaseI(ys, ns, t1, int(n_ode), n0)


class _Landing(NamedTuple):
    theta: np.ndarray  # (D,) the point of Gamma where phase I lands
    phi: Array | None  # Phi(w0) (reference_phi) or None
    sharpness: float  # S(theta)
    norm_sq: float  # |w|^2 at t_I
    onset: float  # t_on


def _land(
    loss: LossFn, w0: Array, eta: float, decay: float, p1: _PhaseI,
    geometry: AbstractGeometry, model: Phase1Model,
) -> _Landing:  # fmt: skip
    """Land on ``Gamma`` (``Phi(w0)`` too for reference) and place the onset ``t_on``."""
    y_end = jnp.asarray(p1.ys[-1])
    n_land = float(p1.ns[-1])
    eos_end = eta * float(_onset_lambda1(loss, _ONSET, y_end / jnp.linalg.norm(y_end))) / n_land
    early = eos_end >= 2.0  # the EoS came first: phase I has not finished at the onset
    landing = geometry.project(loss, y_end)
    phi: Array | None = None
    if model.reference_phi:
        phi = landing if model.equation == "flow" and not early else _phi(loss, w0, geometry)
    theta = np.asarray(landing)
    s_land = float(_lambda1_of(loss, geometry, theta[None])[0])
    if not early:
        return _Landing(
            theta, phi, s_land, n_land, p1.t1 + math.log(2.0 / (eta * s_land / n_land)) / decay
        )
    # eta_eff S grows like exp(c t) near the onset (the gradient's source is small there):
    # back from the event to where it crossed 2.
    t_on = p1.t1 - math.log(eos_end / 2.0) / decay
    if t_on <= 0:
        raise ValueError(
            f"eta_eff * S = {eta * s_land / n_land:.4g} >= 2 at the start: the run begins at "
            "the Edge of Stability, so there is no phase I or II to predict; start with a "
            "larger |w0| (smaller eta_eff)"
        )
    return _Landing(theta, phi, s_land, n_land, t_on)


def _sharpness_flow(
    loss: LossFn, start: np.ndarray, tau: np.ndarray, geometry: AbstractGeometry,
    model: Phase3Flow,
) -> SharpnessFlowResult:  # fmt: skip
    """Phase III: :func:`theory.sharpness_flow` from the landing point, on ``model``'s
    settings and the prediction's geometry."""
    return sharpness_flow(
        loss,
        jnp.asarray(start),
        SaveTimes(ts=tau),
        form=model.form,
        geometry=geometry,
        stepsize_controller=model.stepsize_controller,
        degeneracy=Degeneracy(gap_tol=model.gap_tol, action=model.on_degenerate),
    )


def _phase3(
    loss: LossFn, rows: np.ndarray, tau: np.ndarray, land: _Landing, geometry: AbstractGeometry,
    model: Phase3Flow, eta: float, out: dict[str, np.ndarray],
) -> tuple[SharpnessFlowResult | None, int]:  # fmt: skip
    """Fill the phase III rows of ``out`` from the flow; ``(flow, last step it reached)``."""
    in3 = rows >= land.onset
    if not in3.any():
        return None, int(rows[-1])
    grid = np.linspace(0.0, float(tau[in3][-1]), model.saves)
    if grid[-1] <= 0:
        grid = np.array([0.0, 1e-12])
    flow = _sharpness_flow(loss, land.theta, grid, geometry, model)
    idx = np.flatnonzero(in3 & (tau <= flow.tau[-1]))
    out["theta"][idx] = _interp_rows(flow.tau, flow.theta, tau[idx])
    out["sharpness"][idx] = np.interp(tau[idx], flow.tau, flow.sharpness)
    out["norm_sq"][idx] = eta * out["sharpness"][idx] / 2.0
    out["phase"][np.flatnonzero(in3)] = 3
    return flow, int(rows[idx[-1]]) if idx.size else math.ceil(land.onset)


def predict_from_init(
    loss: LossFn,
    w0: Array,
    *,
    eta: float,
    wd: float,
    steps: int,
    record_every: int = 1,
    geometry: AbstractGeometry = _DENSE,
    phase1: Phase1Model = _PHASE1,
    phase3: Phase3Flow = _PHASE3,
    progress: Progress | Callable[[int, int], None] | bool | None = None,
    budget: Budget | None = None,
) -> PredictResult:
    """Predict the EoS onset and the trajectory of GD+WD from ``w0`` without running GD.

    Phase I is an ODE in the step count (to the manifold, with the norm), phase II the closed
    form ``|w_t|^2 = (1 - eta wd)^{2 (t - t_I)} |w_{t_I}|^2``, phase III the sharpness-reduction
    flow on ``tau = 2 eta wd (t - t_on)`` with the EoS equilibrium norm (module docstring;
    docs/predict.md states the approximations).

    Args:
        loss: scale-invariant loss ``(D,) -> ()`` (one group).
        w0: the initialization ``(D,)``; its norm sets the initial effective learning rate.
        eta, wd: GD's learning rate and weight decay (``wd > 0``: without it there is no
            phase II and no EoS), ``eta * wd < 1``.
        steps: the run to predict; rows at ``0, record_every, ...`` and ``steps``.
        geometry: how phase I's end is put on ``Gamma``, the rows' sharpness computed and the
            flow run: :class:`theory.Dense` (default: dense Newton and the dense flow; small
            ``D``), :class:`theory.Lanczos`, or :class:`theory.GaussNewton` (interpolating least
            squares: the Gauss-Newton projection and the least-squares flow; networks). Its
            ``rank`` is the codimension of ``Gamma`` (``None``: counted by the flow).
        phase1: phase I's ODE, :class:`Phase1Model`.
        phase3: phase III's flow, :class:`Phase3Flow`.
        progress: :class:`theory.Progress` (or ``progress(done, total)``, or ``True`` for a
            tqdm bar): the phases ``"phase I model"``, ``"projection"`` (with the Gauss-Newton
            iterations), ``"rows"`` and ``"flow"`` (its save intervals) are announced in turn.
        budget: :class:`theory.Budget` for the whole call (steps: phase I's ODE steps, the
            Gauss-Newton iterations and the flow's steps), checked between phases and between
            the flow's segments; :class:`theory.BudgetExceeded` carries in ``.partial`` a dict of
            the finished parts (``"phase1"``, ``"landing"``, ``"rows"``, and the inner call's
            own partial result under its phase name).

    Returns:
        :class:`PredictResult` (``config`` records every setting).

    Raises:
        ValueError: for bad arguments, or when the run is already at the EoS when phase I ends
            (``eta_eff S >= 2`` on landing: the phases do not separate).
        TypeError: a geometry or phase setting that is not such an object.
        RuntimeError: when phase I does not settle within ``phase1.max_steps`` ODE steps.
    """
    t_start = time.perf_counter()
    eta, wd, steps, record_every = _check_run(eta, wd, steps, record_every)
    w0, _ = check.flat_vector(w0, "w0")
    geometry = geometry_of(geometry)
    phase1 = _instance(phase1, Phase1Model, "phase1")
    phase3 = _instance(phase3, Phase3Flow, "phase3")
    decay = -2.0 * math.log1p(-eta * wd)
    rows = _row_steps(steps, record_every)
    clock = _Clock()
    meter, done = meter_for(progress, budget), dict[str, Any]()
    with activated(meter), _keep_finished(done):
        _announce(meter, "phase I model")
        p1 = _run_phase1(loss, w0, eta, decay, rows, phase1)
        done["phase1"] = p1
        _finished(meter, done, "phase I", p1.ode_steps)
        clock.lap("phase1")
        _announce(meter, "projection")
        land = _land(loss, w0, eta, decay, p1, geometry, phase1)
        done["landing"] = land
        _finished(meter, done, "projection")
        clock.lap("phi")
        _announce(meter, "rows")
        out = _rows_before(loss, geometry, rows, p1, land, decay)
        done["rows"] = out
        _finished(meter, done, "rows")
        clock.lap("rows")
        tau = 2.0 * eta * wd * (rows - land.onset)
        flow, flow_end = _phase3(loss, rows, tau, land, geometry, phase3, eta, out)
        clock.lap("flow")
    clock.seconds["total"] = time.perf_counter() - t_start
    config = {
        "eta": eta, "wd": wd, "steps": steps, "record_every": record_every,
        **geometry.config(), "least_squares": isinstance(geometry, GaussNewton),
        **phase1.config(), **phase3.config(),
    }  # fmt: skip
    norm_sq = out.pop("norm_sq")
    return PredictResult(
        step=rows, tau=tau, norm=np.sqrt(norm_sq), eos=eta * out["sharpness"] / norm_sq, **out,
        onset_step=math.ceil(land.onset), onset=land.onset, phase1_end=p1.t1,
        theta_landing=land.theta, phi=None if land.phi is None else np.asarray(land.phi),
        sharpness_landing=land.sharpness, norm_sq_landing=land.norm_sq,
        gradient_norm_sq=land.norm_sq * math.exp(decay * p1.t1) - p1.n0,
        flow=flow, flow_end_step=flow_end, seconds=clock.seconds, config=config,
        counts={
            "ode_steps": p1.ode_steps,
            "flow_steps": 0 if flow is None else flow.num_steps,
            "flow_evals": 0 if flow is None else flow.num_evals,
        },
    )  # fmt: skip


def _announce(meter: Meter | None, name: str) -> None:
    if meter is not None:
        meter.phase(name, 1)


def _finished(meter: Meter | None, done: dict[str, Any], name: str, steps: int = 0) -> None:
    """A phase of :func:`predict_from_init` is done: report it, charge ``steps``, check the
    budget (``.partial``: the finished parts so far)."""
    if meter is not None:
        meter.update(1, steps=steps)
        meter.check(f"after {name}", lambda: dict(done))


@contextlib.contextmanager
def _keep_finished(done: dict[str, Any]) -> Iterator[None]:
    """A budget that runs out inside a nested call (the projection, the flow) raises with
    ``.partial`` the finished parts of :func:`predict_from_init`, the nested call's own partial
    result added under its phase name."""
    try:
        yield
    except BudgetExceeded as err:
        if isinstance(err.partial, dict) and err.partial.keys() <= done.keys():
            raise
        parts = {**done, err.phase or "inner": err.partial}
        raise BudgetExceeded(str(err), parts, phase=err.phase, spent=err.spent) from err


def _check_run(eta: Any, wd: Any, steps: Any, record_every: Any) -> tuple[float, float, int, int]:
    eta = check.positive(eta, "eta")
    wd = check.positive(wd, "wd")
    if eta * wd >= 1:
        raise ValueError(f"eta * wd must be < 1, got eta={eta}, wd={wd}")
    return (
        eta,
        wd,
        check.positive_int(steps, "steps"),
        check.positive_int(record_every, "record_every"),
    )


def _instance(value: Any, kind: type, name: str) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be a theory.{kind.__name__}, got {value!r}")
    return value


class _Clock:
    """Wall-clock seconds per part (compilation included)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._tic = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self._tic = now - self._tic, now


def _rows_before(
    loss: LossFn, geometry: AbstractGeometry, rows: np.ndarray, p1: _PhaseI, land: _Landing,
    decay: float,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The rows of phases I and II (phase III's are NaN, filled by :func:`_phase3`)."""
    n_rows, dim = len(rows), p1.ys.shape[1]
    theta = np.full((n_rows, dim), np.nan)
    sharp = np.full(n_rows, np.nan)
    norm_sq = np.full(n_rows, np.nan)
    phase = np.zeros(n_rows, np.int64)
    in1 = rows < min(p1.t1, land.onset)
    m = int(in1.sum())
    theta[in1] = p1.ys[:m] / np.linalg.norm(p1.ys[:m], axis=1)[:, None]
    norm_sq[in1] = p1.ns[:m]
    sharp[in1] = _lambda1_of(loss, geometry, theta[in1])
    phase[in1] = 1
    in2 = (rows >= p1.t1) & (rows < land.onset)
    theta[in2] = land.theta
    sharp[in2] = land.sharpness
    norm_sq[in2] = land.norm_sq * np.exp(-decay * (rows[in2] - p1.t1))
    phase[in2] = 2
    return {"theta": theta, "sharpness": sharp, "norm_sq": norm_sq, "phase": phase}


def _phi(loss: LossFn, w0: Array, geometry: AbstractGeometry) -> Array:
    """``Phi(w0)``: the geometry's projection; for least squares the plain flow ODE first, then
    the Gauss-Newton polish (the foot of the normal from ``w0`` itself is not ``Phi``)."""
    if not isinstance(geometry, GaussNewton):
        return geometry.project(loss, w0)
    field_ = _Phase1Field(
        loss, jnp.asarray(1.0, w0.dtype), jnp.asarray(0.0, w0.dtype), False, "none"
    )
    n0 = jnp.vdot(w0, w0)
    ys, _, ts, _, _, _ = _phase1(
        field_, _CONTROLLER, w0 / jnp.sqrt(n0), jnp.asarray(1.0, w0.dtype),
        jnp.zeros((1,), w0.dtype), jnp.asarray(1e12, w0.dtype),
        jnp.asarray(_switch(w0.dtype)[0], w0.dtype), 100_000, False,
    )  # fmt: skip
    last = int(np.flatnonzero(np.isfinite(np.asarray(ts)))[-1])
    return geometry.project(loss, ys[last])


# --------------------------------------------------------------------------------------------
# The relaxation cycle's reduced model
# --------------------------------------------------------------------------------------------


class Cycle(NamedTuple):
    """An orbit of the reduced model of the relaxation cycle (module docstring).

    Attributes:
        period: steps per cycle.
        u_max: the largest ``u = log(eta_eff S / 2)`` (the smallest is ``-u_max``).
        z_min, z_max: the extremes of the squared amplitude ``z``.
        z_star: the equilibrium ``c / k`` (the time average of ``z``).
        energy: ``2 u^2 + k z - c log z`` on the orbit.
    """

    period: float
    u_max: float
    z_min: float
    z_max: float
    z_star: float
    energy: float


def _root(fn: Callable[[float], float], lo: float, hi: float) -> float:
    """A root of ``fn`` in ``[lo, hi]`` by bisection (``fn(lo)`` and ``fn(hi)`` differ in sign)."""
    f_lo = fn(lo)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        f_mid = fn(mid)
        if (f_mid > 0) == (f_lo > 0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def relaxation_cycle(
    eta_wd: float,
    *,
    u_max: float | None = None,
    z_min: float | None = None,
    g_norm: float = 0.0,
    nodes: int = 200,
) -> Cycle:
    """The orbit of the reduced relaxation-cycle model through a given amplitude [derived].

    ``du/dt = c - k z``, ``d log z / dt = 4 u`` with ``c = -2 log(1 - eta wd)`` and
    ``k = 4 + |g|^2`` (docs/predict.md). Give exactly one of ``u_max`` (the swing of
    ``log(eta_eff S / 2)``) or ``z_min`` (the smallest squared amplitude, e.g. the noise floor at
    the onset). The period is ``(1/sqrt 2) * integral dy / sqrt(E - k e^y + c y)`` over
    ``y = log z`` between the orbit's extremes, by Gauss-Legendre quadrature after
    ``y = m + r sin(phi)`` (which removes the endpoint singularities). Small orbits have the
    period ``pi / sqrt(c)`` (about ``pi / sqrt(2 eta wd)``).
    """
    ewd = check.positive(eta_wd, "eta_wd")
    if ewd >= 1:
        raise ValueError(f"eta_wd must be < 1, got {ewd}")
    g_norm = check.nonnegative(g_norm, "g_norm")
    nodes = check.positive_int(nodes, "nodes")
    if (u_max is None) == (z_min is None):
        raise ValueError("give exactly one of u_max and z_min")
    c = -2.0 * math.log1p(-ewd)
    k = 4.0 + g_norm**2
    z_star = c / k
    y_star = math.log(z_star)

    def rise(x: float) -> float:  # k e^y - c y above its minimum at y_star, x = y - y_star
        return c * (math.expm1(x) - x)

    if z_min is not None:
        z_min = check.positive(z_min, "z_min")
        if z_min >= z_star:
            raise ValueError(f"z_min must be below the equilibrium {z_star:.4g}, got {z_min}")
        delta = rise(math.log(z_min) - y_star)
    else:
        u_max = check.positive(u_max, "u_max")
        delta = 2.0 * u_max**2
    # Bracket each root of rise(x) = delta on its side of 0.
    width = 1.0
    while rise(-width) < delta:
        width *= 2.0
    x_lo = _root(lambda x: rise(x) - delta, -width, 0.0)
    width = 1.0
    while rise(width) < delta:
        width *= 2.0
    x_hi = _root(lambda x: rise(x) - delta, 0.0, width)
    mid, rad = 0.5 * (x_lo + x_hi), 0.5 * (x_hi - x_lo)
    nodes_x, wts = np.polynomial.legendre.leggauss(nodes)
    phi = 0.5 * math.pi * nodes_x
    x = mid + rad * np.sin(phi)
    gap = np.maximum(delta - c * (np.expm1(x) - x), np.finfo(float).tiny)
    integrand = rad * np.cos(phi) / np.sqrt(gap)
    period = float(0.5 * math.pi * np.sum(wts * integrand) / math.sqrt(2.0))
    energy = k * z_star - c * y_star + delta
    return Cycle(
        period=period,
        u_max=math.sqrt(delta / 2.0),
        z_min=z_star * math.exp(x_lo),
        z_max=z_star * math.exp(x_hi),
        z_star=z_star,
        energy=energy,
    )
