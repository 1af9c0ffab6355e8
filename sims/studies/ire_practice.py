"""IRE's practical claims at CPU scale: SGD, SGD-IRE, SAM and SAM-IRE on minibatches.

The IRE paper (Wang et al. 2024) reports that IRE on top of SGD or SAM raises test accuracy
(e.g. WRN-28-10 on CIFAR-10: SGD 95.84 -> SGD-IRE 96.24, SAM 96.58 -> SAM-IRE 96.70) and, through
its mechanism, finds flatter minima. This study runs the four optimizers on a small vision task
with a held-out split, several seeds, the same step budget and the same batches:

* data: ``digits`` (scikit-learn's 8x8 digits, ``n_train`` examples, the rest held out) or
  ``mnist1d`` (4000 signals, 3200/800);
* model: the project's normalized bias-free MLP (:func:`theory.problems.nets.mlp`) with
  LayerNorm (per example, so a minibatch loss is an unbiased estimate of the training loss, no
  batch statistics) and a fixed last layer, cross-entropy;
* base: SGD with heavy-ball momentum and coupled weight decay (optax
  ``chain(add_decayed_weights(wd), sgd(eta, momentum))``, the paper's vision base); SAM adds
  :func:`theory.optim.transforms.sam` (standard, radius ``rho``) in front, its ascent step and
  perturbed gradient on the step's batch;
* IRE: :func:`theory.optim.ire.ire` with the paper's Algorithm 1 mask
  (:func:`theory.optim.ire.diagonal_mask` of the sampled-label Fisher diagonal
  :func:`theory.optim.ire.fisher_diagonal`, on the refresh step's batch), ``gamma`` of the
  coordinates, refreshed every ``refresh_every`` steps after ``warmup`` steps; the whole base
  update (momentum and weight decay included) is multiplied by ``1 + kappa`` on the mask, as in
  the paper's public implementation;
* training: :func:`theory.optim.stochastic.run_optimizer_minibatch`, batches of ``batch_size``
  drawn in shuffled epochs from ``PRNGKey(seed)`` (the four methods of a seed see the same
  batches and start from the same weights, so a seed's differences are paired).

The paper's settings, scaled: ``kappa = 2`` (the paper uses 2-5), ``gamma = 0.7`` (0.5-0.8),
``K = 10`` (its default), SAM ``rho = 0.05`` (its vision value), ``eta = 0.1``, ``momentum =
0.9`` and ``wd = 5e-4`` (the usual CIFAR SGD settings), warm-up one tenth of the run. Seeds run one
after the other (the engine's run is not batched over optimizers' data draws); each method
compiles once and serves every seed (the data and the fixed head are arguments).

Stored per run ``<run>.`` (``s<seed>_<method>``): step, the batch loss of the recorded rows
(``batch_loss``), the full training loss and accuracy and the test loss and accuracy at every
recorded row (``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``), the
per-layer norms, and over the last third of the rows the spherical sharpness
``lambda_1(hess L(w_hat))`` of the whole training loss (``sharpness_tail``; Lanczos,
:func:`theory.core.sharpness.spherical_sharpness`; ``w_hat`` normalized per layer) and its
Hutchinson trace (``trace_tail``; :func:`theory.core.trace.spherical_trace`, the same probes
for every row and run). Summary per run: final test accuracy (and its mean over the last
third), final train loss, ``sharpness_end`` and ``trace_end`` (geometric means over the last
third: an SGD iterate's curvature fluctuates from row to row), steps, ``diverged_at``,
seconds. ``summary["methods"]`` aggregates over seeds: mean and sample standard
deviation of each measure, and for the IRE methods the paired difference to their base
(``ire - base``, per seed) with its mean and standard deviation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sims import data as datasets
from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, cached_runs, prefixed
from theory.core import validate as check
from theory.core.invariance import group_norms
from theory.core.sharpness import spherical_sharpness
from theory.core.trace import spherical_trace
from theory.engine import SaveAt
from theory.optim.ire import diagonal_mask, fisher_diagonal, ire
from theory.optim.stochastic import run_optimizer_minibatch
from theory.optim.transforms import sam
from theory.problems import nets

NAME = "ire_practice"
METHODS = ("sgd", "sgd_ire", "sam", "sam_ire")
BASE_OF = {"sgd_ire": "sgd", "sam_ire": "sam"}
PROBE_KEY = jax.random.PRNGKey(1)  # the same Hutchinson probes for every row and run
MEASURES = ("test_accuracy", "test_accuracy_tail", "train_loss", "sharpness_end", "trace_end")


@dataclass(frozen=True)
class Config:
    """Settings of the four minibatch optimizers on a held-out classification task."""

    dataset: Literal["digits", "mnist1d"] = field(default="digits", metadata={"help": "data"})
    n_train: int = field(default=1024, metadata={"help": "training samples (digits)"})
    widths: tuple[int, ...] = field(default=(64, 64), metadata={"help": "MLP hidden widths"})
    batch_size: int = field(default=64, metadata={"help": "examples per step"})
    eta: float = field(default=0.1, metadata={"help": "learning rate"})
    momentum: float = field(default=0.9, metadata={"help": "heavy-ball momentum"})
    wd: float = field(default=5e-4, metadata={"help": "coupled weight decay"})
    rho: float = field(default=0.05, metadata={"help": "SAM radius"})
    kappa: float = field(default=2.0, metadata={"help": "IRE amplification"})
    gamma: float = field(default=0.7, metadata={"help": "IRE mask fraction"})
    refresh_every: int = field(default=10, metadata={"help": "mask refresh interval K"})
    warmup: int = field(default=100, metadata={"help": "steps before IRE starts"})
    steps: int = field(default=1000, metadata={"help": "steps per run (all methods)"})
    methods: tuple[str, ...] = field(default=METHODS, metadata={"help": "optimizers"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "seeds (init, batches)"})
    record_every: int = field(default=50, metadata={"help": "record a row every N steps"})
    lanczos_iters: int = field(default=40, metadata={"help": "Krylov dimension (sharpness)"})
    trace_probes: int = field(default=64, metadata={"help": "Hutchinson probes (trace)"})
    dtype: Literal["float32", "float64"] = field(default="float32", metadata={"help": "precision"})

    def __post_init__(self) -> None:
        check.among(self.methods, "methods", METHODS)
        check.positive_fields(self, "eta", "rho")
        check.nonnegative_fields(self, "wd", "kappa", "momentum")
        check.in_interval(self.gamma, "gamma", 0, 1)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        check.int_fields_at_least(
            self, 1, "steps", "record_every", "refresh_every", "batch_size", "lanczos_iters"
        )
        check.int_fields_at_least(self, 0, "warmup")
        check.int_fields_at_least(self, 2, "trace_probes")
        if self.steps % self.record_every:
            raise ValueError(f"record_every ({self.record_every}) must divide steps ({self.steps})")
        if not self.seeds:
            raise ValueError("seeds must not be empty")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: digits, MLP 64-64, 1000 steps of batch 64 (62 epochs), 3 seeds (2 min
        40 s measured on the shared 2-core machine at load 13); ``full``: MNIST-1D (3200/800),
        MLP 128-128, 4000 steps of batch 128 (160 epochs), 5 seeds (not run yet: one run took
        5.5 minutes at load 18)."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(
                dataset="mnist1d",
                widths=(128, 128),
                batch_size=128,
                steps=4000,
                warmup=400,
                seeds=(0, 1, 2, 3, 4),
                record_every=200,
                trace_probes=32,
            )
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def dataset(cfg: Config) -> datasets.Dataset:
    """The training and held-out split of ``cfg.dataset``."""
    dtype = np.float64 if cfg.dtype == "float64" else np.float32
    if cfg.dataset == "digits":
        return datasets.digits(n_train=cfg.n_train, dtype=dtype)
    return datasets.mnist1d(dtype=dtype)


def make_network(cfg: Config, ds: datasets.Dataset, seed: int) -> nets.NetProblem:
    """The LayerNorm MLP with its fixed head drawn from ``seed``, cross-entropy."""
    return nets.make_problem(
        nets.mlp(cfg.widths, norm="layer"),
        ds.x_train,
        ds.y_train,
        ds.x_test,
        ds.y_test,
        loss="ce",
        num_outputs=ds.num_classes,
        seed=seed,
        dtype=np.dtype(cfg.dtype),
    )


# The loss of a batch and its logits: loss_args = (chunk loss module, x_batch, y_batch); the
# module carries the fixed head as leaves. Module-level so every seed reuses the compiled run.
def _batch_loss(w: jax.Array, chunk: nets.NetChunkLoss, x: jax.Array, y: jax.Array) -> jax.Array:
    return chunk(w, x, y)


def _batch_logits(w: jax.Array, chunk: nets.NetChunkLoss, x: jax.Array, y: jax.Array) -> jax.Array:
    del y
    out, _ = chunk.network.train_outputs(w, x)
    return out


def make_optimizer(cfg: Config, method: str, seed: int) -> optax.GradientTransformationExtraArgs:
    """SGD (momentum, coupled weight decay), SAM on it, or IRE (Fisher mask) on either."""
    steps: list[optax.GradientTransformation] = []
    if method.startswith("sam"):
        steps.append(sam(_batch_loss, cfg.rho))
    steps += [optax.add_decayed_weights(cfg.wd), optax.sgd(cfg.eta, momentum=cfg.momentum or None)]
    base = optax.with_extra_args_support(optax.chain(*steps))
    if not method.endswith("_ire"):
        return base
    selector = diagonal_mask(
        fisher_diagonal(_batch_logits, loss="cross_entropy"),
        cfg.gamma,
        refresh_every=cfg.refresh_every,
        warmup=cfg.warmup,
    )
    return ire(base, cfg.kappa, selector, seed=seed)


def runs(cfg: Config) -> list[dict[str, Any]]:
    """The run list: name, seed, method."""
    return [
        {"name": f"s{seed}_{m}", "seed": seed, "method": m}
        for seed in cfg.seeds
        for m in cfg.methods
    ]


@eqx.filter_jit
def _rows(evaluate: nets.NetEvaluate, rows: jax.Array, groups: tuple[int, ...]) -> dict:
    """Train/test loss and accuracy and per-layer norms at each recorded row."""
    return jax.lax.map(lambda w: {**evaluate(w), "group_norms": group_norms(w, groups)}, rows)


def _tail(n: int) -> slice:
    """The last third of the recorded rows (at least one): the window of the final curvature."""
    return slice(n - max(1, n // 3), n)


def _one(
    cfg: Config, spec: dict[str, Any], prob: nets.NetProblem, ds: datasets.Dataset
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    chunk = nets.NetChunkLoss(prob.loss.network, prob.loss.kind)  # type: ignore[attr-defined]
    dt = prob.w0.dtype
    data = (jnp.asarray(ds.x_train, dt), jnp.asarray(ds.y_train))
    t0 = time.perf_counter()
    res = run_optimizer_minibatch(
        make_optimizer(cfg, spec["method"], spec["seed"]),
        _batch_loss,
        prob.w0,
        data,
        cfg.batch_size,
        cfg.steps,
        loss_args=(chunk,),
        key=jax.random.PRNGKey(spec["seed"]),
        saveat=SaveAt(every=cfg.record_every),
    )
    wall = time.perf_counter() - t0
    assert res.w is not None
    rows = {
        k: np.asarray(v) for k, v in _rows(prob.evaluate, jnp.asarray(res.w), prob.groups).items()
    }
    opts: dict[str, Any] = {"groups": prob.groups, "check_invariance": False}
    tail = _tail(len(res.step))
    sharp, trace, trace_err = [], [], []
    for w in res.w[tail]:
        lam, _ = spherical_sharpness(prob.loss, jnp.asarray(w), max_iters=cfg.lanczos_iters, **opts)
        tr, err = spherical_trace(
            prob.loss, jnp.asarray(w), num_probes=cfg.trace_probes, key=PROBE_KEY, **opts
        )
        sharp.append(float(lam))
        trace.append(float(tr))
        trace_err.append(float(err))
    sharp0, _ = spherical_sharpness(prob.loss, prob.w0, max_iters=cfg.lanczos_iters, **opts)
    arrays = {
        "step": np.asarray(res.step),
        "batch_loss": np.asarray(res.loss),
        "sharpness_tail": np.asarray(sharp),
        "trace_tail": np.asarray(trace),
        **rows,
    }
    info: dict[str, Any] = {
        **spec,
        "steps": cfg.steps,
        "diverged_at": res.diverged_at,
        "test_accuracy": float(rows["test_accuracy"][-1]),
        "test_accuracy_tail": float(np.mean(rows["test_accuracy"][tail])),
        "train_accuracy": float(rows["train_accuracy"][-1]),
        "train_loss": float(rows["train_loss"][-1]),
        "test_loss": float(rows["test_loss"][-1]),
        "sharpness_start": float(sharp0),
        "sharpness_end": float(np.exp(np.mean(np.log(sharp)))),
        "sharpness_last": sharp[-1],
        "trace_end": float(np.exp(np.mean(np.log(trace)))),
        "trace_last": trace[-1],
        "trace_stderr_last": trace_err[-1],
        "tail_rows": len(sharp),
        "norms_end": [float(x) for x in rows["group_norms"][-1]],
        "wall_seconds": wall,
    }
    if spec["method"].endswith("_ire"):
        info["mask_fraction"] = float(np.mean(np.asarray(res.final_state.flat.mask)))
    return arrays, info


def _stats(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, float)
    std = float(np.std(a, ddof=1)) if a.size > 1 else float("nan")
    return {"mean": float(np.mean(a)), "std": std, "n": int(a.size), "values": a.tolist()}


def aggregate(cfg: Config, summary: dict[str, Any]) -> dict[str, Any]:
    """Per method: mean and sample std over seeds of :data:`MEASURES`; for an IRE method also
    the per-seed paired difference ``ire - base`` of each measure (``diff_<measure>``)."""
    out: dict[str, Any] = {}
    for m in cfg.methods:
        per = [summary[f"s{s}_{m}"] for s in cfg.seeds]
        agg: dict[str, Any] = {k: _stats([p[k] for p in per]) for k in MEASURES}
        base = BASE_OF.get(m)
        if base in cfg.methods:
            for k in MEASURES:
                diffs = [summary[f"s{s}_{m}"][k] - summary[f"s{s}_{base}"][k] for s in cfg.seeds]
                agg[f"diff_{k}"] = _stats(diffs)
            agg["base"] = base
        out[m] = agg
    return out


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    dtype_from_config(cfg.dtype)
    ds = dataset(cfg)
    specs = {spec["name"]: spec for spec in runs(cfg)}
    problems: dict[int, nets.NetProblem] = {}

    def one(_: int, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        seed = specs[name]["seed"]
        if seed not in problems:
            problems[seed] = make_network(cfg, ds, seed)
        return _one(cfg, specs[name], problems[seed], ds)

    arrays: dict[str, np.ndarray] = {}
    runs_summary: dict[str, Any] = {}
    for name, sub, info in cached_runs(list(specs), one, checkpoints, desc=NAME, progress=progress):
        arrays.update(prefixed(name, sub))
        runs_summary[name] = info
    summary: dict[str, Any] = dict(runs_summary)
    summary["methods"] = aggregate(cfg, runs_summary)
    summary["n_test"] = int(ds.n_test)
    return arrays, summary


def _report(stored: StoredRun) -> list[str]:
    lines = []
    for m, agg in stored.meta["summary"]["methods"].items():
        acc, sh, tr = agg["test_accuracy"], agg["sharpness_end"], agg["trace_end"]
        line = (
            f"{m:8s} test acc {acc['mean']:.4f} +- {acc['std']:.4f}  "
            f"S_end {sh['mean']:8.3g} +- {sh['std']:.2g}  tr {tr['mean']:8.3g} +- {tr['std']:.2g}"
        )
        if "diff_test_accuracy" in agg:
            d, ds_ = agg["diff_test_accuracy"], agg["diff_sharpness_end"]
            line += (
                f"  vs {agg['base']}: acc {d['mean']:+.4f} +- {d['std']:.4f}, "
                f"S {ds_['mean']:+.3g} +- {ds_['std']:.2g}"
            )
        lines.append(line)
    return lines


SIM = Simulation(
    NAME, Config, run, __doc__, report=_report, meta=lambda cfg: {"seeds": list(cfg.seeds)}
)
run_and_store = SIM.run_and_store
main = SIM.main
