"""theory.flows.central.curvature_scan against dense oracles.

* ``L = 1/2 sum relu(A w)^2`` is ``C^1`` with the piecewise-constant Hessian
  ``A^T diag(A w > 0) A``: ``lambda_1`` is constant between sign changes of the ``a_i . w`` and
  jumps at each one, so the jumps are the grid intervals holding a sign change (counted
  directly from ``A``) and the whole change is jumps (``rough_share = 1``);
* ``L = 1/2 sum softplus(A w)^2`` is smooth: no jumps on a short segment;
* ``lambda_1`` itself against ``eigvalsh(jax.hessian(L))`` at every point, with Lanczos.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory.flows.central import curvature_scan
from theory.flows.common import Dense, Lanczos

RNG = np.random.default_rng(3)
A = jnp.asarray(RNG.standard_normal((12, 6)))
W = jnp.asarray(RNG.standard_normal(6))
DIR = jnp.asarray(RNG.standard_normal(6))


def relu_sq(w):
    return 0.5 * jnp.sum(jax.nn.relu(A @ w) ** 2)


def softplus_sq(w):
    return 0.5 * jnp.sum(jax.nn.softplus(A @ w) ** 2)


def test_relu_jumps_are_the_sign_changes() -> None:
    scan = curvature_scan(relu_sq, W, DIR, span=1.0, points=41, geometry=Lanczos())
    pre = np.asarray(A @ W)[:, None] + np.asarray(A @ DIR)[:, None] * scan.s[None, :]
    changed = np.any(np.diff(np.sign(pre), axis=1) != 0, axis=0)  # per grid interval
    assert changed.sum() >= 3  # the segment crosses several kinks (the test can fail)
    # Each sign change adds or removes a rank-one PSD term: lambda_1 moves unless a_i is
    # orthogonal to the top eigenvector, which does not happen for Gaussian A.
    lam_step = np.abs(np.diff(scan.lam)) > 1e-9
    np.testing.assert_array_equal(lam_step, changed)
    assert scan.jumps == int(changed.sum())
    assert scan.rough_share == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow  # default-suite budget
def test_lambda1_matches_dense_eigvalsh() -> None:
    scan = curvature_scan(softplus_sq, W, DIR, span=0.5, points=7, geometry=Lanczos())
    hess = jax.hessian(softplus_sq)
    oracle = [float(jnp.linalg.eigvalsh(hess(W + s * DIR))[-1]) for s in scan.s]
    np.testing.assert_allclose(scan.lam, oracle, rtol=1e-10)


def test_smooth_loss_has_no_jumps() -> None:
    scan = curvature_scan(softplus_sq, W, DIR, span=0.01, points=41, geometry=Dense())
    half = curvature_scan(softplus_sq, W, DIR, span=0.005, points=41, geometry=Dense())
    assert scan.jumps == 0 and half.jumps == 0
    assert np.ptp(scan.lam) > 0  # lambda_1 does move on the segment
    # For a smooth lambda_1 the differences depart from a constant slope by the curvature,
    # first order in the span (measured 0.0128 at span 0.01): halving it halves the share.
    assert scan.rough_share < 0.05
    assert scan.rough_share / half.rough_share == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points": 2}, "points must be >= 3"),
        ({"span": 0.0}, "span"),
        ({"factor": -1.0}, "factor"),
        ({"direction": jnp.zeros(5)}, r"direction must have the shape of w \(6,\)"),
        ({"direction": jnp.zeros(6)}, "direction must be finite and nonzero"),
    ],
)
def test_bad_input(kwargs, match) -> None:
    args = {"direction": DIR, **kwargs}
    direction = args.pop("direction")
    with pytest.raises(ValueError, match=match):
        curvature_scan(relu_sq, W, direction, **args)
