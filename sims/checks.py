"""Registry of numerical checks of the papers' statements, and the theorem report.

Each check states a claim, where it comes from (``identity``: exact mathematics of scale
invariance; ``theorem``: stated in a paper; ``derived``: a prediction derived in docs/theory.md and
not read in a paper), the predicted value, the measured value, a tolerance and pass/fail.
``python -m sims check`` runs them all and writes ``<results>/checks/report.md`` and
``report.json`` (atomically). Checks that need simulation results read the stored ones, running
the simulation at the chosen scale first if there are none.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from theory.curvature import grad_lambda1
from theory.flow import sharpness_flow
from theory.gd import gd_wd
from theory.problems import PROBLEMS
from theory.sharpness import spherical_sharpness
from theory.tracking import fit_slope

from . import gd_vs_flow, net_flow, networks, phases, registry
from ._runtime import dtype_from_config
from ._store import ResultStore, StoredRun, _write_text, provenance

Kind = Literal["identity", "theorem", "derived"]


@dataclass(frozen=True)
class CheckResult:
    """One measured statement."""

    name: str
    claim: str
    kind: Kind
    source: str
    predicted: float
    measured: float
    tolerance: str
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What checks may use: the results store and the scale for missing simulations."""

    store: ResultStore
    scale: str = "quick"
    _cache: dict[str, StoredRun] = field(default_factory=dict)

    def results(self, sim: str) -> StoredRun:
        """Stored results of ``sim`` at ``scale`` (computed first if absent)."""
        if sim not in self._cache:
            module: Any = registry.module(sim)
            cfg = module.Config.preset(self.scale)
            self._cache[sim] = module.run_and_store(cfg, results_dir=self.store.root)
        return self._cache[sim]


CheckFn = Callable[[Context], list[CheckResult]]
REGISTRY: dict[str, CheckFn] = {}
# Check results (by name) known to fail, with the reason: shown as "expected FAIL" in the
# report and not counted by --strict. Declared next to the checks (expect_failure).
EXPECTED_FAILURES: dict[str, str] = {}
# Checks that need no stored simulation (they compute what they test): run strictly by the
# default test suite (tests/test_sims.py), so a new FAIL there stops CI.
FAST_CHECKS = (
    "scale_invariance_identities",
    "closed_form_sharpness",
    "norm_recursion",
    "intrinsic_lr",
    "flow_closed_form",
    "flow_monotone",
    "flow_independent",
    "integrator_accuracy",
)


def expect_failure(name: str, reason: str) -> None:
    """Declare that the check result ``name`` is known to fail, and why."""
    if not reason.strip():
        raise ValueError(f"an expected failure needs a reason: {name!r}")
    EXPECTED_FAILURES[name] = reason


def unexpected_failures(results: Sequence[CheckResult]) -> list[CheckResult]:
    """The failed results that are not declared expected failures."""
    return [r for r in results if not r.passed and r.name not in EXPECTED_FAILURES]


def register(name: str) -> Callable[[CheckFn], CheckFn]:
    def deco(fn: CheckFn) -> CheckFn:
        REGISTRY[name] = fn
        return fn

    return deco


def _rel(measured: float, predicted: float) -> float:
    return abs(measured - predicted) / abs(predicted)


def _within(
    name: str,
    claim: str,
    kind: Kind,
    source: str,
    predicted: float,
    measured: float,
    rtol: float,
    **details: Any,
) -> CheckResult:
    ok = bool(np.isfinite(measured) and _rel(measured, predicted) <= rtol)
    return CheckResult(
        name,
        claim,
        kind,
        source,
        float(predicted),
        float(measured),
        f"relative {rtol:g}",
        ok,
        details,
    )


def _at_most(
    name: str, claim: str, kind: Kind, source: str, measured: float, bound: float, **details: Any
) -> CheckResult:
    ok = bool(np.isfinite(measured) and measured <= bound)
    return CheckResult(
        name, claim, kind, source, 0.0, float(measured), f"<= {bound:g}", ok, details
    )


# --------------------------------------------------------------------------------------------
# Identities on every analytic problem (float64, dense oracles)
# --------------------------------------------------------------------------------------------


def _near_points(prob: Any, n: int, seed: int) -> jnp.ndarray:
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 * n)
    on = jnp.stack([prob.sample_on_manifold(k, jnp.float64) for k in keys[:n]])
    noise = jnp.stack([jax.random.normal(k, (prob.dim,), jnp.float64) for k in keys[n:]])
    return on + 0.05 * noise


@register("scale_invariance_identities")
def _identities(ctx: Context) -> list[CheckResult]:
    dtype_from_config("float64")
    out = []
    for name in PROBLEMS:
        prob = PROBLEMS[name]()
        pts = _near_points(prob, 4, 0) * 3.7
        loss = prob.loss
        vals = jax.vmap(loss)(pts)
        homog = float(jnp.max(jnp.abs(jax.vmap(loss)(0.31 * pts) - vals)) / jnp.max(jnp.abs(vals)))
        grads = jax.vmap(jax.grad(loss))(pts)
        euler = float(
            jnp.max(
                jnp.abs(jnp.sum(grads * pts, 1))
                / (jnp.linalg.norm(grads, axis=1) * jnp.linalg.norm(pts, axis=1))
            )
        )
        hess = jax.vmap(jax.hessian(loss))(pts)
        hw = float(
            jnp.max(
                jnp.linalg.norm(jnp.einsum("nij,nj->ni", hess, pts) + grads, axis=1)
                / jnp.linalg.norm(grads, axis=1)
            )
        )
        src = "docs/theory.md section 1"
        out += [
            _at_most(
                f"{name}: L(cw) = L(w)", "homogeneity of degree 0", "identity", src, homog, 1e-12
            ),
            _at_most(
                f"{name}: <grad L(w), w> = 0",
                "Euler identity (cosine)",
                "identity",
                src,
                euler,
                1e-12,
            ),
            _at_most(
                f"{name}: H w = -grad L",
                "relative error of H(w) w + grad L(w)",
                "identity",
                src,
                hw,
                1e-10,
            ),
        ]
    return out


@register("closed_form_sharpness")
def _closed_forms(ctx: Context) -> list[CheckResult]:
    """Lanczos spherical sharpness and third-derivative gradient vs the closed forms on Gamma."""
    dtype_from_config("float64")
    out = []
    for name in PROBLEMS:
        prob = PROBLEMS[name]()
        keys = jax.random.split(jax.random.PRNGKey(1), 3)
        err_l, err_g = 0.0, 0.0
        for k in keys:
            u = prob.sample_on_manifold(k, jnp.float64)
            lam, v = spherical_sharpness(prob.loss, u, check_invariance=False)
            err_l = max(err_l, float(abs(lam - prob.lambda1(u)) / prob.lambda1(u)))
            g = prob.tangent_projector(u) @ grad_lambda1(prob.loss, u, v) / lam
            ref = prob.riemannian_grad_log_lambda1(u)
            err_g = max(err_g, float(jnp.linalg.norm(g - ref) / max(jnp.linalg.norm(ref), 1e-3)))
        out += [
            _at_most(
                f"{name}: Lanczos S = closed-form lambda_1",
                "relative error on Gamma",
                "identity",
                "docs/theory.md section 1",
                err_l,
                1e-10,
            ),
            _at_most(
                f"{name}: P D^3L[v1,v1]/lambda_1 = closed-form g",
                "Hellmann-Feynman gradient of log lambda_1 (relative)",
                "identity",
                "docs/theory.md section 3",
                err_g,
                1e-8,
            ),
        ]
    return out


# --------------------------------------------------------------------------------------------
# GD+WD: exact identities of the update
# --------------------------------------------------------------------------------------------


@register("norm_recursion")
def _norm_recursion(ctx: Context) -> list[CheckResult]:
    dtype_from_config("float64")
    prob = PROBLEMS["curved_manifold"]()
    w0 = jnp.asarray(prob.start) * 0.5
    eta, wd = 0.1, 0.05
    res = gd_wd(prob.loss, w0, eta=eta, wd=wd, steps=400, track_sharpness=False)
    assert res.w is not None
    n2 = res.norm**2
    u = res.w / res.norm[:, None]
    g = np.asarray(jax.vmap(jax.grad(prob.loss))(jnp.asarray(u)))
    pred = (1 - eta * wd) ** 2 * n2[:-1] + eta**2 * np.sum(g[:-1] ** 2, 1) / n2[:-1]
    err = float(np.max(np.abs(n2[1:] - pred) / n2[1:]))
    return [
        _at_most(
            "|w_{t+1}|^2 = (1-eta wd)^2 |w_t|^2 + eta^2 |grad L(w_hat)|^2/|w_t|^2",
            "max relative error over 400 steps (curved_manifold)",
            "identity",
            "docs/theory.md section 2",
            err,
            1e-12,
        )
    ]


@register("intrinsic_lr")
def _intrinsic_lr(ctx: Context) -> list[CheckResult]:
    """Exact for c = 2 (power-of-two scaling is exact in floating point) over a run that enters
    the EoS; for c = 3.7 rounding differs, and the EoS oscillation amplifies the difference, so
    it is checked over the first 250 steps (before the onset near step 290) and the deviation
    after 2000 steps is reported in the details."""
    dtype_from_config("float64")
    prob = PROBLEMS["great_circle"]()
    w0 = jnp.asarray(prob.start) * 0.7
    out = []
    for c, steps, tol in ((2.0, 2000, 1e-14), (3.7, 250, 1e-12)):
        a = gd_wd(
            prob.loss, w0, eta=0.1, wd=0.02, steps=2000, track_sharpness=False, perturbation=0.0
        )
        b = gd_wd(
            prob.loss, c * w0, eta=c**2 * 0.1, wd=0.02 / c**2, steps=2000, track_sharpness=False
        )
        assert a.w is not None and b.w is not None
        dev = np.max(np.abs(b.w - c * a.w), axis=1) / np.max(np.abs(c * a.w), axis=1)
        out.append(
            _at_most(
                f"(c^2 eta, wd/c^2, c w0) gives c w_t, c = {c}",
                f"max relative deviation over {steps} steps",
                "identity",
                "docs/theory.md section 2",
                float(dev[: steps + 1].max()),
                tol,
                deviation_after_2000_steps=float(dev[-1]),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# The Edge of Stability, from the phases simulation
# --------------------------------------------------------------------------------------------


@register("edge_of_stability")
def _eos(ctx: Context) -> list[CheckResult]:
    stored = ctx.results(phases.NAME)
    cfg = stored.meta["config"]
    out = []
    for name, s in stored.meta["summary"].items():
        d = {"eta": cfg["eta"], "wd": cfg["wd"], "steps": cfg["steps"], "run": str(stored.path)}
        if s.get("onset") is None:
            out.append(
                CheckResult(
                    f"{name}: EoS reached",
                    "eta_eff * S reaches 2",
                    "theorem",
                    "LLA22",
                    2.0,
                    float(s["eos_mean_last_quarter"]),
                    "reached",
                    False,
                    d,
                )
            )
            continue
        out += [
            _within(
                f"{name}: eta_eff * S -> 2",
                "mean over the last quarter of the run",
                "theorem",
                "LLA22 (EoS); docs/theory.md section 2",
                2.0,
                s["eos_mean_last_quarter"],
                0.05,
                std=s["eos_std_last_quarter"],
                **d,
            ),
            _within(
                f"{name}: EoS onset step",
                "log(2/(eta_eff_0 S)) / (-2 log(1 - eta wd))",
                "derived",
                "docs/theory.md section 3",
                s["predicted_onset"],
                s["onset"],
                0.02,
                **d,
            ),
            CheckResult(
                f"{name}: S falls during EoS",
                "S at the end < S at the onset",
                "theorem",
                "LLA22 (sharpness reduction)",
                s["sharpness_at_onset"],
                s["sharpness_end"],
                "end < onset",
                bool(s["sharpness_end"] < s["sharpness_at_onset"]),
                d,
            ),
            _within(
                f"{name}: |w|^2 ~ eta lambda_1 / 2",
                "<|w|^2> / (eta <S> / 2), last quarter",
                "derived",
                "docs/theory.md section 3",
                1.0,
                s["norm_sq_ratio"],
                0.05,
                **d,
            ),
            _within(
                f"{name}: amplitude^2 ~ eta wd / 2",
                "<dist(w_hat, Gamma)^2> / (eta wd / 2), last quarter (g ~ 0 there)",
                "derived",
                "docs/theory.md section 3",
                1.0,
                s["amplitude_sq_ratio"],
                0.25,
                **d,
            ),
            _within(
                f"{name}: loss ~ eta wd lambda_1 / 4",
                "<L> / (eta wd <S> / 4), last quarter",
                "derived",
                "docs/theory.md section 3",
                1.0,
                s["loss_ratio"],
                0.25,
                **d,
            ),
        ]
    return out


# --------------------------------------------------------------------------------------------
# The sharpness-reduction flow
# --------------------------------------------------------------------------------------------


@register("flow_closed_form")
def _flow_closed_form(ctx: Context) -> list[CheckResult]:
    """The integrated flows against the closed-form solutions of the 1-D problems."""
    dtype_from_config("float64")
    out = []
    for name in ("great_circle", "ire_toy"):
        prob = PROBLEMS[name]()
        for form in ("F1", "F0"):
            res = sharpness_flow(
                prob.loss,
                jnp.asarray(prob.start),
                tau=4.0,
                num_saves=5,
                form=form,
                rtol=1e-10,
                atol=1e-12,
            )
            ref = np.asarray(prob.flow_closed_form(jnp.asarray(res.theta[0]), 4.0, form))
            err = float(np.linalg.norm(res.theta[-1] - ref))
            out.append(
                _at_most(
                    f"{name}: flow {form} endpoint at tau = 4 = closed form",
                    "|theta(4) - closed form| (adaptive, rtol 1e-10)",
                    "identity",
                    "docs/theory.md section 3; theory/problems.py",
                    err,
                    1e-6,
                    steps=res.num_steps,
                )
            )
    return out


@register("flow_monotone")
def _flow_monotone(ctx: Context) -> list[CheckResult]:
    """lambda_1 never increases along either flow; d log lambda_1/dtau = <g, theta'>."""
    dtype_from_config("float64")
    out = []
    for name in PROBLEMS:
        prob = PROBLEMS[name]()
        for form in ("F1", "F0"):
            res = sharpness_flow(
                prob.loss,
                jnp.asarray(prob.start),
                tau=4.0,
                num_saves=161,
                form=form,
                rtol=1e-10,
                atol=1e-12,
            )
            rise = float(np.max(np.diff(res.sharpness)) / res.sharpness[0])
            out.append(
                _at_most(
                    f"{name}: lambda_1 non-increasing along {form}",
                    "largest relative increase between saves",
                    "theorem",
                    "LLA22 / docs/theory.md section 3",
                    rise,
                    1e-12,
                )
            )
            # d log lambda_1 / dtau = -|g|^2/4 (F0) or -|g|^2/4/(1+|g|^2/4) (F1).
            dlog = np.gradient(np.log(res.sharpness), res.tau)
            g2 = res.g_norm**2
            pred = -g2 / 4 if form == "F0" else -g2 / 4 / (1 + g2 / 4)
            err = float(np.max(np.abs(dlog - pred)[2:-2]) / np.max(np.abs(pred)))
            out.append(
                _at_most(
                    f"{name}: d log lambda_1/dtau = <g, dtheta/dtau> ({form})",
                    "relative error of the finite-difference rate (step 0.025)",
                    "identity",
                    "docs/theory.md section 3",
                    err,
                    5e-3,
                )
            )
    return out


@register("flow_independent")
def _flow_independent(ctx: Context) -> list[CheckResult]:
    """curved_manifold (no closed-form flow): sharpness_flow against an independent RK4 of the
    closed-form Riemannian field (no loss derivatives, no diffrax; dt = 1e-3, renormalized)."""
    dtype_from_config("float64")
    prob = PROBLEMS["curved_manifold"]()
    res = sharpness_flow(
        prob.loss, jnp.asarray(prob.start), tau=2.0, num_saves=3, rtol=1e-10, atol=1e-12
    )

    def field(y: jax.Array) -> jax.Array:
        g = prob.riemannian_grad_log_lambda1(y / jnp.linalg.norm(y))
        return -0.25 * g / (1 + 0.25 * jnp.vdot(g, g))

    def rk4(y: jax.Array, _: None) -> tuple[jax.Array, None]:
        h = 1e-3
        k1 = field(y)
        k2 = field(y + h / 2 * k1)
        k3 = field(y + h / 2 * k2)
        k4 = field(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return y / jnp.linalg.norm(y), None

    ref, _ = jax.lax.scan(rk4, jnp.asarray(res.theta[0]), None, length=2000)
    err = float(jnp.linalg.norm(res.theta[-1] - ref))
    return [
        _at_most(
            "curved_manifold: flow F1 at tau = 2 = independent integration",
            "|theta(2) - RK4 of the closed-form field (dt 1e-3)|",
            "identity",
            "docs/theory.md section 3; theory/problems.py",
            err,
            1e-6,
        )
    ]


@register("integrator_accuracy")
def _integrators(ctx: Context) -> list[CheckResult]:
    """Adaptive error against the requested tolerance; the fixed-step projected RK4's order."""
    dtype_from_config("float64")
    prob = PROBLEMS["great_circle"]()
    start = jnp.asarray(prob.start)
    out = []

    def error(res: Any) -> float:
        ref = np.asarray(prob.flow_closed_form(jnp.asarray(res.theta[0]), 2.0, "F1"))
        return float(np.linalg.norm(res.theta[-1] - ref))

    for rtol in (1e-4, 1e-6, 1e-8, 1e-10):
        res = sharpness_flow(prob.loss, start, tau=2.0, num_saves=3, rtol=rtol, atol=rtol / 100)
        out.append(
            _at_most(
                f"adaptive flow error at rtol = {rtol:g} (great_circle, F1)",
                "|theta(2) - closed form| / rtol",
                "identity",
                "diffrax Tsit5 + PID",
                error(res) / rtol,
                30.0,
                steps=res.num_steps,
            )
        )
    dts = (0.2, 0.1, 0.05, 0.025)
    errs = [
        error(sharpness_flow(prob.loss, start, tau=2.0, num_saves=3, method="rk4", dt=dt))
        for dt in dts
    ]
    slope, _ = fit_slope(np.asarray(dts), np.asarray(errs))
    out.append(
        _within(
            "projected RK4 convergence order (great_circle, F1)",
            "log-log slope of the error at tau = 2 against dt",
            "identity",
            "classical RK4 with a retraction",
            4.0,
            slope,
            0.15,
            dt=list(dts),
            errors=errs,
        )
    )
    return out


@register("gd_tracks_flow")
def _gd_tracks_flow(ctx: Context) -> list[CheckResult]:
    stored = ctx.results(gd_vs_flow.NAME)
    out = []
    for key, s in stored.meta["summary"].items():
        problem, start = key.split(".")
        ewd = s["eta_wd"]
        d = {
            "eta_wd": ewd,
            "dist_tau2_F1": s["dist_tau2_F1"],
            "dist_tau2_F0": s["dist_tau2_F0"],
            "run": str(stored.path),
        }
        if start == "equilibrium":
            out.append(
                CheckResult(
                    f"{problem}: GD tracks flow F1 from the EoS equilibrium",
                    "log-log slope of |Phi(w_t) - theta(tau=2)| against eta*wd",
                    "theorem",
                    "LLA22 / ALP22 (error -> 0 as eta*wd -> 0); slope ~1 measured in "
                    "docs/theory.md",
                    1.0,
                    s["slope_tau2_F1"],
                    "slope >= 0.5 and distance < 1e-3 at the smallest",
                    bool(s["slope_tau2_F1"] >= 0.5 and s["dist_tau2_F1"][-1] < 1e-3),
                    d,
                )
            )
            out.append(
                CheckResult(
                    f"{problem}: F1 tracks better than F0 at the smallest eta*wd",
                    "distance to F1 / distance to F0 at tau = 2",
                    "derived",
                    "docs/theory.md section 3",
                    0.0,
                    s["dist_tau2_F1"][-1] / s["dist_tau2_F0"][-1],
                    "< 0.2",
                    bool(s["dist_tau2_F1"][-1] < 0.2 * s["dist_tau2_F0"][-1]),
                    d,
                )
            )
        else:
            out.append(
                CheckResult(
                    f"{problem}: GD from a generic start tracks F1 to ~1e-2",
                    "|Phi(w_t) - theta(tau=2)| at the smallest eta*wd (relaxation cycle: "
                    "docs/theory.md)",
                    "derived",
                    "docs/theory.md section 3",
                    1e-2,
                    s["dist_tau2_F1"][-1],
                    "< 5e-2",
                    bool(s["dist_tau2_F1"][-1] < 5e-2),
                    d,
                )
            )
    return out


# --------------------------------------------------------------------------------------------
# Normalized networks on real data
# --------------------------------------------------------------------------------------------


@register("networks")
def _networks(ctx: Context) -> list[CheckResult]:
    stored = ctx.results(networks.NAME)
    cfg = stored.meta["config"]
    out = []
    for name, s in stored.meta["summary"].items():
        d = {"eta": cfg["eta"], "eta_wd": s["eta_wd"], "wd": s["wd"], "run": str(stored.path)}
        if s["kind"] == "main":
            reached = s["onset"] is not None
            out.append(
                CheckResult(
                    f"{name}: EoS reached",
                    "eta * lambda_1 reaches 2",
                    "theorem",
                    "LLA22",
                    2.0,
                    float(s["eos_end"]),
                    "onset exists",
                    reached,
                    d,
                )
            )
            if reached and "eos_mid_mean_eos_phase" in s:
                out.append(
                    _within(
                        f"{name}: eta * lambda_1 hovers at 2",
                        "mean over the settled EoS phase (multi-group) at the midpoints of "
                        "consecutive iterates, the proxy of Phi(w) (at the iterates themselves "
                        "the oscillation inflates it: see eos_at_iterates)",
                        "theorem",
                        "LLA22 (EoS)",
                        2.0,
                        s["eos_mid_mean_eos_phase"],
                        0.25,
                        std=s["eos_mid_std_eos_phase"],
                        eos_at_iterates=s["eos_mean_eos_phase"],
                        **d,
                    )
                )
            elif reached:  # results stored before the midpoint quantity existed
                out.append(
                    _within(
                        f"{name}: eta * lambda_1 hovers at 2",
                        "mean over the settled EoS phase (multi-group), at the iterates",
                        "theorem",
                        "LLA22 (EoS)",
                        2.0,
                        s["eos_mean_eos_phase"],
                        0.25,
                        std=s["eos_std_eos_phase"],
                        **d,
                    )
                )
            if reached:
                # At midpoints of consecutive iterates where stored (the iterates' oscillation
                # inflates S in the EoS, not at the onset); older results: at the iterates.
                mid = "sharpness_end_mid" in s and "sharpness_at_onset_mid" in s
                onset, end = (
                    (s["sharpness_at_onset_mid"], s["sharpness_end_mid"])
                    if mid
                    else (s["sharpness_at_onset"], s["sharpness_end"])
                )
                out.append(
                    CheckResult(
                        f"{name}: spherical sharpness falls in the EoS",
                        "S at the end < S at the onset, "
                        + ("at midpoints of consecutive iterates" if mid else "at the iterates"),
                        "theorem",
                        "LLA22 (sharpness reduction)",
                        onset,
                        end,
                        "end < onset",
                        bool(end < onset),
                        {
                            **d,
                            "at_iterates": [s["sharpness_at_onset"], s["sharpness_end"]],
                        },
                    )
                )
        else:
            what = "without weight decay" if s["kind"] == "no_wd" else "without normalization"
            out.append(
                CheckResult(
                    f"{name}: no EoS {what}",
                    "eta * lambda_1 never reaches 2 in the run",
                    "theorem",
                    "LLA22 (the effect needs both WD and normalization)",
                    0.0,
                    float(s["eos_end"]),
                    "no onset",
                    s["onset"] is None,
                    d,
                )
            )
    return out


@register("net_flow")
def _net_flow(ctx: Context) -> list[CheckResult]:
    stored = ctx.results(net_flow.NAME)
    s = stored.meta["summary"]
    dist = s.get("dist_common_tau", s["dist_end"])
    slope = float(s["slope"])
    ok = bool(np.isfinite(slope) and slope > 0.25 and dist[-1] < dist[0])
    return [
        CheckResult(
            "normalized MLP: GD tracks the flow (Gauss-Newton projection)",
            "log-log slope of |P(w_t) - theta(tau)| at the last compared tau against eta*wd",
            "theorem",
            "LLA22 (error -> 0 as eta*wd -> 0)",
            1.0,
            slope,
            "slope > 0.25 and the distance falls",
            ok,
            {
                "eta_wd": s["eta_wd"],
                "distance": dist,
                "tau": s["tau_reached"],
                "degenerate": s["degenerate"],
                "run": str(stored.path),
            },
        )
    ]


# Checks of further topics live in their own modules (``sims/checks_<topic>.py``) and register
# themselves on import, in this order.
TOPIC_MODULES: tuple[str, ...] = (
    "sims.checks_mc",
    "sims.checks_ire",
    "sims.checks_ire_apps",
)
for _topic in TOPIC_MODULES:
    importlib.import_module(_topic)


# --------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------


def run_checks(ctx: Context, names: Sequence[str] | None = None) -> list[CheckResult]:
    names = list(REGISTRY) if not names else list(names)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise KeyError(f"unknown check(s) {unknown}; available: {list(REGISTRY)}")
    out: list[CheckResult] = []
    for name in names:
        out += REGISTRY[name](ctx)
    return out


def _fmt(x: float) -> str:
    return f"{x:.4g}" if np.isfinite(x) else str(x)


def _verdict(r: CheckResult) -> str:
    if r.name in EXPECTED_FAILURES:
        return "expected FAIL" if not r.passed else "pass (expected to fail)"
    return "pass" if r.passed else "**FAIL**"


def write_report(results: list[CheckResult], root: Path, scale: str) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` under ``<root>/checks/`` (atomic writes)."""
    out = root / "checks"
    out.mkdir(parents=True, exist_ok=True)
    passed = sum(r.passed for r in results)
    unexpected = unexpected_failures(results)
    expected = [r for r in results if not r.passed and r.name in EXPECTED_FAILURES]
    payload = {
        "scale": scale,
        "passed": passed,
        "total": len(results),
        "expected_failures": {r.name: EXPECTED_FAILURES[r.name] for r in expected},
        "unexpected_failures": [r.name for r in unexpected],
        "checks": [asdict(r) for r in results],
        "provenance": provenance(),
    }
    _write_text(out / "report.json", json.dumps(payload, indent=2, default=str))
    lines = [
        "# Theorem report",
        "",
        f"{passed} of {len(results)} checks pass (scale `{scale}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}); {len(expected)} expected failures, "
        f"{len(unexpected)} unexpected. Kinds: *identity* (exact mathematics), *theorem* "
        "(stated in a paper), *derived* (predicted in docs/theory.md, not read in a paper).",
        "",
        "| check | kind | claim | predicted | measured | tolerance | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.kind} | {r.claim} | {_fmt(r.predicted)} | {_fmt(r.measured)} | "
            f"{r.tolerance} | {_verdict(r)} |"
        )
    if expected:
        lines += ["", "## Known failures", ""]
        lines += [f"- **{r.name}**: {EXPECTED_FAILURES[r.name]}" for r in expected]
    _write_text(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md", out / "report.json"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sims check", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"checks to run (default all: {list(REGISTRY)})")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--scale", choices=("quick", "full"), default="quick")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 if a check fails that is not a declared expected failure",
    )
    ns = parser.parse_args(argv)
    ctx = Context(ResultStore(ns.results_dir), ns.scale)
    try:
        results = run_checks(ctx, ns.names)
    except KeyError as err:
        parser.error(str(err))
    md, _ = write_report(results, Path(ns.results_dir), ns.scale)
    failed = [r for r in results if not r.passed]
    unexpected = unexpected_failures(results)
    print(
        f"checks: {len(results) - len(failed)} of {len(results)} pass, "
        f"{len(failed) - len(unexpected)} expected failures; report in {md}"
    )
    for r in failed:
        tag = "expected FAIL" if r.name in EXPECTED_FAILURES else "FAIL"
        print(
            f"  {tag} {r.name}: predicted {_fmt(r.predicted)}, measured {_fmt(r.measured)} "
            f"({r.tolerance})"
        )
    return 1 if ns.strict and unexpected else 0
