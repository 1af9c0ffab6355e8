"""Checks of the central flow of GD+WD (docs/theory.md section 5; ``sims/studies/central_flow.py``).

Registered on import (``TOPIC_MODULES`` in :mod:`sims.checks`):

* ``central_flow_on_gamma`` (computed here, no stored run): at the relaxed central point near
  ``Gamma`` (the central flow run 100 GD steps from a point of ``Gamma`` on the edge at the
  equilibrium norm), the central flow's ``sigma^2``, time-averaged loss and the drift of the
  direction equal the derived equilibrium (flow F1) at ``Phi`` of that point, to relative
  ``eta wd`` [derived]. On the great circle and the IRE toy ``grad lambda_1`` has no normal
  part on ``Gamma`` (parity), so the equality is also exact at points of ``Gamma`` (1e-8).
* ``central_flow_vs_gd`` (stored ``central_flow`` run): at every ``eta * wd``, the central
  flow's onset against GD's measured onset (the first step at the edge, located at step
  resolution between the rows that bracket it). The central flow is a first-order model in
  ``eta * wd`` (CDTKL25 derive it for small steps; docs/theory.md section 5), so the phase-III
  comparisons are stated as such: (a) at the smallest ``eta * wd`` of each problem, its edge
  ``eta_eff S = 2 - eta wd`` against GD's phase-III mean of ``eta_eff S`` at the
  time-averaged iterate (moving average; like with like: both are the sharpness at an
  average point, not at the oscillating iterates), its phase-III mean ``|w|`` and loss against
  GD's, and ``trace Sigma`` against GD's mean squared oscillation; (b) for each of those
  errors (as RMS over phase III, or the error of the means), the error at the smallest
  ``eta * wd`` is below the error at the largest.

Every predicted value is the central flow's own output (a model prediction), never an earlier
measurement; tolerances are stated per check. Two tolerances were set after seeing the data
and those rows are of kind ``regression``: the phase-III mean loss (relative 0.5; GD's loss
averaged over every step of phase III) and the oscillation ratio window ``[0.5, 2]``.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sims._runtime import dtype_from_config
from sims.checks.core import (
    CheckResult,
    Context,
    above,
    at_most,
    below,
    condition,
    expect_failure,
    register,
    within,
)
from sims.results import number
from theory.analysis.fits import loglog_fit
from theory.flows.central import CentralFlowField, equilibrium_on_gamma
from theory.flows.common import Dense
from theory.flows.manifold import project_to_manifold
from theory.problems.analytic import PROBLEMS

_CDTKL = "CDTKL25 (central flows); docs/theory.md section 5"

# Measured at the full scale only (eta*wd 1e-2 .. 1e-4, 5 values: the fitted-order checks);
# docs/central_flow.md "Full scale". GD's phase-III mean loss was first a mean over the rows'
# 8-step windows; averaged over every step (now), the errors at 3e-4 and 1e-4 fell from
# 0.19 / 0.038 (curved) and 0.042 / 0.18 (great circle) to 0.0093 / 0.0064 and 0.0092 / 0.0017:
# row sampling of the relaxation cycles' loss bursts was the cause, and the great circle's loss
# order now passes (0.68 +- 0.11).
expect_failure(
    "curved_manifold: central-flow loss error shrinks as eta*wd decreases",
    "measured (full run, GD's loss averaged over every step of phase III): signed relative "
    "errors -0.017, +0.0004, -0.016, -0.0093, +0.0064 at eta*wd = 1e-2 .. 1e-4, about 1% at "
    "every eta*wd with changes of sign; fitted order -0.10 +- 0.50. The central flow matches "
    "GD's mean loss to ~1-2% throughout, but no convergence in eta*wd is resolved at that level",
    check="central_flow_vs_gd",
    scales=("full",),
)
for _problem, _ratios, _order in (
    ("curved_manifold", "1.28, 1.13, 1.04, 1.21, 0.96", "0.27 +- 0.23"),
    ("great_circle", "1.47, 1.13, 1.06, 0.98, 1.18", "0.31 +- 0.31"),
):
    expect_failure(
        f"{_problem}: central-flow oscillation error shrinks as eta*wd decreases",
        f"measured (full run): GD's phase-III mean squared oscillation over trace Sigma is "
        f"{_ratios} at eta*wd = 1e-2 .. 1e-4: within 25% of 1 below 1e-2 but scattered, fitted "
        f"order of |log ratio| {_order}. Not verified: GD's oscillation is averaged over the "
        "rows' 8-step windows, the sampling that made the loss error scatter before it was "
        "averaged over every step",
        check="central_flow_vs_gd",
        scales=("full",),
    )


@eqx.filter_jit
def _relax(field_: CentralFlowField, w: jax.Array, n: int, dt: float) -> jax.Array:
    """``n`` explicit Euler steps of size ``dt`` (GD steps) of the central flow in mode 1."""

    def body(i: jax.Array, w: jax.Array) -> jax.Array:
        return w + dt * field_.quantities(w, jnp.asarray(1)).velocity

    return jax.lax.fori_loop(0, n, body, w)


# The relaxed central point: from a point of Gamma at the equilibrium norm, the central flow's
# normal directions relax at rates eta lambda_i per GD step (to ~1e-5 in 10 steps, measured with
# theory.central_flow); 100 GD steps of Euler with dt = 0.25 (stable for rates up to 2 per step).
_RELAX_STEPS, _RELAX_DT = 400, 0.25


@register("central_flow_on_gamma")
def _on_gamma(ctx: Context) -> list[CheckResult]:
    dtype_from_config("float64")
    eta, ewd = 0.1, 1e-3
    wd = ewd / eta
    out = []
    for name in PROBLEMS:
        prob = PROBLEMS[name]()
        field_ = CentralFlowField(
            prob.loss,
            jnp.asarray(eta),
            jnp.asarray(wd),
            jnp.asarray(0.2),
            geometry=Dense(),
            max_edge=1,
        )
        keys = ("sigma2", "avg_loss", "drift")
        on_gamma: dict[str, float] = dict.fromkeys(keys, 0.0)
        relaxed: dict[str, float] = dict.fromkeys(keys, 0.0)
        for i in range(3):
            u = prob.sample_on_manifold(jax.random.PRNGKey(10 + i), jnp.float64)
            s = float(prob.lambda1(u))
            g = jnp.asarray(prob.riemannian_grad_log_lambda1(u))
            eq = equilibrium_on_gamma(s, float(jnp.linalg.norm(g)), eta=eta, wd=wd)
            w_gamma = math.sqrt(eq["norm_sq"]) * u
            w_relaxed = _relax(field_, w_gamma, _RELAX_STEPS, _RELAX_DT)
            for w, worst in ((w_gamma, on_gamma), (w_relaxed, relaxed)):
                n2 = float(jnp.vdot(w, w))
                theta = project_to_manifold(prob.loss, w / math.sqrt(n2))
                s_t = float(prob.lambda1(theta))
                g_t = jnp.asarray(prob.riemannian_grad_log_lambda1(theta))
                eq_t = equilibrium_on_gamma(s_t, float(jnp.linalg.norm(g_t)), eta=eta, wd=wd)
                q = field_.quantities(w, jnp.asarray(1))
                sigma2 = float(q.sigma[0, 0])
                avg = float(q.loss) + 0.5 * sigma2 * float(q.lam[0])
                drift = prob.tangent_projector(theta) @ q.velocity / math.sqrt(n2)
                f1 = -(ewd / 2) * g_t / (1 + 0.25 * jnp.vdot(g_t, g_t))
                scale = max(float(jnp.linalg.norm(f1)), 1e-3 * ewd)
                errs = {
                    "sigma2": abs((sigma2 / n2) / (eq_t["sigma2"] / eq_t["norm_sq"]) - 1),
                    "avg_loss": abs(avg / eq_t["avg_loss"] - 1),
                    "drift": float(jnp.linalg.norm(drift - f1)) / scale,
                }
                for k in keys:
                    worst[k] = max(worst[k], errs[k])
        # On the great circle and the IRE toy the normal part of grad lambda_1 vanishes on
        # Gamma (parity): the formulas are exact at points of Gamma (1e-8). Elsewhere the
        # central point sits O(sigma^2) = O(eta wd) off Gamma, and the formulas hold there to
        # relative O(eta wd): at points of Gamma itself (where the central flow is not at rest
        # in the normal directions) they miss by an eta*wd-independent fraction set by the
        # normal part of grad lambda_1 (measured 0.7-3.6% on curved_manifold), so the
        # comparison is made at the relaxed central point, with the bound eta wd (an O(eta wd)
        # error with constant 1; the Euler relaxation and the restoring rate add ~1e-5).
        exact = name in ("great_circle", "ire_toy")
        for what, claim in (
            ("sigma2", "sigma^2 / |w|^2 = eta wd / ((2 - eta wd)(1 + |g|^2/4))"),
            ("avg_loss", "time-averaged loss = eta wd S / (2 (2 - eta wd)(1 + |g|^2/4))"),
            ("drift", "d theta/dt = -(eta wd/2) g / (1 + |g|^2/4): flow F1"),
        ):
            d = {"eta": eta, "eta_wd": ewd, "points": 3}
            out.append(
                at_most(
                    name=f"{name}: central flow at its relaxed point, {what}",
                    claim=claim + ", S and g at Phi of the relaxed central point (100 GD steps "
                    "of the flow from Gamma at the equilibrium norm)",
                    kind="derived",
                    source="docs/theory.md section 5; docs/central_flow.md section 2",
                    threshold="derived" if exact else "regression",
                    measured=relaxed[what],
                    bound=ewd,
                    details={**d, "error at the Gamma point itself": on_gamma[what]},
                )
            )
            if exact:
                out.append(
                    at_most(
                        name=f"{name}: central flow on Gamma, {what}",
                        claim=claim + " (exact on Gamma: no normal part of grad lambda_1)",
                        kind="derived",
                        threshold="derived",
                        source="docs/theory.md section 5",
                        measured=on_gamma[what],
                        bound=1e-8,
                        details=d,
                    )
                )
    return out


def _rel(a: float, b: float) -> float:
    """``|a - b| / |b|`` (NaN if either is not a number: NaN never passes)."""
    return abs(a - b) / abs(b) if b != 0 else math.nan


def _gd_loss(s: dict[str, Any]) -> float:
    """GD's phase-III mean loss over every step (results stored before it was recorded: the
    mean over the rows' moving averages)."""
    return number(s.get("phase3_mean_gd_loss_every_step", s.get("phase3_mean_gd_loss")))


def _abs_log_ratio(a: float, b: float) -> float:
    """``|log(a / b)|`` (NaN unless both are positive)."""
    return abs(math.log(a / b)) if a > 0 and b > 0 else math.nan


# Phase-III comparisons at the smallest eta*wd of each problem: (quantity, GD's summary key,
# the central flow's, tolerance on the relative error, claim).
_AT_SMALLEST = (
    (
        "norm",
        "phase3_mean_gd_norm",
        "phase3_mean_cf_norm",
        0.05,
        "phase-III mean |w|: GD's time-averaged iterate vs the central flow",
    ),
    (
        "eos",
        "phase3_mean_gd_eos",
        "phase3_mean_cf_eos",
        0.1,
        "phase-III mean eta_eff S, both at a time-averaged point: at GD's moving-average "
        "iterate ({window}-step window) vs at the central flow's point (= 2 - eta wd on the "
        "edge)",
    ),
    (
        "loss",
        "phase3_mean_gd_loss_every_step",
        "phase3_mean_cf_loss",
        0.5,
        "phase-III mean of GD's loss over every step vs the central flow's L + 1/2 <Sigma, H> "
        "(regression bound 0.5: set after measuring 0.01-0.12 at quick and up to 0.19 at "
        "full, not derived)",
    ),
)
# Tolerances set after seeing the data (kind "regression"); the others are derived or stated.
_REGRESSION_BOUNDS = ("loss",)

# Errors that the first-order theory says vanish as eta*wd -> 0: (name, function of a run's
# summary, what it is).
_ERRORS: tuple[tuple[str, Any, str], ...] = (
    (
        "eos",
        lambda s: number(s.get("phase3_rms_eos")),
        "phase-III RMS of eta_eff S at GD's time-averaged iterate minus the central flow's",
    ),
    (
        "norm",
        lambda s: number(s.get("phase3_rms_norm")),
        "phase-III RMS relative error of |w| (GD's time-averaged iterate vs the central flow)",
    ),
    (
        "direction",
        lambda s: number(s.get("phase3_rms_dir")),
        "phase-III RMS angle between GD's time-averaged direction and the central flow's",
    ),
    (
        "loss",
        lambda s: _rel(_gd_loss(s), number(s.get("phase3_mean_cf_loss"))),
        "relative error of the phase-III mean loss (GD's over every step)",
    ),
    (
        "oscillation",
        lambda s: _abs_log_ratio(
            number(s.get("phase3_mean_gd_osc")), number(s.get("phase3_mean_cf_sigma2"))
        ),
        "|log| of GD's phase-III mean squared oscillation over the mean trace Sigma",
    ),
)


def _order_check(
    problem: str,
    what: str,
    claim: str,
    runs: list[tuple[float, str]],
    summary: dict[str, dict[str, Any]],
    err: Any,
    stored: Any,
) -> CheckResult:
    """With >= 3 eta*wd: the fitted order of the error minus twice its standard error is
    above 0 (the error vanishes as eta*wd -> 0, beyond the scatter of the fit)."""
    ewds = [e for e, _ in runs]
    errs = [err(summary[k]) for _, k in runs]
    fit = loglog_fit(ewds, errs)
    slope, se, local = fit.slope, fit.stderr, list(fit.local)
    return above(
        name=f"{problem}: central-flow {what} error shrinks as eta*wd decreases",
        claim=f"{claim}: least-squares order in eta*wd over {len(runs)} values, minus twice "
        "its standard error, is above 0",
        kind="model",
        threshold="exact",
        source=_CDTKL + " (first order in eta*wd)",
        measured=slope - 2 * se if np.isfinite(se) else math.nan,
        bound=0.0,
        details={
            "order": slope,
            "order_standard_error": se,
            "local_orders": local,
            "errors": dict(zip(ewds, errs, strict=True)),
            "run": str(stored.path),
        },
    )


@register("central_flow_vs_gd")
def _vs_gd(ctx: Context) -> list[CheckResult]:
    stored = ctx.results("central_flow")
    summary: dict[str, dict[str, Any]] = stored.meta["summary"]
    out = []
    by_problem: dict[str, list[tuple[float, str]]] = {}
    for key, s in summary.items():
        ewd = number(s.get("eta_wd"))
        by_problem.setdefault(s["problem"], []).append((ewd, key))
        d: dict[str, Any] = {"eta_wd": ewd, "run": str(stored.path)}
        onset_gd, onset_cf = number(s.get("onset_gd")), number(s.get("onset_central_flow"))
        out.append(
            within(
                name=f"{key}: central-flow onset = GD onset",
                claim="time at which eta (lambda_1 + wd) first reaches 2 (GD: first step "
                "with eta (lambda_1 + wd) >= 2 at the iterate, located between the rows that "
                "bracket it)",
                kind="model",
                threshold="regression",
                source=_CDTKL,
                predicted=onset_cf,
                measured=onset_gd,
                rtol=0.05,
                details={
                    **d,
                    "phase2_prediction": number(s.get("onset_predicted_phase2")),
                    "gd_first_row_at_edge": number(s.get("onset_gd_first_row")),
                },
            )
        )
    # The central flow is a first-order model in eta*wd: it is held to a tolerance at the
    # smallest eta*wd of each problem, and its errors must shrink as eta*wd decreases.
    for problem, runs in by_problem.items():
        runs.sort()
        ewd_min, key = runs[0]
        s = summary[key]
        d = {"eta_wd": ewd_min, "run_key": key, "run": str(stored.path)}
        if "phase3_mean_gd_norm" not in s:
            continue
        for what, gd_key, cf_key, rtol, claim in _AT_SMALLEST:
            pred = number(s.get(cf_key))
            meas = _gd_loss(s) if what == "loss" else number(s.get(gd_key))
            extra = {}
            if what == "eos":
                extra = {
                    "gd_at_midpoints": number(s.get("phase3_mean_gd_eos_mid")),
                    "gd_at_iterates": number(s.get("phase3_mean_gd_eos_raw")),
                }
            out.append(
                within(
                    name=f"{problem}: central flow predicts GD's phase-III {what} at the "
                    "smallest eta*wd",
                    claim=claim.format(window=stored.meta["config"]["window"])
                    + f" (eta*wd = {ewd_min:g})",
                    kind="model",
                    threshold="regression",
                    source=_CDTKL,
                    predicted=pred,
                    measured=meas,
                    rtol=rtol,
                    details={**d, **extra},
                )
            )
        pred, meas = number(s.get("phase3_mean_cf_sigma2")), number(s.get("phase3_mean_gd_osc"))
        out.append(
            condition(
                name=f"{problem}: trace Sigma = GD's mean squared oscillation at the smallest "
                "eta*wd",
                claim="phase-III mean of trace Sigma vs GD's |w_t - w_bar_t|^2 (moving "
                f"averages; eta*wd = {ewd_min:g}; regression bound: the ratio window [0.5, 2] "
                "was set after measuring 1.1-1.25, not derived)",
                kind="model",
                threshold="regression",
                source=_CDTKL,
                predicted=pred,
                measured=meas,
                tolerance="ratio in [0.5, 2]",
                passed=bool(pred > 0 and 0.5 <= meas / pred <= 2.0),
                details=d,
            )
        )
        if len(runs) < 2:
            continue
        ewd_max, key_max = runs[-1]
        s_max = summary[key_max]
        for what, err, claim in _ERRORS:
            small, large = err(s), err(s_max)
            if len(runs) >= 3:
                out.append(_order_check(problem, what, claim, runs, summary, err, stored))
                continue
            out.append(
                below(
                    name=f"{problem}: central-flow {what} error shrinks as eta*wd decreases",
                    claim=f"{claim}: smaller at eta*wd = {ewd_min:g} than at {ewd_max:g}",
                    kind="model",
                    threshold="exact",
                    source=_CDTKL + " (first order in eta*wd)",
                    measured=small,
                    bound=large,
                    details={
                        "errors": {summary[k]["eta_wd"]: err(summary[k]) for _, k in runs},
                        "run": str(stored.path),
                    },
                )
            )
    return out


# Edge Flow against GD at the onset (docs/edge_flow.md): what the model claims of GD's first
# overshoot of eta lambda_1 above the edge 2 - eta wd, and of GD's two-step average before the
# relaxation cycles take over. (quantity, summary key of GD, of Edge Flow, tolerance, claim)
_EDGE_ONSET = (
    (
        "overshoot height",
        "overshoot_gd_mid_peak",
        "overshoot_ef_peak",
        0.1,
        "height of the first overshoot, the peak of eta lambda_1 minus the edge 2 - eta wd: GD "
        "at its midpoints (w_t + w_{t+1})/2 vs Edge Flow at its center",
    ),
    (
        "overshoot duration",
        "overshoot_gd_mid_duration",
        "overshoot_ef_duration",
        0.2,
        "time from the first up-crossing of the edge to the next down-crossing (GD midpoints "
        "vs Edge Flow's center)",
    ),
    (
        "onset",
        "overshoot_gd_mid_onset",
        "overshoot_ef_onset",
        0.05,
        "time at which eta lambda_1 first crosses the edge (GD midpoints vs Edge Flow)",
    ),
)


@register("edge_flow_vs_gd")
def _edge_vs_gd(ctx: Context) -> list[CheckResult]:
    stored = ctx.result("central_flow")  # typed reader (sims.results)
    summary: dict[str, dict[str, Any]] = stored.summary
    out = []
    for key, s in summary.items():
        if "overshoot_ef_peak" not in s:
            continue
        d: dict[str, Any] = {"eta_wd": number(s.get("eta_wd")), "run": str(stored.path)}
        edge = 2.0 - d["eta_wd"]
        for what, gd_key, ef_key, rtol, claim in _EDGE_ONSET:
            shift = edge if what == "overshoot height" else 0.0
            out.append(
                within(
                    name=f"{key}: Edge Flow predicts GD's first {what}",
                    claim=claim,
                    kind="model",
                    threshold="regression",
                    source="Marion, Edge Flow (arXiv 2606.18080); docs/edge_flow.md",
                    predicted=number(s.get(ef_key)) - shift,
                    measured=number(s.get(gd_key)) - shift,
                    rtol=rtol,
                    details={
                        **d,
                        "central_flow_peak": number(s.get("overshoot_cf_peak")),
                        "gd_iterates_peak": number(s.get("overshoot_gd_raw_peak")),
                    },
                )
            )
        # The central flow averages the overshoot away: its peak stays at the edge.
        out.append(
            at_most(
                name=f"{key}: the central flow has no overshoot that Edge Flow resolves",
                claim="the central flow's largest eta lambda_1 above the edge 2 - eta wd is at "
                "most a tenth of Edge Flow's first overshoot",
                kind="model",
                threshold="regression",
                source="CDTKL25; Marion (arXiv 2606.18080); docs/edge_flow.md",
                measured=_nan_to(number(s.get("overshoot_cf_peak")) - edge, 0.0),
                bound=0.1 * (number(s.get("overshoot_ef_peak")) - edge),
                details=d,
            )
        )
    return out


def _nan_to(x: float, value: float) -> float:
    """``x``, or ``value`` if ``x`` is NaN (no overshoot at all)."""
    return value if math.isnan(x) else x
