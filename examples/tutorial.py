# %% [markdown]
# # Tutorial: your own normalized network, from its definition to the sharpness-reduction flow
#
# This script takes a small normalized network that *you* define (a Flax `linen` model on your
# own data) through every step of the simulator:
#
# 1. define the model and its loss so that the loss is exactly scale-invariant;
# 2. flatten it for `theory` and **check the invariance** (and see the error a model that is not
#    invariant gets);
# 3. **predict the Edge-of-Stability onset** of GD with weight decay;
# 4. run **tracked GD+WD** with the engine (`LanczosTracker`, `SaveAt`) and compare the onset
#    with the prediction;
# 5. **project** the iterate at the onset onto the manifold of minimizers `Gamma`
#    (Gauss-Newton projection for least squares);
# 6. integrate the **sharpness-reduction flow** on `Gamma` from there;
# 7. run **GD against the flow** on matched time `tau = 2 eta wd t` for several `eta * wd`.
#
# It is a plain Python script in the "percent" cell format (`# %%` cells, markdown in comments):
# run it with `python examples/tutorial.py [--quick] [--out-dir DIR]`, or open it as a notebook
# with any editor that reads percent cells (VS Code, Spyder, PyCharm, or jupytext). The cells
# define one function per step; the last cell runs them all (`main`). The full run takes about
# 75 s of one CPU core and `--quick` about 50 s, most of it compilation. It prints the key
# numbers and writes one figure, `tutorial.png`, to `--out-dir` (default:
# `$SHARPSIM_TUTORIAL_OUT`, else a new temporary directory). `tests/test_tutorial.py` runs it.
#
# The theory behind each step is in `docs/theory.md` (sections 1-3); the engine's parts in
# `docs/engine.md`.

# %%
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

import theory
from theory import LanczosTracker, NoTracking, SaveAt
from theory.core.errors import DegenerateSharpnessWarning

# %% [markdown]
# ## Settings
#
# `eta` is the learning rate and `wd` the weight decay; what matters for the direction of the
# weights is the *intrinsic learning rate* `eta * wd` (docs/theory.md section 2). The tracked
# run uses `eta_wd_gd`; the comparison with the flow uses the list `eta_wd`, whose smallest
# value should track the flow best. The quick settings are what the test suite runs.


# %%
@dataclass(frozen=True)
class Settings:
    """Everything the tutorial needs to know, in one place."""

    n_train: int = 32  # samples; fewer than parameters, so the minimizers form a manifold
    d_in: int = 8  # input dimension
    widths: tuple[int, ...] = (16, 16)  # hidden widths: D = 8*16 + 16*16 = 384 parameters
    seed: int = 0  # initialization (the data use seed + 1)
    eta: float = 0.1  # learning rate
    eta_wd_gd: float = 1e-3  # eta * wd of the tracked run from the initialization
    gd_steps: int = 1600  # steps of the tracked run (past the onset)
    tau_end: float = 1.0  # slow time to compare GD and the flow up to
    eta_wd: tuple[float, ...] = (4e-3, 1e-3, 2.5e-4)  # eta * wd values against the flow
    rows: int = 10  # GD rows compared with the flow per eta * wd

    @classmethod
    def quick(cls) -> Settings:
        return cls(eta_wd_gd=2e-3, gd_steps=800, tau_end=0.5, eta_wd=(5e-4,), rows=6)


# %% [markdown]
# ## 1. The model: exactly scale-invariant by construction
#
# A network's loss is invariant to the scale of a weight matrix when that matrix feeds a
# normalization and nothing else sees its scale. In Flax that means:
#
# * `nn.Dense(..., use_bias=False)`: a bias before the norm would not scale with the weights;
# * `nn.LayerNorm(epsilon=0.0, use_bias=False, use_scale=False, use_fast_variance=False)`: no
#   trained affine parameters after the norm, and `epsilon = 0` (Flax's default `1e-6` makes
#   `(c x - c mu) / sqrt(c^2 var + eps)` depend on `c`; the two-pass variance avoids
#   cancellation);
# * a **fixed** last layer (a random read-out carried as data, not trained).
#
# The data are a teacher-student regression: Gaussian inputs, targets from a random two-layer
# tanh teacher. With `n_train < D` (32 samples, 384 weights) the network can interpolate, and
# the interpolating directions form a manifold `Gamma` of codimension `n_train` on the sphere.
#
# The loss is the mean squared error `L = |r|^2 / 2` with residuals
# `r = (f(X) - y) / sqrt(n)`: the least-squares form that the Gauss-Newton projection (step 5)
# needs. Data go in as arguments (a `jax.tree_util.Partial`), never closed over, so the
# compiled runners receive them as inputs instead of baking them in as constants. The weights
# are float64 (`param_dtype`; `main` enables x64): the loss computes in the dtype of `w`, and
# the invariance check's tolerance is set per dtype.


# %%
def invariant_layer_norm() -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=0.0, use_bias=False, use_scale=False, use_fast_variance=False)


class TinyMLP(nn.Module):
    """``x -> tanh(LN(x W_1)) -> tanh(LN(h W_2))``: features ``(N, widths[-1])``."""

    widths: tuple[int, ...] = (16, 16)
    exact: bool = True  # False: Flax's default LayerNorm (trained scale and shift, eps = 1e-6)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.widths:
            x = nn.Dense(width, use_bias=False, param_dtype=jnp.float64)(x)
            x = invariant_layer_norm()(x) if self.exact else nn.LayerNorm()(x)
            x = jnp.tanh(x)
        return x


def teacher_student(n: int, d_in: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs ``(n, d_in)`` and standardized targets ``(n,)`` of a tanh teacher."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in))
    teacher = rng.standard_normal((d_in, 16)) / np.sqrt(d_in)
    y = np.tanh(x @ teacher) @ rng.standard_normal(16)
    return x, (y - y.mean()) / y.std()


def make_residuals(model: nn.Module) -> Callable[[Any, Any], jax.Array]:
    """``residuals(data, params) = (f(X) @ head - y) / sqrt(n)`` for ``data = (X, y, head)``."""

    def residuals(data: Any, params: Any) -> jax.Array:
        x, y, head = data
        return (model.apply({"params": params}, x) @ head - y) / jnp.sqrt(x.shape[0])

    return residuals


def mse_from(residuals: Callable[[Any, Any], jax.Array]) -> Callable[[Any, Any], jax.Array]:
    def mse(data: Any, params: Any) -> jax.Array:
        r = residuals(data, params)
        return 0.5 * jnp.vdot(r, r)

    return mse


# %% [markdown]
# ## 2. Flatten and check the invariance
#
# `theory` works on flat parameter vectors `w` in `R^D`. `theory.flatten_loss(loss_fn, params)`
# turns a loss on the parameter pytree into a loss on `w` and returns the start `w0`, the
# scale-invariance `groups` (one per parameter tensor with `groups="leaf"`) and `unravel`.
# It flattens any function of the parameters, so it also gives the residual map `w -> r(w)`.
#
# `theory.check_scale_invariance` measures `|L(c w) - L(w)|` and Euler's relation
# `<grad_g L(w), w_g> = 0` at `w0` and at random points near it, per group, and raises
# `theory.ScaleInvarianceError` when either exceeds the tolerance (1e-7 relative in float64).
# The tutorial checks the per-layer invariance (two groups) and then runs everything on the
# sphere of *all* weights (one group, `groups=None`), which the per-layer invariance implies:
# that is where the flow and the EoS equilibrium of docs/theory.md section 3 live.
#
# The second check is the same network with Flax's default `nn.LayerNorm()`: its trained scale
# and shift (and `epsilon`) break the invariance, and the check says so.


# %%
@dataclass(frozen=True)
class Problem:
    """The flattened network: loss and residuals on ``w``, the start and the groups."""

    loss: Any  # (D,) -> ()
    residual_fn: Any  # (D,) -> (n,)
    w0: jax.Array
    groups: tuple[int, ...]


def build_problem(s: Settings) -> Problem:
    x, y = teacher_student(s.n_train, s.d_in, s.seed + 1)
    model = TinyMLP(s.widths)
    # Initialized under jit: one compilation instead of one per operation of the forward pass.
    params = jax.jit(model.init)(jax.random.PRNGKey(s.seed), jnp.asarray(x[:2]))["params"]
    head = jax.random.normal(jax.random.PRNGKey(s.seed + 100), (s.widths[-1],), jnp.float64)
    data = (jnp.asarray(x), jnp.asarray(y), head / math.sqrt(s.widths[-1]))
    residuals = make_residuals(model)
    flat = theory.flatten_loss(jax.tree_util.Partial(mse_from(residuals), data), params)
    flat_r = theory.flatten_loss(jax.tree_util.Partial(residuals, data), params)
    return Problem(flat.loss, flat_r.loss, flat.w0, flat.groups)


def check_invariance(prob: Problem) -> dict[str, float]:
    report = theory.check_scale_invariance(prob.loss, prob.w0, groups=prob.groups)
    return {"homogeneity": report.homogeneity, "euler": report.euler}


def not_invariant_error(s: Settings) -> str:
    """The message the check gives the same network with Flax's default LayerNorm."""
    x, y = teacher_student(s.n_train, s.d_in, s.seed + 1)
    model = TinyMLP(s.widths, exact=False)
    params = jax.jit(model.init)(jax.random.PRNGKey(s.seed), jnp.asarray(x[:2]))["params"]
    # Its LayerNorm shifts start at zero, which the check would refuse first (a zero group is
    # not a point of a scale-invariant loss); in training they move: shift every weight a little.
    params = jax.tree.map(lambda p: p.astype(jnp.float64) + 0.1, params)
    head = jnp.ones((s.widths[-1],), jnp.float64) / math.sqrt(s.widths[-1])
    data = (jnp.asarray(x), jnp.asarray(y), head)
    flat = theory.flatten_loss(jax.tree_util.Partial(mse_from(make_residuals(model)), data), params)
    try:
        theory.check_scale_invariance(flat.loss, flat.w0, groups=flat.groups, name="default-LN MLP")
    except theory.ScaleInvarianceError as err:
        return str(err)
    raise AssertionError("the default-LayerNorm network passed the invariance check")


# %% [markdown]
# ## 3. Predict the Edge-of-Stability onset
#
# GD+WD, `w <- (1 - eta wd) w - eta grad L(w)`, first fits the data (phase I: the direction
# `w / |w|` flows to `Gamma` with the effective learning rate `eta / |w|^2`). Near `Gamma` the
# gradient vanishes, the norm decays like `(1 - eta wd)^t`, and the EoS quantity
# `eta_eff * S` (`S` = spherical sharpness, the top Hessian eigenvalue at `w / |w|`) grows like
# `(1 - eta wd)^{-2t}` until it reaches 2 (phase II). From `eta_eff * S = e0` that takes
# `log(2 / e0) / (-2 log(1 - eta wd))` steps: `theory.predicted_eos_onset(eta, wd, e0)`.
#
# Before running anything we can only guess `S` on `Gamma`: we take it at the Gauss-Newton
# projection of `w0` (step 5 explains it) with the norm of `w0` (the *a priori* prediction).
# Phase I changes both, so the prediction made from the state where phase I ends (the loss
# 1000 times below its start) is the one the theory is about (the *refined* prediction).


# %%
def a_priori_onset(prob: Problem, s: Settings) -> dict[str, float]:
    theta = theory.gauss_newton_project(prob.residual_fn, prob.w0).theta
    sharp, _ = theory.spherical_sharpness(prob.loss, theta)
    wd = s.eta_wd_gd / s.eta
    eos0 = s.eta / float(jnp.vdot(prob.w0, prob.w0)) * float(sharp)
    return {"eos0": eos0, "onset": theory.predicted_eos_onset(s.eta, wd, eos0)}


# %% [markdown]
# ## 4. Tracked GD+WD with the engine
#
# `theory.gd_wd` compiles the whole run (`lax.scan` inside `jit`). The **tracker** decides what
# is learned about the curvature: `LanczosTracker(every=1)` solves for the top Hessian
# eigenpair at every step (warm-started Lanczos, a few Hessian-vector products per step), so
# the onset is resolved to the step. The **recorder** `SaveAt(every=1)` keeps one row per step,
# iterates included. The result has arrays `step, w, norm, eta_eff, sharpness, eos, loss`
# and `onset_step`, the first step with `eta_eff * S >= 2`. The oscillation along the top
# eigenvector then has to grow from rounding level, so `eta_eff * S` overshoots 2 for a while
# before GD settles at the edge (the figure's left panel).


# %%
def tracked_gd(prob: Problem, s: Settings) -> theory.GDResult:
    return theory.gd_wd(
        prob.loss,
        prob.w0,
        eta=s.eta,
        wd=s.eta_wd_gd / s.eta,
        steps=s.gd_steps,
        tracker=LanczosTracker(every=1),
        saveat=SaveAt(every=1),
    )


def refined_onset(run: theory.GDResult, s: Settings) -> dict[str, float]:
    """Phase I's end (loss below 1e-3 of its start) and the onset predicted from there."""
    loss = np.asarray(run.loss)
    below = np.flatnonzero(loss <= 1e-3 * loss[0])
    if below.size == 0:
        raise RuntimeError("phase I did not end within the run: raise gd_steps")
    i = int(below[0])
    wait = theory.predicted_eos_onset(s.eta, s.eta_wd_gd / s.eta, float(run.eos[i]))
    step = int(run.step[i])
    return {"phase1_end": step, "eos": float(run.eos[i]), "onset": step + wait}


# %% [markdown]
# ## 5. Project onto the manifold of minimizers
#
# For an interpolating least-squares loss, `Gamma` = `{r = 0}` on the sphere, and
# `theory.gauss_newton_project(residual_fn, w)` reaches it matrix-free (JVPs, VJPs and
# conjugate gradients; it scales to `D ~ 1e6`). Its limit agrees with `Phi(w)`, the limit of the
# spherical gradient flow (`theory.project_to_manifold`), to first order in the distance: both
# land within `O(dist^2)` of each other. We project the iterate at the EoS onset.


# %%
def project(prob: Problem, w: Any) -> dict[str, Any]:
    proj = theory.gauss_newton_project(prob.residual_fn, jnp.asarray(w))
    w_hat = jnp.asarray(w) / jnp.linalg.norm(jnp.asarray(w))
    sharp, _ = theory.spherical_sharpness(prob.loss, proj.theta)
    return {
        "theta": proj.theta,
        "residual": float(proj.residual_norm),
        "iterations": int(proj.iterations),
        "distance": float(jnp.linalg.norm(proj.theta - w_hat)),
        "sharpness": float(sharp),
    }


# %% [markdown]
# ## 6. The sharpness-reduction flow
#
# At the EoS, GD oscillates across `Gamma` along the top eigenvector, and the third-order term
# of the loss drags the direction along `Gamma` down the gradient of `log lambda_1`. On the
# slow time `tau = 2 eta wd t` it follows
# `d theta / d tau = -(1/4) g / (1 + |g|^2 / 4)`, `g = P_Gamma grad log lambda_1`
# (form F1, docs/theory.md section 3), along which the sharpness never increases.
# `theory.sharpness_flow` integrates it at the save times `theory.SaveTimes(...)`;
# `geometry=theory.GaussNewton(residual_fn)` uses the matrix-free least-squares geometry
# (Lanczos for `lambda_1`, the residual Jacobian for the tangent projector, a Gauss-Newton
# retraction onto `Gamma` after every step). If `lambda_1` stops being simple (it meets
# `lambda_2`), the flow is undefined there; `degeneracy=theory.Degeneracy(action="stop")` then
# returns the solution up to that point with a warning.


# %%
def flow(prob: Problem, theta: Any, s: Settings) -> theory.SharpnessFlowResult:
    # The same number of saves as the comparison below, so both share one compilation.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateSharpnessWarning)
        return theory.sharpness_flow(
            prob.loss,
            theta,
            theory.SaveTimes(ts=np.linspace(0.0, s.tau_end, s.rows + 1)),
            geometry=theory.GaussNewton(prob.residual_fn),
            degeneracy=theory.Degeneracy(action="stop"),
        )


# %% [markdown]
# ## 7. GD against the flow
#
# For each `eta * wd`, GD+WD starts on the EoS equilibrium at `theta` (norm
# `|w|^2 = eta lambda_1 / 2`, oscillation amplitude `sqrt(eta wd / 2 / (1 + |g|^2/4))` along
# the top eigenvector: `theory.eos_equilibrium_start`), runs untracked (`NoTracking()`: only
# the gradient) up to `tau_end`, and `theory.compare_with_flow` projects every recorded
# iterate onto `Gamma` (with `theory.GaussNewton`: the Gauss-Newton projection, within
# `O(dist^2)` of `Phi`) and puts it next to the flow at the same `tau`. The distance
# `|Phi(w_t) - theta(tau)|` should shrink with `eta * wd` (the flow is the `eta * wd -> 0`
# limit), and the sharpness along GD should follow the flow's.


# %%
def gd_against_flow(prob: Problem, theta: Any, s: Settings) -> list[dict[str, Any]]:
    out = []
    for ewd in s.eta_wd:
        wd = ewd / s.eta
        every = max(1, math.ceil(s.tau_end / (2 * ewd) / s.rows))
        w_eq = theory.eos_equilibrium_start(
            prob.loss, theta, eta=s.eta, wd=wd, geometry=theory.GaussNewton(prob.residual_fn)
        )
        gd = theory.gd_wd(
            prob.loss,
            w_eq,
            eta=s.eta,
            wd=wd,
            steps=every * s.rows,
            tracker=NoTracking(),
            saveat=SaveAt(every=every),
        )
        assert gd.w is not None  # SaveAt keeps the iterates by default
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DegenerateSharpnessWarning)
            cmp = theory.compare_with_flow(
                prob.loss,
                gd.step,
                gd.w,
                eta=s.eta,
                wd=wd,
                t0=0,
                geometry=theory.GaussNewton(prob.residual_fn),
                degeneracy=theory.Degeneracy(action="stop"),
            )
        out.append(
            {
                "eta_wd": ewd,
                "tau": cmp.tau,
                "distance": cmp.dist_phi,
                "sharpness_gd": cmp.sharpness_phi,
                "sharpness_flow": cmp.sharpness_flow,
                "travel": float(np.linalg.norm(cmp.flow[-1] - cmp.flow[0])),
            }
        )
    return out


# %% [markdown]
# ## The figure
#
# Left: the EoS quantity of the tracked run with the predicted and measured onsets. Middle: the
# sharpness along GD (projected onto `Gamma`) for each `eta * wd` and along the flow. Right:
# the distance between GD and the flow on matched time.


# %%
def draw(
    run: theory.GDResult,
    onsets: dict[str, float],
    fl: theory.SharpnessFlowResult,
    comparisons: list[dict[str, Any]],
    out_dir: Path,
) -> Path:
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    ax_eos, ax_sharp, ax_dist = fig.subplots(1, 3)
    ax_eos.plot(run.step, run.eos, lw=0.5, color="#1f77b4", label="GD+WD")
    ax_eos.axhline(2.0, color="#d62728", ls="--", lw=1)
    ax_eos.axvline(onsets["a_priori"], color="#7f7f7f", ls=":", label="predicted (a priori)")
    ax_eos.axvline(onsets["refined"], color="#d62728", ls=":", label="predicted (after phase I)")
    ax_eos.axvline(onsets["measured"], color="k", lw=0.8, label="measured onset")
    ax_eos.set(xlabel="step t", ylabel=r"$\eta_{\rm eff}\,S$", title="tracked GD+WD")
    ax_eos.legend(fontsize=7)
    for c in comparisons:
        ax_sharp.plot(c["tau"], c["sharpness_gd"], "o", ms=3, label=f"GD, eta*wd={c['eta_wd']:g}")
        ax_dist.plot(c["tau"][1:], c["distance"][1:], "o-", ms=3, label=f"eta*wd={c['eta_wd']:g}")
    ax_sharp.plot(fl.tau, fl.sharpness, color="#d62728", lw=1.5, label="flow (F1)")
    ax_sharp.set(xlabel=r"$\tau = 2\eta\,wd\,t$", ylabel=r"$\lambda_1$ on $\Gamma$")
    ax_sharp.set_title("sharpness: GD (projected) vs flow")
    ax_sharp.legend(fontsize=7)
    ax_dist.set(xlabel=r"$\tau$", ylabel=r"$|\Phi(w_t) - \theta(\tau)|$", yscale="log")
    ax_dist.set_title("GD against the flow")
    ax_dist.legend(fontsize=7)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tutorial.png"
    fig.savefig(path, dpi=110)
    return path


# %% [markdown]
# ## Everything, in order
#
# `main(out_dir, quick)` runs the steps above, prints what each one found and returns the key
# numbers (the test suite checks them).


# %%
def main(out_dir: str | Path | None = None, quick: bool = False) -> dict[str, Any]:
    # The tutorial computes in float64 (the script's choice; `theory` never flips this flag).
    jax.config.update("jax_enable_x64", True)
    s = Settings.quick() if quick else Settings()
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="tutorial-"))
    start = time.perf_counter()

    prob = build_problem(s)
    inv = check_invariance(prob)
    print(f"1-2. D = {prob.w0.shape[0]} weights in groups {prob.groups}, n = {s.n_train} samples")
    print(f"     invariant: |L(cw) - L(w)| {inv['homogeneity']:.1e}, Euler {inv['euler']:.1e}")
    err = not_invariant_error(s)
    print(f"     Flax's default LayerNorm is rejected:\n       {err[:160]}...")

    prior = a_priori_onset(prob, s)
    print(
        f"3.   eta = {s.eta}, wd = {s.eta_wd_gd / s.eta:g}: eta_eff * S starts at "
        f"{prior['eos0']:.3f} -> onset predicted a priori at step {prior['onset']:.0f}"
    )

    run = tracked_gd(prob, s)
    if run.onset_step is None:
        raise RuntimeError(f"no EoS onset within {s.gd_steps} steps: raise gd_steps")
    refined = refined_onset(run, s)
    onset = int(run.onset_step)
    row = int(np.searchsorted(run.step, onset))  # the row of the onset step
    eos_phase = np.asarray(run.eos)[row + (len(run.step) - row) // 4 :]  # settled EoS rows
    print(
        f"4.   tracked GD: phase I ends at step {refined['phase1_end']} (eta_eff * S = "
        f"{refined['eos']:.3f}), predicted onset {refined['onset']:.0f}, measured {onset} "
        f"({(onset - refined['onset']) / refined['onset']:+.1%}); "
        f"mean eta_eff * S after it {eos_phase.mean():.3f}"
    )

    proj = project(prob, np.asarray(run.w)[row])
    print(
        f"5.   Gauss-Newton projection of w at the onset: {proj['iterations']} steps, "
        f"|r| = {proj['residual']:.1e}, distance {proj['distance']:.2e}, "
        f"lambda_1 = {proj['sharpness']:.2f}"
    )

    fl = flow(prob, proj["theta"], s)
    print(
        f"6.   flow: lambda_1 {fl.sharpness[0]:.2f} -> {fl.sharpness[-1]:.2f} at tau = "
        f"{fl.tau[-1]:.2f} ({fl.num_steps} steps, lambda_2 / lambda_1 "
        f"<= {np.max(fl.lambda2 / fl.sharpness):.3f})"
    )

    comparisons = gd_against_flow(prob, proj["theta"], s)
    print("7.   GD against the flow at the last compared tau:")
    for c in comparisons:
        rel = abs(c["sharpness_gd"][-1] - c["sharpness_flow"][-1]) / c["sharpness_flow"][-1]
        c["sharpness_rel_diff"] = float(rel)
        print(
            f"       eta*wd = {c['eta_wd']:g}: tau = {c['tau'][-1]:.2f}, "
            f"|Phi(w_t) - theta(tau)| = {c['distance'][-1]:.2e} (flow moved "
            f"{c['travel']:.2e}), lambda_1 GD {c['sharpness_gd'][-1]:.2f} vs flow "
            f"{c['sharpness_flow'][-1]:.2f}"
        )

    onsets = {"a_priori": prior["onset"], "refined": refined["onset"], "measured": onset}
    figure = draw(run, onsets, fl, comparisons, out)
    elapsed = time.perf_counter() - start
    print(f"     figure: {figure} ({elapsed:.0f} s)")
    return {
        "settings": s,
        "dim": int(prob.w0.shape[0]),
        "groups": prob.groups,
        "invariance": inv,
        "not_invariant_error": err,
        "predicted_onset_a_priori": prior["onset"],
        "predicted_onset": refined["onset"],
        "phase1_end": refined["phase1_end"],
        "onset": onset,
        "eos_mean_after_onset": float(eos_phase.mean()),
        "projection": {k: v for k, v in proj.items() if k != "theta"},
        "flow_tau": fl.tau,
        "flow_sharpness": fl.sharpness,
        "comparisons": comparisons,
        "figure": figure,
        "seconds": elapsed,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The sharpsim tutorial on your own network.")
    parser.add_argument("--quick", action="store_true", help="smaller settings (the test's)")
    parser.add_argument(
        "--out-dir",
        default=os.environ.get("SHARPSIM_TUTORIAL_OUT"),
        help="where to write tutorial.png (default $SHARPSIM_TUTORIAL_OUT, else a temp dir)",
    )
    # parse_known_args: a notebook kernel passes its own arguments.
    ns, _ = parser.parse_known_args(argv)
    return ns


# %%
if __name__ == "__main__":
    args = parse_args()
    main(args.out_dir, quick=args.quick)
