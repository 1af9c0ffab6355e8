"""The tame regime, quantitatively: GD+WD against the sharpness-reduction flow on real-data nets.

Networks. LayerNorm MLPs with ``tanh`` (smooth; no biases, fixed last layer, exactly
scale-invariant) fitted by MSE to a scalar target, ``+1`` for the labels ``0..4`` and ``-1`` for
``5..9``, on small training subsets of two real data sets (:mod:`sims.data`): scikit-learn's
digits (64 pixels) and MNIST-1D (40 samples per signal). With ``n`` samples and ``D > n``
weights, the interpolating minimizers on the sphere form a manifold ``Gamma`` of codimension
``n`` and ``L = |r|^2 / 2`` (least squares).

Per network and per ``eta * wd`` (the intrinsic learning rate; ``eta`` fixed, ``wd`` varied):

* GD+WD from :func:`theory.eos_equilibrium_start` (F1 amplitude) at ``theta_0`` (the
  Gauss-Newton projection of the initialization), recorded at ``rows`` times up to
  ``tau_end``; :func:`theory.compare_with_flow` against the F1 flow (least-squares geometry):
  ``dist = |GN(w_t) - theta(tau)|`` and the sharpness ``lambda_1`` along both;
* the sharpness-drop ratio ``(S_GD(0) - S_GD(tau)) / (S_flow(0) - S_flow(tau))`` at the last
  compared ``tau`` (``S_GD`` at the Gauss-Newton foot of the iterate);
* the projection's own error: at the last row, ``|GN(w_t) - Phi(w_t)|`` with ``Phi`` the
  spherical gradient-flow limit (:func:`theory.flows.manifold.projection_info` with
  ``solver="implicit"``: the flow is stiff on these networks), against the tracking error
  ``|GN(w_t) - theta(tau)|`` and ``|Phi(w_t) - theta(tau)|``;
* the midpoint sharpness ``S((w_t + w_{t+1}) / 2)`` (:func:`theory.analysis.midpoint.
  midpoint_curvature`, dense; the midpoint of the period-2 oscillation) at every row, for the
  collapse against ``tau``;
* the oscillation amplitude ``|w_hat_t - GN(w_t)|`` against the F1 prediction
  ``x^2 = (eta wd / 2) / (1 + |g|^2 / 4)`` (docs/theory.md section 3) along the flow.

F1 against F0 (at ``f0_eta_wd``): GD started with the F1 amplitude and with the F0 amplitude
``sqrt(eta wd / 2)``, each compared with the F1 flow and with the F0 flow.

Scales. ``quick`` (the defaults) is the digits network only, ``eta * wd`` 1.25e-4, 3.125e-5,
7.8e-6 to ``tau = 0.25`` with 5 rows: 119 s of CPU measured (over the 90 s target), most of it
compilation (GD, the flow in the Gauss-Newton geometry, F0, the implicit ``Phi``, the dense
midpoint Hessians). ``full`` is the study: both networks, ``eta * wd`` 2e-3 .. 2e-6 to
``tau = 0.5`` with 20 rows (about 200 s of CPU per network). The small ``eta * wd`` are needed:
GD's error reaches first order only below ~3e-5 on these networks. Every part's CPU time is in
the summary (``seconds``). The same code runs unchanged on an accelerator (everything is jitted
JAX; float64 needs x64).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np

from sims import data as datasets
from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, collect_runs, gd_from_equilibrium
from theory.analysis.fits import loglog_fit
from theory.analysis.midpoint import midpoint_curvature
from theory.core import validate as check
from theory.core.errors import DegenerateSharpnessWarning
from theory.core.types import Array
from theory.flows.common import GaussNewton
from theory.flows.compare import (
    ComparisonResult,
    compare_with_flow,
    eos_amplitude_sq,
)
from theory.flows.gauss_newton import gauss_newton_project
from theory.flows.manifold import projection_info
from theory.flows.reduction import Degeneracy, SharpnessFlowField
from theory.problems import nets

NAME = "tame"
DATASETS = ("digits", "mnist1d")


@dataclass(frozen=True)
class Config:
    """Settings of the tame-regime study."""

    datasets: tuple[str, ...] = field(
        default=("digits",), metadata={"help": "real data sets (digits, mnist1d)"}
    )
    n_train: int = field(default=32, metadata={"help": "training samples (< parameters)"})
    digits_widths: tuple[int, ...] = field(default=(6, 6), metadata={"help": "digits MLP"})
    mnist1d_widths: tuple[int, ...] = field(default=(8, 8), metadata={"help": "MNIST-1D MLP"})
    seed: int = field(default=0, metadata={"help": "init seed (data subset: seed 0)"})
    eta: float = field(default=0.1, metadata={"help": "learning rate"})
    eta_wd: tuple[float, ...] = field(
        default=(1.25e-4, 3.125e-5, 7.8125e-6), metadata={"help": "intrinsic learning rates"}
    )
    f0_eta_wd: float = field(default=1.25e-4, metadata={"help": "eta*wd of the F1-vs-F0 runs"})
    tau_end: float = field(default=0.25, metadata={"help": "slow time to compare up to"})
    rows: int = field(default=5, metadata={"help": "GD rows compared per run"})
    dtype: Literal["float64"] = field(default="float64", metadata={"help": "precision"})

    def __post_init__(self) -> None:
        check.among(self.datasets, "datasets", DATASETS)
        check.all_in_interval(self.eta_wd, "eta_wd", 0, 0.1, min_len=2)
        check.decreasing(self.eta_wd, "eta_wd")
        check.positive_fields(self, "eta", "tau_end")
        check.in_interval(self.f0_eta_wd, "f0_eta_wd", 0, 0.1)
        check.int_fields_at_least(self, 2, "rows", "n_train")
        check.all_ints_at_least(self.digits_widths, "digits_widths", 1)
        check.all_ints_at_least(self.mnist1d_widths, "mnist1d_widths", 1)

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: digits only, eta*wd 1.25e-4 .. 7.8e-6 to tau 0.25, 5 rows (the defaults);
        ``full``: both networks, eta*wd 2e-3 .. 2e-6 to tau 0.5, 20 rows. The small ``eta*wd``
        are needed: on digits the error reaches first order only below ~3e-5 (docs/
        tame_and_crossings.md section 3); GD's cost grows like ``1 / (eta wd)`` but stays small
        next to the flow's and the compilation (16 000 steps at quick, 128 000 at full)."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(
                datasets=DATASETS,
                eta_wd=(2e-3, 5e-4, 1.25e-4, 3.125e-5, 7.8125e-6, 1.953125e-6),
                f0_eta_wd=5e-4,
                tau_end=0.5,
                rows=20,
            )
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def binary_target(labels: np.ndarray) -> np.ndarray:
    """The scalar regression target: ``+1`` for labels ``0..4``, ``-1`` for ``5..9``, ``(n, 1)``."""
    return np.where(np.asarray(labels) < 5, 1.0, -1.0)[:, None]


def make_network(cfg: Config, dataset: str) -> nets.NetProblem:
    """The LayerNorm-tanh MLP on ``n_train`` samples of ``dataset`` (float64, one group)."""
    if dataset == "digits":
        ds = datasets.digits(n_train=cfg.n_train, n_test=256, seed=0, dtype=np.float64)
        widths = cfg.digits_widths
    elif dataset == "mnist1d":
        ds = datasets.mnist1d(n_samples=2000, seed=0, dtype=np.float64)
        widths = cfg.mnist1d_widths
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if cfg.n_train > ds.x_train.shape[0]:
        raise ValueError(f"n_train={cfg.n_train} exceeds the {ds.x_train.shape[0]} samples")
    model = nets.mlp(widths, norm="layer", activation="tanh")
    prob = nets.make_problem(
        model,
        ds.x_train[: cfg.n_train],
        binary_target(ds.y_train[: cfg.n_train]),
        ds.x_test[:256],
        binary_target(ds.y_test[:256]),
        loss="mse",
        seed=cfg.seed,
        groups="all",
        dtype=np.float64,
    )
    if prob.w0.shape[0] <= cfg.n_train:
        raise ValueError(
            f"{dataset}: D = {prob.w0.shape[0]} weights <= n = {cfg.n_train} samples; the network "
            "must be overparametrized for Gamma to be a manifold"
        )
    return prob


PHI_GTOL = 1e-11
# Relative tolerance of the implicit Phi solve: on the digits network (two points at distance
# 3e-3 and 5e-3) 1e-8 needs 45 steps against hundreds at 1e-10 (docs/tame_and_crossings.md).
PHI_RTOL = 1e-8


def phi_estimate(prob: nets.NetProblem, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Phi`` of each row and a bound on its error.

    :func:`theory.flows.manifold.projection_info` with ``solver="implicit"``: the normal Hessian
    eigenvalues of these networks span several decades, so the explicit solver stalls (module
    docstring there). The flow stops at ``|grad L| <= 1e-11``; the rest of it decays every
    normal mode like ``exp(-mu_i s)``, a path about as long as the end point's distance
    ``|y - GN(y)|`` from ``Gamma`` (to first order), which is returned as the uncertainty.
    """
    assert prob.residuals is not None
    info = projection_info(
        prob.loss, jnp.asarray(rows), gtol=PHI_GTOL, solver="implicit", implicit_rtol=PHI_RTOL
    )
    ends = np.asarray(info.theta)
    feet = np.asarray(GaussNewton(prob.residuals).project_rows(prob.loss, jnp.asarray(ends)))
    return ends, np.linalg.norm(ends - feet, axis=1)


def _gd_run(
    prob: nets.NetProblem, theta0: Array, cfg: Config, ewd: float, form: Literal["F0", "F1"]
) -> Any:
    assert prob.residuals is not None
    every = max(1, math.ceil(cfg.tau_end / (2 * ewd) / cfg.rows))
    gd = gd_from_equilibrium(
        prob, theta0, eta=cfg.eta, wd=ewd / cfg.eta, every=every, rows=cfg.rows, form=form
    )
    return gd


def _compare(
    prob: nets.NetProblem, gd: Any, cfg: Config, ewd: float, form: Literal["F0", "F1"]
) -> tuple[ComparisonResult, str | None]:
    assert prob.residuals is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DegenerateSharpnessWarning)
        cmp = compare_with_flow(
            prob.loss,
            gd.step,
            gd.w,
            eta=cfg.eta,
            wd=ewd / cfg.eta,
            t0=0,
            form=form,
            geometry=GaussNewton(prob.residuals),
            degeneracy=Degeneracy(action="stop"),
        )
    msgs = [str(w.message) for w in caught if issubclass(w.category, DegenerateSharpnessWarning)]
    return cmp, (msgs[0] if msgs else None)


def _amplitude(gd: Any, cmp: ComparisonResult) -> np.ndarray:
    """``|w_hat_t - GN(w_t)|`` on the compared rows."""
    rows = np.asarray(gd.w)[: len(cmp.tau)]
    w_hat = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return np.linalg.norm(w_hat - cmp.phi, axis=1)


def _f1_amp_sq(cmp: ComparisonResult, ewd: float) -> np.ndarray:
    """F1's ``x^2 = (eta wd / 2) / (1 + |g|^2 / 4)`` along the flow (|g| at the flow's point)."""
    g = np.asarray(cmp.flow_result.g_norm)[: len(cmp.tau)]
    return np.asarray(eos_amplitude_sq(ewd, g**2, "F1"))


def _drop_ratio(cmp: ComparisonResult) -> float:
    return float(
        (cmp.sharpness_phi[0] - cmp.sharpness_phi[-1])
        / (cmp.sharpness_flow[0] - cmp.sharpness_flow[-1])
    )


def study_network(cfg: Config, dataset: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Everything for one network; ``seconds`` holds the CPU time (``time.process_time``) of
    its parts."""
    timings: dict[str, float] = {}
    t_start = time.process_time()
    prob = make_network(cfg, dataset)
    assert prob.residuals is not None
    theta0 = gauss_newton_project(prob.residuals, prob.w0).theta
    field_ = SharpnessFlowField(prob.loss, GaussNewton(prob.residuals, rank=cfg.n_train), "F1")
    q0 = field_.quantities(theta0)
    arrays: dict[str, np.ndarray] = {"theta0": np.asarray(theta0)}
    s: dict[str, Any] = {
        "dim": int(prob.w0.shape[0]),
        "n_train": cfg.n_train,
        "lambda1_start": float(q0.lam1),
        "lambda2_start": float(q0.lam2),
        "g_norm_start": float(jnp.linalg.norm(q0.g)),
        "eta_wd": list(cfg.eta_wd),
        "tau_reached": [],
        "dist_end": [],
        "dist_w_end": [],
        "drop_ratio": [],
        "sharpness_flow_end": [],
        "sharpness_gd_end": [],
        "proj_error": [],
        "dist_phi_true": [],
        "amp_sq_ratio": [],
        "degenerate": [],
    }
    comparisons: dict[float, tuple[Any, ComparisonResult]] = {}
    last_rows = []
    for i, ewd in enumerate(cfg.eta_wd):
        t0 = time.process_time()
        gd = _gd_run(prob, theta0, cfg, ewd, "F1")
        cmp, degenerate = _compare(prob, gd, cfg, ewd, "F1")
        comparisons[ewd] = (gd, cmp)
        n = len(cmp.tau)
        curv = midpoint_curvature(
            prob.loss, np.asarray(gd.w)[:n], cfg.eta, ewd / cfg.eta, k=2, hessian=False
        )
        assert curv.spherical is not None
        top2 = np.asarray(curv.spherical)
        amp = _amplitude(gd, cmp)
        pre = f"r{i}"
        for key in ("step", "tau", "dist_phi", "dist_w", "sharpness_phi", "sharpness_flow"):
            arrays[f"{pre}.{key}"] = np.asarray(getattr(cmp, key))
        arrays[f"{pre}.g_norm_flow"] = np.asarray(cmp.flow_result.g_norm)[:n]
        arrays[f"{pre}.sharpness_mid"] = top2[:, 0]
        arrays[f"{pre}.lambda2_mid"] = top2[:, 1]
        arrays[f"{pre}.amplitude"] = amp
        arrays[f"{pre}.amp_sq_f1"] = _f1_amp_sq(cmp, ewd)
        # Settled rows (after the first): mean x^2 against the F1 prediction.
        s["amp_sq_ratio"].append(
            float(np.mean(amp[1:] ** 2) / np.mean(arrays[f"{pre}.amp_sq_f1"][1:]))
        )
        s["tau_reached"].append(float(cmp.tau[-1]))
        s["dist_end"].append(float(cmp.dist_phi[-1]))
        s["dist_w_end"].append(float(cmp.dist_w[-1]))
        s["drop_ratio"].append(_drop_ratio(cmp))
        s["sharpness_flow_end"].append(float(cmp.sharpness_flow[-1]))
        s["sharpness_gd_end"].append(float(cmp.sharpness_phi[-1]))
        s["degenerate"].append(degenerate)
        last_rows.append(np.asarray(gd.w)[n - 1])
        timings[f"run_{ewd:g}"] = time.process_time() - t0
    # The projection's own error at the last row of every run: GN foot against Phi.
    t0 = time.process_time()
    phi_true, phi_unc = phi_estimate(prob, np.stack(last_rows))
    for i, ewd in enumerate(cfg.eta_wd):
        _, cmp = comparisons[ewd]
        s["proj_error"].append(float(np.linalg.norm(cmp.phi[-1] - phi_true[i])))
        s["dist_phi_true"].append(float(np.linalg.norm(phi_true[i] - cmp.flow[-1])))
    s["phi_uncertainty"] = [float(x) for x in phi_unc]
    timings["phi"] = time.process_time() - t0
    s["slope"] = loglog_fit(np.asarray(cfg.eta_wd), np.asarray(s["dist_end"])).slope
    s["slope_small"] = loglog_fit(np.asarray(cfg.eta_wd[-2:]), np.asarray(s["dist_end"][-2:])).slope
    s["proj_slope"] = loglog_fit(np.asarray(cfg.eta_wd), np.asarray(s["proj_error"])).slope
    s.update(_collapse(arrays, cfg))
    # F1 against F0: GD from both amplitudes, against both flows.
    t0 = time.process_time()
    s["f0f1"] = _f0_f1(prob, theta0, cfg, comparisons, arrays)
    timings["f0_f1"] = time.process_time() - t0
    timings["total"] = time.process_time() - t_start
    s["seconds"] = timings
    return arrays, s


def _collapse(arrays: dict[str, np.ndarray], cfg: Config) -> dict[str, Any]:
    """Spread of the midpoint sharpness across ``eta*wd`` on a common ``tau`` grid."""
    k = len(cfg.eta_wd)
    end = min(float(arrays[f"r{i}.tau"][-1]) for i in range(k))
    grid = np.linspace(0.0, end, 11)
    mid = np.stack(
        [np.interp(grid, arrays[f"r{i}.tau"], arrays[f"r{i}.sharpness_mid"]) for i in range(k)]
    )
    spread = (mid.max(0) - mid.min(0)) / mid.mean(0)
    small = mid[-2:]
    spread_small = (small.max(0) - small.min(0)) / small.mean(0)
    arrays["collapse_tau"] = grid
    arrays["collapse_mid"] = mid
    return {
        "collapse_spread": float(spread.max()),
        "collapse_spread_small": float(spread_small.max()),
        "collapse_tau_end": end,
        "collapse_drop": float((mid[-1, 0] - mid[-1, -1]) / mid[-1, 0]),
    }


def _f0_f1(
    prob: nets.NetProblem,
    theta0: Array,
    cfg: Config,
    comparisons: dict[float, tuple[Any, ComparisonResult]],
    arrays: dict[str, np.ndarray],
) -> dict[str, Any]:
    ewd = cfg.f0_eta_wd
    out: dict[str, Any] = {"eta_wd": ewd}
    for start in ("F1", "F0"):
        if start == "F1" and ewd in comparisons:
            gd, cmp1 = comparisons[ewd]
        else:
            gd = _gd_run(prob, theta0, cfg, ewd, start)
            cmp1, _ = _compare(prob, gd, cfg, ewd, "F1")
        cmp0, deg0 = _compare(prob, gd, cfg, ewd, "F0")
        amp = _amplitude(gd, cmp1)
        pre = f"ff.{start}"
        arrays[f"{pre}.tau"] = cmp1.tau
        arrays[f"{pre}.dist_f1"] = cmp1.dist_phi
        arrays[f"{pre}.sharpness_gd"] = cmp1.sharpness_phi
        arrays[f"{pre}.sharpness_f1"] = cmp1.sharpness_flow
        arrays[f"{pre}.tau_f0"] = cmp0.tau
        arrays[f"{pre}.dist_f0"] = cmp0.dist_phi
        arrays[f"{pre}.sharpness_f0"] = cmp0.sharpness_flow
        arrays[f"{pre}.amplitude"] = amp
        # Both at the last tau the F0 comparison reached (F0 may stop at a degeneracy).
        tau_c = float(cmp0.tau[-1])
        j1 = int(np.argmin(np.abs(cmp1.tau - tau_c)))
        amp_f1 = _f1_amp_sq(cmp1, ewd)
        out[start] = {
            "amp_start": float(amp[0]),
            "amp_sq_ratio_f1": float(np.mean(amp[1:] ** 2) / np.mean(amp_f1[1:])),
            "amp_sq_ratio_f0": float(np.mean(amp[1:] ** 2) / (ewd / 2)),
            "tau_f1": float(cmp1.tau[-1]),
            "dist_f1_end": float(cmp1.dist_phi[-1]),
            "tau_f0": tau_c,
            "dist_f0_at_tau_f0": float(cmp0.dist_phi[-1]),
            "dist_f1_at_tau_f0": float(cmp1.dist_phi[j1]),
            "drop_ratio_f1": _drop_ratio(cmp1),
            "drop_ratio_f0": float(
                (cmp1.sharpness_phi[j1] - cmp1.sharpness_phi[0])
                / (cmp0.sharpness_flow[-1] - cmp0.sharpness_flow[0])
            ),
            "f0_degenerate": deg0,
        }
    return out


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every network's study (arrays ``<dataset>.<...>``), each checkpointed when done."""
    dtype_from_config(cfg.dtype)
    arrays, per = collect_runs(
        list(cfg.datasets),
        lambda _, dataset: study_network(cfg, dataset),
        checkpoints,
        desc=NAME,
        progress=progress,
    )
    return arrays, {"datasets": list(cfg.datasets), **per}


def _report(stored: StoredRun) -> list[str]:
    summary = stored.meta["summary"]
    lines = []
    for dataset in summary["datasets"]:
        s = summary[dataset]
        lines.append(
            f"{dataset}: D = {s['dim']}, n = {s['n_train']}, lambda_1 = "
            f"{s['lambda1_start']:.4g}, |g| = {s['g_norm_start']:.3g}"
        )
        for j, ewd in enumerate(s["eta_wd"]):
            lines.append(
                f"  eta*wd = {ewd:g}: dist = {s['dist_end'][j]:.3e} at tau = "
                f"{s['tau_reached'][j]:.3g}, drop ratio {s['drop_ratio'][j]:.4f}, "
                f"|GN - Phi| = {s['proj_error'][j]:.2e}"
            )
        lines.append(
            f"  slope {s['slope']:.3f} (smallest two {s['slope_small']:.3f}), collapse spread "
            f"{s['collapse_spread']:.3g}"
        )
    return lines


SIM = Simulation(NAME, Config, run, __doc__, report=_report)
run_and_store = SIM.run_and_store
main = SIM.main
