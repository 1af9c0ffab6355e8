"""Small random scale-invariant losses for the tests (independent of theory.problems.analytic)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from theory.core.invariance import make_scale_invariant


def _smooth(u, a, b, c):
    """A non-quadratic smooth function with nonzero third derivatives."""
    z = a @ u - b
    return jnp.mean(jnp.log(jnp.cosh(z))) + 0.25 * jnp.sum(jnp.sin(c * u) ** 2)


def random_loss(dim: int, groups=None, seed: int = 0, dtype=jnp.float64):
    """A random scale-invariant loss on R^dim (one group, or per-group) and a random point."""
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.normal(size=(2 * dim, dim)), dtype)
    b = jnp.asarray(rng.normal(size=2 * dim) * 0.3, dtype)
    c = jnp.asarray(rng.normal(size=dim), dtype)
    loss = make_scale_invariant(Partial(_smooth, a=a, b=b, c=c), groups)
    w = jnp.asarray(rng.normal(size=dim) * 2.0, dtype)
    return loss, w


def random_spd(dim: int, seed: int = 0, dtype=jnp.float64, top=(10.0, 9.0, 8.5)):
    """A symmetric matrix with a known spectrum: ``top`` then uniform in [-3, 5]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    ev = np.concatenate([np.asarray(top), rng.uniform(-3, 5, dim - len(top))])
    return jnp.asarray((q * ev) @ q.T, dtype), np.sort(ev)[::-1]


def dense_hessian(loss, w):
    return jax.hessian(loss)(w)
