"""Checks of LLA22's matrix-completion experiment (stored ``matrix_completion`` results).

Registered on import (``TOPIC_MODULES`` in :mod:`sims.checks`):

* ``mc_edge_of_stability``: every main run (BN + WD) reaches the EoS, the two-group EoS quantity
  ``eta * lambda_1(hess L(w))`` averages 2 within 5% over the settled EoS phase, the spherical
  sharpness falls during the EoS by at least 5% (end <= 0.95 x onset) and is still falling in
  the settled phase (end < start of the settled phase);
* ``mc_intrinsic_lr``: [derived] the dynamics depend on ``eta * wd`` only through
  ``tau = t eta wd`` once in the EoS, so the final spherical sharpness at a common ``tau_end``
  agrees across ``eta * wd`` (relative spread <= 5%);
* ``mc_ablations``: without weight decay the norm never decreases (exact), the EoS is never
  reached and the spherical sharpness does not fall over the second half of the run
  (end >= 0.95 x halfway) and ends above that of the WD run; without normalization the EoS is
  not reached at the same ``eta``;
* ``mc_generalization``: LLA22's generalization claim on this model: the held-out error falls
  during the EoS, and ends below the runs without weight decay and without normalization.

Held-out errors are measured at the midpoint of the period-2 oscillation (``mid_``, see
:mod:`sims.matrix_completion`); the iterate's errors are in the details.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sims.checks import CheckResult, Context, _at_most, _within, register

from . import matrix_completion as mc

_LLA22 = "LLA22 (matrix completion with BN, appendix)"


def _stored(ctx: Context) -> tuple[dict[str, Any], dict[str, Any], str]:
    stored = ctx.results(mc.NAME)
    return stored.meta["config"], stored.meta["summary"], str(stored.path)


def _details(cfg: dict[str, Any], s: dict[str, Any], path: str) -> dict[str, Any]:
    return {"eta": cfg["eta"], "eta_wd": s["eta_wd"], "wd": s["wd"], "run": path}


def _main_at(summary: dict[str, Any], seed: int, eta_wd: float) -> dict[str, Any] | None:
    for s in summary.values():
        if s["kind"] == "main" and s["seed"] == seed and s["eta_wd"] == eta_wd:
            return dict(s)
    return None


@register("mc_edge_of_stability")
def _mc_eos(ctx: Context) -> list[CheckResult]:
    cfg, summary, path = _stored(ctx)
    out = []
    for name, s in summary.items():
        if s["kind"] != "main":
            continue
        d = _details(cfg, s, path)
        reached = s["onset"] is not None
        out.append(
            CheckResult(
                f"mc {name}: EoS reached",
                "eta * lambda_1(H(w)) reaches 2 (two groups U, V)",
                "theorem",
                _LLA22,
                2.0,
                float(s["eos_max"]),
                "onset exists",
                reached,
                {**d, "onset": s["onset"]},
            )
        )
        if not reached:
            continue
        out.append(
            _within(
                f"mc {name}: eta * lambda_1 averages 2 in the EoS",
                "mean over the settled EoS phase (last 3/4 after the onset)",
                "theorem",
                f"{_LLA22}; docs/theory.md section 2",
                2.0,
                s["eos_mean_eos_phase"],
                0.05,
                std=s["eos_std_eos_phase"],
                **d,
            )
        )
        out.append(
            CheckResult(
                f"mc {name}: spherical sharpness falls during the EoS",
                "S at the end (mean of the last 5% of rows) vs S at the onset",
                "theorem",
                f"{_LLA22} (sharpness reduction)",
                s["sharpness_at_onset"],
                s["sharpness_end"],
                "end <= 0.95 x onset",
                bool(s["sharpness_end"] <= 0.95 * s["sharpness_at_onset"]),
                {**d, "ratio": s["sharpness_end"] / s["sharpness_at_onset"]},
            )
        )
        # Part of the fall happens abruptly right after the onset, while the oscillation grows
        # from rounding noise; this one asks for the slow drift of the settled phase alone.
        out.append(
            CheckResult(
                f"mc {name}: spherical sharpness keeps falling in the settled EoS",
                "S at the end vs S at the start of the settled EoS phase",
                "theorem",
                f"{_LLA22} (sharpness-reduction flow); docs/theory.md section 3",
                s["sharpness_settled"],
                s["sharpness_end"],
                "end < settled start",
                bool(s["sharpness_end"] < s["sharpness_settled"]),
                {**d, "ratio": s["sharpness_end"] / s["sharpness_settled"]},
            )
        )
    return out


@register("mc_intrinsic_lr")
def _mc_intrinsic_lr(ctx: Context) -> list[CheckResult]:
    cfg, summary, path = _stored(ctx)
    out = []
    for seed in cfg["seeds"]:
        runs = [s for s in summary.values() if s["kind"] == "main" and s["seed"] == seed]
        if len(runs) < 2:
            continue
        ends = np.array([s["sharpness_end"] for s in runs])
        spread = float((ends.max() - ends.min()) / ends.mean())
        out.append(
            _at_most(
                f"mc seed {seed}: final S agrees across eta*wd at tau = {cfg['tau_end']:g}",
                "(max - min) / mean of S at t * eta * wd = tau_end over the eta*wd values",
                "derived",
                "docs/theory.md section 2 (dynamics depend on eta*wd via tau)",
                spread,
                0.05,
                eta_wd=[s["eta_wd"] for s in runs],
                sharpness_end=ends.tolist(),
                run=path,
            )
        )
    return out


@register("mc_ablations")
def _mc_ablations(ctx: Context) -> list[CheckResult]:
    cfg, summary, path = _stored(ctx)
    out = []
    for name, s in summary.items():
        d = _details(cfg, s, path)
        if s["kind"] == "no_wd":
            out.append(
                _at_most(
                    f"mc {name}: |w| never decreases without WD",
                    "largest relative decrease of |w| between recorded rows "
                    "(|w_{t+1}|^2 = |w_t|^2 + eta^2 |grad|^2 / |w_t|^2; float32 rounding)",
                    "identity",
                    "docs/theory.md section 2",
                    max(0.0, -float(s["norm_min_ratio"])),
                    1e-5,
                    **d,
                )
            )
            out.append(
                CheckResult(
                    f"mc {name}: no EoS without weight decay",
                    "eta * lambda_1 never reaches 2 in the run",
                    "theorem",
                    f"{_LLA22}; docs/theory.md section 3",
                    0.0,
                    float(s["eos_max"]),
                    "no onset",
                    s["onset"] is None,
                    {**d, "eos_start": s["eos_start"], "eos_end": s["eos_end"]},
                )
            )
            out.append(
                CheckResult(
                    f"mc {name}: spherical sharpness does not fall without WD",
                    "S at the end vs S halfway through the run",
                    "theorem",
                    f"{_LLA22}; docs/theory.md section 3",
                    s["sharpness_half"],
                    s["sharpness_end"],
                    "end >= 0.95 x halfway",
                    bool(s["sharpness_end"] >= 0.95 * s["sharpness_half"]),
                    d,
                )
            )
            ref = _main_at(summary, s["seed"], s["eta_wd"])
            if ref is not None:
                out.append(
                    CheckResult(
                        f"mc {name}: WD ends flatter than no WD",
                        "final S with WD (same seed, eta, eta*wd) vs without WD",
                        "theorem",
                        f"{_LLA22} (sharpness reduction needs WD)",
                        s["sharpness_end"],
                        ref["sharpness_end"],
                        "with WD < without WD",
                        bool(ref["sharpness_end"] < s["sharpness_end"]),
                        d,
                    )
                )
        elif s["kind"] == "no_norm":
            out.append(
                CheckResult(
                    f"mc {name}: no EoS without normalization",
                    "eta * lambda_1 never reaches 2 (plain U V^T, same eta and wd)",
                    "theorem",
                    f"{_LLA22} (the effect needs normalization)",
                    0.0,
                    float(s["eos_max"]),
                    "no onset",
                    s["onset"] is None,
                    {**d, "eos_end": s["eos_end"]},
                )
            )
    return out


@register("mc_generalization")
def _mc_generalization(ctx: Context) -> list[CheckResult]:
    cfg, summary, path = _stored(ctx)
    out = []
    for name, s in summary.items():
        if s["kind"] == "main" and s["onset"] is not None:
            out.append(
                CheckResult(
                    f"mc {name}: held-out error falls during the EoS",
                    "held-out relative error (midpoint) at the end vs at the onset",
                    "theorem",
                    f"{_LLA22} (generalization benefit of sharpness reduction)",
                    s["mid_test_rel_error_at_onset"],
                    s["mid_test_rel_error"],
                    "end < onset",
                    bool(s["mid_test_rel_error"] < s["mid_test_rel_error_at_onset"]),
                    {**_details(cfg, s, path), "iterate_end": s["test_rel_error"]},
                )
            )
        if s["kind"] not in ("no_wd", "no_norm"):
            continue
        ref = _main_at(summary, s["seed"], s["eta_wd"])
        if ref is None:
            continue
        what = "without weight decay" if s["kind"] == "no_wd" else "without normalization"
        out.append(
            CheckResult(
                f"mc {name}: BN + WD generalizes better than {what}",
                "final held-out relative error (midpoint): BN + WD vs the ablation",
                "theorem",
                f"{_LLA22} (test error with/without WD or normalization)",
                s["mid_test_rel_error"],
                ref["mid_test_rel_error"],
                "BN + WD < ablation",
                bool(ref["mid_test_rel_error"] < s["mid_test_rel_error"]),
                {
                    **_details(cfg, s, path),
                    "iterate_bn_wd": ref["test_rel_error"],
                    "iterate_ablation": s["test_rel_error"],
                },
            )
        )
    return out
