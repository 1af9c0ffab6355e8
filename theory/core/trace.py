"""Hutchinson's estimate of the trace of the spherical Hessian, ``tr hess L(w_hat)``.

The IRE paper's mechanism is a flow that lowers ``tr hess L`` on the manifold of minimizers; the
top eigenvalue (:func:`theory.core.sharpness.spherical_sharpness`) is the project's sharpness.
For a scale-invariant loss both are taken at ``w_hat`` (``w`` normalized per group), where they do
not depend on the weight norms.

``tr H = E[z^T H z]`` for Rademacher probes ``z`` (entries +-1), so the mean of ``z_i^T H z_i``
over ``num_probes`` independent probes is unbiased, with standard error
``std(z^T H z) / sqrt(num_probes)`` (sample standard deviation); one Hessian-vector product per
probe.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from theory.core import validate as check
from theory.core.invariance import check_scale_invariance, leaves_of, normalize
from theory.core.objective import as_objective
from theory.core.types import Array, LossFn

__all__ = ["spherical_trace"]


@eqx.filter_jit
def _quadratic_forms(loss: LossFn, w_hat: Array, probes: Array) -> Array:
    """``z_i^T H(w_hat) z_i`` for each row ``z_i`` of ``probes`` (one HVP each)."""
    _, hvp = as_objective(loss).linearize(w_hat)
    return jax.lax.map(lambda z: jnp.vdot(z, hvp(z)), probes)


def spherical_trace(
    loss: LossFn,
    w: Array,
    *,
    groups: Sequence[int] | None = None,
    num_probes: int = 32,
    key: Array | None = None,
    check_invariance: bool = True,
) -> tuple[Array, Array]:
    """Hutchinson estimate of ``tr hess L(w_hat)`` and its standard error (module docstring).

    Args:
        loss: scale-invariant loss on flat vectors (checked unless ``check_invariance=False``).
        w: point ``(D,)``, each group nonzero; normalized per group before the estimate.
        groups: contiguous block sizes (default one group).
        num_probes: Rademacher probes (``>= 2``, so that the standard error is defined).
        key: PRNG key of the probes (default ``PRNGKey(0)``).
        check_invariance: reject a loss that is not scale-invariant.

    Returns:
        ``(estimate, standard_error)``, two scalars.
    """
    w, sizes = check.flat_vector(w, "w", groups, leaves=leaves_of(loss))
    num_probes = check.positive_int(num_probes, "num_probes")
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 (for the standard error), got {num_probes}")
    check.loss_output(loss, w, wname="w")
    if check_invariance and not check.is_traced(w):
        check_scale_invariance(loss, w, groups=sizes)
    key = jax.random.PRNGKey(0) if key is None else key
    probes = jax.random.rademacher(key, (num_probes, w.shape[0]), w.dtype)
    q = _quadratic_forms(loss, normalize(w, sizes), probes)
    return jnp.mean(q), jnp.std(q, ddof=1) / jnp.sqrt(jnp.asarray(num_probes, w.dtype))
