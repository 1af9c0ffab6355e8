"""GD+WD, the central flow and the sharpness-reduction flow from a generic start (phases I-III).

For each analytic problem (and a small LayerNorm MLP fitting a teacher, least squares) and each
intrinsic learning rate ``eta * wd``, from the phases simulation's start (off ``Gamma``,
``eta_eff * S = eos0``):

* **GD** (``theory.gd_wd``, a 1e-10 kick per step) is recorded at every step. Its time averages
  are centered moving averages over ``window`` steps: the mean iterate ``w_bar``, the mean loss,
  and the mean squared oscillation ``|w_t - w_bar_t|^2``. ``eta_eff S`` is measured at the
  time-averaged iterate ``w_bar`` (what the central flow predicts), and for comparison at the
  midpoints ``(w_t + w_{t+1}) / 2`` and at the iterates ``w_t`` themselves.
* **The central flow** (``theory.central_flow``) is integrated from the same ``w0`` on GD's time
  axis; it predicts ``w_bar``, the mean loss, ``trace Sigma`` (the oscillation) and the onset.
* **Edge Flow** (``theory.edge_flow``: a center, the oscillation direction and its magnitude;
  docs/edge_flow.md) is integrated from the same ``w0`` on GD's time axis, seeded by GD's kick
  (``kick = rho0 = perturbation / sqrt(D)``). It predicts GD's two-step average (the center,
  compared with GD's midpoints ``(w_t + w_{t+1}) / 2``) and resolves the oscillation of
  ``eta lambda_1`` at the onset: the first overshoot above the edge ``2 - eta wd`` (height,
  duration, period; ``theory.flows.edge.first_overshoot``) is measured on both.
* **The sharpness-reduction flow** (F1) starts, as in LLA22, at ``Phi(w0)`` (the spherical
  gradient-flow limit; equal to ``Phi`` of the central flow's state at its onset, since before
  the onset that flow moves the direction along the spherical gradient flow), placed at the
  central flow's onset ``t_c``: closed form on the great circle and the IRE toy,
  ``theory.sharpness_flow`` otherwise (least-squares geometry on the network). It predicts, for
  ``t >= t_c``, the direction ``theta(2 eta wd (t - t_c))``, ``|w|^2 = eta S / 2``,
  ``eta_eff S = 2`` and the mean loss ``eta wd S / (4 (1 + |g|^2 / 4))`` (docs/theory.md
  section 3). The flow does not depend on ``eta wd`` in ``tau``: it is integrated once per
  problem, at the union of the save times of its runs.

Cost: the ``eta * wd`` of one problem share every compilation (the same row count, GD chunk,
save-time count and traced rates), so a second ``eta * wd`` costs only its integration; the
analytic problems (``D = 3``) use dense Hessians.

Stored per ``<problem>.<i>`` (``i`` indexes ``eta_wd``): the compared rows and every curve; the
summary holds per run the errors of each model against GD (norm and ``eta_eff S`` relative, loss
in units of GD's EoS loss level, direction angle), over the whole run and over ``t >= t_c``,
the phase-III means and RMS errors, ``sigma^2`` against the measured oscillation, the onsets and
the CPU time of each model, and the wall time of GD's run, the central flow's and Edge Flow's
solves over the same horizon (compile excluded: the median of ``timing_repeats`` calls after a
first one), as ratios to GD's.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sims import data as datasets
from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.results import number
from sims.simulation import Simulation, cached_runs, prefixed
from sims.studies.phases import initial_point
from theory.analysis.midpoint import DENSE_MAX_DIM, iterate_midpoints, top_hessian_eigenvalues
from theory.analysis.trajectory import angle_between, moving_average
from theory.core import validate as check
from theory.core.errors import DegenerateSharpnessWarning, ProjectionError
from theory.engine import NoTracking
from theory.engine.gd import gd_wd, predicted_eos_onset
from theory.flows.central import EdgeSettings, central_flow
from theory.flows.common import Dense, GaussNewton, Lanczos, SaveTimes
from theory.flows.edge import Oscillation, edge_flow, first_overshoot
from theory.flows.manifold import project_to_manifold
from theory.flows.reduction import Degeneracy, sharpness_flow
from theory.problems import nets
from theory.problems.analytic import PROBLEMS

NAME = "central_flow"
NETWORK = "mlp_layernorm"
_CHUNK = 50  # GD steps per compiled chunk: every run's step count is a multiple of it


@dataclass(frozen=True)
class Config:
    """Settings of the GD / central flow / sharpness-reduction flow comparison."""

    problems: tuple[str, ...] = field(
        default=("great_circle", "ire_toy"), metadata={"help": "analytic problems"}
    )
    network: bool = field(
        default=False, metadata={"help": "also a small LayerNorm MLP (~50 s CPU more)"}
    )
    eta: float = field(default=0.1, metadata={"help": "learning rate (wd = eta_wd / eta)"})
    eta_wd: tuple[float, ...] = field(
        default=(1e-2, 3e-3), metadata={"help": "intrinsic learning rates (analytic problems)"}
    )
    net_eta_wd: tuple[float, ...] = field(
        default=(1e-2,), metadata={"help": "intrinsic learning rates (network)"}
    )
    eos0: float = field(default=0.3, metadata={"help": "initial eta_eff * S"})
    tau_end: float = field(default=2.0, metadata={"help": "slow time after the onset"})
    rows: int = field(default=160, metadata={"help": "compared rows per run"})
    window: int = field(default=8, metadata={"help": "GD moving-average window (even, steps)"})
    perturbation: float = field(default=1e-10, metadata={"help": "GD kick per step"})
    net_width: int = field(default=8, metadata={"help": "MLP hidden width (two layers)"})
    net_samples: int = field(default=24, metadata={"help": "network training samples"})
    net_max_edge: int = field(
        default=2, metadata={"help": "eigenvalues allowed at the edge at once (network)"}
    )
    timing_repeats: int = field(
        default=3, metadata={"help": "timed calls per model after a first (compiling) one"}
    )
    dtype: Literal["float64"] = field(default="float64", metadata={"help": "precision"})
    seed: int = field(default=0, metadata={"help": "PRNG seed"})

    def __post_init__(self) -> None:
        check.among(self.problems, "problems", sorted(PROBLEMS), empty=True)
        check.all_in_interval(self.eta_wd, "eta_wd", 0, 0.1, min_len=0)
        check.all_in_interval(self.net_eta_wd, "net_eta_wd", 0, 0.1, min_len=0)
        check.positive_fields(self, "eta", "tau_end")
        check.in_interval(self.eos0, "eos0", 0, 2)  # below the edge 2
        check.nonnegative_fields(self, "perturbation")
        check.int_fields_at_least(self, 2, "window")
        if self.window % 2:
            raise ValueError(f"window must be an even int >= 2, got {self.window}")
        check.int_fields_at_least(self, 8, "rows")
        check.int_fields_at_least(self, 1, "net_max_edge", "net_width", "net_samples")
        check.int_fields_at_least(self, 0, "timing_repeats")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick`` (the defaults, ~60 s CPU with Edge Flow and the timing repeats): great
        circle and IRE toy at eta*wd 1e-2, 3e-3, no network (``--network true`` adds it at
        1e-2); ``full``: the three analytic problems
        down to 1e-4 and the network down to 1e-3, longer and wider."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(
                problems=("great_circle", "curved_manifold", "ire_toy"),
                network=True,
                eta_wd=(1e-2, 3e-3, 1e-3, 3e-4, 1e-4),
                net_eta_wd=(1e-2, 3e-3, 1e-3),
                tau_end=4.0,
                rows=400,
                net_width=16,
                net_samples=48,
                # Measured: with 2 allowed, a third eigenvalue reached the edge at t = 243 steps.
                net_max_edge=4,
            )
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


def _network(cfg: Config) -> nets.NetProblem:
    ds = datasets.teacher_student(
        n_train=cfg.net_samples,
        n_test=64,
        d_in=4,
        hidden=8,
        k_out=1,
        seed=1,
        dtype=np.float64,
    )
    model = nets.mlp((cfg.net_width, cfg.net_width), norm="layer", activation="gelu")
    return nets.make_problem(
        model,
        ds.x_train,
        ds.y_train,
        ds.x_test,
        ds.y_test,
        loss="mse",
        seed=cfg.seed,
        groups="all",
        dtype=np.float64,
    )


def _setup(cfg: Config, problem: str) -> dict[str, Any]:
    """Loss, start, geometry and residuals of one problem."""
    dtype = dtype_from_config(cfg.dtype)
    if problem == NETWORK:
        net = _network(cfg)
        u = net.w0 / jnp.linalg.norm(net.w0)
        s0 = float(_top_eig(net.loss, np.asarray(u)[None])[0])
        w0 = u * math.sqrt(cfg.eta * s0 / cfg.eos0)
        geometry = Dense() if w0.shape[0] <= DENSE_MAX_DIM else Lanczos()
        return {
            "loss": net.loss,
            "w0": w0,
            "geometry": geometry,
            "residuals": net.residuals,
            "problem": None,
        }
    prob = PROBLEMS[problem]()
    w0 = jnp.asarray(initial_point(problem, cfg.eta, cfg.eos0, dtype))
    return {"loss": prob.loss, "w0": w0, "geometry": Dense(), "residuals": None, "problem": prob}


# --------------------------------------------------------------------------------------------
# GD's time averages
# --------------------------------------------------------------------------------------------


@eqx.filter_jit
def _losses(loss: Any, ws: jax.Array) -> jax.Array:
    return jax.lax.map(loss, ws, batch_size=256)


def _top_eig(loss: Any, ws: np.ndarray | jax.Array) -> np.ndarray:
    """``lambda_1(hess L(w))`` for each row (``theory.analysis.midpoint.top_hessian_eigenvalues``:
    dense up to ``DENSE_MAX_DIM`` parameters, else 64-vector Lanczos warm started along the
    rows from a fixed normal draw)."""
    v0 = jax.random.normal(jax.random.PRNGKey(1), ws.shape[1:], ws.dtype)
    return top_hessian_eigenvalues(loss, ws, lanczos_iters=64, v0=v0)


def _stat(v: np.ndarray, fn: Any) -> float:
    return float(fn(v)) if v.size else float("nan")


# --------------------------------------------------------------------------------------------
# One problem: GD and the central flow at every eta * wd, the SR flow once
# --------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """``fn()`` and the median wall time of ``repeats`` further calls (NaN if 0): the first
    call compiles, the others reuse its compilations."""
    out = fn()
    walls = []
    for _ in range(repeats):
        clock = time.perf_counter()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - clock)
    return out, statistics.median(walls) if walls else math.nan


def _rows(cfg: Config, ewd: float) -> tuple[int, np.ndarray, float]:
    """GD steps (a multiple of ``_CHUNK``), the ``cfg.rows`` compared steps, the phase-II onset."""
    t_pred = predicted_eos_onset(cfg.eta, ewd / cfg.eta, cfg.eos0)
    need = 1.5 * t_pred + cfg.tau_end / (2 * ewd) + cfg.window
    steps = _CHUNK * math.ceil(max(need, cfg.rows + cfg.window) / _CHUNK)
    row_t = np.round(np.linspace(0, steps - cfg.window // 2 - 1, cfg.rows)).astype(np.int64)
    assert len(np.unique(row_t)) == cfg.rows
    return steps, row_t, float(t_pred)


def _gd_and_central(
    cfg: Config, problem: str, setup: dict[str, Any], ewd: float, key: jax.Array
) -> dict[str, Any]:
    """GD (time averages at the rows) and the central flow at one ``eta * wd``."""
    loss, w0 = setup["loss"], setup["w0"]
    eta, wd = cfg.eta, ewd / cfg.eta
    steps, row_t, t_pred = _rows(cfg, ewd)

    clock = time.process_time()
    gd, wall_gd = _timed(
        lambda: gd_wd(
            loss,
            w0,
            eta=eta,
            wd=wd,
            steps=steps,
            tracker=NoTracking(),
            perturbation=cfg.perturbation,
            key=key,
            chunk_steps=_CHUNK,
            check_invariance=problem != NETWORK,
        ),
        cfg.timing_repeats,
    )
    assert gd.w is not None
    w_all = np.asarray(gd.w)
    l_all = np.asarray(_losses(loss, jnp.asarray(w_all)))
    w_bar = moving_average(w_all, cfg.window)
    osc = moving_average(np.sum((w_all - w_bar) ** 2, axis=1), cfg.window)
    l_bar = moving_average(l_all, cfg.window)
    wb = w_bar[row_t]
    mid = iterate_midpoints(w_all, row_t)  # stored iterates: GD here is kicked every step
    n = len(row_t)
    lam = _top_eig(loss, np.concatenate([wb, mid, w_all[row_t]]))
    gd_eos, gd_eos_mid, gd_eos_raw = eta * lam[:n], eta * lam[n : 2 * n], eta * lam[2 * n :]
    # GD's onset: the first step where eta (lambda_1 + wd) >= 2 at the iterate (the same edge
    # as the central flow's; before the onset there is no oscillation to average). The rows
    # bracket it; the steps between the last row below and the first row at the edge are then
    # measured one by one (phase II grows the quantity monotonically).
    gd_onset_row = next((i for i, e in enumerate(gd_eos_raw) if e + ewd >= 2.0), None)
    gd_onset = None if gd_onset_row is None else int(row_t[gd_onset_row])
    if gd_onset_row is not None and gd_onset_row > 0:
        between = np.arange(row_t[gd_onset_row - 1] + 1, row_t[gd_onset_row] + 1)
        lam_between = eta * np.asarray(_top_eig(loss, jnp.asarray(w_all[between])))
        at_edge = np.flatnonzero(lam_between + ewd >= 2.0)
        if at_edge.size:
            gd_onset = int(between[at_edge[0]])
    cost_gd = time.process_time() - clock

    clock = time.process_time()
    cf, wall_cf = _timed(
        lambda: central_flow(
            loss,
            w0,
            eta=eta,
            wd=wd,
            saveat=row_t.astype(np.float64),
            geometry=setup["geometry"],
            edge=EdgeSettings(max_edge=1 if problem != NETWORK else cfg.net_max_edge),
        ),
        cfg.timing_repeats,
    )
    cost_cf = time.process_time() - clock
    assert len(cf.t) == len(row_t), "the central flow stopped early"

    # Edge Flow, seeded like GD: the kick's RMS along a unit direction orthogonal to w is
    # perturbation |w| / sqrt(D) per step (theory.engine.methods.tangent_kick).
    kick = cfg.perturbation / math.sqrt(w0.shape[0])
    clock = time.process_time()
    ef, wall_ef = _timed(
        lambda: edge_flow(
            loss,
            w0,
            eta=eta,
            wd=wd,
            saveat=SaveTimes(ts=row_t.astype(np.float64)),
            oscillation=Oscillation(rho0=kick, kick=kick),
            geometry=setup["geometry"],
        ),
        cfg.timing_repeats,
    )
    cost_ef = time.process_time() - clock
    return {
        "ewd": ewd,
        "steps": steps,
        "row_t": row_t,
        "t_pred": t_pred,
        "t_c": cf.onset if cf.onset is not None else t_pred,
        "gd_norm": np.linalg.norm(wb, axis=1),
        "gd_dir": wb,
        "gd_eos": gd_eos,
        "gd_eos_mid": gd_eos_mid,
        "gd_eos_raw": gd_eos_raw,
        "gd_mid": mid,
        "gd_onset": gd_onset,
        "gd_onset_row": None if gd_onset_row is None else int(row_t[gd_onset_row]),
        "l_all": l_all,
        "l_bar": l_bar[row_t],
        "osc": osc[row_t],
        "cf": cf,
        "ef": ef,
        "cost_gd": cost_gd,
        "cost_cf": cost_cf,
        "cost_ef": cost_ef,
        "wall_gd": wall_gd,
        "wall_cf": wall_cf,
        "wall_ef": wall_ef,
    }


def _sr_flow(
    cfg: Config, setup: dict[str, Any], runs: list[dict[str, Any]]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The SR flow (F1) from ``Phi(w0)`` at the union of the runs' ``tau``.

    ``Phi(w0)`` is the spherical gradient-flow limit
    (``theory.flows.manifold.project_to_manifold``).
    Before its onset the central flow is gradient flow on ``f``, whose direction follows the
    spherical gradient flow, so ``Phi`` of the central flow's state at the onset is ``Phi(w0)``
    even where phase I is not over there (the network; its Gauss-Newton projection then does
    not converge, and the Gauss-Newton foot of ``w0`` is another point of ``Gamma``). Where
    ``Gamma`` is a curve with a closed-form F1 (great circle, IRE toy) the flow is that
    solution, with the closed-form ``lambda_1`` and ``|g|`` along it; otherwise
    ``theory.sharpness_flow`` integrates it (least-squares geometry for the network).
    """
    taus = [2.0 * r["ewd"] * (r["row_t"][r["row_t"] >= r["t_c"]] - r["t_c"]) for r in runs]
    grid = np.unique(np.concatenate([[0.0], *taus]))
    prob = setup["problem"]
    clock = time.process_time()
    info: dict[str, Any] = {"sr_failure": None, "sr_start": "Phi(w0)"}
    dim = len(setup["w0"])
    out = {"tau": np.zeros(0), "theta": np.zeros((0, dim)), "s": np.zeros(0), "g": np.zeros(0)}
    try:
        # "auto": the network's normal spectrum is stiff (the explicit flow stalled at
        # |grad L| = 2e-5 on the full preset's 16x16 MLP).
        start = project_to_manifold(setup["loss"], setup["w0"], solver="auto")
        if prob is not None and prob.has_closed_form_flow:
            info["sr_method"] = "closed form"
            theta = prob.flow_closed_form(start, jnp.asarray(grid), "F1")
            out = {
                "tau": grid,
                "theta": np.asarray(theta),
                "s": np.asarray(jax.vmap(prob.lambda1)(theta)),
                "g": np.linalg.norm(
                    np.asarray(jax.vmap(prob.riemannian_grad_log_lambda1)(theta)), axis=-1
                ),
            }
            info["evals_sr"] = 0
        else:
            least_squares = setup["residuals"] is not None
            geometry = GaussNewton(setup["residuals"]) if least_squares else Dense()
            info["sr_method"] = f"sharpness_flow ({'gauss_newton' if least_squares else 'dense'})"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DegenerateSharpnessWarning)
                sr = sharpness_flow(
                    setup["loss"],
                    start,
                    SaveTimes(ts=grid),
                    geometry=geometry,
                    stepsize_controller=diffrax.PIDController(rtol=1e-7, atol=1e-9),
                    degeneracy=Degeneracy(action="stop"),
                )
            out = {"tau": sr.tau, "theta": sr.theta, "s": sr.sharpness, "g": sr.g_norm}
            info["evals_sr"] = sr.num_evals
    except (ProjectionError, RuntimeError, ValueError) as exc:
        info["sr_failure"] = f"{type(exc).__name__}: {exc}"
        info["evals_sr"] = 0
    info["cost_sr_cpu_s"] = time.process_time() - clock
    return out, info


def _compare(
    cfg: Config, run: dict[str, Any], sr: dict[str, np.ndarray], sr_info: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Errors of the central flow and the SR flow against GD's time averages, one run."""
    eta, ewd = cfg.eta, run["ewd"]
    cf, row_t, t_c = run["cf"], run["row_t"], run["t_c"]
    gd_norm, gd_eos, wb, l_bar, osc = (
        run["gd_norm"],
        run["gd_eos"],
        run["gd_dir"],
        run["l_bar"],
        run["osc"],
    )
    after = row_t >= t_c
    tau = 2.0 * ewd * (row_t[after] - t_c)
    idx = np.searchsorted(sr["tau"], tau)
    n_sr = int(np.sum(idx < len(sr["tau"])))  # the SR flow may stop at a degeneracy
    idx = idx[:n_sr]
    sr_theta, sr_s, sr_g = sr["theta"][idx], sr["s"][idx], sr["g"][idx]
    sr_rows = np.flatnonzero(after)[:n_sr]

    # The EoS loss level that the flows predict at the onset (a derived scale, used only to
    # make loss errors dimensionless): eta wd S(t_c) / 4.
    i_c = int(np.argmin(np.abs(cf.t - t_c)))
    level = ewd * float(cf.sharpness[i_c]) / 4.0
    sr_norm = np.sqrt(eta * sr_s / 2)
    sr_loss = ewd * sr_s / (4 * (1 + sr_g**2 / 4))
    err: dict[str, np.ndarray] = {
        "cf_norm": np.abs(cf.norm - gd_norm) / gd_norm,
        "cf_eos": np.abs(cf.eos - gd_eos) / 2.0,
        "cf_loss": np.abs(cf.avg_loss - l_bar) / level,
        "cf_dir": angle_between(cf.w, wb),
        "sr_norm": np.abs(sr_norm - gd_norm[sr_rows]) / gd_norm[sr_rows],
        "sr_eos": np.abs(2.0 - gd_eos[sr_rows]) / 2.0,
        "sr_loss": np.abs(sr_loss - l_bar[sr_rows]) / level,
        "sr_dir": angle_between(sr_theta, wb[sr_rows]),
    }
    # Edge Flow's center against GD's midpoints (its two-step average), the whole run.
    ef = run["ef"]
    mid_norm = np.linalg.norm(run["gd_mid"], axis=1)
    err |= {
        "ef_norm": np.abs(ef.norm - mid_norm) / mid_norm,
        "ef_eos": np.abs(ef.eos - run["gd_eos_mid"]) / 2.0,
        "ef_dir": angle_between(ef.x, run["gd_mid"]),
    }
    settled = (cf.mode > 0) & (row_t >= t_c + 0.25 / (2 * ewd))  # a quarter of tau after t_c
    info: dict[str, Any] = {
        "eta_wd": ewd,
        "steps": run["steps"],
        "onset_predicted_phase2": run["t_pred"],
        "onset_central_flow": cf.onset,
        "onset_gd": run["gd_onset"],
        "onset_gd_first_row": run["gd_onset_row"],
        "loss_level": level,
        "tau_reached_sr": float(tau[n_sr - 1]) if n_sr else 0.0,
        "cost_gd_cpu_s": run["cost_gd"],
        "cost_central_cpu_s": run["cost_cf"],
        "evals_central": cf.num_evals,
        **sr_info,
        "sr_start_angle_to_cf_onset": float(angle_between(sr["theta"][0], cf.w[i_c]))
        if len(sr["tau"])
        else float("nan"),
        "events": [[e.t, e.change] for e in cf.events],
        "cost_edge_cpu_s": run["cost_ef"],
        "steps_edge": ef.num_steps,
        "wall_gd_s": run["wall_gd"],
        "wall_central_s": run["wall_cf"],
        "wall_edge_s": run["wall_ef"],
        "cost_ratio_central": run["wall_cf"] / run["wall_gd"],
        "cost_ratio_edge": run["wall_ef"] / run["wall_gd"],
    }
    # The first overshoot of eta lambda_1 above the edge: GD at its midpoints, at its iterates
    # and at its moving average; Edge Flow and the central flow at their points.
    edge = 2.0 - ewd
    for who, series in (
        ("gd_mid", run["gd_eos_mid"]),
        ("gd_raw", run["gd_eos_raw"]),
        ("gd_bar", gd_eos),
        ("ef", ef.eos),
        ("cf", cf.eos),
    ):
        for k, v in first_overshoot(row_t, series, edge)._asdict().items():
            info[f"overshoot_{who}_{k}"] = v
    for k, v in err.items():
        info[f"max_{k}"] = _stat(v, np.max)
        info[f"median_{k}"] = _stat(v, np.median)
    for k in ("cf_norm", "cf_eos", "cf_loss", "cf_dir", "ef_norm", "ef_eos", "ef_dir"):
        info[f"max_{k}_after"] = _stat(err[k][after], np.max)
    if np.any(settled):
        info["sigma2_ratio_median"] = float(np.median(cf.sigma2[settled] / osc[settled]))
        info["eos_cf_settled"] = float(np.median(cf.eos[settled]))
        info["eos_gd_settled"] = float(np.median(gd_eos[settled]))
    # Phase III (t >= t_c): means (what a model of the time average can predict of GD even
    # through relaxation cycles) and RMS errors (how far GD strays from the model).
    if np.any(after):
        for name_, gd_v, cf_v in (
            ("norm", gd_norm, cf.norm),
            ("eos", gd_eos, cf.eos),
            ("loss", l_bar, cf.avg_loss),
        ):
            info[f"phase3_mean_gd_{name_}"] = float(np.mean(gd_v[after]))
            info[f"phase3_mean_cf_{name_}"] = float(np.mean(cf_v[after]))
        info["phase3_mean_gd_eos_mid"] = float(np.mean(run["gd_eos_mid"][after]))
        info["phase3_mean_gd_eos_raw"] = float(np.mean(run["gd_eos_raw"][after]))
        # GD's loss at every step of phase III (not only at the rows' 8-step windows): the
        # time mean that the central flow's L + 1/2 <Sigma, H>, smooth, averages over its rows.
        l_steps = run["l_all"][math.ceil(t_c) : int(row_t[-1]) + 1]
        info["phase3_mean_gd_loss_every_step"] = float(np.mean(l_steps))
        info["phase3_mean_gd_osc"] = float(np.mean(osc[after]))
        info["phase3_mean_cf_sigma2"] = float(np.mean(cf.sigma2[after]))
        info["phase3_rms_eos"] = float(np.sqrt(np.mean((gd_eos - cf.eos)[after] ** 2)))
        info["phase3_rms_norm"] = float(np.sqrt(np.mean(err["cf_norm"][after] ** 2)))
        info["phase3_rms_dir"] = float(np.sqrt(np.mean(err["cf_dir"][after] ** 2)))
        if n_sr:
            info["phase3_mean_sr_norm"] = float(np.mean(sr_norm))
            info["phase3_mean_sr_loss"] = float(np.mean(sr_loss))
            info["phase3_mean_gd_norm_sr_rows"] = float(np.mean(gd_norm[sr_rows]))
            info["phase3_mean_gd_loss_sr_rows"] = float(np.mean(l_bar[sr_rows]))
            info["phase3_rms_sr_norm"] = float(np.sqrt(np.mean(err["sr_norm"] ** 2)))
            info["phase3_rms_sr_dir"] = float(np.sqrt(np.mean(err["sr_dir"] ** 2)))
    arrays = {
        "t": row_t.astype(np.float64),
        "gd_norm": gd_norm,
        "gd_eos": gd_eos,
        "gd_eos_mid": run["gd_eos_mid"],
        "gd_eos_raw": run["gd_eos_raw"],
        "gd_loss_bar": l_bar,
        "gd_osc": osc,
        "cf_norm": cf.norm,
        "cf_eos": cf.eos,
        "cf_avg_loss": cf.avg_loss,
        "cf_sigma2": cf.sigma2,
        "cf_mode": cf.mode.astype(np.float64),
        "ef_norm": ef.norm,
        "ef_eos": ef.eos,
        "ef_amplitude": ef.amplitude,
        "ef_avg_loss": ef.avg_loss,
        "gd_mid_norm": mid_norm,
        "sr_t": row_t[sr_rows].astype(np.float64),
        "sr_norm": sr_norm,
        "sr_avg_loss": sr_loss,
        **{f"err_{k}": v for k, v in err.items()},
    }
    return arrays, info


def _run_problem(
    cfg: Config, problem: str, ewds: tuple[float, ...], key: jax.Array
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every ``eta * wd`` of one problem: arrays named ``<i>.<array>``, info ``{str(i): ...}``."""
    clock = time.process_time()
    setup = _setup(cfg, problem)
    cost_setup = time.process_time() - clock
    runs = [
        _gd_and_central(cfg, problem, setup, ewd, jax.random.fold_in(key, i))
        for i, ewd in enumerate(ewds)
    ]
    sr, sr_info = _sr_flow(cfg, setup, runs)
    sr_info["cost_setup_cpu_s"] = cost_setup
    arrays: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    for i, run in enumerate(runs):
        sub, inf = _compare(cfg, run, sr, sr_info)
        arrays.update(prefixed(str(i), sub))
        info[str(i)] = inf
    return arrays, info


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run every problem (all its eta*wd); finished problems are kept in ``checkpoints``."""
    dtype_from_config(cfg.dtype)
    jobs = {p: cfg.eta_wd for p in cfg.problems}
    if cfg.network:
        jobs[NETWORK] = cfg.net_eta_wd
    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {}

    def one(n: int, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return _run_problem(cfg, name, jobs[name], jax.random.PRNGKey(cfg.seed * 100_003 + n))

    for name, sub, info in cached_runs(list(jobs), one, checkpoints, desc=NAME, progress=progress):
        arrays.update(prefixed(name, sub))
        for i, inf in info.items():
            summary[f"{name}.{i}"] = {"problem": name, **inf}
    return arrays, summary


def _fmt(x: Any) -> str:
    """A stored number as ``1.23e-04`` (``nan`` for None or a stored NaN)."""
    return f"{number(x):.3g}"


def _report(stored: StoredRun) -> list[str]:
    lines = []
    for key, s in stored.meta["summary"].items():
        lines.append(
            f"{key} (eta*wd={number(s['eta_wd']):g}): onset GD {_fmt(s['onset_gd'])}, central "
            f"{_fmt(s['onset_central_flow'])}; phase III eta_eff S at GD's mean iterate "
            f"{_fmt(s.get('phase3_mean_gd_eos'))} (midpoints "
            f"{_fmt(s.get('phase3_mean_gd_eos_mid'))}, iterates "
            f"{_fmt(s.get('phase3_mean_gd_eos_raw'))}), central "
            f"{_fmt(s.get('phase3_mean_cf_eos'))}; after the onset, max error |w| central "
            f"{_fmt(s['max_cf_norm_after'])} vs SR {_fmt(s['max_sr_norm'])}, direction "
            f"{_fmt(s['max_cf_dir_after'])} vs {_fmt(s['max_sr_dir'])}"
            + (f"; SR failed: {s['sr_failure'][:80]}" if s.get("sr_failure") else "")
        )
        lines.append(
            f"{key}: first overshoot of eta lambda_1 above the edge, GD (midpoints) peak "
            f"{_fmt(s.get('overshoot_gd_mid_peak'))} duration "
            f"{_fmt(s.get('overshoot_gd_mid_duration'))} period "
            f"{_fmt(s.get('overshoot_gd_mid_period'))}, Edge Flow peak "
            f"{_fmt(s.get('overshoot_ef_peak'))} duration {_fmt(s.get('overshoot_ef_duration'))} "
            f"period {_fmt(s.get('overshoot_ef_period'))}; wall time per GD time: central "
            f"{_fmt(s.get('cost_ratio_central'))}, Edge Flow {_fmt(s.get('cost_ratio_edge'))}"
        )
    return lines


SIM = Simulation(NAME, Config, run, __doc__, report=_report)
run_and_store = SIM.run_and_store
main = SIM.main
