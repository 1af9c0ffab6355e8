"""Checks of LLA22's normalized networks on real data (stored ``networks`` results)."""

from __future__ import annotations

from . import networks
from .checks_core import CheckResult, Context, register, within


@register("networks")
def _networks(ctx: Context) -> list[CheckResult]:
    stored = ctx.result(networks.NAME)
    cfg = stored.config
    out = []
    for name, s in stored.summary.items():
        d = {"eta": cfg.eta, "eta_wd": s["eta_wd"], "wd": s["wd"], "run": str(stored.path)}
        if s["kind"] == "main":
            reached = s["onset"] is not None
            out.append(
                CheckResult(
                    name=f"{name}: EoS reached",
                    claim="eta * lambda_1 reaches 2",
                    kind="theorem",
                    source="LLA22",
                    predicted=2.0,
                    measured=float(s["eos_end"]),
                    tolerance="onset exists",
                    passed=reached,
                    details=d,
                )
            )
            if reached and "eos_mid_mean_eos_phase" in s:
                out.append(
                    within(
                        name=f"{name}: eta * lambda_1 hovers at 2",
                        claim="mean over the settled EoS phase (multi-group) at the midpoints of "
                        "consecutive iterates, the proxy of Phi(w) (at the iterates themselves "
                        "the oscillation inflates it: see eos_at_iterates)",
                        kind="theorem",
                        source="LLA22 (EoS)",
                        predicted=2.0,
                        measured=s["eos_mid_mean_eos_phase"],
                        rtol=0.25,
                        details={
                            "std": s["eos_mid_std_eos_phase"],
                            "eos_at_iterates": s["eos_mean_eos_phase"],
                            **d,
                        },
                    )
                )
            elif reached:  # results stored before the midpoint quantity existed
                out.append(
                    within(
                        name=f"{name}: eta * lambda_1 hovers at 2",
                        claim="mean over the settled EoS phase (multi-group), at the iterates",
                        kind="theorem",
                        source="LLA22 (EoS)",
                        predicted=2.0,
                        measured=s["eos_mean_eos_phase"],
                        rtol=0.25,
                        details={"std": s["eos_std_eos_phase"], **d},
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
                        name=f"{name}: spherical sharpness falls in the EoS",
                        claim="S at the end < S at the onset, "
                        + ("at midpoints of consecutive iterates" if mid else "at the iterates"),
                        kind="theorem",
                        source="LLA22 (sharpness reduction)",
                        predicted=onset,
                        measured=end,
                        tolerance="end < onset",
                        passed=bool(end < onset),
                        details={
                            **d,
                            "at_iterates": [s["sharpness_at_onset"], s["sharpness_end"]],
                        },
                    )
                )
        else:
            what = "without weight decay" if s["kind"] == "no_wd" else "without normalization"
            out.append(
                CheckResult(
                    name=f"{name}: no EoS {what}",
                    claim="eta * lambda_1 never reaches 2 in the run",
                    kind="theorem",
                    source="LLA22 (the effect needs both WD and normalization)",
                    predicted=0.0,
                    measured=float(s["eos_end"]),
                    tolerance="no onset",
                    passed=s["onset"] is None,
                    details=d,
                )
            )
    return out
