"""LLA22's appendix experiment: matrix completion with BatchNorm, trained by full-batch GD+WD.

A random rank-``true_rank`` matrix ``M*`` (``num_rows x num_cols``, unit-variance entries) is
observed on ``num_observed`` uniformly chosen entries (the training set ``Omega``); every other
entry is held out (the test set). The model is :func:`theory.problems.nets.make_matrix_completion`:
``U (n, k)``, ``V (m, k)`` predict ``p_ij = <u_i, v_j>``, BatchNorm over ``Omega`` and a fixed
affine head; the MSE loss is scale-invariant in ``U`` and in ``V`` separately (two groups). The
model details of LLA22's appendix are not known here (docs/papers.md): this construction is ours.

For each seed (the initialization; the data instance is fixed by ``data_seed``) and intrinsic
learning rate ``eta * wd`` (``eta`` fixed, ``wd`` varied), full-batch GD+WD runs for ``tau_end / (2
eta wd)`` steps (``tau = 2 eta wd t``, docs/theory.md section 3), tracking every
``sharpness_every`` steps the two-group EoS quantity ``eta * lambda_1(hess L(w))`` and the
spherical sharpness (``U`` and ``V`` each normalized). Ablations at the middle ``eta * wd`` and the
first seed: no weight decay (``wd = 0``), and no normalization (plain factorization ``p_ij`` with
the same ``eta`` and ``wd``; not scale-invariant, so only ``eta * lambda_1`` is meaningful there:
its ``sharpness`` is stored as NaN).

At the EoS the iterate alternates along the top eigenvector (a period-2 orbit), and metrics at
the iterate include that oscillation. Each row is therefore also evaluated at the midpoint of the
iterate and the next one, ``w_t - (eta / 2)(grad L(w_t) + wd w_t)``, which cancels the oscillation
to first order (prefix ``mid_``): the error of the solution GD hovers around.

Stored per run ``<run>.``: step, t_eta_wd (LLA22's time ``t eta wd = tau / 2``), eos, sharpness,
norm, group_norms ``(n, 2)``, group_eta_eff ``(n, 2)``, loss, lanczos_residual, and train/test loss
and relative error ``|f - y| / |y|`` at the iterate and at the midpoint. The summary has the onset,
the mean EoS quantity over the settled EoS phase, the sharpness at the start, at the onset, halfway
and at the end, and the final errors.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, collect_runs, resumable_gd_wd
from theory.core import validate as check
from theory.core.types import Array, LossFn
from theory.engine import LanczosTracker, SaveAt
from theory.problems import nets

NAME = "matrix_completion"
ABLATIONS = ("no_wd", "no_norm")
_EVAL_BLOCK = 64  # rows evaluated per compiled call (one program for every run length)


@dataclass(frozen=True)
class Config:
    """Settings of the matrix-completion experiment (``wd = eta_wd / eta``)."""

    num_rows: int = field(default=20, metadata={"help": "rows n of the target matrix"})
    num_cols: int = field(default=20, metadata={"help": "columns m of the target matrix"})
    true_rank: int = field(default=2, metadata={"help": "rank r of the target M*"})
    rank: int = field(default=5, metadata={"help": "model rank k (U is n x k, V is m x k)"})
    num_observed: int = field(default=200, metadata={"help": "observed (training) entries"})
    data_seed: int = field(default=0, metadata={"help": "seed of M* and of the observed set"})
    eta: float = field(default=0.5, metadata={"help": "learning rate"})
    eta_wd: tuple[float, ...] = field(
        default=(1e-3, 2e-3, 4e-3), metadata={"help": "intrinsic learning rates eta*wd"}
    )
    tau_end: float = field(
        default=6.0,
        metadata={"help": "train until tau = 2 eta wd t = tau_end (t eta wd = tau_end / 2)"},
    )
    ablations: tuple[str, ...] = field(default=ABLATIONS, metadata={"help": "no_wd, no_norm"})
    seeds: tuple[int, ...] = field(default=(0,), metadata={"help": "seeds (init, Lanczos)"})
    record_every: int = field(default=10, metadata={"help": "record a row every N steps"})
    sharpness_every: int = field(default=5, metadata={"help": "track sharpness every N steps"})
    chunk_steps: int = field(
        default=500,
        metadata={"help": "steps per compiled chunk = checkpoint interval (same for all runs)"},
    )
    dtype: Literal["float32", "float64"] = field(default="float32", metadata={"help": "precision"})

    def __post_init__(self) -> None:
        check.int_fields_at_least(self, 1, "num_rows", "num_cols", "true_rank", "rank")
        check.int_fields_at_least(self, 1, "num_observed")
        if self.true_rank > min(self.num_rows, self.num_cols):
            raise ValueError(
                f"true_rank must be <= min(num_rows, num_cols) = "
                f"{min(self.num_rows, self.num_cols)}, got {self.true_rank}"
            )
        if not 2 <= self.num_observed < self.num_rows * self.num_cols:
            raise ValueError(
                f"num_observed must be in [2, num_rows * num_cols = "
                f"{self.num_rows * self.num_cols}) (the rest is the test set), "
                f"got {self.num_observed}"
            )
        check.among(self.ablations, "ablations", ABLATIONS, empty=True)
        check.all_in_interval(self.eta_wd, "eta_wd", 0, 0.1)
        check.positive_fields(self, "eta", "tau_end")
        check.int_fields_at_least(self, 1, "record_every", "sharpness_every", "chunk_steps")
        if self.record_every % self.sharpness_every:
            raise ValueError("sharpness_every must divide record_every")
        if self.chunk_steps % self.record_every:
            raise ValueError("record_every must divide chunk_steps")
        if not self.seeds:
            raise ValueError("seeds must not be empty")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: 20x20, rank 2, k = 5, half observed, 3 eta*wd, 1 seed (about a minute of
        CPU, almost all of it XLA compilation of the two models' GD programs); ``full``: 50x50,
        rank 3, k = 10, 40% observed, 4 eta*wd, 3 seeds, sharpness every 2 steps."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(
                num_rows=50,
                num_cols=50,
                true_rank=3,
                rank=10,
                num_observed=1000,
                eta_wd=(5e-4, 1e-3, 2e-3, 4e-3),
                tau_end=8.0,
                seeds=(0, 1, 2),
                sharpness_every=2,
                chunk_steps=1000,
            )
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def make_data(cfg: Config) -> nets.MatrixCompletionData:
    """The target matrix and the observed/held-out split of ``cfg``."""
    return nets.matrix_completion_data(
        cfg.num_rows,
        cfg.num_cols,
        true_rank=cfg.true_rank,
        num_observed=cfg.num_observed,
        seed=cfg.data_seed,
    )


@functools.lru_cache(maxsize=8)
def make_model(cfg: Config, seed: int, norm: Literal["batch", "none"]) -> nets.NetProblem:
    """The training problem of one run (``norm="none"``: the plain-factorization ablation).

    Cached: the runs of one seed and model share it (building one compiles Flax's init).
    """
    return nets.make_matrix_completion(
        make_data(cfg), rank=cfg.rank, seed=seed, norm=norm, dtype=np.dtype(cfg.dtype)
    )


def runs(cfg: Config) -> list[dict[str, Any]]:
    """The run list: name, seed, eta*wd (the time scale), wd (0 without WD), norm, kind."""
    out = [
        {
            "name": f"s{seed}_ewd{ewd:g}",
            "seed": seed,
            "eta_wd": ewd,
            "wd": ewd / cfg.eta,
            "norm": "batch",
            "kind": "main",
        }
        for seed in cfg.seeds
        for ewd in cfg.eta_wd
    ]
    mid = sorted(cfg.eta_wd)[len(cfg.eta_wd) // 2]
    seed = cfg.seeds[0]
    base = {"seed": seed, "eta_wd": mid}
    if "no_wd" in cfg.ablations:
        out.append({"name": f"s{seed}_no_wd", **base, "wd": 0.0, "norm": "batch", "kind": "no_wd"})
    if "no_norm" in cfg.ablations:
        out.append(
            {
                "name": f"s{seed}_no_norm",
                **base,
                "wd": mid / cfg.eta,
                "norm": "none",
                "kind": "no_norm",
            }
        )
    return out


def _steps(cfg: Config, ewd: float) -> int:
    every = cfg.record_every
    return max(every, round(cfg.tau_end / (2 * ewd) / every) * every)


@eqx.filter_jit
def _metrics_block(
    loss: LossFn, evaluate: nets.NetEvaluate, w: Array, eta: Array, wd: Array
) -> dict[str, Array]:
    """Metrics of rows ``w`` ``(B, D)`` at the iterate and at the midpoint with the next one."""

    def one(w: Array) -> dict[str, Array]:
        g = jax.grad(loss)(w)
        mid = w - 0.5 * eta * (g + wd * w)
        at_w, at_mid = evaluate(w), evaluate(mid)
        return {**at_w, **{f"mid_{k}": v for k, v in at_mid.items()}}

    return jax.vmap(one)(w)


def evaluate_rows(
    prob: nets.NetProblem, w: np.ndarray, eta: float, wd: float
) -> dict[str, np.ndarray]:
    """Train/test loss and relative error of every row of ``w`` ``(n, D)``, at the iterate and
    at ``w - (eta/2)(grad L(w) + wd w)`` (prefix ``mid_``), in blocks of one compiled shape."""
    n = len(w)
    pad = -n % _EVAL_BLOCK
    rows = np.concatenate([w, np.repeat(w[-1:], pad, axis=0)]) if pad else w
    dtype = prob.w0.dtype
    eta_a, wd_a = jnp.asarray(eta, dtype), jnp.asarray(wd, dtype)
    blocks = [
        _metrics_block(
            prob.loss, prob.evaluate, jnp.asarray(rows[i : i + _EVAL_BLOCK]), eta_a, wd_a
        )
        for i in range(0, len(rows), _EVAL_BLOCK)
    ]
    return {k: np.concatenate([np.asarray(b[k]) for b in blocks])[:n] for k in blocks[0]}


def _group_norms(w: np.ndarray, groups: tuple[int, ...]) -> np.ndarray:
    """Per-group norms ``(n, G)`` of the rows of ``w`` ``(n, D)``."""
    bounds = np.cumsum((0, *groups))
    return np.stack(
        [np.linalg.norm(w[:, a:b], axis=1) for a, b in itertools.pairwise(bounds)],
        axis=1,
    )


def _one(
    cfg: Config, spec: dict[str, Any], ckpt: Checkpoints | None, progress: bool
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    prob = make_model(cfg, spec["seed"], spec["norm"])
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
        # Without normalization S is undefined and only eta * lambda_1(H(w)) is tracked:
        # one group, so one Lanczos per tracked step (the EoS quantity does not depend on
        # the grouping).
        tracker=LanczosTracker(every=cfg.sharpness_every),
        saveat=SaveAt(every=cfg.record_every),
        groups=prob.groups if invariant else None,
        key=jax.random.PRNGKey(spec["seed"]),
        perturbation=0.0,
        check_invariance=invariant,
        chunk_steps=cfg.chunk_steps,
        on_nonfinite="stop",
    )
    assert res.w is not None
    metrics = evaluate_rows(prob, res.w, cfg.eta, spec["wd"])
    gn = _group_norms(res.w, prob.groups)
    arrays = {k: getattr(res, k) for k in ("step", "eos", "norm", "loss", "lanczos_residual")}
    arrays["sharpness"] = res.sharpness if invariant else np.full_like(res.eos, np.nan)
    arrays["group_norms"] = gn.astype(res.norm.dtype)
    arrays["group_eta_eff"] = (cfg.eta / gn**2).astype(res.norm.dtype)
    arrays.update(metrics)
    arrays["t_eta_wd"] = res.step * spec["eta_wd"]  # LLA22's time axis: tau / 2
    info = {
        **spec,
        "steps": steps,
        "onset": res.onset_step,
        "diverged_at": res.diverged_at,
        "head": prob.config["head"],
        **summarize(arrays, res.onset_step, invariant),
    }
    return arrays, info


def summarize(arrays: dict[str, np.ndarray], onset: int | None, invariant: bool) -> dict[str, Any]:
    """Onset-relative summary of one run's stored arrays (the checks read these numbers).

    The settled EoS phase is the last three quarters of the steps after the onset
    (``sharpness_settled`` is S on its first row); the onset row is the first recorded row at or
    after the onset step. Final errors are the last row's;
    ``sharpness_end`` and ``eos_end`` average the last 5% of rows; ``norm_min_ratio`` is the
    smallest relative change of ``|w|`` between consecutive rows.
    """
    step, eos, sharp = arrays["step"], arrays["eos"], arrays["sharpness"]
    n = len(step)
    tail = slice(n - max(1, n // 20), n)
    out: dict[str, Any] = {
        k: float(arrays[k][-1])
        for k in arrays
        if k.endswith(("_loss", "_rel_error")) and arrays[k].ndim == 1
    }
    if onset is not None:
        after = step >= onset + (step[-1] - onset) // 4
        out["eos_mean_eos_phase"] = float(np.mean(eos[after]))
        out["eos_std_eos_phase"] = float(np.std(eos[after]))
        i_on = min(int(np.searchsorted(step, onset)), n - 1)
        for k in ("test_rel_error", "mid_test_rel_error"):
            out[f"{k}_at_onset"] = float(arrays[k][i_on])
        if invariant:
            out["sharpness_at_onset"] = float(sharp[i_on])
            out["sharpness_settled"] = float(sharp[int(np.argmax(after))])
    out["eos_start"] = float(eos[0])
    out["eos_max"] = float(np.max(eos))
    out["eos_half"] = float(eos[n // 2])
    out["eos_end"] = float(np.mean(eos[tail]))
    if invariant:
        out["sharpness_start"] = float(sharp[0])
        out["sharpness_half"] = float(sharp[n // 2])
        out["sharpness_end"] = float(np.mean(sharp[tail]))
    out["norm_min_ratio"] = float(np.min(np.diff(arrays["norm"]) / arrays["norm"][:-1]))
    out["group_norms_end"] = [float(x) for x in arrays["group_norms"][-1]]
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
        nan = float("nan")
        eos = s.get("eos_mean_eos_phase", nan)
        lines.append(
            f"{name:14s} onset {s['onset']!s:>6s}  <eos> {eos:6.3f}  "
            f"S start {s.get('sharpness_start', nan):6.4g} onset "
            f"{s.get('sharpness_at_onset', nan):6.4g} end {s.get('sharpness_end', nan):6.4g}  "
            f"test err {s['test_rel_error']:.4f} (midpoint {s['mid_test_rel_error']:.4f})"
        )
    return lines


SIM = Simulation(
    NAME,
    Config,
    run,
    __doc__,
    report=_report,
    meta=lambda cfg: {"seeds": list(cfg.seeds), "data_seed": cfg.data_seed},
)
run_and_store = SIM.run_and_store
main = SIM.main
