"""Checks of the prediction from the initialization (stored ``predict_init`` results).

Every predicted value is derived (docs/predict.md) from the start ``w0`` and ``(eta, wd)``
alone, except where a check says it is conditioned on a measured quantity.

Phases I-II are exact given phase I's ODE, so they are checked run by run:

* ``predict_onset``: the predicted onset step against GD's (from its iterates), within 1 step;
* ``predict_phase2_norm``: the predicted ``|w_t|^2`` in phase II against GD's, relative 1e-4;
* ``predict_landing``: the landing point against GD's projected direction at its onset,
  absolute 1e-3 (analytic problems). Its error is first order in ``eta_eff`` at the start
  (fixed by ``eos0``), not in ``eta wd``, so it is checked per run, not as a rate.

Phase III and the cycles are a first-order (small ``eta wd``) theory: the claim is that the
error vanishes as ``eta wd -> 0``, not that it is small at every ``eta wd``. Each quantity is
checked per problem (a) within its tolerance at the smallest ``eta wd`` and (b) with a log-log
slope of the error against ``eta wd`` of at least 0.5 (least squares over the ``eta wd`` of the
run). The minimum 0.5 (the order of the cycle swing ``u_max ~ sqrt(eta wd)``, which a
whole-cycle average removes only to leading order) was chosen after the slopes were measured,
so (b) is of kind ``regression``: that the error vanishes is derived, the bound is not:

* ``predict_sharpness``: max over whole relaxation cycles of
  ``|<S(P(w_GD))>_cycle / <S_pred>_cycle - 1|`` (rows in the cycle), tolerance 0.02;
* ``predict_norm``: max over whole cycles of ``|<log |w_GD|^2 - log(eta S_pred / 2)>_cycle|``
  (every step; the reduced model's ``<u> = 0``), tolerance 0.05;
* ``predict_cycle_mean``: ``|<2 L / S_pred / z*(tau)> - 1|`` over all whole cycles, with
  ``z*(tau) = c / (4 + |g(tau)|^2)`` and ``g`` the flow's gradient of ``log lambda_1``,
  tolerance 0.3;

and run by run:

* ``predict_cycle_period``: the measured cycle period against the reduced model's for the
  measured swing of ``u`` (conditioned on that measurement), relative 0.15;
* ``predict_compute``: the prediction's solver work (phase-I ODE steps + flow evaluations) does
  not grow like GD's steps, ``1 / (eta wd)``: its growth from the largest to the smallest
  ``eta wd`` is below the geometric midpoint between 1 and GD's (counts, not wall-clock);
* ``predict_network``: (full scale) the MLP's phase III sharpness at the smallest ``eta wd``,
  relative 0.02: a declared expected failure (the reason is stated with it below).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sims.checks.core import (
    CheckFn,
    CheckResult,
    Context,
    at_least,
    at_most,
    bounded,
    condition,
    expect_failure,
    register,
    skipped,
    within,
)
from sims.results import number
from sims.studies import predict_init as pi
from theory.analysis.fits import loglog_fit

_SRC = "docs/predict.md"
# Measured at the full scale only (ire_toy is not in the quick preset); docs/predict.md.
for _ewd in ("0.001", "0.0003"):
    expect_failure(
        f"ire_toy eta*wd={_ewd}: relaxation-cycle period",
        "measured (full run): on ire_toy GD's oscillation collapses to the float64 floor inside "
        "every cycle (log z ratio 44-54 measured against 13-20 in the reduced model for the same "
        "swing), so its cycles are not the model's closed orbits; the periods are 8-19% shorter "
        "than the model's at every eta*wd <= 3e-3 (78/84.9, 99.5/122.8, 193/230.2, 331/383.1), "
        "beyond 15% at these two. The great circle and curved manifold match to 1% at all five",
        check="predict_cycle_period",
        scales=("full",),
    )
SLOPE_MIN = 0.5
_NET_CHECK = f"{pi.NET}: phase III sharpness follows the flow at the smallest eta*wd"
expect_failure(
    _NET_CHECK,
    "the MLP reaches the EoS before phase I has converged (phase I's ODE ends at the onset on "
    "every MLP run: no phase II). GD then runs at the EoS off Gamma: its loss is 2e-2 / 3e-3 at "
    "the onset (eta*wd 1e-2 / 1e-3; 0.56 at the start) and never below 1e-2 / 5e-4 after it, "
    "where the analytic problems sit at the rounding floor (~1e-20) at the onset. No relaxation "
    "cycle forms, and the sharpness at GD's Gauss-Newton foot leaves the flow from the landing "
    "point: max |S_GD / S_pred - 1| = 4.8 at 1e-2 and 0.33 at 1e-3 (GD's sharpness falls to "
    "0.24 of its onset value over tau = 1, the flow's to 0.34). Measured on the 8x8 MLP "
    "(D = 128, 32 samples); the flow from the landing point assumes GD tracks Gamma",
    check="predict_network",
    scales=("full",),
)


def _abs(x: Any) -> float | None:
    """``|x|`` of a stored error; ``None`` (not measured) stays ``None``."""
    return None if x is None else abs(number(x))


def _runs(ctx: Context) -> tuple[dict[str, Any], str]:
    stored = ctx.results(pi.NAME)
    return stored.meta["summary"], str(stored.path)


def _ok(value: Any, bound: float) -> bool:
    return value is not None and bool(np.isfinite(value)) and abs(value) <= bound


def _rate_checks(
    key: str, what: str, claim: str, bound: float, err_of: Callable[[Any], Any]
) -> CheckFn:
    """The check: (a) ``|err| <= bound`` at the smallest eta*wd and (b) slope >= SLOPE_MIN, per
    analytic problem (the MLP has no cycles: see ``predict_network``)."""

    def check(ctx: Context) -> list[CheckResult]:
        summary, path = _runs(ctx)
        out = []
        for name, s in summary.items():
            if name == pi.NET:
                continue
            runs = sorted(s["runs"], key=lambda r: r["eta_wd"])
            ewd = [r["eta_wd"] for r in runs]
            errs = [err_of(r) for r in runs]
            details = {"eta_wd": ewd, "errors": errs, "run": path}
            out.append(
                at_most(
                    name=f"{name} eta*wd={ewd[0]:g}: {what}",
                    claim=f"{claim} at the smallest eta*wd",
                    kind="derived",
                    threshold="regression",
                    source=_SRC,
                    measured=abs(number(errs[0])),
                    bound=bound,
                    details=details,
                )
            )
            if len(runs) >= 2:
                out.append(
                    at_least(
                        name=f"{name}: {what}: error vanishes as eta*wd -> 0",
                        claim=f"log-log slope of {key} against eta*wd (first-order theory: "
                        f"the error vanishes; regression bound: the minimum {SLOPE_MIN} was "
                        "chosen after measuring the slopes, not derived)",
                        kind="derived",
                        threshold="regression",
                        source=_SRC,
                        measured=loglog_fit(ewd, [_abs(e) for e in errs]).slope,
                        bound=SLOPE_MIN,
                        details=details,
                    )
                )
        return out

    return check


@register("predict_onset")
def _onset(ctx: Context) -> list[CheckResult]:
    summary, path = _runs(ctx)
    out = []
    for name, s in summary.items():
        for r in s["runs"]:
            gd = r["onset_gd"]
            err = None if gd is None else r["onset_step_pred"] - gd
            out.append(
                condition(
                    name=f"{name} eta*wd={r['eta_wd']:g}: predicted EoS onset step",
                    claim="phase I ODE + exact norm decay: first step with eta_eff S >= 2",
                    kind="derived",
                    threshold="derived",
                    source=_SRC,
                    predicted=float(r["onset_pred"]),
                    measured=number(gd),
                    tolerance="|ceil(t_on) - GD onset| <= 1 step",
                    passed=_ok(err, 1),
                    details={
                        "onset_step_pred": r["onset_step_pred"],
                        "phase1_end": r["phase1_end"],
                        "phase1_before_onset": r["phase1_before_onset"],
                        "gradient_norm_sq_rel": r["gradient_norm_sq_rel"],
                        "run": path,
                    },
                )
            )
    return out


@register("predict_phase2_norm")
def _phase2(ctx: Context) -> list[CheckResult]:
    summary, path = _runs(ctx)
    out = []
    for name, s in summary.items():
        for r in s["runs"]:
            err = r["norm_sq_err_phase2"]
            if err is None:  # no phase II: the EoS came before phase I finished
                continue
            out.append(
                at_most(
                    name=f"{name} eta*wd={r['eta_wd']:g}: |w|^2 in phase II",
                    claim="max |N_pred / N_GD - 1| over phase II rows (discrete gradient term)",
                    kind="derived",
                    threshold="regression",
                    source=_SRC,
                    measured=float(err),
                    bound=1e-4,
                    details={"gradient_norm_sq_rel": r["gradient_norm_sq_rel"], "run": path},
                )
            )
    return out


@register("predict_landing")
def _landing(ctx: Context) -> list[CheckResult]:
    summary, path = _runs(ctx)
    out = []
    for name, s in summary.items():
        if name == pi.NET:  # no phase II: the landing is the foot at the onset (details)
            continue
        for r in s["runs"]:
            out.append(
                at_most(
                    name=f"{name} eta*wd={r['eta_wd']:g}: landing point on Gamma",
                    claim="|theta_landing - Phi(w_hat_GD at its onset)| (modified-equation ODE)",
                    kind="derived",
                    threshold="regression",
                    source=_SRC,
                    measured=number(r.get("landing_err")),
                    bound=1e-3,
                    details={
                        "sharpness_landing": r["sharpness_landing"],
                        "sharpness_gd_onset": r.get("sharpness_gd_onset"),
                        "run": path,
                    },
                )
            )
    return out


# Phase III and the cycles, checked by :func:`_rate_checks`: (check, the error as named in the
# slope's claim, what is checked, the error's claim, its tolerance, the error of a run).
_RATES: tuple[tuple[str, str, str, str, float, Callable[[Any], Any]], ...] = (
    (
        "predict_sharpness",
        "max_cycles |<S(P(w_GD))> / <S_pred> - 1|",
        "cycle-averaged sharpness follows the flow",
        "max over whole cycles of |<S(P(w_GD))>_cycle / <S_pred>_cycle - 1|",
        0.02,
        lambda r: r.get("sharpness_err_cycle_max"),
    ),
    (
        "predict_norm",
        "max_cycles |<log |w_GD|^2 - log(eta S_pred / 2)>|",
        "cycle-averaged |w|^2 = eta S / 2",
        "max over whole cycles of |<log |w_GD|^2 - log(eta S_pred / 2)>_cycle| (every step)",
        0.05,
        lambda r: r.get("norm_log_err_cycle_max"),
    ),
    (
        "predict_cycle_mean",
        "|<z / z*(tau)> - 1|",
        "mean squared amplitude over cycles = c / (4 + |g|^2)",
        "|<(2 L_GD / S_pred) / (c / (4 + |g(tau)|^2))> - 1| over all whole cycles",
        0.3,
        lambda r: None if r.get("z_ratio") is None else r["z_ratio"] - 1,
    ),
)
for _check, _key, _what, _claim, _bound, _err_of in _RATES:
    register(_check)(_rate_checks(_key, _what, _claim, _bound, _err_of))


@register("predict_cycle_period")
def _cycle_period(ctx: Context) -> list[CheckResult]:
    summary, path = _runs(ctx)
    out = []
    for name, s in summary.items():
        if name == pi.NET:
            continue
        for r in s["runs"]:
            cyc, model = r["cycles"], r.get("cycle_model")
            base = f"{name} eta*wd={r['eta_wd']:g}"
            if model is None:
                out.append(
                    condition(
                        name=f"{base}: relaxation cycles seen",
                        claim="at least 3 bursts of the loss after the onset",
                        kind="derived",
                        threshold="regression",
                        source=_SRC,
                        predicted=3.0,
                        measured=float(len(cyc.get("bursts", []))),
                        tolerance=">= 3 bursts",
                        passed=False,
                        details={"run": path},
                    )
                )
                continue
            out.append(
                within(
                    name=f"{base}: relaxation-cycle period",
                    claim="reduced model's period for the MEASURED swing u_max (conditioned)",
                    kind="derived",
                    threshold="regression",
                    source=_SRC,
                    predicted=float(model["period"]),
                    measured=float(cyc["period"]),
                    rtol=0.15,
                    details={
                        "u_max_measured": cyc["u_max"],
                        "period_small_orbit": model["period_small"],
                        "log_z_ratio_measured": cyc["log_z_ratio"],
                        "log_z_ratio_model": model["log_z_ratio"],
                        "cycles": cyc["count"],
                        "run": path,
                    },
                )
            )
    return out


@register("predict_network")
def _network(ctx: Context) -> list[CheckResult]:
    summary, path = _runs(ctx)
    if pi.NET not in summary:
        return [
            skipped(
                name=_NET_CHECK,
                claim="max over phase III rows of |S(P(w_GD)) / S_pred - 1| at the smallest eta*wd",
                kind="derived",
                threshold="regression",
                source=_SRC,
                reason=f"no {pi.NET} runs in this scale's predict_init preset (full scale only)",
                details={"run": path},
            )
        ]
    runs = sorted(summary[pi.NET]["runs"], key=lambda r: r["eta_wd"])
    r = runs[0]
    return [
        at_most(
            name=_NET_CHECK,
            claim=f"max over phase III rows of |S(P(w_GD)) / S_pred - 1| at eta*wd={r['eta_wd']:g}"
            " (no cycles to average over)",
            kind="derived",
            threshold="regression",
            source=_SRC,
            measured=number(r.get("sharpness_err_max")),
            bound=0.02,
            details={
                "eta_wd": [x["eta_wd"] for x in runs],
                "sharpness_err_max": [x.get("sharpness_err_max") for x in runs],
                "phase1_before_onset": [x["phase1_before_onset"] for x in runs],
                "loss_start": [x.get("loss_start") for x in runs],
                "loss_at_onset": [x.get("loss_at_onset") for x in runs],
                "loss_after_onset_min": [x.get("loss_after_onset_min") for x in runs],
                "cycles": [x["cycles"].get("count", 0) for x in runs],
                "landing_err": [x.get("landing_err") for x in runs],
                "run": path,
            },
        )
    ]


def _work(r: dict[str, Any]) -> float:
    """The prediction's solver work in one run: phase I's ODE steps plus the flow's vector-field
    evaluations (phase II is closed form)."""
    c = r.get("pred_counts") or {}
    return float(c.get("ode_steps", np.nan)) + float(c.get("flow_evals", np.nan))


@register("predict_compute")
def _compute(ctx: Context) -> list[CheckResult]:
    summary, path = _runs(ctx)
    out = []
    for name, s in summary.items():
        runs = sorted(s["runs"], key=lambda r: r["eta_wd"])
        small, large = runs[0], runs[-1]
        gd_growth = float(large["eta_wd"] / small["eta_wd"])  # GD's steps grow as 1/(eta wd)
        growth = _work(small) / _work(large)
        # Predicted 1: phase I runs in steps on the scale 1/eta_eff and phase III in tau, so
        # neither solver sees eta*wd except through phase I's O(eta wd) norm decay. The bound
        # sqrt(gd_growth) is the geometric midpoint between 1 and GD's growth: the check tells
        # which of the two the prediction's work follows (deterministic counts, not seconds).
        out.append(
            bounded(
                name=f"{name}: prediction's work does not grow like GD's as eta*wd falls",
                claim="(phase-I ODE steps + flow evaluations) at the smallest eta*wd over that "
                f"at the largest, against GD's step ratio {gd_growth:.3g}",
                kind="derived",
                threshold="exact",
                source=_SRC,
                predicted=1.0,
                measured=growth,
                op="<",
                bound=float(np.sqrt(gd_growth)),
                details={
                    "eta_wd": [r["eta_wd"] for r in runs],
                    "work": [_work(r) for r in runs],
                    "gd_steps": [r.get("steps") for r in runs],
                    "seconds_gd": [r["seconds_gd"] for r in runs],
                    "seconds_pred": [r["seconds_pred"] for r in runs],
                    "run": path,
                },
            )
        )
    return out
