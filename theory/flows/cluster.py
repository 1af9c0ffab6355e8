"""The sharpness-reduction flow continued through eigenvalue crossings (docs/tame_and_crossings.md).

Where ``lambda_1`` meets ``lambda_2`` on ``Gamma``, ``lambda_max`` is not differentiable and the
smooth flow of :mod:`theory.flows.reduction` stops. Its natural continuation is the
steepest-descent curve
of ``log lambda_max`` on ``Gamma``: the velocity is built from the minimal-norm element of the
(projected) Clarke subdifferential,

    d_C lambda_max(theta) = conv{ D^3 L[v, v, .] : v unit in the top eigenspace }
                          = { sum_ij Sigma_ij D^3 L[v_i, v_j, .] : Sigma >= 0, tr Sigma = 1 }

(``v_1 .. v_k`` an orthonormal basis of the top eigenspace: the Clarke subdifferential of the
largest eigenvalue of a smooth symmetric-matrix family, Clarke 1983 section 2.8; Overton 1992).
With ``G_ij = P_Gamma D^3 L[v_i, v_j, .] / lambda_1`` the element is ``g* = sum Sigma*_ij G_ij``
with ``Sigma*`` minimizing ``|sum Sigma_ij G_ij|`` over the spectraplex: a small convex problem.
The velocity is that of :func:`theory.flows.reduction.velocity` with ``g = g*`` (F0 or F1).

Why it keeps the cluster together [derived]. Optimality of ``Sigma*`` says that the ``k x k``
matrix ``A_ij = <G_ij, g*>`` has its smallest eigenvalue ``|g*|^2`` on the range of ``Sigma*``.
Along ``-g*`` the restricted Hessian ``V^T H V`` moves by ``-c A``: if ``Sigma*`` has full rank,
``A = |g*|^2 I`` and the whole cluster falls at one rate (it stays together); if ``Sigma*`` is
rank-deficient, the members outside its range fall faster and the cluster splits. GD at the EoS
realizes the same ``g*``: its oscillation covariance in the top eigenspace, ``E[x x^T]``, plays
the role of ``Sigma`` and self-stabilization holds every member at ``2 / eta_eff``, which forces
``A`` proportional to ``I``; the norm balance of docs/theory.md section 3 then gives F1 with
``|g*|`` in place of ``|g|``.

Numerics. A member joins the cluster when ``lambda_i >= (1 - tol) lambda_1``
(:class:`Clustering`); with a cluster of one, ``g* = G_11`` and the field equals
:class:`theory.flows.reduction.SharpnessFlowField` (tested). Clusters of two are solved exactly:
``Sigma = [[1 + x, y], [y, 1 - x]] / 2`` with ``x^2 + y^2 <= 1``, so ``g = c + x a + y b``
(``c = (G_11 + G_22) / 2``, ``a = (G_11 - G_22) / 2``, ``b = G_12``), a least-squares problem
on the unit disk (the unconstrained minimizer, or the boundary root of the secular equation
found by bisection to rounding). Entering the cluster with a residual gap ``delta = 1 - lambda_2
/ lambda_1 <= tol`` would freeze that gap; a linear term ``-beta delta x / 2`` in the objective
(``beta = relax (4 + |c|^2)``) closes it at the rate ``>= relax`` in ``tau`` (it vanishes at
``delta = 0``, where ``g*`` is the exact minimal-norm element). A third eigenvalue joining is
reported (:func:`cluster_flow` stops).

Geometry: any of :mod:`theory.flows.common`'s (the local frame with three eigenvalues):
:class:`theory.Dense` (``jax.hessian`` + ``eigh``, small ``D``) or, for interpolating least
squares ``L = |r|^2 / 2``, ``theory.GaussNewton(residual_fn, jacobian=True)`` (on ``Gamma`` ``H
= J^T J``: the top eigenpairs come from the ``n x n`` matrix ``J J^T`` of a dense Jacobian, and
``P_Gamma`` from ``J``; for small ``n``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.core import linalg
from theory.core import validate as check
from theory.core.curvature import mixed_third
from theory.core.errors import DegenerateSharpnessWarning
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
from theory.flows.reduction import Form, check_form, velocity

_BISECTIONS = 200


class Clustering(eqx.Module):
    """When eigenvalues count as one cluster, and how a residual gap inside it closes.

    Attributes:
        tol: relative gap below which ``lambda_2`` joins the cluster (in ``(0, 0.5)``).
        relax: rate (in ``tau``) at which a residual gap inside the cluster is closed (>= 0).
    """

    tol: float = eqx.field(static=True, default=1e-3)
    relax: float = eqx.field(static=True, default=20.0)

    def __check_init__(self) -> None:
        check.positive(self.tol, "Clustering.tol")
        if self.tol >= 0.5:
            raise ValueError(
                f"Clustering.tol must be a small relative gap in (0, 0.5), got {self.tol}"
            )
        check.nonnegative(self.relax, "Clustering.relax")


class ClusterQuantities(NamedTuple):
    """What the continued flow needs at a point.

    Attributes:
        lam: ``(3,)`` the top three Hessian eigenvalues (descending).
        vecs: ``(D, 2)`` unit eigenvectors of ``lam[0], lam[1]``.
        size: cluster size, 1 or 2 (``lam[1] >= (1 - tol) lam[0]``, :class:`Clustering`).
        sigma: ``(2, 2)`` the optimal weights ``Sigma*`` in the basis ``vecs`` (``[[1, 0], [0,
            0]]`` for a cluster of one).
        g: ``(D,)`` the minimal-norm element ``g*`` (with the gap-closing term, module
            docstring); equals ``P_Gamma grad log lambda_1`` for a cluster of one.
        rates: ``(2,)`` ``<G_11, g>`` and ``<G_22, g>``: ``-d log lambda_i`` per unit of
            ``-g`` (equal when the cluster moves together).
    """

    lam: Array
    vecs: Array
    size: Array
    sigma: Array
    g: Array
    rates: Array


def min_norm_disk(c: Array, a: Array, b: Array, lin: Array) -> Array:
    """``argmin_{x^2 + y^2 <= 1} |c + x a + y b|^2 / 2 - lin x`` as ``(x, y)``.

    The unconstrained minimizer if it lies in the disk, else the boundary point ``z(mu) =
    -(M + mu I)^{-1} q`` with ``|z(mu)| = 1`` (``M = [a b]^T [a b]``, ``q = [a b]^T c - (lin,
    0)``), ``mu >= 0`` found by bisection (``|z(mu)|`` decreases in ``mu``).
    """
    mat = jnp.stack([a, b], axis=1)
    m = mat.T @ mat
    q = mat.T @ c - jnp.stack([lin, jnp.zeros_like(lin)])
    evals, evecs = linalg.eigh(m)
    qt = evecs.T @ q
    scale = jnp.maximum(evals[-1], jnp.finfo(m.dtype).tiny)
    regular = evals[0] > 1e3 * jnp.finfo(m.dtype).eps * scale

    def z_of(mu: Array) -> Array:
        return -(evecs @ (qt / (evals + mu)))

    z0 = jnp.where(regular, z_of(jnp.zeros_like(scale)), jnp.full((2,), jnp.inf, m.dtype))
    inside = regular & (jnp.linalg.norm(z0) <= 1.0)
    hi0 = jnp.linalg.norm(q) + scale  # |z(mu)| <= |q| / mu < 1 there

    def bisect(_: Any, lohi: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        big = jnp.linalg.norm(z_of(mid)) > 1.0
        return jnp.where(big, mid, lo), jnp.where(big, hi, mid)

    _, hi = jax.lax.fori_loop(0, _BISECTIONS, bisect, (jnp.zeros_like(scale), hi0))
    zb = z_of(hi)
    zb = zb / jnp.maximum(jnp.linalg.norm(zb), 1.0)
    return jnp.where(inside, z0, zb)


class ClusterFlowField(eqx.Module):
    """``f(tau, theta, args)``: the sharpness flow continued through ``lambda_1 = lambda_2``.

    Attributes:
        loss: the scale-invariant loss.
        geometry: the local frame on ``Gamma`` (three eigenvalues, two eigenvectors and
            ``P_Gamma``), its ``rank`` known.
        form: ``"F1"`` (default) or ``"F0"`` (:func:`theory.flows.reduction.velocity`).
        clustering: :class:`Clustering` (the cluster tolerance and the gap-closing rate).
    """

    loss: LossFn
    geometry: AbstractGeometry
    form: str = eqx.field(static=True, default="F1")
    clustering: Clustering = Clustering()

    def __check_init__(self) -> None:
        geometry_of(self.geometry)
        self.geometry.known_rank()
        check_form(self.form)

    def quantities(self, y: Array) -> ClusterQuantities:
        u = y / jnp.linalg.norm(y)
        lam, vecs, project = self.geometry.frame(self.loss, u, 3)
        v1, v2 = vecs[:, 0], vecs[:, 1]
        vecs = vecs[:, :2]
        g11 = project(mixed_third(self.loss, u, v1, v1)) / lam[0]
        g22 = project(mixed_third(self.loss, u, v2, v2)) / lam[0]
        g12 = project(mixed_third(self.loss, u, v1, v2)) / lam[0]
        delta = 1.0 - lam[1] / lam[0]
        clustered = delta <= self.clustering.tol
        c, a = 0.5 * (g11 + g22), 0.5 * (g11 - g22)
        beta = self.clustering.relax * (4.0 + jnp.vdot(c, c))
        xy = min_norm_disk(c, a, g12, 0.5 * beta * jnp.maximum(delta, 0.0))
        x = jnp.where(clustered, xy[0], 1.0)
        yy = jnp.where(clustered, xy[1], 0.0)
        g = c + x * a + yy * g12
        sigma = 0.5 * jnp.array([[1.0 + x, yy], [yy, 1.0 - x]], dtype=u.dtype)
        rates = jnp.stack([jnp.vdot(g11, g), jnp.vdot(g22, g)])
        size = jnp.where(clustered, 2, 1)
        return ClusterQuantities(lam, vecs, size, sigma, g, rates)

    def __call__(self, t: Any, y: Array, args: Any) -> Array:
        return velocity(self.quantities(y).g, self.form)


@dataclass(frozen=True)
class ClusterFlowResult:
    """A solution of the continued flow at the saved times (NumPy, host).

    Attributes:
        tau: ``(n,)`` slow times, ``tau[0] = 0``.
        theta: ``(n, D)`` points on ``Gamma``.
        eigenvalues: ``(n, 3)`` the top three Hessian eigenvalues.
        cluster_size: ``(n,)`` 1 or 2.
        sigma: ``(n, 2, 2)`` the optimal weights ``Sigma*``.
        g_norm: ``(n,)`` ``|g*|``.
        tau_cluster: first save where the cluster has two members (NaN if never).
        stopped: a message if a third eigenvalue joined (the solve stops there), else ``None``.
        num_steps: accepted integrator steps.
    """

    tau: np.ndarray
    theta: np.ndarray
    eigenvalues: np.ndarray
    cluster_size: np.ndarray
    sigma: np.ndarray
    g_norm: np.ndarray
    tau_cluster: float
    stopped: str | None
    num_steps: int
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def sharpness(self) -> np.ndarray:
        """``lambda_max`` along the flow."""
        return self.eigenvalues[:, 0]


class _ThirdJoins(eqx.Module):
    """The stop event: a third eigenvalue has joined the top cluster."""

    flow_field: ClusterFlowField

    def __call__(self, t: Any, y: Array, args: Any, **kwargs: Any) -> Array:
        lam = self.flow_field.quantities(y).lam
        return lam[2] >= (1.0 - self.flow_field.clustering.tol) * lam[0]


@eqx.filter_jit
def _measure(field_: ClusterFlowField, ys: Array) -> ClusterQuantities:
    return jax.lax.map(field_.quantities, ys)


def cluster_flow(
    loss: LossFn,
    theta0: Array,
    saveat: SaveTimes | float | Sequence[float] | np.ndarray,
    *,
    form: Form = "F1",
    geometry: AbstractGeometry | None = None,
    clustering: Clustering | None = None,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | FixedSteps | None = None,
    max_steps: int = 100_000,
    progress: Progress | Callable[[int, int], None] | bool | None = None,
    budget: Budget | None = None,
) -> ClusterFlowResult:
    """Integrate the continued flow from the projection of ``theta0`` onto ``Gamma``.

    Args:
        loss: scale-invariant loss.
        theta0: start ``(D,)``; projected first by the geometry (``Phi``, or Gauss-Newton).
        saveat: the slow times to save at (:class:`theory.SaveTimes` or an end time / array).
        form: ``"F1"`` (default) or ``"F0"``.
        geometry: :class:`theory.Dense` (``None``: ``Dense()``) or ``theory.GaussNewton(residual_fn,
            jacobian=True)`` (module docstring); ``rank`` counted at the start unless given.
        clustering: :class:`Clustering` (``None``: ``Clustering()``, ``tol=1e-3, relax=20``).
        solver, stepsize_controller, max_steps: the integrator (``None``: ``Tsit5()`` with
            ``PIDController(rtol=1e-8, atol=1e-10)``; a retraction after each step;
            :class:`theory.FixedSteps` for fixed steps, the stop event then checked at saves).
        progress, budget: as in :func:`theory.sharpness_flow` (:mod:`theory.flows.monitor`).

    Returns:
        :class:`ClusterFlowResult` (truncated, with ``stopped`` set and a
        :class:`DegenerateSharpnessWarning`, if a third eigenvalue joins the cluster).
    """
    check_form(form)
    geometry = Dense() if geometry is None else geometry_of(geometry)
    saveat = SaveTimes.of(saveat)
    clustering = Clustering() if clustering is None else clustering
    if not isinstance(clustering, Clustering):
        raise TypeError(f"clustering must be a theory.Clustering, got {clustering!r}")
    solver, stepsize_controller = integrator(solver, stepsize_controller)
    max_steps = check.positive_int(max_steps, "max_steps")
    meter = meter_for(progress, budget)
    with activated(meter):
        start, geometry = geometry.resolve(loss, theta0)
        field_ = ClusterFlowField(loss, geometry, form, clustering)
        lam_start = np.asarray(field_.quantities(start).lam)
        if lam_start[2] >= (1 - clustering.tol) * lam_start[0]:
            raise ValueError(
                f"the top three eigenvalues already coincide at the start ({lam_start}): "
                "clusters of more than two are not handled"
            )
        stop = _ThirdJoins(field_)
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
    ts, ys, q, message = _before_third(sol.ts, sol.ys, _measure(field_, sol.ys), sol, clustering)
    size = np.asarray(q.size)
    joined = np.flatnonzero(size >= 2)
    return ClusterFlowResult(
        tau=ts,
        theta=np.asarray(ys),
        eigenvalues=np.asarray(q.lam),
        cluster_size=size,
        sigma=np.asarray(q.sigma),
        g_norm=np.asarray(jnp.linalg.norm(q.g, axis=-1)),
        tau_cluster=float(ts[joined[0]]) if joined.size else float("nan"),
        stopped=message,
        num_steps=sol.num_steps,
        config={
            "form": form,
            **geometry.config(),
            "cluster_tol": clustering.tol,
            "relax": clustering.relax,
            "solver": type(solver).__name__,
            **controller_config(stepsize_controller),
            "max_steps": max_steps,
        },
    )


def _before_third(
    ts: np.ndarray, ys: Array, q: ClusterQuantities, sol: Any, clustering: Clustering
) -> tuple[np.ndarray, Array, ClusterQuantities, str | None]:
    """The saves before a third eigenvalue joins the cluster, and the message if one did
    (the adaptive solve's event, or a save of a fixed-step solve)."""
    lam = np.asarray(q.lam)
    third = lam[:, 2] >= (1.0 - clustering.tol) * lam[:, 0]
    if sol.stopped_at is None and not np.any(third):
        return ts, ys, q, None
    where = sol.stopped_at if sol.stopped_at is not None else float(ts[np.argmax(third)])
    message = (
        f"a third eigenvalue joined the top cluster near tau = {where:.4g}: "
        "clusters of more than two are not handled; returning the solution before it"
    )
    warnings.warn(message, DegenerateSharpnessWarning, stacklevel=3)
    keep = ~third
    return ts[keep], ys[keep], jax.tree.map(lambda a: a[keep], q), message
