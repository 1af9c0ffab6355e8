"""Checks of the spectral density through phases I-III (stored ``spectrum`` results)."""

from __future__ import annotations

import numpy as np

from sims.checks.core import CheckResult, Context, at_most, below, register, skipped, within
from sims.studies import spectrum

_SOURCE = "SLQ (Golub-Meurant; Ubaru-Chen-Saad) against the engine's Lanczos tracker"


@register("spectrum")
def _spectrum(ctx: Context) -> list[CheckResult]:
    res = ctx.result(spectrum.NAME)
    s = res.summary
    d = {"run": str(res.path), "onset": s["onset"], "probes": res.config.probes, "m": res.config.m}
    out: list[CheckResult] = []
    top = np.asarray(s["slq_top"], float)
    lanczos = np.asarray(s["lanczos_at_slq"], float)
    err = float(np.max(np.abs(top - lanczos) / np.abs(lanczos))) if len(top) else float("nan")
    out.append(
        at_most(
            name="spectrum: top SLQ node = Lanczos sharpness",
            claim=(
                "on every SLQ row the largest Ritz value over the probes equals the Lanczos "
                "tracker's spherical sharpness (relative error, maximum over rows); a Krylov "
                "space of depth m finds a separated outlier to high accuracy. Bound 1e-4: the "
                "quick run (float32, 8 probes, m = 40) measured at most 2.4e-6"
            ),
            kind="empirical",
            threshold="regression",
            source=_SOURCE,
            measured=err,
            bound=1e-4,
            details={**d, "rows": len(top)},
        )
    )
    eta_wd = float(res.config.eta_wd)
    claim = dict(
        name="spectrum: at the midpoints the top eigenvalue sits at 2 / eta_eff after the onset",
        claim=(
            "median over the SLQ rows after the onset of S(w_mid) / (2 |w_mid|^2 / eta) at the "
            "GD midpoints w_mid = (w_t + w_{t+1}) / 2, against 1 - eta wd / 2 (GD's period-2 "
            "orbit is neutral where eta lambda_1 = 2 - eta wd). Tolerance 0.1: the quick run "
            "(float32, eta wd 4e-3) measured a median 0.975 (2.3% below 0.998; the catapult "
            "rows 420-540 at 1.06-1.19), against 1.24 at the iterates"
        ),
        kind="empirical",
        threshold="regression",
        source="LLA22 (EoS); the midpoint: docs/theory.md section 3, theory/analysis/midpoint.py",
    )
    ratios = s.get("mid_over_edge_after")
    if not ratios:
        reason = (
            "no SLQ row on both sides of an EoS onset"
            if "mid_sharpness" in s
            else "stored before the midpoint rows were recorded (rerun the study)"
        )
        out.append(skipped(reason=reason, **claim))  # type: ignore[arg-type]
    else:
        out.append(
            within(
                predicted=1.0 - eta_wd / 2.0,
                measured=float(np.median(ratios)),
                rtol=0.1,
                details={
                    **d,
                    "ratios_midpoint": ratios,
                    "ratios_iterate": s.get("top_over_edge_after"),
                },
                **claim,  # type: ignore[arg-type]
            )
        )
    claim = dict(
        name="spectrum: the bulk moves less than the top across the onset",
        claim=(
            "relative change of the median of the SLQ spectral measure, last SLQ row before "
            "the onset to the last row, is below that of the top eigenvalue at the midpoints"
        ),
        kind="empirical",
        threshold="exact",
        source="LLA22 / Cohen et al. (only the top outliers are driven to the edge)",
    )
    if "mid_top_change" not in s:
        reason = (
            "no SLQ row on both sides of an EoS onset"
            if "mid_sharpness" in s
            else "stored before the midpoint rows were recorded (rerun the study)"
        )
        out.append(skipped(reason=reason, **claim))  # type: ignore[arg-type]
    else:
        out.append(
            below(
                measured=float(s["median_change"]),
                bound=float(s["mid_top_change"]),
                details={**d, "top_change_iterate": s["top_change"]},
                **claim,  # type: ignore[arg-type]
            )
        )
    return out
