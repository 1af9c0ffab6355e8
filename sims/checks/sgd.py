"""Checks of minibatch SGD+WD on a normalized network (stored ``sgd_equilibrium`` results):
the angular-update and norm equilibrium, and where the batch and full-batch sharpness sit."""

from __future__ import annotations

from sims.checks.core import CheckResult, Context, below, condition, register, within
from sims.studies import sgd_equilibrium

SOURCE_EQ = "Li, Lyu & Arora 2020; Wan et al. 2021 (docs/engine.md, Minibatch SGD)"
SOURCE_EOSS = "Andreyev & Beneventano 2024 (Edge of Stochastic Stability, arXiv 2412.20553)"


@register("sgd_equilibrium")
def _sgd_equilibrium(ctx: Context) -> list[CheckResult]:
    stored = ctx.result(sgd_equilibrium.NAME)
    cfg = stored.config
    out: list[CheckResult] = []
    for name, s in stored.summary.items():
        beta = float(s["momentum"])
        d = {
            "eta": cfg.eta,
            "wd": cfg.wd,
            "momentum": beta,
            "batch_size": cfg.batch_size,
            "steps": cfg.steps,
            "late_fraction": cfg.late_fraction,
            "run": str(stored.path),
        }
        out.append(
            within(
                name=f"{name}: angular update at its equilibrium",
                claim="arccos(1 - mean(1 - cos angle(w_t, w_{t+1}))) over every late step = "
                "arccos(1 - eta wd / (1 + beta)) (threshold: 5%, chosen before the first run, "
                "not derived)",
                kind="derived",
                threshold="regression",
                source=SOURCE_EQ,
                predicted=float(s["angle_predicted"]),
                measured=float(s["angle_late"]),
                rtol=0.05,
                details={
                    **d,
                    "std_over_rows": s["angle_late_std"],
                    "plain_mean_angle": s.get("angle_late_mean"),
                    "recorded_steps_only": s.get("angle_late_rows"),
                    "first_order": s["angle_first_order"],
                    "per_group": s["group_angle_late"],
                },
            )
        )
        pred, meas = s["group_norm_predicted"], s["group_norm_late"]
        out.append(
            within(
                name=f"{name}: group norms at their equilibrium",
                claim="every group's late mean |w_g| = (eta E[G_g^2] / (wd (2 - eta wd) "
                "(1 - beta)))^(1/4), "
                "G_g = |w_g| |g_B,g|; the worst group's ratio is measured (threshold 15%, chosen "
                "before the first run)"
                + ("" if beta == 0 else "; beta > 0 assumes uncorrelated batch gradients"),
                kind="derived" if beta == 0 else "model",
                threshold="regression",
                source=SOURCE_EQ,
                predicted=1.0,
                measured=1.0 + float(s["group_norm_rel_err_max"]),
                rtol=0.15,
                details={**d, "predicted": pred, "measured": meas, "start": s["group_norm_start"]},
            )
        )
        edge, low, bs = float(s["edge"]), float(s["edge_low"]), float(s["batch_eos_late"])
        if beta == 0:
            out.append(
                within(
                    name=f"{name}: batch sharpness at the stochastic edge",
                    claim="late mean of eta * g_B^T H_B g_B / |g_B|^2 (eta_eff times the batch "
                    "sharpness of w_hat) = 2 - eta wd (threshold 25%, regression)",
                    kind="empirical",
                    threshold="regression",
                    source=SOURCE_EOSS,
                    predicted=edge,
                    measured=bs,
                    rtol=0.25,
                    details=d,
                )
            )
        else:
            out.append(
                condition(
                    name=f"{name}: batch sharpness between the momentum plateaus",
                    claim="late mean of eta * BS lies between the small-batch plateau "
                    "2 (1 - beta) - eta wd and the full-batch edge 2 (1 + beta) - eta wd "
                    "(Andreyev 2026 reports the lower plateau for small batches)",
                    kind="empirical",
                    threshold="exact",
                    source=SOURCE_EOSS + "; Andreyev 2026 (arXiv 2604.14108)",
                    predicted=edge,
                    measured=bs,
                    tolerance=f"in [{low:.4g}, {edge:.4g}]",
                    passed=low <= bs <= edge,
                    details={**d, "lower_plateau": low},
                )
            )
        out.append(
            below(
                name=f"{name}: full-batch sharpness below the edge",
                claim="late mean of eta * lambda_1(hess L(w)) < 2 (1 + beta) - eta wd",
                kind="empirical",
                threshold="exact",
                source=SOURCE_EOSS,
                measured=float(s["full_eos_late"]),
                bound=edge,
                details={**d, "late_max": s["full_eos_max_late"]},
            )
        )
        full = float(s["full_eos_late"])
        out.append(
            condition(
                name=f"{name}: batch sharpness above the full-batch sharpness",
                claim="late means: eta * BS > eta * lambda_1 (lambda_1 is suppressed below the "
                "quantity that sits at the edge)",
                kind="empirical",
                threshold="exact",
                source=SOURCE_EOSS,
                predicted=full,
                measured=bs,
                tolerance="measured > predicted",
                passed=bs > full,
                details={**d, "step_eos_late": s["step_eos_late"]},
            )
        )
    return out
