"""The central flow of GD with weight decay on a scale-invariant loss (docs/theory.md section 5).

Cohen, Damian, Talwalkar, Kolter and Lee ("Understanding Optimization in Deep Learning with
Central Flows", ICLR 2025, arXiv 2410.24206) model the time-averaged trajectory of GD with step
``eta`` on an objective ``f`` by the ODE (``t`` in GD steps)

    dw/dt = -eta [ grad f(w) + 1/2 grad <Sigma, hess f(w)> ],

with ``Sigma`` a PSD matrix on the eigenspace of ``hess f`` at the stability edge
``eta lambda_i(hess f) = 2``, the smallest one that keeps every eigenvalue at or below the edge
(zero below it). Here ``f = L + wd/2 |w|^2`` is the objective that GD+WD descends:
``w_{t+1} = w_t - eta grad f(w_t)``. Since ``hess f = hess L + wd I``, the edge is

    eta (lambda_i(hess L(w)) + wd) = 2,   i.e.   eta_eff S = 2 - eta wd       [derived]

in the project's EoS quantity ``eta lambda_1(hess L) = eta_eff S`` (docs/theory.md section 2):
along the top eigenvector GD multiplies a displacement by ``1 - eta wd - eta lambda_1``, which
leaves ``[-1, 1]`` exactly there. This is the central flow's linear-stability edge, one of
several ``O(eta wd)``-different values that tend to 2 as ``eta wd -> 0`` (GD's period-2 orbit at
``g = 0`` has its mean iterate at ``~ 2 + eta wd``; docs/theory.md section 6).
``grad <Sigma, hess f> = grad <Sigma, hess L>`` (the decay term
has a constant Hessian), computed by third-order autodiff with the eigenvectors held fixed.

**Sigma.** With ``U = [u_1 .. u_k]`` the top ``k`` eigenvectors of ``hess L(w)`` at the edge,
``Sigma = U M U^T`` and ``B_ab(x) = u_a^T hess L(x) u_b``. The flow moves ``B`` by
``dB/dt = -eta (A + 1/2 G(M))`` with ``A_ab = <grad B_ab, grad f>`` and
``G(M)_ab = <grad B_ab, sum_cd M_cd grad B_cd>``. ``M`` solves the complementarity problem

    M >= 0 (PSD),   Z = A' + 1/2 G(M) >= 0 (PSD),   <M, Z> = 0,

i.e. the convex QP ``min_{M PSD} <A', M> + 1/4 |sum_ab M_ab grad B_ab|^2``. Then
``dB/dt <= -kappa (B + wd - 2/eta)`` with equality on the support of ``M``: the flow keeps the
edge eigenvalues where they are, and ``A' = A - (kappa/eta) (B + wd - 2/eta)`` adds a restoring
rate ``kappa`` per step that removes the drift of an integrator off the constraint (Baumgarte
stabilization; the true flow is the limit ``kappa -> 0`` of solutions started on the edge).
For ``k = 1`` the solution is ``sigma^2 = max(0, -2 A' / |grad lambda_1|^2)``; for ``k >= 2``
it is found by accelerated projected gradient (FISTA) on ``M``, ``EdgeSettings.qp_iters``
iterations.

**Events and modes.** The *mode* ``k`` is the number of eigenvalues at the edge (0: plain
gradient flow on ``f``). A solve runs in one mode until an event: *enter* when
``eta (lambda_{k+1} + wd)`` reaches 2 (the mode becomes ``k + 1``), *leave* when
``eta (lambda_k + wd)`` falls below ``2 - leave_tol`` (the mode becomes ``k - 1``; this happens
once ``Sigma`` no longer needs the ``k``-th direction). Within a mode the vector field is
continuous. :func:`central_flow` chains the solves and records the events; the knobs of that
edge handling are one object, :class:`EdgeSettings`.

**Stiffness and the solver.** Off the edge the flow is gradient flow on ``f``: its fast modes
relax at rates ``eta lambda_i`` per step, up to 2 at the edge, while the slow drift along
``Gamma`` has rate ``~ eta wd``. The default solver is explicit (diffrax ``Tsit5`` with PID
step-size control): its step is bounded by stability to about ``1.5`` GD steps, so the flow
costs about ``4`` vector-field evaluations per GD step, each one gradient, one eigen-solve of the
geometry (``Lanczos()`` by default: matrix-free) for the top ``max_edge + 1`` eigenpairs and
``max_edge (max_edge + 1) / 2`` third-order passes.
Implicit solvers would need the Jacobian of a vector field that contains Lanczos; they are not
offered.

**Outputs** (:class:`CentralFlowResult`): on GD's time axis, the iterate, its norm, the effective
learning rate, the spherical sharpness ``S = lambda_1(hess L(w)) |w|^2``, ``eta lambda_1``,
``trace Sigma`` (the predicted mean squared oscillation of GD along the edge directions, in
``w`` space), the predicted time-averaged loss ``L(w) + 1/2 <Sigma, hess L(w)>`` and the
events.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from theory.core import linalg
from theory.core import validate as check
from theory.core.curvature import mixed_third
from theory.core.invariance import check_scale_invariance
from theory.core.types import Array, LossFn
from theory.engine.gd import check_rates
from theory.flows.common import (
    AbstractGeometry,
    Budget,
    Lanczos,
    Progress,
    SaveTimes,
    check_controller,
    check_solver,
    controller_config,
    geometry_of,
)
from theory.flows.monitor import Meter, activated, meter_for, segments

__all__ = [
    "CentralFlowField",
    "CentralFlowResult",
    "CentralQuantities",
    "CurvatureScan",
    "EdgeEvent",
    "EdgeSettings",
    "central_flow",
    "curvature_scan",
    "equilibrium_on_gamma",
    "solve_sigma",
]


class CentralQuantities(NamedTuple):
    """The central flow's quantities at one point (``p = max_edge + 1`` eigenpairs).

    Attributes:
        loss: ``L(w)``.
        lam: ``(p,)`` top eigenvalues of ``hess L(w)``, descending.
        vecs: ``(D, p)`` their unit eigenvectors.
        sigma: ``(k_max, k_max)`` the matrix ``M`` of ``Sigma = U M U^T`` (zero outside the
            active block).
        velocity: ``(D,)`` ``dw/dt``.
    """

    loss: Array
    lam: Array
    vecs: Array
    sigma: Array
    velocity: Array


def solve_sigma(gram: Array, lin: Array, active: Array, iters: int = 200) -> Array:
    """``argmin_{M PSD, supported on active} <lin, M> + 1/4 <M, gram M>`` for small ``k``.

    Args:
        gram: ``(k, k, k, k)``, ``gram[a, b, c, d] = <grad B_ab, grad B_cd>`` (PSD as a
            ``k^2 x k^2`` matrix).
        lin: ``(k, k)`` symmetric linear term ``A'``.
        active: ``(k,)`` bool, the directions allowed in the support of ``M``.
        iters: FISTA iterations (``k >= 2``); ``k = 1`` is solved in closed form.

    Returns:
        ``M``, ``(k, k)`` symmetric PSD, zero on inactive rows and columns. At the solution
        ``Z = lin + 1/2 gram(M)`` is PSD on the active block and ``<M, Z> = 0``.
    """
    k = lin.shape[0]
    if k == 1:
        g = gram.reshape(())
        s = jnp.where(g > 0, jnp.maximum(-2.0 * lin[0, 0] / jnp.where(g > 0, g, 1.0), 0.0), 0.0)
        return jnp.where(active[0], s, 0.0).reshape(1, 1)
    mask = (active[:, None] & active[None, :]).astype(lin.dtype)
    gmat = gram.reshape(k * k, k * k)
    lip = 0.5 * jnp.max(linalg.eigvalsh(gmat))
    step = jnp.where(lip > 0, 1.0 / jnp.where(lip > 0, lip, 1.0), 0.0)

    def grad(m: Array) -> Array:
        return lin + 0.5 * (gmat @ m.reshape(-1)).reshape(k, k)

    def project(m: Array) -> Array:
        m = 0.5 * (m + m.T) * mask
        vals, vecs = linalg.eigh(m)
        return (vecs * jnp.maximum(vals, 0.0)) @ vecs.T * mask

    def body(_: int, state: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        m, y, tk = state
        m_new = project(y - step * grad(y))
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * tk * tk))
        y_new = m_new + ((tk - 1.0) / t_new) * (m_new - m)
        return m_new, y_new, t_new

    zero = jnp.zeros_like(lin)
    m, _, _ = jax.lax.fori_loop(0, iters, body, (zero, zero, jnp.ones((), lin.dtype)))
    return m


class CentralFlowField(eqx.Module):
    """``f(t, w, mode) = dw/dt`` of the central flow of GD+WD (t in GD steps).

    Attributes:
        loss: the scale-invariant loss ``L``.
        eta, wd: learning rate and weight decay (arrays: traced, not compiled in).
        kappa: restoring rate per step towards the edge (see the module docstring).
        geometry: how the top eigenpairs of ``hess L(w)`` are computed (its ``top_eigs``):
            :class:`theory.Lanczos` (matrix-free, default) or :class:`theory.Dense` (small ``D``).
        max_edge: largest number of eigenvalues allowed at the edge (static; ``max_edge + 1``
            eigenpairs are computed so that the next one's arrival is seen).
        qp_iters: FISTA iterations for ``Sigma`` when ``max_edge >= 2``.

    The mode (the number of edge eigenvalues, an int array) is diffrax's ``args``.
    """

    loss: LossFn
    eta: Array
    wd: Array
    kappa: Array
    geometry: AbstractGeometry = Lanczos()
    max_edge: int = eqx.field(static=True, default=2)
    qp_iters: int = eqx.field(static=True, default=200)

    def __check_init__(self) -> None:
        geometry_of(self.geometry, "CentralFlowField.geometry")
        check.positive_int(self.max_edge, "CentralFlowField.max_edge")
        check.positive_int(self.qp_iters, "CentralFlowField.qp_iters")

    def num_pairs(self, dim: int) -> int:
        """Eigenpairs computed per evaluation: ``min(D, max_edge + 1)``."""
        return min(dim, self.max_edge + 1)

    def eigs(self, w: Array) -> tuple[Array, Array]:
        """The top ``p`` eigenvalues ``(p,)`` and eigenvectors ``(D, p)`` of ``hess L(w)``."""
        return self.geometry.top_eigs(self.loss, w, self.num_pairs(w.shape[0]))

    def edge_numbers(self, w: Array) -> Array:
        """``eta (lambda_i + wd)`` for the top ``p`` eigenvalues (2 is the edge)."""
        lam, _ = self.eigs(w)
        return self.eta * (lam + self.wd)

    def quantities(self, w: Array, mode: Array) -> CentralQuantities:
        """Everything at ``w`` in mode ``mode`` (``0 <= mode <= max_edge``)."""
        grad_l, lam, vecs = self.geometry.grad_and_top_eigs(
            self.loss, w, self.num_pairs(w.shape[0])
        )
        grad_f = grad_l + self.wd * w
        k = min(self.max_edge, lam.shape[0])
        if k == 0:
            return CentralQuantities(
                self.loss(w), lam, vecs, jnp.zeros((0, 0), w.dtype), -self.eta * grad_f
            )
        u = vecs[:, :k]
        pairs = [(a, b) for a in range(k) for b in range(a, k)]
        ia = jnp.asarray([a for a, _ in pairs])
        ib = jnp.asarray([b for _, b in pairs])
        grads = jax.vmap(lambda a, b: mixed_third(self.loss, w, a, b))(u[:, ia].T, u[:, ib].T)
        jac = jnp.zeros((k, k, w.shape[0]), w.dtype)
        jac = jac.at[ia, ib].set(grads).at[ib, ia].set(grads)  # (k, k, D): grad B_ab
        gram = jnp.einsum("abd,ced->abce", jac, jac)
        edge = 2.0 / self.eta - self.wd
        lin = jnp.einsum("abd,d->ab", jac, grad_f)
        lin = lin - jnp.diag((self.kappa / self.eta) * (lam[:k] - edge))
        active = jnp.arange(k) < mode
        sigma = solve_sigma(gram, lin, active, self.qp_iters)
        push = jnp.einsum("ab,abd->d", sigma, jac)
        velocity = -self.eta * (grad_f + 0.5 * push)
        return CentralQuantities(self.loss(w), lam, vecs, sigma, velocity)

    def __call__(self, t: Any, y: Array, args: Any) -> Array:
        return self.quantities(y, args).velocity


@dataclass(frozen=True)
class EdgeEvent:
    """A change of mode: at step ``t`` the flow entered (``+1``) or left (``-1``) the edge."""

    t: float
    change: int
    mode: int


class EdgeSettings(eqx.Module):
    """How :func:`central_flow` handles the edge of stability (module docstring).

    Attributes:
        max_edge: how many eigenvalues may sit at the edge at once (1 gives the closed-form
            ``sigma^2``; more need ``qp_iters`` FISTA iterations per evaluation).
        kappa: restoring rate per step that keeps the edge eigenvalues on the edge (``>= 0``).
        leave_tol: hysteresis: the flow leaves the edge when ``eta (lambda_k + wd)`` falls
            below ``2 - leave_tol`` (``> 0``).
        start_tol: a start with ``eta (lambda_1 + wd)`` in ``(2, 2 + start_tol]`` is taken to be
            on the edge (and pulled back to it at rate ``kappa``); above that it is refused.
        qp_iters: FISTA iterations for ``Sigma`` (``max_edge >= 2``).
        max_segments: cap on the chained solves (mode changes + 1).
        max_steps: integrator step cap per solve (between two mode changes).
    """

    max_edge: int = eqx.field(static=True, default=2)
    kappa: float = eqx.field(static=True, default=0.2)
    leave_tol: float = eqx.field(static=True, default=1e-4)
    start_tol: float = eqx.field(static=True, default=1e-3)
    qp_iters: int = eqx.field(static=True, default=200)
    max_segments: int = eqx.field(static=True, default=64)
    max_steps: int = eqx.field(static=True, default=1_000_000)

    def __check_init__(self) -> None:
        for name in ("max_edge", "qp_iters", "max_segments", "max_steps"):
            check.positive_int(getattr(self, name), f"EdgeSettings.{name}")
        check.nonnegative(self.kappa, "EdgeSettings.kappa")
        check.positive(self.leave_tol, "EdgeSettings.leave_tol")
        check.nonnegative(self.start_tol, "EdgeSettings.start_tol")

    def config(self) -> dict[str, Any]:
        """The settings for a result's ``config``."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class CentralFlowResult:
    """The central flow at the saved times (NumPy, host), on GD's time axis.

    Attributes:
        t: ``(n,)`` times in GD steps.
        w: ``(n, D)`` the central-flow iterate (GD's time-averaged iterate).
        norm: ``|w|``; ``eta_eff``: ``eta / |w|^2``.
        sharpness: spherical sharpness ``S = lambda_1(hess L(w)) |w|^2`` (one scale group).
        eos: ``eta lambda_1(hess L(w)) = eta_eff S`` (the edge is ``2 - eta wd``).
        sigma2: ``trace Sigma``, GD's predicted mean squared oscillation in ``w`` space.
        amplitude: ``sqrt(sigma2) / |w|``, the predicted RMS oscillation of the direction.
        loss: ``L(w)`` at the central point.
        avg_loss: predicted time-averaged ``L`` of GD, ``L(w) + 1/2 <Sigma, hess L(w)>``.
        mode: ``(n,)`` number of eigenvalues at the edge.
        lam: ``(n, p)`` top eigenvalues of ``hess L(w)``.
        events: the mode changes in order.
        onset: time of the first entry into the edge (``None`` if never).
        num_steps: integrator steps (accepted + rejected); ``num_evals``: vector-field
            evaluations (6 per Tsit5 step plus one event check per step).
        config: the settings.
    """

    t: np.ndarray
    w: np.ndarray
    norm: np.ndarray
    eta_eff: np.ndarray
    sharpness: np.ndarray
    eos: np.ndarray
    sigma2: np.ndarray
    amplitude: np.ndarray
    loss: np.ndarray
    avg_loss: np.ndarray
    mode: np.ndarray
    lam: np.ndarray
    events: tuple[EdgeEvent, ...]
    onset: float | None
    num_steps: int
    num_evals: int
    config: dict[str, Any] = field(default_factory=dict)


class _Segment(NamedTuple):
    ys: Array
    t_end: Array
    y_end: Array
    fired: Array
    ok: Array
    steps: Array


@eqx.filter_jit
def _segment(
    field_: CentralFlowField,
    solver: diffrax.AbstractAdaptiveSolver,
    controller: diffrax.AbstractStepSizeController,
    w0: Array,
    mode: Array,
    t0: Array,
    t1: Array,
    ts: Array,
    leave_tol: Array,
    max_steps: int,
) -> _Segment:
    """One solve in a fixed mode from ``t0`` until ``t1`` or the first event."""

    def margin(t: Array, y: Array, args: Array, **kwargs: Any) -> Array:
        # One event (one eigen-solve per step), located by bisection on the dense output: the
        # smaller of how far the next eigenvalue is below the edge and how far the last edge
        # eigenvalue is above 2 - leave_tol. The host decides which one reached zero.
        return _margins(field_.edge_numbers(y), args, leave_tol).min()

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field_),
        solver,
        t0=t0,
        t1=t1,
        dt0=None,
        y0=w0,
        args=mode,
        saveat=diffrax.SaveAt(ts=jnp.clip(ts, t0, t1), t1=True),
        stepsize_controller=controller,
        event=diffrax.Event(
            margin,
            root_finder=optx.Bisection(rtol=1e-9, atol=1e-9),  # type: ignore[call-arg]
        ),
        max_steps=max_steps,
        throw=False,
    )
    assert sol.ys is not None and sol.ts is not None
    fired = jnp.asarray(False) if sol.event_mask is None else jnp.asarray(sol.event_mask)
    ok = (sol.result == diffrax.RESULTS.successful) | fired
    steps = sol.stats["num_accepted_steps"] + sol.stats["num_rejected_steps"]
    # The saves reached come first, aligned with ``ts``; then the terminal state (the end or
    # the event); unreached saves are inf.
    last = jnp.sum(jnp.isfinite(sol.ts)) - 1
    ys = jnp.where((jnp.arange(ts.shape[0]) < last)[:, None], sol.ys[:-1], jnp.inf)
    return _Segment(ys, sol.ts[last], sol.ys[last], fired, ok, steps)


def _margins(edge: Array, mode: Any, leave_tol: Any) -> Array:
    """``(2 - e_{mode+1}, e_mode - (2 - leave_tol))`` (1 where undefined): both positive while
    the mode is right; ``e_i = eta (lambda_i + wd)``."""
    p = edge.shape[0]
    enter = jnp.where(mode < p, 2.0 - edge[jnp.minimum(mode, p - 1)], 1.0)
    leave = jnp.where(mode >= 1, edge[jnp.maximum(mode - 1, 0)] - 2.0 + leave_tol, 1.0)
    return jnp.stack([enter, leave])


@eqx.filter_jit
def _edge_numbers(field_: CentralFlowField, w: Array) -> Array:
    return field_.edge_numbers(w)


@eqx.filter_jit
def _measure(field_: CentralFlowField, ws: Array, modes: Array) -> CentralQuantities:
    return jax.vmap(field_.quantities)(ws, modes)


# The defaults of central_flow (module-level: immutable objects, built once).
_GEOMETRY = Lanczos()
_EDGE = EdgeSettings()
_SOLVER = diffrax.Tsit5()
_CONTROLLER = diffrax.PIDController(rtol=1e-7, atol=1e-10)


def _edge_settings(edge: Any) -> EdgeSettings:
    if not isinstance(edge, EdgeSettings):
        raise TypeError(
            f"edge must be a theory.EdgeSettings (e.g. EdgeSettings(max_edge=1)), got {edge!r}"
        )
    return edge


def _adaptive(obj: Any, kind: type, name: str) -> Any:
    """``obj`` if it is an adaptive diffrax ``kind`` (a solve that starts with ``dt0=None`` and
    ends at an event located on the dense output needs one; also used by theory.flows.predict:
    a candidate for theory.flows.common)."""
    if not isinstance(obj, kind):
        raise TypeError(f"{name} must be adaptive (a diffrax {kind.__name__}), got {obj!r}")
    return obj


def _start_mode(field_: CentralFlowField, w0: Array, edge: EdgeSettings) -> int:
    """The mode at ``w0`` (eigenvalues at the edge); a start above the edge is refused."""
    eta, wd = float(field_.eta), float(field_.wd)
    e0 = np.asarray(_edge_numbers(field_, w0))
    if e0[0] > 2.0 + edge.start_tol:
        # w0 -> c w0 divides lambda_1 by c^2: eta (lambda_1 / c^2 + wd) <= 2 needs this c.
        scale = math.sqrt((e0[0] - eta * wd) / (2.0 - eta * wd))
        raise ValueError(
            f"w0 is above the edge of stability: eta * (lambda_1 + wd) = {e0[0]:.6g} > 2 "
            f"(+ start_tol {edge.start_tol:g}). GD is linearly unstable there and the central "
            f"flow is undefined (GD would catapult). For a scale-invariant loss, w0 * c with "
            f"c >= {scale:.6g} starts at or below the edge."
        )
    mode = int(np.sum(e0 >= 2.0 - edge.leave_tol))
    if mode > edge.max_edge:
        raise RuntimeError(
            f"{mode} eigenvalues are at the edge at w0 (eta (lambda_i + wd) = {e0[:mode]}), "
            f"more than max_edge={edge.max_edge}; raise EdgeSettings.max_edge"
        )
    return mode


class _Path(NamedTuple):
    rows: dict[int, np.ndarray]  # save index -> iterate
    modes: dict[int, int]  # save index -> mode
    events: list[EdgeEvent]
    steps: int


def _chain(
    field_: CentralFlowField,
    solver: diffrax.AbstractAdaptiveSolver,
    controller: diffrax.AbstractStepSizeController,
    w0: Array,
    times: np.ndarray,
    edge: EdgeSettings,
    meter: Meter | None = None,
    partial: Callable[[_Path], Any] | None = None,
) -> _Path:
    """Chain the solves in fixed modes from ``w0``, switching the mode at each event.

    With a ``meter`` the solves also stop at about 20 equally spaced save times (the mode
    kept), to report progress and check the budget (``partial(path)``: what
    :class:`BudgetExceeded` carries)."""
    dtype = w0.dtype
    mode = _start_mode(field_, w0, edge)
    ts, t_end, leave_tol = jnp.asarray(times, dtype), float(times[-1]), edge.leave_tol
    w, t_now, path = w0, 0.0, _Path({}, {}, [], 0)
    stops = [t_end] if meter is None else [float(times[j]) for _, j in segments(len(times))]
    if meter is not None:
        meter.phase("flow", len(times) - 1)
    changes = 0
    while True:
        t_target = next(t for t in stops if t > t_now) if t_now < t_end else t_end
        seg = _segment(
            field_, solver, controller, w, jnp.asarray(mode, jnp.int32),
            jnp.asarray(t_now, dtype), jnp.asarray(t_target, dtype), ts,
            jnp.asarray(leave_tol, dtype), edge.max_steps,
        )  # fmt: skip
        path = path._replace(steps=path.steps + int(seg.steps))
        t_stop = float(seg.t_end)
        if not bool(seg.ok):
            raise RuntimeError(
                f"the central-flow integrator failed at t = {t_stop:.6g} steps in mode {mode} "
                f"(EdgeSettings.max_steps={edge.max_steps} reached or the step size "
                "underflowed); loosen the controller's rtol/atol or raise max_steps"
            )
        ys = np.asarray(seg.ys)
        for i in np.flatnonzero((times >= t_now) & (times <= t_stop)):
            if i not in path.rows and np.all(np.isfinite(ys[i])):
                path.rows[int(i)], path.modes[int(i)] = ys[i], mode
        w, t_now, fired = seg.y_end, t_stop, bool(seg.fired)
        if meter is not None:
            meter.update(max(path.rows), steps=int(seg.steps))
        if fired:
            gaps = np.asarray(_margins(_edge_numbers(field_, w), mode, leave_tol))
            change = +1 if gaps[0] <= gaps[1] else -1
            if mode + change > min(edge.max_edge, field_.num_pairs(w0.shape[0])):
                raise RuntimeError(
                    f"at t = {t_stop:.6g} steps a further eigenvalue reached the edge while "
                    f"{mode} were already there (max_edge={edge.max_edge}); raise "
                    "EdgeSettings.max_edge"
                )
            mode += change
            path.events.append(EdgeEvent(t_stop, change, mode))
            changes += 1
        if t_now >= t_end or (not fired and t_target >= t_end):
            return path
        if fired and changes >= edge.max_segments:
            raise RuntimeError(
                f"the central flow changed mode more than max_segments={edge.max_segments} "
                f"times before t = {t_end:g} (last events: {path.events[-3:]}); the edge is "
                "chattering"
            )
        if meter is not None and partial is not None:
            meter.check(f"flow at t = {t_now:.6g} steps", functools.partial(partial, path))


def _result(
    field_: CentralFlowField, times: np.ndarray, path: _Path, config: dict[str, Any]
) -> CentralFlowResult:
    """The saved rows measured at their modes."""
    eta = float(field_.eta)
    idx = np.asarray(sorted(path.rows))
    ws = np.stack([path.rows[i] for i in idx])
    modes = np.asarray([path.modes[i] for i in idx], np.int32)
    q = _measure(field_, jnp.asarray(ws), jnp.asarray(modes))
    lam, sig = np.asarray(q.lam), np.asarray(q.sigma)
    k = sig.shape[-1]
    sigma2 = np.trace(sig, axis1=1, axis2=2) if k else np.zeros(len(idx))
    half_sh = 0.5 * np.einsum("naa,na->n", sig, lam[:, :k]) if k else np.zeros(len(idx))
    norm = np.linalg.norm(ws, axis=1)
    loss_v = np.asarray(q.loss)
    onset = next((e.t for e in path.events if e.change > 0), None)
    if onset is None and modes.size and modes[0] > 0:
        onset = 0.0
    return CentralFlowResult(
        t=times[idx],
        w=ws,
        norm=norm,
        eta_eff=eta / norm**2,
        sharpness=lam[:, 0] * norm**2,
        eos=eta * lam[:, 0],
        sigma2=sigma2,
        amplitude=np.sqrt(np.maximum(sigma2, 0.0)) / norm,
        loss=loss_v,
        avg_loss=loss_v + half_sh,
        mode=modes,
        lam=lam,
        events=tuple(path.events),
        onset=onset,
        num_steps=path.steps,
        num_evals=7 * path.steps,
        config=config,
    )


def central_flow(
    loss: LossFn,
    w0: Array,
    *,
    eta: float,
    wd: float,
    saveat: SaveTimes | float | Array | np.ndarray,
    geometry: AbstractGeometry = _GEOMETRY,
    edge: EdgeSettings = _EDGE,
    solver: diffrax.AbstractAdaptiveSolver = _SOLVER,
    stepsize_controller: diffrax.AbstractStepSizeController = _CONTROLLER,
    progress: Progress | Callable[[int, int], None] | bool | None = None,
    budget: Budget | None = None,
) -> CentralFlowResult:
    """Integrate the central flow of GD+WD on a scale-invariant loss from any ``w0``.

    Args:
        loss: scale-invariant loss ``L`` (checked around ``w0``: the outputs ``sharpness`` and
            ``eta_eff`` assume it).
        w0: start ``(D,)``, finite and nonzero; GD's ``w_0``.
        eta: learning rate ``> 0``; wd: weight decay ``>= 0`` with ``eta * wd < 1``.
        saveat: the save times in GD steps, a :class:`theory.SaveTimes` (an end time or an
            array is read by :meth:`SaveTimes.of`).
        geometry: how the top eigenpairs are computed: :class:`theory.Lanczos` (matrix-free,
            default ``Lanczos()``) or :class:`theory.Dense` (small ``D``); its ``rank`` is not
            used.
        edge: the edge handling, :class:`EdgeSettings` (default ``EdgeSettings()``).
        solver: an explicit adaptive diffrax solver (default ``diffrax.Tsit5()``).
        stepsize_controller: an adaptive diffrax controller (default
            ``diffrax.PIDController(rtol=1e-7, atol=1e-10)``).
        progress: ``progress(saves_done, saves)`` after each segment, ``True`` for a tqdm bar,
            or :class:`theory.Progress` (phase ``"flow"``); ``None``: the active meter of an
            enclosing call, if any.
        budget: :class:`theory.Budget` (steps: accepted + rejected integrator steps). With
            either, the solve also stops at about 20 of the save times (docs/central_flow.md,
            "Progress and budgets"); with neither it runs as before.

    Returns:
        :class:`CentralFlowResult` (``config`` records every setting).

    Raises:
        ValueError: bad settings, ``eta * wd >= 1``, or a start above the edge
            (``eta (lambda_1 + wd) > 2 + start_tol``), where GD is linearly unstable and the
            central flow is undefined. For a scale-invariant loss, scaling ``w0`` by ``c``
            divides ``lambda_1`` by ``c^2``: the message gives the smallest scaling that
            puts ``w0`` on the edge.
        TypeError: a geometry, edge, solver or controller that is not such an object.
        theory.ScaleInvarianceError: the loss is not scale-invariant.
        RuntimeError: the integrator failed, more than ``max_edge`` eigenvalues reached the
            edge, or the mode changed more than ``max_segments`` times.
        theory.BudgetExceeded: the budget ran out; ``.partial`` is the
            :class:`CentralFlowResult` of the saves reached.
    """
    eta, wd, _ = check_rates(eta, wd)
    w0, _ = check.flat_vector(w0, "w0")
    times = SaveTimes.of(saveat).times()
    geometry = geometry_of(geometry)
    edge = _edge_settings(edge)
    solver = _adaptive(check_solver(solver), diffrax.AbstractAdaptiveSolver, "solver")
    controller = _adaptive(
        check_controller(stepsize_controller),
        diffrax.AbstractAdaptiveStepSizeController,
        "stepsize_controller",
    )
    check_scale_invariance(loss, w0)
    field_ = CentralFlowField(
        loss, jnp.asarray(eta, w0.dtype), jnp.asarray(wd, w0.dtype),
        jnp.asarray(edge.kappa, w0.dtype), geometry, edge.max_edge, edge.qp_iters,
    )  # fmt: skip
    config = {
        "eta": eta,
        "wd": wd,
        **geometry.config(),
        **edge.config(),
        "solver": type(solver).__name__,
        **controller_config(controller),
    }
    meter = meter_for(progress, budget)
    with activated(meter):
        path = _chain(
            field_, solver, controller, w0, times, edge, meter,
            lambda p: _result(field_, times, p, config),
        )  # fmt: skip
    return _result(field_, times, path, config)


def equilibrium_on_gamma(
    sharpness: float, g_norm: float, *, eta: float, wd: float
) -> dict[str, float]:
    """The central flow's EoS equilibrium at a point of ``Gamma`` (docs/theory.md section 5).

    For a unit ``theta`` on ``Gamma`` with spherical sharpness ``S`` and ``|g|`` the Riemannian
    gradient of ``log lambda_1``, to leading order in the distance of the central point from
    ``Gamma`` [derived]:

    * ``|w|^2 = eta S / (2 - eta wd)`` (the edge ``eta (lambda_1 + wd) = 2``);
    * ``sigma^2 / |w|^2 = eta wd / ((2 - eta wd) (1 + |g|^2 / 4))`` (the F1 amplitude);
    * the time-averaged loss ``1/2 sigma^2 lambda_1 = eta wd S / (2 (2 - eta wd)(1 + |g|^2/4))``;
    * the direction drifts by ``d theta / dt = -(eta wd / 2) g / (1 + |g|^2 / 4)``: flow F1
      in ``tau = 2 eta wd t``.

    Returns those numbers as a dict (``norm_sq``, ``amp_sq``, ``sigma2``, ``avg_loss``,
    ``drift_rate``: ``|d theta / dt|``).
    """
    eta, wd, _ = check_rates(eta, wd)
    s = check.positive(sharpness, "sharpness")
    g = check.nonnegative(g_norm, "g_norm")
    balance = 1.0 + 0.25 * g * g
    norm_sq = eta * s / (2.0 - eta * wd)
    amp_sq = eta * wd / ((2.0 - eta * wd) * balance)
    return {
        "norm_sq": norm_sq,
        "amp_sq": amp_sq,
        "sigma2": amp_sq * norm_sq,
        "avg_loss": eta * wd * s / (2.0 * (2.0 - eta * wd) * balance),
        "drift_rate": 0.5 * eta * wd * g / balance,
    }


@dataclass(frozen=True)
class CurvatureScan:
    """``lambda_1(hess L)`` on a short segment, and how much of its change is jumps.

    Attributes:
        s: ``(m,)`` the offsets: the points are ``w + s * direction``.
        lam: ``(m,)`` ``lambda_1(hess L(w + s direction))``.
        jumps: how many of the ``m - 1`` first differences ``d_i = lam[i+1] - lam[i]`` depart
            from the median difference by more than ``factor`` times the median ``|d_i|``
            (plus ``1e-9 max |lam|`` for the eigen-solver's error): on a loss whose Hessian is
            continuous there are none once the segment is short; a ReLU network's Hessian
            jumps where a unit's pre-activation changes sign.
        rough_share: ``sum |d_i - median d| / sum |d_i|``, the share of ``lambda_1``'s
            variation on the segment that a constant slope does not explain (about 0 for a
            smooth ``lambda_1`` on a short segment, near 1 when jumps carry the change).
    """

    s: np.ndarray
    lam: np.ndarray
    jumps: int
    rough_share: float


@eqx.filter_jit
def _scan_lambda1(
    loss: LossFn, geometry: AbstractGeometry, w: Array, direction: Array, s: Array
) -> Array:
    return jax.lax.map(lambda si: geometry.top_eigs(loss, w + si * direction, 1)[0][0], s)


def curvature_scan(
    loss: LossFn,
    w: Array,
    direction: Array,
    *,
    span: float = 0.01,
    points: int = 41,
    factor: float = 3.0,
    geometry: AbstractGeometry = _GEOMETRY,
) -> CurvatureScan:
    """Measure ``lambda_1(hess L)`` at ``points`` equally spaced points of ``w + s direction``,
    ``0 <= s <= span``, and count its jumps (:class:`CurvatureScan`).

    The central flow differentiates ``lambda_1`` (its ``Sigma`` balances ``grad lambda_1``
    against the drift) and integrates with an adaptive step: both assume that ``hess L`` is
    continuous, i.e. that ``L`` is ``C^2`` (``C^3`` for ``grad lambda_1``). Autodiff of a ReLU
    network gives the Hessian of the current activation pattern, which jumps whenever a
    pre-activation changes sign; the third derivative misses those jumps, and the integrator
    shrinks its step to resolve each one. A scan along GD's step (``direction = w_{t+1} - w_t``,
    a short ``span`` of it) shows which case a loss is in before a long solve starts.

    Args:
        loss: ``(D,) -> ()``.
        w: ``(D,)`` the start of the segment; direction: ``(D,)``, nonzero.
        span: the segment's length in units of ``direction`` (``> 0``).
        points: grid points (``>= 3``).
        factor: the jump threshold (see :class:`CurvatureScan`, ``> 0``).
        geometry: the eigen-solver (:class:`theory.Lanczos` by default, :class:`theory.Dense`
            for small ``D``).

    Returns:
        :class:`CurvatureScan`.
    """
    w, _ = check.flat_vector(w, "w")
    direction = jnp.asarray(direction, w.dtype)
    if direction.shape != w.shape:
        raise ValueError(f"direction must have the shape of w {w.shape}, got {direction.shape}")
    host = np.asarray(direction)
    if not np.all(np.isfinite(host)) or not np.any(host):
        raise ValueError("direction must be finite and nonzero (it spans the scanned segment)")
    span = check.positive(span, "span")
    points = check.positive_int(points, "points")
    if points < 3:
        raise ValueError(f"points must be >= 3 (two differences to compare), got {points}")
    factor = check.positive(factor, "factor")
    geometry = geometry_of(geometry)
    s = np.linspace(0.0, span, points)
    lam = np.asarray(_scan_lambda1(loss, geometry, w, direction, jnp.asarray(s, w.dtype)))
    diffs = np.diff(lam)
    med = float(np.median(diffs))
    dev = np.abs(diffs - med)
    tol = factor * float(np.median(np.abs(diffs))) + 1e-9 * float(np.max(np.abs(lam)))
    total = float(np.sum(np.abs(diffs)))
    return CurvatureScan(
        s=s,
        lam=lam,
        jumps=int(np.sum(dev > tol)),
        rough_share=float(np.sum(dev) / total) if total > 0 else 0.0,
    )
