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
the CPU time of each model.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sims import data as datasets
from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, cached_runs, prefixed
from sims.studies.phases import initial_point
from theory.core import linalg
from theory.core.curvature import linearize_grad
from theory.core.errors import DegenerateSharpnessWarning, ProjectionError
from theory.core.lanczos import lanczos
from theory.engine import NoTracking
from theory.engine.gd import gd_wd, predicted_eos_onset
from theory.flows.central import central_flow
from theory.flows.manifold import project_to_manifold
from theory.flows.reduction import sharpness_flow
from theory.problems import nets
from theory.problems.analytic import PROBLEMS

NAME = "central_flow"
NETWORK = "mlp_layernorm"
_CHUNK = 50  # GD steps per compiled chunk: every run's step count is a multiple of it
_DENSE_MAX = 16  # dimension up to which Hessians are dense (jax.hessian + eigh)


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
    dtype: Literal["float64"] = field(default="float64", metadata={"help": "precision"})
    seed: int = field(default=0, metadata={"help": "PRNG seed"})

    def __post_init__(self) -> None:
        bad = [p for p in self.problems if p not in PROBLEMS]
        if bad:
            raise ValueError(f"problems must be among {sorted(PROBLEMS)}, got {self.problems}")
        for name in ("eta_wd", "net_eta_wd"):
            vals = getattr(self, name)
            if any(not (0 < x < 0.1) for x in vals):
                raise ValueError(f"{name} values must be in (0, 0.1), got {vals}")
        for name in ("eta", "tau_end", "eos0"):
            val = getattr(self, name)
            if not (math.isfinite(val) and val > 0):
                raise ValueError(f"{name} must be a positive finite float, got {val}")
        if self.eos0 >= 2:
            raise ValueError(f"eos0 must be below the edge 2, got {self.eos0}")
        if self.window < 2 or self.window % 2:
            raise ValueError(f"window must be an even int >= 2, got {self.window}")
        if self.rows < 8:
            raise ValueError(f"rows must be >= 8, got {self.rows}")
        if self.net_max_edge < 1:
            raise ValueError(f"net_max_edge must be >= 1, got {self.net_max_edge}")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick`` (the defaults, ~40 s CPU): great circle and IRE toy at eta*wd 1e-2, 3e-3,
        no network (``--network true`` adds it at 1e-2); ``full``: the three analytic problems
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
        s0 = float(_top_eig(net.loss, u[None])[0])
        w0 = u * math.sqrt(cfg.eta * s0 / cfg.eos0)
        geometry = "dense" if w0.shape[0] <= _DENSE_MAX else "lanczos"
        return {
            "loss": net.loss,
            "w0": w0,
            "geometry": geometry,
            "residuals": net.residuals,
            "problem": None,
        }
    prob = PROBLEMS[problem]()
    w0 = jnp.asarray(initial_point(problem, cfg.eta, cfg.eos0, dtype))
    return {"loss": prob.loss, "w0": w0, "geometry": "dense", "residuals": None, "problem": prob}


# --------------------------------------------------------------------------------------------
# GD's time averages
# --------------------------------------------------------------------------------------------


def _moving(x: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average over ``window`` rows (edges: the available part)."""
    kernel = np.ones(window) / window
    pad = window // 2
    xp = np.concatenate([np.repeat(x[:1], pad, 0), x, np.repeat(x[-1:], window - pad - 1, 0)])
    if x.ndim == 1:
        return np.convolve(xp, kernel, mode="valid")
    return np.stack([np.convolve(xp[:, j], kernel, mode="valid") for j in range(x.shape[1])], 1)


@eqx.filter_jit
def _losses(loss: Any, ws: jax.Array) -> jax.Array:
    return jax.lax.map(loss, ws, batch_size=256)


@eqx.filter_jit
def _top_eig(loss: Any, ws: jax.Array) -> jax.Array:
    """``lambda_1(hess L(w))`` for each row (dense ``eigh`` up to ``_DENSE_MAX``, else Lanczos)."""

    def one(w: jax.Array) -> jax.Array:
        if w.shape[0] <= _DENSE_MAX:
            return linalg.eigvalsh(jax.hessian(loss)(w))[-1]
        _, hvp = linearize_grad(loss, w)
        v0 = jax.random.normal(jax.random.PRNGKey(1), w.shape, w.dtype)
        return lanczos(hvp, v0, k=1, max_iters=64).eigenvalues[0]

    return jax.lax.map(one, ws, batch_size=64)


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return 2.0 * np.arcsin(np.clip(np.linalg.norm(a - b, axis=-1) / 2.0, 0.0, 1.0))


def _stat(v: np.ndarray, fn: Any) -> float:
    return float(fn(v)) if v.size else float("nan")


# --------------------------------------------------------------------------------------------
# One problem: GD and the central flow at every eta * wd, the SR flow once
# --------------------------------------------------------------------------------------------


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
    gd = gd_wd(
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
    )
    assert gd.w is not None
    w_all = np.asarray(gd.w)
    l_all = np.asarray(_losses(loss, jnp.asarray(w_all)))
    w_bar = _moving(w_all, cfg.window)
    osc = _moving(np.sum((w_all - w_bar) ** 2, axis=1), cfg.window)
    l_bar = _moving(l_all, cfg.window)
    wb = w_bar[row_t]
    mid = 0.5 * (w_all[row_t] + w_all[row_t + 1])
    n = len(row_t)
    lam = np.asarray(_top_eig(loss, jnp.asarray(np.concatenate([wb, mid, w_all[row_t]]))))
    gd_eos, gd_eos_mid, gd_eos_raw = eta * lam[:n], eta * lam[n : 2 * n], eta * lam[2 * n :]
    # GD's onset: the first row where eta (lambda_1 + wd) >= 2 at the iterate (the same edge as
    # the central flow's; before the onset there is no oscillation to average).
    gd_onset = next(
        (int(t) for t, e in zip(row_t, gd_eos_raw, strict=True) if e + ewd >= 2.0), None
    )
    cost_gd = time.process_time() - clock

    clock = time.process_time()
    cf = central_flow(
        loss,
        w0,
        eta=eta,
        wd=wd,
        t=row_t.astype(np.float64),
        geometry=setup["geometry"],
        max_edge=1 if problem != NETWORK else cfg.net_max_edge,
        check_invariance=problem != NETWORK,
    )
    cost_cf = time.process_time() - clock
    assert len(cf.t) == len(row_t), "the central flow stopped early"
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
        "gd_onset": gd_onset,
        "l_bar": l_bar[row_t],
        "osc": osc[row_t],
        "cf": cf,
        "cost_gd": cost_gd,
        "cost_cf": cost_cf,
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
            kwargs: dict[str, Any] = {"on_degenerate": "stop", "rtol": 1e-7, "atol": 1e-9}
            if setup["residuals"] is not None:
                kwargs |= {"geometry": "gauss_newton", "residual_fn": setup["residuals"]}
            info["sr_method"] = f"sharpness_flow ({kwargs.get('geometry', 'dense')})"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DegenerateSharpnessWarning)
                sr = sharpness_flow(setup["loss"], start, tau=grid, **kwargs)
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
        "cf_dir": _angle(cf.w, wb),
        "sr_norm": np.abs(sr_norm - gd_norm[sr_rows]) / gd_norm[sr_rows],
        "sr_eos": np.abs(2.0 - gd_eos[sr_rows]) / 2.0,
        "sr_loss": np.abs(sr_loss - l_bar[sr_rows]) / level,
        "sr_dir": _angle(sr_theta, wb[sr_rows]),
    }
    settled = (cf.mode > 0) & (row_t >= t_c + 0.25 / (2 * ewd))  # a quarter of tau after t_c
    info: dict[str, Any] = {
        "eta_wd": ewd,
        "steps": run["steps"],
        "onset_predicted_phase2": run["t_pred"],
        "onset_central_flow": cf.onset,
        "onset_gd": run["gd_onset"],
        "loss_level": level,
        "tau_reached_sr": float(tau[n_sr - 1]) if n_sr else 0.0,
        "cost_gd_cpu_s": run["cost_gd"],
        "cost_central_cpu_s": run["cost_cf"],
        "evals_central": cf.num_evals,
        **sr_info,
        "sr_start_angle_to_cf_onset": float(_angle(sr["theta"][0], cf.w[i_c]))
        if len(sr["tau"])
        else float("nan"),
        "events": [[e.t, e.change] for e in cf.events],
    }
    for k, v in err.items():
        info[f"max_{k}"] = _stat(v, np.max)
        info[f"median_{k}"] = _stat(v, np.median)
    for k in ("cf_norm", "cf_eos", "cf_loss", "cf_dir"):
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


def _num(x: Any) -> float:
    """A stored number as a float: None and a NaN stored as text (``"nan"``) give NaN."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _fmt(x: Any) -> str:
    """A stored number as ``1.23e-04`` (``nan`` for None or a stored NaN)."""
    return f"{_num(x):.3g}"


def _report(stored: StoredRun) -> list[str]:
    lines = []
    for key, s in stored.meta["summary"].items():
        lines.append(
            f"{key} (eta*wd={_num(s['eta_wd']):g}): onset GD {_fmt(s['onset_gd'])}, central "
            f"{_fmt(s['onset_central_flow'])}; phase III eta_eff S at GD's mean iterate "
            f"{_fmt(s.get('phase3_mean_gd_eos'))} (midpoints "
            f"{_fmt(s.get('phase3_mean_gd_eos_mid'))}, iterates "
            f"{_fmt(s.get('phase3_mean_gd_eos_raw'))}), central "
            f"{_fmt(s.get('phase3_mean_cf_eos'))}; after the onset, max error |w| central "
            f"{_fmt(s['max_cf_norm_after'])} vs SR {_fmt(s['max_sr_norm'])}, direction "
            f"{_fmt(s['max_cf_dir_after'])} vs {_fmt(s['max_sr_dir'])}"
            + (f"; SR failed: {s['sr_failure'][:80]}" if s.get("sr_failure") else "")
        )
    return lines


SIM = Simulation(NAME, Config, run, __doc__, report=_report)
run_and_store = SIM.run_and_store
main = SIM.main
