"""Checks of the sharpness-reduction flow: closed forms, monotonicity, integrators.

Need no stored simulation (float64; docs/theory.md section 3).
"""

from __future__ import annotations

import functools
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from sims._runtime import dtype_from_config
from sims.checks.core import CheckResult, Context, at_most, register, within
from theory.analysis.fits import loglog_fit
from theory.flows.common import RK4, FixedSteps, SaveTimes
from theory.flows.reduction import Form, SharpnessFlowResult, rk4_step, sharpness_flow, velocity
from theory.problems.analytic import PROBLEMS

TAU_END, SAVES = 4.0, 161  # one save every 0.025 in tau
FORMS_CHECKED: tuple[Form, ...] = ("F1", "F0")


@functools.cache
def _adaptive_flow(name: str, form: Form) -> SharpnessFlowResult:
    """The adaptive flow of ``PROBLEMS[name]`` from its start to ``tau = 4`` (rtol 1e-10), saved
    every 0.025: solved once per process and shared by the checks below (each used to solve
    the same flow again on its own save grid)."""
    dtype_from_config("float64")
    prob = PROBLEMS[name]()
    return sharpness_flow(
        prob.loss,
        jnp.asarray(prob.start),
        SaveTimes(TAU_END, n=SAVES),
        form=form,
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
    )


@register("flow_closed_form")
def _flow_closed_form(ctx: Context) -> list[CheckResult]:
    """The integrated flows against the closed-form solutions of the 1-D problems."""
    dtype_from_config("float64")
    out = []
    for name in ("great_circle", "ire_toy"):
        prob = PROBLEMS[name]()
        for form in FORMS_CHECKED:
            res = _adaptive_flow(name, form)
            ref = np.asarray(prob.flow_closed_form(jnp.asarray(res.theta[0]), 4.0, form))
            err = float(np.linalg.norm(res.theta[-1] - ref))
            out.append(
                at_most(
                    name=f"{name}: flow {form} endpoint at tau = 4 = closed form",
                    claim="|theta(4) - closed form| (adaptive, rtol 1e-10)",
                    kind="identity",
                    threshold="regression",
                    source="docs/theory.md section 3; theory/problems/analytic.py",
                    measured=err,
                    bound=1e-6,
                    details={"steps": res.num_steps},
                )
            )
    return out


@register("flow_monotone")
def _flow_monotone(ctx: Context) -> list[CheckResult]:
    """lambda_1 never increases along either flow; d log lambda_1/dtau = <g, theta'>."""
    dtype_from_config("float64")
    out = []
    for name in PROBLEMS:
        for form in FORMS_CHECKED:
            res = _adaptive_flow(name, form)
            rise = float(np.max(np.diff(res.sharpness)) / res.sharpness[0])
            out.append(
                at_most(
                    name=f"{name}: lambda_1 non-increasing along {form}",
                    claim="largest relative increase between saves",
                    kind="theorem",
                    threshold="derived",
                    source="LLA22 / docs/theory.md section 3",
                    measured=rise,
                    bound=1e-12,
                )
            )
            # d log lambda_1 / dtau = -|g|^2/4 (F0) or -|g|^2/4/(1+|g|^2/4) (F1).
            dlog = np.gradient(np.log(res.sharpness), res.tau)
            g2 = res.g_norm**2
            pred = -g2 / 4 if form == "F0" else -g2 / 4 / (1 + g2 / 4)
            err = float(np.max(np.abs(dlog - pred)[2:-2]) / np.max(np.abs(pred)))
            out.append(
                at_most(
                    name=f"{name}: d log lambda_1/dtau = <g, dtheta/dtau> ({form})",
                    claim="relative error of the finite-difference rate (step 0.025)",
                    kind="identity",
                    threshold="derived",
                    source="docs/theory.md section 3",
                    measured=err,
                    bound=5e-3,
                )
            )
    return out


@register("flow_independent")
def _flow_independent(ctx: Context) -> list[CheckResult]:
    """curved_manifold (no closed-form flow): sharpness_flow against an independent RK4 of the
    closed-form Riemannian field (no loss derivatives, no diffrax: theory.flows.reduction.rk4_step
    with
    dt = 1e-3, renormalized)."""
    dtype_from_config("float64")
    prob = PROBLEMS["curved_manifold"]()
    res = _adaptive_flow("curved_manifold", "F1")
    half = (SAVES - 1) // 2  # tau = 2
    assert abs(float(res.tau[half]) - 2.0) < 1e-12

    def field(y: jax.Array) -> jax.Array:
        return velocity(prob.riemannian_grad_log_lambda1(y / jnp.linalg.norm(y)), "F1")

    def step(y: jax.Array, _: None) -> tuple[jax.Array, None]:
        y = rk4_step(field, y, 1e-3)
        return y / jnp.linalg.norm(y), None

    ref, _ = jax.lax.scan(step, jnp.asarray(res.theta[0]), None, length=2000)
    err = float(jnp.linalg.norm(res.theta[half] - ref))
    return [
        at_most(
            name="curved_manifold: flow F1 at tau = 2 = independent integration",
            claim="|theta(2) - RK4 of the closed-form field (dt 1e-3)|",
            kind="identity",
            threshold="regression",
            source="docs/theory.md section 3; theory/problems/analytic.py",
            measured=err,
            bound=1e-6,
        )
    ]


@register("integrator_accuracy")
def _integrators(ctx: Context) -> list[CheckResult]:
    """Adaptive error against the requested tolerance; the fixed-step projected RK4's order."""
    dtype_from_config("float64")
    prob = PROBLEMS["great_circle"]()
    start = jnp.asarray(prob.start)
    out = []

    def error(res: Any) -> float:
        ref = np.asarray(prob.flow_closed_form(jnp.asarray(res.theta[0]), 2.0, "F1"))
        return float(np.linalg.norm(res.theta[-1] - ref))

    for rtol in (1e-4, 1e-6, 1e-8, 1e-10):
        pid = diffrax.PIDController(rtol=rtol, atol=rtol / 100)
        res = sharpness_flow(prob.loss, start, SaveTimes(2.0, n=3), stepsize_controller=pid)
        out.append(
            at_most(
                name=f"adaptive flow error at rtol = {rtol:g} (great_circle, F1)",
                claim="|theta(2) - closed form| / rtol",
                kind="identity",
                threshold="regression",
                source="diffrax Tsit5 + PID",
                measured=error(res) / rtol,
                bound=30.0,
                details={"steps": res.num_steps},
            )
        )
    dts = (0.2, 0.1, 0.05, 0.025)
    errs = [
        error(
            sharpness_flow(
                prob.loss,
                start,
                SaveTimes(2.0, n=3),
                solver=RK4(),
                stepsize_controller=FixedSteps(dt),
            )
        )
        for dt in dts
    ]
    slope = loglog_fit(np.asarray(dts), np.asarray(errs)).slope
    out.append(
        within(
            name="projected RK4 convergence order (great_circle, F1)",
            claim="log-log slope of the error at tau = 2 against dt",
            kind="identity",
            threshold="regression",
            source="classical RK4 with a retraction",
            predicted=4.0,
            measured=slope,
            rtol=0.15,
            details={"dt": list(dts), "errors": errs},
        )
    )
    return out
