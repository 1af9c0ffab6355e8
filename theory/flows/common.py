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
  tolerances back for a result's ``config``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

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
from theory.flows.gauss_newton import gauss_newton_project
from theory.flows.manifold import hessian_rank, project_to_manifold

__all__ = [
    "AbstractGeometry",
    "Dense",
    "GaussNewton",
    "Lanczos",
    "SaveTimes",
    "check_controller",
    "check_solver",
    "controller_config",
    "geometry_of",
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


def controller_config(controller: diffrax.AbstractStepSizeController) -> dict[str, Any]:
    """A step-size controller's settings for a result's ``config`` (JSON-friendly)."""
    out: dict[str, Any] = {"controller": type(controller).__name__}
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


def check_solver(solver: Any, name: str = "solver") -> diffrax.AbstractSolver:
    """``solver`` if it is a diffrax solver."""
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(f"{name} must be a diffrax solver (e.g. diffrax.Tsit5()), got {solver!r}")
    return solver


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


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
        dim = w.shape[0]
        _, hvp = linearize_grad(loss, w)
        res = lanczos(
            hvp, self.start_vector(w), k=k, max_iters=min(dim, max(self.iters, 2 * k + 10))
        )
        return res.eigenvalues, res.eigenvectors


class GaussNewton(AbstractGeometry):
    """Interpolating least squares ``L = |r|^2 / 2``: ``Gamma = {r = 0}`` on the sphere.

    The start is the foot of the normal from ``theta0`` (matrix-free Gauss-Newton,
    :func:`theory.gauss_newton_project`, which differs from ``Phi`` by ``O(dist^2)``); the rank
    is ``len(r)``; top eigenpairs come from Lanczos (``iters``), and ``Gamma``'s normal space is
    the row space of the residual Jacobian.

    Attributes:
        residual_fn: ``(D,) -> (n,)`` residuals.
        rank: default ``n``.
        iters: Lanczos cap per evaluation.
    """

    residual_fn: Callable[[Array], Array]
    rank: int | None = eqx.field(static=True, default=None, kw_only=True)
    iters: int = eqx.field(static=True, default=64, kw_only=True)

    def __check_init__(self) -> None:
        if not callable(self.residual_fn):
            raise TypeError(f"GaussNewton.residual_fn must be callable, got {self.residual_fn!r}")
        check.positive_int(self.iters, "GaussNewton.iters")

    def project(self, loss: LossFn, theta0: Array) -> Array:
        return gauss_newton_project(self.residual_fn, theta0).theta

    def count_rank(self, loss: LossFn, theta: Array) -> int:
        return int(jnp.shape(self.residual_fn(theta))[0])

    def top_eigs(self, loss: LossFn, w: Array, k: int) -> tuple[Array, Array]:
        dim = w.shape[0]
        _, hvp = linearize_grad(loss, w)
        res = lanczos(hvp, jnp.ones_like(w), k=k, max_iters=min(dim, max(self.iters, 2 * k + 10)))
        return res.eigenvalues, res.eigenvectors


def geometry_of(value: Any, name: str = "geometry") -> AbstractGeometry:
    """``value`` if it is a geometry object; a clear error otherwise (strings are refused)."""
    if isinstance(value, AbstractGeometry):
        return value
    raise TypeError(
        f"{name} must be a geometry object (theory.Dense(), theory.Lanczos(...), "
        f"theory.GaussNewton(residual_fn)), got {value!r}"
    )
