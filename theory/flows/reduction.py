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
separate from the integrators: :func:`sharpness_flow` integrates them adaptively (diffrax
``Tsit5`` + PID control, wrapped by :class:`ProjectedSolver` so that every step is retracted
onto ``Gamma`` by a Newton step in the normal directions) or with a fixed-step projected RK4.
The start is first projected by :func:`theory.project_to_manifold`. A top eigenvalue that
becomes degenerate (relative gap below ``gap_tol``) stops the solve with
:class:`theory.core.errors.DegenerateSharpnessError` naming the ``tau`` where it happened.
"""

from __future__ import annotations

import math
import warnings
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
from theory.core.curvature import grad_lambda1, linearize_grad
from theory.core.errors import DegenerateSharpnessError, DegenerateSharpnessWarning
from theory.core.lanczos import lanczos
from theory.core.types import Array, LossFn
from theory.flows.gauss_newton import gauss_newton_project, ls_tangent_projector
from theory.flows.manifold import hessian_rank, newton_step, project_to_manifold

Form = Literal["F0", "F1"]
Geometry = Literal["dense", "lanczos", "gauss_newton"]
FORMS = ("F0", "F1")


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
        rank: number of nonzero Hessian eigenvalues on ``Gamma`` (codimension in the sphere).
        form: ``"F1"`` (default) or ``"F0"``.
        geometry: ``"dense"`` (``jax.hessian`` + ``eigh``: small ``D``), ``"lanczos"`` (top
            ``max(rank, 2)`` eigenpairs by Lanczos, matrix-free) or ``"gauss_newton"`` (for
            interpolating least squares ``L = |r|^2 / 2``: ``lambda_1, lambda_2`` by Lanczos,
            ``P_Gamma`` through the residual Jacobian, :func:`ls_tangent_projector`; needs
            ``residual_fn``; cost independent of ``rank``).
        residual_fn: ``(D,) -> (n,)`` residuals (``"gauss_newton"`` only).
    """

    loss: LossFn
    rank: int = eqx.field(static=True)
    form: str = eqx.field(static=True, default="F1")
    geometry: str = eqx.field(static=True, default="dense")
    residual_fn: Callable[[Array], Array] | None = None

    def quantities(self, y: Array) -> FlowQuantities:
        u = y / jnp.linalg.norm(y)
        if self.geometry == "dense":
            vals, vecs = linalg.eigh(jax.hessian(self.loss)(u))
            lam1, lam2, v1 = vals[-1], vals[-2], vecs[:, -1]
            normal = vecs[:, u.shape[0] - self.rank :]
        elif self.geometry == "lanczos":
            _, hvp = linearize_grad(self.loss, u)
            k = min(max(self.rank, 2), u.shape[0])
            m = min(u.shape[0], 2 * k + 30)
            res = lanczos(hvp, jnp.ones_like(u), k=k, max_iters=m)
            lam1, lam2, v1 = res.eigenvalues[0], res.eigenvalues[1], res.eigenvectors[:, 0]
            normal = res.eigenvectors[:, : self.rank]
        else:
            assert self.residual_fn is not None, "geometry='gauss_newton' needs residual_fn"
            _, hvp = linearize_grad(self.loss, u)
            res = lanczos(hvp, jnp.ones_like(u), k=2, max_iters=min(u.shape[0], 64))
            lam1, lam2, v1 = res.eigenvalues[0], res.eigenvalues[1], res.eigenvectors[:, 0]
            grad = ls_tangent_projector(self.residual_fn, u)(grad_lambda1(self.loss, u, v1))
            return FlowQuantities(lam1, lam2, v1, grad / lam1)
        grad = grad_lambda1(self.loss, u, v1)
        grad = grad - normal @ (normal.T @ grad)
        grad = grad - u * jnp.vdot(u, grad)
        return FlowQuantities(lam1, lam2, v1, grad / lam1)

    def __call__(self, t: Any, y: Array, args: Any) -> Array:
        return velocity(self.quantities(y).g, self.form)


class Retraction(eqx.Module):
    """Back onto ``Gamma`` after a step: two dense Newton steps in the normal directions, or
    (with ``residual_fn``) the matrix-free Gauss-Newton projection of least squares."""

    loss: LossFn
    iters: int = eqx.field(static=True, default=2)
    residual_fn: Callable[[Array], Array] | None = None

    def __call__(self, y: Array) -> Array:
        if self.residual_fn is not None:
            return gauss_newton_project(self.residual_fn, y, max_iters=8).theta
        for _ in range(self.iters):
            y = newton_step(self.loss, y)
        return y


class ProjectedSolver(diffrax.AbstractAdaptiveSolver, diffrax.AbstractWrappedSolver):
    """A diffrax solver whose every step ends with a retraction onto the manifold.

    The wrapped solver's error estimate and dense output are kept (the retraction moves the
    state by ``O(local error)``, which the controller already bounds).
    """

    solver: diffrax.AbstractSolver  # type: ignore[misc]
    retract: Callable[[Array], Array]

    @property
    def term_structure(self) -> Any:
        return self.solver.term_structure

    @property
    def interpolation_cls(self) -> Any:  # type: ignore[override]
        return self.solver.interpolation_cls

    def order(self, terms: Any) -> int | None:
        return self.solver.order(terms)

    def error_order(self, terms: Any) -> Any:
        return self.solver.error_order(terms)

    def init(self, terms: Any, t0: Any, t1: Any, y0: Array, args: Any) -> Any:
        return self.solver.init(terms, t0, t1, y0, args)

    def step(
        self,
        terms: Any,
        t0: Any,
        t1: Any,
        y0: Array,
        args: Any,
        solver_state: Any,
        made_jump: Any,
    ) -> Any:
        y1, err, dense, state, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state, made_jump
        )
        return self.retract(y1), err, dense, state, result

    def func(self, terms: Any, t0: Any, y0: Array, args: Any) -> Any:
        return self.solver.func(terms, t0, y0, args)


@dataclass(frozen=True)
class FlowResult:
    """A solution of the sharpness-reduction flow at the saved times (NumPy, host).

    Attributes:
        tau: ``(n,)`` slow times, ``tau[0] = 0``.
        theta: ``(n, D)`` points on ``Gamma``; row 0 is ``project_to_manifold(theta0)``.
        sharpness: ``(n,)`` ``lambda_1`` at ``theta``.
        lambda2: ``(n,)`` second eigenvalue (the gap shows how simple ``lambda_1`` is).
        g_norm: ``(n,)`` ``|g|``, the Riemannian gradient of ``log lambda_1``.
        num_steps: accepted integrator steps; ``num_evals`` vector-field evaluations.
        form, method, rank: the settings; ``config`` all of them.
    """

    tau: np.ndarray
    theta: np.ndarray
    sharpness: np.ndarray
    lambda2: np.ndarray
    g_norm: np.ndarray
    num_steps: int
    num_evals: int
    form: str
    method: str
    rank: int
    config: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Integrators
# --------------------------------------------------------------------------------------------


def _gap_ok(field_: SharpnessFlowField, y: Array, gap_tol: Array) -> Array:
    q = field_.quantities(y)
    return (q.lam1 - q.lam2) >= gap_tol * jnp.abs(q.lam1)


@eqx.filter_jit
def _adaptive(
    field_: SharpnessFlowField,
    retract: Retraction,
    y0: Array,
    taus: Array,
    rtol: Array,
    atol: Array,
    gap_tol: Array,
    max_steps: int,
) -> tuple[Array, Array, Array, Array, Array]:
    def degenerate(t: Array, y: Array, args: Any, **kwargs: Any) -> Array:
        return ~_gap_ok(field_, y, gap_tol)

    return solve_projected(field_, retract, y0, taus, rtol, atol, degenerate, max_steps)


def solve_projected(
    field_: Any,
    retract: Retraction,
    y0: Array,
    taus: Array,
    rtol: Array,
    atol: Array,
    stop: Callable[..., Array],
    max_steps: int,
) -> tuple[Array, Array, Array, Array, Array]:
    """Tsit5 with PID steps and a retraction after each step, saved at ``taus``, stopped by
    the event ``stop(t, y, args)``: ``(ys, ts, accepted steps, stopped, ok)``.

    Shared by the sharpness-reduction flow (stops where ``lambda_1`` meets ``lambda_2``) and
    the cluster flow (stops where a third eigenvalue joins the pair). Called inside ``jit``.
    """
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field_),
        ProjectedSolver(diffrax.Tsit5(), retract),
        t0=taus[0],
        t1=taus[-1],
        dt0=None,
        y0=y0,
        saveat=diffrax.SaveAt(ts=taus, t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=diffrax.Event(stop),
        max_steps=max_steps,
        throw=False,
    )
    assert sol.ys is not None and sol.ts is not None
    stopped = jnp.asarray(False) if sol.event_mask is None else jnp.asarray(sol.event_mask)
    ok = sol.result == diffrax.RESULTS.successful
    # The last saved entry is the terminal time: the end, or where the event fired.
    return sol.ys[:-1], sol.ts, sol.stats["num_accepted_steps"], stopped, ok


def rk4_step(f: Callable[[Any], Any], y: Any, h: Any) -> Any:
    """One classical Runge-Kutta step of ``dy/dt = f(y)`` with step ``h``.

    Plain arithmetic: ``y`` may be a JAX or NumPy array or a Python float (then ``f`` may return
    NaN, which propagates). The one RK4 of the code base: the fixed-step flow integrator, the
    independent integration of the checks and the IRE flow-time prediction use it.
    """
    k1 = f(y)
    k2 = f(y + h * k1 / 2)
    k3 = f(y + h * k2 / 2)
    k4 = f(y + h * k3)
    return y + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6


@eqx.filter_jit
def _rk4(
    field_: SharpnessFlowField, retract: Retraction, y0: Array, taus: Array, substeps: int
) -> Array:
    def one_interval(y: Array, span: Array) -> tuple[Array, Array]:
        h = (span[1] - span[0]) / substeps

        def rk4(_: Any, y: Array) -> Array:
            return retract(rk4_step(lambda x: field_(None, x, None), y, h))

        y = jax.lax.fori_loop(0, substeps, rk4, y)
        return y, y

    spans = jnp.stack([taus[:-1], taus[1:]], axis=1)
    _, ys = jax.lax.scan(one_interval, y0, spans)
    return jnp.concatenate([y0[None], ys])


@eqx.filter_jit
def _measure(field_: SharpnessFlowField, ys: Array) -> FlowQuantities:
    return jax.vmap(field_.quantities)(ys)


def _save_times(tau: Any, num_saves: int, dtype: Any) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(tau, dtype=np.float64))
    if arr.size == 1:
        end = check.positive(float(arr[0]), "tau")  # an end time (else an array of times)
        if num_saves < 2:
            raise ValueError(f"num_saves must be >= 2, got {num_saves}")
        arr = np.linspace(0.0, end, num_saves)
    else:
        if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(np.diff(arr) <= 0):
            raise ValueError("tau must be finite, >= 0 and strictly increasing")
        if arr[0] != 0.0:
            arr = np.concatenate([[0.0], arr])
    return arr.astype(dtype)


def sharpness_flow(
    loss: LossFn,
    theta0: Array,
    *,
    tau: float | Array | np.ndarray,
    num_saves: int = 101,
    form: Form = "F1",
    method: Literal["adaptive", "rk4"] = "adaptive",
    rtol: float = 1e-8,
    atol: float = 1e-10,
    dt: float = 0.05,
    rank: int | None = None,
    geometry: Geometry = "dense",
    residual_fn: Callable[[Array], Array] | None = None,
    gap_tol: float = 1e-3,
    max_steps: int = 100_000,
    on_degenerate: Literal["raise", "stop"] = "raise",
) -> FlowResult:
    """Integrate the sharpness-reduction flow from ``Phi(theta0)``.

    Args:
        loss: scale-invariant loss whose minimizers on the sphere form ``Gamma``.
        theta0: start ``(D,)``; projected onto ``Gamma`` first (row 0 of the result).
        tau: end time (saves at ``num_saves`` equally spaced times) or an increasing array of
            save times (0 is prepended if missing).
        form: ``"F1"`` (norm-balanced, default) or ``"F0"`` (its small-``|g|`` limit).
        method: ``"adaptive"`` (diffrax Tsit5, PID control with ``rtol``/``atol``, retraction
            after every step) or ``"rk4"`` (fixed steps of at most ``dt``, retraction after
            every step; saves must then be equally spaced).
        rank: codimension of ``Gamma`` in the sphere (= number of nonzero Hessian eigenvalues);
            default: counted at the start with dense ``eigh``.
        geometry: ``"dense"``, ``"lanczos"`` or ``"gauss_newton"`` (see
            :class:`SharpnessFlowField`).
        residual_fn: residuals of an interpolating least-squares loss (``L = |r|^2 / 2``);
            required by ``"gauss_newton"``, which then also projects the start and retracts
            with :func:`theory.flows.gauss_newton.gauss_newton_project` (the foot of the normal,
            which
            differs from ``Phi`` by ``O(dist^2)``) and counts ``rank`` as ``len(r)``.
        gap_tol: stop when ``(lambda_1 - lambda_2) / lambda_1 < gap_tol``.
        max_steps: cap on adaptive steps.
        on_degenerate: ``"raise"`` :class:`DegenerateSharpnessError`, or ``"stop"``: warn and
            return the solution up to the last save before the degeneracy.

    Returns:
        :class:`FlowResult`.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if method not in ("adaptive", "rk4"):
        raise ValueError(f"method must be 'adaptive' or 'rk4', got {method!r}")
    if geometry not in ("dense", "lanczos", "gauss_newton"):
        raise ValueError(f"geometry must be 'dense', 'lanczos' or 'gauss_newton', got {geometry!r}")
    if (geometry == "gauss_newton") != (residual_fn is not None):
        raise ValueError("residual_fn is required by geometry='gauss_newton' and only by it")
    if on_degenerate not in ("raise", "stop"):
        raise ValueError(f"on_degenerate must be 'raise' or 'stop', got {on_degenerate!r}")
    theta0, _ = check.flat_vector(theta0, "theta0")
    dtype = theta0.dtype
    taus_np = _save_times(tau, num_saves, dtype)
    # Checked before the projection below compiles, so a bad value fails at once.
    rtol = check.positive(rtol, "rtol")
    atol = check.positive(atol, "atol")
    gap_tol = check.nonnegative(gap_tol, "gap_tol")
    max_steps = check.positive_int(max_steps, "max_steps")
    if residual_fn is not None:
        start = gauss_newton_project(residual_fn, theta0).theta
        rank = int(residual_fn(start).shape[0]) if rank is None else rank
    else:
        start = project_to_manifold(loss, theta0)
        rank = hessian_rank(loss, start) if rank is None else rank
    rank = check.positive_int(rank, "rank")
    field_ = SharpnessFlowField(loss, rank, form, geometry, residual_fn)
    retract = Retraction(loss, residual_fn=residual_fn)
    taus = jnp.asarray(taus_np)
    if method == "adaptive":
        ys, ts, steps, stopped, ok = _adaptive(
            field_,
            retract,
            start,
            taus,
            jnp.asarray(rtol, dtype),
            jnp.asarray(atol, dtype),
            jnp.asarray(gap_tol, dtype),
            max_steps,
        )
        n_steps = int(steps)
        n_evals = 6 * n_steps
        if not bool(ok) and not bool(stopped):
            raise RuntimeError(
                f"the flow integrator failed before tau = {taus_np[-1]} (max_steps={max_steps} "
                "reached or the step size underflowed); loosen rtol/atol or raise max_steps"
            )
        t_end = float(np.asarray(ts)[-1])
        valid = np.isfinite(np.asarray(ts)[:-1])
        ys = ys[valid]
        taus_np = taus_np[valid]
    else:
        spacing = np.diff(taus_np)
        if not np.allclose(spacing, spacing[0], rtol=1e-9):
            raise ValueError("method='rk4' needs equally spaced save times")
        substeps = max(1, math.ceil(spacing[0] / check.positive(dt, "dt") - 1e-9))
        ys = _rk4(field_, retract, start, taus, substeps)
        n_steps = substeps * (len(taus_np) - 1)
        n_evals = 4 * n_steps
        stopped = jnp.asarray(False)
        t_end = float(taus_np[-1])
    q = _measure(field_, ys)
    lam1, lam2 = np.asarray(q.lam1), np.asarray(q.lam2)
    gap = (lam1 - lam2) / np.abs(lam1)
    if bool(stopped) or np.any(gap < gap_tol):
        if np.any(gap < gap_tol):
            last = int(np.argmax(gap < gap_tol))
            where, l1, l2 = float(taus_np[last]), lam1[last], lam2[last]
        else:  # the event fired between saves: report the last save before it
            where, l1, l2 = t_end, lam1[-1], lam2[-1]
        msg = (
            f"the top Hessian eigenvalue becomes degenerate along the flow near tau = "
            f"{where:.4g} (relative gap below {gap_tol:g}; at the last save before it "
            f"lambda_1 = {l1:.6g}, lambda_2 = {l2:.6g}): grad log lambda_1 is undefined there"
        )
        if on_degenerate == "raise":
            raise DegenerateSharpnessError(msg)
        warnings.warn(
            msg + "; returning the solution before it", DegenerateSharpnessWarning, stacklevel=2
        )
        keep = gap >= gap_tol
        ys, taus_np, q = ys[keep], taus_np[keep], jax.tree.map(lambda a: a[keep], q)
    return FlowResult(
        tau=np.asarray(taus_np),
        theta=np.asarray(ys),
        sharpness=np.asarray(q.lam1),
        lambda2=np.asarray(q.lam2),
        g_norm=np.asarray(jnp.linalg.norm(q.g, axis=-1)),
        num_steps=n_steps,
        num_evals=n_evals,
        form=form,
        method=method,
        rank=rank,
        config={
            "form": form,
            "method": method,
            "rtol": rtol,
            "atol": atol,
            "dt": dt,
            "rank": rank,
            "geometry": geometry,
            "gap_tol": gap_tol,
        },
    )
