"""Hutchinson's spherical trace against the dense Hessian at the normalized point."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._losses import random_loss
from theory.core.invariance import normalize
from theory.core.trace import spherical_trace

TRACE_CI = (
    "tests/core/test_trace.py::test_spherical_trace_is_the_mean_of_the_dense_quadratic_forms[None]"
)


@pytest.mark.parametrize(
    "groups", [None, pytest.param((3, 4, 5), marks=pytest.mark.heavy(covered_by=TRACE_CI))]
)
def test_spherical_trace_is_the_mean_of_the_dense_quadratic_forms(groups):
    loss, w = random_loss(12, groups, 4)
    h = np.asarray(jax.hessian(loss)(normalize(w, groups)))
    key = jax.random.PRNGKey(7)
    n = 400
    est, err = spherical_trace(loss, 50.0 * w, groups=groups, num_probes=n, key=key)
    z = np.asarray(jax.random.rademacher(key, (n, 12), w.dtype))
    q = np.einsum("ni,ij,nj->n", z, h, z)
    # the estimator is exactly the mean of z^T H z over its probes, at w_hat (norm-free) ...
    np.testing.assert_allclose(est, q.mean(), rtol=1e-10)
    np.testing.assert_allclose(err, q.std(ddof=1) / np.sqrt(n), rtol=1e-10)
    # ... and an unbiased estimate of the trace: within 4 standard errors of it
    assert abs(float(est) - np.trace(h)) < 4 * float(err)
    assert float(err) > 0


def test_bad_inputs_name_the_value():
    loss, w = random_loss(12, None, 0)
    with pytest.raises(ValueError, match=r"num_probes must be >= 2 .* got 1"):
        spherical_trace(loss, w, num_probes=1)
    with pytest.raises(ValueError, match="num_probes must be >= 1, got 0"):
        spherical_trace(loss, w, num_probes=0)
    with pytest.raises(Exception, match="scale"):
        spherical_trace(lambda v: jnp.sum(v**2), w)
