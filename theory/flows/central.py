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
it is found by accelerated projected gradient (FISTA) on ``M``, ``qp_iters`` iterations.

**Events and modes.** The *mode* ``k`` is the number of eigenvalues at the edge (0: plain
gradient flow on ``f``). A solve runs in one mode until an event: *enter* when
``eta (lambda_{k+1} + wd)`` reaches 2 (the mode becomes ``k + 1``), *leave* when
``eta (lambda_k + wd)`` falls below ``2 - leave_tol`` (the mode becomes ``k - 1``; this happens
once ``Sigma`` no longer needs the ``k``-th direction). Within a mode the vector field is
continuous. :func:`central_flow` chains the solves and records the events.

**Stiffness and the solver.** Off the edge the flow is gradient flow on ``f``: its fast modes
relax at rates ``eta lambda_i`` per step, up to 2 at the edge, while the slow drift along
``Gamma`` has rate ``~ eta wd``. The default solver is explicit (diffrax ``Tsit5`` with PID
step-size control): its step is bounded by stability to about ``1.5`` GD steps, so the flow
costs about ``4`` vector-field evaluations per GD step, each one gradient, one Lanczos solve for
the top ``max_edge + 1`` eigenpairs and ``max_edge (max_edge + 1) / 2`` third-order passes.
Implicit solvers would need the Jacobian of a vector field that contains Lanczos; they are not
offered.

**Outputs** (:class:`CentralFlowResult`): on GD's time axis, the iterate, its norm, the effective
learning rate, the spherical sharpness ``S = lambda_1(hess L(w)) |w|^2``, ``eta lambda_1``,
``trace Sigma`` (the predicted mean squared oscillation of GD along the edge directions, in
``w`` space), the predicted time-averaged loss ``L(w) + 1/2 <Sigma, hess L(w)>`` and the
events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from theory.core import linalg
from theory.core import validate as check
from theory.core.curvature import linearize_grad, mixed_third
from theory.core.invariance import check_scale_invariance
from theory.core.lanczos import lanczos
from theory.core.types import Array, LossFn
from theory.engine.gd import check_rates

Geometry = Literal["dense", "lanczos"]


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
        max_edge: largest number of eigenvalues allowed at the edge (static; ``max_edge + 1``
            eigenpairs are computed so that the next one's arrival is seen).
        geometry: ``"lanczos"`` (matrix-free, default) or ``"dense"`` (``jax.hessian`` +
            ``eigh``; small ``D``).
        lanczos_iters: Krylov dimension cap per evaluation (``"lanczos"``).
        qp_iters: FISTA iterations for ``Sigma`` when ``max_edge >= 2``.

    The mode (the number of edge eigenvalues, an int array) is diffrax's ``args``.
    """

    loss: LossFn
    eta: Array
    wd: Array
    kappa: Array
    max_edge: int = eqx.field(static=True, default=2)
    geometry: str = eqx.field(static=True, default="lanczos")
    lanczos_iters: int = eqx.field(static=True, default=64)
    qp_iters: int = eqx.field(static=True, default=200)

    def num_pairs(self, dim: int) -> int:
        """Eigenpairs computed per evaluation: ``min(D, max_edge + 1)``."""
        return min(dim, self.max_edge + 1)

    def eigs(self, w: Array) -> tuple[Array, Array, Array]:
        """``(grad L(w), top eigenvalues (p,), eigenvectors (D, p))`` of ``hess L(w)``."""
        dim = w.shape[0]
        p = self.num_pairs(dim)
        if self.geometry == "dense":
            grad = jax.grad(self.loss)(w)
            vals, vecs = linalg.eigh(jax.hessian(self.loss)(w))
            return grad, vals[::-1][:p], vecs[:, ::-1][:, :p]
        grad, hvp = linearize_grad(self.loss, w)
        v0 = jax.random.normal(jax.random.PRNGKey(0), w.shape, w.dtype)
        iters = min(dim, max(self.lanczos_iters, 2 * p + 10))
        res = lanczos(hvp, v0, k=p, max_iters=iters)
        return grad, res.eigenvalues, res.eigenvectors

    def edge_numbers(self, w: Array) -> Array:
        """``eta (lambda_i + wd)`` for the top ``p`` eigenvalues (2 is the edge)."""
        _, lam, _ = self.eigs(w)
        return self.eta * (lam + self.wd)

    def quantities(self, w: Array, mode: Array) -> CentralQuantities:
        """Everything at ``w`` in mode ``mode`` (``0 <= mode <= max_edge``)."""
        grad_l, lam, vecs = self.eigs(w)
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
    w0: Array,
    mode: Array,
    t0: Array,
    t1: Array,
    ts: Array,
    rtol: Array,
    atol: Array,
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
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
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


def _save_times(t: Any, num_saves: int) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(t, dtype=np.float64))
    if arr.size == 1:
        end = float(arr[0])
        if not (math.isfinite(end) and end > 0):
            raise ValueError(
                f"t must be a positive finite end time (in steps) or an array, got {t!r}"
            )
        if num_saves < 2:
            raise ValueError(f"num_saves must be >= 2, got {num_saves}")
        return np.linspace(0.0, end, num_saves)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(np.diff(arr) <= 0):
        raise ValueError("t must be finite, >= 0 and strictly increasing")
    return arr if arr[0] == 0.0 else np.concatenate([[0.0], arr])


def central_flow(
    loss: LossFn,
    w0: Array,
    *,
    eta: float,
    wd: float,
    t: float | Array | np.ndarray,
    num_saves: int = 201,
    max_edge: int = 2,
    geometry: Geometry = "lanczos",
    rtol: float = 1e-7,
    atol: float = 1e-10,
    kappa: float = 0.2,
    leave_tol: float = 1e-4,
    start_tol: float = 1e-3,
    lanczos_iters: int = 64,
    qp_iters: int = 200,
    max_steps: int = 1_000_000,
    max_segments: int = 64,
    check_invariance: bool = True,
    solver: diffrax.AbstractAdaptiveSolver | None = None,
) -> CentralFlowResult:
    """Integrate the central flow of GD+WD on a scale-invariant loss from any ``w0``.

    Args:
        loss: scale-invariant loss ``L`` (checked around ``w0`` unless
            ``check_invariance=False``: the outputs ``sharpness`` and ``eta_eff`` assume it).
        w0: start ``(D,)``, finite and nonzero; GD's ``w_0``.
        eta: learning rate ``> 0``; wd: weight decay ``>= 0`` with ``eta * wd < 1``.
        t: end time in GD steps (``num_saves`` equally spaced rows) or increasing save times
            (0 is prepended if missing).
        max_edge: how many eigenvalues may sit at the edge at once (1 gives the closed-form
            ``sigma^2``; more need ``qp_iters`` FISTA iterations per evaluation).
        geometry: ``"lanczos"`` (matrix-free) or ``"dense"`` (small ``D``).
        rtol, atol: tolerances of the PID step-size controller.
        kappa: restoring rate per step that keeps the edge eigenvalues on the edge.
        leave_tol: hysteresis: the flow leaves the edge when ``eta (lambda_k + wd)`` falls
            below ``2 - leave_tol``.
        start_tol: a start with ``eta (lambda_1 + wd)`` in ``(2, 2 + start_tol]`` is taken to
            be on the edge (and pulled back to it at rate ``kappa``); above that it is refused.
        lanczos_iters: Krylov dimension cap per evaluation.
        qp_iters: FISTA iterations for ``Sigma`` (``max_edge >= 2``).
        max_steps: integrator step cap per segment; max_segments: cap on mode changes.
        check_invariance: reject a loss that is not scale-invariant around ``w0``.
        solver: an explicit adaptive diffrax solver (default ``Tsit5()``).

    Returns:
        :class:`CentralFlowResult`.

    Raises:
        ValueError: bad settings, ``eta * wd >= 1``, or a start above the edge
            (``eta (lambda_1 + wd) > 2 + start_tol``), where GD is linearly unstable and the
            central flow is undefined. For a scale-invariant loss, scaling ``w0`` by ``c``
            divides ``lambda_1`` by ``c^2``: the message gives the smallest scaling that
            puts ``w0`` on the edge.
        theory.ScaleInvarianceError: the loss is not scale-invariant.
        RuntimeError: the integrator failed, more than ``max_edge`` eigenvalues reached the
            edge, or the mode changed more than ``max_segments`` times.
    """
    eta, wd, _ = check_rates(eta, wd)
    w0, _ = check.flat_vector(w0, "w0")
    if geometry not in ("dense", "lanczos"):
        raise ValueError(f"geometry must be 'dense' or 'lanczos', got {geometry!r}")
    max_edge = check.positive_int(max_edge, "max_edge")
    rtol = check.positive(rtol, "rtol")
    atol = check.positive(atol, "atol")
    kappa = check.nonnegative(kappa, "kappa")
    leave_tol = check.positive(leave_tol, "leave_tol")
    start_tol = check.nonnegative(start_tol, "start_tol")
    lanczos_iters = check.positive_int(lanczos_iters, "lanczos_iters")
    qp_iters = check.positive_int(qp_iters, "qp_iters")
    max_steps = check.positive_int(max_steps, "max_steps")
    max_segments = check.positive_int(max_segments, "max_segments")
    times = _save_times(t, num_saves)
    if check_invariance:
        check_scale_invariance(loss, w0)
    dtype = w0.dtype
    field_ = CentralFlowField(
        loss,
        jnp.asarray(eta, dtype),
        jnp.asarray(wd, dtype),
        jnp.asarray(kappa, dtype),
        max_edge=max_edge,
        geometry=geometry,
        lanczos_iters=lanczos_iters,
        qp_iters=qp_iters,
    )
    p = field_.num_pairs(w0.shape[0])
    e0 = np.asarray(_edge_numbers(field_, w0))
    if e0[0] > 2.0 + start_tol:
        # w0 -> c w0 divides lambda_1 by c^2: eta (lambda_1 / c^2 + wd) <= 2 needs this c.
        scale = math.sqrt((e0[0] - eta * wd) / (2.0 - eta * wd))
        raise ValueError(
            f"w0 is above the edge of stability: eta * (lambda_1 + wd) = {e0[0]:.6g} > 2 "
            f"(+ start_tol {start_tol:g}). GD is linearly unstable there and the central flow "
            f"is undefined (GD would catapult). For a scale-invariant loss, w0 * c with "
            f"c >= {scale:.6g} starts at or below the edge."
        )
    mode = int(np.sum(e0 >= 2.0 - leave_tol))
    if mode > max_edge:
        raise RuntimeError(
            f"{mode} eigenvalues are at the edge at w0 (eta (lambda_i + wd) = {e0[:mode]}), "
            f"more than max_edge={max_edge}; raise max_edge"
        )
    solver = diffrax.Tsit5() if solver is None else solver
    ts = jnp.asarray(times, dtype)
    t_end = float(times[-1])
    w = w0
    t_now = 0.0
    rows: dict[int, np.ndarray] = {}
    row_mode: dict[int, int] = {}
    events: list[EdgeEvent] = []
    steps = 0
    for _ in range(max_segments):
        seg = _segment(
            field_,
            solver,
            w,
            jnp.asarray(mode, jnp.int32),
            jnp.asarray(t_now, dtype),
            jnp.asarray(t_end, dtype),
            ts,
            jnp.asarray(rtol, dtype),
            jnp.asarray(atol, dtype),
            jnp.asarray(leave_tol, dtype),
            max_steps,
        )
        steps += int(seg.steps)
        t_stop = float(seg.t_end)
        if not bool(seg.ok):
            raise RuntimeError(
                f"the central-flow integrator failed at t = {t_stop:.6g} steps in mode {mode} "
                f"(max_steps={max_steps} reached or the step size underflowed); loosen "
                "rtol/atol or raise max_steps"
            )
        ys = np.asarray(seg.ys)
        for i in np.flatnonzero((times >= t_now) & (times <= t_stop)):
            if i not in rows and np.all(np.isfinite(ys[i])):
                rows[int(i)], row_mode[int(i)] = ys[i], mode
        w, t_now = seg.y_end, t_stop
        fired = bool(seg.fired)
        enter_gap, leave_gap = (
            np.asarray(_margins(_edge_numbers(field_, w), mode, leave_tol)) if fired else (1, 1)
        )
        if fired and enter_gap <= leave_gap:
            if mode + 1 > min(max_edge, p):
                raise RuntimeError(
                    f"at t = {t_stop:.6g} steps a further eigenvalue reached the edge while "
                    f"{mode} were already there (max_edge={max_edge}); raise max_edge"
                )
            mode += 1
            events.append(EdgeEvent(t_stop, +1, mode))
        elif fired:
            mode -= 1
            events.append(EdgeEvent(t_stop, -1, mode))
        if t_now >= t_end or not fired:
            break
    else:
        raise RuntimeError(
            f"the central flow changed mode more than max_segments={max_segments} times "
            f"before t = {t_end:g} (last events: {events[-3:]}); the edge is chattering"
        )
    idx = np.asarray(sorted(rows))
    ws = np.stack([rows[i] for i in idx])
    modes = np.asarray([row_mode[i] for i in idx], np.int32)
    q = _measure(field_, jnp.asarray(ws), jnp.asarray(modes))
    lam = np.asarray(q.lam)
    sig = np.asarray(q.sigma)
    k = sig.shape[-1]
    sigma2 = np.trace(sig, axis1=1, axis2=2) if k else np.zeros(len(idx))
    half_sh = 0.5 * np.einsum("naa,na->n", sig, lam[:, :k]) if k else np.zeros(len(idx))
    norm = np.linalg.norm(ws, axis=1)
    loss_v = np.asarray(q.loss)
    onset = next((e.t for e in events if e.change > 0), None)
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
        events=tuple(events),
        onset=onset,
        num_steps=steps,
        num_evals=7 * steps,
        config={
            "eta": eta,
            "wd": wd,
            "max_edge": max_edge,
            "geometry": geometry,
            "rtol": rtol,
            "atol": atol,
            "kappa": kappa,
            "leave_tol": leave_tol,
            "start_tol": start_tol,
            "lanczos_iters": lanczos_iters,
            "qp_iters": qp_iters,
            "solver": type(solver).__name__,
        },
    )


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
