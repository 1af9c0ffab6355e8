"""Checks of the central flow of GD+WD (docs/theory.md section 5; ``sims/studies/central_flow.py``).

Registered on import (``TOPIC_MODULES`` in :mod:`sims.checks`):

* ``central_flow_on_gamma`` (computed here, no stored run): at points of ``Gamma`` of the
  analytic problems put on the edge, the central flow's ``sigma^2``, time-averaged loss and the
  drift of the direction equal the derived equilibrium (flow F1) [derived]. On the great
  circle and the IRE toy ``grad lambda_1`` has no normal part on ``Gamma`` (parity), so the
  equality is exact (1e-8); on ``curved_manifold`` it holds to leading order and the relative
  deviation is bounded by 0.1.
* ``central_flow_vs_gd`` (stored ``central_flow`` run): at every ``eta * wd``, the central
  flow's onset against GD's measured onset. The central flow is a first-order model in
  ``eta * wd`` (CDTKL25 derive it for small steps; docs/theory.md section 5), so the phase-III
  comparisons are stated as such: (a) at the smallest ``eta * wd`` of each problem, its edge
  ``eta_eff S = 2 - eta wd`` against GD's phase-III mean of ``eta_eff S`` at the
  time-averaged iterate (moving average; like with like: both are the sharpness at an
  average point, not at the oscillating iterates), its phase-III mean ``|w|`` and loss against
  GD's, and ``trace Sigma`` against GD's mean squared oscillation; (b) for each of those
  errors (as RMS over phase III, or the error of the means), the error at the smallest
  ``eta * wd`` is below the error at the largest.

Every predicted value is the central flow's own output (a model prediction), never an earlier
measurement; tolerances are stated per check.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from sims._runtime import dtype_from_config
from sims.checks.core import (
    CheckResult,
    Context,
    at_most,
    below,
    condition,
    expect_failure,
    register,
    within,
)
from theory.flows.central import CentralFlowField, equilibrium_on_gamma
from theory.problems.analytic import PROBLEMS

_CDTKL = "CDTKL25 (central flows); docs/theory.md section 5"

# Measured at the full scale only (eta*wd 1e-2 .. 1e-4); docs/central_flow.md "Full scale".
for _problem, _errs in (
    ("curved_manifold", "0.013, 0.0006, 0.0046, 0.19, 0.038"),
    ("great_circle", "0.027, 0.025, 0.0070, 0.042, 0.18"),
):
    expect_failure(
        f"{_problem}: central-flow loss error shrinks as eta*wd decreases",
        f"measured (full run): the relative error of GD's phase-III mean loss is {_errs} at "
        "eta*wd = 1e-2 .. 1e-4, not monotone, while every other phase-III error (eta_eff S, "
        "|w|, direction, oscillation) shrinks. Suspected, not verified: GD's mean loss is a "
        "mean over rows (every tau_end / rows in tau, 8-step windows) of a loss that the "
        "relaxation cycles concentrate in short bursts, so it depends on which rows hit a burst",
        check="central_flow_vs_gd",
        scales=("full",),
    )


@register("central_flow_on_gamma")
def _on_gamma(ctx: Context) -> list[CheckResult]:
    dtype_from_config("float64")
    eta, ewd = 0.1, 1e-3
    wd = ewd / eta
    out = []
    for name in PROBLEMS:
        prob = PROBLEMS[name]()
        worst: dict[str, float] = {"sigma2": 0.0, "avg_loss": 0.0, "drift": 0.0}
        for i in range(3):
            u = prob.sample_on_manifold(jax.random.PRNGKey(10 + i), jnp.float64)
            s = float(prob.lambda1(u))
            g = jnp.asarray(prob.riemannian_grad_log_lambda1(u))
            eq = equilibrium_on_gamma(s, float(jnp.linalg.norm(g)), eta=eta, wd=wd)
            w = math.sqrt(eq["norm_sq"]) * u
            field_ = CentralFlowField(
                prob.loss,
                jnp.asarray(eta),
                jnp.asarray(wd),
                jnp.asarray(0.0),
                max_edge=1,
                geometry="dense",
            )
            q = field_.quantities(w, jnp.asarray(1))
            sigma2 = float(q.sigma[0, 0])
            avg = float(q.loss) + 0.5 * sigma2 * float(q.lam[0])
            drift = prob.tangent_projector(u) @ q.velocity / math.sqrt(eq["norm_sq"])
            f1 = -(ewd / 2) * g / (1 + 0.25 * jnp.vdot(g, g))
            worst["sigma2"] = max(worst["sigma2"], abs(sigma2 / eq["sigma2"] - 1))
            worst["avg_loss"] = max(worst["avg_loss"], abs(avg / eq["avg_loss"] - 1))
            scale = max(float(jnp.linalg.norm(f1)), 1e-3 * ewd)
            worst["drift"] = max(worst["drift"], float(jnp.linalg.norm(drift - f1)) / scale)
        # On the great circle and the IRE toy the normal part of grad lambda_1 vanishes on
        # Gamma (parity), so the formulas are exact there; on curved_manifold they neglect it,
        # an O(1) fraction of sigma^2's drive only if the normal third derivative is O(1): the
        # bound 0.1 is that statement, not a fit.
        exact = name in ("great_circle", "ire_toy")
        bound = 1e-8 if exact else 0.1
        for what, claim in (
            ("sigma2", "sigma^2 = eta wd |w|^2 / ((2 - eta wd)(1 + |g|^2/4)) on Gamma"),
            ("avg_loss", "time-averaged loss = eta wd S / (2 (2 - eta wd)(1 + |g|^2/4))"),
            ("drift", "d theta/dt = -(eta wd/2) g / (1 + |g|^2/4): flow F1"),
        ):
            out.append(
                at_most(
                    name=f"{name}: central flow on Gamma, {what}",
                    claim=claim
                    + (
                        ""
                        if exact
                        else " (to leading order; normal part of grad lambda_1 neglected)"
                    ),
                    kind="derived",
                    threshold="derived" if exact else "regression",
                    source="docs/theory.md section 5",
                    measured=worst[what],
                    bound=bound,
                    details={"eta": eta, "eta_wd": ewd, "points": 3},
                )
            )
    return out


def _num(x: Any) -> float:
    """A stored number as a float: None and a NaN stored as text (``"nan"``) give NaN."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _rel(a: float, b: float) -> float:
    """``|a - b| / |b|`` (NaN if either is not a number: NaN never passes)."""
    return abs(a - b) / abs(b) if b != 0 else math.nan


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
        "phase3_mean_gd_loss",
        "phase3_mean_cf_loss",
        0.5,
        "phase-III mean of GD's loss vs the central flow's L + 1/2 <Sigma, H>",
    ),
)

# Errors that the first-order theory says vanish as eta*wd -> 0: (name, function of a run's
# summary, what it is).
_ERRORS: tuple[tuple[str, Any, str], ...] = (
    (
        "eos",
        lambda s: _num(s.get("phase3_rms_eos")),
        "phase-III RMS of eta_eff S at GD's time-averaged iterate minus the central flow's",
    ),
    (
        "norm",
        lambda s: _num(s.get("phase3_rms_norm")),
        "phase-III RMS relative error of |w| (GD's time-averaged iterate vs the central flow)",
    ),
    (
        "direction",
        lambda s: _num(s.get("phase3_rms_dir")),
        "phase-III RMS angle between GD's time-averaged direction and the central flow's",
    ),
    (
        "loss",
        lambda s: _rel(_num(s.get("phase3_mean_gd_loss")), _num(s.get("phase3_mean_cf_loss"))),
        "relative error of the phase-III mean loss",
    ),
    (
        "oscillation",
        lambda s: _abs_log_ratio(
            _num(s.get("phase3_mean_gd_osc")), _num(s.get("phase3_mean_cf_sigma2"))
        ),
        "|log| of GD's phase-III mean squared oscillation over the mean trace Sigma",
    ),
)


@register("central_flow_vs_gd")
def _vs_gd(ctx: Context) -> list[CheckResult]:
    stored = ctx.results("central_flow")
    summary: dict[str, dict[str, Any]] = stored.meta["summary"]
    out = []
    by_problem: dict[str, list[tuple[float, str]]] = {}
    for key, s in summary.items():
        ewd = _num(s.get("eta_wd"))
        by_problem.setdefault(s["problem"], []).append((ewd, key))
        d: dict[str, Any] = {"eta_wd": ewd, "run": str(stored.path)}
        onset_gd, onset_cf = _num(s.get("onset_gd")), _num(s.get("onset_central_flow"))
        out.append(
            within(
                name=f"{key}: central-flow onset = GD onset",
                claim="time at which eta (lambda_1 + wd) first reaches 2 (GD: first recorded "
                "row with eta (lambda_1 + wd) >= 2 at the iterate)",
                kind="model",
                threshold="regression",
                source=_CDTKL,
                predicted=onset_cf,
                measured=onset_gd,
                rtol=0.05,
                details={**d, "phase2_prediction": _num(s.get("onset_predicted_phase2"))},
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
            pred, meas = _num(s.get(cf_key)), _num(s.get(gd_key))
            extra = {}
            if what == "eos":
                extra = {
                    "gd_at_midpoints": _num(s.get("phase3_mean_gd_eos_mid")),
                    "gd_at_iterates": _num(s.get("phase3_mean_gd_eos_raw")),
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
        pred, meas = _num(s.get("phase3_mean_cf_sigma2")), _num(s.get("phase3_mean_gd_osc"))
        out.append(
            condition(
                name=f"{problem}: trace Sigma = GD's mean squared oscillation at the smallest "
                "eta*wd",
                claim="phase-III mean of trace Sigma vs GD's |w_t - w_bar_t|^2 (moving "
                f"averages; eta*wd = {ewd_min:g})",
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
