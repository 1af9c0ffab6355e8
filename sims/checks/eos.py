"""Checks of the Edge of Stability on the analytic problems (stored ``phases`` results), and of
the exact period-2 orbit on the great circle (computed here, no stored results)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sims._runtime import dtype_from_config
from sims.checks.core import (
    CheckResult,
    Context,
    at_most,
    below,
    condition,
    eos_onset,
    register,
    within,
)
from sims.studies import phases
from theory.core.sharpness import eos_quantity
from theory.engine import NoTracking, SaveAt
from theory.engine.gd import gd_wd
from theory.problems.analytic import great_circle, great_circle_period2

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


# The exact period-2 orbit at g = 0 (docs/theory.md section 6): GD+WD through the engine,
# sharpness by Lanczos (theory.eos_quantity), against the closed form. Needs no stored results.
_P2_ETA = 0.1
_P2_EWD = (1e-2, 3e-3, 1e-3)
_P2_STEPS = 2000


def _angular_edge_measured(eta: float, wd: float) -> tuple[float, int]:
    """``eta_eff S`` at which GD's angle off ``Gamma`` starts growing (phase II at ``u_1 = 0``,
    ``S = 1``): the per-step multiplier ``psi_{t+1} / psi_t`` crosses -1; linear interpolation
    in ``eta_eff`` between the two steps around the crossing (the multiplier is affine in
    ``eta_eff`` to ``O(psi^2)``, here ``1e-16``)."""
    ewd = eta * wd
    eff0 = 1.9  # start below every candidate edge; the norm then decays by (1 - eta wd) a step
    r0 = float(np.sqrt(eta / eff0))
    w0 = jnp.asarray([0.0, r0 * np.cos(1e-8), r0 * np.sin(1e-8)], jnp.float64)
    steps = int(np.ceil(np.log(2.2 / eff0) / (-2 * np.log1p(-ewd))))
    run = gd_wd(
        great_circle().loss, w0, eta=eta, wd=wd, steps=steps, saveat=SaveAt(every=1),
        tracker=NoTracking(),
    )  # fmt: skip
    w = np.asarray(run.w)
    psi = np.arctan2(w[:, 2], w[:, 1])
    eff = eta / np.sum(w**2, axis=1)
    mult = psi[1:] / psi[:-1]
    past = np.nonzero(mult < -1)[0]
    if past.size == 0 or past[0] == 0:
        return float("nan"), steps
    i = int(past[0])
    frac = (-1 - mult[i - 1]) / (mult[i] - mult[i - 1])
    return float(eff[i - 1] + frac * (eff[i] - eff[i - 1])), i


def _abs_within(
    *, name: str, claim: str, predicted: float, measured: float, atol: float, details: dict
) -> CheckResult:
    """``|measured - predicted| <= atol``; the tolerances are fractions of ``eta wd``, the
    distance between the candidate edges, so the check tells them apart."""
    return condition(
        name=name,
        claim=claim,
        kind="derived",
        threshold="derived",
        source="docs/theory.md section 6",
        predicted=float(predicted),
        measured=float(measured),
        tolerance=f"|measured - predicted| <= {atol:.2g}",
        passed=bool(np.isfinite(measured) and abs(measured - predicted) <= atol),
        details=dict(details),
    )


@register("great_circle_period2")
def _period2(ctx: Context) -> list[CheckResult]:
    dtype_from_config("float64")
    prob = great_circle()
    out: list[CheckResult] = []
    for ewd in _P2_EWD:
        eta, wd = _P2_ETA, ewd / _P2_ETA
        orbit = great_circle_period2(eta, wd)
        run = gd_wd(
            prob.loss, jnp.asarray(orbit.w_plus), eta=eta, wd=wd, steps=_P2_STEPS,
            tracker=NoTracking(), saveat=SaveAt(every=1),
        )  # fmt: skip
        assert run.w is not None  # SaveAt(iterates=True) records them
        w_last, w_prev = jnp.asarray(run.w[-1]), jnp.asarray(run.w[-2])
        eos_it = 0.5 * sum(float(eos_quantity(prob.loss, w, eta)[0]) for w in (w_last, w_prev))
        eos_mean = float(eos_quantity(prob.loss, (w_last + w_prev) / 2, eta)[0])
        drift = float(jnp.linalg.norm(w_last - jnp.asarray(orbit.w_plus))) / orbit.norm
        d = {"eta": eta, "wd": wd, "steps": _P2_STEPS, "relative drift off the orbit": drift}
        edge, at = _angular_edge_measured(eta, wd)
        out += [
            at_most(
                name=f"eta*wd={ewd:g}: GD stays on the period-2 orbit",
                claim=f"|w_{_P2_STEPS} - w_+| / |w_+| from w_0 = w_+ (the orbit is neutral: "
                "rounding grows at most linearly)",
                kind="derived",
                threshold="derived",
                source="docs/theory.md section 6",
                measured=drift,
                bound=1e-10,
                details=d,
            ),
            _abs_within(
                name=f"eta*wd={ewd:g}: eta lambda_1 at GD's iterates = 2 - eta wd",
                claim="Lanczos at GD's last two iterates; LLA22's 2 and the angular "
                "2 (1 - eta wd) differ by eta wd",
                predicted=orbit.eos_iterates,
                measured=eos_it,
                atol=0.05 * ewd,
                details=d,
            ),
            _abs_within(
                name=f"eta*wd={ewd:g}: eta lambda_1 at GD's mean iterate = 4 / (2 - eta wd)",
                claim="Lanczos at (w_t + w_{t+1}) / 2, on Gamma (~ 2 + eta wd)",
                predicted=orbit.eos_mean,
                measured=eos_mean,
                atol=0.05 * ewd,
                details=d,
            ),
            _abs_within(
                name=f"eta*wd={ewd:g}: phase-II angular instability at 2 (1 - eta wd)",
                claim="eta_eff S where GD's angle multiplier crosses -1 (not the central "
                "flow's 2 - eta wd, eta wd away)",
                predicted=orbit.angular_edge,
                measured=edge,
                atol=0.1 * ewd,
                details={**d, "crossing step": at},
            ),
        ]
    return out
