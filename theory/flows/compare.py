"""GD+WD against the sharpness-reduction flow on matched time (docs/theory.md section 3).

A GD run at the Edge of Stability is compared with the flow started at ``Phi`` of the direction
at a chosen step ``t0`` (the EoS onset, or 0 for a run started on the EoS equilibrium), on the
slow time ``tau(t) = 2 eta wd (t - t0)``:

* ``|Phi(w_hat_t) - theta(tau)|``: where the projected iterate is against the flow;
* ``|w_hat_t - theta(tau)|``: the direction itself (includes the oscillation amplitude);
* the angle between ``Phi(w_hat_t)`` and ``theta(tau)``;
* the sharpness along both: ``lambda_1(Phi(w_hat_t))`` and ``lambda_1(theta(tau))``.

:func:`eos_equilibrium_start` builds the start that docs/theory.md calls the EoS equilibrium:
``|w|^2 = eta lambda_1 / 2`` and amplitude ``A = sqrt(eta wd / 2 / (1 + |g|^2/4))`` along
``v_1`` (the (F1) amplitude; ``sqrt(eta wd / 2)`` for (F0)) [derived]; :func:`ire_equilibrium_start`
the same for exact IRE (docs/ire.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.analysis.trajectory import angle_between
from theory.core import validate as check
from theory.core.types import Array, LossFn
from theory.flows.common import AbstractGeometry, Dense, SaveTimes, geometry_of
from theory.flows.reduction import (
    Form,
    SharpnessFlowField,
    SharpnessFlowResult,
    check_form,
    sharpness_flow,
)
from theory.problems.analytic import AnalyticProblem


def eos_equilibrium_start(
    loss: LossFn,
    theta: Array,
    *,
    eta: float,
    wd: float,
    form: Form = "F1",
    geometry: AbstractGeometry | None = None,
) -> Array:
    """A GD+WD start on the EoS equilibrium near the projection of ``theta`` onto ``Gamma``.

    Returns ``w0 = sqrt(eta lambda_1 / 2) * normalize(theta_Gamma + A v_1)`` with
    ``A^2 = (eta wd / 2) / (1 + |g|^2 / 4)`` (form F1) or ``eta wd / 2`` (F0), where
    ``theta_Gamma`` is the geometry's projection of ``theta`` and ``lambda_1, v_1, g`` come from
    the geometry's frame there (:class:`theory.Dense`, the default, for small ``D``;
    :class:`theory.GaussNewton` for interpolating least squares at network scale).
    """
    eta, wd = check.positive(eta, "eta"), check.positive(wd, "wd")
    check_form(form)
    geometry = Dense() if geometry is None else geometry_of(geometry)
    th, geometry = geometry.resolve(loss, theta)
    field_ = SharpnessFlowField(loss, geometry, form)
    return _equilibrium_point(field_, th, jnp.asarray(eta * wd, th.dtype), eta)


def eos_amplitude_sq(eta_wd: Any, g_sq: Any, form: str = "F1") -> Any:
    """[derived, docs/theory.md section 3] The squared amplitude ``x^2`` of the direction's
    period-2 oscillation on the EoS equilibrium: ``(eta wd / 2) / (1 + |g|^2 / 4)`` (form F1,
    ``|g|`` the Riemannian gradient of ``log lambda_1`` at ``Phi``) or ``eta wd / 2`` (F0).

    Plain arithmetic: NumPy arrays, JAX arrays (traced too) and floats broadcast as usual.
    """
    if form == "F1":
        return (eta_wd / 2) / (1 + 0.25 * g_sq)
    if form == "F0":
        return eta_wd / 2 + 0 * g_sq
    raise ValueError(f"form must be 'F0' or 'F1', got {form!r}")


@eqx.filter_jit
def _equilibrium_point(field_: SharpnessFlowField, th: Array, eta_wd: Array, eta: float) -> Array:
    """``eos_equilibrium_start``'s point from ``Phi(theta)`` (compiled: the field's Lanczos and
    gradient passes would otherwise run op by op)."""
    q = field_.quantities(th)
    amp_sq = eos_amplitude_sq(eta_wd, jnp.vdot(q.g, q.g), field_.form)
    u = th + jnp.sqrt(amp_sq) * q.v1
    return jnp.sqrt(eta * q.lam1 / 2) * u / jnp.linalg.norm(u)


def ire_equilibrium_start(
    prob: AnalyticProblem,
    theta: Array,
    *,
    eta: float,
    wd: float,
    a: float = 1.0,
    b: float = 1.0,
) -> Array:
    """[derived, docs/ire.md] The EoS equilibrium of exact IRE next to ``theta`` on ``Gamma``.

    ``|w|^2 = eta lambda_1 / 2`` and amplitude ``A^2 = (eta wd / 2) / (1 + a |g|^2 / (4 b))``
    along ``v_1``, with IRE's gains ``(a, b)`` (:func:`theory.optim.ire.flow_gains`); where that
    has no
    solution (``1 + a |g|^2 / (4 b) <= 0``), GD+WD's (F1) amplitude, ``a = b = 1``. Uses the
    problem's closed forms (``lambda1``, ``top_eigvec``, ``riemannian_grad_log_lambda1``); with
    ``a = b = 1`` it is :func:`eos_equilibrium_start` (form F1) in closed form.
    """
    eta, wd = check.positive(eta, "eta"), check.positive(wd, "wd")
    lam1, v1 = prob.lambda1(theta), prob.top_eigvec(theta)
    g = prob.riemannian_grad_log_lambda1(theta)
    g_sq = jnp.vdot(g, g)
    den = 1 + a * g_sq / (4 * b)
    amp_sq = (eta * wd / 2) / jnp.where(den > 0, den, 1 + g_sq / 4)
    u = theta + jnp.sqrt(amp_sq) * v1
    return jnp.sqrt(eta * lam1 / 2) * u / jnp.linalg.norm(u)


@dataclass(frozen=True)
class ComparisonResult:
    """GD rows against the flow on matched time (NumPy arrays, one entry per GD row used)."""

    step: np.ndarray
    tau: np.ndarray
    phi: np.ndarray  # Phi(w_hat_t), (n, D)
    flow: np.ndarray  # theta(tau), (n, D)
    dist_phi: np.ndarray
    dist_w: np.ndarray
    angle: np.ndarray
    sharpness_phi: np.ndarray
    sharpness_flow: np.ndarray
    flow_result: SharpnessFlowResult

    def at(self, tau: float) -> dict[str, float]:
        """The row whose ``tau`` is closest to the given one."""
        i = int(np.argmin(np.abs(self.tau - tau)))
        return {
            "tau": float(self.tau[i]),
            "dist_phi": float(self.dist_phi[i]),
            "dist_w": float(self.dist_w[i]),
            "angle": float(self.angle[i]),
        }


def compare_with_flow(
    loss: LossFn,
    step: np.ndarray,
    w: np.ndarray,
    *,
    eta: float,
    wd: float,
    t0: int,
    geometry: AbstractGeometry | None = None,
    **flow_options: Any,
) -> ComparisonResult:
    """Compare recorded GD iterates with the flow started at the projection of ``w_hat_{t0}``.

    Args:
        loss: the scale-invariant loss.
        step, w: recorded steps ``(n,)`` and iterates ``(n, D)``; rows before ``t0`` are ignored
            and ``t0`` must be one of the recorded steps.
        eta, wd: the run's hyperparameters (they set ``tau = 2 eta wd (t - t0)``).
        t0: the step where the flow starts (EoS onset, or 0 from the equilibrium).
        geometry: projects every row onto ``Gamma`` (:class:`theory.Dense`, the default: ``Phi``;
            :class:`theory.GaussNewton`: the foot of the normal, ``O(dist^2)`` from ``Phi``,
            at network scale) and is the flow's geometry.
        flow_options: the rest of :func:`theory.sharpness_flow`'s settings (``form``,
            ``solver``, ``stepsize_controller``, ``degeneracy``, ``max_steps``).
    """
    eta, wd = check.positive(eta, "eta"), check.positive(wd, "wd")
    geometry = Dense() if geometry is None else geometry_of(geometry)
    step, w = np.asarray(step), np.asarray(w)
    if w.ndim != 2 or w.shape[0] != step.shape[0]:
        raise ValueError(f"w must have shape (len(step), D) = ({step.shape[0]}, D), got {w.shape}")
    idx = np.flatnonzero(step >= t0)
    if idx.size == 0 or step[idx[0]] != t0:
        raise ValueError(f"t0={t0} must be one of the recorded steps")
    rows = w[idx]
    tau = 2.0 * eta * wd * (step[idx] - t0).astype(np.float64)
    phi = np.asarray(geometry.project_rows(loss, jnp.asarray(rows)))
    flow = sharpness_flow(
        loss, jnp.asarray(phi[0]), SaveTimes(ts=tau), geometry=geometry, **flow_options
    )
    n = len(flow.tau)  # shorter if the flow stopped at a degeneracy
    phi, rows, tau = phi[:n], rows[:n], tau[:n]
    w_hat = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    resolved = geometry.with_rank(flow.rank)
    field_ = SharpnessFlowField(loss, resolved, flow.form)
    sharp_phi = np.asarray(_lam1_rows(field_, jnp.asarray(phi)))
    return ComparisonResult(
        step=step[idx][:n],
        tau=tau,
        phi=phi,
        flow=flow.theta,
        dist_phi=np.linalg.norm(phi - flow.theta, axis=1),
        dist_w=np.linalg.norm(w_hat - flow.theta, axis=1),
        angle=angle_between(phi, flow.theta),
        sharpness_phi=sharp_phi,
        sharpness_flow=flow.sharpness,
        flow_result=flow,
    )


@eqx.filter_jit
def _lam1_rows(field_: SharpnessFlowField, rows: Array) -> Array:
    """``lambda_1`` of the flow's geometry at each row (one compiled map)."""
    return jax.vmap(lambda y: field_.quantities(y).lam1)(rows)
