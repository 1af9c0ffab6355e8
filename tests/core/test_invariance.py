"""Scale invariance: wrappers, groups, identities and the check that rejects bad losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._losses import random_loss
from tests.core._flax_net import NetSpec, tiny_cnn
from theory.core.invariance import (
    Leaf,
    ScaleInvarianceError,
    check_scale_invariance,
    describe_group,
    diagnose_groups,
    flatten_loss,
    group_norms,
    identity_errors,
    leaves_of,
    make_scale_invariant,
    normalize,
)

GROUPS = [None, (3, 4, 5)]


@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize(
    "seed",
    [
        0,
        pytest.param(
            1,
            marks=pytest.mark.heavy(
                covered_by="tests/core/test_invariance.py::test_identities[0-None]"
            ),
        ),
    ],
)  # default-suite budget: the others in make test-slow
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


# --------------------------------------------------------------------------------------------
# Diagnosis per group and the messages (a flax CNN made invariant the way a user would)
# --------------------------------------------------------------------------------------------


def _with_eps(eps):
    loss, _ = random_loss(8, None, 0)

    def f(w):  # w / sqrt(|w_a|^2 + eps) on the first block: approximately invariant
        a, b = w[:4], w[4:]
        return loss(jnp.concatenate([a / jnp.sqrt(jnp.vdot(a, a) + eps), b / jnp.linalg.norm(b)]))

    return f


def test_diagnose_groups_classifies_each_cause():
    # Expected causes by construction; the rule is rel(c=1e-3) >= 10 rel(c=10) for epsilon.
    w = jnp.asarray(np.random.default_rng(0).normal(size=8))
    diag = diagnose_groups(_with_eps(1e-2), w, (4, 4))
    assert [d.cause for d in diag] == ["epsilon", "invariant"]
    assert diag[0].violation[-1] < 1e-3 < diag[0].violation[0]  # grows as the group shrinks
    loss, _ = random_loss(8, (4, 4), 0)
    biased = diagnose_groups(lambda x: loss(x) + jnp.sum(x[4:]), w, (4, 4))
    assert [d.cause for d in biased] == ["invariant", "unnormalized"]
    nan_small = diagnose_groups(
        lambda x: loss(x) + 0.0 * jnp.log(jnp.vdot(x[:4], x[:4]) - 1e-3), w, (4, 4)
    )
    assert nan_small[0].cause == "nonfinite" and np.isinf(nan_small[0].violation[0])
    assert "NaN/inf with this group scaled by c = 0.001" in nan_small[0].advice()


@pytest.mark.slow  # ~9-10 s on an idle core (default suite budget)
def test_check_names_the_leaf_and_the_fix_for_a_flax_net():
    # The invariant net passes; a trained BatchNorm scale before the readout breaks invariance
    # in that one group, which the message names by leaf, with the fix.
    assert _check(NetSpec()).ok
    with pytest.raises(ScaleInvarianceError) as err:
        _check(NetSpec(use_scale=True))
    msg = str(err.value)
    assert msg.startswith("loss is not scale-invariant per group around the given point")
    assert "1 of 4 break invariance (3 are invariant)" in msg
    assert "group 1 (size 3, entries 2:5; leaf BatchNorm_1/scale)" in msg
    assert "use use_bias=False / use_scale=False on that layer, or fix the last layer" in msg
    assert "which changes the model" in msg


@pytest.mark.slow  # default-suite budget (12 s); the check's refusals stay in make test
def test_check_reports_epsilon_growing_as_the_group_shrinks():
    with pytest.raises(ScaleInvarianceError) as err:
        _check(NetSpec(epsilon=1e-3))
    msg = str(err.value)
    assert "group 0 (size 18, entries 0:18; leaf Conv_0/kernel)" in msg
    assert "The violation grows as the group is scaled down" in msg
    assert "use epsilon=0 (e.g. nn.BatchNorm(epsilon=0.0)" in msg


def test_zero_group_names_the_leaves():
    flat = tiny_cnn(NetSpec(use_bias=True))
    with pytest.raises(ValueError) as err:
        check_scale_invariance(flat.loss, flat.w0, groups=flat.groups)
    assert str(err.value) == (
        "w must be nonzero in every group: a scale-invariant loss is undefined at 0, but group 0 "
        "(size 2, entries 0:2; leaf BatchNorm_0/bias); group 1 (size 3, entries 2:5; leaf "
        "BatchNorm_1/bias) are all zeros. A zero-initialized parameter (a bias, or a norm layer's "
        "scale or offset) cannot be a scale-invariant group: remove it from the model "
        "(use_bias=False / use_scale=False) or initialize it nonzero"
    )


def test_flatten_loss_remembers_leaf_paths():
    params = {"b": {"kernel": jnp.ones((2, 3))}, "a": jnp.ones(4)}
    flat = flatten_loss(lambda p: jnp.sum(p["a"]), params)
    assert flat.leaves == (Leaf("a", 0, 4), Leaf("b/kernel", 4, 6))
    loss, _w0, groups, _unravel = flat  # still four fields
    assert groups == (4, 6) and leaves_of(make_scale_invariant(loss, groups)) == flat.leaves
    assert describe_group(1, groups, flat.leaves) == "group 1 (size 6, entries 4:10; leaf b/kernel)"
    assert leaves_of(lambda w: w) == ()


def _check(spec):
    # One point (w itself): the messages' path, at a third of the default check's cost.
    flat = tiny_cnn(spec)
    return check_scale_invariance(flat.loss, flat.w0, groups=flat.groups, num_points=1)


def test_identity_errors_vanish_for_an_invariant_loss():
    # The Rayleigh quotient w^T A w / w^T w is invariant; float64: each error is rounding,
    # below 1e-12 for these O(1) quantities.
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=(5, 5)))
    a = a + a.T

    def loss(w):
        return w @ a @ w / (w @ w)

    pts = jnp.asarray(rng.normal(size=(3, 5)))
    errs = identity_errors(loss, pts)
    assert max(errs) < 1e-12


def test_identity_errors_closed_form_for_a_quadratic():
    # L(w) = |w|^2 / 2 (not invariant): L(c p) - L(p) = (c^2 - 1) L(p), so homogeneity =
    # |c^2 - 1|; grad L = w is parallel to w (Euler cosine 1); H w + grad L = 2 w (ratio 2).
    pts = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)))
    errs = identity_errors(lambda w: 0.5 * jnp.sum(w**2), pts, scale=0.5)
    np.testing.assert_allclose(errs, (0.75, 1.0, 2.0), rtol=1e-14)
    with pytest.raises(ValueError, match=r"points must have shape \(N, D\) with N >= 1"):
        identity_errors(lambda w: jnp.sum(w), pts[0])
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0, got -1\.0"):
        identity_errors(lambda w: jnp.sum(w), pts, scale=-1.0)
