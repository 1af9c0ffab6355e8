"""Checks of exact identities: scale invariance, the closed forms on Gamma, the GD+WD update.

Need no stored simulation (float64, dense oracles; docs/theory.md sections 1-3).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sims._runtime import dtype_from_config
from sims.checks.core import CheckResult, Context, at_most, register
from theory.core.curvature import grad_lambda1
from theory.core.invariance import identity_errors
from theory.core.sharpness import spherical_sharpness
from theory.engine import NoTracking
from theory.engine.gd import gd_wd
from theory.problems.analytic import PROBLEMS


def _near_points(prob: Any, n: int, seed: int) -> jnp.ndarray:
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 * n)
    on = jnp.stack([prob.sample_on_manifold(k, jnp.float64) for k in keys[:n]])
    noise = jnp.stack([jax.random.normal(k, (prob.dim,), jnp.float64) for k in keys[n:]])
    return on + 0.05 * noise


@register("scale_invariance_identities")
def _identities(ctx: Context) -> list[CheckResult]:
    dtype_from_config("float64")
    out = []
    for name in PROBLEMS:
        prob = PROBLEMS[name]()
        pts = _near_points(prob, 4, 0) * 3.7
        homog, euler, hw = identity_errors(prob.loss, pts)
        out += [
            at_most(
                name=f"{name}: {what}",
                claim=claim,
                kind="identity",
                threshold="derived",
                source="docs/theory.md section 1",
                measured=err,
                bound=bound,
            )
            for what, claim, err, bound in (
                ("L(cw) = L(w)", "homogeneity of degree 0", homog, 1e-12),
                ("<grad L(w), w> = 0", "Euler identity (cosine)", euler, 1e-12),
                ("H w = -grad L", "relative error of H(w) w + grad L(w)", hw, 1e-10),
            )
        ]
    return out


@register("closed_form_sharpness")
def _closed_forms(ctx: Context) -> list[CheckResult]:
    """Lanczos spherical sharpness and third-derivative gradient vs the closed forms on Gamma."""
    dtype_from_config("float64")
    out = []
    for name in PROBLEMS:
        prob = PROBLEMS[name]()
        keys = jax.random.split(jax.random.PRNGKey(1), 3)
        err_l, err_g = 0.0, 0.0
        for k in keys:
            u = prob.sample_on_manifold(k, jnp.float64)
            lam, v = spherical_sharpness(prob.loss, u, check_invariance=False)
            err_l = max(err_l, float(abs(lam - prob.lambda1(u)) / prob.lambda1(u)))
            g = prob.tangent_projector(u) @ grad_lambda1(prob.loss, u, v) / lam
            ref = prob.riemannian_grad_log_lambda1(u)
            err_g = max(err_g, float(jnp.linalg.norm(g - ref) / max(jnp.linalg.norm(ref), 1e-3)))
        out += [
            at_most(
                name=f"{name}: Lanczos S = closed-form lambda_1",
                claim="relative error on Gamma",
                kind="identity",
                threshold="derived",
                source="docs/theory.md section 1",
                measured=err_l,
                bound=1e-10,
            ),
            at_most(
                name=f"{name}: P D^3L[v1,v1]/lambda_1 = closed-form g",
                claim="Hellmann-Feynman gradient of log lambda_1 (relative)",
                kind="identity",
                threshold="derived",
                source="docs/theory.md section 3",
                measured=err_g,
                bound=1e-8,
            ),
        ]
    return out


@register("norm_recursion")
def _norm_recursion(ctx: Context) -> list[CheckResult]:
    dtype_from_config("float64")
    prob = PROBLEMS["curved_manifold"]()
    w0 = jnp.asarray(prob.start) * 0.5
    eta, wd = 0.1, 0.05
    res = gd_wd(prob.loss, w0, eta=eta, wd=wd, steps=400, tracker=NoTracking())
    assert res.w is not None
    n2 = res.norm**2
    u = res.w / res.norm[:, None]
    g = np.asarray(jax.vmap(jax.grad(prob.loss))(jnp.asarray(u)))
    pred = (1 - eta * wd) ** 2 * n2[:-1] + eta**2 * np.sum(g[:-1] ** 2, 1) / n2[:-1]
    err = float(np.max(np.abs(n2[1:] - pred) / n2[1:]))
    return [
        at_most(
            name="|w_{t+1}|^2 = (1-eta wd)^2 |w_t|^2 + eta^2 |grad L(w_hat)|^2/|w_t|^2",
            claim="max relative error over 400 steps (curved_manifold)",
            kind="identity",
            threshold="derived",
            source="docs/theory.md section 2",
            measured=err,
            bound=1e-12,
        )
    ]


@register("intrinsic_lr")
def _intrinsic_lr(ctx: Context) -> list[CheckResult]:
    """Exact for c = 2 (power-of-two scaling is exact in floating point) over a run that enters
    the EoS; for c = 3.7 rounding differs, and the EoS oscillation amplifies the difference, so
    it is checked over the first 250 steps (before the onset near step 290) and the deviation
    after 2000 steps is reported in the details."""
    dtype_from_config("float64")
    prob = PROBLEMS["great_circle"]()
    w0 = jnp.asarray(prob.start) * 0.7
    out = []
    for c, steps, tol in ((2.0, 2000, 1e-14), (3.7, 250, 1e-12)):
        a = gd_wd(
            prob.loss, w0, eta=0.1, wd=0.02, steps=2000, tracker=NoTracking(), perturbation=0.0
        )
        b = gd_wd(
            prob.loss, c * w0, eta=c**2 * 0.1, wd=0.02 / c**2, steps=2000, tracker=NoTracking()
        )
        assert a.w is not None and b.w is not None
        dev = np.max(np.abs(b.w - c * a.w), axis=1) / np.max(np.abs(c * a.w), axis=1)
        out.append(
            at_most(
                name=f"(c^2 eta, wd/c^2, c w0) gives c w_t, c = {c}",
                claim=f"max relative deviation over {steps} steps",
                kind="identity",
                threshold="derived",
                source="docs/theory.md section 2",
                measured=float(dev[: steps + 1].max()),
                bound=tol,
                details={"deviation_after_2000_steps": float(dev[-1])},
            )
        )
    return out
