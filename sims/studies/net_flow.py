"""GD+WD against the sharpness-reduction flow on a small normalized network (least squares).

A LayerNorm (or BatchNorm) MLP with a smooth activation (no biases, fixed last layer) fits a
teacher-student regression with fewer samples than parameters, so the minimizers of the MSE form a
manifold ``Gamma`` of codimension ``n`` on the sphere (the loss is invariant per layer; the flow is
taken on the sphere of all weights, which the per-layer invariance implies). ``Gamma`` is reached
from the initialization by the Gauss-Newton projection; GD+WD starts on the EoS equilibrium there;
iterates are projected back with Gauss-Newton (the foot of the normal, within ``O(dist^2)`` of
``Phi``) and the flow is integrated in the matrix-free least-squares geometry (Lanczos for
``lambda_1``, the residual Jacobian for ``P_Gamma``, Gauss-Newton retraction). On networks the flow
soon may drive ``lambda_1`` into ``lambda_2`` (a degenerate top eigenvalue, where the smooth flow
ends: seen within tau < 1 for most BatchNorm/tanh seeds tried); the comparison then stops there and
the summary says where. The default network keeps a gap up to tau = 1.5.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from sims import data as datasets
from sims._checkpoint import Checkpoints
from sims._runtime import Progress, dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, gd_from_equilibrium
from theory.analysis.fits import loglog_fit
from theory.core import validate as check
from theory.core.errors import DegenerateSharpnessWarning
from theory.flows.common import GaussNewton
from theory.flows.compare import compare_with_flow
from theory.flows.gauss_newton import gauss_newton_project
from theory.flows.reduction import Degeneracy
from theory.problems import nets

NAME = "net_flow"


@dataclass(frozen=True)
class Config:
    """Settings of the network flow-vs-GD comparison."""

    n_train: int = field(default=96, metadata={"help": "samples (< parameters)"})
    d_in: int = field(default=8, metadata={"help": "input dimension"})
    widths: tuple[int, ...] = field(default=(16, 16), metadata={"help": "MLP hidden widths"})
    norm: Literal["layer", "batch"] = field(default="layer", metadata={"help": "normalization"})
    activation: Literal["tanh", "gelu"] = field(default="gelu", metadata={"help": "smooth"})
    seed: int = field(default=0, metadata={"help": "init seed (data: seed 1)"})
    eta: float = field(default=0.1, metadata={"help": "learning rate"})
    eta_wd: tuple[float, ...] = field(
        default=(3e-3, 1e-3, 3e-4), metadata={"help": "intrinsic learning rates"}
    )
    tau_end: float = field(default=1.0, metadata={"help": "slow time to compare up to"})
    rows: int = field(default=12, metadata={"help": "GD rows compared"})
    dtype: Literal["float64"] = field(default="float64", metadata={"help": "precision"})

    def __post_init__(self) -> None:
        check.all_in_interval(self.eta_wd, "eta_wd", 0, 0.1)
        check.positive_fields(self, "eta", "tau_end")
        check.int_fields_at_least(self, 2, "rows", "n_train")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: 3 eta*wd down to 3e-4; ``full``: 5 down to 1e-4, more rows."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(eta_wd=(3e-3, 1e-3, 5e-4, 3e-4, 1e-4), rows=24)
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def make_network(cfg: Config) -> nets.NetProblem:
    ds = datasets.teacher_student(
        n_train=cfg.n_train,
        n_test=256,
        d_in=cfg.d_in,
        hidden=16,
        k_out=1,
        seed=1,  # the data; cfg.seed sets the initialization
        dtype=np.float64,
    )
    model = nets.mlp(cfg.widths, norm=cfg.norm, activation=cfg.activation)
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


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every eta*wd's comparison (a few short runs: nothing is checkpointed)."""
    dtype_from_config(cfg.dtype)
    prob = make_network(cfg)
    assert prob.residuals is not None
    theta0 = gauss_newton_project(prob.residuals, prob.w0).theta
    arrays: dict[str, np.ndarray] = {"theta0": np.asarray(theta0)}
    summary: dict[str, Any] = {
        "dim": int(prob.w0.shape[0]),
        "n_train": cfg.n_train,
        "eta_wd": list(cfg.eta_wd),
        "dist_end": [],
        "tau_reached": [],
        "sharpness_start": None,
        "sharpness_end_flow": [],
        "degenerate": [],
    }
    with Progress(NAME, len(cfg.eta_wd), progress, unit="run") as bar:
        for i, ewd in enumerate(cfg.eta_wd):
            wd = ewd / cfg.eta
            every = max(1, math.ceil(cfg.tau_end / (2 * ewd) / cfg.rows))
            gd = gd_from_equilibrium(prob, theta0, eta=cfg.eta, wd=wd, every=every, rows=cfg.rows)
            assert gd.w is not None
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DegenerateSharpnessWarning)
                cmp = compare_with_flow(
                    prob.loss,
                    gd.step,
                    gd.w,
                    eta=cfg.eta,
                    wd=wd,
                    t0=0,
                    geometry=GaussNewton(prob.residuals),
                    degeneracy=Degeneracy(action="stop"),
                )
            degenerate = [
                str(w.message) for w in caught if issubclass(w.category, DegenerateSharpnessWarning)
            ]
            pre = f"r{i}"
            for key in ("step", "tau", "dist_phi", "dist_w", "sharpness_phi", "sharpness_flow"):
                arrays[f"{pre}.{key}"] = np.asarray(getattr(cmp, key))
            summary["dist_end"].append(float(cmp.dist_phi[-1]))
            summary["tau_reached"].append(float(cmp.tau[-1]))
            summary["sharpness_start"] = float(cmp.sharpness_flow[0])
            summary["sharpness_end_flow"].append(float(cmp.sharpness_flow[-1]))
            summary["degenerate"].append(degenerate[0] if degenerate else None)
            bar(i + 1, len(cfg.eta_wd))
    taus = summary["tau_reached"]
    if len(set(round(t, 9) for t in taus)) == 1 and len(taus) > 1:
        summary["slope"] = loglog_fit(np.asarray(cfg.eta_wd), np.asarray(summary["dist_end"])).slope
    else:  # compared at different tau: use the distance at the common tau
        common = min(taus)
        d = [
            float(np.interp(common, arrays[f"r{i}.tau"], arrays[f"r{i}.dist_phi"]))
            for i in range(len(cfg.eta_wd))
        ]
        summary["dist_common_tau"], summary["common_tau"] = d, common
        summary["slope"] = loglog_fit(np.asarray(cfg.eta_wd), np.asarray(d)).slope
    return arrays, summary


def _report(stored: StoredRun) -> list[str]:
    s = stored.meta["summary"]
    lines = [f"D = {s['dim']}, n = {s['n_train']}"]
    for ewd, d, tau in zip(s["eta_wd"], s["dist_end"], s["tau_reached"], strict=True):
        lines.append(f"eta*wd = {ewd:g}: |Phi(w_t) - theta(tau)| = {d:.3e} at tau = {tau:.3g}")
    lines.append(f"slope {float(s['slope']):.2f}")
    return lines


SIM = Simulation(NAME, Config, run, __doc__, report=_report)
run_and_store = SIM.run_and_store
main = SIM.main
