"""Scale invariance: wrappers, groups, identities and the check that rejects bad losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._losses import random_loss
from theory.core.invariance import (
    ScaleInvarianceError,
    check_scale_invariance,
    flatten_loss,
    group_norms,
    make_scale_invariant,
    normalize,
)

GROUPS = [None, (3, 4, 5)]


@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize("seed", [0, 1])
def test_identities(groups, seed):
    # float64: every identity holds to rounding, ~1e-13 relative for these O(1) quantities.
    loss, w = random_loss(12, groups, seed)
    sizes = groups or (12,)
    rng = np.random.default_rng(seed)
    c = jnp.asarray(np.repeat(rng.uniform(0.2, 5.0, len(sizes)), sizes))
    assert jnp.allclose(loss(c * w), loss(w), rtol=1e-13, atol=0)
    g = jax.grad(loss)(w)
    h = jax.hessian(loss)(w)
    start = 0
    for size in sizes:
        wg = jnp.zeros_like(w).at[start : start + size].set(w[start : start + size])
        gg = jnp.zeros_like(w).at[start : start + size].set(g[start : start + size])
        # Euler per group and H w_g = -grad_g L.
        assert abs(jnp.vdot(g, wg)) <= 1e-13 * jnp.linalg.norm(g) * jnp.linalg.norm(wg)
        np.testing.assert_allclose(h @ wg, -gg, atol=1e-12 * jnp.linalg.norm(h))
        start += size
    # grad L(M w) = M^{-1} grad L(w), hess L(M w) = M^{-1} hess L(w) M^{-1}.
    np.testing.assert_allclose(jax.grad(loss)(c * w), g / c, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(jax.hessian(loss)(c * w), h / jnp.outer(c, c), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("groups", GROUPS)
def test_check_accepts_invariant_and_keeps_dtype(dtype, groups):
    loss, w = random_loss(12, groups, 0, dtype)
    report = check_scale_invariance(loss, w, groups=groups)
    assert report.ok
    assert loss(w).dtype == dtype


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_check_rejects_non_invariant(dtype):
    loss, w = random_loss(12, None, 0, dtype)
    with pytest.raises(ScaleInvarianceError, match="not scale-invariant"):
        check_scale_invariance(lambda x: loss(x) + 1e-3 * jnp.vdot(x, x), w)
    with pytest.raises(ScaleInvarianceError, match="not scale-invariant"):
        check_scale_invariance(lambda x: jnp.sum(jnp.tanh(x)), w)


def test_check_rejects_wrong_groups():
    # Invariant as one group only: per-group scaling changes it.
    loss, w = random_loss(12, None, 0)
    with pytest.raises(ScaleInvarianceError, match="per group"):
        check_scale_invariance(loss, w, groups=(3, 4, 5))
    # Per-group invariant is also invariant as one group.
    loss_g, _ = random_loss(12, (3, 4, 5), 0)
    assert check_scale_invariance(loss_g, w).ok


def test_normalize_and_groups():
    w = jnp.arange(1.0, 8.0)
    u = normalize(w, (3, 4))
    np.testing.assert_allclose(group_norms(u, (3, 4)), [1.0, 1.0], rtol=1e-15)
    np.testing.assert_allclose(u[:3], w[:3] / jnp.linalg.norm(w[:3]), rtol=1e-15)
    with pytest.raises(ValueError, match="add up to 6"):
        normalize(w, (3, 3))
    with pytest.raises(ValueError, match="positive"):
        normalize(w, (7, 0))
    with pytest.raises(TypeError, match="callable"):
        make_scale_invariant(3.0)


def test_flatten_loss_pytree():
    rng = np.random.default_rng(0)
    params = {"a": jnp.asarray(rng.normal(size=(2, 3))), "b": jnp.asarray(rng.normal(size=4))}

    def f(p):
        ua = p["a"] / jnp.linalg.norm(p["a"])
        ub = p["b"] / jnp.linalg.norm(p["b"])
        return jnp.sum(jnp.sin(ua)) * jnp.sum(ub**3)

    flat = flatten_loss(f, params)
    assert flat.groups == (6, 4)
    assert flat.loss(flat.w0) == pytest.approx(float(f(params)), rel=1e-14)
    assert check_scale_invariance(flat.loss, flat.w0, groups=flat.groups).ok
    one = flatten_loss(f, params, groups="all")
    assert one.groups == (10,)
    with pytest.raises(ScaleInvarianceError):
        check_scale_invariance(one.loss, one.w0, groups=(5, 5))

    # normalize_groups enforces invariance on a model that is not invariant.
    def g(p):
        return jnp.sum(jnp.sin(p["a"])) + jnp.sum(p["b"] ** 2)

    forced = flatten_loss(g, params, normalize_groups=True)
    assert check_scale_invariance(forced.loss, forced.w0, groups=forced.groups).ok
    with pytest.raises(ValueError, match="'leaf', 'all'"):
        flatten_loss(f, params, groups="layers")
