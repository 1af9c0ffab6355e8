"""Edge Flow for GD with weight decay on a scale-invariant loss (docs/edge_flow.md).

Marion ("Edge Flow: A Tractable and Predictive Continuous-Time Model for Gradient Descent at the
Edge of Stability", arXiv 2606.18080) models GD at the edge of stability by three coupled ODEs: a
center, an oscillation direction and an oscillation magnitude. Only the paper's abstract was
available to us; the equations below were derived here for GD+WD from the period-2 ansatz
[derived], with ``t`` in GD steps and ``f = L + wd/2 |w|^2``:

    w_t = x(t) + (-1)^t rho(t) u(t),        u = v / |v|,

    dx/dt      = -eta [ (grad L(x + rho u) + grad L(x - rho u)) / 2 + wd x ]
    dv/dt      =  eta [ hess L(x) v - q v ],            q = v^T hess L(x) v / |v|^2
    d log rho / dt = log |1 - eta (q + wd)|  +  kick^2 |x|^2 / (2 rho^2).

* The center is the average of GD+WD's step from the two iterates ``x +- rho u``: gradient flow
  on the symmetrized loss ``(L(x + rho u) + L(x - rho u)) / 2`` plus decay. Expanded in ``rho``
  it is ``-eta [grad f(x) + (rho^2 / 2) D^3 L(x)[u, u, .] + O(rho^4)]``, and with ``u`` the top
  eigenvector the force is ``-(eta / 2) rho^2 grad lambda_1`` (Hellmann-Feynman): the
  self-stabilization force.
* The direction follows Rayleigh-quotient dynamics (Oja's flow) with rate ``eta``, the
  continuous-time limit of the power iteration ``u <- (eta hess f - I) u`` that GD performs on
  its oscillation: it converges to the top eigenvector of ``hess L(x)`` at the rate
  ``eta (lambda_1 - lambda_i)`` per step, which is GD's own rate at the edge. It keeps ``|v|``
  exactly (``u`` is used everywhere).
* The magnitude multiplies per step by GD's linearized factor ``|1 - eta (q + wd)|`` along ``u``:
  it grows while ``eta (q + wd) > 2`` and decays below. ``kick`` (relative to ``|x|``) is the
  RMS displacement along ``u`` that GD's per-step perturbation adds (``gd_wd(perturbation=p)``
  adds ``p |w| / sqrt(D)`` along any unit direction orthogonal to ``w``): it enters as the
  source ``kick^2 |x|^2`` of ``rho^2`` per step. The factor is floored at ``1e-8``
  (``_MIN_FACTOR``): GD wipes an oscillation out in one step there anyway.

Per evaluation: two gradients and one Hessian-vector product, no eigen-solve (the geometry is
used for the start direction and the outputs). The state is ``(x, v, log rho)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.core import validate as check
from theory.core.types import Array, LossFn
from theory.engine.gd import check_rates
from theory.flows.common import (
    AbstractGeometry,
    Budget,
    Dense,
    Progress,
    SaveTimes,
    check_controller,
    check_solver,
    controller_config,
    geometry_of,
)
from theory.flows.monitor import Meter, activated, meter_for, segments

__all__ = ["EdgeFlowField", "EdgeFlowResult", "Overshoot", "edge_flow", "first_overshoot"]

_MIN_FACTOR = 1e-8  # floor of |1 - eta (q + wd)|: caps the decay of log rho at 18.4 per step

EdgeState = tuple[Array, Array, Array]  # (x, v, log rho)


class EdgeFlowField(eqx.Module):
    """``f(t, (x, v, log rho), args)`` of Edge Flow for GD+WD (t in GD steps; ``args`` unused).

    Attributes:
        loss: the loss ``L`` (scale-invariant for the outputs ``sharpness`` and ``eta_eff``).
        eta, wd: learning rate and weight decay (arrays: traced, not compiled in).
        kick: RMS displacement along ``u`` added per step, relative to ``|x|`` (0: none).
    """

    loss: LossFn
    eta: Array
    wd: Array
    kick: Array

    def rayleigh(self, x: Array, v: Array) -> tuple[Array, Array]:
        """``(hess L(x) v, q = v^T hess L(x) v / |v|^2)``: one Hessian-vector product."""
        hv = jax.jvp(jax.grad(self.loss), (x,), (v,))[1]
        return hv, jnp.vdot(v, hv) / jnp.vdot(v, v)

    def growth_rate(self, q: Array) -> Array:
        """``log |1 - eta (q + wd)|``: GD's per-step growth of ``log rho`` along ``u``."""
        factor = jnp.abs(1.0 - self.eta * (q + self.wd))
        return jnp.log(jnp.maximum(factor, _MIN_FACTOR))

    def __call__(self, t: Any, y: EdgeState, args: Any) -> EdgeState:
        x, v, log_rho = y
        u = v / jnp.linalg.norm(v)
        rho = jnp.exp(log_rho)
        grad = jax.grad(self.loss)
        g_sym = 0.5 * (grad(x + rho * u) + grad(x - rho * u))
        hv, q = self.rayleigh(x, v)
        dx = -self.eta * (g_sym + self.wd * x)
        dv = self.eta * (hv - q * v)
        # kick^2 |x|^2 / (2 rho^2), written so that kick = 0 gives exactly 0.
        source = 0.5 * jnp.exp(2.0 * (jnp.log(self.kick * jnp.linalg.norm(x)) - log_rho))
        return dx, dv, self.growth_rate(q) + source


@dataclass(frozen=True)
class EdgeFlowResult:
    """Edge Flow at the saved times (NumPy, host), on GD's time axis.

    Attributes:
        t: ``(n,)`` times in GD steps.
        x: ``(n, D)`` the center (GD's two-step average); ``v``: ``(n, D)`` the unit direction.
        rho: ``(n,)`` the magnitude: GD's iterates are ``x +- rho v``.
        amplitude: ``rho / |x|``, the angular amplitude of the oscillation.
        norm: ``|x|``; ``eta_eff``: ``eta / |x|^2``.
        sharpness: ``S = lambda_1(hess L(x)) |x|^2`` (one scale group).
        eos: ``eta lambda_1(hess L(x))`` at the center (the edge is ``2 - eta wd``).
        eos_rayleigh: ``eta q``, the Rayleigh quotient along ``v`` that drives ``rho``.
        alignment: ``|<v, v_1(x)>|`` with the top eigenvector at the center.
        loss: ``L(x)``; ``avg_loss``: ``(L(x + rho v) + L(x - rho v)) / 2``, GD's predicted
            two-step average loss.
        num_steps: integrator steps (accepted + rejected).
        config: the settings.
    """

    t: np.ndarray
    x: np.ndarray
    v: np.ndarray
    rho: np.ndarray
    amplitude: np.ndarray
    norm: np.ndarray
    eta_eff: np.ndarray
    sharpness: np.ndarray
    eos: np.ndarray
    eos_rayleigh: np.ndarray
    alignment: np.ndarray
    loss: np.ndarray
    avg_loss: np.ndarray
    num_steps: int
    config: dict[str, Any] = field(default_factory=dict)


@eqx.filter_jit
def _top_vector(geometry: AbstractGeometry, loss: LossFn, w: Array) -> Array:
    return geometry.top_eigs(loss, w, 1)[1][:, 0]


@eqx.filter_jit
def _solve(
    field_: EdgeFlowField,
    solver: diffrax.AbstractSolver,
    controller: diffrax.AbstractStepSizeController,
    y0: EdgeState,
    ts: Array,
    dt0: Array | None,
    max_steps: int,
) -> diffrax.Solution:
    return diffrax.diffeqsolve(
        diffrax.ODETerm(field_),
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=dt0,
        y0=y0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
    )


@eqx.filter_jit
def _measure(
    field_: EdgeFlowField, geometry: AbstractGeometry, xs: Array, vs: Array, log_rho: Array
) -> dict[str, Array]:
    def one(args: tuple[Array, Array, Array]) -> dict[str, Array]:
        x, v, lr = args
        u = v / jnp.linalg.norm(v)
        lam, vec = geometry.top_eigs(field_.loss, x, 1)
        rho = jnp.exp(lr)
        return {
            "u": u,
            "lam": lam[0],
            "q": field_.rayleigh(x, u)[1],
            "align": jnp.abs(jnp.vdot(u, vec[:, 0])),
            "loss": field_.loss(x),
            "avg": 0.5 * (field_.loss(x + rho * u) + field_.loss(x - rho * u)),
        }

    return jax.lax.map(one, (xs, vs, log_rho))


class Oscillation(eqx.Module):
    """Edge Flow's oscillation at the start and its per-step source.

    Attributes:
        rho0: initial magnitude relative to ``|w0|`` (``> 0``); the direction starts at the top
            eigenvector of ``hess L(w0)``.
        kick: RMS displacement along the direction that GD's perturbation adds per step,
            relative to ``|x|`` (``perturbation / sqrt(D)`` for ``gd_wd(perturbation=...)``;
            0: none).
    """

    rho0: float = eqx.field(static=True)
    kick: float = eqx.field(static=True, default=0.0)

    def __check_init__(self) -> None:
        check.positive(self.rho0, "Oscillation.rho0")
        check.nonnegative(self.kick, "Oscillation.kick")


def _result(
    field_: EdgeFlowField,
    geometry: AbstractGeometry,
    sol: Any,
    times: np.ndarray,
    steps: int,
    config: dict[str, Any],
) -> EdgeFlowResult:
    """The measured rows of a solve (``config``: every setting, ``eta`` as given)."""
    eta = config["eta"]
    assert sol.ys is not None
    xs, vs, log_rho = sol.ys
    m = {k: np.asarray(a) for k, a in _measure(field_, geometry, xs, vs, log_rho).items()}
    x = np.asarray(xs)
    norm = np.linalg.norm(x, axis=1)
    rho = np.exp(np.asarray(log_rho))
    return EdgeFlowResult(
        t=times,
        x=x,
        v=m["u"],
        rho=rho,
        amplitude=rho / norm,
        norm=norm,
        eta_eff=eta / norm**2,
        sharpness=m["lam"] * norm**2,
        eos=eta * m["lam"],
        eos_rayleigh=eta * m["q"],
        alignment=m["align"],
        loss=m["loss"],
        avg_loss=m["avg"],
        num_steps=steps,
        config=config,
    )


def edge_flow(
    loss: LossFn,
    w0: Array,
    *,
    eta: float,
    wd: float,
    saveat: SaveTimes | float | Any,
    oscillation: Oscillation,
    geometry: AbstractGeometry | None = None,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    progress: Progress | Callable[[int, int], None] | bool | None = None,
    budget: Budget | None = None,
) -> EdgeFlowResult:
    """Integrate Edge Flow of GD+WD from ``w0`` (module docstring; docs/edge_flow.md).

    Args:
        loss: the loss ``L`` of a flat ``(D,)`` vector.
        w0: GD's start ``(D,)``, finite and nonzero: the center at ``t = 0``.
        eta: learning rate ``> 0``; wd: weight decay ``>= 0`` with ``eta * wd < 1``.
        saveat: :class:`SaveTimes` (or an end time in GD steps, or save times).
        oscillation: the starting magnitude and the per-step kick (:class:`Oscillation`).
        geometry: how the start direction and the output eigenvalues are computed
            (default ``Dense()``; ``Lanczos()`` for large ``D``).
        solver: a diffrax solver (default ``diffrax.Tsit5()``).
        stepsize_controller: a diffrax controller (default
            ``diffrax.PIDController(rtol=1e-8, atol=1e-12)``); with ``ConstantStepSize()`` the
            step is the smallest gap between save times.
        progress: ``progress(saves_done, saves)`` after each segment, ``True`` for a tqdm bar,
            or :class:`theory.Progress` (phase ``"flow"``); ``None``: the active meter of an
            enclosing call, if any.
        budget: :class:`theory.Budget` (steps: accepted + rejected). With either, the solve
            runs in about 20 segments between save times, the state carried over; with
            neither it is one compiled call, as before.

    Returns:
        :class:`EdgeFlowResult`.

    Raises:
        ValueError / TypeError: bad settings (named in the message).
        RuntimeError: the integrator failed (the step size underflowed or too many steps).
        theory.BudgetExceeded: the budget ran out; ``.partial`` is the
            :class:`EdgeFlowResult` of the saves reached.
    """
    eta, wd, _ = check_rates(eta, wd)
    w0, _ = check.flat_vector(w0, "w0")
    check.loss_output(loss, w0)
    if not isinstance(oscillation, Oscillation):
        raise TypeError(
            f"oscillation must be theory.Oscillation(rho0, kick=...), got {oscillation!r}"
        )
    rho0, kick = oscillation.rho0, oscillation.kick
    saves = SaveTimes.of(saveat)
    geometry = geometry_of(Dense() if geometry is None else geometry)
    solver = check_solver(diffrax.Tsit5() if solver is None else solver)
    controller = check_controller(
        diffrax.PIDController(rtol=1e-8, atol=1e-12)
        if stepsize_controller is None
        else stepsize_controller
    )
    dtype = w0.dtype
    times = saves.times()
    adaptive = isinstance(controller, diffrax.AbstractAdaptiveStepSizeController)
    dt0 = None if adaptive else jnp.asarray(np.min(np.diff(times)), dtype)
    field_ = EdgeFlowField(loss, *(jnp.asarray(a, dtype) for a in (eta, wd, kick)))
    v0 = _top_vector(geometry, loss, w0)
    y0 = (w0, v0, jnp.asarray(math.log(rho0 * float(jnp.linalg.norm(w0))), dtype))
    max_steps = max(int(64 * times[-1]) + 4096, 2 * len(times))
    config = {
        "eta": eta,
        "wd": wd,
        "rho0": rho0,
        "kick": kick,
        **geometry.config(),
        "solver": type(solver).__name__,
        **controller_config(controller),
    }
    meter = meter_for(progress, budget)
    if meter is None:
        sol = _solve(field_, solver, controller, y0, jnp.asarray(times, dtype), dt0, max_steps)
        steps = _steps(sol)
        _check_solved(sol, steps, times, max_steps)
        return _result(field_, geometry, sol, times, steps, config)
    with activated(meter):
        return _segmented(field_, geometry, solver, controller, y0, times, dt0, max_steps,
                          config, meter)  # fmt: skip


def _steps(sol: diffrax.Solution) -> int:
    return int(sol.stats["num_accepted_steps"] + sol.stats["num_rejected_steps"])


def _check_solved(sol: diffrax.Solution, steps: int, times: np.ndarray, max_steps: int) -> None:
    if sol.result != diffrax.RESULTS.successful:
        raise RuntimeError(
            f"the Edge Flow integrator failed ({sol.result}) after {steps} steps, before "
            f"t = {times[-1]:g} (max_steps={max_steps}); loosen the controller's tolerances"
        )


class _Saved(NamedTuple):
    ys: tuple[Array, Array, Array]


def _segmented(
    field_: EdgeFlowField,
    geometry: AbstractGeometry,
    solver: diffrax.AbstractSolver,
    controller: diffrax.AbstractStepSizeController,
    y0: EdgeState,
    times: np.ndarray,
    dt0: Array | None,
    max_steps: int,
    config: dict[str, Any],
    meter: Meter,
) -> EdgeFlowResult:
    """The solve in about 20 segments between save times (state carried over), reporting to
    ``meter`` and raising :class:`BudgetExceeded` with the rows reached."""
    dtype = y0[0].dtype
    parts: list[Any] = [tuple(jnp.asarray(a)[None] for a in y0)]
    state: Any = y0
    steps = 0
    meter.phase("flow", len(times) - 1)

    def result() -> EdgeFlowResult:
        ys = tuple(jnp.concatenate([p[k] for p in parts]) for k in range(3))
        n = int(ys[0].shape[0])
        return _result(field_, geometry, _Saved(ys), times[:n], steps, config)  # type: ignore[arg-type]

    for i, j in segments(len(times)):
        sol = _solve(field_, solver, controller, state, jnp.asarray(times[i : j + 1], dtype),
                     dt0, max_steps)  # fmt: skip
        n_seg = _steps(sol)
        steps += n_seg
        _check_solved(sol, steps, times[: j + 1], max_steps)
        assert sol.ys is not None
        parts.append(tuple(a[1:] for a in sol.ys))
        state = tuple(a[-1] for a in sol.ys)
        meter.update(j, steps=n_seg)
        meter.check(f"flow at t = {times[j]:.6g} steps", result)
    return result()


class Overshoot(NamedTuple):
    """The first excursion of a series above a level (NaN where it does not happen).

    Attributes:
        onset: time of the first up-crossing of the level.
        peak: largest value before the series falls back below the level.
        t_peak: its time.
        duration: time from the up-crossing to the next down-crossing.
        period: time from the first up-crossing to the second.
    """

    onset: float
    peak: float
    t_peak: float
    duration: float
    period: float


def first_overshoot(t: Any, e: Any, level: float) -> Overshoot:
    """The first overshoot of ``e(t)`` above ``level`` (crossing times linearly interpolated).

    Used on ``eta lambda_1`` with ``level = 2 - eta wd`` (the edge): the height of the
    oscillation of the sharpness at the onset of EoS and its duration and period.
    """
    t_arr = np.asarray(t, dtype=np.float64)
    above = np.asarray(e, dtype=np.float64) - level
    if t_arr.ndim != 1 or t_arr.shape != above.shape or t_arr.size < 2:
        raise ValueError(
            f"t and e must be 1-d of one length >= 2, got {t_arr.shape}, {above.shape}"
        )
    nan = math.nan

    def crossing(i: int) -> float:  # between samples i - 1 and i
        a, b = above[i - 1], above[i]
        return float(t_arr[i - 1] + (t_arr[i] - t_arr[i - 1]) * a / (a - b))

    ups = np.flatnonzero((above[1:] >= 0) & (above[:-1] < 0)) + 1
    if above[0] >= 0 or ups.size == 0:
        return Overshoot(nan, nan, nan, nan, nan)
    i_up = int(ups[0])
    downs = np.flatnonzero((above[i_up + 1 :] < 0) & (above[i_up:-1] >= 0)) + i_up + 1
    i_down = int(downs[0]) if downs.size else len(above)
    k = i_up + int(np.argmax(above[i_up:i_down]))
    t_up = crossing(i_up)
    return Overshoot(
        onset=t_up,
        peak=float(above[k] + level),
        t_peak=float(t_arr[k]),
        duration=crossing(i_down) - t_up if downs.size else nan,
        period=crossing(int(ups[1])) - t_up if ups.size > 1 else nan,
    )
