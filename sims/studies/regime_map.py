"""The regime map: which dynamics GD+WD shows on normalized networks, over a grid of settings.

For every architecture (dataset x model x width x normalization x loss) one batched sweep of the
engine (:func:`theory.engine.sweep.gd_wd_sweep`) runs all ``(eos0, eta * wd)`` pairs at once
(vmapped,
in lockstep, the same number of steps). ``eos0`` is the initial EoS quantity: ``eta`` is set
per architecture to ``eos0 / lambda_1(hess L(w_0))``, so that the initial effective learning
rates ``eta / |W_g(0)|^2`` put every network at the same distance from the edge (with the
direction's dynamics depending on ``(eta, wd, w_0)`` only through ``eta * wd`` and the initial
effective rates, docs/theory.md section 2, these two axes are the whole parameter space of a
given initial direction). The sweep tracks the multi-group EoS quantity
``eta * lambda_1(hess L(w_t))`` at the iterates every ``sharpness_every`` steps
(:class:`theory.engine.LanczosTracker`, ``spherical=False``); with ``track_stride > 1`` (the full
preset) only on every recorded row of the first ``dense_steps`` steps and on every
``track_stride``-th recorded row after them (:class:`theory.engine.RowStrideTracker`; NaN on
the other rows, which the classifier skips; docs/regimes.md, "Cost of the full map", compares
both paths).
Afterwards, on up to
``mid_rows + pre_rows + 2`` recorded rows per run, the EoS quantity and the spherical sharpness
``lambda_1(M H M)`` (``M`` the per-layer norms) are measured at the midpoint of consecutive
iterates ``(w_t + w_{t+1}) / 2`` (``w_{t+1}`` recomputed from ``w_t``; one run at a time,
warm-started from row to row): evenly over the settled phase (from a quarter of the way between
the onset and the end; the whole run if there is no onset), evenly before the onset
(progressive sharpening), at step 0 and just before the onset. Each run is then classified by
:func:`theory.analysis.regimes.classify_regime` with the default
:class:`theory.analysis.regimes.RegimeCriteria`
(docs/regimes.md).

Stored per run ``<run>.``: ``eos`` (iterates), ``eos_mid``, ``sharpness_mid`` (NaN where not
measured), ``loss``, ``norm``, ``eta_eff`` (``eta / |w|^2``), ``grad_norm``; per architecture
``<arch>.step``. The summary has per run the regime, its reasons, the classifier's measurements,
and the boundary measurements: ``eos0`` (``eta * lambda_1`` at the start, the multi-group form
of ``S(0)`` against ``2 / eta_eff(0)``), ``S0`` and ``eta_eff0``, ``predicted_onset`` (the
phase-II prediction from ``eos0`` with the sharpness held fixed, docs/theory.md section 2) next
to the measured onset, and ``tau_end = 2 * steps * eta * wd`` (the slow time of docs/theory.md).

Compiled programs are shared: the sweep's chunk, its tracker initialization and the two midpoint
programs (vmapped over the runs for the initial solve, one run at a time after the sweep) take
the data as arguments, so networks of equal shapes (the same widths,
normalization and loss) reuse them. With ``pad_inputs`` MNIST-1D's 40 inputs are zero-padded to
digits' 64 for the MLPs, and the padded first-layer weights start at 0: they receive no gradient
(their inputs are 0) and weight decay keeps them at 0, so the run is the unpadded network's run
from the unpadded network's initialization (same loss, gradient, Hessian spectrum and per-layer
norms; only the rounding of the longer dot products differs), while a digits and an MNIST-1D
network of equal widths compile once (tested in ``tests/analysis/test_regimes.py``).

Checkpoints: each finished architecture is stored at once (:func:`sims.simulation.cached_runs`),
so an interrupted map resumes at the next architecture. A single sweep cannot be resumed mid-way
(the batched driver takes no snapshots).

Budget: every run of an architecture takes the same number of steps, so ``tau = t * eta * wd``
at the end grows with ``eta * wd``; "no EoS" means no EoS within that budget.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sims import data as datasets
from sims._checkpoint import Checkpoints
from sims._runtime import Progress, dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, cached_runs
from theory.analysis import midpoint
from theory.analysis.regimes import RegimeCriteria, classify_regime
from theory.core import validate as check
from theory.core.invariance import group_norms
from theory.engine import LanczosTracker, RowStrideTracker, SaveAt
from theory.engine.gd import predicted_eos_onset
from theory.engine.sweep import SweepResult, gd_wd_sweep
from theory.engine.trackers import AbstractTracker
from theory.problems import nets

# Results stored before the label "chaotic" was renamed "inflated" (it measures the inflation of
# the EoS quantity above a threshold, not chaos): read with the current label.
LEGACY_LABELS = {"chaotic": "inflated"}


def relabel(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with every run's legacy ``regime`` label replaced by the current one."""
    return {
        k: {**s, "regime": LEGACY_LABELS.get(s["regime"], s["regime"])} if "regime" in s else s
        for k, s in summary.items()
    }


NAME = "regime_map"
DATASETS = ("digits", "mnist1d")
NORM_LOSS = ("batch-ce", "batch-mse", "layer-ce", "layer-mse")
MID_ITERS = 32  # Krylov cap of the midpoint solves
FEATURES = {"digits": 64, "mnist1d": 40}  # MLP inputs per dataset
# The new full preset's stopping rule of the solves at the iterates: a relative eigenvalue
# error of 1e-3 (Kato-Temple estimate), 2e-3 at the edge 2, against classifier thresholds 0.1
# (2 +- 0.1, 2.1, 1.9) and 0.5 (2.5) away from it. The midpoint solves keep the residual rule
# (``mid_tol = 0``): under vmap a solve runs until its slowest run stops, so the error rule saved
# them little, moved a tame run's midpoint mean from 1.908 to 1.901 (the band ends at 1.9) and
# needs a second compiled midpoint program (docs/regimes.md).
NEW_TOL = 1e-3


@dataclass(frozen=True)
class Config:
    """Settings of the regime map (``wd = eta_wd / eta``; every run of an architecture takes
    ``steps`` steps)."""

    datasets: tuple[str, ...] = field(
        default=DATASETS, metadata={"help": "MLP datasets: digits, mnist1d"}
    )
    n_train: int = field(default=256, metadata={"help": "training samples per dataset"})
    cnn_train: int = field(
        default=0,
        metadata={"help": "training images of the VGG and the ResNet (0: n_train)"},
    )
    widths: tuple[int, ...] = field(default=(32, 16), metadata={"help": "MLP hidden widths"})
    depth: int = field(default=2, metadata={"help": "MLP hidden layers"})
    cnn_channels: tuple[int, ...] = field(
        default=(), metadata={"help": "VGG channels on digits images (empty: no CNN)"}
    )
    resnet_channels: tuple[int, ...] = field(
        default=(),
        metadata={"help": "ResNet channels per stage on digits images (empty: no ResNet)"},
    )
    resnet_blocks: int = field(default=1, metadata={"help": "ResNet basic blocks per stage"})
    norm_loss: tuple[str, ...] = field(
        default=("batch-ce", "layer-mse"),
        metadata={"help": "normalization-loss pairs among " + ", ".join(NORM_LOSS)},
    )
    cross_widths: bool = field(
        default=False,
        metadata={
            "help": "every MLP width with every normalization-loss pair (false: widths[i] "
            "with norm_loss[i], equal lengths)"
        },
    )
    pad_inputs: bool = field(
        default=True,
        metadata={
            "help": "zero-pad MNIST-1D's 40 inputs to digits' 64 (same training; networks of "
            "equal widths share compiled programs)"
        },
    )
    eos0: tuple[float, ...] = field(
        default=(0.3, 3.0),
        metadata={"help": "initial EoS quantities eta*lambda_1(H(w0)) (set eta per network)"},
    )
    eta_wd: tuple[float, ...] = field(
        default=(1e-3, 3e-3, 1e-2, 3e-2), metadata={"help": "intrinsic learning rates eta*wd"}
    )
    steps: int = field(default=600, metadata={"help": "GD steps of every run"})
    record_every: int = field(
        default=5,
        metadata={"help": "a row every N steps (odd: both parities of the period-2 oscillation)"},
    )
    sharpness_every: int = field(default=5, metadata={"help": "track eta*lambda_1 every N steps"})
    dense_steps: int = field(
        default=0,
        metadata={
            "help": "with track_stride > 1: solve on every recorded row before this step (the "
            "early EoS onsets at full resolution)"
        },
    )
    track_stride: int = field(
        default=1,
        metadata={
            "help": "solve eta*lambda_1 at the iterates only on every N-th recorded row (odd: "
            "both parities of the period-2 oscillation; 1: every row, the old path)"
        },
    )
    mid_rows: int = field(default=24, metadata={"help": "midpoint rows over the settled phase"})
    pre_rows: int = field(default=8, metadata={"help": "midpoint rows before the onset"})
    mid_tol: float = field(
        default=0.0,
        metadata={
            "help": "midpoint solves: 0 stops at relative residual 3 sqrt(eps) (the old solve); "
            "> 0 at this relative eigenvalue error (Kato-Temple estimate); at most 32 HVPs"
        },
    )
    track_tol: float = field(
        default=0.0,
        metadata={
            "help": "solves at the iterates: 0 stops at relative residual 3 sqrt(eps) (the old "
            "solve); > 0 at this relative eigenvalue error (Kato-Temple estimate)"
        },
    )
    sequential_solves: bool = field(
        default=False,
        metadata={
            "help": "solve eta*lambda_1 at the iterates one run at a time instead of in "
            "lockstep over the sweep's vmapped runs (the same trajectories, bitwise)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the init and the fixed head"})
    dtype: Literal["float32", "float64"] = field(default="float32", metadata={"help": "precision"})

    def __post_init__(self) -> None:
        convnets = bool(self.cnn_channels or self.resnet_channels)
        check.among(self.datasets, "datasets", DATASETS, empty=convnets)
        check.among(self.norm_loss, "norm_loss", NORM_LOSS)
        check.all_ints_at_least(self.widths, "widths", 2)
        check.all_ints_at_least(self.cnn_channels, "cnn_channels", 2)
        check.all_ints_at_least(self.resnet_channels, "resnet_channels", 2)
        if not self.widths and self.datasets:
            raise ValueError("widths must not be empty when datasets are given")
        # The pairing of widths with normalization-loss pairs only concerns the MLPs: a map of
        # convolutional networks only (no datasets) runs every pair on each of them.
        mlps = bool(self.datasets)
        if mlps and not self.cross_widths and len(self.widths) != len(self.norm_loss):
            raise ValueError(
                f"cross_widths=False pairs widths[i] with norm_loss[i]: they need equal lengths, "
                f"got widths {self.widths} and norm_loss {self.norm_loss}"
            )
        check.all_in_interval(self.eos0, "eos0", 0, math.inf)
        check.all_in_interval(self.eta_wd, "eta_wd", 0, 0.1)
        check.int_fields_at_least(
            self,
            1,
            "n_train",
            "depth",
            "steps",
            "record_every",
            "sharpness_every",
            "mid_rows",
            "resnet_blocks",
            "track_stride",
        )
        if self.track_stride % 2 == 0:
            raise ValueError(
                f"track_stride must be odd (an even stride of rows sees one parity of the "
                f"period-2 oscillation only), got {self.track_stride}"
            )
        if self.track_stride > 1 and self.sharpness_every != self.record_every:
            raise ValueError(
                f"track_stride > 1 thins the recorded rows: sharpness_every "
                f"({self.sharpness_every}) must then equal record_every ({self.record_every})"
            )
        check.int_fields_at_least(self, 0, "pre_rows", "dense_steps", "cnn_train")
        for name in ("mid_tol", "track_tol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ValueError(f"{name} must be in [0, 1) (0: the residual rule), got {value!r}")
        if self.n_train % 8 or self.n_train < 16:
            raise ValueError(f"n_train must be a multiple of 8 and >= 16, got {self.n_train}")
        if self.cnn_train and (self.cnn_train % 8 or self.cnn_train < 16):
            raise ValueError(
                f"cnn_train must be 0 (n_train) or a multiple of 8 >= 16, got {self.cnn_train}"
            )
        if self.record_every % self.sharpness_every:
            raise ValueError(
                f"sharpness_every ({self.sharpness_every}) must divide record_every "
                f"({self.record_every})"
            )
        if self.steps < 4 * self.record_every:
            raise ValueError(
                f"steps ({self.steps}) must be at least 4 x record_every ({self.record_every})"
            )

    @classmethod
    def preset(cls, scale: str, tracking: Literal["new", "old"] = "new") -> Config:
        """``quick``: digits and MNIST-1D (256 training samples), MLP 32-32 with BatchNorm and
        cross-entropy and MLP 16-16 with LayerNorm and MSE (width paired with the
        normalization-loss pair, not crossed: 2 compiled program sets for the 4 networks),
        2 initial EoS quantities x 4 eta*wd over 1.5 decades, 600 steps: 4 sweeps of 8 runs.
        ``full``: 1024 samples, widths 64 and 256 crossed with all four normalization-loss
        pairs, 3 initial EoS quantities x 5 eta*wd over 1.5 decades, 3000 steps, and the VGG CNN
        (8-16 channels) on 256 digits images: 20 sweeps of 15 runs. (The VGG was 16-32 on 1024
        images until its stepping alone, 4.3 CPU hours for the four sweeps, put the map out of
        a laptop's reach; docs/regimes.md.) CPU times of both in docs/regimes.md; the full map
        runs unchanged on an accelerator.

        ``tracking`` (full scale only): ``"new"`` solves ``eta * lambda_1`` at the iterates on
        every recorded row of the first 300 steps (the onsets of all but the slowest runs) and
        on every third recorded row after them (every 45 steps, :class:`RowStrideTracker`),
        measures the midpoints on the 42 rows the classifier reads (``pre_rows = 0``: the
        rows before the onset only fed figures; row 0 and the row before the onset stay),
        stops the solves at the iterates at a relative eigenvalue error of ``NEW_TOL``
        (``stop="error"``) instead of the residual ``3 sqrt(eps)``, and runs those solves one
        run at a time (``sequential_solves``; the trajectories are bitwise those of the
        lockstep solves); ``"old"`` every 5 steps
        with 54 midpoint rows, as the map was first run. Both solve the midpoints by the
        residual rule (``mid_tol = 0``). The quick scale tracks every recorded
        row either way."""
        if tracking not in ("new", "old"):
            raise ValueError(f"tracking must be 'new' or 'old', got {tracking!r}")
        if scale == "quick":
            return cls()
        if scale == "full":
            old = tracking == "old"
            return cls(
                n_train=1024,
                widths=(64, 256),
                cross_widths=True,
                cnn_channels=(8, 16),
                cnn_train=256,
                eos0=(0.1, 0.5, 3.0),
                eta_wd=(1e-3, 2e-3, 5e-3, 1e-2, 3e-2),
                steps=3000,
                record_every=15,
                sharpness_every=5 if old else 15,
                track_stride=1 if old else 3,
                dense_steps=0 if old else 300,
                norm_loss=NORM_LOSS,
                mid_rows=40,
                pre_rows=12 if old else 0,
                mid_tol=0.0,
                track_tol=0.0 if old else NEW_TOL,
                sequential_solves=not old,
            )
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def architectures(cfg: Config) -> list[dict[str, Any]]:
    """One entry per sweep: dataset, model, width (or channels), norm, loss, and its name."""
    out = []
    models: list[tuple[str, str, tuple[int, ...], tuple[str, ...]]] = []
    for ds in cfg.datasets:
        for i, w in enumerate(cfg.widths):
            pairs = cfg.norm_loss if cfg.cross_widths else (cfg.norm_loss[i],)
            models.append((ds, "mlp", (w,) * cfg.depth, pairs))
    if cfg.cnn_channels:
        models.append(("digits", "vgg", tuple(cfg.cnn_channels), cfg.norm_loss))
    if cfg.resnet_channels:
        models.append(("digits", "resnet", tuple(cfg.resnet_channels), cfg.norm_loss))
    for ds, model, sizes, pairs in models:
        for pair in pairs:
            norm, loss = pair.split("-")
            label = f"{model}{'-'.join(map(str, sizes))}"
            if model == "resnet":
                label += f"x{cfg.resnet_blocks}"
            out.append(
                {
                    "name": f"{ds}_{label}_{'bn' if norm == 'batch' else 'ln'}_{loss}",
                    "dataset": ds,
                    "model": model,
                    "sizes": list(sizes),
                    "width": sizes[-1],
                    "norm": norm,
                    "loss": loss,
                }
            )
    return out


def grid(cfg: Config) -> list[tuple[float, float]]:
    """The ``(eos0, eta * wd)`` pairs of every sweep (``eos0``-major)."""
    return [(e0, ewd) for e0 in cfg.eos0 for ewd in cfg.eta_wd]


def run_name(arch: dict[str, Any], eos0: float, ewd: float) -> str:
    return f"{arch['name']}_e0{eos0:g}_ewd{ewd:g}"


def _dataset(name: str, cfg: Config, images: bool) -> datasets.Dataset:
    dtype = np.float64 if cfg.dtype == "float64" else np.float32
    if name == "digits":
        n = cfg.cnn_train if images and cfg.cnn_train else cfg.n_train
        return datasets.digits(n_train=n, images=images, dtype=dtype, seed=cfg.seed)
    n_samples = cfg.n_train * 5 // 4  # train_split 0.8: n_train training signals
    return datasets.mnist1d(n_samples=n_samples, dtype=dtype, seed=cfg.seed)


def input_padding(cfg: Config, arch: dict[str, Any]) -> int:
    """Zero inputs appended to this MLP's data (``pad_inputs``: up to the widest MLP dataset
    of the map, so that equal widths share programs)."""
    if arch["model"] != "mlp" or not cfg.pad_inputs:
        return 0
    return max(FEATURES[d] for d in cfg.datasets) - FEATURES[arch["dataset"]]


def make_network(cfg: Config, arch: dict[str, Any]) -> nets.NetProblem:
    """The training problem of one architecture (with :func:`input_padding` zero inputs: the
    loss of the padded network, started from the unpadded network's initialization embedded
    with zero weights on the padded inputs)."""
    ds = _dataset(arch["dataset"], cfg, images=arch["model"] != "mlp")
    model: Any
    if arch["model"] == "mlp":
        model = nets.mlp(arch["sizes"], norm=arch["norm"])
    elif arch["model"] == "vgg":
        model = nets.vgg(arch["sizes"], norm=arch["norm"])
    else:
        model = nets.resnet(arch["sizes"], blocks=cfg.resnet_blocks, norm=arch["norm"])

    def problem(x_train: np.ndarray, x_test: np.ndarray) -> nets.NetProblem:
        return nets.make_problem(
            model,
            x_train,
            ds.y_train,
            x_test,
            ds.y_test,
            loss=arch["loss"],
            num_outputs=ds.num_classes,
            seed=cfg.seed,
            dtype=np.dtype(cfg.dtype),
        )

    small = problem(ds.x_train, ds.x_test)
    pad = input_padding(cfg, arch)
    if pad == 0:
        return small
    big = problem(*(np.pad(x, ((0, 0), (0, pad))) for x in (ds.x_train, ds.x_test)))
    f, width = small.unravel.shapes[0]
    assert small.names[0] == "dense_00/kernel" and big.unravel.shapes[0] == (f + pad, width)
    w = np.asarray(small.w0)
    first = np.pad(w[: f * width].reshape(f, width), ((0, pad), (0, 0)))
    w0 = np.concatenate([first.ravel(), w[f * width :]])
    return big._replace(w0=jnp.asarray(w0, small.w0.dtype))


# --------------------------------------------------------------------------------------------
# Tracking only the rows the classifier reads
# --------------------------------------------------------------------------------------------


def make_tracker(cfg: Config) -> AbstractTracker:
    """The sweep's tracker: ``eta * lambda_1`` at the iterates every ``sharpness_every`` steps
    (``track_stride = 1``, the old path), or on every recorded row of the first
    ``dense_steps`` steps and on every ``track_stride``-th recorded row after them; with
    ``sequential_solves`` each tracked step's solves run one run at a time
    (:class:`LanczosTracker` ``sequential=True``)."""
    stop: dict[str, Any] = {"tol": cfg.track_tol, "stop": "error"} if cfg.track_tol > 0 else {}
    base = LanczosTracker(
        every=cfg.sharpness_every,
        spherical=False,
        init_iters=32,
        sequential=cfg.sequential_solves,
        **stop,
    )
    if cfg.track_stride == 1:
        return base
    return RowStrideTracker(base, cfg.record_every * cfg.track_stride, cfg.dense_steps)


# --------------------------------------------------------------------------------------------
# Midpoint curvature over the runs of a sweep (vmapped for the initial solve, mapped after)
# --------------------------------------------------------------------------------------------


def _mid_run(
    loss: Any,
    groups: tuple[int, ...],
    tol: float,
    w: jax.Array,
    eta: jax.Array,
    wd: jax.Array,
    v: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """One run's ``lambda_1(H(mid))`` and ``lambda_1(M H(mid) M)`` ``(M,)`` at the midpoints of
    its rows ``w`` ``(M, D)``: :func:`theory.analysis.midpoint.midpoint_curvature`."""
    stop: dict[str, Any] = {"tol": tol, "stop": "error"} if tol > 0 else {}
    c = midpoint.midpoint_curvature(
        loss, w, eta, wd, groups=groups, lanczos_iters=MID_ITERS, v0=v, **stop
    )
    assert c.hessian is not None and c.spherical is not None
    return c.hessian[:, 0], c.spherical[:, 0]


def _mid_rows(
    loss: Any,
    w_rows: jax.Array,
    eta: jax.Array,
    wd: jax.Array,
    v0: jax.Array,
    groups: tuple[int, ...],
    tol: float = 0.0,
    each: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """``lambda_1(H(mid))`` and ``lambda_1(M H(mid) M)`` ``(B, M)`` at the midpoints of the rows
    ``w_rows`` ``(B, M, D)`` (rows in increasing order per run, warm starts carried along; ``eta
    = 0`` gives them at the rows themselves): :func:`_mid_run` over the runs. ``tol``: 0, each
    solve stops at the default relative residual; > 0, at this relative eigenvalue error
    (``stop="error"``).

    ``each=False`` vmaps over the runs; ``each=True`` solves one run at a time (``lax.map``).
    Under ``vmap`` every Lanczos iteration runs until the slowest of the runs stops and carries
    all their Krylov bases through each iteration's selects; one run at a time, each solve stops
    at its own tolerance. On digits 64-64 BN-CE (15 runs, 450 steps, 42 rows) the midpoints took
    36 s of CPU instead of 102 s, with the same values to 1e-8 (docs/regimes.md). The initial
    solve keeps the vmapped program: its ``lambda_1(w_0)`` sets ``eta``, and the mapped program
    rounds it differently in the seventh digit, which would change every trajectory."""
    run = functools.partial(_mid_run, loss, groups, tol)
    if each:
        return jax.lax.map(lambda a: run(*a), (w_rows, eta, wd, v0))
    return jax.vmap(run)(w_rows, eta, wd, v0)


_mid_rows_jit = eqx.filter_jit(_mid_rows)


def initial_curvature(
    loss: Any, w0: jax.Array, groups: tuple[int, ...], batch: int, cfg: Config
) -> tuple[float, float]:
    """``(lambda_1(H(w0)), S(w0))``, by the midpoint program at ``eta = 0`` (same shapes as the
    sweep's midpoint rows, so it reuses that compiled program instead of compiling another)."""
    rows = cfg.mid_rows + cfg.pre_rows + 2
    w = jnp.broadcast_to(jnp.asarray(w0), (batch, rows, w0.shape[0]))
    zero = jnp.zeros((batch,), w.dtype)
    v0 = jax.random.normal(jax.random.PRNGKey(7), (batch, w0.shape[0]), w.dtype)
    # The accurate solve (residual rule) whatever mid_tol is: eta, and so every run, is set by it.
    e, s = _mid_rows_jit(loss, w, zero, zero, v0, tuple(groups), 0.0)
    return float(e[0, -1]), float(s[0, -1])


def midpoint_row_indices(
    eos: np.ndarray,
    mid_rows: int,
    pre_rows: int,
    settle_frac: float,
    edge: float = 2.0,
    loss: np.ndarray | None = None,
) -> np.ndarray:
    """Row indices ``(mid_rows + pre_rows + 2,)`` (increasing, repeats allowed) of one run:
    row 0, ``pre_rows`` evenly before the onset (first row with ``eos >= edge``), the row
    before the onset, and ``mid_rows`` evenly over the settled phase (whole run without onset;
    rows after a divergence are excluded). ``eos`` may be NaN on rows that were not solved
    (``track_stride > 1``); with ``loss`` given, the run's rows end at its last row with a
    finite loss (and no infinite ``eos``), else at its last finite ``eos``."""
    n = len(eos)
    ok = np.isfinite(eos) if loss is None else np.isfinite(loss) & ~np.isinf(eos)
    valid = np.flatnonzero(ok)
    last = int(valid[-1]) if valid.size else 0
    above = np.flatnonzero(np.isfinite(eos) & (eos >= edge))
    if above.size:
        on = int(above[0])
        start = min(last, on + math.ceil(settle_frac * (last - on)))
        pre = np.linspace(0, max(on - 1, 0), pre_rows).round().astype(int)
        extra = [max(on - 1, 0)]
    else:
        start = 0
        pre = np.zeros(pre_rows, int)
        extra = [0]
    settled = np.linspace(start, last, mid_rows).round().astype(int)
    idx = np.sort(np.concatenate([[0], pre, extra, settled]))
    return np.clip(idx, 0, n - 1)


def midpoint_columns(
    loss: Any, sweep: SweepResult, idx: np.ndarray, tol: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """``(eos_mid, sharpness_mid)`` ``(B, n)`` at the midpoint rows ``idx`` ``(B, M)`` (NaN on
    other rows and on rows with a non-finite iterate), one run at a time
    (:func:`_mid_rows` with ``each=True``); ``tol`` as in :func:`_mid_rows`."""
    assert sweep.w is not None
    b, n = sweep.eos.shape
    w = np.asarray(sweep.w)
    rows = np.stack([w[i, idx[i]] for i in range(b)])  # (B, M, D)
    finite = np.all(np.isfinite(rows), axis=2)
    rows = np.where(finite[..., None], rows, np.asarray(sweep.w[:, 0])[:, None])
    dt = rows.dtype
    v0 = jax.random.normal(jax.random.PRNGKey(7), (b, rows.shape[2]), dt)
    lam, sph = _mid_rows_jit(
        loss,
        jnp.asarray(rows),
        jnp.asarray(sweep.eta, dt),
        jnp.asarray(sweep.wd, dt),
        v0,
        tuple(sweep.groups),
        float(tol),
        True,
    )
    e = np.where(finite, np.asarray(lam) * np.asarray(sweep.eta)[:, None], np.nan)
    s = np.where(finite, np.asarray(sph), np.nan)
    eos_mid, sharp_mid = np.full((b, n), np.nan), np.full((b, n), np.nan)
    for i in range(b):
        eos_mid[i, idx[i]] = e[i]
        sharp_mid[i, idx[i]] = s[i]
    return eos_mid, sharp_mid


# --------------------------------------------------------------------------------------------
# One architecture: the sweep, the midpoints, the classification
# --------------------------------------------------------------------------------------------


def run_architecture(
    cfg: Config, arch: dict[str, Any], progress: bool
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One architecture's sweep over :func:`grid`, its midpoints and every run's regime:
    ``(arrays, summary)`` as stored by :func:`run` (the summary also holds the times: wall and
    CPU seconds of the whole architecture, of the initial curvature solve, of the sweep and of
    the midpoints, and the run's HVPs spent by the tracker)."""
    t0, c0 = time.perf_counter(), time.process_time()
    prob = make_network(cfg, arch)
    pairs = grid(cfg)
    # eta sets the initial EoS quantity: eta * lambda_1(H(w0)) = eos0 (the initial effective
    # learning rates are then eta / |W_g(0)|^2).
    lam0, s0 = initial_curvature(prob.loss, prob.w0, prob.groups, len(pairs), cfg)
    t_init, c_init = time.perf_counter() - t0, time.process_time() - c0
    etas = np.array([p[0] / lam0 for p in pairs])
    wds = np.array([p[1] for p in pairs]) / etas
    tracker = make_tracker(cfg)
    with Progress(f"{NAME}/{arch['name']}", cfg.steps, progress) as bar:
        sweep = gd_wd_sweep(
            prob.loss,
            prob.w0,
            eta=etas,
            wd=wds,
            steps=cfg.steps,
            groups=prob.groups,
            seeds=np.full(len(pairs), cfg.seed),
            tracker=tracker,
            saveat=SaveAt(every=cfg.record_every, iterates=True),
            chunk_steps=max(cfg.record_every, cfg.steps // 4),
            callback=bar,
            # Invariant by construction (theory/problems/nets.py rules; tested in
            # tests/problems/test_nets.py).
            check_invariance=False,
            # The grid starts some runs above the edge (eos0 > 2) on purpose: the catapult and
            # inflated regimes are what the map classifies.
            warn_above_edge=False,
        )
    t_sweep = time.perf_counter() - t0 - t_init
    c_sweep = time.process_time() - c0 - c_init
    crit = RegimeCriteria()
    idx = np.stack(
        [
            midpoint_row_indices(
                sweep.eos[i], cfg.mid_rows, cfg.pre_rows, crit.settle_frac, loss=sweep.loss[i]
            )
            for i in range(len(pairs))
        ]
    )
    t1, c1 = time.perf_counter(), time.process_time()
    eos_mid, sharp_mid = midpoint_columns(prob.loss, sweep, idx, cfg.mid_tol)
    t_mid, c_mid = time.perf_counter() - t1, time.process_time() - c1
    arrays: dict[str, np.ndarray] = {f"{arch['name']}.step": sweep.step}
    summary: dict[str, Any] = {}
    pad = input_padding(cfg, arch)
    w0 = np.asarray(prob.w0, np.float64)
    norm0_sq = float(np.sum(w0**2))
    gsq0 = np.asarray(group_norms(jnp.asarray(w0), prob.groups)) ** 2
    for i, (target, ewd) in enumerate(pairs):
        name = run_name(arch, target, ewd)
        eta = float(etas[i])
        cols = {
            "eos": sweep.eos[i],
            "eos_mid": eos_mid[i],
            "sharpness_mid": sharp_mid[i],
            "loss": sweep.loss[i],
            "norm": sweep.norm[i],
            "eta_eff": sweep.eta_eff[i],
            "grad_norm": sweep.grad_norm[i],
        }
        arrays.update({f"{name}.{k}": np.asarray(v) for k, v in cols.items()})
        res = classify_regime(
            sweep.step,
            cols["eos"],
            cols["loss"],
            eos_mid=cols["eos_mid"],
            sharpness_mid=cols["sharpness_mid"],
            norm=cols["norm"],
            criteria=crit,
        )
        eos0 = float(sweep.eos[i, 0])
        pred = predicted_eos_onset(eta, ewd / eta, eos0) if eos0 > 0 else math.nan
        bad = int(sweep.diverged_at[i])
        summary[name] = {
            **{k: arch[k] for k in ("dataset", "model", "width", "norm", "loss")},
            "arch": arch["name"],
            "sizes": arch["sizes"],
            "eta": eta,
            "eta_wd": ewd,
            "wd": ewd / eta,
            "steps": cfg.steps,
            "tau_end": 2 * cfg.steps * ewd,
            "regime": res.regime,
            "reasons": list(res.reasons),
            **res.measurements,
            "eos0_target": target,
            "eos0": eos0,
            "lambda1_0": lam0,
            "S0": float(s0),
            "S0_mid": float(sharp_mid[i, 0]),
            "eta_eff0": eta / norm0_sq,
            "eta_eff0_groups": (eta / gsq0).tolist(),
            "two_over_eta_eff0_max": float(2 / np.max(eta / gsq0)),
            "predicted_onset": pred,
            "engine_onset": int(sweep.onset_step[i]) if sweep.onset_step[i] >= 0 else None,
            "diverged_at": bad if bad >= 0 else None,
            "tracker_hvps": int(np.sum(sweep.block_matvecs[i]))
            if sweep.block_matvecs is not None
            else None,
            "dim": int(prob.w0.shape[0]) - pad * arch["sizes"][0],
            "input_padding": pad,
        }
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    for s in summary.values():
        s["arch_seconds"] = seconds
        s["arch_cpu_seconds"] = cpu
        s["sweep_seconds"] = t_sweep
        s["sweep_cpu_seconds"] = c_sweep
        s["init_cpu_seconds"] = c_init
        s["midpoint_seconds"] = t_mid
        s["midpoint_cpu_seconds"] = c_mid
    return arrays, summary


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every architecture's sweep, one checkpointed sub-run each (an interrupted map resumes
    at the next architecture). Arrays are named ``<run>.<array>`` and ``<arch>.step``."""
    dtype_from_config(cfg.dtype)
    archs = architectures(cfg)
    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {}
    subruns = cached_runs(
        [a["name"] for a in archs],
        lambda i, _name: run_architecture(cfg, archs[i], progress),
        checkpoints,
        desc=NAME,
        progress=progress,
    )
    for _name, sub, info in subruns:
        arrays.update(sub)
        summary.update(info)
    return arrays, summary


def _report(stored: StoredRun) -> list[str]:
    lines = []
    for name, s in stored.meta["summary"].items():
        lines.append(
            f"{name:44s} {s['regime']:10s} eos0 {s['eos0']:7.3f} onset {s['onset_step']!s:>7s} "
            f"<mid> {float(s.get('eos_mid_mean', math.nan)):6.3f} "
            f"<it> {float(s.get('eos_iter_mean', math.nan)):6.3f} "
            f"S x{float(s.get('sharpness_ratio', math.nan)):6.3f} cycles {s['cycles']}"
        )
    return lines


SIM = Simulation(
    NAME,
    Config,
    run,
    __doc__,
    report=_report,
    meta=lambda cfg: {"seeds": [cfg.seed], "criteria": RegimeCriteria()},
)
run_and_store = SIM.run_and_store
main = SIM.main
