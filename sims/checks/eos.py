"""Checks of the Edge of Stability on the analytic problems (stored ``phases`` results)."""

from __future__ import annotations

from sims.checks.core import CheckResult, Context, below, eos_onset, register, within
from sims.studies import phases

# The EoS equilibrium [derived, docs/theory.md section 3]: (what, measured ratio, summary key,
# relative tolerance); each ratio is predicted to be 1.
_EQUILIBRIUM = (
    ("|w|^2 ~ eta lambda_1 / 2", "<|w|^2> / (eta <S> / 2)", "norm_sq_ratio", 0.05),
    (
        "amplitude^2 ~ eta wd / 2",
        "<dist(w_hat, Gamma)^2> / (eta wd / 2) (g ~ 0 there)",
        "amplitude_sq_ratio",
        0.25,
    ),
    ("loss ~ eta wd lambda_1 / 4", "<L> / (eta wd <S> / 4)", "loss_ratio", 0.25),
)


@register("edge_of_stability")
def _eos(ctx: Context) -> list[CheckResult]:
    stored = ctx.result(phases.NAME)
    cfg = stored.config
    out = []
    for name, s in stored.summary.items():
        d = {"eta": cfg.eta, "wd": cfg.wd, "steps": cfg.steps, "run": str(stored.path)}
        if s.get("onset") is None:
            out.append(
                eos_onset(
                    name=f"{name}: EoS reached",
                    claim="eta_eff * S reaches 2",
                    kind="theorem",
                    threshold="exact",
                    source="LLA22",
                    onset=None,
                    measured=float(s["eos_mean_last_quarter"]),
                    details=d,
                )
            )
            continue
        out += [
            within(
                name=f"{name}: eta_eff * S -> 2",
                claim="mean over the last quarter of the run",
                kind="theorem",
                threshold="regression",
                source="LLA22 (EoS); docs/theory.md section 2",
                predicted=2.0,
                measured=s["eos_mean_last_quarter"],
                rtol=0.05,
                details={"std": s["eos_std_last_quarter"], **d},
            ),
            within(
                name=f"{name}: EoS onset step",
                claim="log(2/(eta_eff_0 S)) / (-2 log(1 - eta wd))",
                kind="derived",
                threshold="regression",
                source="docs/theory.md section 3",
                predicted=s["predicted_onset"],
                measured=s["onset"],
                rtol=0.02,
                details={**d},
            ),
            below(
                name=f"{name}: S falls during EoS",
                claim="S at the end < S at the onset",
                kind="theorem",
                threshold="exact",
                source="LLA22 (sharpness reduction)",
                measured=s["sharpness_end"],
                bound=s["sharpness_at_onset"],
                details=d,
            ),
        ]
        out += [
            within(
                name=f"{name}: {what}",
                claim=f"{claim}, last quarter",
                kind="derived",
                threshold="regression",
                source="docs/theory.md section 3",
                predicted=1.0,
                measured=s[key],
                rtol=rtol,
                details=d,
            )
            for what, claim, key, rtol in _EQUILIBRIUM
        ]
    return out
