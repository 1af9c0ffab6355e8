"""GD+WD against the sharpness-reduction flow on matched time, over several ``eta * wd``.

For each analytic problem, start and intrinsic learning rate ``eta * wd``:

* ``equilibrium`` start: GD begins on the EoS equilibrium of (F1) (``|w|^2 = eta lambda_1 / 2``,
  amplitude ``sqrt(eta wd / 2 / (1 + |g|^2/4))`` along ``v_1``) next to the problem's start
  projected onto ``Gamma``; the flow starts at ``Phi`` of the first iterate, ``t0 = 0``.
* ``equilibrium_F0`` start: the same with the amplitude of (F0), ``sqrt(eta wd / 2)``
  (:func:`theory.flows.compare.eos_equilibrium_start`, ``form="F0"``). Whichever flow GD follows, it
  should follow it from both starts (the amplitude is set by the norm balance, not by the
  start), so "F1 tracks better than F0" is tested from the start that favours F0 too.
* ``generic`` start: the phases simulation's start (off ``Gamma``, ``eta_eff * S = eos0``); GD
  runs through phases I and II (with a 1e-10 kick per step), and the flow starts at ``Phi`` of
  the direction at the measured EoS onset ``t0``.

Then both flows (F1, F0) are integrated on ``tau = 2 eta wd (t - t0)`` and compared with
``Phi(w_hat_t)`` at ``rows`` recorded steps up to ``tau_end``. Stored per
``<problem>.<start>.<i>`` (``i`` indexes ``eta_wd``): steps, tau, the GD directions, ``Phi`` of
them, both flows, distances and sharpness along both; the summary has the distances at
``tau = 2`` and ``tau_end`` and the fitted log-log slopes against ``eta * wd``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, cached_runs, prefixed
from sims.studies.phases import initial_point
from theory.analysis.fits import loglog_fit
from theory.core import validate as check
from theory.engine import NoTracking, SaveAt
from theory.engine.gd import gd_wd, predicted_eos_onset
from theory.flows.compare import compare_with_flow, eos_equilibrium_start
from theory.flows.manifold import project_to_manifold
from theory.problems.analytic import PROBLEMS

NAME = "gd_vs_flow"
STARTS = ("equilibrium", "equilibrium_F0", "generic")
# The flow form whose EoS amplitude each equilibrium start has.
EQUILIBRIUM_FORM: dict[str, Literal["F0", "F1"]] = {"equilibrium": "F1", "equilibrium_F0": "F0"}
FORMS = ("F1", "F0")


@dataclass(frozen=True)
class Config:
    """Settings of the GD-versus-flow study."""

    problems: tuple[str, ...] = field(
        default=("great_circle", "curved_manifold"), metadata={"help": "analytic problems"}
    )
    eta: float = field(default=0.1, metadata={"help": "learning rate (wd = eta_wd / eta)"})
    eta_wd: tuple[float, ...] = field(
        default=(1e-2, 3e-3, 1e-3, 3e-4), metadata={"help": "intrinsic learning rates"}
    )
    tau_end: float = field(default=4.0, metadata={"help": "slow time to compare up to"})
    rows: int = field(default=80, metadata={"help": "GD rows recorded up to tau_end"})
    starts: tuple[str, ...] = field(
        default=STARTS, metadata={"help": "equilibrium (F1 amplitude), equilibrium_F0, generic"}
    )
    eos0: float = field(default=0.3, metadata={"help": "initial eta_eff * S (generic start)"})
    perturbation: float = field(default=1e-10, metadata={"help": "kick per step (generic)"})
    dtype: Literal["float32", "float64"] = field(default="float64", metadata={"help": "precision"})
    seed: int = field(default=0, metadata={"help": "PRNG seed"})

    def __post_init__(self) -> None:
        check.among(self.problems, "problems", sorted(PROBLEMS))
        check.among(self.starts, "starts", STARTS)
        check.all_in_interval(self.eta_wd, "eta_wd", 0, 0.1)
        check.positive_fields(self, "eta", "tau_end", "eos0")
        check.int_fields_at_least(self, 4, "rows")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: 2 problems, eta*wd 1e-2..3e-4; ``full``: 3 problems, 1e-2..3e-5."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(
                problems=tuple(PROBLEMS),
                eta_wd=(1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5),
                rows=200,
            )
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def _segment_steps(cfg: Config, ewd: float) -> tuple[int, int]:
    """(steps, record_every): ``rows`` equal blocks covering at least ``tau_end``."""
    every = max(1, math.ceil(cfg.tau_end / (2 * ewd) / cfg.rows))
    return every * cfg.rows, every


def _run_one(cfg: Config, problem: str, start: str, ewd: float, key: jax.Array) -> dict[str, Any]:
    prob = PROBLEMS[problem]()
    dtype = dtype_from_config(cfg.dtype)
    wd = ewd / cfg.eta
    steps, every = _segment_steps(cfg, ewd)
    if start in EQUILIBRIUM_FORM:
        theta = project_to_manifold(prob.loss, jnp.asarray(prob.start, dtype))
        form = EQUILIBRIUM_FORM[start]
        w0 = eos_equilibrium_start(prob.loss, theta, eta=cfg.eta, wd=wd, form=form)
        onset, kick = 0, 0.0
    else:
        w_init = jnp.asarray(initial_point(problem, cfg.eta, cfg.eos0, dtype))
        pred = predicted_eos_onset(cfg.eta, wd, cfg.eos0)
        pre = gd_wd(
            prob.loss,
            w_init,
            eta=cfg.eta,
            wd=wd,
            steps=int(2 * pred) + 100,
            perturbation=cfg.perturbation,
            key=key,
            on_nonfinite="raise",
        )
        if pre.onset_step is None:
            raise RuntimeError(f"{problem}: no EoS onset within {int(2 * pred) + 100} steps")
        onset, kick = pre.onset_step, cfg.perturbation
        assert pre.w is not None
        w0 = jnp.asarray(pre.w[onset])
    run = gd_wd(
        prob.loss,
        w0,
        eta=cfg.eta,
        wd=wd,
        steps=steps,
        tracker=NoTracking(),
        saveat=SaveAt(every=every),
        perturbation=kick,
        key=jax.random.fold_in(key, 1),
    )
    assert run.w is not None
    out: dict[str, Any] = {"onset": onset, "steps": steps, "record_every": every}
    out["F1"] = compare_with_flow(prob.loss, run.step, run.w, eta=cfg.eta, wd=wd, t0=0, form="F1")
    out["F0"] = compare_with_flow(prob.loss, run.step, run.w, eta=cfg.eta, wd=wd, t0=0, form="F0")
    out["w_hat"] = run.w / np.linalg.norm(run.w, axis=1, keepdims=True)
    return out


def _sub_run(
    cfg: Config, p_i: int, problem: str, start: str, i: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One (problem, start, eta*wd) comparison: its arrays and scalar results."""
    key = jax.random.PRNGKey(cfg.seed * 100_003 + p_i * 1009 + i)
    res = _run_one(cfg, problem, start, cfg.eta_wd[i], key)
    c1, c0 = res["F1"], res["F0"]
    arrays = {
        "step": c1.step,
        "tau": c1.tau,
        "w_hat": res["w_hat"][: len(c1.tau)],
        "phi": c1.phi,
        "dist_w": c1.dist_w,
        "sharpness_phi": c1.sharpness_phi,
    }
    info: dict[str, Any] = {"onset": res["onset"], "dist_w_tau2": c1.at(2.0)["dist_w"]}
    for form, c in (("F1", c1), ("F0", c0)):
        arrays[f"flow_{form}"] = c.flow
        arrays[f"dist_phi_{form}"] = c.dist_phi
        arrays[f"sharpness_flow_{form}"] = c.sharpness_flow
        info[f"dist_tau2_{form}"] = c.at(2.0)["dist_phi"]
        info[f"dist_end_{form}"] = c.at(cfg.tau_end)["dist_phi"]
    return arrays, info


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run the study; returns (arrays, summary) ready to store. Finished sub-runs are kept in
    ``checkpoints`` and reused when the same config runs again after an interruption."""
    dtype_from_config(cfg.dtype)
    jobs = {
        f"{problem}.{start}.{i}": (p_i, problem, start, i)
        for p_i, problem in enumerate(cfg.problems)
        for start in cfg.starts
        for i in range(len(cfg.eta_wd))
    }
    arrays: dict[str, np.ndarray] = {}
    infos: dict[str, list[dict[str, Any]]] = {}
    for name, sub, info in cached_runs(
        list(jobs),
        lambda _, name: _sub_run(cfg, *jobs[name]),
        checkpoints,
        desc=NAME,
        progress=progress,
    ):
        arrays.update(prefixed(name, sub))
        infos.setdefault(name.rpartition(".")[0], []).append(info)
    summary: dict[str, Any] = {}
    for key, rows in infos.items():
        entry: dict[str, Any] = {"eta_wd": list(cfg.eta_wd)}
        for k in rows[0]:
            entry[k] = [info[k] for info in rows]
        for form in FORMS:
            for where in ("tau2", "end"):
                slope = loglog_fit(np.asarray(cfg.eta_wd), entry[f"dist_{where}_{form}"]).slope
                entry[f"slope_{where}_{form}"] = slope
        summary[key] = entry
    return arrays, summary


def _report(stored: StoredRun) -> list[str]:
    lines = []
    for key, s in stored.meta["summary"].items():
        d1 = ", ".join(f"{x:.2e}" for x in s["dist_tau2_F1"])
        lines.append(
            f"{key}: |Phi(w_t) - theta_F1(tau=2)| = [{d1}] for eta*wd = {s['eta_wd']};"
            f" slope F1 {s['slope_tau2_F1']:.2f}, F0 {s['slope_tau2_F0']:.2f}"
        )
    return lines


SIM = Simulation(NAME, Config, run, __doc__, report=_report)
run_and_store = SIM.run_and_store
main = SIM.main
