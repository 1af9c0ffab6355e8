"""The minimizer manifold ``Gamma`` on the unit sphere: the projection ``Phi`` and tangent spaces.

``Phi(w)`` is the limit of the spherical gradient flow started at ``w / |w|`` (docs/theory.md
section 3). On the sphere that flow is simply ``d theta / ds = -grad L(theta)``: by Euler's identity
``<grad L(theta), theta> = 0`` it preserves ``|theta|`` exactly. It is integrated here by an
adaptive Runge-Kutta method (diffrax ``Tsit5`` with a PID step-size controller) until
``|grad L|`` is small (``1e-7`` in float64), then polished by Newton steps restricted to the
range of the Hessian (dense eigenpairs above ``1e-3 lambda_1``) until ``|grad L| <= gtol``.
The Newton limit and the flow limit differ by ``O(d^2)`` for a start at distance ``d`` from
``Gamma``, so handing over at ``d ~ 1e-7`` costs ``~1e-14``; the tests measure ``Phi`` against an
independent solve.

Stiff flows (``solver="implicit"``). When the normal Hessian eigenvalues span several decades
(small normalized networks: ``mu_min / lambda_1 ~ 1e-4``), the explicit solver is held at its
stability limit ``dt ~ 3 / lambda_1`` while the slowest mode needs a time ``~ log(d / gtol) /
mu_min``: ``1e4 - 1e5`` steps; and the Newton polish, which keeps only eigenvalues above
``1e-3 lambda_1``, cannot finish the modes below the cut. ``solver="implicit"`` integrates the same
flow with an L-stable implicit Runge-Kutta method (diffrax ``Kvaerno5``; its Newton iterations use
the dense Jacobian ``-hess L``, so it is for ``D`` up to a few thousand) all the way to
``|grad L| <= gtol``, with no polish: the limit is the flow's own. ``solver="auto"`` runs the
explicit solver and re-solves, implicitly, only the rows where it did not reach ``gtol`` (and
did not stop on a critical point that is not a minimizer).

The tangent space ``T_theta Gamma`` (assumption of docs/theory.md: ``rank hess L`` constant on
``Gamma``) is the part of the sphere's tangent space that the Hessian does not stretch: the
kernel of ``hess L(theta)`` minus the radial direction, which is always in the kernel on
``Gamma`` (``H theta = -grad L = 0``). ``rank`` below is the number of nonzero eigenvalues, i.e.
the codimension of ``Gamma`` in the sphere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.core import linalg
from theory.core import validate as check
from theory.core.curvature import linearize_grad
from theory.core.errors import ProjectionError
from theory.core.lanczos import lanczos
from theory.core.types import Array, LossFn
from theory.flows.monitor import Budget, Progress, meter_for


class Projection(NamedTuple):
    """Result of :func:`projection_info` (leading batch axes if ``w`` had them)."""

    theta: Array  # unit point on Gamma, (..., D)
    grad_norm: Array  # |grad L(theta)| after the polish
    flow_time: Array  # gradient-flow time s integrated
    steps: Array  # accepted ODE steps
    min_curvature: Array  # smallest eigenvalue of P H P / lambda_1 (NaN if D is too large)
    converged: Array  # |grad L(theta)| <= gtol and no negative curvature (a minimizer)


def default_gtol(dtype: jnp.dtype) -> float:
    """Gradient tolerance for ``Phi``: ``1e-11`` in float64, ``3e-5`` in float32.

    Roughly ``sqrt(eps)`` times a margin in float32 (a gradient below ``~eps * |H|`` is rounding
    noise) and far below any distance of interest in float64.
    """
    return 3e-5 if jnp.finfo(dtype).bits <= 32 else 1e-11


def _switch(dtype: jnp.dtype) -> tuple[float, float]:
    """(gradient norm at which the ODE hands over to Newton, ODE tolerance).

    An explicit solver on a stiff gradient flow settles at the edge of stability, where the
    stiff components stop decaying at an amplitude of about its tolerance; so the ODE tolerance
    is kept 1e3 below the hand-over gradient. Newton from distance ``d ~ 1e-7`` (float64) lands
    within ``O(d^2) ~ 1e-14`` of the flow limit.
    """
    return (3e-3, 1e-6) if jnp.finfo(dtype).bits <= 32 else (1e-7, 1e-10)


_DENSE_NEWTON_MAX_DIM = 2048


def _unit(y: Array) -> Array:
    return y / jnp.linalg.norm(y)


def newton_step(loss: LossFn, y: Array, rel_cut: float = 1e-3) -> Array:
    """One Newton step towards ``Gamma`` in the normal directions (dense; small ``D``).

    ``x = sum_{lambda_i > rel_cut lambda_1} (v_i^T g / lambda_i) v_i`` from the eigenpairs of the
    Riemannian Hessian ``P H P`` (``P = I - y y^T``) at ``y``, then ``normalize(y - x)``. Near
    ``Gamma`` the normal eigenvalues are of the order of the sharpness while the tangential ones
    are ``O(dist^2)``: the cut keeps the step normal. (A plain pseudo-inverse would divide the
    ``O(dist^2)`` tangential gradient by an ``O(dist^2)`` eigenvalue and slide along ``Gamma``;
    the raw ``H`` is worse: ``H y = -grad L``, so ``x = -y`` solves ``H x = grad L``.)
    """
    y = _unit(y)
    g = jax.grad(loss)(y)
    p = jnp.eye(y.shape[0], dtype=y.dtype) - jnp.outer(y, y)
    vals, vecs = linalg.eigh(p @ jax.hessian(loss)(y) @ p)
    keep = vals > rel_cut * vals[-1]
    coef = jnp.where(keep, (vecs.T @ g) / jnp.where(keep, vals, 1.0), 0.0)
    return _unit(y - vecs @ coef)


Solver = Literal["explicit", "implicit", "auto"]


def _implicit_tols(dtype: jnp.dtype) -> tuple[float, float]:
    """(rtol, atol) of the implicit solve: ``1e-10, 1e-12`` in float64, ``1e-6, 1e-8`` in float32.

    An L-stable method damps the stiff modes at any step size, so (unlike the explicit solver)
    no margin below the gradient tolerance is needed to keep them from stalling.
    """
    return (1e-6, 1e-8) if jnp.finfo(dtype).bits <= 32 else (1e-10, 1e-12)


def _field(s: Any, y: Array, args: LossFn) -> Array:
    return -jax.grad(args)(y)


def _minimizer_check(loss: LossFn, y: Array) -> tuple[Array, Array]:
    """(min curvature of ``P H P`` / its largest, no negative curvature): a flow can also stop
    on a saddle or a maximum. NaN and ``True`` above the dense size limit."""
    dtype = y.dtype
    if y.shape[0] > _DENSE_NEWTON_MAX_DIM:
        return jnp.asarray(jnp.nan, dtype), jnp.asarray(True)
    p = jnp.eye(y.shape[0], dtype=dtype) - jnp.outer(y, y)
    vals = linalg.eigvalsh(p @ jax.hessian(loss)(y) @ p)
    curv = vals[0] / jnp.maximum(vals[-1], jnp.finfo(dtype).tiny)
    return curv, curv >= -jnp.sqrt(jnp.finfo(dtype).eps)


def _flow_limit_implicit(
    loss: LossFn, w: Array, gtol: Array, max_steps: int, rtol: float | None
) -> Projection:
    """The stiff path: ``Kvaerno5`` (dense Jacobian) to ``|grad L| <= gtol``, no polish."""
    y0 = _unit(w)
    dtype = y0.dtype
    rtol, atol = _implicit_tols(dtype) if rtol is None else (rtol, 1e-2 * rtol)

    def settled(t: Array, y: Array, args: LossFn, **kwargs: object) -> Array:
        return jnp.linalg.norm(jax.grad(args)(y)) <= gtol

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_field),
        diffrax.Kvaerno5(),
        t0=jnp.asarray(0.0, dtype),
        t1=jnp.asarray(1e12, dtype),
        dt0=jnp.asarray(1e-3, dtype),
        y0=y0,
        args=loss,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        event=diffrax.Event(settled),
        max_steps=max_steps,
        throw=False,
    )
    assert sol.ys is not None and sol.ts is not None
    y = jnp.where(jnp.isfinite(sol.ys[-1]).all(), sol.ys[-1], y0)
    y = _unit(y)
    curv, minimizer = _minimizer_check(loss, y)
    gnorm = jnp.linalg.norm(jax.grad(loss)(y))
    steps = sol.stats["num_accepted_steps"]
    return Projection(y, gnorm, sol.ts[-1], steps, curv, (gnorm <= gtol) & minimizer)


def _flow_limit(loss: LossFn, w: Array, gtol: Array, max_steps: int) -> Projection:
    y0 = _unit(w)
    dtype = y0.dtype
    field = _field

    switch, ode_tol = _switch(dtype)
    if y0.shape[0] > _DENSE_NEWTON_MAX_DIM:  # no dense Newton polish: the ODE goes all the way
        switch, ode_tol = 0.0, min(ode_tol, 1e-3 * float(default_gtol(dtype)))

    def settled(t: Array, y: Array, args: LossFn, **kwargs: object) -> Array:
        return jnp.linalg.norm(jax.grad(args)(y)) <= jnp.maximum(switch, gtol)

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Tsit5(),
        t0=jnp.asarray(0.0, dtype),
        t1=jnp.asarray(1e12, dtype),
        dt0=None,
        y0=y0,
        args=loss,
        stepsize_controller=diffrax.PIDController(rtol=ode_tol, atol=ode_tol),
        event=diffrax.Event(settled),
        max_steps=max_steps,
        throw=False,
    )
    assert sol.ys is not None and sol.ts is not None
    y = jnp.where(jnp.isfinite(sol.ys[-1]).all(), sol.ys[-1], y0)
    if y.shape[0] <= _DENSE_NEWTON_MAX_DIM:
        y = newton_step(loss, newton_step(loss, y))
    curv, minimizer = _minimizer_check(loss, y)
    gnorm = jnp.linalg.norm(jax.grad(loss)(y))
    steps = sol.stats["num_accepted_steps"]
    return Projection(y, gnorm, sol.ts[-1], steps, curv, (gnorm <= gtol) & minimizer)


@eqx.filter_jit
def _flow_limit_batch(loss: LossFn, ws: Array, gtol: Array, max_steps: int) -> Projection:
    return jax.vmap(lambda w: _flow_limit(loss, w, gtol, max_steps))(ws)


@eqx.filter_jit
def _flow_limit_implicit_batch(
    loss: LossFn, ws: Array, gtol: Array, max_steps: int, rtol: float | None
) -> Projection:
    # One row at a time (lax.map): each row's Newton iterations factor a dense D x D matrix.
    return jax.lax.map(lambda w: _flow_limit_implicit(loss, w, gtol, max_steps, rtol), ws)


def projection_info(
    loss: LossFn,
    w: Array,
    *,
    gtol: float | None = None,
    max_steps: int = 20_000,
    solver: Solver = "explicit",
    implicit_rtol: float | None = None,
) -> Projection:
    """``Phi(w)`` with diagnostics, for one point ``(D,)`` or a batch ``(N, D)``.

    Args:
        loss: scale-invariant loss.
        w: start(s), nonzero and finite.
        gtol: stop when ``|grad L(theta)| <= gtol`` on the unit sphere (default
            :func:`default_gtol`).
        max_steps: cap on accepted ODE steps (of each solver).
        solver: ``"explicit"`` (Tsit5 + Newton polish, the default), ``"implicit"`` (Kvaerno5
            to ``gtol``: stiff flows, module docstring) or ``"auto"`` (explicit, then implicit
            for the rows the explicit one left above ``gtol``).
        implicit_rtol: relative tolerance of the implicit solve (absolute: a hundredth of it;
            default ``1e-10`` in float64, ``1e-6`` in float32). The end point still meets
            ``gtol``; a looser tolerance moves it along ``Gamma`` by about ``implicit_rtol``
            times the path length (measured in tests/flows/test_manifold.py) and costs far fewer
            dense Jacobian factorizations.
    """
    if solver not in ("explicit", "implicit", "auto"):
        raise ValueError(f"solver must be 'explicit', 'implicit' or 'auto', got {solver!r}")
    arr = jnp.asarray(w)
    if arr.ndim not in (1, 2):
        raise ValueError(f"w must have shape (D,) or (N, D), got {arr.shape}")
    if arr.ndim == 1:
        check.flat_vector(arr, "w")
    else:
        host = np.asarray(arr)
        if not np.all(np.isfinite(host)):
            raise ValueError("w must be finite, but has non-finite entries")
        if np.any(np.linalg.norm(host, axis=1) == 0):
            raise ValueError("w must be nonzero in every row: Phi is undefined at 0")
    rows = arr[None] if arr.ndim == 1 else arr
    tol = default_gtol(rows.dtype) if gtol is None else check.positive(gtol, "gtol")
    if implicit_rtol is not None:
        implicit_rtol = check.positive(implicit_rtol, "implicit_rtol")
    tol_arr = jnp.asarray(tol, rows.dtype)
    if solver == "implicit":
        out = _flow_limit_implicit_batch(loss, rows, tol_arr, max_steps, implicit_rtol)
    else:
        out = _flow_limit_batch(loss, rows, tol_arr, max_steps)
        if solver == "auto":
            stalled = np.flatnonzero(np.asarray(out.grad_norm) > tol)
            if stalled.size:
                redo = _flow_limit_implicit_batch(
                    loss, rows[stalled], tol_arr, max_steps, implicit_rtol
                )
                out = jax.tree.map(lambda a, b: a.at[stalled].set(b), out, redo)
    return jax.tree.map(lambda a: a[0], out) if arr.ndim == 1 else out


def project_to_manifold(
    loss: LossFn,
    w: Array,
    *,
    gtol: float | None = None,
    max_steps: int = 20_000,
    solver: Solver = "explicit",
    implicit_rtol: float | None = None,
    progress: Progress | Callable[[int, int], None] | bool | None = None,
    budget: Budget | None = None,
) -> Array:
    """``Phi(w)``: the unit-norm minimizer reached by the spherical gradient flow from ``w/|w|``.

    Accepts ``(D,)`` or a batch ``(N, D)`` (vmapped). Raises :class:`theory.ProjectionError`
    naming the rows and the gradient reached when the flow does not settle (no minimizer
    nearby, ``max_steps`` too small, or a stiff flow: try ``solver="implicit"``). See the
    module docstring for the method and :func:`projection_info` for ``solver``.

    ``progress`` (:class:`theory.Progress`, a callable ``progress(done, total)`` or ``True``)
    hears the phase ``"projection"`` and ``(1, 1)`` when the solve is done; ``budget``
    (:class:`theory.Budget`, steps: the largest number of accepted ODE steps of a row) is
    checked after it, raising :class:`theory.BudgetExceeded` with the :class:`Projection` as
    ``.partial``. The solve is one compiled call, so neither interrupts it: cap a long solve
    with ``max_steps``.
    """
    meter = meter_for(progress, budget)
    if meter is not None:
        meter.phase("projection", 1)
    info = projection_info(
        loss, w, gtol=gtol, max_steps=max_steps, solver=solver, implicit_rtol=implicit_rtol
    )
    if meter is not None:
        meter.update(1, steps=int(np.max(np.asarray(info.steps))))
        meter.check("after the gradient flow", lambda: info)
    ok = np.atleast_1d(np.asarray(info.converged))
    if not ok.all():
        bad = np.flatnonzero(~ok)
        gn = np.atleast_1d(np.asarray(info.grad_norm))[bad]
        curv = np.atleast_1d(np.asarray(info.min_curvature))[bad]
        steps = np.atleast_1d(np.asarray(info.steps))[bad]
        where = "" if np.ndim(info.converged) == 0 else f" for rows {bad[:10].tolist()}"
        tol = gtol or default_gtol(info.theta.dtype)
        if np.all(gn <= tol):
            why = (
                f"the gradient flow stopped at a critical point that is not a minimizer "
                f"(most negative curvature along the sphere = {curv.min():.3g} x the largest): the "
                "start is on a saddle or a maximum, and no minimizer was reached"
            )
        else:
            why = (
                f"the gradient flow stopped at |grad L| = {gn.max():.3g} after "
                f"{int(steps.max())} steps (tolerance {tol:.1g}, solver={solver!r}): there may be "
                "no minimizer near the start, or it needs max_steps larger"
                + (
                    "; if the Hessian's normal eigenvalues span decades (a stiff flow), "
                    "solver='implicit' or 'auto'"
                    if solver == "explicit"
                    else ""
                )
            )
        raise ProjectionError(
            f"the projection onto the minimizer manifold did not converge{where}: {why}"
        )
    return info.theta


# --------------------------------------------------------------------------------------------
# Tangent spaces
# --------------------------------------------------------------------------------------------


def hessian_rank(loss: LossFn, theta: Array, *, rel_tol: float = 1e-6) -> int:
    """Number of Hessian eigenvalues above ``rel_tol * lambda_1`` at ``theta`` (dense ``eigh``).

    On ``Gamma`` this is the codimension of ``Gamma`` in the sphere (assumed constant).
    """
    vals = linalg.eigvalsh(jax.hessian(loss)(_unit(jnp.asarray(theta))))
    return int(jnp.sum(vals > rel_tol * vals[-1]))


def dense_tangent_projector(loss: LossFn, theta: Array, rank: int) -> Array:
    """``P_Gamma(theta)`` as a ``(D, D)`` matrix: kernel of ``hess L`` minus the radial direction.

    ``rank`` = number of nonzero Hessian eigenvalues on ``Gamma``; the ``D - rank`` smallest
    eigenvectors span the kernel, which contains ``theta``.
    """
    u = _unit(theta)
    _, vecs = linalg.eigh(jax.hessian(loss)(u))
    ker = vecs[:, : u.shape[0] - rank]
    p = ker @ ker.T
    ps = jnp.eye(u.shape[0], dtype=u.dtype) - jnp.outer(u, u)
    return ps @ p @ ps


def tangent_projector(
    loss: LossFn,
    theta: Array,
    *,
    rank: int,
    method: Literal["dense", "lanczos"] = "dense",
    lanczos_iters: int | None = None,
) -> Callable[[Array], Array]:
    """``v -> P_Gamma(theta) v``, the projection onto ``T_theta Gamma``.

    ``method="dense"`` forms the Hessian (small ``D``); ``"lanczos"`` is matrix-free: the top
    ``rank`` eigenvectors ``V_r`` by Lanczos, then ``P v = P_sphere (v - V_r V_r^T v)`` (cost
    ``O(rank)`` HVPs once, then ``O(D rank)`` per application). For interpolating least squares
    with many parameters, :func:`theory.flows.gauss_newton.ls_tangent_projector` uses the Jacobian
    instead.
    """
    u = _unit(jnp.asarray(theta))
    if method == "dense":
        p = dense_tangent_projector(loss, u, rank)
        return lambda v: p @ v
    if method == "lanczos":
        _, hvp = linearize_grad(loss, u)
        m = min(u.shape[0], max(2 * rank + 20, lanczos_iters or 0))
        basis = lanczos(hvp, jnp.ones_like(u), k=rank, max_iters=m).eigenvectors

        def apply(v: Array) -> Array:
            v = v - basis @ (basis.T @ v)
            return v - u * jnp.vdot(u, v)

        return apply
    raise ValueError(f"method must be 'dense' or 'lanczos', got {method!r}")
