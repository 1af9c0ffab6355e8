# %% [markdown]
# # Tutorial 3: your own Equinox model, and the curvature instruments on it
#
# The first two tutorials write their networks in Flax linen and flatten them by hand. This one
# takes a model written the way Equinox users write it -- a stateful `eqx.nn.BatchNorm` inside
# `jax.vmap(..., axis_name="batch")` -- through the adapter `theory.from_equinox`, and then
# puts every instrument of the engine on it:
#
# 1. define the model (BatchNorm in `mode="batch"`, no affine, `eps=0`; a fixed last layer);
# 2. **adapt** it: `from_equinox` returns the flat loss, the start `w0`, one scale-invariance
#    group per layer with its leaf names, and checks the invariance group by group;
# 3. **choose the learning rate** with `theory.edge_at_init` for a start at 0.3 of the edge;
# 4. run **GD+WD with a composite tracker**: the top eigenvalue every step
#    (`LanczosTracker`), the **per-layer** sharpness and EoS quantity (`GroupSharpness`), the
#    free per-step diagnostics (`StepDiagnostics`: the realized EoS along the executed step, no
#    Hessian product) and the **spectral density** of the spherical Hessian (`SLQTracker`,
#    stochastic Lanczos quadrature) a few times along the run;
# 5. run **AdamW** on the same object (`theory.run_optimizer`) with the **preconditioned
#    sharpness** `lambda_1(P^-1 H)` against Adam's edge `(2 + 2 b1) / ((1 - b1) lr)`;
# 6. run **minibatch SGD with momentum and weight decay** on the model's own data
#    (`ModelLoss.minibatch`, `theory.sgd_wd`) with the **batch sharpness** and the **angular
#    update** per step against its predicted equilibrium;
# 7. draw a figure.
#
# Run it with `python examples/tutorial_instruments.py [--quick] [--out-dir DIR]` (or open the
# percent cells as a notebook). It prints what each step measures and writes
# `tutorial_instruments.png` to `--out-dir` (default `$SHARPSIM_TUTORIAL_OUT`, else a new
# temporary directory). `tests/test_tutorial_instruments.py` runs `--quick` and checks its
# numbers. The adapters: docs/models.md; the trackers: docs/engine.md.

# %%
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from sklearn.datasets import load_digits

import theory
from theory import LanczosTracker, SaveAt
from theory.core import slq
from theory.engine.adaptive import AdaptiveSpec
from theory.engine.sgd import angular_equilibrium, sgd_wd
from theory.engine.spectral import GroupSharpness, SLQTracker, StepDiagnostics, with_extras
from theory.engine.stochastic import StochasticTracker

# %% [markdown]
# ## Settings
#
# The quick settings are what the test suite runs. `eos0 = eta * lambda_1(H(w0))` is where GD
# starts (the edge is 2); `eta_wd = eta * wd` is GD's intrinsic learning rate. AdamW and SGD
# get their own hyperparameters (their edges are not GD's).


# %%
@dataclass(frozen=True)
class Settings:
    """Everything the tutorial needs to know, in one place."""

    n_train: int = 256  # digits (a random subset of the 1797)
    widths: tuple[int, ...] = (32, 32)  # hidden layers, each Linear -> BatchNorm -> gelu
    seed: int = 0
    eos0: float = 0.6  # GD starts at eta_eff * S = 0.6 (0.3 of the edge)
    eta_wd: float = 4e-3  # GD's eta * wd
    gd_steps: int = 600
    group_every: int = 10  # per-layer sharpness every N steps
    slq_every: int = 150  # spectral density every N steps
    probes: int = 8  # SLQ probes
    lanczos_m: int = 30  # SLQ Lanczos depth
    adam_lr: float = 0.01
    adam_wd: float = 0.1
    adam_steps: int = 600
    adam_every: int = 10
    sgd_eta: float = 0.5
    sgd_wd: float = 0.01
    sgd_momentum: float = 0.9
    batch_size: int = 32
    sgd_steps: int = 800
    sgd_every: int = 10

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            n_train=128,
            widths=(16, 16),
            gd_steps=360,
            slq_every=120,
            probes=6,
            lanczos_m=24,
            adam_steps=400,
            sgd_steps=600,
        )


# %% [markdown]
# ## 1. The model, as an Equinox user writes it
#
# Every hidden `Linear` (no bias) is followed by `eqx.nn.BatchNorm(mode="batch",
# channelwise_affine=False, eps=0.0)`: in training mode it normalizes by the batch's own mean
# and variance, so scaling the layer's weights by `c > 0` changes nothing downstream. The model
# is called per example inside `jax.vmap(..., axis_name="batch")` (the BatchNorm averages over
# that named axis) and threads an `eqx.nn.State`. The last layer `head` is trained by nobody:
# `from_equinox(..., frozen=[".head.weight"])` keeps it in the loss as a constant, which is
# what makes the output layer invariant-compatible (a trained last layer is not scale-invariant;
# the adapter would say so and name it).


# %%
class BatchNormMLP(eqx.Module):
    hidden: list[eqx.nn.Linear]
    norms: list[eqx.nn.BatchNorm]
    head: eqx.nn.Linear

    def __init__(self, sizes: Sequence[int], n_out: int, key: jax.Array) -> None:
        keys = jax.random.split(key, len(sizes))
        self.hidden = [
            eqx.nn.Linear(a, b, use_bias=False, key=k, dtype=jnp.float64)
            for a, b, k in zip(sizes[:-1], sizes[1:], keys[:-1], strict=True)
        ]
        self.norms = [
            eqx.nn.BatchNorm(
                b, "batch", eps=0.0, channelwise_affine=False, mode="batch", dtype=jnp.float64
            )
            for b in sizes[1:]
        ]
        self.head = eqx.nn.Linear(sizes[-1], n_out, use_bias=False, key=keys[-1], dtype=jnp.float64)

    def __call__(self, x: jax.Array, state: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
        for lin, bn in zip(self.hidden, self.norms, strict=True):
            x, state = bn(lin(x), state)
            x = jax.nn.gelu(x)
        return self.head(x), state


def mse_loss(model: BatchNormMLP, state: eqx.nn.State, data: dict[str, jax.Array]) -> Any:
    """One-hot MSE, ``mean_i |f(x_i) - y_i|^2 / 2``, with the batch statistics of ``data``."""
    out, state = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
        data["x"], state
    )
    return 0.5 * jnp.mean(jnp.sum((out - data["y"]) ** 2, axis=-1)), state


def digits(n: int, seed: int) -> dict[str, jax.Array]:
    d = load_digits()
    idx = np.random.default_rng(seed).permutation(len(d.target))[:n]
    x = d.data[idx] / 16.0
    return {"x": jnp.asarray(x - x.mean(0)), "y": jnp.asarray(np.eye(10)[d.target[idx]])}


# %% [markdown]
# ## 2. Adapt it
#
# `theory.from_equinox(model, loss_fn, data, state, frozen=...)` returns a `theory.ModelLoss`:
# `loss` (the flat loss `(D,) -> ()` every runner takes), `w0`, `groups` (one per hidden
# layer: consecutive leaves with one parent), `names[g]` (the leaves of group `g`) and the
# same loss on the parameter pytree for optax. It measures each group's invariance on its own
# and raises `theory.ScaleInvarianceError` naming the leaves of a group that is not.


# %%
def adapt(s: Settings) -> theory.ModelLoss:
    data = digits(s.n_train, s.seed + 1)
    sizes = (64, *s.widths)
    model, state = eqx.nn.make_with_state(BatchNormMLP)(sizes, 10, jax.random.PRNGKey(s.seed))
    return theory.from_equinox(model, mse_loss, data, state, frozen=[".head.weight"])


# %% [markdown]
# ## 3. The learning rate
#
# `theory.edge_at_init(loss, w0, eos0=0.6, groups=...)` solves for `lambda_1(H(w0))` and the
# spherical sharpness and returns `eta_for_eos0 = eos0 / lambda_1(H(w0))`: the run starts at
# 0.3 of the edge. (A run that starts above it warns: `theory.AboveEdgeWarning`.)


# %%
def learning_rate(ml: theory.ModelLoss, s: Settings) -> theory.EdgeAtInit:
    return theory.edge_at_init(ml.loss, ml.w0, eos0=s.eos0, groups=ml.groups)


# %% [markdown]
# ## 4. GD+WD with every curvature tracker at once
#
# `with_extras(main, *add_ons)` runs one main tracker (it computes the loss and gradient that
# drive the step, and here the EoS quantity `eta * lambda_1(H(w))` every step) and hands its
# observation to the add-ons, which record their own named arrays in `result.observed`:
#
# * `GroupSharpness(every=10)`: per layer `g`, `lambda_1` of the Hessian's diagonal block
#   `H_gg`, as the EoS quantity `eta * lambda_1(H_gg(w))` (`group.eos`) and the per-layer
#   spherical sharpness `|w_g|^2 lambda_1(H_gg(w))` (`group.sharpness`);
# * `StepDiagnostics()`: every row, free: the realized EoS of the step just taken,
#   `eta * 2 (dL - g^T u) / |u|^2` (`diag.realized_eos`, the secant curvature along the executed
#   update `u`), and `|g|^2`;
# * `SLQTracker(every=..., probes=..., m=...)`: the Gauss quadrature rules of stochastic
#   Lanczos quadrature for the spherical Hessian (`slq.nodes`, `slq.weights`); the smoothed
#   density is `theory.core.slq.density(rule, grid, width)`. Its largest node is the top
#   eigenvalue, found by every probe's Lanczos run.
#
# With several groups the engine's EoS quantity is the multi-group one, `eta * lambda_1(H(w))`
# at the iterate; the per-layer quantities say which layer carries the edge, and each is at most
# the whole one (Cauchy interlacing: a diagonal block's top eigenvalue cannot exceed the
# matrix's; the script prints the largest ratio over the rows, which must be <= 1 up to the
# solvers' tolerance).
#
# What the quick run measures (float64, `--quick`): the onset at step 133; over the second half
# after it, `eta * lambda_1(H)` at GD's iterates averages 2.96, well above 2, while the realized
# EoS of the executed steps has median 1.98. GD oscillates across its top direction, and the
# curvature at the two ends of the oscillation is larger than along the segment between them,
# which is what the step actually traverses (the regime map measures the EoS quantity at the
# midpoints for this reason, docs/regimes.md). The first layer carries the edge (per-layer EoS
# 2.25 against 1.96). The top SLQ node matches the Lanczos sharpness to 2.4e-4, and less than
# 0.2% of the spectrum's weight lies within 10% of the top: a few outliers above a bulk near 0,
# the outliers falling with the sharpness (spherical sharpness 100 at step 120, 41 at 360).


# %%
def tracked_gd(ml: theory.ModelLoss, eta: float, s: Settings) -> theory.GDResult:
    tracker = with_extras(
        LanczosTracker(every=1, tol=1e-3, stop="error"),
        GroupSharpness(every=s.group_every),
        StepDiagnostics(),
        SLQTracker(every=s.slq_every, probes=s.probes, m=s.lanczos_m),
    )
    return theory.gd_wd(
        ml.loss,
        ml.w0,
        eta=eta,
        wd=s.eta_wd / eta,
        steps=s.gd_steps,
        groups=ml.groups,
        tracker=tracker,
        saveat=SaveAt(every=1, iterates=False),
    )


def slq_summary(run: theory.GDResult) -> dict[str, np.ndarray]:
    """At the SLQ rows: the top quadrature node against the tracker's spherical sharpness (the
    same operator, solved by the main tracker's Lanczos), and the share of the spectrum (the
    quadrature weight) within 10% of the top node."""
    nodes = np.asarray(run.observed["slq.nodes"])
    weights = np.asarray(run.observed["slq.weights"])
    rows = np.flatnonzero(np.all(np.isfinite(nodes), axis=(1, 2)))
    top = nodes[rows].max(axis=(1, 2))
    near = np.mean(np.sum(weights[rows] * (nodes[rows] > 0.9 * top[:, None, None]), axis=-1), -1)
    return {
        "row": rows,
        "step": np.asarray(run.step)[rows],
        "top": top,
        "lanczos": np.asarray(run.sharpness)[rows],
        "top_mass": near,
    }


# %% [markdown]
# ## 5. AdamW on the same object, at its own edge
#
# `theory.run_optimizer(opt, ml, steps=...)` takes the `ModelLoss` itself and runs optax on the
# model's parameter pytree. `AdaptiveSpec("adamw", lr, wd=...)` builds optax's AdamW and the
# matching `PreconditionedTracker`: Lanczos on `P^-1/2 H P^-1/2`, with `P = sqrt(nu_hat) + eps`
# read from the optimizer's state at each tracked step (`precond.sharpness`), against Adam's
# edge `(2 + 2 b1) / ((1 - b1) lr)` (`precond.eos` is their ratio: 1 at the edge). The tracker's
# `lr=` is the scale at which `lambda_1(H)` itself is reported (`eos = lr lambda_1(H)`): under an
# adaptive method that number is not a stability threshold (docs/models.md). Measured (quick):
# `lambda_1(P^-1 H)` rises to Adam's edge and stays there (0.94 of it on average over the
# second half, with an overshoot to 1.2 at first), while `lr lambda_1(H)` is 0.31.


# %%
def adamw(ml: theory.ModelLoss, s: Settings) -> tuple[theory.GDResult, AdaptiveSpec]:
    spec = AdaptiveSpec("adamw", s.adam_lr, wd=s.adam_wd)
    run = theory.run_optimizer(
        spec.optimizer(),
        ml,
        steps=s.adam_steps,
        tracker=spec.tracker(every=s.adam_every, tol=1e-4),
        lr=spec.lr,
        saveat=SaveAt(every=s.adam_every, iterates=False),
    )
    return run, spec


# %% [markdown]
# ## 6. Minibatch SGD with momentum and weight decay, on the model's own data
#
# `ml.minibatch(batch_size)` is a `theory.Minibatch` over the data given to the adapter: step
# `t`'s batch is drawn from the run's key (epochs of shuffled batches by default), and the
# batch loss is the model's loss on that batch, with the BatchNorm statistics of the batch (the
# ghost-batch loss). `theory.sgd_wd` runs heavy-ball SGD with coupled weight decay on it.
# `StochasticTracker` records the whole-data sharpness, the **batch sharpness**
# `g_B^T H_B g_B / |g_B|^2` (the curvature of the batch's own loss along its gradient) and the
# **angle** between consecutive iterates. For a scale-invariant loss the norm settles where
# weight decay's shrinking balances the gradient's growth, and the angle per step settles at
# `arccos(1 - eta wd / (1 + beta))`, about `sqrt(2 eta wd / (1 + beta))`
# (`theory.engine.sgd.angular_equilibrium`; docs/engine.md). Measured (quick, `eta = 0.5`,
# `wd = 0.01`, `beta = 0.9`, batches of 32 of 128 digits): 0.0706 rad per step over the second
# half against 0.0726 predicted; `eta` times the whole-data `lambda_1` is 1.01, below GD's edge,
# and the batch sharpness is about half of that (its edge, `2 (1 + beta) / eta`, is not reached
# at this step size). The start is another matter: there the whole-data `eta lambda_1(w0)` is
# 8.69 (quick), above heavy-ball's edge `2 (1 + beta) = 3.8`, so `sgd_wd` would warn
# (`theory.AboveEdgeWarning`); the run comes down from there to the 1.01 above. The equilibrium
# angle does not depend on the start, so this section keeps it and passes
# `warn_above_edge=False`.


# %%
def sgd(ml: theory.ModelLoss, s: Settings) -> theory.GDResult:
    return sgd_wd(
        ml.minibatch(s.batch_size),
        None,
        ml.w0,
        eta=s.sgd_eta,
        wd=s.sgd_wd,
        momentum=s.sgd_momentum,
        batch_size=s.batch_size,
        steps=s.sgd_steps,
        groups=ml.groups,
        tracker=StochasticTracker(every=s.sgd_every),
        saveat=SaveAt(every=s.sgd_every, iterates=False),
        key=jax.random.PRNGKey(s.seed),
        warn_above_edge=False,  # starts above the edge on purpose (above)
    )


# %% [markdown]
# ## 7. The figure
#
# Top left: GD's `eta * lambda_1(H)` every step, the realized EoS of each executed step (free),
# and the per-layer EoS quantities. Top right: the smoothed spectral density of the spherical
# Hessian at the SLQ rows. Bottom left: AdamW's `lambda_1(P^-1 H)` over its edge. Bottom right:
# SGD's angle per step against its predicted equilibrium.


# %%
def draw(
    gd: theory.GDResult,
    spectrum: dict[str, np.ndarray],
    adam: theory.GDResult,
    sgd_run: theory.GDResult,
    angle_eq: float,
    out_dir: Path,
) -> Path:
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    (ax_eos, ax_dens), (ax_adam, ax_sgd) = fig.subplots(2, 2)
    step = np.asarray(gd.step)
    ax_eos.plot(step, gd.eos, lw=0.8, color="k", label="eta lambda_1(H)")
    realized = np.asarray(gd.observed["diag.realized_eos"])
    ax_eos.plot(step, realized, lw=0.5, color="#2ca02c", alpha=0.6, label="realized EoS")
    group_eos = np.asarray(gd.observed["group.eos"])
    rows = np.all(np.isfinite(group_eos), axis=1)
    for g in range(group_eos.shape[1]):
        ax_eos.plot(step[rows], group_eos[rows, g], lw=1.2, label=f"layer {g}: eta lambda_1(H_gg)")
    ax_eos.axhline(2.0, ls="--", color="gray", lw=0.8)
    ax_eos.set(xlabel="step", ylabel="EoS quantity", title="GD+WD", ylim=(0, 3))
    ax_eos.legend(fontsize=7)

    nodes = np.asarray(gd.observed["slq.nodes"])
    weights = np.asarray(gd.observed["slq.weights"])
    top = float(np.max(spectrum["top"]))
    grid = jnp.linspace(-0.1 * top, 1.1 * top, 400)
    for r, t in zip(spectrum["row"], spectrum["step"], strict=True):
        quad = slq.Quadrature(jnp.asarray(nodes[r]), jnp.asarray(weights[r]))
        dens = np.asarray(slq.density(quad, grid, 0.01 * top))
        ax_dens.semilogy(np.asarray(grid), np.maximum(dens, 1e-8), lw=1, label=f"step {t}")
    ax_dens.set(xlabel="eigenvalue of the spherical Hessian", ylabel="density", ylim=(1e-6, None))
    ax_dens.set_title("spectral density (SLQ)")
    ax_dens.legend(fontsize=7)

    a_step = np.asarray(adam.step)
    ax_adam.plot(a_step, adam.observed["precond.eos"], marker=".", lw=1, label="AdamW")
    ax_adam.axhline(1.0, ls="--", color="gray", lw=0.8)
    ax_adam.set(xlabel="step", ylabel="lambda_1(P^-1 H) / edge", title="AdamW: its own edge")

    s_step = np.asarray(sgd_run.step)
    ax_sgd.plot(s_step, sgd_run.observed["angle"], lw=1, label="angle(w_t, w_t+1)")
    ax_sgd.axhline(angle_eq, ls="--", color="gray", lw=0.8, label="predicted equilibrium")
    ax_sgd.set(xlabel="step", ylabel="angle (rad)", title="SGD + momentum + WD")
    ax_sgd.legend(fontsize=7)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tutorial_instruments.png"
    fig.savefig(path, dpi=110)
    return path


# %% [markdown]
# ## Everything, in order
#
# `main(out_dir, quick)` runs the steps, prints what each one found and returns the numbers the
# test suite checks.


# %%
def _after(x: Any, start: int) -> np.ndarray:
    x = np.asarray(x)[start:]
    return x[np.isfinite(x)]


def main(out_dir: str | Path | None = None, quick: bool = False) -> dict[str, Any]:
    # The tutorial computes in float64 (the script's choice; `theory` never flips this flag).
    jax.config.update("jax_enable_x64", True)
    s = Settings.quick() if quick else Settings()
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="tutorial-inst-"))
    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = time.perf_counter() - clock
        clock = time.perf_counter()

    ml = adapt(s)
    dim = int(ml.w0.shape[0])
    print(f"1-2. D = {dim} in groups {ml.groups}: {[list(n) for n in ml.names]}")
    lap("adapt")

    edge = learning_rate(ml, s)
    assert edge.eta_for_eos0 is not None  # eos0 was given
    eta = edge.eta_for_eos0
    print(
        f"3.   lambda_1(H(w0)) = {edge.curvature:.4g}: eta = {eta:.4g} starts at "
        f"eta lambda_1 = {s.eos0}; wd = {s.eta_wd / eta:.4g}"
    )
    lap("edge")

    gd = tracked_gd(ml, eta, s)
    onset = gd.onset_step
    if onset is None:
        raise RuntimeError(f"no EoS onset within {s.gd_steps} steps: raise gd_steps")
    onset = int(onset)
    settled = onset + (s.gd_steps - onset) // 2
    eos_settled = float(np.mean(_after(gd.eos, settled)))
    realized = _after(gd.observed["diag.realized_eos"], settled)
    group_eos = np.asarray(gd.observed["group.eos"])
    group_rows = np.all(np.isfinite(group_eos), axis=1)
    group_settled = np.mean(group_eos[group_rows & (np.asarray(gd.step) >= settled)], axis=0)
    # Cauchy interlacing: a diagonal block's top eigenvalue is at most the whole Hessian's.
    interlacing = float(np.max(group_eos[group_rows] / np.asarray(gd.eos)[group_rows, None]) - 1.0)
    spectrum = slq_summary(gd)
    slq_err = float(np.max(np.abs(spectrum["top"] - spectrum["lanczos"]) / spectrum["lanczos"]))
    print(
        f"4.   onset at step {onset}; second half after it: eta lambda_1 {eos_settled:.3f}, "
        f"realized EoS median {np.median(realized):.3f}; per-layer EoS "
        f"{np.array2string(group_settled, precision=3)} (max_g lambda_1(H_gg) / lambda_1(H) - 1 "
        f"= {interlacing:+.1e})"
    )
    print(
        f"     SLQ at steps {spectrum['step'].tolist()}: top node / Lanczos - 1 at most "
        f"{slq_err:.1e}; spherical sharpness {np.array2string(spectrum['lanczos'], precision=4)}; "
        f"weight within 10% of the top {np.array2string(spectrum['top_mass'], precision=4)}"
    )
    lap("gd")

    adam, spec = adamw(ml, s)
    half = len(adam.step) // 2
    precond = _after(adam.observed["precond.eos"], half)
    print(
        f"5.   AdamW (lr {spec.lr:g}, wd {spec.wd:g}): edge {spec.edge:.4g}; second half "
        f"lambda_1(P^-1 H) / edge mean {np.mean(precond):.3f}, while lr lambda_1(H) is "
        f"{np.mean(_after(adam.eos, half)):.3f}; loss {adam.loss[0]:.3f} -> {adam.loss[-1]:.3f}"
    )
    lap("adamw")

    sgd_run = sgd(ml, s)
    angle_eq = float(angular_equilibrium(s.sgd_eta, s.sgd_wd, s.sgd_momentum))
    half = len(sgd_run.step) // 2
    angle = float(np.mean(_after(sgd_run.observed["angle"], half)))
    batch_sharp = float(np.mean(_after(sgd_run.observed["batch_sharpness"], half)))
    full_sharp = float(np.mean(_after(sgd_run.observed["full_sharpness"], half)))
    print(
        f"6.   SGD (eta {s.sgd_eta:g}, wd {s.sgd_wd:g}, beta {s.sgd_momentum:g}, batch "
        f"{s.batch_size}): angle per step {angle:.4f} (predicted {angle_eq:.4f}); second half "
        f"eta x batch sharpness {s.sgd_eta * batch_sharp:.3f}, eta x full-batch lambda_1 "
        f"{s.sgd_eta * full_sharp:.3f}; loss {sgd_run.loss[0]:.3f} -> {sgd_run.loss[-1]:.3f}"
    )
    lap("sgd")

    figure = draw(gd, spectrum, adam, sgd_run, angle_eq, out)
    lap("figure")
    print(
        f"7.   figure: {figure}; seconds per part { ({k: round(v) for k, v in seconds.items()}) }"
    )
    return {
        "settings": s,
        "dim": dim,
        "groups": ml.groups,
        "names": ml.names,
        "eta": eta,
        "eos0": float(eta * edge.curvature),
        "onset": onset,
        "eos_settled": eos_settled,
        "realized_median": float(np.median(realized)),
        "group_eos_settled": group_settled,
        "interlacing": interlacing,
        "slq": spectrum,
        "slq_err": slq_err,
        "adam_edge": spec.edge,
        "adam_precond_eos": float(np.mean(precond)),
        "adam_plain_eos": float(np.mean(_after(adam.eos, len(adam.step) // 2))),
        "adam_loss": (float(adam.loss[0]), float(adam.loss[-1])),
        "sgd_angle": angle,
        "sgd_angle_eq": angle_eq,
        "sgd_batch_eos": s.sgd_eta * batch_sharp,
        "sgd_full_eos": s.sgd_eta * full_sharp,
        "sgd_loss": (float(sgd_run.loss[0]), float(sgd_run.loss[-1])),
        "figure": figure,
        "seconds": seconds,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The sharpsim instruments tutorial (Equinox).")
    parser.add_argument("--quick", action="store_true", help="smaller settings (the test's)")
    parser.add_argument(
        "--out-dir",
        default=os.environ.get("SHARPSIM_TUTORIAL_OUT"),
        help="where to write tutorial_instruments.png (default $SHARPSIM_TUTORIAL_OUT, else a "
        "temp dir)",
    )
    ns, _ = parser.parse_known_args(argv)  # a notebook kernel passes its own arguments
    return ns


# %%
if __name__ == "__main__":
    args = parse_args()
    main(args.out_dir, quick=args.quick)
