"""LLA22's experiments on real data: normalized networks trained by full-batch GD+WD.

For each seed and intrinsic learning rate ``eta * wd`` (``eta`` fixed, ``wd`` varied), a normalized
network (BatchNorm or LayerNorm, no biases or affine parameters, fixed last layer: exactly
scale-invariant per layer) is trained on a bundled dataset for ``tau_end / (2 eta wd)`` steps
(``tau = 2 eta wd t``, docs/theory.md section 3; the stored ``t_eta_wd = t eta wd = tau / 2`` is
LLA22's time axis), tracking every ``sharpness_every`` steps the multi-group EoS quantity (top
eigenvalue of ``D^{1/2} H D^{1/2}``, ``D`` = per-layer effective learning rates) and the spherical
sharpness (each layer normalized), with train/test loss and accuracy at every recorded row.
Ablations at the middle ``eta * wd``: no weight decay, and no normalization (the plain network with
weight decay: not scale-invariant, so only ``eta * lambda_1`` is meaningful there).

Stored per run ``<run>.``: step, eos, sharpness, norm, group_eta_eff, loss, and the metrics of
``NetProblem.evaluate`` at every row; the summary has the onset, the mean EoS quantity over the
EoS phase, the sharpness at the onset and at the end, and the final accuracies.

Where the EoS quantity is measured matters (measured here). LLA22's ``eta_eff lambda_1 -> 2``
refers to the point ``Phi(w)`` on the manifold that the oscillating iterates straddle, not to the
iterates: with cross-entropy at ``eta * wd = 2e-3`` the quantity at the iterates has quantiles
5/25/50/75/95% = 2.18/2.64/3.00/3.31/4.49 over the last 200 steps (an inflated EoS whose
oscillation inflates ``lambda_1`` through the third derivative), while at the midpoint of
consecutive iterates, ``(w_t + w_{t+1}) / 2``, it is 1.93/2.05/2.16/2.24/2.36. The spherical
sharpness at the iterates is inflated the same way. So both are also measured at midpoints
(``eos_mid``, ``sharpness_mid``; see :func:`midpoint_rows` for which rows), and the summary has
the midpoint means next to the iterate ones (``eos_mid_mean_eos_phase``,
``sharpness_at_onset_mid``, ``sharpness_end_mid``: the latter is what the accuracy figure and the
checks use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from sims import data as datasets
from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, collect_runs, resumable_gd_wd
from theory.analysis import midpoint
from theory.core import validate as check
from theory.engine import LanczosTracker, SaveAt
from theory.engine.gd import GDResult
from theory.problems import nets

NAME = "networks"
ABLATIONS = ("no_wd", "no_norm")
MID_ROWS = 40  # rows over the run, and over the settled EoS phase, measured at midpoints


@dataclass(frozen=True)
class Config:
    """Settings of the network experiments (``wd = eta_wd / eta``)."""

    dataset: Literal["digits", "mnist1d", "cifar10"] = field(
        default="digits", metadata={"help": "bundled data (cifar10 needs --cifar-path)"}
    )
    cifar_path: str = field(default="", metadata={"help": "directory of CIFAR-10 batches"})
    n_train: int = field(default=1024, metadata={"help": "training samples"})
    model: Literal["mlp", "vgg", "resnet"] = field(default="mlp", metadata={"help": "architecture"})
    widths: tuple[int, ...] = field(default=(64, 64), metadata={"help": "MLP hidden widths"})
    channels: tuple[int, ...] = field(
        default=(16, 32), metadata={"help": "VGG channels, or ResNet channels per stage"}
    )
    blocks: int = field(default=3, metadata={"help": "ResNet basic blocks per stage"})
    norm: Literal["batch", "layer"] = field(default="batch", metadata={"help": "normalization"})
    loss: Literal["ce", "mse"] = field(default="ce", metadata={"help": "training loss"})
    eta: float = field(default=0.5, metadata={"help": "learning rate"})
    eta_wd: tuple[float, ...] = field(
        default=(1e-3, 2e-3, 4e-3), metadata={"help": "intrinsic learning rates eta*wd"}
    )
    tau_end: float = field(
        default=6.0,
        metadata={"help": "train until tau = 2 eta wd t = tau_end (t eta wd = tau_end / 2)"},
    )
    ablations: tuple[str, ...] = field(default=ABLATIONS, metadata={"help": "no_wd, no_norm"})
    seeds: tuple[int, ...] = field(default=(0,), metadata={"help": "seeds (init, kicks)"})
    record_every: int = field(default=10, metadata={"help": "record a row every N steps"})
    sharpness_every: int = field(default=5, metadata={"help": "track sharpness every N steps"})
    dtype: Literal["float32", "float64"] = field(default="float32", metadata={"help": "precision"})

    def __post_init__(self) -> None:
        if self.dataset == "cifar10" and not self.cifar_path:
            raise ValueError("dataset='cifar10' needs cifar_path (a directory of CIFAR-10 batches)")
        check.among(self.ablations, "ablations", ABLATIONS, empty=True)
        check.all_in_interval(self.eta_wd, "eta_wd", 0, 0.1)
        check.positive_fields(self, "eta", "tau_end")
        check.int_fields_at_least(self, 1, "record_every", "sharpness_every", "blocks")
        if self.record_every % self.sharpness_every:
            raise ValueError("sharpness_every must divide record_every")
        if not self.seeds:
            raise ValueError("seeds must not be empty")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: digits, MLP 64-64, 3 eta*wd, 1 seed, ``t eta wd`` up to 3 (about 3 min on
        2 cores); ``full``: 256-256, 3 seeds, up to 7 (46 min on 2 cores).

        The wider network starts with larger per-layer norms, hence a smaller effective rate:
        its EoS onset is at ``t eta wd = 2.5-2.8`` against 0.7-0.8 for 64-64, so the full runs
        last until 7. Measured with this preset (2026-12-01): with cross-entropy the 256-256
        network does not settle at the EoS the way 64-64 does. It interpolates early, its
        sharpness falls with the loss (355-576 -> 3-5 at the onset; 355 -> 10 without weight
        decay), and after reaching 2 it catapults (train accuracy down to ~0.5 for a few steps,
        ``S`` up by 2 orders of magnitude), relaxes and repeats: midpoint EoS means over the
        settled phase 1.08-1.84 in 7 of 9 runs. So the full figures show that regime, not
        LLA22's steady one (MSE at ``eta = 0.5`` is no alternative: it starts above 2)."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(
                widths=(256, 256),
                seeds=(0, 1, 2),
                eta_wd=(1e-3, 2e-3, 4e-3),
                tau_end=14.0,
                sharpness_every=2,
            )
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def _dataset(cfg: Config) -> datasets.Dataset:
    dtype = np.float64 if cfg.dtype == "float64" else np.float32
    if cfg.dataset == "digits":
        return datasets.digits(n_train=cfg.n_train, images=cfg.model != "mlp", dtype=dtype)
    if cfg.dataset == "mnist1d":
        ds = datasets.mnist1d(dtype=dtype)
        if cfg.model != "mlp":
            raise ValueError(
                f"model={cfg.model!r} needs image data (digits or cifar10), not mnist1d"
            )
        return ds
    return datasets.cifar10(cfg.cifar_path, n_train=cfg.n_train, dtype=dtype)


def make_network(cfg: Config, seed: int, norm: str) -> nets.NetProblem:
    """The training problem of one run (``norm="none"`` for the plain-network ablation)."""
    ds = _dataset(cfg)
    model: Any
    if cfg.model == "mlp":
        model = nets.mlp(cfg.widths, norm=norm)  # type: ignore[arg-type]
    elif cfg.model == "vgg":
        model = nets.vgg(cfg.channels, norm=norm)  # type: ignore[arg-type]
    else:
        model = nets.resnet(cfg.channels, blocks=cfg.blocks, norm=norm)  # type: ignore[arg-type]
    return nets.make_problem(
        model,
        ds.x_train,
        ds.y_train,
        ds.x_test,
        ds.y_test,
        loss=cfg.loss,
        num_outputs=ds.num_classes,
        seed=seed,
        dtype=np.dtype(cfg.dtype),
    )


def runs(cfg: Config) -> list[dict[str, Any]]:
    """The run list: name, seed, eta*wd (0 for no WD), norm."""
    out = []
    for seed in cfg.seeds:
        for ewd in cfg.eta_wd:
            out.append(
                {
                    "name": f"s{seed}_ewd{ewd:g}",
                    "seed": seed,
                    "eta_wd": ewd,
                    "wd": ewd / cfg.eta,
                    "norm": cfg.norm,
                    "kind": "main",
                }
            )
    mid = sorted(cfg.eta_wd)[len(cfg.eta_wd) // 2]
    seed = cfg.seeds[0]
    if "no_wd" in cfg.ablations:
        out.append(
            {
                "name": f"s{seed}_no_wd",
                "seed": seed,
                "eta_wd": mid,
                "wd": 0.0,
                "norm": cfg.norm,
                "kind": "no_wd",
            }
        )
    if "no_norm" in cfg.ablations:
        out.append(
            {
                "name": f"s{seed}_no_norm",
                "seed": seed,
                "eta_wd": mid,
                "wd": mid / cfg.eta,
                "norm": "none",
                "kind": "no_norm",
            }
        )
    return out


def _steps(cfg: Config, ewd: float) -> int:
    every = cfg.record_every
    return max(every, round(cfg.tau_end / (2 * ewd) / every) * every)


def _one(
    cfg: Config, spec: dict[str, Any], ckpt: Checkpoints | None, progress: bool
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    prob = make_network(cfg, spec["seed"], spec["norm"])
    steps = _steps(cfg, spec["eta_wd"])
    invariant = spec["norm"] != "none"
    res = resumable_gd_wd(
        prob.loss,
        prob.w0,
        name=spec["name"],
        steps=steps,
        checkpoints=ckpt,
        desc=f"{NAME}/{spec['name']}",
        progress=progress,
        eta=cfg.eta,
        wd=spec["wd"],
        tracker=LanczosTracker(every=cfg.sharpness_every),
        saveat=SaveAt(every=cfg.record_every),
        groups=prob.groups,
        key=jax.random.PRNGKey(spec["seed"]),
        perturbation=0.0,
        check_invariance=invariant,
        chunk_steps=max(cfg.record_every, steps // 10),
        on_nonfinite="stop",
        # A fixed eta for every network and ablation: a start above the edge (a catapult, as in
        # the full preset) is one of the measured outcomes, stored in eos[0].
        warn_above_edge=False,
    )
    assert res.w is not None
    metrics = jax.vmap(prob.evaluate)(jnp.asarray(res.w))
    arrays = {
        k: getattr(res, k)
        for k in ("step", "eos", "sharpness", "norm", "loss", "group_eta_eff", "lanczos_residual")
    }
    arrays.update({k: np.asarray(v) for k, v in metrics.items()})
    arrays["t_eta_wd"] = res.step * spec["eta_wd"]  # LLA22's time axis: tau / 2
    arrays["eos_mid"], arrays["sharpness_mid"] = midpoint_columns(
        prob.loss, res, cfg.eta, spec["wd"]
    )
    info = {
        **spec,
        "steps": steps,
        "onset": res.onset_step,
        "diverged_at": res.diverged_at,
        **_summary(res, metrics, invariant),
    }
    info.update(_summary_mid(res, arrays["eos_mid"], arrays["sharpness_mid"]))
    return arrays, info


def _settled(res: GDResult) -> np.ndarray:
    """Rows of the settled EoS phase: from a quarter of the way between onset and the end."""
    on = res.onset_step
    if on is None:
        return np.zeros(len(res.step), bool)
    return res.step >= on + (res.step[-1] - on) // 4


def _onset_row(res: GDResult) -> int | None:
    """Index of the first recorded row at or after the EoS onset (``None``: no onset)."""
    if res.onset_step is None:
        return None
    return min(int(np.searchsorted(res.step, res.onset_step)), len(res.step) - 1)


def midpoint_rows(res: GDResult) -> np.ndarray:
    """Row indices measured at midpoints: up to :data:`MID_ROWS` evenly spaced over the whole
    run, up to :data:`MID_ROWS` over the settled EoS phase, the onset row and the last row."""

    def spread(rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return rows
        return rows[np.unique(np.linspace(0, len(rows) - 1, min(MID_ROWS, len(rows))).astype(int))]

    n = len(res.step)
    parts = [spread(np.arange(n)), spread(np.flatnonzero(_settled(res))), [n - 1]]
    i_on = _onset_row(res)
    if i_on is not None:
        parts.append([i_on])
    return np.unique(np.concatenate([np.asarray(p, int) for p in parts]))


def midpoint_columns(
    loss: Any, res: GDResult, eta: float, wd: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(eos_mid, sharpness_mid)``: the EoS quantity ``eta * lambda_1(H)`` and the spherical
    sharpness ``lambda_1(M H M)`` (``M`` the per-group norms, so ``M H M`` is the Hessian at the
    per-group normalized point) at ``(w_t + w_{t+1}) / 2``, on the rows of :func:`midpoint_rows`
    (NaN elsewhere), by :func:`theory.analysis.midpoint.midpoint_curvature`. ``w_{t+1}`` is
    recomputed from the stored ``w_t`` (the networks runs have no perturbation). Lanczos for
    the top two pairs of each operator, warm started from the previous row's eigenvectors;
    rows after a divergence stay NaN."""
    n = len(res.step)
    eos, sharp = np.full(n, np.nan), np.full(n, np.nan)
    if res.w is None:
        return eos, sharp
    rows = midpoint_rows(res)
    rows = rows[np.all(np.isfinite(res.w[rows]), axis=1)]
    if not rows.size:
        return eos, sharp
    w = jnp.asarray(res.w)
    curv = midpoint.midpoint_curvature(
        loss,
        w[rows],
        eta,
        wd,
        groups=tuple(res.groups),
        k=2,
        lanczos_iters=48,
        v0=jnp.ones_like(w[0]),
    )
    assert curv.hessian is not None and curv.spherical is not None
    eos[rows] = eta * np.asarray(curv.hessian[:, 0])
    sharp[rows] = np.asarray(curv.spherical[:, 0])
    return eos, sharp


def _summary_mid(res: GDResult, eos_mid: np.ndarray, sharp_mid: np.ndarray) -> dict[str, Any]:
    """The midpoint counterparts of the summary's EoS mean and sharpness at onset and end."""
    out: dict[str, Any] = {}
    settled = _settled(res) & np.isfinite(eos_mid)
    if np.any(settled):
        out["eos_mid_mean_eos_phase"] = float(np.mean(eos_mid[settled]))
        out["eos_mid_std_eos_phase"] = float(np.std(eos_mid[settled]))
    ok = np.isfinite(sharp_mid)
    if not np.any(ok):
        return out
    out["sharpness_start_mid"] = float(sharp_mid[np.flatnonzero(ok)[0]])
    last = ok & (res.step >= res.step[-1] - (res.step[-1] - res.step[0]) // 10)
    out["sharpness_end_mid"] = float(np.mean(sharp_mid[last if np.any(last) else ok]))
    i_on = _onset_row(res)
    if i_on is not None and ok[i_on]:
        out["sharpness_at_onset_mid"] = float(sharp_mid[i_on])
    return out


def _summary(res: GDResult, metrics: dict[str, Any], invariant: bool) -> dict[str, Any]:
    n = len(res.step)
    out: dict[str, Any] = {k: float(np.asarray(v)[-1]) for k, v in metrics.items()}
    i_on = _onset_row(res)
    if i_on is not None:
        after = _settled(res)
        out["eos_mean_eos_phase"] = float(np.nanmean(res.eos[after]))
        out["eos_std_eos_phase"] = float(np.nanstd(res.eos[after]))
        out["sharpness_at_onset"] = float(res.sharpness[i_on])
    out["sharpness_start"] = float(res.sharpness[0])
    out["sharpness_end"] = float(np.nanmean(res.sharpness[-max(1, n // 20) :]))
    out["eos_end"] = float(np.nanmean(res.eos[-max(1, n // 20) :]))
    out["scale_invariant"] = invariant
    return out


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every run of ``cfg`` (finished runs and GD snapshots resumed from ``checkpoints``)."""
    dtype_from_config(cfg.dtype)
    specs = {spec["name"]: spec for spec in runs(cfg)}

    def one(_: int, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return _one(cfg, specs[name], checkpoints, progress)

    return collect_runs(list(specs), one, checkpoints)


def _report(stored: StoredRun) -> list[str]:
    lines = []
    for name, s in stored.meta["summary"].items():
        acc = s.get("test_accuracy", float("nan"))
        eos = s.get("eos_mean_eos_phase", float("nan"))
        mid = s.get("eos_mid_mean_eos_phase", float("nan"))
        s_mid = s.get("sharpness_end_mid", float("nan"))
        lines.append(
            f"{name:16s} onset {s['onset']!s:>6s}  <eos> {eos:6.3f}  <eos mid> {mid:6.3f}  "
            f"S {s['sharpness_start']:8.3g} -> {s['sharpness_end']:8.3g} (mid {s_mid:8.3g})  "
            f"test acc {acc:.4f}"
        )
    return lines


SIM = Simulation(
    NAME, Config, run, __doc__, report=_report, meta=lambda cfg: {"seeds": list(cfg.seeds)}
)
run_and_store = SIM.run_and_store
main = SIM.main
