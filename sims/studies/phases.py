"""GD+WD on the analytic problems: the three phases (LLA22 section 4; docs/theory.md section 2-3).

Each problem starts at its default point off the manifold, rescaled so that the initial
``eta_eff * S`` is ``eos0 < 2``. Then (I) the spherical gradient flow brings the direction to
``Gamma``; (II) the gradient vanishes and the norm decays like ``(1 - eta wd)^t`` until
``eta_eff * S`` reaches 2; (III) GD oscillates along the top eigenvector at the Edge of
Stability, ``eta_eff * S`` hovers at 2 and the spherical sharpness ``S`` falls along ``Gamma``.

Stored per problem (prefix ``<problem>.``): every array of :class:`theory.engine.gd.GDResult` plus
``distance`` (geodesic distance of the direction to ``Gamma``: the oscillation amplitude).
``python -m sims phases --help`` lists the options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.analysis import eos_summary
from sims.simulation import Simulation, resumable_gd_wd
from theory.core import validate as check
from theory.core.sharpness import spherical_sharpness
from theory.engine import LanczosTracker, SaveAt
from theory.engine.gd import GDResult
from theory.problems.analytic import PROBLEMS

NAME = "phases"


@dataclass(frozen=True)
class Config:
    """Settings of the phases simulation (``eta * wd`` is the intrinsic learning rate)."""

    problems: tuple[str, ...] = field(
        default=("great_circle", "curved_manifold", "ire_toy"),
        metadata={"help": "analytic problems to run"},
    )
    eta: float = field(default=0.1, metadata={"help": "learning rate"})
    wd: float = field(default=0.01, metadata={"help": "weight decay"})
    steps: int = field(default=30_000, metadata={"help": "GD steps"})
    eos0: float = field(default=0.3, metadata={"help": "initial eta_eff * S (sets |w0|)"})
    record_every: int = field(default=10, metadata={"help": "record a row every N steps"})
    perturbation: float = field(
        default=1e-10, metadata={"help": "relative tangent kick per step (seeds the EoS)"}
    )
    dtype: Literal["float32", "float64"] = field(default="float64", metadata={"help": "precision"})
    seed: int = field(default=0, metadata={"help": "PRNG seed (kicks, Lanczos start)"})
    checkpoint_every: int = field(
        default=0, metadata={"help": "checkpoint every N steps (0: chunks of steps/20, none)"}
    )

    def __post_init__(self) -> None:
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        check.among(self.problems, "problems", sorted(PROBLEMS))
        check.positive_fields(self, "eta", "wd", "eos0")
        if not self.eos0 < 2:
            raise ValueError(f"eos0 must be < 2 so that phase II exists, got {self.eos0}")
        check.int_fields_at_least(self, 1, "steps", "record_every")
        check.nonnegative(self.perturbation, "perturbation")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: eta*wd = 1e-3, 30k steps (seconds); ``full``: eta*wd = 1e-4, 300k steps."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(wd=1e-3, steps=300_000, record_every=50)
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


@dataclass(frozen=True)
class Results:
    """Runs by problem, with their EoS summaries."""

    config: Config
    runs: dict[str, GDResult]
    distance: dict[str, np.ndarray]
    summary: dict[str, dict[str, Any]]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for name, res in self.runs.items():
            for key, arr in res.arrays().items():
                out[f"{name}.{key}"] = arr
            out[f"{name}.distance"] = self.distance[name]
        return out


def initial_point(problem_name: str, eta: float, eos0: float, dtype: Any) -> np.ndarray:
    """The problem's start, scaled so that ``eta / |w0|^2 * S(w0) = eos0``."""
    prob = PROBLEMS[problem_name]()
    u0 = jnp.asarray(prob.start, dtype)
    s0, _ = spherical_sharpness(prob.loss, u0)
    return np.asarray(u0 * jnp.sqrt(eta * s0 / eos0))


def _chunk_steps(cfg: Config) -> int:
    if cfg.checkpoint_every:
        return max(cfg.checkpoint_every, cfg.record_every)
    return max(cfg.steps // 20, cfg.record_every)


def _run_problem(
    cfg: Config, i: int, name: str, ckpt: Checkpoints | None, progress: bool
) -> GDResult:
    """One problem's run, resuming from its last checkpoint if there is one."""
    if ckpt is not None and (done := ckpt.load_done(name)) is not None:
        return GDResult.from_arrays(*done)
    dtype = dtype_from_config(cfg.dtype)
    prob = PROBLEMS[name]()
    w0 = jnp.asarray(initial_point(name, cfg.eta, cfg.eos0, dtype))
    res = resumable_gd_wd(
        prob.loss,
        w0,
        name=name,
        steps=cfg.steps,
        checkpoints=ckpt,
        desc=f"phases/{name}",
        progress=progress,
        snapshots=bool(cfg.checkpoint_every),
        eta=cfg.eta,
        wd=cfg.wd,
        tracker=LanczosTracker(every=1),
        saveat=SaveAt(every=cfg.record_every),
        perturbation=cfg.perturbation,
        key=jax.random.PRNGKey(cfg.seed * 1000 + i),
        chunk_steps=_chunk_steps(cfg),
    )
    if ckpt is not None:
        ckpt.save_done(name, res.arrays(), res.meta())
    return res


def run(cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None) -> Results:
    """Run GD+WD on every configured problem (resuming from ``checkpoints`` if given)."""
    dtype_from_config(cfg.dtype)
    runs, dist, summary = {}, {}, {}
    for i, name in enumerate(cfg.problems):
        prob = PROBLEMS[name]()
        res = _run_problem(cfg, i, name, checkpoints, progress)
        assert res.w is not None
        u = jnp.asarray(res.w) / jnp.asarray(res.norm)[:, None]
        dist[name] = np.asarray(jax.vmap(prob.distance_to_manifold)(u))
        runs[name] = res
        summary[name] = eos_summary(
            {k: getattr(res, k) for k in ("step", "norm", "eta_eff", "loss", "sharpness", "eos")},
            eta=cfg.eta,
            wd=cfg.wd,
            onset=res.onset_step,
            distance=dist[name],
        )
    return Results(cfg, runs, dist, summary)


def _compute(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    res = run(cfg, progress=progress, checkpoints=checkpoints)
    return res.arrays(), res.summary


def _report(stored: StoredRun) -> list[str]:
    lines = []
    for name, s in stored.meta["summary"].items():
        pred = s.get("predicted_onset", float("nan"))
        lines.append(
            f"{name}: onset {s.get('onset')} (predicted {pred:.0f}),"
            f" <eta_eff*S> last quarter {s['eos_mean_last_quarter']:.4f},"
            f" S {s['sharpness_start']:.4g} -> {s['sharpness_end']:.4g}"
        )
    return lines


# Work in progress is checkpointed under <results>/phases/.inprogress-<hash>/ (finished problems
# always; GD snapshots every checkpoint_every steps).
SIM = Simulation(NAME, Config, _compute, __doc__, report=_report)
run_and_store = SIM.run_and_store
main = SIM.main
