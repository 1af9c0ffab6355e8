"""Analytic scale-invariant problems with a known minimizer manifold and closed-form sharpness.

Each analytic problem is a scale-invariant loss ``L(w) = h(w / |w|)`` on ``R^D`` whose minimizer
set on the unit sphere, ``Gamma``, is known in closed form, together with the quantities of
docs/theory.md section 3 along ``Gamma``: the spherical sharpness ``lambda_1(u)`` (top eigenvalue of
``hess L(u)`` at a unit ``u`` on ``Gamma``), its eigenvector, the Riemannian gradient
``g(u) = P_Gamma(u) grad log lambda_1(u)``, the projector ``P_Gamma(u)`` onto ``T_u Gamma`` and,
where ``Gamma`` is a curve, closed-form solutions of the sharpness-reduction flows

    (F0)  d theta / d tau = -(1/4) g,        (F1)  d theta / d tau = -(1/4) g / (1 + |g|^2 / 4).

They are oracles for the simulator (GD+WD, Lanczos, flow integrators), so every formula below is
checked in ``tests/problems/test_problems.py`` against dense ``jax.hessian``/``eigh``, third-order
autodiff
(Hellmann-Feynman), finite differences and ``scipy.integrate.solve_ivp``.

A general fact used throughout [derived here]: if ``grad h(u) = 0`` at a unit ``u`` (true on
``Gamma``, whose points minimize ``h``), then ``hess L(u) = P hess h(u) P`` with
``P = I - u u^T``, because ``hess L = Dn^T hess h Dn + sum_i d_i h D^2 n_i`` for
``n(w) = w / |w|`` and ``Dn(u) = P``. For a sum of squares ``h = 1/2 sum_j a_j r_j^2`` vanishing on
``Gamma`` this is ``P J^T A J P``, ``J = dr/du``, ``A = diag(a)``.

Problems (factories return an :class:`AnalyticProblem`; registry :data:`PROBLEMS`):

* :func:`great_circle` -- ``D = 3``, ``Gamma`` the equator, ``lambda_1 = 1 + beta u_1^2``
  (and :func:`great_circle_period2`, the exact period-2 orbit of GD+WD on it at ``g = 0``).
* :func:`curved_manifold` -- ``D = m + k``, ``Gamma`` a curved ``(m-1)``-sphere.
* :func:`ire_toy` -- the IRE toy ``(1 + u^2) v^2 / 2`` (Wang et al. 2024, Fig. 1) read in the
  gnomonic chart of the upper hemisphere of ``S^2``.

plus :func:`random_regression`, a non-analytic large-``D`` loss for benchmarks, returned as a
:class:`BenchmarkProblem` (``name, dim, loss, start`` only).

Conventions: losses are ``equinox.Module`` s whose coefficients are NumPy float64 fields (jit
arguments, not constants) cast to ``w.dtype`` at call time, so a float32 ``w`` gives a float32
computation. The closed-form functions of a problem are pytrees too (``jax.tree_util.Partial``
over the loss), and likewise compute in the dtype of their input. They take a *unit* point on
(or, where said, near) ``Gamma``; off ``Gamma`` they are smooth extensions, not Hessian
quantities. Time ``tau = 2 eta wd t`` as in docs/theory.md. To compile, pass a loss as an argument
of a jitted function or use ``equinox.filter_jit``: ``jax.jit(loss)`` fails, since a module with
array fields is unhashable.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from theory.core import linalg
from theory.core import validate as check
from theory.core.types import Array, LossFn

FlowForm = Literal["F0", "F1"]
_FLOW_FORMS = ("F0", "F1")
_BISECT_ITERS = 120  # 2^-120 ~ 1e-36: any bracket here shrinks below float64 resolution


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class AnalyticProblem:
    """A scale-invariant loss with known ``Gamma`` and closed-form sharpness along it.

    All callables are pure, jit-able and compute in the dtype of their array input; ``u`` below
    is a unit point on ``Gamma``, shape ``(D,)``.

    Attributes:
        name: registry name.
        dim: ``D``.
        manifold_dim: ``dim Gamma``.
        loss: the scale-invariant loss ``(D,) -> ()`` (an ``equinox.Module``).
        start: default unit starting point (NumPy float64, ``(D,)``), off ``Gamma`` but inside its
            basin for the spherical gradient flow (phase I).
        point: ``s -> u``, a smooth parametrization of ``Gamma`` (``s`` of shape
            ``(manifold_dim,)``; for a curve also a scalar angle).
        sample_on_manifold: ``(key, dtype=None) -> u``, a random point of ``Gamma``.
        lambda1: ``u -> lambda_1(hess L(u))``, the spherical sharpness.
        top_eigvec: ``u -> v_1``, unit top eigenvector (sign arbitrary).
        riemannian_grad_log_lambda1: ``u -> g = P_Gamma(u) grad log lambda_1``, ``(D,)``.
        tangent_projector: ``u -> P_Gamma(u)``, ``(D, D)`` orthogonal projector onto ``T_u Gamma``.
        distance_to_manifold: ``u -> d >= 0``, zero exactly on ``Gamma`` (exact geodesic distance
            or a first-order estimate, see each factory).
        flow_solution: ``(u0, tau, form) -> theta(tau)`` or ``None``; use
            :meth:`flow_closed_form`.
        chart: for a curve ``Gamma`` (``manifold_dim == 1``), ``u -> (x, y)``: the position
            along ``Gamma`` and the signed offset across it, for points near ``Gamma``
            (batched over leading axes); ``None`` otherwise. For drawing trajectories.
        residuals: ``w -> r(w)``, ``(D,) -> (n,)``, scale-invariant residuals with
            ``loss(w) = 1/2 |r(w)|^2`` (the loss is a weighted sum of squares
            ``1/2 sum_j a_j r_j^2`` and ``r_j`` here is ``sqrt(a_j) r_j``), zero exactly on
            ``Gamma``; for :mod:`theory.flows.gauss_newton`. ``None`` if not a least-squares
            problem.
        config: the factory's arguments (provenance).
    """

    name: str
    dim: int
    manifold_dim: int
    loss: LossFn
    start: np.ndarray
    point: Callable[[Array], Array]
    sample_on_manifold: Callable[..., Array]
    lambda1: Callable[[Array], Array]
    top_eigvec: Callable[[Array], Array]
    riemannian_grad_log_lambda1: Callable[[Array], Array]
    tangent_projector: Callable[[Array], Array]
    distance_to_manifold: Callable[[Array], Array]
    flow_solution: Callable[[Array, Array, str], Array] | None = dataclasses.field(
        default=None, repr=False
    )
    residuals: Callable[[Array], Array] | None = dataclasses.field(default=None, repr=False)
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    chart: Callable[[Array], tuple[Array, Array]] | None = dataclasses.field(
        default=None, repr=False
    )

    def __post_init__(self) -> None:
        if not 0 < self.manifold_dim < self.dim:
            raise ValueError(f"need 0 < manifold_dim < dim, got {self.manifold_dim}, {self.dim}")
        start = np.asarray(self.start)
        if start.shape != (self.dim,) or abs(np.linalg.norm(start) - 1.0) > 1e-12:
            raise ValueError(f"start must be a unit vector of shape ({self.dim},)")

    @property
    def has_closed_form_flow(self) -> bool:
        return self.flow_solution is not None

    def flow_closed_form(self, u0: Array, tau: Array | float, form: FlowForm = "F1") -> Array:
        """Point of ``Gamma`` at time ``tau`` on flow ``form`` ("F0" or "F1") started at ``u0``.

        ``u0``: unit point(s) on ``Gamma`` (the nearest point on ``Gamma`` is used),
        ``(..., D)``; ``tau``: time(s), broadcast against ``u0``'s batch shape (negative runs
        backward). Returns ``broadcast(batch, tau.shape) + (D,)`` in ``u0``'s dtype. Compiled
        (``jax.jit``, cached per shape, dtype and form).
        """
        if form not in _FLOW_FORMS:
            raise ValueError(f"form must be one of {_FLOW_FORMS}, got {form!r}")
        if self.flow_solution is None:
            raise ValueError(
                f"{self.name} (manifold_dim={self.manifold_dim}) has no closed-form flow; "
                "integrate the flow's vector field numerically"
            )
        u0 = _as_float_array(u0)
        return self.flow_solution(u0, jnp.asarray(tau, u0.dtype), form)


@dataclasses.dataclass(frozen=True, eq=False)
class BenchmarkProblem:
    """A scale-invariant loss without closed forms, for benchmarks at large ``D``.

    Attributes: ``name``; ``dim`` = ``D``; ``loss`` ``(D,) -> ()``; ``start`` a unit NumPy
    float64 vector ``(D,)``; ``config`` the factory's arguments.
    """

    name: str
    dim: int
    loss: LossFn
    start: np.ndarray
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _default_float(dtype: Any = None) -> Any:
    """``dtype``, or the default float (float64 with x64 enabled, else float32)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64 if dtype is None else dtype)


def _as_float_array(x: Any) -> Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(_default_float())


def _unit(w: Array) -> Array:
    return w / jnp.linalg.norm(w)


def _np_unit(w: Any) -> np.ndarray:
    w = np.asarray(w, np.float64)
    return w / np.linalg.norm(w)


def _angle(s: Any) -> Array:
    """A curve parameter given as a scalar or shape ``(1,)`` -> scalar float array."""
    s = _as_float_array(s)
    if s.size != 1:
        raise ValueError(f"a curve is parametrized by one angle, got shape {s.shape}")
    return s.reshape(())


def _bisect_increasing(fn: Callable[[Array], Array], target: Array, lo: Array, hi: Array) -> Array:
    """Solve ``fn(x) = target`` elementwise by bisection, ``fn`` increasing on ``[lo, hi]``."""

    def body(_: int, bracket: tuple[Array, Array]) -> tuple[Array, Array]:
        a, b = bracket
        mid = 0.5 * (a + b)
        below = fn(mid) < target
        return jnp.where(below, mid, a), jnp.where(below, b, mid)

    a, b = jax.lax.fori_loop(0, _BISECT_ITERS, body, (lo, hi))
    return 0.5 * (a + b)


def _solve_shifted(
    fn: Callable[[Array], Array],
    x0: Array,
    shift: Array,
    slope_min: float | Array,
    slope_max: float | Array,
) -> Array:
    """``x`` with ``fn(x) = fn(x0) + shift``, for ``fn`` with slope in ``[slope_min, slope_max]``.

    The slope bounds give the exact bracket ``x - x0 in shift * [1/slope_max, 1/slope_min]``.
    """
    x0, shift = jnp.broadcast_arrays(x0, shift)
    d1, d2 = shift / slope_max, shift / slope_min
    lo, hi = x0 + jnp.minimum(d1, d2), x0 + jnp.maximum(d1, d2)
    return _bisect_increasing(fn, fn(x0) + shift, lo, hi)


def _log_tan_to_cos_sin(x: Array) -> tuple[Array, Array]:
    """``(cos psi, sin psi)`` for ``x = log tan psi``, ``psi in (0, pi/2)``, without overflow."""
    return jnp.sqrt(jax.nn.sigmoid(-2 * x)), jnp.sqrt(jax.nn.sigmoid(2 * x))


def _check_form(form: str) -> None:
    if form not in _FLOW_FORMS:
        raise ValueError(f"form must be one of {_FLOW_FORMS}, got {form!r}")


# --------------------------------------------------------------------------------------------
# (a) great circle
# --------------------------------------------------------------------------------------------


class GreatCircleLoss(eqx.Module):
    """``L(w) = 1/2 (1 + beta u_1^2) u_3^2``, ``u = w / |w|``, ``w in R^3``."""

    beta: np.ndarray  # () float64

    def __call__(self, w: Array) -> Array:
        u = _unit(w)
        return 0.5 * (1 + jnp.asarray(self.beta, w.dtype) * u[0] ** 2) * u[2] ** 2


def _gc_residuals(loss: GreatCircleLoss, w: Array) -> Array:
    """``r(w) = [sqrt(1 + beta u_1^2) u_3]``, ``u = w / |w|``: ``loss(w) = 1/2 |r(w)|^2``."""
    u = _unit(w)
    return (jnp.sqrt(1 + jnp.asarray(loss.beta, w.dtype) * u[0] ** 2) * u[2])[None]


def _gc_cos_sin(u: Array) -> tuple[Array, Array]:
    """``(cos phi, sin phi)`` of the nearest equator point ``(cos phi, sin phi, 0)``."""
    rho = jnp.hypot(u[..., 0], u[..., 1])
    return u[..., 0] / rho, u[..., 1] / rho


def _gc_lambda1(loss: GreatCircleLoss, u: Array) -> Array:
    c, _ = _gc_cos_sin(u)
    return 1 + jnp.asarray(loss.beta, u.dtype) * c**2


def _gc_top_eigvec(u: Array) -> Array:
    return jnp.zeros_like(u).at[2].set(1)


def _gc_tangent(u: Array) -> Array:
    c, s = _gc_cos_sin(u)
    return jnp.stack([-s, c, jnp.zeros_like(c)], axis=-1)


def _gc_grad(loss: GreatCircleLoss, u: Array) -> Array:
    c, s = _gc_cos_sin(u)
    beta = jnp.asarray(loss.beta, u.dtype)
    return (-2 * beta * c * s / (1 + beta * c**2)) * _gc_tangent(u)


def _gc_projector(u: Array) -> Array:
    t = _gc_tangent(u)
    return jnp.outer(t, t)


def _gc_distance(u: Array) -> Array:
    return jnp.arctan2(jnp.abs(u[2]), jnp.hypot(u[0], u[1]))


def _gc_point(s: Any) -> Array:
    phi = _angle(s)
    return jnp.stack([jnp.cos(phi), jnp.sin(phi), jnp.zeros_like(phi)])


def _gc_chart(u: Array) -> tuple[Array, Array]:
    """(longitude ``phi``, latitude): position along the equator and offset across it."""
    u = _as_float_array(u)
    return jnp.arctan2(u[..., 1], u[..., 0]), jnp.arcsin(jnp.clip(u[..., 2], -1, 1))


def _gc_sample(key: Array, dtype: Any = None) -> Array:
    return _gc_point(jax.random.uniform(key, (), _default_float(dtype), 0.0, 2 * math.pi))


@functools.partial(jax.jit, static_argnames="form")
def _gc_flow(loss: GreatCircleLoss, u0: Array, tau: Array, form: str) -> Array:
    """Closed-form (F0)/(F1) on the equator, solved for ``x = log tan psi`` by bisection.

    With ``u = (cos phi, sin phi, 0)`` and ``psi in [0, pi/2]`` the angle of ``(|cos phi|,
    |sin phi|)`` (the flow keeps the quadrant: the axes are fixed points),
    ``dpsi/dtau = (beta/2) cs / (1 + beta c^2)`` for (F0) and
    ``(beta/2) cs (1 + beta c^2) / ((1 + beta c^2)^2 + beta^2 c^2 s^2)`` for (F1)
    (``c, s = cos psi, sin psi``). Separating variables [derived here]:

        (F0)  F0(psi) = (2/beta) log tan psi + 2 log sin psi                  = F0(psi_0) + tau
        (F1)  F1(psi) = F0(psi) - log(1 + beta cos^2 psi)                      = F1(psi_0) + tau

    (F0 is ``tan psi sin^beta psi = C exp(beta tau / 2)``). In ``x``:
    ``F0 = (2/beta) x - softplus(-2x)``, slope in ``[2/beta, 2/beta + 2]``; the extra term of F1
    adds a slope in ``[0, beta/2]``.
    """
    _check_form(form)
    beta = jnp.asarray(loss.beta, u0.dtype)
    c0, s0 = _gc_cos_sin(u0)
    fixed = (c0 == 0) | (s0 == 0)
    x0 = jnp.log(jnp.where(fixed, 1, jnp.abs(s0))) - jnp.log(jnp.where(fixed, 1, jnp.abs(c0)))

    def f0(x: Array) -> Array:
        return (2 / beta) * x - jax.nn.softplus(-2 * x)

    def f1(x: Array) -> Array:
        return f0(x) - jnp.log1p(beta * jax.nn.sigmoid(-2 * x))

    fn, extra = (f0, 0.0) if form == "F0" else (f1, beta / 2)
    x = _solve_shifted(fn, x0, tau, 2 / beta, 2 / beta + 2 + extra)
    c, s = _log_tan_to_cos_sin(x)
    out = jnp.stack([jnp.sign(c0) * c, jnp.sign(s0) * s, jnp.zeros_like(c)], axis=-1)
    return jnp.where(fixed[..., None], jnp.broadcast_to(u0, out.shape), out)


def great_circle(beta: float = 3.0) -> AnalyticProblem:
    """Great circle in ``S^2``: ``L(w) = 1/2 (1 + beta u_1^2) u_3^2``, ``u = w / |w|``.

    ``Gamma`` = the equator ``{u_3 = 0}``, ``point(phi) = (cos phi, sin phi, 0)``. On ``Gamma``
    ``hess L(u) = (1 + beta cos^2 phi) e_3 e_3^T``, so ``lambda_1 = 1 + beta cos^2 phi`` (simple;
    the others are 0), ``v_1 = e_3``, and with ``t = (-sin phi, cos phi, 0)``
    ``g = -2 beta cos phi sin phi / (1 + beta cos^2 phi) t``: the flows run to ``phi = +-pi/2``
    (``lambda_1 = 1``), away from the sharpest points ``phi = 0, pi`` (``lambda_1 = 1 + beta``).
    Closed-form flows: see :func:`_gc_flow`. ``distance_to_manifold`` is the exact geodesic
    distance ``atan2(|u_3|, |(u_1, u_2)|)``. ``start``: ``phi = pi/6`` lifted to distance 0.1.

    Args:
        beta: sharpness contrast, ``> 0``.
    """
    beta = check.positive(beta, "beta")
    loss = GreatCircleLoss(np.asarray(beta, np.float64))
    phi0, d0 = math.pi / 6, 0.1
    start = np.array([math.cos(phi0) * math.cos(d0), math.sin(phi0) * math.cos(d0), math.sin(d0)])
    return AnalyticProblem(
        name="great_circle",
        dim=3,
        manifold_dim=1,
        loss=loss,
        start=start,
        point=_gc_point,
        sample_on_manifold=_gc_sample,
        lambda1=Partial(_gc_lambda1, loss),
        top_eigvec=_gc_top_eigvec,
        riemannian_grad_log_lambda1=Partial(_gc_grad, loss),
        tangent_projector=_gc_projector,
        distance_to_manifold=_gc_distance,
        flow_solution=Partial(_gc_flow, loss),
        residuals=Partial(_gc_residuals, loss),
        config={"beta": float(beta)},
        chart=_gc_chart,
    )


class GreatCirclePeriod2(NamedTuple):
    """The exact period-2 orbit of GD+WD on :func:`great_circle` at a point with ``g = 0``.

    Fields (NumPy float64): ``w_plus``, ``w_minus`` (``(3,)``, GD maps each to the other),
    ``norm`` (``|w|``), ``psi`` (angle of the iterates off ``Gamma``), ``eos_iterates``
    (``eta lambda_1(hess L(w_+-))``), ``eos_angular`` (``eta_eff d^2 L / d psi^2`` at the
    iterates), ``eos_mean`` (``eta lambda_1(hess L)`` at the mean iterate ``(w_+ + w_-) / 2``,
    which lies on ``Gamma``), ``loss`` (at the iterates) and ``angular_edge`` (``eta_eff S`` at
    which phase II's angular instability starts). docs/theory.md section 6 derives them.
    """

    w_plus: np.ndarray
    w_minus: np.ndarray
    norm: float
    psi: float
    eos_iterates: float
    eos_angular: float
    eos_mean: float
    loss: float
    angular_edge: float


def great_circle_period2(eta: float, wd: float, beta: float = 3.0) -> GreatCirclePeriod2:
    """The exact period-2 orbit of GD+WD on ``great_circle(beta)`` at ``phi = pi/2`` [derived].

    At ``phi = pi/2`` (``u_1 = 0``, where ``lambda_1 = 1`` and ``g = 0``) the plane ``w_1 = 0`` is
    invariant and ``L = 1/2 sin^2 psi`` there, ``psi`` the angle off the equator. GD+WD maps
    ``w = r (0, cos psi, sin psi)`` to ``r' (0, cos psi', sin psi')`` with
    ``r'^2 = q^2 r^2 + eta^2 sin^2(2 psi) / (4 r^2)`` and
    ``psi' = psi - atan(eta sin(2 psi) / (2 q r^2))``, ``q = 1 - eta wd``. The orbit
    ``psi' = -psi``, ``r' = r`` is ``eta / r^2 = 2`` (exactly) and ``cos(2 psi) = q``. At the
    iterates the Hessian's top eigenvalue is ``cos^2 psi / r^2`` (or ``(beta - 1) sin^2 psi /
    r^2``, along ``e_1``, if larger), so ``eta lambda_1 = 2 - eta wd``; the angular curvature
    gives ``eta_eff d^2 L / d psi^2 = 2 q``; the mean iterate ``r cos psi (0, 1, 0)`` is on
    ``Gamma`` with ``eta lambda_1 = 4 / (2 - eta wd)``. Near ``Gamma`` the angle is multiplied
    by ``1 - eta_eff S / q`` per step, so it grows once ``eta_eff S > 2 q = 2 (1 - eta wd)``.

    Args:
        eta: learning rate, ``> 0``.
        wd: weight decay, ``> 0`` with ``eta * wd < 1``.
        beta: the problem's sharpness contrast, ``> 0``.

    Returns:
        A :class:`GreatCirclePeriod2`.
    """
    eta = check.positive(eta, "eta")
    wd = check.positive(wd, "wd")
    beta = check.positive(beta, "beta")
    ewd = check.in_interval(eta * wd, "eta * wd", 0.0, 1.0)
    q = 1.0 - ewd
    psi = 0.5 * math.acos(q)
    r = math.sqrt(eta / 2.0)
    c, s = math.cos(psi), math.sin(psi)
    w_plus = np.array([0.0, r * c, r * s])
    w_minus = np.array([0.0, r * c, -r * s])
    return GreatCirclePeriod2(
        w_plus=w_plus,
        w_minus=w_minus,
        norm=r,
        psi=psi,
        eos_iterates=max(2.0 - ewd, (beta - 1.0) * ewd),
        eos_angular=2.0 * q,
        eos_mean=4.0 / (2.0 - ewd),
        loss=0.5 * s**2,
        angular_edge=2.0 * q,
    )


# --------------------------------------------------------------------------------------------
# (c) the IRE toy in the gnomonic chart
# --------------------------------------------------------------------------------------------


class IreToyLoss(eqx.Module):
    """``L(w) = 1/2 (1 + (w_1/w_3)^2) (w_2/w_3)^2``: the IRE toy in the chart ``(w_1, w_2)/w_3``.

    Homogeneous of degree 0 (scale-invariant) wherever ``w_3 != 0``; the sphere model is the open
    upper hemisphere ``w_3 > 0`` (the lower one is its antipodal copy, ``L(-w) = L(w)``). No
    coefficients: an ``equinox.Module`` without fields, for a uniform interface.
    """

    def __call__(self, w: Array) -> Array:
        return _ire_chart_loss(w[0] / w[2], w[1] / w[2])


def _ire_chart_loss(u: Array, v: Array) -> Array:
    return 0.5 * (1 + u**2) * v**2


def ire_toy_chart_loss(w: Array) -> Array:
    """The IRE toy in its own coordinates: ``L(u, v) = (1 + u^2) v^2 / 2`` for ``w = (u, v)``.

    Not scale-invariant (the paper's Figure 1 runs plain GD and IRE on it); :func:`ire_toy` is
    the same loss read through the gnomonic chart of the sphere.
    """
    return _ire_chart_loss(w[0], w[1])


def ire_toy_chart_lambda_max(w: Array) -> Array:
    """Top eigenvalue of ``hess L(u, v) = [[v^2, 2 u v], [2 u v, 1 + u^2]]`` (closed form)."""
    a, c, b = w[1] ** 2, 1 + w[0] ** 2, 2 * w[0] * w[1]
    return (a + c) / 2 + jnp.sqrt(((c - a) / 2) ** 2 + b**2)


def ire_toy_stall(u0: float, v0: float, eta: float, kappa: float) -> float:
    """[derived] Where GD (``kappa = 0``) or IRE with the ideal mask stalls on the chart toy.

    With ``eta = 1``, ``u_0 = 1``, ``a = -log u`` and the per-step maps
    ``u <- u (1 - (1 + kappa) v^2)``, ``v <- -u^2 v``, the continuum limit is
    ``da/dt = (1 + kappa) v^2``, ``d(v^2)/dt = -4 a v^2``, hence
    ``v^2 = v_0^2 - 2 a^2 / (1 + kappa)``: the drift stops at
    ``u_inf = exp(-|v_0| sqrt((1 + kappa) / 2))`` (valid while the per-step change
    ``(1 + kappa) v_0^2`` is small). Only for the paper's start on the Edge of Stability,
    ``eta = 1`` and ``u_0 = 1``; NaN otherwise.
    """
    if eta != 1.0 or u0 != 1.0:
        return float("nan")
    return math.exp(-abs(v0) * math.sqrt((1 + kappa) / 2))


def ire_to_sphere(u: Any, v: Any) -> Array:
    """Chart ``(u, v)`` -> unit ``w = (u, v, 1) / sqrt(1 + u^2 + v^2)``, shape ``(..., 3)``."""
    u, v = jnp.broadcast_arrays(_as_float_array(u), _as_float_array(v))
    w = jnp.stack([u, v, jnp.ones_like(u)], axis=-1)
    return w / jnp.linalg.norm(w, axis=-1, keepdims=True)


def ire_to_chart(w: Array) -> tuple[Array, Array]:
    """Unit (or any) ``w`` with ``w_3 > 0`` -> chart ``(u, v) = (w_1 / w_3, w_2 / w_3)``."""
    return w[..., 0] / w[..., 2], w[..., 1] / w[..., 2]


def _ire_residuals(w: Array) -> Array:
    """``r(w) = [sqrt(1 + (w_1/w_3)^2) w_2/w_3]`` (degree 0): ``loss(w) = 1/2 |r(w)|^2``."""
    u, v = w[0] / w[2], w[1] / w[2]
    return (jnp.sqrt(1 + u**2) * v)[None]


def _ire_cos_sin(u: Array) -> tuple[Array, Array]:
    """``(cos psi, sin psi)`` of the nearest point ``(sin psi, 0, cos psi)`` of ``Gamma``."""
    rho = jnp.hypot(u[..., 0], u[..., 2])
    return u[..., 2] / rho, u[..., 0] / rho


def _ire_lambda1(u: Array) -> Array:
    c, _ = _ire_cos_sin(u)
    return c**-4


def _ire_top_eigvec(u: Array) -> Array:
    return jnp.zeros_like(u).at[1].set(1)


def _ire_tangent(u: Array) -> Array:
    c, s = _ire_cos_sin(u)
    return jnp.stack([c, jnp.zeros_like(c), -s], axis=-1)


def _ire_grad(u: Array) -> Array:
    c, s = _ire_cos_sin(u)
    return 4 * (s / c) * _ire_tangent(u)


def _ire_projector(u: Array) -> Array:
    t = _ire_tangent(u)
    return jnp.outer(t, t)


def _ire_distance(u: Array) -> Array:
    return jnp.arctan2(jnp.abs(u[1]), jnp.hypot(u[0], u[2]))


def _ire_point(s: Any) -> Array:
    psi = _angle(s)
    return jnp.stack([jnp.sin(psi), jnp.zeros_like(psi), jnp.cos(psi)])


def _ire_sample(key: Array, dtype: Any = None, psi_max: float = 1.0) -> Array:
    return _ire_point(jax.random.uniform(key, (), _default_float(dtype), -psi_max, psi_max))


@functools.partial(jax.jit, static_argnames="form")
def _ire_flow(u0: Array, tau: Array, form: str) -> Array:
    """Closed-form (F0)/(F1) on ``Gamma = {(sin psi, 0, cos psi)}`` [derived here].

    ``g = 4 tan psi (cos psi, 0, -sin psi)``, ``|g|^2 / 4 = 4 tan^2 psi``, so
    ``dpsi/dtau = -tan psi`` (F0) or ``-tan psi / (1 + 4 tan^2 psi)`` (F1). Separating:

        (F0)  sin psi(tau) = sin psi_0 exp(-tau)
        (F1)  G(psi) = log sin psi - 4 log cos psi = G(psi_0) - tau

    (F1) is solved for ``x = log |tan psi| = log |u|`` (chart ``u``):
    ``G = -softplus(-2x)/2 + 2 softplus(2x)``, slope in ``[1, 4]``. Backward in time (F0) leaves
    the hemisphere (``|sin psi| = 1``) at ``tau = log |sin psi_0|``; beyond it the result is NaN.
    (F1) exists for all ``tau``.
    """
    _check_form(form)
    c0, s0 = _ire_cos_sin(u0)
    if form == "F0":
        s = s0 * jnp.exp(-tau)
        out = jnp.stack([s, jnp.zeros_like(s), jnp.sqrt(jnp.abs((1 - s) * (1 + s)))], axis=-1)
        return jnp.where(jnp.abs(s)[..., None] < 1, out, jnp.nan)  # backward: psi -> +-pi/2
    fixed = s0 == 0
    x0 = jnp.log(jnp.abs(jnp.where(fixed, 1, s0))) - jnp.log(c0)

    def g(x: Array) -> Array:
        return -0.5 * jax.nn.softplus(-2 * x) + 2 * jax.nn.softplus(2 * x)

    x = _solve_shifted(g, x0, -tau, 1.0, 4.0)
    c, s = _log_tan_to_cos_sin(x)
    out = jnp.stack([jnp.sign(s0) * s, jnp.zeros_like(s), c], axis=-1)
    return jnp.where(fixed[..., None], jnp.broadcast_to(u0, out.shape), out)


def ire_toy(psi_max: float = 1.0) -> AnalyticProblem:
    """The IRE toy ``L(u, v) = (1 + u^2) v^2 / 2`` (Wang et al. 2024, Fig. 1), scale-invariant.

    ``L(w) = 1/2 (1 + (w_1/w_3)^2) (w_2/w_3)^2`` on the open hemisphere ``w_3 > 0``; the chart
    ``(u, v) = (w_1/w_3, w_2/w_3)`` (:func:`ire_to_chart`, :func:`ire_to_sphere`) recovers the
    toy exactly. ``Gamma = {w_2 = 0, w_3 > 0}`` = ``{(sin psi, 0, cos psi): |psi| < pi/2}``
    (``u = tan psi``), an open half great circle; ``point(psi)``. On ``Gamma``
    ``hess L = (1 + u^2)/w_3^2 e_2 e_2^T``, so ``lambda_1 = sec^4 psi`` (simple, others 0),
    ``v_1 = e_2``, ``g = 4 tan psi (cos psi, 0, -sin psi)``: the flows run to ``psi = 0`` (the
    toy's flattest point ``(u, v) = (0, 0)``), see :func:`_ire_flow`. ``distance_to_manifold`` is
    the exact geodesic distance ``atan2(|w_2|, |(w_1, w_3)|)``. ``start``: the toy's ``(1, 0.01)``
    (distance ~7e-3).

    Args:
        psi_max: ``sample_on_manifold`` draws ``psi`` uniformly in ``[-psi_max, psi_max]``
            (``lambda_1 <= sec^4 psi_max``, 11.7 by default); ``0 < psi_max < pi/2``.
    """
    if not 0 < psi_max < math.pi / 2:
        raise ValueError(f"psi_max must be in (0, pi/2), got {psi_max}")
    return AnalyticProblem(
        name="ire_toy",
        dim=3,
        manifold_dim=1,
        loss=IreToyLoss(),
        start=_np_unit(np.array([1.0, 0.01, 1.0])),
        point=_ire_point,
        sample_on_manifold=Partial(_ire_sample, psi_max=psi_max),
        lambda1=_ire_lambda1,
        top_eigvec=_ire_top_eigvec,
        riemannian_grad_log_lambda1=_ire_grad,
        tangent_projector=_ire_projector,
        distance_to_manifold=_ire_distance,
        flow_solution=_ire_flow,
        residuals=Partial(_ire_residuals),
        config={"psi_max": float(psi_max)},
        chart=ire_to_chart,
    )


# --------------------------------------------------------------------------------------------
# (b) curved manifold
# --------------------------------------------------------------------------------------------

_CM_TOP_ALPHA, _CM_TOP_BETA = 3.0, 1.5  # a_1(x) = 3 + 1.5 (b_1.x)^2: the sharpest constraint
_CM_ALPHA_RANGE, _CM_BETA_RANGE = (0.5, 1.0), (0.0, 0.5)  # a_j, j >= 2: at most 1.5
_CM_START_DISTANCE = 0.1


class CurvedManifoldLoss(eqx.Module):
    """``L(w) = h(w/|w|)``, ``h(x, y) = 1/2 sum_j a_j(x) (y_j - phi_j(x))^2``, ``w = (x, y)``.

    ``x in R^m``, ``y in R^k``; ``phi_j(x) = x^T Q_j x`` (``Q_j`` = ``quad[j]``, symmetric),
    ``a_j(x) = alpha_j + beta_j (b_j . x)^2`` (``b_j`` = ``dirs[j]``).
    """

    quad: np.ndarray  # (k, m, m) float64
    alpha: np.ndarray  # (k,)
    beta: np.ndarray  # (k,)
    dirs: np.ndarray  # (k, m)

    def __call__(self, w: Array) -> Array:
        u = _unit(w)
        quad, alpha, beta, dirs = _cm_coeffs(self, w.dtype)
        m = quad.shape[1]
        r = u[m:] - _cm_phi(quad, u[:m])
        return 0.5 * jnp.sum(_cm_weights(alpha, beta, dirs, u[:m]) * r**2)


def _cm_coeffs(loss: CurvedManifoldLoss, dtype: Any) -> tuple[Array, Array, Array, Array]:
    cast = (jnp.asarray(c, dtype) for c in (loss.quad, loss.alpha, loss.beta, loss.dirs))
    quad, alpha, beta, dirs = cast
    return quad, alpha, beta, dirs


def _cm_phi(quad: Any, x: Any) -> Any:
    """``phi(x)``, ``(k,)`` (operators only: works on NumPy and JAX arrays)."""
    return (quad @ x) @ x


def _cm_weights(alpha: Array, beta: Array, dirs: Array, x: Array) -> Array:
    return alpha + beta * (dirs @ x) ** 2


def _cm_jacobian(quad: Array, x: Array) -> Array:
    """``J = dr/du = [-Dphi(x), I_k]``, ``(k, D)``, ``Dphi(x) = 2 Q_j x`` stacked."""
    k = quad.shape[0]
    return jnp.concatenate([-2 * (quad @ x), jnp.eye(k, dtype=x.dtype)], axis=1)


def _cm_residuals(loss: CurvedManifoldLoss, w: Array) -> Array:
    """``r_j(w) = sqrt(a_j(x)) (y_j - phi_j(x))``, ``(x, y) = w / |w|``, shape ``(k,)``."""
    u = _unit(w)
    quad, alpha, beta, dirs = _cm_coeffs(loss, w.dtype)
    x = u[: quad.shape[1]]
    return jnp.sqrt(_cm_weights(alpha, beta, dirs, x)) * (u[quad.shape[1] :] - _cm_phi(quad, x))


def _cm_reduced(loss: CurvedManifoldLoss, u: Array) -> tuple[Array, Array, Array, Array]:
    """``(M, sqrt(a), J, P)``: ``M = A^{1/2} J P J^T A^{1/2}`` (``k x k``), ``P = I - uu^T/|u|^2``.

    At a unit ``u`` on ``Gamma``, ``hess L(u) = (A^{1/2} J P)^T (A^{1/2} J P)``, whose nonzero
    eigenvalues are those of ``M``; elsewhere ``M`` is a smooth extension.
    """
    quad, alpha, beta, dirs = _cm_coeffs(loss, u.dtype)
    x = u[: quad.shape[1]]
    jac = _cm_jacobian(quad, x)
    proj = jnp.eye(u.shape[0], dtype=u.dtype) - jnp.outer(u, u) / (u @ u)
    sqrt_a = jnp.sqrt(_cm_weights(alpha, beta, dirs, x))
    jp = jac @ proj
    return sqrt_a[:, None] * (jp @ jac.T) * sqrt_a[None, :], sqrt_a, jac, proj


def _top_eig_sym(mat: Array) -> tuple[Array, Array]:
    """Top eigenpair of a small symmetric matrix: closed form for ``k <= 2``, else ``eigh``."""
    k = mat.shape[0]
    if k == 1:
        return mat[0, 0], jnp.ones((1,), mat.dtype)
    if k == 2:
        m00, m01, m11 = mat[0, 0], mat[0, 1], mat[1, 1]
        lam = 0.5 * (m00 + m11) + jnp.hypot(0.5 * (m00 - m11), m01)
        z = jnp.where(m00 >= m11, jnp.stack([lam - m11, m01]), jnp.stack([m01, lam - m00]))
        return lam, _unit(z)
    evals, evecs = linalg.eigh(mat)
    return evals[-1], evecs[:, -1]


def _cm_lambda1(loss: CurvedManifoldLoss, u: Array) -> Array:
    return _top_eig_sym(_cm_reduced(loss, u)[0])[0]


def _cm_top_eigvec(loss: CurvedManifoldLoss, u: Array) -> Array:
    mat, sqrt_a, jac, proj = _cm_reduced(loss, u)
    return _unit(proj @ (jac.T @ (sqrt_a * _top_eig_sym(mat)[1])))


def _cm_projector(loss: CurvedManifoldLoss, u: Array) -> Array:
    """``I - Q Q^T``, ``Q`` an orthonormal basis of ``span{u, rows of J}`` (the normal space)."""
    quad = jnp.asarray(loss.quad, u.dtype)
    normals = jnp.concatenate([u[:, None], _cm_jacobian(quad, u[: quad.shape[1]]).T], axis=1)
    q, _ = jnp.linalg.qr(normals)
    return jnp.eye(u.shape[0], dtype=u.dtype) - q @ q.T


def _cm_grad(loss: CurvedManifoldLoss, u: Array) -> Array:
    """``P_Gamma grad log lambda_1(M(u))`` by Hellmann-Feynman on the ``k x k`` matrix ``M``.

    With ``z`` the top eigenvector of ``M(u)`` held fixed, ``grad log (z^T M(.) z)`` at ``u``
    equals ``grad log lambda_1(M(.))``; only derivatives of the closed-form ``M`` are used.
    """
    z = jax.lax.stop_gradient(_top_eig_sym(_cm_reduced(loss, u)[0])[1])

    def log_rayleigh(v: Array) -> Array:
        return jnp.log(z @ _cm_reduced(loss, v)[0] @ z)

    return _cm_projector(loss, u) @ jax.grad(log_rayleigh)(u)


def _cm_distance(loss: CurvedManifoldLoss, u: Array) -> Array:
    """First-order distance ``sqrt(r^T (J P J^T)^{-1} r)`` at ``u / |u|`` [derived here].

    A normal displacement ``delta = P J^T c`` of a point of ``Gamma`` changes the residual
    ``r = y - phi(x)`` by ``J P J^T c``, so ``|delta|`` is this to first order: the estimate is
    ``d (1 + O(d))`` for a point at geodesic distance ``d``, and zero exactly on ``Gamma``.
    """
    u = _unit(u)
    quad = jnp.asarray(loss.quad, u.dtype)
    m = quad.shape[1]
    r = u[m:] - _cm_phi(quad, u[:m])
    jac = _cm_jacobian(quad, u[:m])
    gram = jac @ jac.T - jnp.outer(jac @ u, jac @ u)  # J P J^T
    return jnp.sqrt(r @ jnp.linalg.solve(gram, r))


def _cm_lift(loss: CurvedManifoldLoss, x: Array) -> Array:
    """The point of ``Gamma`` above the direction of ``x != 0``: ``(t xh, phi(t xh))``.

    ``|t xh|^2 + |phi(t xh)|^2 = t^2 + t^4 q`` (``q = |phi(xh)|^2``) increases in ``t``; it is 1
    at ``t^2 = 2 / (1 + sqrt(1 + 4 q))``.
    """
    quad = jnp.asarray(loss.quad, x.dtype)
    xh = _unit(x)
    ph = _cm_phi(quad, xh)
    t2 = 2 / (1 + jnp.sqrt(1 + 4 * (ph @ ph)))
    return jnp.concatenate([jnp.sqrt(t2) * xh, t2 * ph])


def _cm_point(loss: CurvedManifoldLoss, s: Any) -> Array:
    """Stereographic ``s in R^{m-1}`` -> ``xh = (2 s, |s|^2 - 1) / (|s|^2 + 1)`` -> lift."""
    s = _as_float_array(s)
    n2 = s @ s
    return _cm_lift(loss, jnp.concatenate([2 * s, (n2 - 1)[None]]) / (n2 + 1))


def _cm_sample(loss: CurvedManifoldLoss, key: Array, dtype: Any = None) -> Array:
    return _cm_lift(loss, jax.random.normal(key, (loss.quad.shape[1],), _default_float(dtype)))


def _cm_make_loss(m: int, k: int, curvature: float, rng: np.random.Generator) -> CurvedManifoldLoss:
    gauss = rng.standard_normal((k, m, m))
    sym = 0.5 * (gauss + np.swapaxes(gauss, 1, 2))
    sym /= np.max(np.abs(np.linalg.eigvalsh(sym)), axis=1)[:, None, None]  # spectral norm 1
    alpha = np.concatenate([[_CM_TOP_ALPHA], rng.uniform(*_CM_ALPHA_RANGE, k - 1)])
    beta = np.concatenate([[_CM_TOP_BETA], rng.uniform(*_CM_BETA_RANGE, k - 1)])
    dirs = rng.standard_normal((k, m))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return CurvedManifoldLoss(curvature * sym, alpha, beta, dirs)


def _cm_start(loss: CurvedManifoldLoss, rng: np.random.Generator) -> np.ndarray:
    """A point of ``Gamma`` moved by geodesic distance 0.1 along a random normal direction."""
    quad = loss.quad
    m, k = quad.shape[1], quad.shape[0]
    xh = _np_unit(rng.standard_normal(m))
    ph = _cm_phi(quad, xh)
    t2 = 2 / (1 + np.sqrt(1 + 4 * (ph @ ph)))
    u0 = np.concatenate([np.sqrt(t2) * xh, t2 * ph])
    jac = np.concatenate([-2 * (quad @ u0[:m]), np.eye(k)], axis=1)
    normal = jac.T @ rng.standard_normal(k)
    normal = _np_unit(normal - (normal @ u0) * u0)
    return _np_unit(u0 + math.tan(_CM_START_DISTANCE) * normal)


def curved_manifold(
    m: int = 4, k: int = 2, curvature: float = 0.5, seed: int = 0
) -> AnalyticProblem:
    """A curved ``(m-1)``-sphere ``Gamma`` in ``S^{m+k-1}`` with a simple, varying ``lambda_1``.

    ``L(w) = h(w/|w|)``, ``h(x, y) = 1/2 sum_j a_j(x) (y_j - phi_j(x))^2`` (``x in R^m``,
    ``y in R^k``, ``D = m + k``) with ``phi_j(x) = curvature x^T C_j x`` (``C_j`` random symmetric,
    spectral norm 1) and ``a_j(x) = alpha_j + beta_j (b_j . x)^2`` (``b_j`` random unit vectors;
    ``alpha_1 = 3, beta_1 = 1.5``; ``alpha_j ~ U(0.5, 1)``, ``beta_j ~ U(0, 0.5)`` for ``j >= 2``,
    which keeps ``lambda_1`` simple: the tests measure the gap). All from ``seed``.

    ``Gamma = {u unit: y = phi(x)}``: ``|x|^2 + |phi(x)|^2`` increases along rays, so each
    direction of ``x`` has one point of ``Gamma`` (closed-form lift, :func:`_cm_lift`) and
    ``Gamma`` is diffeomorphic to ``S^{m-1}``; ``point(s)`` lifts the stereographic
    ``s in R^{m-1}`` (all of ``Gamma`` but the point above ``x = e_m``). Normal space at ``u``:
    ``span{u, rows of J}``, ``J = [-Dphi(x), I_k]``, of dimension ``k + 1`` [derived here:
    ``J^T c = s u`` forces ``c = s phi(x)``, then ``s (|x|^2 + 2 |phi|^2) = 0``, so ``c = 0``],
    and ``J P`` has rank ``k``: ``hess L`` has constant rank ``k`` on ``Gamma``. On ``Gamma``
    ``hess L = P J^T A J P``, so ``lambda_1`` = top eigenvalue of
    ``M = A^{1/2} J P J^T A^{1/2}`` (``k x k``), ``v_1 = P J^T A^{1/2} z`` normalized; ``g`` by
    Hellmann-Feynman on ``M`` (:func:`_cm_grad`). ``distance_to_manifold`` is the first-order
    estimate of :func:`_cm_distance`. ``start``: a random point of ``Gamma`` moved by 0.1 along a
    random normal direction. No closed-form flow.

    Args:
        m: dimension of ``x`` (``Gamma`` has dimension ``m - 1``), ``>= 2``.
        k: number of constraints (codimension in the sphere), ``>= 1``.
        curvature: scale of ``phi`` (0 gives a flat great sphere).
        seed: NumPy seed of all coefficients and of ``start``.
    """
    if m < 2 or k < 1:
        raise ValueError(f"need m >= 2 and k >= 1, got m={m}, k={k}")
    curvature = check.nonnegative(curvature, "curvature")
    rng = np.random.default_rng(seed)
    loss = _cm_make_loss(m, k, float(curvature), rng)
    return AnalyticProblem(
        name="curved_manifold",
        dim=m + k,
        manifold_dim=m - 1,
        loss=loss,
        start=_cm_start(loss, rng),
        point=Partial(_cm_point, loss),
        sample_on_manifold=Partial(_cm_sample, loss),
        lambda1=Partial(_cm_lambda1, loss),
        top_eigvec=Partial(_cm_top_eigvec, loss),
        riemannian_grad_log_lambda1=Partial(_cm_grad, loss),
        tangent_projector=Partial(_cm_projector, loss),
        distance_to_manifold=Partial(_cm_distance, loss),
        residuals=Partial(_cm_residuals, loss),
        config={"m": m, "k": k, "curvature": float(curvature), "seed": seed},
    )


# --------------------------------------------------------------------------------------------
# (d) random regression (benchmarks, no closed forms)
# --------------------------------------------------------------------------------------------


class RandomRegressionLoss(eqx.Module):
    """``L(w) = 1/(2n) sum_i (a^T tanh(s W_hat z_i) - y_i)^2``, ``W_hat = W / |W|_F``.

    ``W = w.reshape(hidden, d_in)`` normalized as a whole (one scale-invariance group). Fields
    (NumPy float64, jit arguments): ``inputs`` ``Z`` ``(n, d_in)``, ``targets`` ``y`` ``(n,)``,
    ``out_weights`` ``a`` ``(hidden,)``, ``input_scale`` ``s`` ``()``.
    """

    inputs: np.ndarray
    targets: np.ndarray
    out_weights: np.ndarray
    input_scale: np.ndarray

    def __call__(self, w: Array) -> Array:
        dt = w.dtype
        hidden = self.out_weights.shape[0]
        weights = _unit(w).reshape(hidden, -1)
        pre = jnp.asarray(self.input_scale, dt) * (jnp.asarray(self.inputs, dt) @ weights.T)
        out = jnp.tanh(pre) @ jnp.asarray(self.out_weights, dt)
        return 0.5 * jnp.mean((out - jnp.asarray(self.targets, dt)) ** 2)


def random_regression(
    dim: int = 131072, n: int = 256, hidden: int = 256, seed: int = 0
) -> BenchmarkProblem:
    """Scale-invariant 2-layer tanh regression on random data, for benchmarks at large ``D``.

    ``d_in = dim / hidden``; ``Z ~ N(0, 1)`` entrywise; ``a_i = +-1/sqrt(hidden)``; ``s =
    sqrt(hidden)``, so at a random unit ``w`` (entries ``~ N(0, 1/dim)``) the preactivations
    ``s (W_hat z)_i`` are ``~ N(0, 1)``: tanh is not saturated. Targets ``y`` come from a random
    unit teacher ``W*`` through the same network (realizable: the minimum is 0). ``start``: a
    random unit vector. No closed forms (hence a :class:`BenchmarkProblem`).

    Args:
        dim: ``D = hidden * d_in``; must be divisible by ``hidden``.
        n: number of samples.
        hidden: number of hidden units.
        seed: NumPy seed of the data, the teacher and ``start``.
    """
    if hidden < 1 or n < 1 or dim < hidden or dim % hidden:
        raise ValueError(f"need n, hidden >= 1 and dim a multiple of hidden, got {dim}, {hidden}")
    d_in = dim // hidden
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((n, d_in))
    out_weights = rng.choice([-1.0, 1.0], hidden) / math.sqrt(hidden)
    scale = math.sqrt(hidden)
    teacher = _np_unit(rng.standard_normal(dim)).reshape(hidden, d_in)
    targets = np.tanh(scale * inputs @ teacher.T) @ out_weights
    loss = RandomRegressionLoss(inputs, targets, out_weights, np.asarray(scale, np.float64))
    return BenchmarkProblem(
        name="random_regression",
        dim=dim,
        loss=loss,
        start=_np_unit(rng.standard_normal(dim)),
        config={"dim": dim, "n": n, "hidden": hidden, "seed": seed},
    )


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

PROBLEMS: dict[str, Callable[..., AnalyticProblem]] = {
    "great_circle": great_circle,
    "curved_manifold": curved_manifold,
    "ire_toy": ire_toy,
}
"""Analytic problems by name."""

BENCHMARK_PROBLEMS: dict[str, Callable[..., BenchmarkProblem]] = {
    "random_regression": random_regression,
}
"""Problems without closed forms, by name."""


def get_problem(name: str, **kwargs: Any) -> AnalyticProblem | BenchmarkProblem:
    """Build the problem ``name`` (from :data:`PROBLEMS` or :data:`BENCHMARK_PROBLEMS`)."""
    factory = PROBLEMS.get(name) or BENCHMARK_PROBLEMS.get(name)
    if factory is None:
        valid = ", ".join(sorted([*PROBLEMS, *BENCHMARK_PROBLEMS]))
        raise ValueError(f"unknown problem {name!r}; valid names: {valid}")
    return factory(**kwargs)
