"""Exact IRE on scale-invariant GD+WD: the measured speed-up of the sharpness-reduction flow.

GD+WD (``theory.optim.transforms.gd_wd_transform``) wrapped in exact IRE
(``theory.optim.ire.exact_flat`` with
``k`` = the codimension of ``Gamma`` in the sphere) on the analytic curves ``great_circle`` and
``ire_toy``, started on the EoS equilibrium next to the problem's start projected on ``Gamma``.
Two choices of the amplified part (docs/ire.md):

* ``tangent`` (``radial=False``): the tangent of ``Gamma`` only;
* ``radial`` (``radial=True``, the literal complement of the top-k eigenspace): weight decay is
  amplified too, which changes the norm balance (and the start is the equilibrium of it).

The prediction is not ``1 + kappa`` (the naive column of the table): IRE multiplies the drift
along ``Gamma`` by ``a`` (``1 + kappa``; ``1 - kappa`` with the projector at the current iterate
refreshed every step) and the norm balance by ``b`` (1 tangent, ``1 + kappa`` radial), and the
EoS amplitude adjusts, so the flow runs ``a (1 + |g|^2/4) / (1 + a |g|^2 / (4 b))`` times faster
in ``tau = 2 eta wd t`` where ``|g| = |P grad log lambda_1|`` (:func:`theory.optim.ire.flow_gains`,
:func:`theory.optim.ire.flow_speedup`; derived in docs/ire.md).

The speed-up is measured without fitting a model of the path: each recorded direction is
projected on ``Gamma`` (``Phi``), its sharpness ``S(Phi)`` is located on the closed-form flow
from ``Phi(w_hat_0)`` (the flow time ``tau_eff`` at which the flow has that sharpness; negative if
the sharpness went *up*), and the speed-up is the least-squares slope of ``tau_eff`` against
``tau``. A second table, at ``projector_kappa``, compares where the projector is computed: at the
current iterate or at the midpoint of the last two, refreshed every ``K`` steps (the current
iterate with ``K = 1`` is predicted to reverse the drift: speed-up ``1 - kappa``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims.results import number
from sims.simulation import Simulation, cached_runs, prefixed
from theory.analysis.midpoint import curvature_along
from theory.core import validate as check
from theory.engine import SaveAt
from theory.flows.compare import ire_equilibrium_start
from theory.flows.manifold import hessian_rank, project_to_manifold
from theory.optim.ire import exact_flat, flow_gains, flow_time, ire
from theory.optim.transforms import gd_wd_transform, run_optimizer
from theory.problems.analytic import PROBLEMS

NAME = "ire_flow"
MODES = ("tangent", "radial")
CURVES = ("great_circle", "ire_toy")  # closed-form flows (run backward as well as forward)


def _parse_projector(spec: str) -> tuple[str, int]:
    point, _, every = spec.partition(":")
    if point not in ("current", "midpoint") or not every.isdigit() or int(every) < 1:
        raise ValueError(
            f"projector must look like 'current:K' or 'midpoint:K' with K >= 1, got {spec!r}"
        )
    return point, int(every)


@dataclass(frozen=True)
class Config:
    """Settings of the IRE speed-up study."""

    problems: tuple[str, ...] = field(default=CURVES, metadata={"help": "analytic curves"})
    eta: float = field(default=0.1, metadata={"help": "learning rate (wd = eta_wd / eta)"})
    eta_wd: tuple[float, ...] = field(default=(1e-3,), metadata={"help": "intrinsic LRs"})
    kappas: tuple[float, ...] = field(
        default=(0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0), metadata={"help": "IRE kappa values"}
    )
    modes: tuple[str, ...] = field(default=MODES, metadata={"help": "tangent, radial"})
    projector: str = field(
        default="midpoint:1", metadata={"help": "projector of the main table (point:K)"}
    )
    projector_kappa: float = field(default=10.0, metadata={"help": "kappa of projector table"})
    projectors: tuple[str, ...] = field(
        default=("current:1", "current:2", "current:10", "midpoint:10"),
        metadata={"help": "projectors compared at projector_kappa (tangent mode)"},
    )
    tau_target: float = field(default=1.0, metadata={"help": "predicted flow time covered"})
    rows: int = field(default=40, metadata={"help": "rows recorded per run"})
    dtype: Literal["float32", "float64"] = field(default="float64", metadata={"help": "precision"})
    seed: int = field(default=0, metadata={"help": "PRNG seed"})

    def __post_init__(self) -> None:
        check.among(self.problems, "problems (the closed-form flows)", CURVES)
        check.among(self.modes, "modes", MODES)
        check.all_in_interval(self.eta_wd, "eta_wd", 0, 0.1)
        check.all_nonnegative(self.kappas, "kappas")
        for spec in (self.projector, *self.projectors):
            _parse_projector(spec)
        check.positive_fields(self, "eta", "tau_target", "projector_kappa")
        check.int_fields_at_least(self, 8, "rows")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: eta*wd = 1e-3, 7 kappas; ``full``: also eta*wd = 3e-4, more kappas/rows."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(
                eta_wd=(1e-3, 3e-4),
                kappas=(0.0, 0.5, 1.0, 2.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0),
                projectors=("current:1", "current:2", "current:3", "current:10", "midpoint:10"),
                rows=80,
            )
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def gains(kappa: float, mode: str, projector: str) -> tuple[float, float]:
    """IRE's gains ``(a, b)`` on the flow (:func:`theory.optim.ire.flow_gains`) for a run's mode and
    projector: the drift is reversed by the projector at the current iterate refreshed every
    step, and the norm balance is amplified in radial mode."""
    point, every = _parse_projector(projector)
    return flow_gains(
        kappa, radial=mode == "radial", reversed_drift=point == "current" and every == 1
    )


@functools.cache
def _optimizer(
    eta: float, wd: float, rank: int, mode: str, point: str, every: int, seed: int
) -> optax.GradientTransformationExtraArgs:
    """Exact IRE on GD+WD with ``kappa`` in the state: one compiled program serves every kappa
    (and every ``record_every``) of a (mode, projector) group."""
    sel = exact_flat(_loss_fn, rank, radial=mode == "radial", refresh_every=every, point=point)
    factory = optax.inject_hyperparams(ire, static_args=("base", "selector", "seed"))
    return factory(base=gd_wd_transform(eta, wd), kappa=0.0, selector=sel, seed=seed)


def _loss_fn(w: jax.Array, loss: Any) -> jax.Array:
    return loss(w)


class _FlowRef:
    """The closed-form F1 flow from ``phi0`` on a fine grid of ``tau`` in ``[-tau_max, tau_max]``:
    sharpness and ``|g|^2`` along it, to place measured points on it and to integrate the
    predicted IRE speed."""

    def __init__(self, prob: Any, phi0: jax.Array, tau_max: float) -> None:
        grid = np.linspace(-tau_max, tau_max, 8001)
        path = prob.flow_closed_form(phi0, jnp.asarray(grid), "F1")
        lam = np.asarray(jax.vmap(prob.lambda1)(path))
        g = np.asarray(jax.vmap(prob.riemannian_grad_log_lambda1)(path))
        ok = np.diff(lam) < 0  # the strictly decreasing part of the grid
        lo = int(np.argmax(ok))
        hi = lo + int(np.argmin(ok[lo:])) if not ok[lo:].all() else len(ok)
        self.tau, self.lam = grid[lo : hi + 1], lam[lo : hi + 1]
        self.g_sq = np.sum(g**2, axis=1)[lo : hi + 1]

    def time_of(self, sharp: np.ndarray) -> np.ndarray:
        """Flow time at which the flow has each sharpness (NaN outside the grid's range)."""
        xs = -self.lam
        out = np.interp(-sharp, xs, self.tau, left=np.nan, right=np.nan)
        margin = 1e-9 * np.abs(xs).max()
        out[(-sharp < xs[0] + margin) | (-sharp > xs[-1] - margin)] = np.nan
        return out

    def predicted_times(self, tau: np.ndarray, a: float, b: float) -> np.ndarray:
        """``tau_eff(tau)`` predicted for IRE's gains ``(a, b)``
        (:func:`theory.optim.ire.flow_time`)."""
        return flow_time(tau, self.tau, self.g_sq, a, b)


def _slope(tau: np.ndarray, tau_eff: np.ndarray) -> float:
    """Least-squares slope through the origin over the finite rows (NaN with fewer than 3)."""
    ok = np.isfinite(tau_eff)
    if ok.sum() < 3:
        return float("nan")
    return float(np.dot(tau[ok], tau_eff[ok]) / np.dot(tau[ok], tau[ok]))


def _run_one(
    cfg: Config, problem: str, ewd: float, kappa: float, mode: str, projector: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    prob = PROBLEMS[problem]()
    dtype = dtype_from_config(cfg.dtype)
    wd = ewd / cfg.eta
    point, every_k = _parse_projector(projector)
    a, b = gains(kappa, mode, projector)
    theta = project_to_manifold(prob.loss, jnp.asarray(prob.start, dtype))
    rank = hessian_rank(prob.loss, theta)
    w0 = ire_equilibrium_start(prob, theta, eta=cfg.eta, wd=wd, a=a, b=b)
    per_step = 2 * ewd * max(abs(a), 1.0)
    every = max(1, math.ceil(cfg.tau_target / per_step / cfg.rows))
    steps = every * cfg.rows
    opt = _optimizer(cfg.eta, wd, rank, mode, point, every_k, cfg.seed)
    state0 = opt.init(w0)
    state0.hyperparams["kappa"] = jnp.asarray(kappa, w0.dtype)
    run = run_optimizer(
        opt, _loss_fn, w0, steps, loss_args=(prob.loss,), saveat=SaveAt(every=every), state0=state0
    )
    assert run.w is not None  # rows from a divergence on are already dropped
    w = run.w[: max(len(run.step), 1)]
    w_hat = w / np.linalg.norm(w, axis=1, keepdims=True)
    phi = np.asarray(project_to_manifold(prob.loss, jnp.asarray(w_hat)))
    sharp = np.asarray(jax.vmap(prob.lambda1)(jnp.asarray(phi)))
    tau = 2 * ewd * run.step[: len(w)].astype(np.float64)
    ref = _FlowRef(prob, jnp.asarray(phi[0]), 20.0 * cfg.tau_target)
    tau_eff = ref.time_of(sharp)
    tau_pred = ref.predicted_times(tau, a, b)
    curv = curvature_along(prob.loss, jnp.asarray(w), spherical=False)  # dense: D = 3
    assert curv.hessian is not None
    eos = cfg.eta * np.asarray(curv.hessian[:, 0])
    measured, predicted = _slope(tau, tau_eff), _slope(tau, tau_pred)
    arrays = {
        "step": run.step[: len(w)],
        "tau": tau,
        "tau_eff": tau_eff,
        "tau_pred": tau_pred,
        "sharpness_phi": sharp,
        "norm": np.linalg.norm(w, axis=1),
        "eos": eos,
        "phi": phi,
    }
    info = {
        "kappa": kappa,
        "mode": mode,
        "projector": projector,
        "naive": a,
        "predicted": predicted if np.isfinite(predicted) else None,  # None: no equilibrium
        "speedup": measured if np.isfinite(measured) else None,
        "ratio": measured / predicted if np.isfinite(predicted) else None,
        "ratio_naive": measured / a if np.isfinite(measured) else None,
        "max_dev": float(np.nanmax(np.abs(tau_eff - tau_pred))) if np.isfinite(predicted) else None,
        "g_sq_start": float(ref.g_sq[np.argmin(np.abs(ref.tau))]),
        "steps": steps,
        "diverged_at": run.diverged_at,
        "mean_eos": float(np.mean(eos[len(eos) // 4 :])),
        "rank": rank,
    }
    return arrays, info


def _jobs(cfg: Config) -> list[tuple[str, int, float, str, str]]:
    """(problem, eta_wd index, kappa, mode, projector) of every run, in order."""
    jobs = []
    for problem in cfg.problems:
        for i in range(len(cfg.eta_wd)):
            for mode in cfg.modes:
                for kappa in cfg.kappas:
                    jobs.append((problem, i, kappa, mode, cfg.projector))
            for proj in cfg.projectors:
                jobs.append((problem, i, cfg.projector_kappa, "tangent", proj))
    return jobs


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every run; returns (arrays, summary). Finished runs are checkpointed and reused."""
    jobs = {
        f"{problem}.{i}.{mode}.{proj}.k{kappa:g}": (problem, i, kappa, mode, proj)
        for problem, i, kappa, mode, proj in _jobs(cfg)
    }

    def one(_: int, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        problem, i, kappa, mode, proj = jobs[name]
        return _run_one(cfg, problem, cfg.eta_wd[i], kappa, mode, proj)

    arrays: dict[str, np.ndarray] = {}
    table: list[dict[str, Any]] = []
    for name, sub, info in cached_runs(list(jobs), one, checkpoints, desc=NAME, progress=progress):
        problem, i = jobs[name][:2]
        arrays.update(prefixed(name, sub))
        table.append({"key": name, "problem": problem, "eta_wd": cfg.eta_wd[i], **info})
    return arrays, {"table": table}


def _num(x: Any, spec: str) -> str:
    """A stored number formatted with ``spec``; ``none`` where it was not measured (None, NaN)."""
    width = int(spec.split(".")[0])
    val = number(x)
    return "none".rjust(width) if math.isnan(val) else format(val, spec)


def _step_or_dash(step: int | None) -> str:
    """A divergence step, or "-" for none (``None``; results stored before the engine: -1)."""
    return "-" if step is None or step < 0 else str(step)


def format_table(table: Sequence[dict[str, Any]]) -> list[str]:
    """The speed-up table as text lines."""
    lines = [
        f"{'problem':13s} {'eta*wd':>7s} {'mode':8s} {'projector':11s} {'kappa':>6s} "
        f"{'1+kappa':>8s} {'predicted':>10s} {'measured':>10s} {'ratio':>7s} {'<eos>':>6s} "
        "diverged"
    ]
    for r in table:
        lines.append(
            f"{r['problem']:13s} {r['eta_wd']:7.0e} {r['mode']:8s} {r['projector']:11s} "
            f"{r['kappa']:6g} {r['naive']:8.4g} {_num(r['predicted'], '10.4g')} "
            f"{_num(r['speedup'], '10.4g')} {_num(r['ratio'], '7.3f')} "
            f"{r['mean_eos']:6.3f} {_step_or_dash(r['diverged_at'])}"
        )
    return lines


SIM = Simulation(
    NAME, Config, run, __doc__, report=lambda stored: format_table(stored.meta["summary"]["table"])
)
run_and_store = SIM.run_and_store
main = SIM.main
