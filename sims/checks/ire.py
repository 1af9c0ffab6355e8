"""Theorem checks of exact IRE on scale-invariant GD+WD (docs/ire.md; ``sims.studies.ire_flow``)."""

from __future__ import annotations

from typing import Any

from sims.checks.core import CheckResult, Context, below, bounded, register, within
from sims.results import number

SOURCE = "docs/ire.md (derived here)"


def _rows(ctx: Context) -> tuple[list[dict[str, Any]], str]:
    stored = ctx.result("ire_flow")
    return stored.summary["table"], str(stored.path)


@register("ire_flow_speedup")
def _speedup(ctx: Context) -> list[CheckResult]:
    """Measured speed-up against (IRE-S) for moderate kappa, each mode and problem."""
    table, path = _rows(ctx)
    out = []
    for r in table:
        if r["projector"] != "midpoint:1" or not 0 < r["kappa"] <= 10:
            continue
        if r["mode"] == "radial" and r["kappa"] > 3:
            continue
        out.append(
            within(
                name=f"ire_flow_speedup[{r['problem']},{r['mode']},kappa={r['kappa']:g}]",
                claim=f"exact IRE ({r['mode']}) speeds the flow by a(1+|g|^2/4)/(1+a|g|^2/(4b))",
                kind="derived",
                threshold="regression",
                source=SOURCE,
                predicted=number(r["predicted"]),
                measured=number(r["speedup"]),
                rtol=0.05,
                details={"naive": r["naive"], "eta_wd": r["eta_wd"], "run": path},
            )
        )
    return out


@register("ire_flow_naive_breaks")
def _naive(ctx: Context) -> list[CheckResult]:
    """In tangent mode, 1 + kappa overestimates the speed-up (the norm limit)."""
    table, path = _rows(ctx)
    out = []
    for r in table:
        if r["projector"] != "midpoint:1" or r["mode"] != "tangent" or r["kappa"] != 10:
            continue
        bound = 1 + 4 / r["g_sq_start"]
        out.append(
            below(
                name=f"ire_flow_norm_limit[{r['problem']}]",
                claim="tangent-mode IRE at kappa=10 is slower than 1+kappa and than the limit "
                "1+4/|g|^2",
                kind="derived",
                threshold="exact",
                source=SOURCE,
                measured=number(r["speedup"]),
                bound=min(r["naive"], bound),
                details={"run": path, "g_sq_start": r["g_sq_start"]},
            )
        )
    return out


@register("ire_flow_projector")
def _projector(ctx: Context) -> list[CheckResult]:
    """The projector at the current iterate, refreshed every step, reverses the drift; a frozen
    one (K >= 2) recovers the midpoint projector's speed-up on average."""
    table, path = _rows(ctx)
    out = []
    for r in table:
        if r["mode"] != "tangent" or r["projector"] == "midpoint:1" or r["kappa"] <= 1:
            continue
        if r["projector"] == "current:1":
            out.append(
                bounded(
                    name=f"ire_flow_reversal[{r['problem']},kappa={r['kappa']:g}]",
                    claim="exact IRE with the Hessian at the oscillating iterate raises the "
                    "sharpness",
                    kind="derived",
                    threshold="exact",
                    source=SOURCE,
                    predicted=r["naive"],
                    measured=number(r["speedup"]),
                    op="<",
                    bound=0.0,
                    details={"run": path},
                )
            )
        else:
            out.append(
                within(
                    name=f"ire_flow_frozen[{r['problem']},{r['projector']},kappa={r['kappa']:g}]",
                    claim="a projector frozen for K >= 2 steps drifts at (IRE-S) on average",
                    kind="derived",
                    threshold="regression",
                    source=SOURCE,
                    predicted=number(r["predicted"]),
                    measured=number(r["speedup"]),
                    rtol=0.10,
                    details={"run": path},
                )
            )
    return out
