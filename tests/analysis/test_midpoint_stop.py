"""The midpoint solves' stopping rule (``tol``, ``stop`` of ``curvature_along`` and
``midpoint_curvature``, used by the regime map's ``mid_tol``) against NumPy ``eigvalsh`` of the
dense ``jax.hessian``."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._losses import random_loss
from theory.analysis.midpoint import curvature_along, midpoint_curvature

GROUPS = (20, 20)


@pytest.mark.slow  # default-suite budget (12 s); core/test_lanczos.py tests the error stop
def test_error_stop_meets_its_tolerance_at_every_point() -> None:
    loss, w = random_loss(sum(GROUPS), GROUPS, 5)
    rng = np.random.default_rng(6)
    rows = np.asarray(w)[None] + 0.05 * rng.normal(size=(4, sum(GROUPS)))
    hess = jax.jit(jax.hessian(loss))
    bounds = np.cumsum((0, *GROUPS))
    for tol in (1e-3, 1e-6):
        curv = curvature_along(
            loss, jnp.asarray(rows), groups=GROUPS, lanczos_iters=30, tol=tol, stop="error"
        )
        assert curv.hessian is not None and curv.spherical is not None
        for i, p in enumerate(rows):
            lam = np.linalg.eigvalsh(np.asarray(hess(jnp.asarray(p))))[-1]
            p_hat = np.concatenate(
                [p[a:b] / np.linalg.norm(p[a:b]) for a, b in itertools.pairwise(bounds)]
            )
            sph = np.linalg.eigvalsh(np.asarray(hess(jnp.asarray(p_hat))))[-1]
            # A Ritz value: never above lambda_1, and within tol of it.
            assert lam * (1 - tol) <= curv.hessian[i, 0] <= lam * (1 + 1e-12)
            assert sph * (1 - tol) <= curv.spherical[i, 0] <= sph * (1 + 1e-12)
    # midpoint_curvature passes the rule through (eta = 0: at the rows themselves).
    mid = midpoint_curvature(
        loss, rows, 0.0, 0.0, groups=GROUPS, lanczos_iters=30, tol=1e-6, stop="error"
    )
    np.testing.assert_allclose(mid.hessian, curv.hessian, rtol=1e-12)


def test_bad_stopping_rule_named() -> None:
    loss, w = random_loss(6, None, 0)
    rows = jnp.asarray(w)[None]
    with pytest.raises(ValueError, match="stop must be 'residual' or 'error', got 'gap'"):
        curvature_along(loss, rows, lanczos_iters=4, stop="gap")
    with pytest.raises(ValueError, match="tol"):
        curvature_along(loss, rows, lanczos_iters=4, tol=-1.0)
