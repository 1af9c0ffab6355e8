"""Through an eigenvalue crossing: GD+WD against the continued flow on a BatchNorm network.

The network is :mod:`sims.studies.tame`'s digits MLP with BatchNorm in place of LayerNorm (``tanh``,
MSE to the ``+-1`` target on 32 samples). Along the smooth sharpness-reduction flow its
``lambda_1`` runs into ``lambda_2`` (the smooth flow stops there, with
:class:`theory.core.errors.DegenerateSharpnessWarning`); :func:`theory.flows.cluster.cluster_flow`
continues it with the minimal-norm element of the Clarke subdifferential of ``lambda_max``,
which keeps the pair together (docs/tame_and_crossings.md).

Per ``eta * wd``: GD+WD from :func:`theory.eos_equilibrium_start` (F1 amplitude), rows on a
common ``tau`` grid; each row's Gauss-Newton foot ``GN(w_t)``, its top three eigenvalues
(``J J^T``, exact on ``Gamma``), the distance to the continued flow and to the smooth flow
(before it stops), and the oscillation ``x_t = w_hat_t - GN(w_t)`` resolved on the top two
eigenvectors at ``GN(w_t)``: its normalized second moment ``E[x x^T] / E[|x|^2]`` over the
rows past the crossing is GD's own ``Sigma``, compared with the flow's ``Sigma*``.

Scales. ``quick`` (the defaults): ``eta * wd`` 1e-3, 2.5e-4, 6.25e-5 to ``tau = 1.2`` on a grid
of 0.05 (the pair forms at 0.8); ``full``: down to 1.6e-5, to ``tau = 1.5`` on a grid of 0.025.
The cluster tolerance is ``1e-4``: the continued flow's point moves by 1.4e-4 when it goes from
``1e-3`` to ``1e-4`` and by 1.5e-5 from ``1e-4`` to ``1e-5`` (docs/tame_and_crossings.md). CPU
times of every part are in the summary (``seconds``). Unchanged on an accelerator.
"""

from __future__ import annotations

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
from sims.simulation import Simulation, cached_runs, gd_from_equilibrium, prefixed
from sims.studies.tame import binary_target
from theory.analysis.fits import loglog_fit
from theory.analysis.oscillation import oscillation_weights, principal_axes, second_moment
from theory.core import validate as check
from theory.core.errors import DegenerateSharpnessWarning
from theory.core.types import Array, LossFn
from theory.flows.cluster import Clustering, cluster_flow
from theory.flows.common import GaussNewton, SaveTimes
from theory.flows.gauss_newton import gauss_newton_project
from theory.flows.reduction import Degeneracy, sharpness_flow
from theory.problems import nets

NAME = "crossing"


@dataclass(frozen=True)
class Config:
    """Settings of the crossing study."""

    n_train: int = field(default=32, metadata={"help": "digits samples (< parameters)"})
    widths: tuple[int, ...] = field(default=(6, 6), metadata={"help": "MLP hidden widths"})
    seed: int = field(default=0, metadata={"help": "init seed"})
    eta: float = field(default=0.1, metadata={"help": "learning rate"})
    eta_wd: tuple[float, ...] = field(
        default=(1e-3, 2.5e-4, 6.25e-5), metadata={"help": "intrinsic learning rates"}
    )
    tau_end: float = field(default=1.2, metadata={"help": "slow time to compare up to"})
    rows: int = field(default=24, metadata={"help": "GD rows per run (common tau grid)"})
    cluster_tol: float = field(
        default=1e-4, metadata={"help": "relative gap at which lambda_2 joins the cluster"}
    )
    relax: float = field(default=20.0, metadata={"help": "gap-closing rate in the cluster"})
    dtype: Literal["float64"] = field(default="float64", metadata={"help": "precision"})

    def __post_init__(self) -> None:
        check.all_in_interval(self.eta_wd, "eta_wd", 0, 0.1, min_len=2)
        check.positive_fields(self, "eta", "tau_end", "cluster_tol")
        check.nonnegative_fields(self, "relax")
        check.int_fields_at_least(self, 4, "rows")
        check.int_fields_at_least(self, 2, "n_train")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: eta*wd 1e-3 .. 6.25e-5 to tau 1.2 (grid 0.05; the defaults); ``full``:
        down to 1.6e-5, to tau 1.5 on a grid of 0.025."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(eta_wd=(1e-3, 2.5e-4, 6.25e-5, 1.5625e-5), tau_end=1.5, rows=60)
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def make_network(cfg: Config) -> nets.NetProblem:
    """The BatchNorm-tanh MLP on ``n_train`` digits, MSE to ``+-1`` (float64, one group)."""
    ds = datasets.digits(n_train=cfg.n_train, n_test=256, seed=0, dtype=np.float64)
    prob = nets.make_problem(
        nets.mlp(cfg.widths, norm="batch", activation="tanh"),
        ds.x_train,
        binary_target(ds.y_train),
        ds.x_test,
        binary_target(ds.y_test),
        loss="mse",
        seed=cfg.seed,
        groups="all",
        dtype=np.float64,
    )
    if prob.w0.shape[0] <= cfg.n_train:
        raise ValueError(f"D = {prob.w0.shape[0]} weights <= n = {cfg.n_train} samples")
    return prob


@eqx.filter_jit
def _rows_geometry(loss: LossFn, geometry: GaussNewton, rows: Array) -> tuple[Array, Array, Array]:
    """Per row: ``GN(w_t)``, its top three eigenvalues and the oscillation on ``v_1, v_2``."""

    def one(w: Array) -> tuple[Array, Array, Array]:
        foot = gauss_newton_project(geometry.residual_fn, w, raise_on_failure=False).theta
        frame = geometry.frame(loss, foot, 3)
        x = w / jnp.linalg.norm(w) - foot
        return foot, frame.values, frame.vectors[:, :2].T @ x

    return jax.lax.map(one, rows)


def _top_two(loss: LossFn, geometry: GaussNewton, points: Array) -> Array:
    """The top two eigenvectors of the geometry's frame at each point ``(n, D, 2)``."""
    return jax.lax.map(lambda y: geometry.frame(loss, y, 3).vectors[:, :2], points)


def _flows(
    cfg: Config, prob: nets.NetProblem, theta0: Array, geometry: GaussNewton
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The continued flow and the smooth flow on the common ``tau`` grid (one sub-run)."""
    assert prob.residuals is not None
    taus = np.linspace(0.0, cfg.tau_end, cfg.rows + 1)
    timings: dict[str, float] = {}
    t0 = time.process_time()
    flow = cluster_flow(
        prob.loss,
        theta0,
        SaveTimes(ts=taus),
        geometry=geometry,
        clustering=Clustering(tol=cfg.cluster_tol, relax=cfg.relax),
    )
    timings["cluster_flow"] = time.process_time() - t0
    t0 = time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DegenerateSharpnessWarning)
        smooth = sharpness_flow(
            prob.loss,
            theta0,
            SaveTimes(ts=taus),
            geometry=GaussNewton(prob.residuals),
            degeneracy=Degeneracy(action="stop"),
        )
    timings["smooth_flow"] = time.process_time() - t0
    stop_msgs = [
        str(w.message) for w in caught if issubclass(w.category, DegenerateSharpnessWarning)
    ]
    t0 = time.process_time()
    flow_basis = np.asarray(_top_two(prob.loss, geometry, jnp.asarray(flow.theta)))
    timings["flow_basis"] = time.process_time() - t0
    arrays = {
        "flow.tau": flow.tau,
        "flow.theta": flow.theta,
        "flow.basis": flow_basis,  # (n, D, 2): the top two eigenvectors
        "flow.eigenvalues": flow.eigenvalues,
        "flow.cluster_size": flow.cluster_size,
        "flow.sigma": flow.sigma,
        "flow.g_norm": flow.g_norm,
        "smooth.tau": smooth.tau,
        "smooth.theta": smooth.theta,
        "smooth.sharpness": smooth.sharpness,
        "smooth.lambda2": smooth.lambda2,
    }
    after = np.flatnonzero(flow.cluster_size == 2)
    info = {
        "tau_cluster": flow.tau_cluster,
        "flow_stopped": flow.stopped,
        "flow_steps": flow.num_steps,
        "flow_tau_end": float(flow.tau[-1]),
        "smooth_tau_end": float(smooth.tau[-1]),
        "smooth_stop": stop_msgs[0] if stop_msgs else None,
        "lambda_start": flow.eigenvalues[0].tolist(),
        "lambda_end": flow.eigenvalues[-1].tolist(),
        "flow_gap_after": float(np.max(1 - flow.eigenvalues[after, 1] / flow.eigenvalues[after, 0]))
        if after.size
        else float("nan"),
        "flow_sigma_eigs_end": principal_axes(flow.sigma[-1])[0].tolist(),
        "seconds": timings,
    }
    return arrays, info


def _interp_rows(tau: np.ndarray, grid: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``theta`` (rows on ``grid``) linearly interpolated at ``tau``."""
    return np.stack([np.interp(tau, grid, theta[:, j]) for j in range(theta.shape[1])], axis=1)


def _gd_run(
    cfg: Config,
    prob: nets.NetProblem,
    theta0: Array,
    geometry: GaussNewton,
    fl: dict[str, np.ndarray],
    tau_cluster: float,
    ewd: float,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """GD at one ``eta * wd`` against both flows (one sub-run)."""
    t0 = time.process_time()
    assert prob.residuals is not None
    wd = ewd / cfg.eta
    every = max(1, round(cfg.tau_end / (2 * ewd) / cfg.rows))
    gd = gd_from_equilibrium(prob, theta0, eta=cfg.eta, wd=wd, every=every, rows=cfg.rows)
    assert gd.w is not None
    tau_gd = 2 * ewd * np.asarray(gd.step, np.float64)
    flow_tau, flow_theta = fl["flow.tau"], fl["flow.theta"]
    n = min(len(tau_gd), len(flow_tau))
    feet, lam, xs = (
        np.asarray(a) for a in _rows_geometry(prob.loss, geometry, jnp.asarray(gd.w[:n]))
    )
    dist = np.linalg.norm(feet - _interp_rows(tau_gd[:n], flow_tau, flow_theta), axis=1)
    m = min(n, len(fl["smooth.tau"]))
    smooth_at = _interp_rows(tau_gd[:m], fl["smooth.tau"], fl["smooth.theta"])
    dist_smooth = np.linalg.norm(feet[:m] - smooth_at, axis=1)
    arrays = {
        "tau": tau_gd[:n],
        "eigenvalues": lam,
        "dist_cluster": dist,
        "dist_smooth": dist_smooth,
        "osc": xs,
    }
    gap = 1 - lam[:, 1] / lam[:, 0]
    crossed = bool(np.isfinite(tau_cluster))
    past = tau_gd[:n] > tau_cluster + 0.1 * cfg.tau_end if crossed else np.zeros(n, bool)
    info: dict[str, Any] = {
        "eta_wd": ewd,
        "steps": int(gd.step[-1]),
        "tau_end": float(tau_gd[n - 1]),
        "dist_end": float(dist[-1]),
        "dist_before_crossing": float(np.interp(tau_cluster, tau_gd[:n], dist))
        if crossed
        else float("nan"),
        "dist_smooth_last": float(dist_smooth[-1]),
        "tau_smooth_last": float(tau_gd[m - 1]),
        "gap_gd_after_max": float(np.max(gap[past])) if past.any() else float("nan"),
        "gap_gd_after_mean": float(np.mean(gap[past])) if past.any() else float("nan"),
        "sharpness_gd_end": float(lam[-1, 0]),
        "sharpness_flow_end": float(fl["flow.eigenvalues"][n - 1, 0]),
    }
    if past.any():
        # Per row, x and Sigma* in one basis (GD's eigenbasis at GN(w_t); the flow's Sigma*
        # rotated into it), then the weights of x on Sigma*'s principal axes, averaged over the
        # rows: basis-free, so a pair whose eigenvectors turn from row to row (a near-degenerate
        # pair) is compared correctly.
        idx = np.flatnonzero(past)
        gd_basis = np.asarray(_top_two(prob.loss, geometry, jnp.asarray(feet[idx])))
        weights_gd, weights_flow = oscillation_weights(
            xs[idx], fl["flow.sigma"][idx], fl["flow.basis"][idx], gd_basis
        )
        w_gd = np.mean(weights_gd, axis=0)
        w_flow = np.mean(weights_flow, axis=0)
        info["sigma_weights_gd"] = w_gd.tolist()
        info["sigma_weights_flow"] = w_flow.tolist()
        info["sigma_error"] = float(abs(w_gd[1] - w_flow[1]))
        info["sigma_gd_moment"] = second_moment(xs[past]).tolist()
    info["seconds"] = time.process_time() - t0
    return arrays, info


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The two flows (one sub-run), then GD at every ``eta * wd`` (one sub-run each), each
    checkpointed when done; ``seconds`` holds CPU times (``time.process_time``)."""
    dtype_from_config(cfg.dtype)
    t_start = time.process_time()
    prob = make_network(cfg)
    assert prob.residuals is not None
    theta0 = gauss_newton_project(prob.residuals, prob.w0).theta
    geometry = GaussNewton(prob.residuals, rank=cfg.n_train, jacobian=True)
    ((_, fl, fl_info),) = cached_runs(
        ["flows"], lambda *_: _flows(cfg, prob, theta0, geometry), checkpoints, progress=False
    )
    tau_cluster = float(fl_info["tau_cluster"])
    names = [f"r{i}" for i in range(len(cfg.eta_wd))]
    arrays: dict[str, np.ndarray] = {"theta0": np.asarray(theta0), **fl}
    runs = []
    for name, sub, info in cached_runs(
        names,
        lambda i, _: _gd_run(cfg, prob, theta0, geometry, fl, tau_cluster, cfg.eta_wd[i]),
        checkpoints,
        desc=NAME,
        progress=progress,
    ):
        arrays.update(prefixed(name, sub))
        runs.append(info)
    ends = np.array([r["dist_end"] for r in runs])
    summary: dict[str, Any] = {
        "dim": int(prob.w0.shape[0]),
        "n_train": cfg.n_train,
        "eta_wd": list(cfg.eta_wd),
        **{k: v for k, v in fl_info.items() if k != "seconds"},
        "runs": runs,
    }
    summary["slope_end"] = loglog_fit(np.asarray(cfg.eta_wd), ends).slope
    summary["seconds"] = {
        **fl_info["seconds"],
        **{f"run_{r['eta_wd']:g}": r["seconds"] for r in runs},
        "total": time.process_time() - t_start,
    }
    return arrays, summary


def _report(stored: StoredRun) -> list[str]:
    s = stored.meta["summary"]
    lines = [
        f"D = {s['dim']}, n = {s['n_train']}; the smooth flow stops at tau = "
        f"{s['smooth_tau_end']:.3g}; the continued flow forms the pair at tau = "
        f"{s['tau_cluster']:.3g} and reaches tau = {s['flow_tau_end']:.3g}"
    ]
    for r in s["runs"]:
        lines.append(
            f"eta*wd = {r['eta_wd']:g}: |GN(w) - theta(tau)| = {r['dist_end']:.3e} at tau = "
            f"{r['tau_end']:.3g}; GD gap after the crossing <= {r['gap_gd_after_max']:.3g}; "
            f"|Sigma_GD - Sigma*| = {r.get('sigma_error', float('nan')):.3g}"
        )
    lines.append(f"slope {s['slope_end']:.2f}")
    return lines


SIM = Simulation(NAME, Config, run, __doc__, report=_report)
run_and_store = SIM.run_and_store
main = SIM.main
