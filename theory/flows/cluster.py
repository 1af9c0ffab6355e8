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

Numerics. A member joins the cluster when ``lambda_i >= (1 - cluster_tol) lambda_1``; with a
cluster of one, ``g* = G_11`` and the field equals
:class:`theory.flows.reduction.SharpnessFlowField`
(tested). Clusters of two are solved exactly: ``Sigma = [[1 + x, y], [y, 1 - x]] / 2`` with
``x^2 + y^2 <= 1``, so ``g = c + x a + y b`` (``c = (G_11 + G_22) / 2``, ``a = (G_11 - G_22) /
2``, ``b = G_12``), a least-squares problem on the unit disk (the unconstrained minimizer, or
the boundary root of the secular equation found by bisection to rounding). Entering the cluster
with a residual gap ``delta = 1 - lambda_2 / lambda_1 <= cluster_tol`` would freeze that gap;
a linear term ``-beta delta x / 2`` in the objective (``beta = relax (4 + |c|^2)``) closes it at
the rate ``>= relax`` in ``tau`` (it vanishes at ``delta = 0``, where ``g*`` is the exact
minimal-norm element). A third eigenvalue joining is reported (:func:`cluster_flow` stops).

Geometries: ``"dense"`` (``jax.hessian`` + ``eigh``, small ``D``) and ``"least_squares"``
(interpolating least squares ``L = |r|^2 / 2``: on ``Gamma`` ``H = J^T J``, so the top
eigenpairs come from the ``n x n`` matrix ``J J^T`` of a dense Jacobian, and ``P_Gamma`` from
``J``; for small ``n``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.core import linalg
from theory.core import validate as check
from theory.core.curvature import mixed_third
from theory.core.errors import DegenerateSharpnessWarning
from theory.core.types import Array, LossFn
from theory.flows.gauss_newton import gauss_newton_project
from theory.flows.manifold import hessian_rank, project_to_manifold
from theory.flows.reduction import Retraction, solve_projected, velocity

ClusterGeometry = Literal["dense", "least_squares"]
_BISECTIONS = 200


class ClusterQuantities(NamedTuple):
    """What the continued flow needs at a point.

    Attributes:
        lam: ``(3,)`` the top three Hessian eigenvalues (descending).
        vecs: ``(D, 2)`` unit eigenvectors of ``lam[0], lam[1]``.
        size: cluster size, 1 or 2 (``lam[1] >= (1 - cluster_tol) lam[0]``).
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
        rank: codimension of ``Gamma`` in the sphere (``"dense"``; ignored by least squares).
        form: ``"F1"`` (default) or ``"F0"`` (:func:`theory.flows.reduction.velocity`).
        geometry: ``"dense"`` or ``"least_squares"`` (needs ``residual_fn``).
        residual_fn: ``(D,) -> (n,)`` residuals, ``L = |r|^2 / 2``.
        cluster_tol: relative gap below which ``lambda_2`` joins the cluster.
        relax: rate (in ``tau``) at which a residual gap inside the cluster is closed.
    """

    loss: LossFn
    rank: int = eqx.field(static=True)
    form: str = eqx.field(static=True, default="F1")
    geometry: str = eqx.field(static=True, default="dense")
    residual_fn: Callable[[Array], Array] | None = None
    cluster_tol: float = eqx.field(static=True, default=1e-3)
    relax: float = eqx.field(static=True, default=20.0)

    def _eigen(self, u: Array) -> tuple[Array, Array, Callable[[Array], Array]]:
        """Top three eigenvalues, two top eigenvectors and ``v -> P_Gamma v`` at unit ``u``."""
        if self.geometry == "dense":
            vals, vecs = linalg.eigh(jax.hessian(self.loss)(u))
            normal = vecs[:, u.shape[0] - self.rank :]

            def project_dense(v: Array) -> Array:
                v = v - normal @ (normal.T @ v)
                return v - u * jnp.vdot(u, v)

            return vals[-3:][::-1], vecs[:, -2:][:, ::-1], project_dense
        assert self.residual_fn is not None, "geometry='least_squares' needs residual_fn"
        jac = jax.jacrev(lambda x: jnp.asarray(self.residual_fn(x)).astype(u.dtype))(u)  # type: ignore[misc]
        mu, uu = linalg.eigh(jac @ jac.T)  # H = J^T J on Gamma: same nonzero spectrum
        top = uu[:, -2:][:, ::-1]
        vecs = jac.T @ top / jnp.sqrt(mu[-2:][::-1])
        lam3 = mu[-3] if mu.shape[0] >= 3 else jnp.zeros_like(mu[0])
        lam = jnp.stack([mu[-1], mu[-2], lam3])

        def project(v: Array) -> Array:
            y = uu @ ((uu.T @ (jac @ v)) / mu)
            v = v - jac.T @ y
            return v - u * jnp.vdot(u, v)

        return lam, vecs, project

    def quantities(self, y: Array) -> ClusterQuantities:
        u = y / jnp.linalg.norm(y)
        lam, vecs, project = self._eigen(u)
        v1, v2 = vecs[:, 0], vecs[:, 1]
        g11 = project(mixed_third(self.loss, u, v1, v1)) / lam[0]
        g22 = project(mixed_third(self.loss, u, v2, v2)) / lam[0]
        g12 = project(mixed_third(self.loss, u, v1, v2)) / lam[0]
        delta = 1.0 - lam[1] / lam[0]
        clustered = delta <= self.cluster_tol
        c, a = 0.5 * (g11 + g22), 0.5 * (g11 - g22)
        beta = self.relax * (4.0 + jnp.vdot(c, c))
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


@eqx.filter_jit
def _solve(
    field_: ClusterFlowField,
    retract: Retraction,
    y0: Array,
    taus: Array,
    rtol: Array,
    atol: Array,
    max_steps: int,
) -> tuple[Array, Array, Array, Array, Array]:
    def third_joins(t: Array, y: Array, args: Any, **kwargs: Any) -> Array:
        lam = field_.quantities(y).lam
        return lam[2] >= (1.0 - field_.cluster_tol) * lam[0]

    return solve_projected(field_, retract, y0, taus, rtol, atol, third_joins, max_steps)


@eqx.filter_jit
def _measure(field_: ClusterFlowField, ys: Array) -> ClusterQuantities:
    return jax.lax.map(field_.quantities, ys)


def cluster_flow(
    loss: LossFn,
    theta0: Array,
    *,
    tau: float | np.ndarray,
    num_saves: int = 101,
    form: Literal["F0", "F1"] = "F1",
    geometry: ClusterGeometry = "dense",
    residual_fn: Callable[[Array], Array] | None = None,
    rank: int | None = None,
    cluster_tol: float = 1e-3,
    relax: float = 20.0,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    max_steps: int = 100_000,
) -> ClusterFlowResult:
    """Integrate the continued flow from the projection of ``theta0`` onto ``Gamma``.

    Args:
        loss: scale-invariant loss.
        theta0: start ``(D,)``; projected first (``Phi``, or Gauss-Newton with ``residual_fn``).
        tau: end time (``num_saves`` equally spaced saves) or an increasing array of save times.
        form: ``"F1"`` (default) or ``"F0"``.
        geometry: ``"dense"`` or ``"least_squares"`` (needs ``residual_fn``).
        residual_fn: residuals of an interpolating least-squares loss.
        rank: codimension of ``Gamma`` (``"dense"``; default counted at the start).
        cluster_tol: relative gap below which ``lambda_2`` joins the cluster (``(0, 0.5)``).
        relax: gap-closing rate inside the cluster (``>= 0``).
        rtol, atol, max_steps: of the adaptive solver (Tsit5 with a retraction after each step).

    Returns:
        :class:`ClusterFlowResult` (truncated, with ``stopped`` set and a
        :class:`DegenerateSharpnessWarning`, if a third eigenvalue joins the cluster).
    """
    if form not in ("F0", "F1"):
        raise ValueError(f"form must be 'F0' or 'F1', got {form!r}")
    if geometry not in ("dense", "least_squares"):
        raise ValueError(f"geometry must be 'dense' or 'least_squares', got {geometry!r}")
    if (geometry == "least_squares") != (residual_fn is not None):
        raise ValueError("residual_fn is required by geometry='least_squares' and only by it")
    theta0, _ = check.flat_vector(theta0, "theta0")
    cluster_tol = check.positive(cluster_tol, "cluster_tol")
    if cluster_tol >= 0.5:
        raise ValueError(f"cluster_tol must be a small relative gap in (0, 0.5), got {cluster_tol}")
    relax = check.nonnegative(relax, "relax")
    rtol, atol = check.positive(rtol, "rtol"), check.positive(atol, "atol")
    max_steps = check.positive_int(max_steps, "max_steps")
    taus_np = np.atleast_1d(np.asarray(tau, np.float64))
    if taus_np.size == 1:
        end = float(taus_np[0])
        if not (math.isfinite(end) and end > 0):
            raise ValueError(f"tau must be a positive finite end time or an array, got {tau!r}")
        if num_saves < 2:
            raise ValueError(f"num_saves must be >= 2, got {num_saves}")
        taus_np = np.linspace(0.0, end, num_saves)
    else:
        if not np.all(np.isfinite(taus_np)) or np.any(taus_np < 0) or np.any(np.diff(taus_np) <= 0):
            raise ValueError("tau must be finite, >= 0 and strictly increasing")
        if taus_np[0] != 0.0:
            taus_np = np.concatenate([[0.0], taus_np])
    if residual_fn is not None:
        start = gauss_newton_project(residual_fn, theta0).theta
        rank = int(residual_fn(start).shape[0]) if rank is None else rank
    else:
        start = project_to_manifold(loss, theta0)
        rank = hessian_rank(loss, start) if rank is None else rank
    rank = check.positive_int(rank, "rank")
    field_ = ClusterFlowField(loss, rank, form, geometry, residual_fn, cluster_tol, relax)
    lam_start = field_.quantities(start).lam
    if float(lam_start[2]) >= (1 - cluster_tol) * float(lam_start[0]):
        raise ValueError(
            f"the top three eigenvalues already coincide at the start ({np.asarray(lam_start)}): "
            "clusters of more than two are not handled"
        )
    retract = Retraction(loss, residual_fn=residual_fn)
    ys, ts, steps, stopped, ok = _solve(
        field_,
        retract,
        start,
        jnp.asarray(taus_np, start.dtype),
        jnp.asarray(rtol, start.dtype),
        jnp.asarray(atol, start.dtype),
        max_steps,
    )
    if not bool(ok) and not bool(stopped):
        raise RuntimeError(
            f"the continued flow failed before tau = {taus_np[-1]} (max_steps={max_steps} reached "
            "or the step size underflowed); loosen rtol/atol or raise max_steps"
        )
    valid = np.isfinite(np.asarray(ts)[:-1])
    ys = ys[valid]
    taus_np = taus_np[valid]
    message = None
    if bool(stopped):
        message = (
            "a third eigenvalue joined the top cluster near tau = "
            f"{float(np.asarray(ts)[-1]):.4g}: "
            "clusters of more than two are not handled; returning the solution before it"
        )
        warnings.warn(message, DegenerateSharpnessWarning, stacklevel=2)
    q = _measure(field_, ys)
    size = np.asarray(q.size)
    joined = np.flatnonzero(size >= 2)
    return ClusterFlowResult(
        tau=taus_np,
        theta=np.asarray(ys),
        eigenvalues=np.asarray(q.lam),
        cluster_size=size,
        sigma=np.asarray(q.sigma),
        g_norm=np.asarray(jnp.linalg.norm(q.g, axis=-1)),
        tau_cluster=float(taus_np[joined[0]]) if joined.size else float("nan"),
        stopped=message,
        num_steps=int(steps),
        config={
            "form": form,
            "geometry": geometry,
            "rank": rank,
            "cluster_tol": cluster_tol,
            "relax": relax,
            "rtol": rtol,
            "atol": atol,
        },
    )
