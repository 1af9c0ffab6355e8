"""IRE on the normalized networks of ``networks``: does it lower the spherical sharpness faster?

The model family of :mod:`sims.studies.networks` (digits, normalized bias-free MLP with a fixed last
layer: exactly scale-invariant per layer, one group per layer), trained full-batch with the
GD+WD base ``u = -eta (g + wd w)`` (:func:`theory.optim.transforms.gd_wd_transform`) and, for each
``kappa``,
with IRE (:func:`theory.optim.ire.ire`) on that base:

* ``exact``: :func:`theory.optim.ire.exact_flat` -- the flat part is the complement of the top-``k``
  Hessian eigenspace and of the per-layer radial directions (``radial=False``: the weight-decay
  part of the update and the norm dynamics are the base's), Hessian at the midpoint of the last
  two iterates, refreshed every ``refresh_every`` steps. ``k = 10`` by default because a
  ``C``-class cross-entropy Hessian is expected to have ``C - 1 = 9`` outlier eigenvalues
  (Papyan 2019; Sagun et al. 2017): ``k = C`` leaves the whole outlier space (plus one) alone.
  Whether this network has that gap is measured: the top-``spectrum_k`` eigenvalues of the
  spherical Hessian are stored at the start and at the end of every run (quick preset: no gap,
  the spectrum decays smoothly and ``lambda_11 / lambda_1 ~ 0.5`` at the end). When
  ``(1 + kappa) lambda_{k+1} > lambda_1`` an amplified direction is less stable than the top
  one, so the EoS equilibrium moves off ``eta * lambda_1 = 2`` (the ``ire_net_exact_eos`` check).
* ``mask``: :func:`theory.optim.ire.diagonal_mask` with :func:`theory.optim.ire.fisher_diagonal`
(labels
  sampled from the model's predictions), ``gamma`` of the coordinates, refreshed every
  ``refresh_every`` steps -- the paper's Algorithm 1. The mask multiplies the whole base update,
  weight decay included, so it also changes the norm dynamics on the masked coordinates.

The weights are recorded every ``record_every`` steps; after the run one compiled function
(shared by all runs) computes at each recorded row the spherical sharpness (top eigenvalue of
the Hessian at the per-layer normalized weights, the multi-group definition of
:mod:`theory.core.sharpness`), the EoS quantity ``eta * lambda_1(hess L(w))``, train/test loss and
accuracy and the per-layer norms. The cost per step of each selector (no recording; it does not
depend on ``kappa``, so the first ``kappa`` is timed) is measured on warm compiled runs as the
time of ``2 * timing_steps`` steps minus that of ``timing_steps`` (a multiple of
``refresh_every``, so refreshes are amortized), over ``timing_steps``; median of
``timing_repeats`` interleaved repeats.

Stored per run ``<run>.``: step, t_eta_wd, sharpness, eos, loss, group_norms ``(n, G)``, the
metrics of ``NetProblem.evaluate``, spectrum_end ``(spectrum_k,)``, eos_mid_tail (the EoS
quantity at the base's midpoint ``w + u / 2`` of each row of the last third, see
:func:`_base_midpoints`); per seed
``s<seed>.spectrum_start``. Summary per run: the sharpness at the start and at the end (geometric
mean over the last third of the rows: at the Edge of Stability the sharpness at the iterate
fluctuates by tens of percent from row to row, in cycles of tens of steps), the EoS quantity and
test accuracy over the same window (and the midpoint EoS quantity's mean, sample standard
deviation and number of rows: ``eos_mid_end``, ``eos_mid_std``, ``eos_mid_rows``), final
accuracies, ``lambda_{k+1} / lambda_1`` at the end,
seconds per step and the overhead ratio to the base (seed ``seeds[0]`` only).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, cached_runs, prefixed
from sims.studies import networks
from theory.core import validate as check
from theory.core.invariance import group_norms
from theory.core.sharpness import eos_quantity, sharpness_eigs, spherical_sharpness
from theory.engine import SaveAt
from theory.optim.ire import diagonal_mask, exact_flat, fisher_diagonal, ire
from theory.optim.transforms import gd_wd_transform, run_optimizer
from theory.problems import nets

NAME = "ire_networks"
SELECTORS = ("exact", "mask")


@dataclass(frozen=True)
class Config:
    """Settings of the IRE network runs (``wd = eta_wd / eta``)."""

    dataset: Literal["digits", "mnist1d"] = field(default="digits", metadata={"help": "data"})
    n_train: int = field(default=1024, metadata={"help": "training samples"})
    widths: tuple[int, ...] = field(default=(64, 64), metadata={"help": "MLP hidden widths"})
    norm: Literal["batch", "layer"] = field(default="batch", metadata={"help": "normalization"})
    loss: Literal["ce", "mse"] = field(default="ce", metadata={"help": "training loss"})
    eta: float = field(default=0.5, metadata={"help": "learning rate (as in networks)"})
    eta_wd: float = field(default=4e-3, metadata={"help": "intrinsic learning rate eta*wd"})
    steps: int = field(default=600, metadata={"help": "steps per run"})
    kappas: tuple[float, ...] = field(default=(1.0, 4.0), metadata={"help": "IRE kappas"})
    selectors: tuple[str, ...] = field(default=SELECTORS, metadata={"help": "exact, mask"})
    k: int = field(default=10, metadata={"help": "sharp directions left alone (exact)"})
    gamma: float = field(default=0.7, metadata={"help": "mask fraction"})
    refresh_every: int = field(default=10, metadata={"help": "selector refresh interval K"})
    warmup: int = field(default=0, metadata={"help": "steps before IRE starts"})
    seeds: tuple[int, ...] = field(default=(0,), metadata={"help": "seeds (init, IRE keys)"})
    record_every: int = field(default=20, metadata={"help": "record a row every N steps"})
    lanczos_iters: int = field(default=20, metadata={"help": "Krylov dimension per row"})
    spectrum_k: int = field(
        default=20, metadata={"help": "eigenvalues stored at start/end (0: none)"}
    )
    timing_steps: int = field(default=100, metadata={"help": "steps per timed run"})
    timing_repeats: int = field(default=5, metadata={"help": "timed runs (0: no timing)"})
    dtype: Literal["float32", "float64"] = field(default="float32", metadata={"help": "precision"})

    def __post_init__(self) -> None:
        check.among(self.selectors, "selectors", SELECTORS, empty=True)
        check.in_interval(self.eta_wd, "eta_wd", 0, 0.1)
        check.positive_fields(self, "eta")
        check.all_positive(self.kappas, "kappas")
        check.in_interval(self.gamma, "gamma", 0, 1)
        check.int_fields_at_least(
            self, 1, "steps", "record_every", "refresh_every", "k", "lanczos_iters"
        )
        if self.steps % self.record_every:
            raise ValueError(f"record_every ({self.record_every}) must divide steps ({self.steps})")
        if self.timing_repeats < 0 or self.timing_steps < 1:
            raise ValueError("timing_repeats must be >= 0 and timing_steps >= 1")
        if self.timing_steps % self.refresh_every:
            raise ValueError("refresh_every must divide timing_steps (refreshes amortized)")
        if self.spectrum_k and self.spectrum_k <= self.k:
            raise ValueError(f"spectrum_k ({self.spectrum_k}) must be 0 or exceed k ({self.k})")
        if not self.seeds:
            raise ValueError("seeds must not be empty")

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: MLP 64-64, eta*wd = 4e-3, 600 steps, 1 seed (about 2 min on one core);
        ``full``: eta*wd = 2e-3, 3000 steps (tau = 2 eta wd t = 12), 3 seeds, kappa up to 9."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(
                eta_wd=2e-3,
                steps=3000,
                kappas=(1.0, 4.0, 9.0),
                seeds=(0, 1, 2),
                record_every=50,
                lanczos_iters=32,
                timing_steps=200,
                timing_repeats=5,
            )
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def make_network(cfg: Config, seed: int) -> nets.NetProblem:
    """The network of :mod:`sims.studies.networks` with this config's data, widths, norm and
    loss."""
    ncfg = networks.Config(
        dataset=cfg.dataset,
        n_train=cfg.n_train,
        model="mlp",
        widths=cfg.widths,
        norm=cfg.norm,
        loss=cfg.loss,
        eta=cfg.eta,
        eta_wd=(cfg.eta_wd,),
        dtype=cfg.dtype,
    )
    return networks.make_network(ncfg, seed, cfg.norm)


# The data travel as loss_args = (loss module, predict module, training inputs), never closed
# over; module-level functions keep the compiled runs cached across calls (timing).
def _loss(w: jax.Array, loss: Any, predict: Any, x: jax.Array) -> jax.Array:
    return loss(w)


def _predict(w: jax.Array, loss: Any, predict: Any, x: jax.Array) -> jax.Array:
    return predict(w, x)


def loss_args(prob: nets.NetProblem) -> tuple[Any, ...]:
    """The ``loss_args`` tuple of :func:`_loss` and :func:`_predict`."""
    return (prob.loss, prob.predict, prob.predict.x_train)


def runs(cfg: Config) -> list[dict[str, Any]]:
    """The run list: name, seed, selector (``"none"`` for the base) and kappa."""
    out = []
    for seed in cfg.seeds:
        out.append({"name": f"s{seed}_base", "seed": seed, "selector": "none", "kappa": 0.0})
        for sel in cfg.selectors:
            for kappa in cfg.kappas:
                name = f"s{seed}_{sel}_k{kappa:g}"
                out.append({"name": name, "seed": seed, "selector": sel, "kappa": kappa})
    return out


def make_optimizer(
    cfg: Config, spec: dict[str, Any], groups: Sequence[int]
) -> optax.GradientTransformationExtraArgs:
    """GD+WD, or IRE on GD+WD with the run's selector."""
    base = gd_wd_transform(cfg.eta, cfg.eta_wd / cfg.eta)
    if spec["selector"] == "none":
        return optax.with_extra_args_support(base)
    if spec["selector"] == "exact":
        selector = exact_flat(
            _loss,
            cfg.k,
            radial=False,
            groups=groups,
            refresh_every=cfg.refresh_every,
            warmup=cfg.warmup,
            point="midpoint",
        )
    else:
        kind = "cross_entropy" if cfg.loss == "ce" else "mse"
        selector = diagonal_mask(
            fisher_diagonal(_predict, loss=kind),
            cfg.gamma,
            refresh_every=cfg.refresh_every,
            warmup=cfg.warmup,
        )
    return ire(base, spec["kappa"], selector, seed=spec["seed"])


@eqx.filter_jit
def _rows_observed(
    loss: Any, evaluate: Any, rows: jax.Array, eta: float, groups: tuple[int, ...], iters: int
) -> dict[str, jax.Array]:
    """Spherical sharpness, EoS quantity, per-layer norms and metrics of each row of ``rows``.

    ``sharpness = lambda_1(H(w_hat))`` (:func:`theory.core.sharpness.spherical_sharpness`) and
    ``eos = lambda_1(D^{1/2} H(w_hat) D^{1/2})`` (:func:`theory.core.sharpness.eos_quantity`)
    with ``w_hat`` normalized per layer and ``D = diag(eta / |w_g|^2)``, each one Lanczos of
    ``iters`` vectors from the same fixed start; one compiled program, shared by every run,
    serves all rows.
    """

    def one(w: jax.Array) -> dict[str, jax.Array]:
        opts: dict[str, Any] = {"groups": groups, "max_iters": iters, "check_invariance": False}
        sharp, _ = spherical_sharpness(loss, w, **opts)
        eos, _ = eos_quantity(loss, w, eta, **opts)
        norms = group_norms(w, groups)
        return {"sharpness": sharp, "eos": eos, "group_norms": norms} | evaluate(w)

    return jax.lax.map(one, rows)


def spectrum(cfg: Config, prob: nets.NetProblem, w: Any) -> np.ndarray:
    """Top-``spectrum_k`` eigenvalues of the spherical (per-layer normalized) Hessian at ``w``
    (empty if ``spectrum_k = 0``)."""
    if not cfg.spectrum_k:
        return np.zeros((0,), np.asarray(w).dtype)
    res = sharpness_eigs(
        prob.loss,
        jnp.asarray(w),
        groups=prob.groups,
        k=cfg.spectrum_k,
        max_iters=min(int(prob.w0.shape[0]), 3 * cfg.spectrum_k),
        check_invariance=False,
    )
    return np.asarray(res.eigenvalues)


def time_per_step(
    cfg: Config, opts: dict[str, optax.GradientTransformationExtraArgs], prob: nets.NetProblem
) -> dict[str, list[float]]:
    """Seconds per step of each optimizer (no recording), ``timing_repeats`` warm runs each.

    A repeat times a run of ``timing_steps`` steps and one of ``2 * timing_steps`` (the same
    compiled program: one row each) and returns the difference over ``timing_steps``: the cost
    per step without what a call costs once (``opt.init``, dispatch, copying the result back).
    That fixed cost was inferred at about 40 ms for the first IRE optimizer of the quick
    network (1.3 ms per step): its 40-step timing read x1.9, its 400-step timing x1.3. Where
    timing noise exceeds the difference (very short runs) the plain average ``t(2n) / 2n`` is
    used. Each optimizer is compiled once first; the repeats are interleaved (repeat ``r`` of
    every optimizer, then repeat ``r + 1``) so that a change in the machine's load hits all alike.
    """
    args = loss_args(prob)

    def once(opt: optax.GradientTransformationExtraArgs, steps: int) -> float:
        t0 = time.perf_counter()
        run_optimizer(opt, _loss, prob.w0, steps, loss_args=args, saveat=SaveAt(every=steps))
        return time.perf_counter() - t0

    n = cfg.timing_steps
    for opt in opts.values():
        once(opt, n)  # compile
    out: dict[str, list[float]] = {name: [] for name in opts}
    for _ in range(cfg.timing_repeats):
        for name, opt in opts.items():
            short = once(opt, n)
            long = once(opt, 2 * n)
            # noise can exceed the difference on very short runs: then the plain average
            out[name].append((long - short) / n if long > short else long / (2 * n))
    return out


@eqx.filter_jit
def _base_midpoints(loss: Any, rows: jax.Array, eta: float, wd: float) -> jax.Array:
    """``w + u / 2`` for each row ``w`` with ``u = -eta (grad L(w) + wd w)`` the base's step: the
    midpoint of the period-2 oscillation. Exact IRE leaves the top-``k`` eigendirections, where
    that oscillation lives, to the base (it amplifies only the flat part), so for its runs too
    this point cancels the oscillation; it differs from the midpoint of IRE's own two iterates
    by half the amplified flat step."""
    return jax.vmap(lambda w: w - 0.5 * eta * (jax.grad(loss)(w) + wd * w))(rows)


def _tail(n: int) -> slice:
    """The last third of the rows (the settled part of the run)."""
    return slice(n - max(1, n // 3), n)


def _one(
    cfg: Config, spec: dict[str, Any], prob: nets.NetProblem
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    opt = make_optimizer(cfg, spec, prob.groups)
    t0 = time.perf_counter()
    res = run_optimizer(
        opt,
        _loss,
        prob.w0,
        cfg.steps,
        loss_args=loss_args(prob),
        saveat=SaveAt(every=cfg.record_every),
    )
    wall = time.perf_counter() - t0
    observed = _rows_observed(
        prob.loss,
        prob.evaluate,
        jnp.asarray(res.w),
        cfg.eta,
        tuple(prob.groups),
        cfg.lanczos_iters,
    )
    metrics = {k: np.asarray(v) for k, v in observed.items()}
    norms, sharp = metrics.pop("group_norms"), metrics.pop("sharpness")
    eos = metrics.pop("eos")
    assert res.w is not None
    spec_end = spectrum(cfg, prob, res.w[-1])
    arrays: dict[str, np.ndarray] = {
        "step": res.step,
        "t_eta_wd": res.step * cfg.eta_wd,
        "sharpness": sharp,
        "eos": eos,
        "loss": res.loss,
        "group_norms": norms,
        "spectrum_end": spec_end,
        **metrics,
    }
    tail = _tail(len(res.step))
    # The EoS quantity at the base's midpoints of the settled rows: at the iterates the
    # oscillation inflates it by an amount a chaotic EoS does not reproduce from one run to the
    # next; at the midpoints it is stable (the ire_net_exact_eos check compares these).
    mids = _base_midpoints(prob.loss, jnp.asarray(res.w[tail]), cfg.eta, cfg.eta_wd / cfg.eta)
    eos_mid = np.asarray(
        _rows_observed(
            prob.loss, prob.evaluate, mids, cfg.eta, tuple(prob.groups), cfg.lanczos_iters
        )["eos"]
    )
    arrays["eos_mid_tail"] = eos_mid
    info: dict[str, Any] = {
        **spec,
        "steps": cfg.steps,
        "diverged_at": res.diverged_at,
        "sharpness_start": float(sharp[0]),
        "sharpness_end": float(np.exp(np.mean(np.log(sharp[tail])))),
        "sharpness_last": float(sharp[-1]),
        "eos_end": float(np.mean(eos[tail])),
        "eos_mid_end": float(np.mean(eos_mid)),
        "eos_mid_std": float(np.std(eos_mid, ddof=1)) if eos_mid.size > 1 else float("nan"),
        "eos_mid_rows": int(eos_mid.size),
        "norms_end": [float(x) for x in norms[-1]],
        "lambda_ratio_end": (
            float(spec_end[cfg.k] / spec_end[0]) if cfg.spectrum_k else float("nan")
        ),
        "wall_seconds": wall,
    }
    for key, val in metrics.items():
        info[key] = float(val[-1])
        info[f"{key}_tail"] = float(np.mean(val[tail]))
    if spec["selector"] == "exact":
        flat = res.final_state.flat
        info["lanczos_matvecs_last"] = int(flat.matvecs)
        info["lanczos_residual_last"] = float(flat.residual)
    return arrays, info


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    dtype_from_config(cfg.dtype)
    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {}
    specs = {spec["name"]: spec for spec in runs(cfg)}
    problems: dict[int, nets.NetProblem] = {}

    def problem(seed: int) -> nets.NetProblem:
        if seed not in problems:
            problems[seed] = make_network(cfg, seed)
            arrays[f"s{seed}.spectrum_start"] = spectrum(cfg, problems[seed], problems[seed].w0)
        return problems[seed]

    def one(_: int, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return _one(cfg, specs[name], problem(specs[name]["seed"]))

    for name, sub, info in cached_runs(list(specs), one, checkpoints, desc=NAME, progress=progress):
        problem(specs[name]["seed"])
        arrays.update(prefixed(name, sub))
        summary[name] = info
    _timings(cfg, summary, problems[cfg.seeds[0]])
    return arrays, summary


def _timings(cfg: Config, summary: dict[str, Any], prob: nets.NetProblem) -> None:
    """Seconds per step and ``overhead = seconds_per_step / base's`` (seed ``seeds[0]``)."""
    # One optimizer per selector: the cost does not depend on kappa (a scalar factor).
    specs, seen = [], set()
    for spec in runs(cfg):
        if spec["seed"] == cfg.seeds[0] and spec["selector"] not in seen:
            specs.append(spec)
            seen.add(spec["selector"])
    if not cfg.timing_repeats:
        for info in summary.values():
            info.update(seconds_per_step=None, overhead=None)
        return
    opts = {s["selector"]: make_optimizer(cfg, s, prob.groups) for s in specs}
    reps = time_per_step(cfg, opts, prob)
    base = float(np.median(reps["none"]))
    for info in summary.values():
        if info["seed"] != cfg.seeds[0]:
            info.update(seconds_per_step=None, overhead=None)
            continue
        times = reps[info["selector"]]
        sps = float(np.median(times))
        info.update(seconds_per_step=sps, overhead=sps / base, timing_repeats_seconds=times)


def _report(stored: StoredRun) -> list[str]:
    lines = []
    for name, s in stored.meta["summary"].items():
        over = s.get("overhead")
        over_s = "   -  " if over is None else f"{over:6.2f}"
        lines.append(
            f"{name:14s} S {s['sharpness_start']:7.3g} -> {s['sharpness_end']:7.3g}  "
            f"<eos> {s['eos_end']:5.2f}  test acc {s['test_accuracy']:.4f}  "
            f"l_(k+1)/l_1 {s['lambda_ratio_end']:.2f}  overhead {over_s}"
        )
    return lines


SIM = Simulation(
    NAME, Config, run, __doc__, report=_report, meta=lambda cfg: {"seeds": list(cfg.seeds)}
)
run_and_store = SIM.run_and_store
main = SIM.main
