"""The prediction from the initialization (``theory.predict_from_init``) against GD+WD.

For each problem (analytic problems; at ``full`` also a small LayerNorm MLP on a teacher-student
regression) and intrinsic learning rate ``eta * wd``, from a start with ``eta_eff * S = eos0``:

* the prediction (phases I-III without GD; docs/predict.md), timed (first call, and compiled);
* GD+WD itself over the same steps (a tiny tangent kick per step seeds the EoS), timed, and its
  onset step read from its iterates (the first step with ``eta lambda_1(w_hat_t) / |w_t|^2 >= 2``,
  searched in a window around the predicted onset);
* GD's iterates projected onto ``Gamma`` on the prediction's rows (``Phi`` for the analytic
  problems, the Gauss-Newton foot of the normal for the network) and their sharpness;
* the relaxation cycles in GD's per-step norm and loss after the onset (bursts of the loss) and,
  over each whole cycle, GD's averages against the prediction's: sharpness (rows in the cycle),
  ``log |w|^2 - log(eta S_pred / 2)`` (every step), and the squared amplitude ``2 L / S_pred``
  against the equilibrium ``c / (4 + |g(tau)|^2)`` (every step); the reduced model's period for
  the measured swing (``theory.relaxation_cycle``).

Stored per ``<problem>.<i>`` (``i`` indexes ``eta_wd``): the prediction's rows, GD's projected
rows and per-step norm and loss. The summary has, per problem, ``dim`` and ``runs`` (one info
dict per ``eta_wd``).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from scipy.signal import find_peaks

from sims import data as datasets
from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, cached_runs, prefixed
from theory.core import validate as check
from theory.core.errors import DegenerateSharpnessWarning
from theory.core.sharpness import spherical_sharpness
from theory.engine import NoTracking
from theory.engine.gd import gd_wd
from theory.flows.common import AbstractGeometry, Dense, GaussNewton
from theory.flows.manifold import project_to_manifold
from theory.flows.predict import (
    PredictResult,
    gauss_newton_feet,
    predict_from_init,
    relaxation_cycle,
    top_eigenvalues,
)
from theory.problems import nets
from theory.problems.analytic import PROBLEMS

NAME = "predict_init"
NET = "mlp"
_CHUNK = 256  # GD's steps per compiled chunk: every run (>= 256 steps) shares one program
_REPEATS = 3  # compiled timings: the least of this many calls


@dataclass(frozen=True)
class Config:
    """Settings of the prediction-versus-GD study."""

    problems: tuple[str, ...] = field(
        default=("great_circle", "curved_manifold"),
        metadata={"help": "analytic problems and/or 'mlp' (LayerNorm MLP, least squares)"},
    )
    eta: float = field(default=0.1, metadata={"help": "learning rate (wd = eta_wd / eta)"})
    eta_wd: tuple[float, ...] = field(
        default=(1e-2, 3e-3, 1e-3), metadata={"help": "intrinsic learning rates"}
    )
    eos0: float = field(default=0.3, metadata={"help": "initial eta_eff * S(w0) (analytic)"})
    net_eos0: float = field(
        default=0.03, metadata={"help": "initial eta_eff * S(w0) of the MLP (it sharpens 5x)"}
    )
    tau_end: float = field(default=4.0, metadata={"help": "slow time after the onset (analytic)"})
    net_tau_end: float = field(default=1.0, metadata={"help": "slow time after the onset (MLP)"})
    rows: int = field(default=160, metadata={"help": "compared rows per run (about)"})
    perturbation: float = field(default=1e-10, metadata={"help": "GD's tangent kick per step"})
    net_widths: tuple[int, ...] = field(default=(8, 8), metadata={"help": "MLP hidden widths"})
    net_samples: int = field(default=32, metadata={"help": "MLP training samples"})
    dtype: Literal["float64"] = field(default="float64", metadata={"help": "precision"})
    seed: int = field(default=0, metadata={"help": "PRNG seed (kicks; MLP init)"})

    def __post_init__(self) -> None:
        check.among(self.problems, "problems", (*PROBLEMS, NET))
        check.all_in_interval(self.eta_wd, "eta_wd", 0, 0.1)
        check.positive_fields(self, "eta", "tau_end", "net_tau_end")
        check.in_interval(self.eos0, "eos0", 0, 2)  # below the edge 2
        check.in_interval(self.net_eos0, "net_eos0", 0, 2)
        check.nonnegative_fields(self, "perturbation")
        check.int_fields_at_least(self, 8, "rows")
        check.int_fields_at_least(self, 2, "net_samples")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: the two analytic problems, eta*wd 1e-2..1e-3; ``full``: every analytic
        problem and a 16x16 MLP, eta*wd down to 1e-4."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(
                problems=(*PROBLEMS, NET),
                eta_wd=(1e-2, 3e-3, 1e-3, 3e-4, 1e-4),
                net_widths=(16, 16),
                net_samples=96,
                net_tau_end=1.5,
            )
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


class _Problem:
    """A loss with its start, residuals, and the projection used to read GD's slow variable."""

    def __init__(self, cfg: Config, name: str, dtype: Any):
        self.name = name
        if name == NET:
            ds = datasets.teacher_student(
                n_train=cfg.net_samples, n_test=64, d_in=8, hidden=16, k_out=1, seed=1,
                dtype=np.float64,
            )  # fmt: skip
            model = nets.mlp(cfg.net_widths, norm="layer", activation="gelu")
            prob = nets.make_problem(
                model, ds.x_train, ds.y_train, ds.x_test, ds.y_test, loss="mse",
                seed=cfg.seed, groups="all", dtype=np.float64,
            )  # fmt: skip
            self.loss, self.residuals = prob.loss, prob.residuals
            u0 = jnp.asarray(prob.w0, dtype)
            self.tau_end = cfg.net_tau_end
        else:
            ana = PROBLEMS[name]()
            self.loss, self.residuals = ana.loss, None
            u0 = jnp.asarray(ana.start, dtype)
            self.tau_end = cfg.tau_end
        s0, _ = spherical_sharpness(self.loss, u0, check_invariance=False)
        u0 = u0 / jnp.linalg.norm(u0)
        self.eos0 = cfg.net_eos0 if name == NET else cfg.eos0
        self.w0 = u0 * jnp.sqrt(cfg.eta * s0 / self.eos0)
        # Dense Hessians on the analytic problems; the least-squares geometry on the network.
        self.geometry: AbstractGeometry = (
            Dense() if self.residuals is None else GaussNewton(self.residuals)
        )

    def project(self, w: np.ndarray) -> np.ndarray:
        if self.residuals is not None:
            return gauss_newton_feet(self.residuals, w)
        size = 1 << max(len(w) - 1, 0).bit_length()  # padded: one compiled shape per size
        padded = np.concatenate([w, np.repeat(w[-1:], size - len(w), axis=0)])
        return np.asarray(project_to_manifold(self.loss, jnp.asarray(padded)))[: len(w)]

    def sharpness(self, points: np.ndarray) -> np.ndarray:
        return top_eigenvalues(self.loss, points, geometry=self.geometry)


def _timed(fn: Any, repeats: int = 1) -> tuple[Any, float]:
    """``fn()`` and its wall-clock seconds, the least over ``repeats`` calls (the compiled cost
    on a shared machine: other jobs only ever add time)."""
    best, out = math.inf, None
    for _ in range(repeats):
        tic = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - tic)
    return out, best


def cycles(norm: np.ndarray, loss: np.ndarray) -> dict[str, Any]:
    """Relaxation cycles in per-step ``|w_t|`` and ``L(w_t)`` after the onset.

    Bursts are the peaks of ``log L`` (averaged over the period-2 oscillation) with a
    prominence of 5 (a factor e^5); a cycle runs from one burst to the next. Per cycle: its
    length, ``u`` swing ``(max - min) / 2`` of ``log |w|^2`` (with ``S`` constant over a cycle,
    ``u = log(eta S / 2) - log |w|^2``), ``log(L_max / L_min)``. The first cycle (the transient
    from the onset) is skipped; ``spans`` are the remaining cycles' ``[start, end)``. A span
    shorter than 3/4 of the median ends at a secondary burst (seen late in the great circle's
    runs: 93 + 116 steps against a median of 177) and is merged with the next one (``merged``
    counts them), so every span is one whole cycle.
    """
    log_n = np.log(norm**2)
    log_l = np.log(np.maximum(loss, np.finfo(float).tiny))
    ln = 0.5 * (log_n[1:] + log_n[:-1])
    ll = 0.5 * (log_l[1:] + log_l[:-1])
    peaks, _ = find_peaks(ll, prominence=5.0)
    out: dict[str, Any] = {"bursts": [int(p) for p in peaks]}
    if len(peaks) < 3:
        return {**out, "count": 0}
    raw = [(int(a), int(b)) for a, b in itertools.pairwise(peaks[1:])]
    median = float(np.median([b - a for a, b in raw]))
    spans: list[tuple[int, int]] = []
    begin: int | None = None
    for a, b in raw:
        begin = a if begin is None else begin
        if b - begin >= 0.75 * median:
            spans.append((begin, b))
            begin = None
    if not spans:
        return {**out, "count": 0}
    periods = [b - a for a, b in spans]
    swings = [0.5 * float(np.ptp(ln[a:b])) for a, b in spans]
    ratio = [float(np.ptp(ll[a:b])) for a, b in spans]
    out.update(
        count=len(spans),
        merged=len(raw) - len(spans),
        spans=spans,
        period=float(np.median(periods)),
        periods=periods,
        u_max=float(np.median(swings)),
        log_z_ratio=float(np.median(ratio)),
    )
    return out


def _gd_onset(
    prob: _Problem, w: np.ndarray, norm: np.ndarray, eta: float, guess: int
) -> int | None:
    """GD's onset from its per-step iterates: the first step with ``eta lambda_1 / |w|^2 >= 2``,
    searched in a 256-step window around ``guess`` (from step 0 if the window starts above)."""
    lo = max(0, guess - 128)
    hi = min(len(w), lo + 256)
    eos = eta * prob.sharpness(w[lo:hi]) / norm[lo:hi] ** 2
    if lo > 0 and eos[0] >= 2:
        lo, eos = 0, eta * prob.sharpness(w[:hi]) / norm[:hi] ** 2
    hit = np.flatnonzero(eos >= 2.0)
    return int(lo + hit[0]) if hit.size else None


def _cycle_averages(
    cfg: Config,
    ewd: float,
    pred: PredictResult,
    sharp_gd: np.ndarray,
    gd_norm: np.ndarray,
    gd_loss: np.ndarray,
    spans: list[tuple[int, int]],
) -> dict[str, Any]:
    """GD's whole-cycle averages against the prediction's (``spans`` in absolute steps)."""
    rows, c = pred.step, -2.0 * math.log1p(-ewd)
    ok = (pred.phase == 3) & np.isfinite(pred.sharpness)
    assert pred.flow is not None
    s_err, n_err, z_ratio, z_all, used = [], [], [], [], []
    for a, b in spans:
        steps = np.arange(a, b)
        r = np.flatnonzero(ok & (rows >= a) & (rows < b))
        if a < pred.onset or b - 1 > pred.flow_end_step or r.size < 3:
            continue
        s_pred = np.interp(steps, rows[ok], pred.sharpness[ok])
        # u = log(eta S / 2) - log |w|^2 averages to 0 over a closed orbit (docs/predict.md).
        n_err.append(float(np.mean(np.log(gd_norm[a:b] ** 2) - np.log(cfg.eta * s_pred / 2))))
        s_err.append(float(np.mean(sharp_gd[r]) / np.mean(pred.sharpness[r]) - 1))
        tau = 2.0 * ewd * (steps - pred.onset)
        g2 = np.interp(tau, pred.flow.tau, pred.flow.g_norm) ** 2
        z = (2.0 * gd_loss[a:b] / s_pred) / (c / (4.0 + g2))
        z_ratio.append(float(np.mean(z)))
        z_all.append(z)
        used.append((a, b))
    if not used:
        return {}
    return {
        "spans_used": used,
        "sharpness_err_cycles": s_err,
        "sharpness_err_cycle_max": float(np.max(np.abs(s_err))),
        "norm_log_err_cycles": n_err,
        "norm_log_err_cycle_max": float(np.max(np.abs(n_err))),
        "z_ratio_cycles": z_ratio,
        "z_ratio": float(np.mean(np.concatenate(z_all))),
    }


def _run_one(
    cfg: Config, prob: _Problem, ewd: float, key: jax.Array
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    eta, wd = cfg.eta, ewd / cfg.eta
    c = -2.0 * math.log1p(-ewd)
    cycle_guess = math.pi / math.sqrt(c)  # the small-orbit period

    def predict(steps: int, every: int) -> PredictResult:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DegenerateSharpnessWarning)
            return predict_from_init(
                prob.loss, prob.w0, eta=eta, wd=wd, steps=steps, record_every=every,
                geometry=prob.geometry,
            )  # fmt: skip

    def layout(onset: float) -> tuple[int, int]:
        horizon = math.ceil(onset + prob.tau_end / (2.0 * ewd)) + 50
        # floor, not ceil: about cfg.rows to 1.6 cfg.rows rows, so that every run of a problem
        # pads the rows to the same power of two (one compiled shape; 160 rows -> 256).
        every = max(1, min(horizon // cfg.rows, math.floor(cycle_guess / 4)))
        return every * math.ceil(horizon / every), every

    # The onset on Gamma from eta_eff S(w0) = eos0 (the analytic starts are near Gamma); the
    # MLP sharpens during phase I, so its run is laid out from a first prediction's onset.
    steps, every = layout(math.log(2.0 / prob.eos0) / c)
    if prob.name == NET:
        steps, every = layout(predict(2 * steps, every).onset)
    pred, t_pred_first = _timed(lambda: predict(steps, every))
    pred, t_pred = _timed(lambda: predict(steps, every), _REPEATS)  # compiled: steady cost

    def run_gd() -> Any:
        return gd_wd(
            prob.loss, prob.w0, eta=eta, wd=wd, steps=steps, tracker=NoTracking(),
            perturbation=cfg.perturbation, key=key, check_invariance=False,
            chunk_steps=_CHUNK,
        )  # fmt: skip

    gd, t_gd_first = _timed(run_gd)
    gd, t_gd = _timed(run_gd, _REPEATS)
    assert gd.w is not None
    onset_gd = _gd_onset(prob, gd.w, gd.norm, eta, pred.onset_step)
    rows = pred.step
    # GD's rows and its iterate at the onset, projected in one batch (one compiled shape).
    at_onset = [onset_gd] if onset_gd is not None else []
    proj = prob.project(gd.w[np.concatenate([rows, at_onset]).astype(int)])
    sharp_proj = prob.sharpness(proj)
    phi_gd, sharp_gd = proj[: len(rows)], sharp_proj[: len(rows)]
    n_gd, n_pred = gd.norm[rows] ** 2, pred.norm**2
    in2 = pred.phase == 2
    in3 = (pred.phase == 3) & np.isfinite(pred.sharpness)
    start = onset_gd if onset_gd is not None else pred.onset_step
    cyc = cycles(gd.norm[start:], gd.loss[start:])
    g0 = float(pred.flow.g_norm[0]) if pred.flow is not None else 0.0
    info: dict[str, Any] = {
        "eta_wd": ewd,
        "steps": steps,
        "record_every": every,
        "onset_pred": pred.onset,
        "onset_step_pred": pred.onset_step,
        "onset_gd": onset_gd,
        "phase1_end": pred.phase1_end,
        "phase1_before_onset": bool(pred.phase1_end < pred.onset),
        "gradient_norm_sq_rel": pred.gradient_norm_sq / float(jnp.vdot(prob.w0, prob.w0)),
        "norm_sq_err_phase2": float(np.max(np.abs(n_pred[in2] / n_gd[in2] - 1)))
        if in2.any()
        else None,
        "flow_end_step": pred.flow_end_step,
        "seconds_pred_first": t_pred_first,
        "seconds_pred": t_pred,
        "seconds_gd_first": t_gd_first,
        "seconds_gd": t_gd,
        "pred_seconds_parts": pred.seconds,
        "pred_counts": pred.counts,
        "g_norm_start": g0,
        "cycles": cyc,
        "sharpness_landing": pred.sharpness_landing,
    }
    # The landing point against GD's projected direction at its onset.
    if onset_gd is not None:
        info["landing_err"] = float(np.linalg.norm(proj[-1] - pred.theta_landing))
        info["sharpness_gd_onset"] = float(sharp_proj[-1])
        # GD's loss at its start, at the onset and its least after the onset: at the rounding
        # floor when GD reaches Gamma before the EoS, O(L(w0)) fractions when it runs at the
        # EoS off Gamma (the MLP).
        info["loss_start"] = float(gd.loss[0])
        info["loss_at_onset"] = float(gd.loss[onset_gd])
        info["loss_after_onset_min"] = float(np.min(gd.loss[onset_gd:]))
    if in3.any():
        i3 = np.flatnonzero(in3)
        info.update(
            sharpness_err_max=float(np.max(np.abs(sharp_gd[in3] / pred.sharpness[in3] - 1))),
            norm_log_err_max=float(np.max(np.abs(np.log(n_gd[in3] / n_pred[in3])))),
            dist_end=float(np.linalg.norm(phi_gd[i3[-1]] - pred.theta[i3[-1]])),
            sharpness_drop_pred=float(pred.sharpness[i3[-1]] / pred.sharpness_landing),
            sharpness_drop_gd=float(sharp_gd[i3[-1]] / sharp_gd[i3[0]]),
        )
    if cyc.get("count", 0) > 0 and pred.flow is not None:
        spans = [(start + a, start + b) for a, b in cyc["spans"]]
        info.update(_cycle_averages(cfg, ewd, pred, sharp_gd, gd.norm, gd.loss, spans))
        model = relaxation_cycle(ewd, u_max=cyc["u_max"], g_norm=g0)
        info["cycle_model"] = {
            "period": model.period,
            "period_small": relaxation_cycle(ewd, u_max=1e-4).period,
            "log_z_ratio": math.log(model.z_max / model.z_min),
        }
    arrays = {
        **{f"pred.{k}": v for k, v in pred.rows().items()},
        "gd.phi": phi_gd,
        "gd.sharpness": sharp_gd,
        "gd.norm": np.sqrt(n_gd),
        "gd.step_norm": gd.norm,
        "gd.step_loss": gd.loss,
    }
    return arrays, info


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run the study; returns (arrays, summary). Finished sub-runs are checkpointed."""
    dtype = dtype_from_config(cfg.dtype)
    grid = [(p_i, name, i) for p_i, name in enumerate(cfg.problems) for i in range(len(cfg.eta_wd))]
    problems: dict[str, _Problem] = {}

    def one(k: int, run_name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        p_i, name, i = grid[k]
        if name not in problems:
            problems[name] = _Problem(cfg, name, dtype)
        key = jax.random.PRNGKey(cfg.seed * 100_003 + p_i * 1009 + i)
        return _run_one(cfg, problems[name], cfg.eta_wd[i], key)

    names = [f"{name}.{i}" for _, name, i in grid]
    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {}
    for k, (run_name, sub, info) in enumerate(
        cached_runs(names, one, checkpoints, desc=NAME, progress=progress)
    ):
        _, name, _ = grid[k]
        arrays.update(prefixed(run_name, sub))
        entry = summary.setdefault(name, {"dim": int(sub["gd.phi"].shape[1]), "runs": []})
        entry["runs"].append(info)
    return arrays, summary


def _report(stored: StoredRun) -> list[str]:
    lines = []
    for name, s in stored.meta["summary"].items():
        for r in s["runs"]:
            cyc = r["cycles"]
            lines.append(
                f"{name} eta*wd={r['eta_wd']:g}: onset pred {r['onset_pred']:.1f} "
                f"(step {r['onset_step_pred']}) GD {r['onset_gd']}; cycle-avg S err "
                f"{r.get('sharpness_err_cycle_max', float('nan')):.2e}, log N err "
                f"{r.get('norm_log_err_cycle_max', float('nan')):.2e}; cycles "
                f"{cyc.get('count', 0)}, period {cyc.get('period', float('nan')):.0f}; "
                f"GD/pred time {r['seconds_gd'] / r['seconds_pred']:.2f}"
            )
    return lines


SIM = Simulation(NAME, Config, run, __doc__, report=_report)
run_and_store = SIM.run_and_store
main = SIM.main
