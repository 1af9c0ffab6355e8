"""Checks of AdmIRE against AdamW on a small causal transformer (stored ``admire`` results).

The IRE paper's claim (Wang et al. 2024): AdmIRE reaches a given pre-training loss in about half
the steps of AdamW; and IRE's premise, that amplifying the flat part of the update lowers the
sharpness. Also whether the AdamW run sits at its adaptive edge (Cohen et al. 2022), the regime
in which a sharpness-reducing drift is what sets the pace.
"""

from __future__ import annotations

import math

import numpy as np

from sims.checks.core import CheckResult, Context, condition, expect_failure, register, within
from sims.results import number
from sims.studies import admire

CHECK = "admire"
SOURCE = "Wang et al. 2024 (IRE), Llama pre-training with AdmIRE"

expect_failure(
    "admire: AdmIRE reaches the target in half the steps",
    "measured: AdmIRE reaches AdamW's 80%-budget training loss 1.47-1.61x faster over 3 seeds "
    "at the quick scale (600 steps, geometric mean 1.53: two thirds of AdamW's steps, not half) "
    "and 0.90-1.22x over 5 seeds at the full scale (1500 steps, geometric mean 1.01), where the "
    "80% target lies deep in the memorization tail (training loss ~1e-5). The factor depends on "
    "the target: median 1.79x at AdamW's 20%-budget loss (full), 1.75x at 60% (quick), never 2. "
    "The task is memorized with a constant learning rate (held-out accuracy < 0.45), unlike the "
    "paper's Llama pre-training with a schedule, far from interpolation",
    check=CHECK,
)
expect_failure(
    "admire: AdmIRE is faster than AdamW to the target",
    "at the full scale (1500 steps) the 80%-budget target is AdamW's loss in the late "
    "memorization tail (~1e-5), where both runs decay at about the same log-linear rate: "
    "measured speed-ups 1.22, 0.90, 1.01, 0.99, 0.95 over 5 seeds (faster on every seed at the "
    "10%, 20% and 40% targets: medians 1.45, 1.79, 1.37)",
    check=CHECK,
    scales=("full",),
)
expect_failure(
    "admire: AdamW sits at its adaptive edge",
    "at the full scale the last quarter of the run (steps 1125-1500) is the memorization tail: "
    "the gradient and the second moment shrink together and lambda_1(P^{-1} H) falls to "
    "0.02-0.27 of the edge (median 0.14); at the quick scale (last quarter: steps 450-600) the "
    "AdamW runs are still at the edge (median 0.93)",
    check=CHECK,
    scales=("full",),
)


@register(CHECK)
def _admire(ctx: Context) -> list[CheckResult]:
    stored = ctx.result(admire.NAME)
    s = stored.summary
    o = s["overall"]
    seeds = [int(x) for x in stored.config.seeds]
    path = str(stored.path)
    speedups = [number(x) for x in o["speedups"]]
    details = {
        "run": path,
        "seeds": seeds,
        "speedups": speedups,
        "target_step": o["target_step"],
        "targets": o["targets"],
        "steps_adamw": o["steps_adamw"],
        "steps_admire": o["steps_admire"],
        "by_fraction": {f"{f['fraction']:g}": f["speedup_median"] for f in o["by_fraction"]},
    }
    reached = int(o["reached"])
    ratios = [number(s[f"s{x}_admire"]["sharpness_ratio_tail"]) for x in seeds]
    edge = [number(s[f"s{x}_adamw"]["precond_eos_tail"]) for x in seeds]
    return [
        condition(
            name="admire: AdmIRE reaches AdamW's target training loss",
            claim="on every seed AdmIRE's training loss reaches the lowest loss AdamW has reached "
            f"by {o['target_fraction']:.0%} of the step budget, within the budget",
            kind="empirical",
            threshold="exact",
            source=SOURCE,
            predicted=float(len(seeds)),
            measured=float(reached),
            tolerance="every seed",
            passed=reached == len(seeds),
            details=details,
        ),
        condition(
            name="admire: AdmIRE is faster than AdamW to the target",
            claim="on every seed AdmIRE needs fewer steps than AdamW to reach AdamW's "
            f"{o['target_fraction']:.0%}-budget training loss (speed-up > 1)",
            kind="empirical",
            threshold="exact",
            source=SOURCE,
            predicted=1.0,
            measured=float(np.min(speedups)) if speedups else math.nan,
            tolerance="min over seeds of AdamW steps / AdmIRE steps > 1",
            passed=bool(speedups) and all(x > 1 for x in speedups),
            details=details,
        ),
        within(
            name="admire: AdmIRE reaches the target in half the steps",
            claim="geometric mean over seeds of AdamW steps / AdmIRE steps to AdamW's "
            f"{o['target_fraction']:.0%}-budget training loss equals the paper's ~2 (same "
            "hyperparameters; 'about' read as within 15%, 1.7 to 2.3: this project's choice, "
            "so that two thirds of the steps, 1.5x, is not 'about half')",
            kind="empirical",
            threshold="regression",
            source=SOURCE,
            predicted=number(o["paper_speedup"]),
            measured=number(o["speedup_geomean"]),
            rtol=0.15,
            details=details,
        ),
        condition(
            name="admire: AdmIRE ends flatter than AdamW",
            claim="median over seeds of lambda_1(H) (mean over the last quarter of the tracked "
            "rows) of AdmIRE over that of AdamW is below 1",
            kind="empirical",
            threshold="exact",
            source="Wang et al. 2024 (IRE amplifies the sharpness-reducing drift)",
            predicted=1.0,
            measured=float(np.median(ratios)),
            tolerance="median ratio < 1",
            passed=float(np.median(ratios)) < 1,
            details={"run": path, "ratios": ratios},
        ),
        within(
            name="admire: AdamW sits at its adaptive edge",
            claim="median over seeds of lambda_1(P^{-1} H) / ((2 + 2 b1) / ((1 - b1) lr)) over "
            "the last quarter of the AdamW run's tracked rows equals 1",
            kind="empirical",
            threshold="regression",
            source="Cohen et al. 2022 (adaptive edge of stability)",
            predicted=1.0,
            measured=float(np.median(edge)),
            rtol=0.25,
            details={
                "run": path,
                "per_seed": edge,
                "edge": s[f"s{seeds[0]}_adamw"]["precond_edge"],
            },
        ),
    ]
