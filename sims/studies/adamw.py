"""GD+WD and AdamW on one normalized network: each optimizer's edge, norm and step on the sphere.

A LayerNorm MLP (no biases, fixed random head, one scale-invariance group) is trained on the
digits by full-batch GD+WD and by AdamW (optax's, decoupled weight decay). Every ``every`` steps
a row records the loss, ``|w|``, the spherical sharpness ``S = lambda_1(H(w)) |w|^2``, GD's EoS
quantity ``eta lambda_1(H)`` and the geometry of the row's own step (the angle between ``w_t``
and ``w_{t+1}``, the step's size and radial part: :class:`theory.engine.adaptive.StepGeometry`).
The AdamW run also records its preconditioned sharpness ``lambda_1(P^{-1} H)`` against its edge
``(2 + 2 b1) / ((1 - b1) lr)`` (:class:`theory.engine.adaptive.PreconditionedTracker`).

The summary holds, per run, the means over the settled phase (rows with ``step >= settle *
steps``) of what ``docs/engine.md`` ("Adaptive methods: preconditioned sharpness") predicts
from LLA22's norm balance: the angular step at the norm equilibrium, AdamW's equilibrium norm
``|w|^2 = lr D / (wd (2 - lr wd))`` (update orthogonal to ``w``, normalized update of rms 1),
and the terms of AdamW's exact norm recursion (decay, tangential growth, radial push). The
checks are in ``sims/checks/adamw.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from sims import data as datasets
from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, collect_runs
from theory.core import validate as check
from theory.core.objective import FullBatch
from theory.engine import GDWD, LanczosTracker, SaveAt
from theory.engine import run as engine_run
from theory.engine.adaptive import AdaptiveSpec, StepGeometry
from theory.problems import nets

NAME = "adamw"
RUNS = ("gdwd", "adamw")


@dataclass(frozen=True)
class Config:
    """Settings of the GD+WD-vs-AdamW comparison."""

    n_train: int = field(default=256, metadata={"help": "digits training samples"})
    widths: tuple[int, ...] = field(default=(32,), metadata={"help": "MLP hidden widths"})
    activation: Literal["gelu", "tanh"] = field(default="gelu", metadata={"help": "smooth"})
    seed: int = field(default=0, metadata={"help": "init seed (data split: seed 0)"})
    steps: int = field(default=2000, metadata={"help": "steps of each run"})
    every: int = field(default=10, metadata={"help": "row (and tracking) period in steps"})
    gd_eta: float = field(default=1.0, metadata={"help": "GD+WD learning rate"})
    gd_wd: float = field(default=0.002, metadata={"help": "GD+WD weight decay"})
    adam_lr: float = field(default=0.01, metadata={"help": "AdamW learning rate"})
    adam_wd: float = field(default=0.1, metadata={"help": "AdamW (decoupled) weight decay"})
    b1: float = field(default=0.9, metadata={"help": "AdamW momentum"})
    b2: float = field(default=0.999, metadata={"help": "AdamW second-moment decay"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW eps (outside the root)"})
    settle: float = field(default=0.5, metadata={"help": "settled phase: step >= settle*steps"})
    lanczos_tol: float = field(default=1e-4, metadata={"help": "relative Ritz residual"})
    dtype: Literal["float64"] = field(default="float64", metadata={"help": "precision"})

    def __post_init__(self) -> None:
        check.positive_fields(self, "gd_eta", "gd_wd", "adam_lr", "adam_wd", "lanczos_tol")
        check.nonnegative_fields(self, "eps")
        check.int_fields_at_least(self, 2, "n_train", "steps")
        check.int_fields_at_least(self, 1, "every")
        check.all_ints_at_least(self.widths, "widths", 2)
        check.in_interval(self.settle, "settle", 0.0, 0.95)
        AdaptiveSpec("adamw", self.adam_lr, self.b1, self.b2, self.eps, self.adam_wd)  # b1, b2
        if self.steps % self.every:
            raise ValueError(f"every ({self.every}) must divide steps ({self.steps})")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: 2000 steps, a row every 10; ``full``: 6000 steps, a row every 5."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(steps=6000, every=5)
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def make_network(cfg: Config) -> nets.NetProblem:
    """The LayerNorm MLP on the digits (cross-entropy, one group)."""
    ds = datasets.digits(n_train=cfg.n_train, n_test=256, seed=0, dtype=np.float64)
    return nets.make_problem(
        nets.mlp(cfg.widths, norm="layer", activation=cfg.activation),
        ds.x_train,
        ds.y_train,
        ds.x_test,
        ds.y_test,
        num_outputs=ds.num_classes,
        seed=cfg.seed,
        groups="all",
        dtype=np.float64,
    )


def equilibrium_angle(lr: float, wd: float) -> float:
    """The angle per step at the norm equilibrium of ``w' = (1 - lr wd) w - lr u`` with ``u``
    orthogonal to ``w``: ``|w'| = |w|`` gives ``tan(angle) = sqrt(1 - (1 - lr wd)^2) /
    (1 - lr wd)`` (about ``sqrt(2 lr wd)``), whatever ``u`` is."""
    c = 1 - lr * wd
    return math.atan(math.sqrt(1 - c * c) / c)


def _settled_mean(x: np.ndarray, mask: np.ndarray) -> float:
    vals = x[mask]
    vals = vals[np.isfinite(vals)]
    return float(np.mean(vals)) if vals.size else math.nan


def _one(cfg: Config, prob: nets.NetProblem, name: str) -> tuple[dict[str, np.ndarray], dict]:
    objective = FullBatch(prob.loss)
    saveat = SaveAt(every=cfg.every, iterates=False)
    key = jax.random.PRNGKey(cfg.seed)
    dim = int(prob.w0.shape[0])
    if name == "gdwd":
        lr, wd = cfg.gd_eta, cfg.gd_wd
        method: Any = GDWD(jnp.asarray(lr), jnp.asarray(wd), jnp.asarray(0.0), prob.groups)
        inner: Any = LanczosTracker(every=cfg.every, tol=cfg.lanczos_tol)
        w0 = prob.w0
    else:
        spec = AdaptiveSpec("adamw", cfg.adam_lr, cfg.b1, cfg.b2, cfg.eps, cfg.adam_wd)
        lr, wd = spec.lr, spec.wd
        method, w0 = spec.method(prob.w0)
        inner = spec.tracker(cfg.every, tol=cfg.lanczos_tol)
    res = engine_run(
        objective, method, w0, steps=cfg.steps, groups=prob.groups,
        tracker=StepGeometry(inner), saveat=saveat, key=key,
    )  # fmt: skip
    obs = res.observed
    arrays = {
        "step": res.step,
        "loss": res.loss,
        "norm": res.norm,
        "grad_norm": res.grad_norm,
        "sharpness": res.sharpness,
        "eos": res.eos,
        "angle": obs["step.angle"],
        "step_size": obs["step.size"],
        "radial": obs["step.radial"],
    }
    # The rows' own steps: the last row (step `steps`) has no step after it in the run.
    mask = (res.step >= cfg.settle * cfg.steps) & (res.step < cfg.steps)
    norm2 = res.norm**2
    info: dict[str, Any] = {
        "lr": lr,
        "wd": wd,
        "dim": dim,
        "rows": len(res.step),
        "loss_end": float(res.loss[-1]),
        "norm2_settled": _settled_mean(norm2, mask),
        "sharpness_settled": _settled_mean(res.sharpness, mask),
        "eos_settled": _settled_mean(res.eos, mask),
        "eos_max": float(np.nanmax(res.eos)),
        "angle_settled": _settled_mean(arrays["angle"], mask),
        "angle_predicted": equilibrium_angle(lr, wd),
        "onset": res.onset_step,
    }
    if name == "adamw":
        for key_ in ("sharpness", "edge", "eos"):
            arrays[f"precond_{key_}"] = obs[f"precond.{key_}"]
        pe = arrays["precond_eos"]
        reached = np.flatnonzero(np.nan_to_num(pe) >= 1)
        # AdamW's normalized update u: w' = (1 - lr wd) w - lr u (exact, from the row's step).
        n, size, rad = res.norm, arrays["step_size"], arrays["radial"]
        u2 = size**2 / lr**2 + 2 * wd * n * rad / lr + (wd * n) ** 2
        u_r = -rad / lr - wd * n
        decay = (2 * lr * wd - (lr * wd) ** 2) * norm2
        growth = lr**2 * u2
        push = 2 * lr * (1 - lr * wd) * n * u_r  # enters |w'|^2 with a minus sign
        arrays.update(update_rms=np.sqrt(u2 / dim), update_radial=u_r)
        info.update(
            precond_eos_settled=_settled_mean(pe, mask),
            precond_eos_std_settled=float(np.nanstd(pe[mask])),
            precond_eos_max=float(np.nanmax(pe)),
            precond_onset=int(res.step[reached[0]]) if reached.size else None,
            precond_edge=float(spec.edge),
            update_rms_settled=_settled_mean(np.sqrt(u2 / dim), mask),
            update_radial_fraction_settled=_settled_mean(u_r / np.sqrt(u2), mask),
            norm2_predicted_rms1=lr * dim / (wd * (2 - lr * wd)),
            norm2_predicted_measured_rms=lr * _settled_mean(u2, mask) / (wd * (2 - lr * wd)),
            decay_settled=_settled_mean(decay, mask),
            growth_settled=_settled_mean(growth, mask),
            radial_push_settled=-_settled_mean(push, mask),
        )
    return arrays, info


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The two runs (each about a minute at the quick scale; checkpointed as finished
    sub-runs, not mid-run)."""
    dtype_from_config(cfg.dtype)
    prob = make_network(cfg)
    arrays, summary = collect_runs(
        RUNS, lambda _i, name: _one(cfg, prob, name), checkpoints, desc=NAME, progress=progress
    )
    return arrays, dict(summary)


def _report(stored: StoredRun) -> list[str]:
    s = stored.meta["summary"]
    g, a = s["gdwd"], s["adamw"]
    return [
        f"D = {g['dim']}; settled-phase means",
        f"GD+WD (eta {g['lr']:g}, wd {g['wd']:g}): eta*lambda_1 {g['eos_settled']:.3f}, "
        f"|w|^2 {g['norm2_settled']:.2f}, angle {g['angle_settled']:.4f} "
        f"(predicted {g['angle_predicted']:.4f})",
        f"AdamW (lr {a['lr']:g}, wd {a['wd']:g}): lambda_1(P^-1 H) / edge "
        f"{a['precond_eos_settled']:.3f}, |w|^2 {a['norm2_settled']:.2f} (rms-1 prediction "
        f"{a['norm2_predicted_rms1']:.1f}), angle {a['angle_settled']:.4f} (predicted "
        f"{a['angle_predicted']:.4f}), update rms {a['update_rms_settled']:.3f}, radial "
        f"fraction {a['update_radial_fraction_settled']:.3f}",
    ]


SIM = Simulation(NAME, Config, run, __doc__, report=_report)
run_and_store = SIM.run_and_store
main = SIM.main
