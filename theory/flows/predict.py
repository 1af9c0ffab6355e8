"""Predict a GD+WD run from its initialization without running GD (docs/predict.md).

The three phases of docs/theory.md section 2, each replaced by something much cheaper than GD:

* **I (to the manifold).** While ``eta_eff S < 2`` the direction follows projected GD on the
  sphere with the step ``h_t = eta / |w_t|^2``. It is modelled by an ODE in the step count ``t``
  (continuous time, diffrax ``Tsit5`` with a PID controller), for the direction ``y`` and
  ``N = |w|^2``::

      dy/dt = -h P (g + (h / 2) H g)                                   (modified flow, default)
      dN/dt = -c N + (eta / h) (-dL(y)/dt) / (1 - h R / 2),    R = g.Hg / |g|^2

  with ``g = grad L(y)``, ``H = hess L(y)``, ``P`` the projector onto the sphere's tangent space,
  ``c = -2 log(1 - eta wd)`` (the exact per-step decay of ``N``). ``phase1="flow"`` drops the
  ``(h/2) H g`` term: the direction then lands exactly on ``Phi(w0)``, the limit of the spherical
  gradient flow (a re-timed gradient flow has the same limit). The ``(h/2) H g`` term is GD's
  first-order modified equation (backward error analysis): GD with step ``h`` follows the
  gradient flow of ``L + (h/4)|grad L|^2`` up to ``O(h^2)`` per unit time, so the landing point
  moves from ``Phi(w0)`` by ``O(h)`` along ``Gamma`` [standard; applied here]. The norm's source
  is the exact norm recursion's gradient term ``eta^2 |grad L(w_hat)|^2 / |w|^2 = eta h |g|^2``.
  Along a (re-timed) flow ``h |g|^2`` is the rate at which the loss falls (times
  ``1 + h R / 2`` along the modified flow), so the source adds ``eta (L_0 - L_I)`` in total; GD's
  steps add ``sum_t h |g_t|^2 = L_0 / (1 - h lambda / 2)`` on one quadratic mode
  ``x_{t+1} = (1 - h lambda) x_t``, hence the factor ``1 / (1 - h R / 2)`` [derived].
  ``gradient_term="flow"`` drops the factor, ``"none"`` the source.
  The ODE stops when the gradient falls below ``switch`` (``1e-7`` in float64) or when
  ``eta lambda_1(y) / N`` reaches 2, whichever comes first. In the second case (ill-conditioned
  problems, e.g. networks, whose slow directions have not converged by the onset) there is no
  phase II: the onset is there, and phase III starts from the projection of ``y`` onto
  ``Gamma``.
* **II (norm decay).** Once ``|g| <= switch`` the direction is polished onto ``Gamma`` (dense
  Newton via :func:`theory.project_to_manifold`, or with ``residual_fn`` the matrix-free
  Gauss-Newton projection) and frozen there: the gradient vanishes, so ``N`` decays exactly as
  ``(1 - eta wd)^{2 t}`` and ``eta_eff S`` grows until it reaches 2 at the onset
  ``t_on = t_I + log(2 / e_I) / c`` (``e_I = eta S(theta_I) / N_I`` at the end of phase I).
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

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.core import linalg
from theory.core import validate as check
from theory.core.curvature import linearize_grad
from theory.core.lanczos import lanczos
from theory.core.types import Array, LossFn
from theory.flows.common import Dense, GaussNewton, SaveTimes
from theory.flows.gauss_newton import gauss_newton_project
from theory.flows.manifold import _switch, project_to_manifold
from theory.flows.reduction import Degeneracy, SharpnessFlowResult, sharpness_flow

__all__ = [
    "Cycle",
    "Prediction",
    "gauss_newton_feet",
    "predict_from_init",
    "relaxation_cycle",
    "top_eigenvalues",
]

Phase1 = Literal["modified", "flow"]
GradientTerm = Literal["discrete", "flow", "none"]
_DENSE_MAX_DIM = 2048  # dense eigvalsh for the sharpness of the rows up to this D


@dataclass(frozen=True)
class Prediction:
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
            ``phase1="flow"``).
        phi: ``(D,)`` ``Phi(w0)`` itself, the spherical gradient flow's limit (with
            ``reference_phi=True``, else ``None``).
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
    y0: Array,
    n0: Array,
    saves: Array,
    t_max: Array,
    switch: Array,
    rtol: Array,
    max_steps: int,
    eos_stop: bool = True,
) -> tuple[Array, Array, Array, Array, Array, Array]:
    def settled(t: Array, state: tuple[Array, Array], args: Any, **kwargs: Any) -> Array:
        y, n_sq = state
        u = y / jnp.linalg.norm(y)
        landed = jnp.linalg.norm(jax.grad(field_.loss)(u)) <= switch
        if not eos_stop:
            return landed
        return landed | (field_.eta * _top_eig(field_.loss, u) / n_sq >= 2.0)

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field_),
        diffrax.Tsit5(),
        t0=jnp.zeros((), y0.dtype),
        t1=t_max,
        dt0=None,
        y0=(y0, n0),
        saveat=diffrax.SaveAt(ts=saves, t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol * 1e-2),
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


def _top_eig(loss: LossFn, u: Array) -> Array:
    """``lambda_1(hess L(u))`` by Lanczos (at most 24 HVPs; exact for ``D <= 24``)."""
    _, hvp = linearize_grad(loss, u)
    return lanczos(hvp, jnp.ones_like(u), k=1, max_iters=min(u.shape[0], 24)).eigenvalues[0]


_top_eig_jit = eqx.filter_jit(_top_eig)


@eqx.filter_jit
def _lambda1_rows(loss: LossFn, ys: Array, dense: bool) -> Array:
    def one(y: Array) -> Array:
        u = y / jnp.linalg.norm(y)
        if dense:
            return linalg.eigvalsh(jax.hessian(loss)(u))[-1]
        _, hvp = linearize_grad(loss, u)
        return lanczos(hvp, jnp.ones_like(u), k=1, max_iters=min(u.shape[0], 64)).eigenvalues[0]

    return jax.lax.map(one, ys)


def _pad_pow2(ys: np.ndarray, minimum: int = 1) -> np.ndarray:
    """``ys`` with its last row repeated up to a power-of-two length, at least ``minimum``
    (fewer compiled shapes)."""
    n = len(ys)
    size = max(1 << max(n - 1, 0).bit_length(), minimum)
    return np.concatenate([ys, np.repeat(ys[-1:], size - n, axis=0)])


# Dense rows are padded to at least this many: one compiled shape serves the landing point,
# phase I's rows and a caller's rows (a dense eigvalsh map over 256 small Hessians is cheap).
_DENSE_MIN_ROWS = 256


def _lambda1(loss: LossFn, ys: np.ndarray, dense: bool) -> np.ndarray:
    n = len(ys)
    if n == 0:
        return np.zeros((0,))
    padded = _pad_pow2(np.asarray(ys), _DENSE_MIN_ROWS if dense else 1)
    return np.asarray(_lambda1_rows(loss, jnp.asarray(padded), dense))[:n]


def top_eigenvalues(loss: LossFn, points: Any, *, dense: bool | None = None) -> np.ndarray:
    """``lambda_1(hess L(w_hat))`` at each row of ``points`` ``(n, D)`` (normalized first).

    At a point of ``Gamma`` this is the spherical sharpness ``S``; at an iterate ``w_t``,
    ``eta lambda_1 / |w_t|^2`` is GD's ``eta_eff S``. ``dense`` (default: ``D <= 2048``) uses
    ``eigvalsh`` of ``jax.hessian``; otherwise Lanczos with at most 64 HVPs. Rows are padded to
    a power of two (dense: at least 256), so a few compiled shapes serve every batch size.
    """
    ys = np.atleast_2d(np.asarray(points, dtype=float))
    if ys.ndim != 2 or not np.all(np.isfinite(ys)):
        raise ValueError(f"points must be a finite (n, D) array, got shape {ys.shape}")
    dense = ys.shape[1] <= _DENSE_MAX_DIM if dense is None else bool(dense)
    return _lambda1(loss, ys, dense)


@eqx.filter_jit
def _gn_feet(residual_fn: Callable[[Array], Array], rows: Array) -> Array:
    return jax.vmap(lambda w: gauss_newton_project(residual_fn, w, raise_on_failure=False).theta)(
        rows
    )


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
    return np.asarray(_gn_feet(residual_fn, jnp.asarray(_pad_pow2(ys))))[:n]


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


def predict_from_init(
    loss: LossFn,
    w0: Array,
    *,
    eta: float,
    wd: float,
    steps: int,
    record_every: int = 1,
    form: Literal["F0", "F1"] = "F1",
    phase1: Phase1 = "modified",
    gradient_term: GradientTerm = "discrete",
    residual_fn: Callable[[Array], Array] | None = None,
    rank: int | None = None,
    ode_rtol: float = 1e-8,
    ode_max_steps: int = 100_000,
    flow_rtol: float = 1e-8,
    flow_atol: float = 1e-10,
    gap_tol: float = 1e-3,
    on_degenerate: Literal["raise", "stop"] = "stop",
    flow_saves: int = 201,
    reference_phi: bool = False,
) -> Prediction:
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
        form: flow form of phase III, ``"F1"`` (default) or ``"F0"``.
        phase1: ``"modified"`` (GD's first-order modified equation: lands where GD does to
            ``O(h^2)``) or ``"flow"`` (the spherical gradient flow: lands on ``Phi(w0)``).
        gradient_term: the norm's gradient source in phase I: ``"discrete"`` (the single-mode
            sum of GD's steps), ``"flow"`` (its continuous limit, ``eta (L_0 - L_I)`` in total),
            ``"none"``.
        residual_fn: residuals of an interpolating least-squares loss (``L = |r|^2 / 2``): the
            landing point is polished by the matrix-free Gauss-Newton projection and phase III
            uses the least-squares geometry (networks). Without it: dense Newton and the dense
            flow geometry (small ``D``).
        rank: codimension of ``Gamma`` (default: counted, see :func:`theory.sharpness_flow`).
        ode_rtol, ode_max_steps: phase I's controller tolerance and step cap.
        flow_rtol, flow_atol, gap_tol, on_degenerate: passed to :func:`theory.sharpness_flow`
            (``on_degenerate="stop"``: rows after a degenerate top eigenvalue are NaN).
        flow_saves: the flow is saved at this many equally spaced ``tau`` up to the last row
            and interpolated linearly (then renormalized) onto the rows: one compiled flow for
            every run length. The interpolation error is about ``(dtau^2 / 8) |theta''|``.
        reference_phi: also compute ``Phi(w0)`` (the spherical gradient flow's limit; slow on
            ill-conditioned problems, where it can cost more than the prediction).

    Returns:
        :class:`Prediction`.

    Raises:
        ValueError: for bad arguments, or when the run is already at the EoS when phase I ends
            (``eta_eff S >= 2`` on landing: the phases do not separate).
        RuntimeError: when phase I does not settle within ``ode_max_steps`` ODE steps.
    """
    t_start = time.perf_counter()
    eta = check.positive(eta, "eta")
    wd = check.positive(wd, "wd")
    if eta * wd >= 1:
        raise ValueError(f"eta * wd must be < 1, got eta={eta}, wd={wd}")
    steps = check.positive_int(steps, "steps")
    record_every = check.positive_int(record_every, "record_every")
    ode_max_steps = check.positive_int(ode_max_steps, "ode_max_steps")
    ode_rtol = check.positive(ode_rtol, "ode_rtol")
    if form not in ("F0", "F1"):
        raise ValueError(f"form must be 'F0' or 'F1', got {form!r}")
    if phase1 not in ("modified", "flow"):
        raise ValueError(f"phase1 must be 'modified' or 'flow', got {phase1!r}")
    if gradient_term not in ("discrete", "flow", "none"):
        raise ValueError(
            f"gradient_term must be 'discrete', 'flow' or 'none', got {gradient_term!r}"
        )
    w0, _ = check.flat_vector(w0, "w0")
    dtype = w0.dtype
    dim = int(w0.shape[0])
    dense = residual_fn is None and dim <= _DENSE_MAX_DIM
    decay = -2.0 * math.log1p(-eta * wd)
    n0 = float(jnp.vdot(w0, w0))
    rows = _row_steps(steps, record_every)
    seconds: dict[str, float] = {}

    # Phase I (and the start of phase II): the ODE until the gradient falls below the switch.
    tic = time.perf_counter()
    switch = _switch(dtype)[0]
    field_ = _Phase1Field(
        loss,
        jnp.asarray(eta, dtype),
        jnp.asarray(decay, dtype),
        phase1 == "modified",
        gradient_term,
    )
    ys_j, ns_j, ts_j, n_ode, ok, fired = _phase1(
        field_,
        w0 / jnp.sqrt(n0),
        jnp.asarray(n0, dtype),
        jnp.asarray(_saves(rows), dtype),
        jnp.asarray(1e15, dtype),
        jnp.asarray(switch, dtype),
        jnp.asarray(ode_rtol, dtype),
        ode_max_steps,
    )
    ys, ns, ts = np.asarray(ys_j), np.asarray(ns_j), np.asarray(ts_j)
    # With an event, diffrax stores the saves before it and then the terminal state, compactly,
    # followed by inf: the terminal state is the last finite entry.
    last = int(np.flatnonzero(np.isfinite(ts))[-1])
    ys, ns, t1 = ys[: last + 1], ns[: last + 1], float(ts[last])
    if not bool(fired):
        why = f" (the ODE stopped after {int(n_ode)} steps; raise ode_max_steps)"
        why = "" if bool(ok) else why
        raise RuntimeError(
            f"phase I did not reach the manifold{why}: the gradient is still above {switch:g} "
            f"at step {t1:.4g}"
        )
    seconds["phase1"] = time.perf_counter() - tic

    # Land on Gamma; Phi(w0) itself for reference.
    tic = time.perf_counter()
    y_end = jnp.asarray(ys[-1])
    u_end = y_end / jnp.linalg.norm(y_end)
    eos_end = eta * float(_top_eig_jit(loss, u_end)) / float(ns[-1])
    early = eos_end >= 2.0  # the EoS came first: phase I has not finished at the onset
    if residual_fn is not None:
        landing = gauss_newton_project(residual_fn, y_end).theta
    else:
        landing = project_to_manifold(loss, y_end)
    phi: Array | None = None
    if reference_phi:
        if phase1 == "flow" and not early:
            phi = landing
        elif residual_fn is not None:
            phi = _phi_ls(loss, w0, residual_fn)
        else:
            phi = project_to_manifold(loss, w0)
    landing_np = np.asarray(landing)
    s_land = float(_lambda1(loss, landing_np[None], dense)[0])
    n_land = float(ns[-1])
    seconds["phi"] = time.perf_counter() - tic

    if early:
        # eta_eff S grows like exp(c t) near the onset (the gradient's source is small there):
        # back from the event to where it crossed 2.
        t_on = t1 - math.log(eos_end / 2.0) / decay
        if t_on <= 0:
            raise ValueError(
                f"eta_eff * S = {eta * s_land / n_land:.4g} >= 2 at the start: the run begins at "
                "the Edge of Stability, so there is no phase I or II to predict; start with a "
                "larger |w0| (smaller eta_eff)"
            )
    else:
        t_on = t1 + math.log(2.0 / (eta * s_land / n_land)) / decay
    onset_step = math.ceil(t_on)

    # Rows of phases I and II.
    tic = time.perf_counter()
    n_rows = len(rows)
    theta = np.full((n_rows, dim), np.nan)
    sharp = np.full(n_rows, np.nan)
    norm_sq = np.full(n_rows, np.nan)
    phase = np.zeros(n_rows, np.int64)
    in1 = rows < min(t1, t_on)
    theta[in1] = ys[: int(in1.sum())] / np.linalg.norm(ys[: int(in1.sum())], axis=1)[:, None]
    norm_sq[in1] = ns[: int(in1.sum())]
    sharp[in1] = _lambda1(loss, theta[in1], dense)
    phase[in1] = 1
    in2 = (rows >= t1) & (rows < t_on)
    theta[in2] = landing_np
    sharp[in2] = s_land
    norm_sq[in2] = n_land * np.exp(-decay * (rows[in2] - t1))
    phase[in2] = 2
    seconds["rows"] = time.perf_counter() - tic

    # Phase III: the flow from the landing point, the EoS equilibrium norm.
    tic = time.perf_counter()
    in3 = rows >= t_on
    tau = 2.0 * eta * wd * (rows - t_on)
    flow: SharpnessFlowResult | None = None
    flow_end = steps
    if in3.any():
        flow_saves = check.positive_int(flow_saves, "flow_saves")
        grid = np.linspace(0.0, float(tau[in3][-1]), max(flow_saves, 2))
        if grid[-1] <= 0:
            grid = np.array([0.0, 1e-12])
        flow = sharpness_flow(
            loss,
            landing,
            SaveTimes(ts=grid),
            form=form,
            geometry=Dense(rank=rank)
            if residual_fn is None
            else GaussNewton(residual_fn, rank=rank),
            stepsize_controller=diffrax.PIDController(rtol=flow_rtol, atol=flow_atol),
            degeneracy=Degeneracy(gap_tol=gap_tol, action=on_degenerate),
        )
        idx = np.flatnonzero(in3 & (tau <= flow.tau[-1]))
        theta[idx] = _interp_rows(flow.tau, flow.theta, tau[idx])
        sharp[idx] = np.interp(tau[idx], flow.tau, flow.sharpness)
        norm_sq[idx] = eta * sharp[idx] / 2.0
        phase[np.flatnonzero(in3)] = 3
        flow_end = int(rows[idx[-1]]) if idx.size else onset_step
    seconds["flow"] = time.perf_counter() - tic
    eos = eta * sharp / norm_sq
    seconds["total"] = time.perf_counter() - t_start
    return Prediction(
        step=rows,
        theta=theta,
        sharpness=sharp,
        norm=np.sqrt(norm_sq),
        eos=eos,
        phase=phase,
        tau=tau,
        onset_step=onset_step,
        onset=t_on,
        phase1_end=t1,
        theta_landing=landing_np,
        phi=None if phi is None else np.asarray(phi),
        sharpness_landing=s_land,
        norm_sq_landing=n_land,
        gradient_norm_sq=n_land * math.exp(decay * t1) - n0,
        flow=flow,
        flow_end_step=flow_end,
        seconds=seconds,
        counts={
            "ode_steps": int(n_ode),
            "flow_steps": 0 if flow is None else flow.num_steps,
            "flow_evals": 0 if flow is None else flow.num_evals,
        },
        config={
            "eta": eta,
            "wd": wd,
            "steps": steps,
            "record_every": record_every,
            "form": form,
            "phase1": phase1,
            "gradient_term": gradient_term,
            "least_squares": residual_fn is not None,
            "ode_rtol": ode_rtol,
            "flow_rtol": flow_rtol,
        },
    )


def _phi_ls(
    loss: LossFn, w0: Array, residual_fn: Callable[[Array], Array], max_steps: int = 100_000
) -> Array:
    """``Phi(w0)`` for least squares: the plain flow ODE, then the Gauss-Newton polish."""
    field_ = _Phase1Field(
        loss, jnp.asarray(1.0, w0.dtype), jnp.asarray(0.0, w0.dtype), False, "none"
    )
    n0 = jnp.vdot(w0, w0)
    big = jnp.asarray(1e12, w0.dtype)
    ys, _, ts, _, _, _ = _phase1(
        field_,
        w0 / jnp.sqrt(n0),
        jnp.asarray(1.0, w0.dtype),
        jnp.zeros((1,), w0.dtype),
        big,
        jnp.asarray(_switch(w0.dtype)[0], w0.dtype),
        jnp.asarray(1e-8, w0.dtype),
        max_steps,
        False,
    )
    last = int(np.flatnonzero(np.isfinite(np.asarray(ts)))[-1])
    return gauss_newton_project(residual_fn, ys[last]).theta


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
