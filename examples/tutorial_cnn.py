# %% [markdown]
# # Tutorial 2: a CNN that reaches the Edge of Stability before it fits
#
# `examples/tutorial.py` takes a network that interpolates its 32 samples almost at once: phase I
# (fitting) is over long before the Edge-of-Stability (EoS) onset, the iterate is then close to
# the manifold of minimizers `Gamma`, and the sharpness-reduction flow on `Gamma` describes GD.
# Most real networks are not like that. This script takes a small CNN of the kind of Flax's
# MNIST example on sklearn's 8x8 digits and shows the common case:
#
# 1. define the CNN so that its loss is exactly scale-invariant (BatchNorm without affine
#    parameters and with `epsilon = 0`, no biases, a fixed random last layer) and smooth (GELU,
#    not ReLU: step 3b measures why the central flow needs that);
# 2. flatten it and **check the invariance**;
# 3. **choose the learning rate** from the top Hessian eigenvalue at the start, for a start
#    at half the edge (`eta_eff * S = eos0 = 1`, the edge is 2);
# 4. run **tracked GD+WD** to and past the onset: the network reaches the edge with its loss
#    still at a sizeable fraction of the start, and its sharpness moves during phase I, so the
#    onset prediction from the start's sharpness is off;
# 5. let `theory.flows.path.choose_path` decide the **path**: `Gamma` is out of reach here, so it
#    takes the central flow, started from GD's iterate before the onset (from `w0` itself when
#    the onset comes early) and compared with GD's moving averages on matched steps; step 5b
#    measures where GD's `eta_eff * S` has to be taken for that comparison (its iterates,
#    midpoints or time-averaged iterates);
# 6. draw a figure.
#
# Run it with `python examples/tutorial_cnn.py [--quick] [--out-dir DIR]` (or open the percent
# cells as a notebook). It prints the numbers it gets and writes `tutorial_cnn.png` to
# `--out-dir` (default `$SHARPSIM_TUTORIAL_OUT`, else a new temporary directory).
# `tests/test_tutorial_cnn.py` runs `--quick`. The rule of step 5 and its measured thresholds:
# docs/predict.md, "When phase I has not finished at the onset"; the central flow:
# docs/central_flow.md.

# %%
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import diffrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from sklearn.datasets import load_digits

import theory
from theory import EdgeSettings, LanczosTracker, SaveAt
from theory.analysis.midpoint import curvature_along, iterate_midpoints
from theory.analysis.trajectory import moving_average
from theory.flows.central import CurvatureScan, curvature_scan
from theory.flows.path import CentralPathResult, PathChoice, central_path, choose_path

# %% [markdown]
# ## Settings
#
# `eos0` is where the run starts, `eta_eff * S = eta * lambda_1(H(w0))`; the edge is 2.
# `eta_wd` is the intrinsic learning rate `eta * wd`: larger values reach the edge sooner but
# put GD's oscillating iterates further above it (docs/central_flow.md measures an offset of
# about `55-65 eta wd` on the project's MLP). The settings are chosen so that the run finishes
# on a CPU: 32 digits (320 one-hot residuals), the widths 4, 8, 32 (`D = 1348` weights in three
# groups), a start at half the edge (`eos0 = 1`) with `eta wd = 5e-3`, so that GD reaches the
# edge within about 10 steps (before `lead`: the central flow then starts from `w0`), and 130
# GD steps with up to `max_edge = 4` eigenvalues at the edge (a fifth arrives at step 137.4:
# with 140 steps the flow stopped there). The central flow's error control is looser than
# `central_flow`'s default (`rtol = 1e-6, atol = 1e-9` against `1e-7, 1e-10`): the compared
# quantities are moving averages known to a few percent, far above that error. The quick
# settings, what the test suite runs in a few minutes, stop at 76 GD steps, before a fourth
# eigenvalue reaches the edge (the flow holds three from step 59.7 on; it stopped at step 83.8
# when a fourth arrived with `max_edge = 3`), with `rtol = 1e-5, atol = 1e-8`.


# %%
@dataclass(frozen=True)
class Settings:
    """Everything the tutorial needs to know, in one place."""

    n_train: int = 32  # digits (a random subset of the 1797)
    widths: tuple[int, int, int] = (4, 8, 32)  # conv, conv, dense
    seed: int = 0  # initialization and fixed head (the subset uses seed + 1)
    eos0: float = 1.0  # eta * lambda_1(H(w0)): half the edge (the edge is 2)
    eta_wd: float = 5e-3  # eta * wd
    gd_steps: int = 130  # tracked GD steps (to and past the onset)
    lead: int = 20  # the central flow starts this many steps before GD's onset (or at 0)
    window: int = 16  # GD's moving-average window (steps; even: whole oscillation periods)
    activation: str = "gelu"  # "gelu" (smooth: the central flow needs it) or "relu" (Flax's)
    max_edge: int = 4  # eigenvalues the central flow may hold at the edge at once
    leave_tol: float = 1e-2  # the flow leaves the edge below eta (lambda_k + wd) = 2 - leave_tol
    rtol: float = 1e-6  # the central flow's PID controller
    atol: float = 1e-9

    @classmethod
    def quick(cls) -> Settings:
        return cls(gd_steps=76, max_edge=3, rtol=1e-5, atol=1e-8)


# %% [markdown]
# ## 1. The CNN: exactly scale-invariant by construction
#
# Flax's MNIST example is `Conv(32, 3x3) - relu - avg_pool - Conv(64, 3x3) - relu - avg_pool -
# Dense(256) - relu - Dense(10)`. To make the loss invariant to the scale of each trained layer
# (docs/theory.md section 1):
#
# * no biases (`use_bias=False`);
# * a BatchNorm after every trained layer, in training mode (the batch's own statistics), with
#   no affine parameters and `epsilon = 0` (`use_scale=False, use_bias=False, epsilon=0.0`;
#   the two-pass variance `use_fast_variance=False`);
# * the last layer `Dense(10)` **fixed**: a random matrix carried as data, not trained;
# * GELU instead of ReLU (`Settings.activation`): the invariance does not need it (BatchNorm
#   comes first), the central flow of step 5 does (step 3b).
#
# BatchNorm keeps running statistics in a `batch_stats` collection; in training mode they are
# not used, so the loss applies the model with `mutable=["batch_stats"]` and drops the update.
# The widths are narrowed to 4, 8 and 32 and the images are 8x8: `D = 3*3*1*4 + 3*3*4*8 +
# (2*2*8)*32 = 1348` weights. The loss is the one-hot
# MSE `L = |r|^2 / 2` with residuals `r = vec(f(X) - Y) / sqrt(n)` (`n * 10` of them).


# %%
def invariant_batch_norm() -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=False,
        use_bias=False,
        use_scale=False,
        epsilon=0.0,
        use_fast_variance=False,
    )


class DigitsCNN(nn.Module):
    """``conv - BN - act - avg_pool - conv - BN - act - avg_pool - dense - BN - act``.

    ``act`` is ``activation`` (default ``nn.gelu``: smooth, which the central flow of step 5
    needs; ``nn.relu`` is Flax's choice).
    """

    widths: tuple[int, int, int] = (4, 8, 64)
    activation: Callable[[jax.Array], jax.Array] = nn.gelu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c1, c2, hidden = self.widths
        x = nn.Conv(c1, (3, 3), use_bias=False, param_dtype=jnp.float64)(x)
        x = nn.avg_pool(self.activation(invariant_batch_norm()(x)), (2, 2), (2, 2))
        x = nn.Conv(c2, (3, 3), use_bias=False, param_dtype=jnp.float64)(x)
        x = nn.avg_pool(self.activation(invariant_batch_norm()(x)), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(hidden, use_bias=False, param_dtype=jnp.float64)(x)
        return self.activation(invariant_batch_norm()(x))


def digits_subset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 8x8 digits as NHWC images in ``[0, 1]`` and their one-hot labels."""
    digits = load_digits()
    idx = np.random.default_rng(seed).permutation(len(digits.target))[:n]
    x = digits.images[idx][..., None] / 16.0
    return x, np.eye(10)[digits.target[idx]]


def make_residuals(model: nn.Module, stats: Any) -> Callable[[Any, Any], jax.Array]:
    """``residuals(data, params) = vec(f(X) @ head - Y) / sqrt(n)`` for ``data = (X, Y, head)``."""

    def residuals(data: Any, params: Any) -> jax.Array:
        x, y, head = data
        feats, _ = model.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        return ((feats @ head - y) / jnp.sqrt(x.shape[0])).reshape(-1)

    return residuals


def mse_from(residuals: Callable[[Any, Any], jax.Array]) -> Callable[[Any, Any], jax.Array]:
    def mse(data: Any, params: Any) -> jax.Array:
        r = residuals(data, params)
        return 0.5 * jnp.vdot(r, r)

    return mse


# %% [markdown]
# ## 2. Flatten and check the invariance
#
# `theory.flatten_loss` turns the loss on the parameter pytree into a loss on a flat `w` and
# returns the start `w0` and the groups (one per trained tensor: the two kernels and the dense
# matrix). `theory.check_scale_invariance` measures `|L(c w) - L(w)|` and Euler's relation per
# group and raises if either exceeds its tolerance. As in the first tutorial, everything after
# this runs on the sphere of all weights (one group), which the per-layer invariance implies.


# %%
@dataclass(frozen=True)
class Problem:
    """The flattened CNN: loss on ``w``, the start, the groups and the residual count."""

    loss: Any  # (D,) -> ()
    w0: jax.Array
    groups: tuple[int, ...]
    n_residuals: int


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"gelu": nn.gelu, "relu": nn.relu}


def build_problem(s: Settings) -> Problem:
    if s.activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {s.activation!r}")
    x, y = digits_subset(s.n_train, s.seed + 1)
    model = DigitsCNN(s.widths, ACTIVATIONS[s.activation])
    variables = jax.jit(model.init)(jax.random.PRNGKey(s.seed), jnp.asarray(x[:4]))
    head = jax.random.normal(jax.random.PRNGKey(s.seed + 100), (s.widths[2], 10), jnp.float64)
    data = (jnp.asarray(x), jnp.asarray(y), head / math.sqrt(s.widths[2]))
    residuals = make_residuals(model, variables["batch_stats"])
    loss = jax.tree_util.Partial(mse_from(residuals), data)
    flat = theory.flatten_loss(loss, variables["params"])
    return Problem(flat.loss, flat.w0, flat.groups, int(y.size))


def check_invariance(prob: Problem) -> dict[str, float]:
    report = theory.check_scale_invariance(prob.loss, prob.w0, groups=prob.groups)
    return {"homogeneity": report.homogeneity, "euler": report.euler}


# %% [markdown]
# ## 3. Choose the learning rate
#
# GD is stable along the top Hessian direction while `eta * lambda_1(H(w)) < 2`. For a
# scale-invariant loss this is `eta_eff * S` with `eta_eff = eta / |w|^2` and `S` the spherical
# sharpness (the top eigenvalue at `w / |w|`). `theory.eos_quantity(loss, w0, 1.0)` gives
# `lambda_1(H(w0))`, and `eta = eos0 / lambda_1(H(w0))` starts the run at `eta_eff * S = eos0`,
# 1.0 (half the edge): below it, so that the onset is GD's own doing (from 0.6 on this network
# GD crosses the edge without oscillating and runs far above it for about 45 steps:
# docs/predict.md), and near enough to reach it within about ten steps.
#
# If phase I were over at once, the sharpness would stay at `S(w0)` and the norm would decay
# like `(1 - eta wd)^t`: the onset would come after `theory.predicted_eos_onset(eta, wd, eos0)`
# steps. On this CNN that S-based prediction is off, because `S` moves during phase I.


# %%
def choose_eta(prob: Problem, s: Settings) -> dict[str, float]:
    lam1, _ = theory.eos_quantity(prob.loss, prob.w0, 1.0)
    sharp, _ = theory.spherical_sharpness(prob.loss, prob.w0)
    eta = s.eos0 / float(lam1)
    norm_sq = float(jnp.vdot(prob.w0, prob.w0))
    return {
        "eta": eta,
        "wd": s.eta_wd / eta,
        "lambda1": float(lam1),
        "sharpness": float(sharp),
        "eos0": eta * float(sharp) / norm_sq,
        "onset_from_s0": theory.predicted_eos_onset(eta, s.eta_wd / eta, s.eos0),
    }


# %% [markdown]
# ### 3b. Is the loss smooth enough for the central flow?
#
# The central flow of step 5 differentiates `lambda_1(H(w))` (its `Sigma` balances
# `grad lambda_1` against the drift) and is integrated with an adaptive step: it needs a loss
# whose Hessian is continuous. A ReLU network's is not: autodiff gives the Hessian of the
# current activation pattern, which jumps whenever one of the network's pre-activations changes
# sign (here `32 * (8*8*4 + 4*4*8 + 32) = 13312` of them). `theory.flows.central.curvature_scan`
# measures `lambda_1` at 41 points along the first 1% of GD's first step and counts the jumps.
# With ReLU a large share of `lambda_1`'s change on that segment is jumps (0.39 here, all of it
# on 64 digits with width 64); the integrator shrinks its step to resolve each one (on 64 digits
# the central flow with ReLU did not finish in 50 minutes on a loaded machine), and
# `grad lambda_1` by autodiff misses the jumps altogether. The tutorial therefore uses GELU
# (`Settings.activation`), which is smooth: no jumps. GELU keeps the scale invariance
# (BatchNorm comes before the activation).


# %%
def curvature_jumps(prob: Problem, rates: dict[str, float]) -> CurvatureScan:
    """``lambda_1`` along the first 1% of GD's first step ``-eta (grad L(w0) + wd w0)``."""
    grad = jax.grad(prob.loss)(prob.w0)
    step = -rates["eta"] * (grad + rates["wd"] * prob.w0)
    return curvature_scan(prob.loss, prob.w0, step, span=0.01, points=41)


# %% [markdown]
# ## 4. Tracked GD+WD to and past the onset
#
# `theory.gd_wd` with `LanczosTracker(every=1, tol=1e-3, stop="error")` measures `eta_eff * S`
# at every step to a relative 1e-3 (docs/engine.md: the cheap setting that is still accurate at
# the edge) and `SaveAt(every=1)` keeps every iterate (the central flow of step 5 starts from
# one). `onset_step` is the first step with `eta_eff * S >= 2`. After it GD oscillates across
# the top direction, the norm keeps shrinking, and the sharpness `S` falls so that
# `eta_eff * S` stays near 2 (self-stabilization).


# %%
def tracked_gd(prob: Problem, rates: dict[str, float], s: Settings) -> theory.GDResult:
    return theory.gd_wd(
        prob.loss,
        prob.w0,
        eta=rates["eta"],
        wd=rates["wd"],
        steps=s.gd_steps,
        tracker=LanczosTracker(every=1, tol=1e-3, stop="error"),
        saveat=SaveAt(every=1),
    )


# %% [markdown]
# ## 5. The path after the onset
#
# `choose_path` looks at the run up to its onset. `Gamma` (the interpolating minimizers) is
# taken as reachable only if (a) there can be interpolating minimizers at all, `n <= D - k`
# for `n` residuals, `D` weights and `k` scale groups, and (b) phase I is over at the onset:
# `L(onset) / L(0) <= 1e-3`. Then `examples/tutorial.py` steps 5-7 apply (project onto `Gamma`,
# follow the sharpness-reduction flow). Here (b) fails: the loss at the onset is a large
# fraction of the start's. The Gauss-Newton projection onto `Gamma` would have to travel far
# (and on the project's MLP it does not converge from there: docs/central_flow.md).
#
# The other branch is the **central flow** (`theory.central_flow`, docs/central_flow.md). It
# needs no `Gamma`: it models GD's time-averaged trajectory, gradient flow below the edge and
# the edge-constrained flow at it, with `Sigma` (GD's predicted oscillation) keeping
# `eta (lambda_i + wd) <= 2`. `central_path` starts it from GD's iterate `lead` steps before
# the onset (still below the edge, not oscillating) and compares, on the same steps, GD's
# centered moving averages (`window` steps) of the loss and of `eta_eff * S` with the flow's
# predicted average loss and its `eta_eff * S`, over the steps from `onset + window` on.
#
# Two settings of the flow's edge handling (`EdgeSettings`) are the tutorial's choice: on this
# CNN the second and third eigenvalues climb towards the edge behind the first, so up to
# `max_edge = 3` may sit there at once (the default 2 would stop the flow when a third
# arrives), and an eigenvalue leaves the edge only once `eta (lambda_k + wd)` falls below
# `2 - leave_tol` with `leave_tol = 1e-2` (the default `1e-4` made the flow chatter between
# one and two edge eigenvalues on the project's small MLP: docs/predict.md).
#
# Status (measured on the quick settings, docs/predict.md "When phase I has not finished at the
# onset"): GD reaches the edge at step 10, so the flow starts from `w0` (step 0); it enters the
# edge at step 6.9 (3.1 steps early, -31% of the short way to the onset), holds two eigenvalues
# there from step 43.6 and three from step 59.7, and takes 112 integrator steps for the 76 GD
# steps (162 when a progress callback splits the solve into segments). On the 43 compared
# steps (26-68) the time-averaged loss agrees within 2.0% on average and the direction within
# 0.020 rad; the flow's `eta_eff * S` is 2.001 (its edge `2 - eta wd` =
# 1.995 plus the restoring term's lag), GD's moving average at its iterates 2.545: step 5b.
# The default settings (130 GD steps, `max_edge = 4`, `rtol = 1e-6`) run to the end (531 CPU
# seconds, 536 s wall at a load of about 6): the fourth eigenvalue reaches the edge at step
# 83.8, 457 integrator steps for the 130 GD steps; on the 97 compared steps 26-122 the
# time-averaged loss within 2.1% on average, the direction within 0.042 rad, the flow's
# `eta_eff * S` 1.995 against GD's moving average at its iterates 2.788 (step 5b: 2.487 at the
# midpoints, 2.379 at the averaged iterates). The earlier settings (64 digits, width 64,
# `eos0 = 0.6`, `eta wd = 3e-3`) did not finish: the flow stopped at step 298.8 of 330, where
# a fourth eigenvalue arrived with `max_edge = 3` (docs/predict.md).


# %%
def follow_path(
    prob: Problem, run: theory.GDResult, rates: dict[str, float], s: Settings
) -> tuple[PathChoice, CentralPathResult | None]:
    onset = run.onset_step
    if onset is None:
        raise RuntimeError(f"no EoS onset within {s.gd_steps} steps: raise gd_steps")
    choice = choose_path(
        run.loss,
        onset=int(onset),
        dim=int(prob.w0.shape[0]),
        n_residuals=prob.n_residuals,
        grad_norm=run.grad_norm,
    )
    if choice.branch == "gamma":
        return choice, None  # examples/tutorial.py steps 5-7 apply
    assert run.w is not None  # SaveAt keeps the iterates by default
    start = max(0, int(onset) - s.lead)
    path = central_path(
        prob.loss,
        step=run.step,
        loss=run.loss,
        eos=run.eos,
        w_start=jnp.asarray(run.w[start]),
        start=start,
        gd_onset=int(onset),
        eta=rates["eta"],
        wd=rates["wd"],
        window=s.window,
        iterates=run.w,
        edge=EdgeSettings(max_edge=s.max_edge, leave_tol=s.leave_tol),
        stepsize_controller=diffrax.PIDController(rtol=s.rtol, atol=s.atol),
    )
    return choice, path


# %% [markdown]
# ### 5b. Where GD's `eta_eff * S` is measured
#
# The tracker measures `eta_eff * S = eta * lambda_1(H(w_t))` at GD's iterates. At the edge GD
# oscillates across the top direction, and the curvature at the two ends of the oscillation is
# raised by it (through the third derivative), so the iterates' value sits above the edge even
# when the point they straddle is on it. The central flow models GD's **time-averaged**
# trajectory, so its `eta_eff * S` (held at the edge, `2 - eta wd`) is to be compared with the
# curvature at a time-averaged point, not with the average of the curvature at the iterates.
# `edge_measurements` measures `eta * lambda_1` on the compared steps at three kinds of point:
# GD's iterates `w_t`, its midpoints `(w_t + w_{t+1}) / 2`
# (`theory.analysis.midpoint.iterate_midpoints`, which cancel the period-2 oscillation to first
# order) and its `window`-step moving-average iterates (the central flow's counterpart), each
# with Lanczos (`curvature_along`, warm-started along the steps, Krylov dimension 64).
#
# Measured on the quick settings (means over the 43 compared steps 26-68): 2.543 at the
# iterates (the tracker's own 2.542), 2.170 at the midpoints, 2.171 at the averaged iterates,
# against the flow's 2.001. Measuring at the time-averaged point removes 0.37 of the 0.54 gap
# (69%); midpoints and averaged iterates agree within 0.002, so either is the place to compare.
# The remaining 0.17 (8.5%, about `34 eta wd`) is GD's time-averaged trajectory itself sitting
# above the edge, which the central flow (held at `2 - eta wd`) does not model. Over the default
# settings' longer horizon (97 steps 26-122) GD drifts further above: 2.778 at the iterates,
# 2.487 at the midpoints, 2.379 at the averaged iterates against the flow's 1.995 (the
# averaged point closes 0.40 of the 0.78 gap; it stays near 2.05 over steps 30-55 and rises to
# about 2.7 by step 120, after a fourth eigenvalue has reached the flow's edge).


# %%
def edge_measurements(
    prob: Problem, run: theory.GDResult, path: CentralPathResult, rates: dict[str, float]
) -> dict[str, np.ndarray]:
    """``eta * lambda_1(H)`` on the compared steps (``"step"``) at GD's iterates, midpoints and
    moving-average iterates, and the central flow's ``eta_eff * S`` (``"flow"``)."""
    assert run.w is not None
    w = np.asarray(run.w)
    steps = np.asarray(path.step[path.after])
    rows = steps - int(run.step[0])
    points = {
        "iterates": w[rows],
        "midpoints": iterate_midpoints(w, rows),
        "averaged": moving_average(w, path.window)[rows],
    }
    out = {"step": steps}
    for name, pts in points.items():
        curv = curvature_along(prob.loss, jnp.asarray(pts), k=1, lanczos_iters=64, spherical=False)
        assert curv.hessian is not None
        out[name] = rates["eta"] * np.asarray(curv.hessian[:, 0])
    out["tracked"] = np.asarray(run.eos)[rows]
    out["flow"] = np.asarray(path.flow_eos[path.after])
    return out


# %% [markdown]
# ## The figure
#
# Left: `eta_eff * S` of GD at its iterates (thin), its moving average (thick) and the central
# flow's, with the onset, and (step 5b, on the compared steps) `eta * lambda_1` at GD's
# midpoints and at its moving-average iterates. Middle: the loss, GD's moving average against
# the flow's predicted average. Right: the angle between GD's averaged iterate and the flow's.


# %%
def draw(
    run: theory.GDResult,
    path: CentralPathResult | None,
    out_dir: Path,
    edge: dict[str, np.ndarray] | None = None,
) -> Path:
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    ax_eos, ax_loss, ax_ang = fig.subplots(1, 3)
    ax_eos.plot(run.step, run.eos, lw=0.4, color="#aec7e8", label="GD (iterates)")
    ax_eos.axhline(2.0, color="#d62728", ls="--", lw=1)
    if run.onset_step is not None:
        ax_eos.axvline(run.onset_step, color="k", lw=0.8, label="GD onset")
    ax_loss.plot(run.step, run.loss, lw=0.4, color="#aec7e8", label="GD (iterates)")
    if path is not None:
        ax_eos.plot(path.step, path.gd_eos, color="#1f77b4", lw=1.5, label="GD (moving avg)")
        ax_eos.plot(path.step, path.flow_eos, color="#ff7f0e", lw=1.5, label="central flow")
        ax_loss.plot(path.step, path.gd_loss, color="#1f77b4", lw=1.5, label="GD (moving avg)")
        ax_loss.plot(path.step, path.flow_loss, color="#ff7f0e", lw=1.5, label="central flow")
        ax_ang.plot(path.step, path.angle, color="#2ca02c")
    if edge is not None:
        ax_eos.plot(edge["step"], edge["midpoints"], color="#9467bd", lw=1, label="GD (midpoints)")
        ax_eos.plot(
            edge["step"], edge["averaged"], color="#2ca02c", lw=1, ls="--", label="GD (averaged w)"
        )
    ax_eos.set(xlabel="step t", ylabel=r"$\eta_{\rm eff}\,S$", title="tracked GD+WD")
    ax_eos.legend(fontsize=7)
    ax_loss.set(xlabel="step t", ylabel="loss", yscale="log", title="time-averaged loss")
    ax_loss.legend(fontsize=7)
    ax_ang.set(xlabel="step t", ylabel="angle (rad)", title="GD (averaged) vs central flow")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "tutorial_cnn.png"
    fig.savefig(out, dpi=110)
    return out


# %% [markdown]
# ## Everything, in order
#
# `main(out_dir, quick)` runs the steps, prints what each one found and returns the key numbers
# (the test suite checks them).


# %%
def main(
    out_dir: str | Path | None = None, quick: bool = False, settings: Settings | None = None
) -> dict[str, Any]:
    # The tutorial computes in float64 (the script's choice; `theory` never flips this flag).
    jax.config.update("jax_enable_x64", True)
    s = settings if settings is not None else Settings.quick() if quick else Settings()
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="tutorial-cnn-"))
    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(part: str) -> str:
        nonlocal clock
        now = time.perf_counter()
        seconds[part] = now - clock
        clock = now
        return f"[{seconds[part]:.0f} s]"

    prob = build_problem(s)
    inv = check_invariance(prob)
    dim = int(prob.w0.shape[0])
    print(
        f"1-2. D = {dim} weights in groups {prob.groups}, {s.n_train} digits "
        f"({prob.n_residuals} residuals), activation {s.activation}"
    )
    print(
        f"     invariant: |L(cw) - L(w)| {inv['homogeneity']:.1e}, Euler {inv['euler']:.1e} "
        f"{lap('problem')}"
    )

    rates = choose_eta(prob, s)
    print(
        f"3.   lambda_1(H(w0)) = {rates['lambda1']:.4g}, S(w0) = {rates['sharpness']:.4g}: "
        f"eta = {rates['eta']:.4g} starts at eta_eff * S = {rates['eos0']:.3f}; "
        f"wd = {rates['wd']:.4g} (eta * wd = {s.eta_wd:g}) {lap('rates')}"
    )
    scans = {s.activation: curvature_jumps(prob, rates)}
    for other in ACTIVATIONS:
        if other not in scans:
            other_prob = build_problem(replace(s, activation=other))
            scans[other] = curvature_jumps(other_prob, choose_eta(other_prob, s))
    for name, scan in scans.items():
        print(
            f"3b.  {name}: lambda_1 on 1% of GD's first step: {scan.jumps} jumps in "
            f"{scan.lam.size - 1} intervals, share of its change off a constant slope "
            f"{scan.rough_share:.3f}"
        )
    print(f"     {lap('smoothness')}")

    run = tracked_gd(prob, rates, s)
    if run.onset_step is None:
        raise RuntimeError(f"no EoS onset within {s.gd_steps} steps: raise gd_steps")
    onset = int(run.onset_step)
    sharp = np.asarray(run.sharpness)
    eos = np.asarray(run.eos)
    eos_after = float(np.mean(eos[onset:]))
    s_end = float(np.mean(sharp[-s.window :]))
    print(
        f"4.   onset at step {onset} (S-based prediction {rates['onset_from_s0']:.0f}, "
        f"{(rates['onset_from_s0'] - onset) / onset:+.0%}); loss {run.loss[0]:.3f} -> "
        f"{run.loss[onset]:.3f} at the onset; S {sharp[0]:.4g} -> {sharp[onset]:.4g} at the "
        f"onset -> {s_end:.4g} at the end; mean eta_eff * S after the onset {eos_after:.3f} "
        f"{lap('gd')}"
    )

    choice, path = follow_path(prob, run, rates, s)
    print(
        f"5.   path: {choice.branch} (L(onset)/L(0) = {choice.loss_ratio:.3f}, "
        f"|grad| ratio {choice.grad_ratio:.3f}, D - k - n = {choice.codimension_slack})"
    )
    for reason in choice.reasons:
        print(f"       {reason}")
    result: dict[str, Any] = {}
    if path is None:
        print("     Gamma is reachable: examples/tutorial.py steps 5-7 (projection, flow) apply")
    else:
        flow_onset = float("nan") if path.flow.onset is None else path.flow.onset + path.start
        print(
            f"     central flow from step {path.start}: onset {flow_onset:.1f} (GD {onset}, "
            f"{path.onset_err:+.1%}); over steps {int(path.step[path.after][0])}.."
            f"{int(path.step[path.after][-1])}: mean eta_eff * S GD (moving avg) "
            f"{path.eos_gd_mean:.3f} vs "
            f"flow {path.eos_flow_mean:.3f} (rel. diff {path.eos_err:.3f}); time-averaged loss "
            f"rel. err {path.loss_err:.3f}; max angle {path.max_angle:.3f} rad; "
            f"{int(path.flow.mode.max())} eigenvalue(s) at the edge at most"
        )
        print(
            f"     the flow's mode changes: "
            f"{', '.join(f't={e.t + path.start:.1f} -> {e.mode}' for e in path.flow.events)}; "
            f"{path.flow.num_steps} integrator steps for {len(path.flow.t) - 1} GD steps"
        )
        result = {
            "path_start": path.start,
            "flow_onset": flow_onset,
            "onset_err": path.onset_err,
            "loss_err": path.loss_err,
            "eos_err": path.eos_err,
            "eos_gd_mean": path.eos_gd_mean,
            "eos_flow_mean": path.eos_flow_mean,
            "max_angle": path.max_angle,
            "compared_rows": int(np.sum(path.after)),
            "flow_steps": path.flow.num_steps,
            "max_mode": int(path.flow.mode.max()),
        }
    print(f"     {lap('path')}")
    edge = None
    if path is not None:
        edge = edge_measurements(prob, run, path, rates)
        means = {name: float(np.mean(v)) for name, v in edge.items() if name != "step"}
        print(
            f"5b.  mean eta * lambda_1 on the compared steps: GD iterates {means['iterates']:.3f} "
            f"(tracker {means['tracked']:.3f}), midpoints {means['midpoints']:.3f}, "
            f"{s.window}-step averaged iterates {means['averaged']:.3f}; central flow "
            f"{means['flow']:.3f} (edge {2 - s.eta_wd:g}) {lap('midpoints')}"
        )
        result["edge"] = means

    figure = draw(run, path, out, edge)
    print(f"6.   figure: {figure} {lap('figure')}")
    elapsed = sum(seconds.values())
    print("     seconds per part: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    return {
        "settings": s,
        "dim": dim,
        "groups": prob.groups,
        "n_residuals": prob.n_residuals,
        "invariance": inv,
        "eta": rates["eta"],
        "eos0": rates["eos0"],
        "onset": onset,
        "onset_from_s0": rates["onset_from_s0"],
        "loss_ratio": choice.loss_ratio,
        "sharpness_start": float(sharp[0]),
        "sharpness_onset": float(sharp[onset]),
        "sharpness_end": s_end,
        "eos_mean_after_onset": eos_after,
        "branch": choice.branch,
        "reasons": choice.reasons,
        "scans": {name: (scan.jumps, scan.rough_share) for name, scan in scans.items()},
        **result,
        "figure": figure,
        "seconds": elapsed,
        "seconds_per_part": seconds,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The sharpsim CNN tutorial (phase I unfinished).")
    parser.add_argument("--quick", action="store_true", help="smaller settings (the test's)")
    parser.add_argument(
        "--out-dir",
        default=os.environ.get("SHARPSIM_TUTORIAL_OUT"),
        help="where to write tutorial_cnn.png (default $SHARPSIM_TUTORIAL_OUT, else a temp dir)",
    )
    # parse_known_args: a notebook kernel passes its own arguments.
    ns, _ = parser.parse_known_args(argv)
    return ns


# %%
if __name__ == "__main__":
    args = parse_args()
    main(args.out_dir, quick=args.quick)
