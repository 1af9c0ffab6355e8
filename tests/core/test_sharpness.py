"""Spherical sharpness and the EoS quantity against dense eigh at the normalized point."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._losses import random_loss
from theory.core.invariance import ScaleInvarianceError, expand_groups, group_norms, normalize
from theory.core.sharpness import eos_quantity, sharpness_eigs, spherical_sharpness

RTOL = {jnp.float32: 1e-5, jnp.float64: 1e-11}  # Lanczos default tol -> ~eps/gap on lambda_1


SHARP_CI = "tests/core/test_sharpness.py::test_spherical_sharpness_against_eigh[float64-None]"
EOS_CI = "tests/core/test_sharpness.py::test_eos_quantity[groups1]"


@pytest.mark.parametrize(
    "groups", [None, pytest.param((3, 4, 5), marks=pytest.mark.heavy(covered_by=SHARP_CI))]
)
@pytest.mark.parametrize(
    "dtype", [pytest.param(jnp.float32, marks=pytest.mark.heavy(covered_by=SHARP_CI)), jnp.float64]
)
def test_spherical_sharpness_against_eigh(groups, dtype):
    loss, w = random_loss(12, groups, 2, dtype)
    w_hat = normalize(w, groups)
    h = np.asarray(
        jax.hessian(loss)(w_hat.astype(jnp.float64) if dtype == jnp.float64 else w_hat), np.float64
    )
    vals, vecs = np.linalg.eigh(h)
    lam1, v1 = spherical_sharpness(loss, w, groups=groups)
    np.testing.assert_allclose(lam1, vals[-1], rtol=RTOL[dtype], atol=RTOL[dtype])
    assert abs(float(np.dot(np.asarray(v1, np.float64), vecs[:, -1]))) == pytest.approx(
        1.0, abs=1e-3
    )
    # Independent of the norm of w (scale by 1000 in every group).
    lam1_big, _ = spherical_sharpness(loss, 1000.0 * w, groups=groups)
    np.testing.assert_allclose(lam1_big, lam1, rtol=RTOL[dtype] * 10)
    # The top-3 spectrum too.
    res = sharpness_eigs(loss, w, groups=groups, k=3)
    np.testing.assert_allclose(
        res.eigenvalues, vals[::-1][:3], rtol=RTOL[dtype] * 10, atol=RTOL[dtype]
    )


@pytest.mark.parametrize(
    "groups", [pytest.param(None, marks=pytest.mark.heavy(covered_by=EOS_CI)), (3, 4, 5)]
)  # default-suite budget: one group in make test-slow
def test_eos_quantity(groups):
    # eta * lambda_1(hess L(w)) computed three ways: raw Hessian, D^{1/2} H(w_hat) D^{1/2}, and
    # for one group eta_eff * S.
    loss, w = random_loss(12, groups, 3)
    sizes = groups or (12,)
    w = w * jnp.asarray(np.repeat([0.3, 2.0, 5.0][: len(sizes)], sizes))
    eta = 0.07
    raw = eta * np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(w)))[-1]
    d_half = expand_groups(jnp.sqrt(eta) / group_norms(w, sizes), sizes)
    h_hat = jax.hessian(loss)(normalize(w, sizes))
    scaled = np.linalg.eigvalsh(np.asarray(d_half[:, None] * h_hat * d_half[None, :]))[-1]
    val, _ = eos_quantity(loss, w, eta, groups=groups)
    np.testing.assert_allclose(val, raw, rtol=1e-10)
    np.testing.assert_allclose(scaled, raw, rtol=1e-10)
    if groups is None:
        lam1, _ = spherical_sharpness(loss, w)
        np.testing.assert_allclose(eta / jnp.vdot(w, w) * lam1, raw, rtol=1e-10)


def test_bad_inputs():
    loss, w = random_loss(12, None, 0)
    with pytest.raises(ValueError, match="w must be nonzero"):
        spherical_sharpness(loss, jnp.zeros(12))
    with pytest.raises(ValueError, match="group 1"):
        spherical_sharpness(loss, w.at[3:7].set(0.0), groups=(3, 4, 5), check_invariance=False)
    with pytest.raises(ValueError, match="non-finite"):
        spherical_sharpness(loss, w.at[2].set(jnp.nan))
    with pytest.raises(ValueError, match="shape"):
        spherical_sharpness(loss, w.reshape(3, 4))
    with pytest.raises(ScaleInvarianceError):
        spherical_sharpness(lambda x: jnp.sum(x**2), w)
    with pytest.raises(ValueError, match="eta must be a positive"):
        eos_quantity(loss, w, -0.1)
    with pytest.raises(ValueError, match="v0 must have the shape"):
        spherical_sharpness(loss, w, v0=jnp.ones(5))
