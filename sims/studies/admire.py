"""AdamW against AdmIRE (IRE on AdamW) on a small causal transformer: steps to a training loss.

Wang et al. (2024) report that AdmIRE, AdamW wrapped by IRE's practical Algorithm 1, reaches a
given pre-training loss of Llama models (60M-229M parameters) in about half the steps of AdamW
(:data:`PAPER_SPEEDUP`). This study measures the same quantity at CPU scale:

* task: modular addition ``[a, b, =] -> (a + b) mod p`` (:func:`sims.sequences.modular_addition`,
  generated, a training and a held-out split), full batch, cross-entropy of the answer token;
* model: :mod:`theory.problems.transformer` (token and position embeddings, pre-LN blocks with
  causal multi-head attention and a GELU MLP, final LayerNorm, unembedding);
* AdamW: ``optax.adamw(lr, b1, b2, eps, weight_decay=wd)`` (decoupled weight decay), constant
  ``lr``;
* AdmIRE: :func:`theory.optim.ire.ire` around the *same* AdamW transform with
  :func:`theory.optim.ire.diagonal_mask` on :func:`theory.optim.ire.fisher_diagonal` (squared
  gradient at labels sampled from the model's own predictions): every ``refresh_every`` steps
  after ``warmup`` the ``gamma`` fraction of coordinates with the smallest estimate is masked,
  and the whole AdamW update (preconditioned step and weight decay) is multiplied by ``1 +
  kappa`` there. This is the paper's AdmIRE.

Both runs of a seed start from the same parameters and share every hyperparameter. Every
``every`` steps a row records the training loss, held-out loss and both accuracies, and the
:class:`theory.engine.adaptive.PreconditionedTracker` adds the preconditioned sharpness
``lambda_1(P^{-1} H)`` (``P`` the AdamW preconditioner of that step; its edge ``(2 + 2 b1) /
((1 - b1) lr)``) and the plain sharpness ``lambda_1(H)``. (Under AdmIRE
the step is ``(1 + kappa n) lr P^{-1} m``, so the preconditioned sharpness of AdamW's ``P`` is
not AdmIRE's stability number on the masked coordinates; it is recorded for both runs as the
same measurement.)

Steps to target: for seed ``s`` the target is the lowest training loss AdamW has reached by the
row ``target_fraction * steps`` (the "loss AdamW reaches at 80% of the budget"; the
minimum so that a loss spike at that row does not set it); ``steps_to_target`` of a run is
when its training loss first reaches the target (:func:`steps_to_target`: the first row at or
below it, interpolated in ``log loss`` from the row before; NaN if never). The same is reported
for the targets at ``other_fractions`` of the budget. The speed-up of seed ``s`` is AdamW's
steps over AdmIRE's (2 would be the paper's factor). The summary holds per run its steps to
target, final losses and accuracies, the sharpness means over the last quarter of the tracked
rows and the wall time; and overall the per-seed speed-ups, their median and geometric mean.
Checks: ``sims/checks/admire.py``.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sims import sequences
from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, collect_runs
from theory.core import validate as check
from theory.engine import SaveAt
from theory.engine.adaptive import AdaptiveSpec
from theory.optim.ire import diagonal_mask, fisher_diagonal, ire
from theory.optim.transforms import run_optimizer
from theory.problems import transformer as tf

NAME = "admire"
METHODS = ("adamw", "admire")
PAPER_SPEEDUP = 2.0  # Wang et al. 2024: AdmIRE reaches a Llama pre-training loss in ~half the steps


@dataclass(frozen=True)
class Config:
    """Settings of the AdamW-vs-AdmIRE comparison (the same hyperparameters for both)."""

    p: int = field(default=23, metadata={"help": "modulus (prime); vocabulary p + 1"})
    train_fraction: float = field(default=0.5, metadata={"help": "pairs in the training set"})
    data_seed: int = field(default=0, metadata={"help": "train/held-out split seed"})
    d_model: int = field(default=32, metadata={"help": "transformer width"})
    n_heads: int = field(default=4, metadata={"help": "attention heads"})
    n_layers: int = field(default=1, metadata={"help": "pre-LN blocks"})
    d_mlp: int = field(default=64, metadata={"help": "MLP hidden width"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (constant)"})
    wd: float = field(default=0.1, metadata={"help": "AdamW decoupled weight decay"})
    b1: float = field(default=0.9, metadata={"help": "AdamW momentum"})
    b2: float = field(default=0.98, metadata={"help": "AdamW second-moment decay"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW eps (outside the root)"})
    kappa: float = field(default=3.0, metadata={"help": "IRE amplification"})
    gamma: float = field(default=0.6, metadata={"help": "IRE mask fraction"})
    refresh_every: int = field(default=10, metadata={"help": "mask refresh interval K"})
    warmup: int = field(default=50, metadata={"help": "steps before the first mask"})
    steps: int = field(default=600, metadata={"help": "steps per run"})
    every: int = field(default=20, metadata={"help": "row period (loss, accuracy, sharpness)"})
    target_fraction: float = field(
        default=0.8, metadata={"help": "target = AdamW's loss at this fraction of the steps"}
    )
    other_fractions: tuple[float, ...] = field(
        default=(0.1, 0.2, 0.4, 0.6), metadata={"help": "more target fractions (reported)"}
    )
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "init seeds"})
    lanczos_iters: int = field(default=32, metadata={"help": "HVP cap per sharpness solve"})
    lanczos_tol: float = field(default=1e-3, metadata={"help": "relative Ritz residual"})
    dtype: Literal["float32", "float64"] = field(default="float32", metadata={"help": "precision"})

    def __post_init__(self) -> None:
        check.positive_fields(self, "lr", "wd", "kappa", "lanczos_tol")
        check.nonnegative_fields(self, "eps")
        check.in_interval(self.gamma, "gamma", 0.0, 1.0)
        check.in_interval(self.train_fraction, "train_fraction", 0.0, 1.0)
        check.in_interval(self.target_fraction, "target_fraction", 0.0, 1.0)
        check.all_in_interval(self.other_fractions, "other_fractions", 0.0, 1.0, min_len=0)
        for f in (self.target_fraction, *self.other_fractions):
            if round(f * self.steps / self.every) < 1:
                raise ValueError(
                    f"target fraction {f} of {self.steps} steps falls before the first row "
                    f"(every={self.every})"
                )
        check.int_fields_at_least(
            self, 1, "d_model", "n_heads", "n_layers", "d_mlp", "refresh_every", "every",
            "lanczos_iters", "steps",
        )  # fmt: skip
        check.int_fields_at_least(self, 0, "warmup", "data_seed")
        AdaptiveSpec("adamw", self.lr, self.b1, self.b2, self.eps, self.wd)  # b1, b2
        self.spec()  # heads divide the width
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if self.steps % self.every:
            raise ValueError(f"every ({self.every}) must divide steps ({self.steps})")
        if self.warmup >= self.steps:
            raise ValueError(f"warmup ({self.warmup}) must be < steps ({self.steps})")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: 600 steps, a row every 20, 3 seeds; ``full``: 1500 steps, a row every 10,
        5 seeds."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(steps=1500, every=10, seeds=(0, 1, 2, 3, 4))
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")

    def spec(self) -> tf.TransformerSpec:
        """The transformer (vocabulary ``p + 1``, sequences of 3 tokens)."""
        return tf.TransformerSpec(
            vocab=self.p + 1,
            seq_len=3,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_layers=self.n_layers,
            d_mlp=self.d_mlp,
        )


# The data travel as loss_args = (train tokens, train targets, held-out tokens, held-out
# targets), never closed over; one function object per spec keeps the compiled runs shared.
@functools.lru_cache(maxsize=8)
def _functions(spec: tf.TransformerSpec) -> tuple[Any, Any, Any]:
    def loss(params: Any, xt: jax.Array, yt: jax.Array, xv: jax.Array, yv: jax.Array) -> jax.Array:
        return tf.last_token_loss(spec, params, xt, yt)

    def predict(params: Any, xt: jax.Array, yt: jax.Array, xv: jax.Array, yv: jax.Array) -> Any:
        return tf.last_logits(spec, params, xt)

    def observe(
        params: Any, xt: jax.Array, yt: jax.Array, xv: jax.Array, yv: jax.Array
    ) -> dict[str, jax.Array]:
        return {
            "train_accuracy": tf.last_token_accuracy(spec, params, xt, yt),
            "test_loss": tf.last_token_loss(spec, params, xv, yv),
            "test_accuracy": tf.last_token_accuracy(spec, params, xv, yv),
        }

    return loss, predict, observe


def make_optimizer(cfg: Config, method: str, seed: int) -> optax.GradientTransformationExtraArgs:
    """AdamW, or AdmIRE: IRE's Fisher-diagonal mask around the same AdamW."""
    adamw = AdaptiveSpec("adamw", cfg.lr, cfg.b1, cfg.b2, cfg.eps, cfg.wd).optimizer()
    if method == "adamw":
        return optax.with_extra_args_support(adamw)
    if method != "admire":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _, predict, _ = _functions(cfg.spec())
    selector = diagonal_mask(
        fisher_diagonal(predict, loss="cross_entropy"),
        cfg.gamma,
        refresh_every=cfg.refresh_every,
        warmup=cfg.warmup,
    )
    return ire(adamw, cfg.kappa, selector, seed=seed)


def steps_to_target(step: np.ndarray, loss: np.ndarray, target: float) -> float:
    """When ``loss`` first reaches ``target``: the first row ``i`` with ``loss_i <= target``,
    refined by interpolating ``log loss`` linearly between rows ``i - 1`` and ``i`` (the rows
    are ``every`` steps apart); ``step[0]`` if row 0 is already there, NaN if no row is."""
    step, loss = np.asarray(step, float), np.asarray(loss, float)
    hit = np.flatnonzero(loss <= target)
    if not hit.size:
        return math.nan
    i = int(hit[0])
    if i == 0:
        return float(step[0])
    lo, hi = math.log(loss[i - 1]), math.log(loss[i])
    frac = (lo - math.log(target)) / (lo - hi) if lo > hi else 1.0
    return float(step[i - 1] + frac * (step[i] - step[i - 1]))


def _tail_mean(x: np.ndarray) -> float:
    vals = x[np.isfinite(x)]
    if not vals.size:
        return math.nan
    return float(np.mean(vals[len(vals) - max(1, len(vals) // 4) :]))


def _one(
    cfg: Config, ds: sequences.TokenDataset, seed: int, method: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    dtype = dtype_from_config(cfg.dtype)
    spec = cfg.spec()
    loss, _, observe = _functions(spec)
    params0 = tf.init(spec, jax.random.PRNGKey(seed), dtype)
    args = tuple(
        jnp.asarray(a) for a in (ds.tokens_train, ds.targets_train, ds.tokens_test, ds.targets_test)
    )
    tracker = AdaptiveSpec("adamw", cfg.lr, cfg.b1, cfg.b2, cfg.eps, cfg.wd).tracker(
        cfg.every, tol=cfg.lanczos_tol, max_iters=cfg.lanczos_iters
    )
    t0 = time.perf_counter()
    res = run_optimizer(
        make_optimizer(cfg, method, seed), loss, params0, cfg.steps, loss_args=args,
        saveat=SaveAt(every=cfg.every, iterates=False, observe=observe), tracker=tracker,
        lr=cfg.lr, warn_above_edge=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    obs = res.observed
    arrays = {
        "step": res.step,
        "loss": res.loss,
        "train_accuracy": obs["train_accuracy"],
        "test_loss": obs["test_loss"],
        "test_accuracy": obs["test_accuracy"],
        "precond_sharpness": obs["precond.sharpness"],
        "precond_eos": obs["precond.eos"],
        "sharpness": res.eos / cfg.lr,  # lambda_1(H)
        "norm": res.norm,
    }
    info: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "dim": tf.num_params(spec),
        "diverged_at": res.diverged_at,
        "loss_end": float(res.loss[-1]),
        "test_loss_end": float(arrays["test_loss"][-1]),
        "train_accuracy_end": float(arrays["train_accuracy"][-1]),
        "test_accuracy_end": float(arrays["test_accuracy"][-1]),
        "sharpness_tail": _tail_mean(arrays["sharpness"]),
        "precond_eos_tail": _tail_mean(arrays["precond_eos"]),
        "precond_edge": float(obs["precond.edge"][0]),
        "wall_seconds": wall,
    }
    return arrays, info


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Two runs per seed (checkpointed as finished sub-runs), then steps to target."""
    dtype_from_config(cfg.dtype)
    ds = sequences.modular_addition(cfg.p, train_fraction=cfg.train_fraction, seed=cfg.data_seed)
    names = [f"s{seed}_{m}" for seed in cfg.seeds for m in METHODS]

    def one(_: int, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        seed, method = name[1:].split("_")
        return _one(cfg, ds, int(seed), method)

    arrays, runs = collect_runs(names, one, checkpoints, desc=NAME, progress=progress)
    summary: dict[str, Any] = dict(runs)
    fractions = sorted({*cfg.other_fractions, cfg.target_fraction})
    by_fraction = [speedups(cfg, arrays, f) for f in fractions]
    head = by_fraction[fractions.index(cfg.target_fraction)]
    for i, seed in enumerate(cfg.seeds):
        a, b = f"s{seed}_adamw", f"s{seed}_admire"
        for name in (a, b):
            summary[name]["target"] = head["targets"][i]
        summary[a]["steps_to_target"] = head["steps_adamw"][i]
        summary[b]["steps_to_target"] = head["steps_admire"][i]
        summary[b]["speedup"] = head["speedups"][i]
        summary[b]["sharpness_ratio_tail"] = (
            summary[b]["sharpness_tail"] / summary[a]["sharpness_tail"]
        )
    ratios = [summary[f"s{s}_admire"]["sharpness_ratio_tail"] for s in cfg.seeds]
    walls = {m: sum(summary[f"s{s}_{m}"]["wall_seconds"] for s in cfg.seeds) for m in METHODS}
    summary["overall"] = {
        "paper_speedup": PAPER_SPEEDUP,
        "target_fraction": cfg.target_fraction,
        **{k: v for k, v in head.items() if k != "fraction"},
        "by_fraction": by_fraction,
        "sharpness_ratio_median": float(np.median(ratios)),
        "wall_ratio": walls["admire"] / walls["adamw"],
    }
    return arrays, summary


def speedups(cfg: Config, arrays: dict[str, np.ndarray], fraction: float) -> dict[str, Any]:
    """Per seed: the target (the lowest training loss AdamW has reached by the row ``fraction *
    steps``: a loss spike at that row does not set it), each run's
    :func:`steps_to_target` and the speed-up AdamW / AdmIRE (NaN where AdmIRE never reaches
    the target); with their median and geometric mean (NaN unless every seed has one)."""
    at = round(fraction * cfg.steps / cfg.every) * cfg.every
    targets, sa, sb = [], [], []
    for seed in cfg.seeds:
        a, b = f"s{seed}_adamw", f"s{seed}_admire"
        row = int(np.flatnonzero(arrays[f"{a}.step"] == at)[0])
        target = float(np.min(arrays[f"{a}.loss"][: row + 1]))
        targets.append(target)
        sa.append(steps_to_target(arrays[f"{a}.step"], arrays[f"{a}.loss"], target))
        sb.append(steps_to_target(arrays[f"{b}.step"], arrays[f"{b}.loss"], target))
    sp = np.asarray([x / y if y > 0 else math.nan for x, y in zip(sa, sb, strict=True)])
    complete = bool(np.isfinite(sp).all())
    return {
        "fraction": fraction,
        "target_step": at,
        "targets": targets,
        "steps_adamw": sa,
        "steps_admire": sb,
        "speedups": [float(x) for x in sp],
        "reached": int(np.isfinite(sp).sum()),
        "speedup_median": float(np.median(sp)) if complete else math.nan,
        "speedup_geomean": float(np.exp(np.mean(np.log(sp)))) if complete else math.nan,
    }


def _report(stored: StoredRun) -> list[str]:
    s = stored.meta["summary"]
    o = s["overall"]
    lines = [f"target: AdamW's training loss at step {o['target_step']} (per seed)"]
    for name, r in s.items():
        if name == "overall":
            continue
        extra = f"  speed-up {r['speedup']:.2f}" if "speedup" in r else ""
        lines.append(
            f"{name:10s} target {r['target']:.3g}  steps to it {r['steps_to_target']:.1f}  loss "
            f"end {r['loss_end']:.3g}  test acc {r['test_accuracy_end']:.3f}  lambda_1(H) tail "
            f"{r['sharpness_tail']:.3g}  precond/edge {r['precond_eos_tail']:.3f}{extra}"
        )
    for f in o["by_fraction"]:
        lines.append(
            f"target at {f['fraction']:.0%} of the steps (step {f['target_step']}): speed-ups "
            + ", ".join(f"{x:.2f}" for x in f["speedups"])
            + f"; median {f['speedup_median']:.2f}"
        )
    lines.append(
        f"headline speed-up (AdamW steps / AdmIRE steps): median {o['speedup_median']:.2f}, "
        f"geometric mean {o['speedup_geomean']:.2f} (paper: ~{o['paper_speedup']:g}); wall "
        f"ratio {o['wall_ratio']:.2f}"
    )
    return lines


SIM = Simulation(
    NAME, Config, run, __doc__, report=_report, meta=lambda cfg: {"seeds": list(cfg.seeds)}
)
run_and_store = SIM.run_and_store
main = SIM.main
