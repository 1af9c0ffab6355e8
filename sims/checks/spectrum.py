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
    claim = dict(
        name="spectrum: the top outlier sits at 2 / eta_eff after the onset",
        claim=(
            "median over the SLQ rows after the onset of (top node) / (2 |w|^2 / eta), at the "
            "iterates (the EoS oscillation spreads it)"
        ),
        kind="empirical",
        threshold="regression",
        source="LLA22 (EoS) through the SLQ tracker",
    )
    ratios = s.get("top_over_edge_after")
    if not ratios:
        out.append(skipped(reason="no SLQ row on both sides of an EoS onset", **claim))  # type: ignore[arg-type]
    else:
        out.append(
            within(
                predicted=1.0,
                measured=float(np.median(ratios)),
                rtol=0.3,
                details={**d, "ratios": ratios},
                **claim,  # type: ignore[arg-type]
            )
        )
    claim = dict(
        name="spectrum: the bulk moves less than the top across the onset",
        claim=(
            "relative change of the median of the SLQ spectral measure, last SLQ row before "
            "the onset to the last row, is below that of the top node"
        ),
        kind="empirical",
        threshold="exact",
        source="LLA22 / Cohen et al. (only the top outliers are driven to the edge)",
    )
    if "median_change" not in s:
        out.append(skipped(reason="no SLQ row on both sides of an EoS onset", **claim))  # type: ignore[arg-type]
    else:
        out.append(
            below(
                measured=float(s["median_change"]),
                bound=float(s["top_change"]),
                details=d,
                **claim,  # type: ignore[arg-type]
            )
        )
    return out
