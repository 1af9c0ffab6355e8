"""The objects every continuous model of :mod:`theory.flows` is built from, written once.

A flow function takes the loss, the start, its physical parameters and a handful of these objects
(in the shape of diffrax's ``diffeqsolve(terms, solver, t0, t1, dt0, y0, saveat=...,
stepsize_controller=...)``):

* :class:`SaveTimes` -- where the solution is recorded: ``SaveTimes(t1=5.0, n=101)`` (``n``
  equally spaced times from 0) or ``SaveTimes(ts=[...])`` (0 is prepended if missing). The time
  unit is the flow's own (slow time ``tau`` for the sharpness-reduction flow, GD steps for the
  central flow).
* a geometry -- how curvature is computed and how a point is put on the manifold of minimizers
  ``Gamma``: :class:`Dense` (``jax.hessian`` + ``eigh``; small ``D``), :class:`Lanczos`
  (matrix-free top eigenpairs), :class:`GaussNewton` (interpolating least squares
  ``L = |r|^2 / 2``: the start is projected by Gauss-Newton onto ``{r = 0}`` and ``Gamma``'s
  normal space is the row space of the residual Jacobian). Each carries the codimension ``rank``
  of ``Gamma`` in the sphere (counted at the start when left ``None``; :meth:`resolve`).
* the solver and the step-size controller: diffrax's own objects (``diffrax.Tsit5()``,
  ``diffrax.PIDController(rtol=..., atol=...)``), not re-wrapped. :func:`controller` reads the
  tolerances back for a result's ``config``. :class:`FixedSteps` takes the controller's place for
  fixed steps (e.g. :class:`RK4` with ``FixedSteps(dt=0.05)`` is the projected RK4).

Flows on ``Gamma`` also share the local frame at a point of ``Gamma`` (top eigenpairs of the
Hessian and the tangent projector ``P_Gamma``, :meth:`AbstractGeometry.frame`), the retraction
back onto ``Gamma`` after each step (:meth:`AbstractGeometry.retract`, :class:`ProjectedSolver`)
and one integrator for both kinds of stepping (:func:`solve_on_gamma`).

Progress and budgets: :class:`Progress` and :class:`Budget` (defined in
:mod:`theory.flows.monitor`, re-exported here) are the settings every entry point takes as
``progress=`` and ``budget=``; with either, :func:`solve_on_gamma` integrates segment by
segment between the save times, reports after each and raises
:class:`theory.core.errors.BudgetExceeded` with the saves reached when the budget runs out.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

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
from theory.flows.gauss_newton import gauss_newton_project, ls_tangent_projector
from theory.flows.manifold import hessian_rank, newton_step, project_to_manifold
from theory.flows.monitor import Budget as Budget
from theory.flows.monitor import Meter, segments
from theory.flows.monitor import Progress as Progress

__all__ = [
    "RK4",
    "AbstractGeometry",
    "Budget",
    "Dense",
    "FixedSteps",
    "Frame",
    "GammaSolution",
    "GaussNewton",
    "Lanczos",
    "Progress",
    "ProjectedSolver",
    "SaveTimes",
    "check_controller",
    "check_solver",
    "check_stepping",
    "controller_config",
    "geometry_of",
    "integrator",
    "solve_on_gamma",
]


class SaveTimes(eqx.Module):
    """Where a flow's solution is recorded (the flows' counterpart of diffrax's ``SaveAt``).

    Exactly one of:
        t1: end time; the solution is saved at ``n`` equally spaced times in ``[0, t1]``.
        ts: increasing, finite, non-negative save times (0 is prepended when missing).

    Attributes:
        n: number of saves with ``t1`` (at least 2).
    """

    t1: float | None = eqx.field(static=True, default=None)
    ts: tuple[float, ...] | None = eqx.field(static=True, default=None)
    n: int = eqx.field(static=True, default=101)

    def __init__(
        self, t1: float | None = None, *, ts: Sequence[float] | Any | None = None, n: int = 101
    ) -> None:
        if (t1 is None) == (ts is None):
            raise ValueError(
                f"SaveTimes needs exactly one of t1 (an end time) and ts (save times); got "
                f"t1={t1!r}, ts={ts!r}"
            )
        if t1 is not None:
            self.t1 = check.positive(t1, "SaveTimes.t1")
            self.ts = None
            if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
                raise ValueError(f"SaveTimes.n must be an int >= 2, got {n!r}")
            self.n = int(n)
            return
        arr = np.atleast_1d(np.asarray(ts, dtype=np.float64))
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(
                f"SaveTimes.ts must be a non-empty 1-d sequence, got shape {arr.shape}"
            )
        if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(np.diff(arr) <= 0):
            raise ValueError(
                f"SaveTimes.ts must be finite, >= 0 and strictly increasing, got {arr.tolist()}"
            )
        if arr[0] != 0.0:
            arr = np.concatenate([[0.0], arr])
        if arr.size < 2:
            raise ValueError("SaveTimes.ts must contain a positive time")
        self.t1 = None
        self.ts = tuple(float(x) for x in arr)
        self.n = int(arr.size)

    @classmethod
    def of(cls, value: SaveTimes | float | Sequence[float] | Any) -> SaveTimes:
        """``value`` as :class:`SaveTimes`: itself, an end time, or an array of save times."""
        if isinstance(value, SaveTimes):
            return value
        arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if arr.size == 1:
            return cls(float(arr[0]))
        return cls(ts=arr)

    def times(self) -> np.ndarray:
        """The save times, float64, starting at 0."""
        if self.ts is not None:
            return np.asarray(self.ts, dtype=np.float64)
        assert self.t1 is not None
        return np.linspace(0.0, self.t1, self.n)

    @property
    def end(self) -> float:
        """The last save time."""
        return float(self.times()[-1])

    def equally_spaced(self) -> bool:
        """Whether the save times are equally spaced (fixed-step integrators need it)."""
        gaps = np.diff(self.times())
        return bool(np.allclose(gaps, gaps[0], rtol=1e-9))


_RK4_TABLEAU = diffrax.ButcherTableau(
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    b_error=np.zeros(4),
    c=np.array([0.5, 0.5, 1.0]),
)


class RK4(diffrax.AbstractERK):
    """The classical fourth-order Runge-Kutta method as a diffrax solver (diffrax has none).

    It has no embedded error estimate: use it with :class:`FixedSteps` (an adaptive controller
    is refused by the flows).
    """

    tableau: ClassVar[diffrax.ButcherTableau] = _RK4_TABLEAU
    interpolation_cls: ClassVar[Callable[..., diffrax.ThirdOrderHermitePolynomialInterpolation]] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation.from_k
    )

    def order(self, terms: Any) -> int:
        return 4


class FixedSteps(eqx.Module):
    """Fixed steps in place of a diffrax step-size controller (for flows on ``Gamma``).

    Every interval between two save times is cut into ``ceil(interval / dt)`` equal steps of
    the solver, each followed by the retraction onto ``Gamma``; the save times must then be
    equally spaced. :class:`RK4` with ``FixedSteps(dt)`` is the classical projected RK4.

    Attributes:
        dt: the largest step (in the flow's time).
    """

    dt: float = eqx.field(static=True, default=0.05)

    def __check_init__(self) -> None:
        check.positive(self.dt, "FixedSteps.dt")

    def substeps(self, saveat: SaveTimes) -> int:
        """Steps per save interval (save times must be equally spaced)."""
        if not saveat.equally_spaced():
            raise ValueError(
                f"FixedSteps needs equally spaced save times, got {saveat.times().tolist()}"
            )
        interval = float(np.diff(saveat.times())[0])
        return max(1, math.ceil(interval / self.dt - 1e-9))


def controller_config(
    controller: diffrax.AbstractStepSizeController | FixedSteps,
) -> dict[str, Any]:
    """A step-size controller's settings for a result's ``config`` (JSON-friendly)."""
    out: dict[str, Any] = {"controller": type(controller).__name__}
    if isinstance(controller, FixedSteps):
        out["dt"] = controller.dt
        return out
    for name in ("rtol", "atol", "pcoeff", "icoeff", "dcoeff"):
        value = getattr(controller, name, None)
        if value is not None:
            out[name] = float(value)
    return out


def check_controller(
    controller: Any, name: str = "stepsize_controller"
) -> diffrax.AbstractStepSizeController:
    """``controller`` if it is a diffrax step-size controller with positive tolerances."""
    if not isinstance(controller, diffrax.AbstractStepSizeController):
        raise TypeError(
            f"{name} must be a diffrax step-size controller (e.g. "
            f"diffrax.PIDController(rtol=1e-8, atol=1e-10)), got {controller!r}"
        )
    for tol in ("rtol", "atol"):
        value = getattr(controller, tol, None)
        if value is not None:
            check.positive(value, f"{name}.{tol}")
    return controller


def check_stepping(
    controller: Any, name: str = "stepsize_controller"
) -> diffrax.AbstractStepSizeController | FixedSteps:
    """``controller`` if it is :class:`FixedSteps` or a diffrax step-size controller with
    positive tolerances (:func:`check_controller`)."""
    if isinstance(controller, FixedSteps):
        return controller
    try:
        return check_controller(controller, name)
    except TypeError:
        raise TypeError(
            f"{name} must be a diffrax step-size controller (e.g. "
            f"diffrax.PIDController(rtol=1e-8, atol=1e-10)) or theory.FixedSteps(dt), got "
            f"{controller!r}"
        ) from None


def integrator(
    solver: Any, stepsize_controller: Any
) -> tuple[diffrax.AbstractSolver, diffrax.AbstractStepSizeController | FixedSteps]:
    """A flow's solver and controller, checked; ``None`` gives the default of the flows on
    ``Gamma``: ``diffrax.Tsit5()`` and ``diffrax.PIDController(rtol=1e-8, atol=1e-10)``."""
    solver = diffrax.Tsit5() if solver is None else check_solver(solver)
    if stepsize_controller is None:
        return solver, diffrax.PIDController(rtol=1e-8, atol=1e-10)
    return solver, check_stepping(stepsize_controller)


def check_solver(solver: Any, name: str = "solver") -> diffrax.AbstractSolver:
    """``solver`` if it is a diffrax solver."""
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(f"{name} must be a diffrax solver (e.g. diffrax.Tsit5()), got {solver!r}")
    return solver


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


class Frame(NamedTuple):
    """The local frame of a geometry at a unit point ``u`` of ``Gamma``.

    Attributes:
        values: ``(k,)`` the top Hessian eigenvalues, descending.
        vectors: ``(D, k)`` their unit eigenvectors.
        project: ``v -> P_Gamma(u) v``, the orthogonal projector onto the tangent space of
            ``Gamma`` in the sphere (removes the Hessian's range and the radial direction).
    """

    values: Array
    vectors: Array
    project: Callable[[Array], Array]


def _normal_complement(u: Array, normal: Array) -> Callable[[Array], Array]:
    """``v -> P_sphere (I - N N^T) v`` for orthonormal normal directions ``N`` at unit ``u``."""

    def project(v: Array) -> Array:
        v = v - normal @ (normal.T @ v)
        return v - u * jnp.vdot(u, v)

    return project


class AbstractGeometry(eqx.Module):
    """How a flow computes curvature and finds ``Gamma`` (in the style of lineax's solvers).

    Attributes:
        rank: codimension of ``Gamma`` in the sphere (the number of nonzero Hessian eigenvalues
            on ``Gamma``); ``None`` until :meth:`resolve` counts it at the start.
    """

    rank: eqx.AbstractVar[int | None]

    @abc.abstractmethod
    def project(self, loss: LossFn, theta0: Array) -> Array:
        """A unit point of ``Gamma`` near ``theta0``: the flow's start."""

    @abc.abstractmethod
    def count_rank(self, loss: LossFn, theta: Array) -> int:
        """The codimension of ``Gamma`` at a point ``theta`` of it."""

    @abc.abstractmethod
    def top_eigs(self, loss: LossFn, w: Array, k: int) -> tuple[Array, Array]:
        """The top ``k`` eigenpairs of ``hess L(w)``: values ``(k,)`` descending, vectors
        ``(D, k)`` (traceable)."""

    def grad_and_top_eigs(self, loss: LossFn, w: Array, k: int) -> tuple[Array, Array, Array]:
        """``(grad L(w), top_eigs(loss, w, k))``; matrix-free geometries share one
        linearization between the two."""
        vals, vecs = self.top_eigs(loss, w, k)
        return jax.grad(loss)(w), vals, vecs

    @abc.abstractmethod
    def frame(self, loss: LossFn, u: Array, k: int) -> Frame:
        """The top ``k`` eigenpairs and ``P_Gamma`` at a unit point ``u`` of ``Gamma``
        (traceable; the geometry's ``rank`` must be known, :meth:`resolve`)."""

    def retract(self, loss: LossFn, y: Array) -> Array:
        """Back onto ``Gamma`` after a step of a flow: two dense Newton steps in the normal
        directions (:func:`theory.flows.manifold.newton_step`; traceable)."""
        for _ in range(2):
            y = newton_step(loss, y)
        return y

    def project_rows(self, loss: LossFn, rows: Array) -> Array:
        """:meth:`project` of each row of ``(N, D)`` (``Phi`` batched)."""
        return project_to_manifold(loss, rows)

    def known_rank(self) -> int:
        """``rank``, which a flow needs set (by :meth:`resolve` or by the caller)."""
        if self.rank is None:
            raise ValueError(
                f"{type(self).__name__}.rank is unknown: call geometry.resolve(loss, theta0) "
                "first or give rank"
            )
        return self.rank

    def with_rank(self, rank: int) -> AbstractGeometry:
        """This geometry with ``rank`` set."""
        return dataclasses.replace(self, rank=check.positive_int(rank, "rank"))

    def resolve(self, loss: LossFn, theta0: Array) -> tuple[Array, AbstractGeometry]:
        """``(start on Gamma, this geometry with its rank)``: the setup every flow on ``Gamma``
        shares (the rank is counted at the start unless it was given)."""
        theta0, _ = check.flat_vector(theta0, "theta0")
        start = self.project(loss, theta0)
        rank = self.count_rank(loss, start) if self.rank is None else self.rank
        return start, self.with_rank(rank)

    def config(self) -> dict[str, Any]:
        """The geometry's settings for a result's ``config`` (JSON-friendly)."""
        out: dict[str, Any] = {"geometry": type(self).__name__}
        for name, value in vars(self).items():
            if isinstance(value, bool | int | float | str) or value is None:
                out[name] = value
        return out


class Dense(AbstractGeometry):
    """Dense curvature: ``jax.hessian`` + ``eigh`` (``D`` up to a few thousand). ``Gamma`` is
    reached by the spherical gradient flow ``Phi`` (:func:`theory.project_to_manifold`)."""

    rank: int | None = eqx.field(static=True, default=None)

    def project(self, loss: LossFn, theta0: Array) -> Array:
        return project_to_manifold(loss, theta0)

    def count_rank(self, loss: LossFn, theta: Array) -> int:
        return hessian_rank(loss, theta)

    def top_eigs(self, loss: LossFn, w: Array, k: int) -> tuple[Array, Array]:
        vals, vecs = linalg.eigh(jax.hessian(loss)(w))
        return vals[::-1][:k], vecs[:, ::-1][:, :k]

    def frame(self, loss: LossFn, u: Array, k: int) -> Frame:
        vals, vecs = linalg.eigh(jax.hessian(loss)(u))
        normal = vecs[:, u.shape[0] - self.known_rank() :]
        return Frame(vals[::-1][:k], vecs[:, ::-1][:, :k], _normal_complement(u, normal))


class Lanczos(AbstractGeometry):
    """Matrix-free curvature: the top eigenpairs by Lanczos on Hessian-vector products.

    Attributes:
        rank: as in :class:`AbstractGeometry`.
        iters: Krylov dimension cap per evaluation (raised to ``2 k + 10`` when ``k`` pairs
            are asked for, and capped at ``D``).
        seed: the start vector is ``normal(PRNGKey(seed))`` (``None``: all ones).
    """

    rank: int | None = eqx.field(static=True, default=None)
    iters: int = eqx.field(static=True, default=64)
    seed: int | None = eqx.field(static=True, default=0)

    def __check_init__(self) -> None:
        check.positive_int(self.iters, "Lanczos.iters")

    def project(self, loss: LossFn, theta0: Array) -> Array:
        return project_to_manifold(loss, theta0)

    def count_rank(self, loss: LossFn, theta: Array) -> int:
        return hessian_rank(loss, theta)

    def start_vector(self, w: Array) -> Array:
        """Lanczos's start vector at ``w``."""
        if self.seed is None:
            return jnp.ones_like(w)
        return jax.random.normal(jax.random.PRNGKey(self.seed), w.shape, w.dtype)

    def top_eigs(self, loss: LossFn, w: Array, k: int) -> tuple[Array, Array]:
        _, vals, vecs = self.grad_and_top_eigs(loss, w, k)
        return vals, vecs

    def grad_and_top_eigs(self, loss: LossFn, w: Array, k: int) -> tuple[Array, Array, Array]:
        dim = w.shape[0]
        grad, hvp = linearize_grad(loss, w)
        res = lanczos(
            hvp, self.start_vector(w), k=k, max_iters=min(dim, max(self.iters, 2 * k + 10))
        )
        return grad, res.eigenvalues, res.eigenvectors

    def frame(self, loss: LossFn, u: Array, k: int) -> Frame:
        rank = self.known_rank()
        vals, vecs = self.top_eigs(loss, u, min(max(rank, k), u.shape[0]))
        return Frame(vals[:k], vecs[:, :k], _normal_complement(u, vecs[:, :rank]))


class GaussNewton(AbstractGeometry):
    """Interpolating least squares ``L = |r|^2 / 2``: ``Gamma = {r = 0}`` on the sphere.

    The start is the foot of the normal from ``theta0`` (matrix-free Gauss-Newton,
    :func:`theory.gauss_newton_project`, which differs from ``Phi`` by ``O(dist^2)``), and so is
    the retraction after each step of a flow; the rank is ``len(r)``; top eigenpairs come from
    Lanczos (``iters``), and ``Gamma``'s normal space is the row space of the residual Jacobian
    ``J`` (``P_Gamma`` by CG on ``J J^T``, :func:`theory.ls_tangent_projector`).

    With ``jacobian=True`` the local frame on ``Gamma`` (:meth:`frame`) comes from the dense
    ``n x D`` Jacobian instead: on ``Gamma`` ``H = J^T J``, so the top eigenpairs are those of the
    ``n x n`` matrix ``J J^T`` (``v = J^T q / sqrt(mu)``) and ``P_Gamma`` is exact (small ``n``;
    all ``n`` eigenvalues, so a third one is available to the cluster flow).

    Attributes:
        residual_fn: ``(D,) -> (n,)`` residuals.
        rank: default ``n``.
        iters: Lanczos cap per evaluation.
        jacobian: the dense-Jacobian frame (above).
    """

    residual_fn: Callable[[Array], Array]
    rank: int | None = eqx.field(static=True, default=None, kw_only=True)
    iters: int = eqx.field(static=True, default=64, kw_only=True)
    jacobian: bool = eqx.field(static=True, default=False, kw_only=True)

    def __check_init__(self) -> None:
        if not callable(self.residual_fn):
            raise TypeError(f"GaussNewton.residual_fn must be callable, got {self.residual_fn!r}")
        check.positive_int(self.iters, "GaussNewton.iters")

    def project(self, loss: LossFn, theta0: Array) -> Array:
        return gauss_newton_project(self.residual_fn, theta0).theta

    def count_rank(self, loss: LossFn, theta: Array) -> int:
        return int(jnp.shape(self.residual_fn(theta))[0])

    def top_eigs(self, loss: LossFn, w: Array, k: int) -> tuple[Array, Array]:
        _, vals, vecs = self.grad_and_top_eigs(loss, w, k)
        return vals, vecs

    def grad_and_top_eigs(self, loss: LossFn, w: Array, k: int) -> tuple[Array, Array, Array]:
        dim = w.shape[0]
        grad, hvp = linearize_grad(loss, w)
        res = lanczos(hvp, jnp.ones_like(w), k=k, max_iters=min(dim, max(self.iters, 2 * k + 10)))
        return grad, res.eigenvalues, res.eigenvectors

    def frame(self, loss: LossFn, u: Array, k: int) -> Frame:
        if self.jacobian:
            return self._jacobian_frame(u, k)
        vals, vecs = self.top_eigs(loss, u, k)
        return Frame(vals, vecs, ls_tangent_projector(self.residual_fn, u))

    def _jacobian_frame(self, u: Array, k: int) -> Frame:
        """The frame from ``J J^T`` (zero-padded when ``n < k``)."""
        jac = jax.jacrev(lambda x: jnp.asarray(self.residual_fn(x)).astype(u.dtype))(u)
        mu, q = linalg.eigh(jac @ jac.T)  # H = J^T J on Gamma: the same nonzero spectrum
        m = min(k, mu.shape[0])
        vals = mu[::-1][:m]
        vecs = jac.T @ q[:, ::-1][:, :m] / jnp.sqrt(vals)
        if m < k:
            vals = jnp.concatenate([vals, jnp.zeros(k - m, u.dtype)])
            vecs = jnp.concatenate([vecs, jnp.zeros((u.shape[0], k - m), u.dtype)], axis=1)

        def project(v: Array) -> Array:
            y = q @ ((q.T @ (jac @ v)) / mu)
            v = v - jac.T @ y
            return v - u * jnp.vdot(u, v)

        return Frame(vals, vecs, project)

    def retract(self, loss: LossFn, y: Array) -> Array:
        return gauss_newton_project(self.residual_fn, y, max_iters=8).theta

    def project_rows(self, loss: LossFn, rows: Array) -> Array:
        return _gn_rows(self.residual_fn, rows)


@eqx.filter_jit
def _gn_rows(residual_fn: Callable[[Array], Array], rows: Array) -> Array:
    return jax.vmap(lambda w: gauss_newton_project(residual_fn, w, raise_on_failure=False).theta)(
        rows
    )


def geometry_of(value: Any, name: str = "geometry") -> AbstractGeometry:
    """``value`` if it is a geometry object; a clear error otherwise (strings are refused)."""
    if isinstance(value, AbstractGeometry):
        return value
    raise TypeError(
        f"{name} must be a geometry object (theory.Dense(), theory.Lanczos(...), "
        f"theory.GaussNewton(residual_fn)), got {value!r}"
    )


# --------------------------------------------------------------------------------------------
# Integration on Gamma
# --------------------------------------------------------------------------------------------


class Retraction(eqx.Module):
    """``y -> geometry.retract(loss, y)``: back onto ``Gamma`` after a step."""

    geometry: AbstractGeometry
    loss: LossFn

    def __call__(self, y: Array) -> Array:
        return self.geometry.retract(self.loss, y)


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


class GammaSolution(NamedTuple):
    """A flow on ``Gamma`` at its save times (host side, :func:`solve_on_gamma`).

    Attributes:
        ts: ``(n,)`` the save times reached (all of them unless the stop event fired).
        ys: ``(n, D)`` the solution there.
        num_steps: accepted steps; ``num_evals`` vector-field evaluations.
        stopped_at: the time where the stop event fired, else ``None``.
    """

    ts: np.ndarray
    ys: Array
    num_steps: int
    num_evals: int
    stopped_at: float | None


def evals_per_step(solver: diffrax.AbstractSolver) -> int:
    """Vector-field evaluations per step of a Runge-Kutta solver (first-same-as-last saves
    one: 6 for ``Tsit5``, 4 for ``RK4``); 1 for any other solver."""
    if isinstance(solver, diffrax.AbstractRungeKutta):
        tableau = solver.tableau
        if isinstance(tableau, diffrax.ButcherTableau):
            return len(tableau.c) + 1 - int(tableau.fsal)
    return 1


def solve_on_gamma(
    field: Callable[[Any, Array, Any], Array],
    geometry: AbstractGeometry,
    loss: LossFn,
    start: Array,
    saveat: SaveTimes,
    solver: diffrax.AbstractSolver,
    stepsize_controller: diffrax.AbstractStepSizeController | FixedSteps,
    stop: Callable[..., Array] | None = None,
    max_steps: int = 100_000,
    meter: Meter | None = None,
) -> GammaSolution:
    """Integrate ``d y / d t = field(t, y, None)`` on ``Gamma`` from ``start`` (a point of it),
    retracting onto ``Gamma`` after every step, saved at ``saveat``.

    Adaptive (a diffrax controller): diffrax's ``diffeqsolve`` with :class:`ProjectedSolver`,
    stopped by the event ``stop(t, y, args)`` (a pytree callable, e.g. an ``eqx.Module``;
    ``None``: never); raises ``RuntimeError`` if the solver fails otherwise (``max_steps``
    reached, the step size collapsed, or the state became non-finite: the message says which
    it saw). Fixed (:class:`FixedSteps`): ``solver.step`` on equally spaced substeps (``stop``
    is not consulted: check the saves); a non-finite save raises ``RuntimeError`` naming it.

    With a ``meter`` (:mod:`theory.flows.monitor`) the saves are integrated in about 20
    segments, the state carried over (an adaptive controller restarts its step size at each),
    with a report after each and :class:`theory.core.errors.BudgetExceeded` (``.partial``: the
    :class:`GammaSolution` of the saves reached) when the budget runs out. Without one the
    solve is a single compiled call, as before.
    """
    if meter is not None:
        return _segmented(
            field, geometry, loss, start, saveat, solver, stepsize_controller, stop, max_steps,
            meter,
        )  # fmt: skip
    taus = jnp.asarray(saveat.times(), start.dtype)
    retract = Retraction(geometry, loss)
    if isinstance(stepsize_controller, FixedSteps):
        substeps = stepsize_controller.substeps(saveat)
        ys = _fixed(field, retract, solver, start, taus, substeps)
        _check_finite(ys, saveat.times())
        n_steps = substeps * (taus.shape[0] - 1)
        return GammaSolution(saveat.times(), ys, n_steps, n_steps * evals_per_step(solver), None)
    _no_adaptive_rk4(solver)
    controller = _traced_tolerances(stepsize_controller, start.dtype)
    ys, ts, steps, stopped, ok = _adaptive(
        field, retract, solver, controller, start, taus, stop, max_steps
    )
    if not bool(ok) and not bool(stopped):
        raise RuntimeError(_failure(np.asarray(ts), int(steps), max_steps, saveat.end))
    ts_np = np.asarray(ts)
    valid = np.isfinite(ts_np[:-1])
    n_steps = int(steps)
    return GammaSolution(
        saveat.times()[valid],
        ys[valid],
        n_steps,
        n_steps * evals_per_step(solver),
        float(ts_np[-1]) if bool(stopped) else None,
    )


def _no_adaptive_rk4(solver: diffrax.AbstractSolver) -> None:
    if isinstance(solver, RK4):
        raise ValueError(
            "RK4 has no error estimate for an adaptive step-size controller: use "
            "stepsize_controller=theory.FixedSteps(dt) with it"
        )


def _check_finite(ys: Array, times: np.ndarray) -> None:
    """Raise ``RuntimeError`` at the first save of a fixed-step solve that is not finite."""
    finite = np.all(np.isfinite(np.asarray(ys)), axis=1)
    if finite.all():
        return
    first = int(np.argmin(finite))
    raise RuntimeError(
        f"the fixed-step flow became non-finite: the save at t = {times[first]:.6g} has "
        f"non-finite entries, the one before (t = {times[max(first - 1, 0)]:.6g}) is finite; the "
        "step is too large for the curvature there (lower FixedSteps.dt) or the flow left the "
        "region where its field is defined"
    )


def _failure(ts: np.ndarray, steps: int, max_steps: int, end: float) -> str:
    """What an adaptive solve that stopped early saw: the time reached and the steps used."""
    reached = ts[np.isfinite(ts)]
    t_last = float(reached[-1]) if reached.size else float("nan")
    if steps >= max_steps:
        why = f"max_steps={max_steps} reached"
    else:
        why = (
            "the step size collapsed (diffrax rejects every step whose state or error estimate "
            "is non-finite, so a field that is non-finite or blows up there shows as this)"
        )
    return (
        f"the flow integrator failed before t = {end:g}: {why}, after {steps} accepted steps, "
        f"last time reached t = {t_last:.6g}; loosen the controller's rtol/atol, raise "
        "max_steps, or check the vector field there"
    )


def _segmented(
    field: Callable[[Any, Array, Any], Array],
    geometry: AbstractGeometry,
    loss: LossFn,
    start: Array,
    saveat: SaveTimes,
    solver: diffrax.AbstractSolver,
    stepsize_controller: diffrax.AbstractStepSizeController | FixedSteps,
    stop: Callable[..., Array] | None,
    max_steps: int,
    meter: Meter,
) -> GammaSolution:
    """:func:`solve_on_gamma` segment by segment (the state carried over), reporting to and
    charging ``meter``."""
    times = saveat.times()
    taus = jnp.asarray(times, start.dtype)
    retract = Retraction(geometry, loss)
    fixed = isinstance(stepsize_controller, FixedSteps)
    if fixed:
        assert isinstance(stepsize_controller, FixedSteps)
        substeps = stepsize_controller.substeps(saveat)
    else:
        _no_adaptive_rk4(solver)
        controller = _traced_tolerances(stepsize_controller, start.dtype)  # type: ignore[arg-type]
    per_eval = evals_per_step(solver)
    rows: list[Array] = [start]
    y, steps, stopped_at = start, 0, None
    meter.phase("flow", len(times) - 1)

    def partial() -> GammaSolution:
        ys = jnp.stack(rows)
        return GammaSolution(times[: len(rows)], ys, steps, steps * per_eval, stopped_at)

    for i, j in segments(len(times)):
        seg = taus[i : j + 1]
        if fixed:
            ys = _fixed(field, retract, solver, y, seg, substeps)
            n_seg = substeps * (j - i)
            _check_finite(ys, times[i : j + 1])
            rows.extend(ys[1:])
            steps += n_seg
        else:
            ys, ts, n_acc, fired, ok = _adaptive(
                field, retract, solver, controller, y, seg, stop, max_steps
            )
            n_seg = int(n_acc)
            steps += n_seg
            ts_np = np.asarray(ts)
            if not bool(ok) and not bool(fired):
                raise RuntimeError(_failure(ts_np, steps, max_steps, saveat.end))
            valid = np.flatnonzero(np.isfinite(ts_np[:-1]))
            rows.extend(ys[k] for k in valid if k > 0)
            if bool(fired):
                stopped_at = float(ts_np[-1])
            if steps > max_steps:
                raise RuntimeError(_failure(ts_np, steps, max_steps, saveat.end))
        y = rows[-1]
        meter.update(len(rows) - 1, steps=n_seg)
        if stopped_at is not None:
            break
        meter.check(f"flow at t = {times[len(rows) - 1]:.6g}", partial)
    return partial()


def _traced_tolerances(
    controller: diffrax.AbstractStepSizeController, dtype: Any
) -> diffrax.AbstractStepSizeController:
    """A PID controller with array tolerances (traced by ``filter_jit``: another tolerance does
    not recompile); other controllers unchanged."""
    if not isinstance(controller, diffrax.PIDController):
        return controller
    tols = (jnp.asarray(controller.rtol, dtype), jnp.asarray(controller.atol, dtype))
    return eqx.tree_at(lambda c: (c.rtol, c.atol), controller, tols)


@eqx.filter_jit
def _adaptive(
    field: Callable[[Any, Array, Any], Array],
    retract: Retraction,
    solver: diffrax.AbstractSolver,
    controller: diffrax.AbstractStepSizeController,
    y0: Array,
    taus: Array,
    stop: Callable[..., Array] | None,
    max_steps: int,
) -> tuple[Array, Array, Array, Array, Array]:
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        ProjectedSolver(solver, retract),
        t0=taus[0],
        t1=taus[-1],
        dt0=None,
        y0=y0,
        saveat=diffrax.SaveAt(ts=taus, t1=True),
        stepsize_controller=controller,
        event=None if stop is None else diffrax.Event(stop),
        max_steps=max_steps,
        throw=False,
    )
    assert sol.ys is not None and sol.ts is not None
    stopped = jnp.asarray(False) if sol.event_mask is None else jnp.asarray(sol.event_mask)
    ok = sol.result == diffrax.RESULTS.successful
    # The last saved entry is the terminal time: the end, or where the event fired.
    return sol.ys[:-1], sol.ts, sol.stats["num_accepted_steps"], stopped, ok


@eqx.filter_jit
def _fixed(
    field: Callable[[Any, Array, Any], Array],
    retract: Retraction,
    solver: diffrax.AbstractSolver,
    y0: Array,
    taus: Array,
    substeps: int,
) -> Array:
    terms = diffrax.ODETerm(field)
    state0 = solver.init(terms, taus[0], taus[1], y0, None)

    def one_interval(carry: tuple[Array, Any], span: Array) -> tuple[tuple[Array, Any], Array]:
        h = (span[1] - span[0]) / substeps

        def one_step(i: Any, c: tuple[Array, Any]) -> tuple[Array, Any]:
            y, state = c
            t0 = span[0] + i * h
            y1, _, _, state, _ = solver.step(terms, t0, t0 + h, y, None, state, False)
            return retract(y1), state

        carry = jax.lax.fori_loop(0, substeps, one_step, carry)
        return carry, carry[0]

    spans = jnp.stack([taus[:-1], taus[1:]], axis=1)
    _, ys = jax.lax.scan(one_interval, (y0, state0), spans)
    return jnp.concatenate([y0[None], ys])
