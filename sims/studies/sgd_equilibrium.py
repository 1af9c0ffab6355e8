"""SGD+WD on a normalized network: the angular-update equilibrium and the stochastic edge.

A LayerNorm MLP on digits (scale-invariant in each trained weight matrix; the loss is a mean
over examples, so a batch's loss is an unbiased estimate of the whole loss) trained by
minibatch SGD with coupled weight decay and heavy-ball momentum
(:func:`theory.engine.sgd.sgd_wd`), one run per momentum ``beta``. Tracked every
``sharpness_every`` steps (:class:`theory.engine.stochastic.StochasticTracker`): the full-batch
sharpness ``lambda_1(hess L(w))``, the batch sharpness ``g_B^T H_B g_B / |g_B|^2`` of the step's
batch, the full Hessian's Rayleigh quotients along ``g_B`` and along the executed update, and
on every row the executed angle ``angle(w_t, w_{t+1})`` (whole vector and per group) and the
per-group batch-gradient norms.

Predictions (``docs/engine.md``, "Minibatch SGD"):

* the angular update per step settles at ``arccos(1 - eta wd / (1 + beta)) ~ sqrt(2 eta wd /
  (1 + beta))`` [derived: :func:`theory.engine.sgd.angular_equilibrium`], for the whole vector
  and every group, in the sense ``E[1 - cos theta_t] = eta wd / (1 + beta)``: the summary's
  ``angle_late`` is ``arccos(1 - mean(1 - cos theta_t))`` over EVERY step of the late rows'
  blocks (about the RMS angle; the tracker's block means). ``angle_late_rows`` is the same
  statistic of the recorded steps only, biased at the Edge of Stability when ``record_every``
  is even (the rows then see one parity of the period-2 oscillation), and ``angle_late_mean``
  the plain mean of the recorded angles (smaller where batches make the angle fluctuate);
* each group's norm settles where the norm recursion is stationary:
  ``|w_g|^4 = eta E[G_g^2] / (wd (2 - eta wd) (1 - beta))`` with ``G_g = |w_g| |g_{B,g}|`` the
  spherical batch-gradient norm: for ``beta = 0`` the stationary point of
  ``|w_{t+1}|^2 = (1 - eta wd)^2 |w_t|^2 + eta^2 G^2 / |w_t|^2`` [derived], for ``beta > 0``
  under the model that successive batch gradients are uncorrelated (``E|m|^2 = E|g|^2 /
  (1 - beta^2)``) [model];
* the batch sharpness in the engine's units, ``eta * BS`` (which is ``eta_eff`` times the batch
  sharpness of ``w_hat`` per group: the Hessian at ``w`` carries ``1 / |w_g|^2``), sits at the
  stochastic edge ``2 (1 + beta) - eta wd`` (:func:`theory.engine.sgd.sgd_edge` times
  ``eta``; Andreyev & Beneventano's ``2 / eta`` for ``beta = wd = 0``) [empirical], while the
  full-batch ``eta * lambda_1`` stays below it.

Stored per run ``<run>.`` (rows every ``record_every`` steps): ``step``, ``norm``,
``group_norms``, ``angle``, ``group_angle``, ``group_grad_norm``, ``block_one_minus_cos``,
``block_group_one_minus_cos`` (means over the steps since the previous row), ``batch_loss``,
``full_loss``, ``full_eos`` (``eta lambda_1``), ``batch_eos``, ``step_eos``, ``update_eos``
(``eta`` times the batch, step and update sharpness). The summary has the predictions and the
means over the last ``late_fraction`` of the rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import numpy as np

from sims import data as datasets
from sims._checkpoint import Checkpoints
from sims._runtime import Progress, dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, collect_runs
from theory.core import validate as check
from theory.core.minibatch import Minibatch
from theory.engine import SaveAt
from theory.engine.results import GDSnapshot
from theory.engine.sgd import angular_equilibrium, sgd_edge, sgd_wd
from theory.engine.stochastic import StochasticTracker
from theory.problems import nets

NAME = "sgd_equilibrium"


@dataclass(frozen=True)
class Config:
    """Settings of the SGD+WD runs (one run per momentum)."""

    n_train: int = field(default=512, metadata={"help": "digits training samples"})
    widths: tuple[int, ...] = field(default=(32, 32), metadata={"help": "MLP hidden widths"})
    loss: Literal["ce", "mse"] = field(default="ce", metadata={"help": "training loss"})
    eta: float = field(default=0.5, metadata={"help": "learning rate"})
    wd: float = field(default=1e-2, metadata={"help": "weight decay (coupled, PyTorch)"})
    momenta: tuple[float, ...] = field(default=(0.0, 0.9), metadata={"help": "momenta beta"})
    batch_size: int = field(default=32, metadata={"help": "examples per batch"})
    steps: int = field(default=4000, metadata={"help": "SGD steps per run"})
    record_every: int = field(default=10, metadata={"help": "record a row every N steps"})
    sharpness_every: int = field(default=10, metadata={"help": "track curvature every N steps"})
    late_fraction: float = field(
        default=0.5, metadata={"help": "the last fraction of rows averaged in the summary"}
    )
    seed: int = field(default=0, metadata={"help": "initialization and batches"})
    dtype: Literal["float32", "float64"] = field(default="float32", metadata={"help": "precision"})

    def __post_init__(self) -> None:
        check.positive_fields(self, "eta")
        check.nonnegative_fields(self, "wd")
        check.in_interval(self.late_fraction, "late_fraction", 0, 1)
        for beta in self.momenta:
            check.finite(beta, "momenta")
            if not 0 <= beta < 1:
                raise ValueError(f"momenta values must be in [0, 1), got {self.momenta!r}")
        if not self.momenta:
            raise ValueError("momenta must not be empty")
        if self.eta * self.wd >= 1:
            raise ValueError(f"eta * wd must be < 1, got eta={self.eta}, wd={self.wd}")
        check.all_ints_at_least(self.widths, "widths", 1)
        check.int_fields_at_least(
            self, 1, "n_train", "batch_size", "steps", "record_every", "sharpness_every"
        )
        check.int_fields_at_least(self, 0, "seed")
        if self.batch_size > self.n_train:
            raise ValueError(
                f"batch_size = {self.batch_size} is larger than the data: n_train = {self.n_train}"
            )
        if self.record_every % self.sharpness_every:
            raise ValueError(
                f"sharpness_every ({self.sharpness_every}) must divide record_every "
                f"({self.record_every})"
            )

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: 4000 steps per run; ``full``: 16000 steps, rows every 20 steps."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(steps=16_000, record_every=20, sharpness_every=20, n_train=1024)
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def run_name(beta: float) -> str:
    return f"beta{beta:g}"


def problem(cfg: Config) -> tuple[Minibatch, Any, tuple[int, ...]]:
    """``(Minibatch objective, w0, groups)`` of the LayerNorm MLP on digits."""
    dtype = dtype_from_config(cfg.dtype)
    ds = datasets.digits(n_train=cfg.n_train, dtype=np.dtype(dtype))
    prob = nets.make_problem(
        nets.mlp(cfg.widths, norm="layer"),
        ds.x_train,
        ds.y_train,
        ds.x_test,
        ds.y_test,
        loss=cfg.loss,
        num_outputs=ds.num_classes,
        seed=cfg.seed,
        dtype=dtype,
    )
    whole = nets.chunked_objective(prob, chunk_size=cfg.n_train)
    objective = Minibatch(whole.chunk_loss, whole.data, cfg.batch_size)
    return objective, prob.w0, tuple(prob.groups)


def _late_mean(a: np.ndarray, frac: float) -> Any:
    start = int(len(a) * (1 - frac))
    return np.nanmean(a[start:], axis=0)


def mean_square_angle(angles: np.ndarray, frac: float) -> Any:
    """``arccos(1 - mean(1 - cos theta_t))`` over the late rows (per column): the statistic
    the equilibrium predicts (``E[1 - cos theta] = eta wd / (1 + beta)``), about the RMS angle.
    The plain mean angle is smaller where the angle fluctuates from batch to batch."""
    return np.arccos(1 - _late_mean(2 * np.sin(angles / 2) ** 2, frac))


def _one(
    cfg: Config, beta: float, checkpoints: Checkpoints | None, progress: bool
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    objective, w0, groups = problem(cfg)
    name = run_name(beta)
    resume = checkpoints.load_snapshot(name) if checkpoints is not None else None
    save = None
    if checkpoints is not None:
        ckpt = checkpoints

        def save(snap: GDSnapshot) -> None:
            ckpt.save_snapshot(name, snap)

    with Progress(f"{NAME} {name}", cfg.steps, progress) as bar:
        res = sgd_wd(
            objective,
            None,
            w0,
            eta=cfg.eta,
            wd=cfg.wd,
            momentum=beta,
            batch_size=cfg.batch_size,
            steps=cfg.steps,
            groups=groups,
            tracker=StochasticTracker(every=cfg.sharpness_every),
            saveat=SaveAt(every=cfg.record_every, iterates=False),
            key=jax.random.PRNGKey(cfg.seed),
            chunk_steps=max(cfg.record_every, cfg.steps // 10),
            callback=bar,
            on_snapshot=save,
            resume=resume,
        )
    obs = res.observed
    # The final row (step = steps) is a forced extra row: dropped, so rows are evenly spaced.
    keep = slice(0, len(res.step) - 1)
    eta = cfg.eta
    arrays = {
        "step": res.step[keep],
        "norm": res.norm[keep],
        "group_norms": res.group_norms[keep],
        "angle": obs["angle"][keep],
        "group_angle": obs["group_angle"][keep],
        "group_grad_norm": obs["group_grad_norm"][keep],
        "block_one_minus_cos": obs["block_one_minus_cos"][keep],
        "block_group_one_minus_cos": obs["block_group_one_minus_cos"][keep],
        "batch_loss": res.loss[keep],
        "full_loss": obs["full_loss"][keep],
        "full_eos": res.eos[keep],
        "batch_eos": eta * obs["batch_sharpness"][keep],
        "step_eos": eta * obs["step_sharpness"][keep],
        "update_eos": eta * obs["update_sharpness"][keep],
    }
    arrays = {k: np.asarray(v, np.float64) for k, v in arrays.items()}
    frac = cfg.late_fraction
    sph_g2 = (arrays["group_grad_norm"] * arrays["group_norms"]) ** 2  # G_g^2 per row
    norm_pred = (
        eta * _late_mean(sph_g2, frac) / (cfg.wd * (2 - eta * cfg.wd) * (1 - beta))
    ) ** 0.25
    norm_meas = _late_mean(arrays["group_norms"], frac)
    edge = eta * sgd_edge(eta, cfg.wd, beta)
    info = {
        "momentum": beta,
        "eta_wd": eta * cfg.wd,
        "angle_predicted": angular_equilibrium(eta, cfg.wd, beta),
        "angle_first_order": angular_equilibrium(eta, cfg.wd, beta, exact=False),
        "angle_late": float(np.arccos(1 - _late_mean(arrays["block_one_minus_cos"], frac))),
        "angle_late_rows": float(mean_square_angle(arrays["angle"], frac)),
        "angle_late_mean": float(_late_mean(arrays["angle"], frac)),
        "angle_late_std": float(
            np.nanstd(arrays["angle"][int(len(arrays["angle"]) * (1 - frac)) :])
        ),
        "group_angle_late": [
            float(a) for a in np.arccos(1 - _late_mean(arrays["block_group_one_minus_cos"], frac))
        ],
        "group_norm_predicted": [float(a) for a in norm_pred],
        "group_norm_late": [float(a) for a in norm_meas],
        "group_norm_rel_err_max": float(np.max(np.abs(norm_meas / norm_pred - 1))),
        "group_norm_start": [float(a) for a in arrays["group_norms"][0]],
        "edge": edge,
        "edge_low": eta * (2 * (1 - beta) / eta - cfg.wd),
        "batch_eos_late": float(_late_mean(arrays["batch_eos"], frac)),
        "full_eos_late": float(_late_mean(arrays["full_eos"], frac)),
        "step_eos_late": float(_late_mean(arrays["step_eos"], frac)),
        "update_eos_late": float(_late_mean(arrays["update_eos"], frac)),
        "full_eos_max_late": float(
            np.nanmax(arrays["full_eos"][int(len(arrays["full_eos"]) * (1 - frac)) :])
        ),
        "full_loss_end": float(arrays["full_loss"][-1]),
        "full_loss_start": float(arrays["full_loss"][0]),
    }
    return arrays, info


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    dtype_from_config(cfg.dtype)
    betas = {run_name(b): b for b in cfg.momenta}

    def one(_: int, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return _one(cfg, betas[name], checkpoints, progress)

    return collect_runs(list(betas), one, checkpoints, desc=NAME, progress=progress)


def _report(stored: StoredRun) -> list[str]:
    lines = []
    for name, s in stored.meta["summary"].items():
        lines.append(
            f"{name}: angle {float(s['angle_late']):.4g} (predicted "
            f"{float(s['angle_predicted']):.4g}); group norms off by at most "
            f"{100 * float(s['group_norm_rel_err_max']):.1f}%; "
            f"eta*BS {float(s['batch_eos_late']):.3g}, "
            f"eta*lambda_1 {float(s['full_eos_late']):.3g} (edge {float(s['edge']):.3g})"
        )
    return lines


SIM = Simulation(NAME, Config, run, __doc__, report=_report)
run_and_store = SIM.run_and_store
main = SIM.main
