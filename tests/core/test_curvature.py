"""HVPs against the dense Hessian; third derivatives against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._losses import random_loss
from theory.core.curvature import (
    grad_and_hvp,
    grad_lambda1,
    grad_log_lambda1,
    hvp,
    linearize_grad,
    mixed_third,
    second_directional,
)

HVP_CI = "tests/core/test_curvature.py::test_hvp_matches_dense_hessian[float64-None]"


@pytest.mark.parametrize(
    "groups", [None, pytest.param((3, 4, 5), marks=pytest.mark.heavy(covered_by=HVP_CI))]
)  # default-suite budget: several groups in make test-slow
@pytest.mark.parametrize(
    "dtype", [pytest.param(jnp.float32, marks=pytest.mark.heavy(covered_by=HVP_CI)), jnp.float64]
)
def test_hvp_matches_dense_hessian(groups, dtype):
    # Same arithmetic up to reassociation: float32 ~1e-6, float64 ~1e-14 of |H||v|.
    loss, w = random_loss(12, groups, 0, dtype)
    v = jnp.asarray(np.random.default_rng(1).normal(size=12), dtype)
    h = jax.hessian(loss)(w)
    tol = {jnp.float32: 1e-5, jnp.float64: 1e-13}[dtype] * float(
        jnp.linalg.norm(h) * jnp.linalg.norm(v)
    )
    np.testing.assert_allclose(hvp(loss, w, v), h @ v, atol=tol)
    g, hv = grad_and_hvp(loss, w, v)
    np.testing.assert_allclose(g, jax.grad(loss)(w), atol=tol)
    np.testing.assert_allclose(hv, h @ v, atol=tol)
    g2, lin = linearize_grad(loss, w)
    np.testing.assert_allclose(g2, g, atol=tol)
    np.testing.assert_allclose(lin(v), h @ v, atol=tol)
    np.testing.assert_allclose(
        second_directional(loss, w, v), v @ h @ v, rtol=1e-4 if dtype == jnp.float32 else 1e-12
    )


@pytest.mark.parametrize(
    "seed",
    [
        0,
        pytest.param(
            1,
            marks=pytest.mark.heavy(
                covered_by="tests/core/test_curvature.py::test_grad_lambda1_against_finite_differences[0]"
            ),
        ),
    ],
)
def test_grad_lambda1_against_finite_differences(seed):
    # The third-derivative pass against central differences of lambda_1(dense eigh), float64.
    # Step 1e-5: truncation ~h^2 * |D^5 L| ~ 1e-10, rounding ~eps/h * |H| ~ 1e-11.
    loss, w = random_loss(8, None, seed)
    w = w / jnp.linalg.norm(w)

    def lam1(x):
        return jnp.linalg.eigvalsh(jax.hessian(loss)(x))[-1]

    vals, vecs = jnp.linalg.eigh(jax.hessian(loss)(w))
    assert vals[-1] - vals[-2] > 1e-2 * abs(vals[-1])  # simple top eigenvalue
    v1 = vecs[:, -1]
    g = grad_lambda1(loss, w, v1)
    h = 1e-5
    eye = jnp.eye(8)
    fd = jnp.array([(lam1(w + h * e) - lam1(w - h * e)) / (2 * h) for e in eye])
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8 * float(jnp.abs(vals[-1])))
    # And against finite differences of v^T H(x) v with v fixed (no eigen-solver involved).
    fd2 = jnp.array(
        [
            (v1 @ jax.hessian(loss)(w + h * e) @ v1 - v1 @ jax.hessian(loss)(w - h * e) @ v1)
            / (2 * h)
            for e in eye
        ]
    )
    np.testing.assert_allclose(g, fd2, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad_log_lambda1(loss, w, v1, vals[-1]), g / vals[-1], rtol=1e-14)
    # Homogeneity of degree -2 of lambda_1: the radial component of grad lambda_1 is -2 lambda_1.
    assert float(jnp.vdot(g, w)) == pytest.approx(-2 * float(vals[-1]), rel=1e-10)


@pytest.mark.slow  # default-suite budget; grad_lambda1 against finite differences stays default
def test_mixed_third_against_central_differences_of_the_dense_hessian():
    # grad_x (a^T H(x) b) by central differences of the dense Hessian (step 1e-5: truncation
    # ~1e-10, rounding ~1e-11 relative in float64); symmetric in (a, b); (v, v) is grad_lambda1.
    loss, w = random_loss(9, None, 3, jnp.float64)
    rng = np.random.default_rng(4)
    a, b = (jnp.asarray(rng.normal(size=9)) for _ in range(2))
    got = mixed_third(loss, w, a, b)
    hess = jax.hessian(loss)
    step = 1e-5
    fd = np.array(
        [(a @ hess(w + step * e) @ b - a @ hess(w - step * e) @ b) / (2 * step) for e in np.eye(9)]
    )
    np.testing.assert_allclose(got, fd, rtol=1e-7, atol=1e-8 * np.abs(fd).max())
    np.testing.assert_allclose(mixed_third(loss, w, b, a), got, rtol=1e-12, atol=1e-12)
    v = a / jnp.linalg.norm(a)
    np.testing.assert_allclose(mixed_third(loss, w, v, v), grad_lambda1(loss, w, v), rtol=1e-12)
