"""Tests of ``theory.problems.nets``: exact scale invariance of normalized Flax models, and their
flat view.

Oracles: the invariance identities of docs/theory.md section 1 (per-group homogeneity of degree 0
and Euler's identity), :func:`theory.core.invariance.check_scale_invariance`, central finite
differences
of ``v^T H(x) v`` (``H v`` by :func:`theory.core.curvature.hvp`) for the third derivatives, a NumPy
re-implementation of the BN-MLP forward pass with training statistics, and the exact minimizer
``U V^T = M*`` of matrix completion.

Tolerances (float64 unless said otherwise): invariance and Euler 1e-12 relative (each loss is a few
hundred rounded operations of size ~1, errors ~1e-15 relative; a non-invariant model is off by
O(1e-3) or more, see the epsilon control); consistency of two computations of the same quantity
(residuals vs loss, vmap vs loop, NumPy vs Flax) 1e-12 relative; third derivatives 1e-6
relative: central differences with step h = 1e-5 on coordinates of size ~0.3 have truncation
error ~h^2 |D^5 L| ~ 1e-10 and rounding error ~eps |v^T H v| / h ~ 1e-11, both far below it.
"""

from __future__ import annotations

import functools

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory.core.curvature import grad_lambda1, hvp
from theory.core.invariance import (
    ScaleInvarianceError,
    check_scale_invariance,
    expand_groups,
    group_norms,
)
from theory.engine.gd import gd_wd
from theory.problems import nets

F64 = jnp.float64


def _digits(n: int, seed: int, image: bool = False, features: int = 64):
    """Digits-like random data: inputs in [0, 16] (8x8 grey images), 10 classes."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 17, size=(n, features)).astype(np.float64)
    if image:
        x = x.reshape(n, 8, 8, 1)
    return x, rng.integers(0, 10, size=n)


def _build(case: str, dtype=F64, loss: str = "mse", **kw) -> nets.NetProblem:
    if case == "vgg_bn":
        x, y = _digits(10, 0, image=True)
        xt, yt = _digits(6, 1, image=True)
        model = nets.vgg((3, 4, 5))
        return nets.make_problem(model, x, y, xt, yt, loss=loss, num_outputs=10, dtype=dtype)
    if case == "resnet_bn":
        x, y = _digits(10, 0, image=True)
        xt, yt = _digits(6, 1, image=True)
        model = nets.resnet((2, 3, 4), blocks=2)
        return nets.make_problem(model, x, y, xt, yt, loss=loss, num_outputs=10, dtype=dtype)
    if case == "mc":
        data = nets.matrix_completion_data(8, 9, true_rank=2, num_observed=40, seed=0)
        return nets.make_matrix_completion(data, rank=2, seed=1, dtype=dtype)
    norm, act = {
        "mlp_bn": ("batch", "relu"),
        "mlp_ln": ("layer", "relu"),
        "mlp_bn_tanh": ("batch", "tanh"),
        "mlp_ln_tanh": ("layer", "tanh"),
        "mlp_plain": ("none", "relu"),
    }[case]
    # Tiny: 6 features, widths (8, 6) -> D = 48 + 48 = 96 (third derivatives by FD over all D).
    x, y = _digits(12, 0, features=6)
    xt, yt = _digits(7, 1, features=6)
    model = nets.mlp((8, 6), norm=norm, activation=act)
    return nets.make_problem(
        model, x / 16, y % 4, xt / 16, yt % 4, loss=loss, num_outputs=4, dtype=dtype, seed=3, **kw
    )


problem = functools.cache(_build)

# The CNN cases compile for ~20 s each: in the slow suite.
INVARIANT = [
    "mlp_bn",
    "mlp_ln",
    pytest.param("vgg_bn", marks=pytest.mark.slow),
    pytest.param("resnet_bn", marks=pytest.mark.slow),
    "mc",
]


def _point(p: nets.NetProblem, seed: int = 0) -> jax.Array:
    """A random point near ``w0`` (each group perturbed by 30% of its size)."""
    rng = np.random.default_rng(seed)
    noise = jnp.asarray(rng.normal(size=p.w0.shape), p.w0.dtype)
    per = expand_groups(group_norms(p.w0, p.groups), p.groups) / np.sqrt(
        np.repeat(np.asarray(p.groups), p.groups)
    )
    return p.w0 + 0.3 * per * noise


ROWS = 6  # every batch of points has this many rows: one compilation per problem


@eqx.filter_jit
def _vag(loss, ws):
    """Losses and gradients at the rows of ``ws`` ``(ROWS, D)`` (compiled once per problem)."""
    return jax.vmap(jax.value_and_grad(loss))(ws)


def _rows(*ws):
    ws = list(ws) + [ws[0]] * (ROWS - len(ws))
    return jnp.stack(ws)


def _loss(p: nets.NetProblem, w) -> float:
    """``L(w)`` through the shared compiled ``_vag``."""
    return float(_vag(p.loss, _rows(w))[0][0])


_call = eqx.filter_jit(lambda fn, *args: fn(*args))


# --------------------------------------------------------------------------------------------
# Scale invariance
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", INVARIANT)
def test_exact_per_group_invariance_and_euler(case):
    p = problem(case)
    rng = np.random.default_rng(1)
    ids = jnp.asarray(np.repeat(np.arange(len(p.groups)), p.groups))
    for seed in range(2):
        w = _point(p, seed)
        c = rng.uniform(0.2, 5.0, size=(ROWS - 1, len(p.groups)))
        scales = jax.vmap(lambda ci: expand_groups(ci, p.groups))(jnp.asarray(c))
        vals, grads = _vag(p.loss, jnp.concatenate([w[None], w[None] * scales]))
        rel = float(jnp.max(jnp.abs(vals[1:] - vals[0])) / jnp.abs(vals[0]))
        assert rel <= 1e-12, f"{case}: |L(c w) - L(w)| / L = {rel:.2e}"
        # Euler, per group: <grad_g L(w), w_g> = 0.
        grad = grads[0]
        dots = jax.ops.segment_sum(grad * w, ids, len(p.groups))
        euler = float(jnp.max(jnp.abs(dots) / (group_norms(w, p.groups) * jnp.linalg.norm(grad))))
        assert euler <= 1e-12, f"{case}: Euler violation {euler:.2e}"
        # grad L(C w) = C^{-1} grad L(w) (degree -1 homogeneity of the gradient).
        err = float(jnp.max(jnp.abs(grads[1:] * scales - grad)) / jnp.max(jnp.abs(grad)))
        assert err <= 1e-10, f"{case}: gradient scaling error {err:.2e}"


@pytest.mark.parametrize("case", INVARIANT)
def test_check_scale_invariance_passes(case):
    p = problem(case)
    report = check_scale_invariance(p.loss, p.w0, groups=p.groups)
    assert report.ok
    check_scale_invariance(p.loss, p.w0)  # the global scale too (groups="all")


@pytest.mark.parametrize("case", ["mlp_plain", "mc_plain"])
def test_plain_models_are_rejected(case):
    if case == "mc_plain":
        data = nets.matrix_completion_data(8, 9, true_rank=2, num_observed=40)
        p = nets.make_matrix_completion(data, rank=2, norm="none")
    else:
        p = problem(case)
    with pytest.raises(ScaleInvarianceError):
        check_scale_invariance(p.loss, p.w0, groups=p.groups)


class _FlaxDefaultBN(nn.Module):
    """Control: BatchNorm with Flax's default epsilon = 1e-5 (and the rest as in nets.MLP)."""

    @nn.compact
    def __call__(self, x, train=True):
        x = nn.Dense(8, use_bias=False)(x)
        bn = nn.BatchNorm(use_bias=False, use_scale=False, momentum=0.0)
        return nn.relu(bn(x, use_running_average=not train))


def test_default_epsilon_breaks_invariance():
    """The invariance test can fail: Flax's eps = 1e-5 is visible at small scales."""
    x, y = _digits(12, 0, features=6)
    p = nets.make_problem(_FlaxDefaultBN(), x / 16, y % 4, x / 16, y % 4, num_outputs=4)
    vals, _ = _vag(p.loss, _rows(p.w0, 0.2 * p.w0))
    rel = abs(float(vals[1] - vals[0])) / float(vals[0])
    assert rel > 1e-6
    with pytest.raises(ScaleInvarianceError):
        check_scale_invariance(p.loss, p.w0, groups=p.groups)


# --------------------------------------------------------------------------------------------
# Third derivatives through BN and LN
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["mlp_bn", pytest.param("mlp_ln_tanh", marks=pytest.mark.slow)]
)  # ReLU with BN, tanh with LN
def test_third_derivative_vs_finite_differences(case):
    p = problem(case)
    w = _point(p, 2)
    dim = w.shape[0]
    assert 50 <= dim <= 300
    rng = np.random.default_rng(3)
    v = jnp.asarray(rng.normal(size=dim))
    v = v / jnp.linalg.norm(v)
    h = 1e-5

    @eqx.filter_jit
    def run(loss, w, v):
        ad = grad_lambda1(loss, w, v)

        def q(x):
            return jnp.vdot(v, hvp(loss, x, v))

        eye = jnp.eye(dim, dtype=w.dtype)
        fd = jax.vmap(lambda e: (q(w + h * e) - q(w - h * e)) / (2 * h))(eye)
        return ad, fd

    ad, fd = run(p.loss, w, v)
    rel = float(jnp.max(jnp.abs(ad - fd)) / jnp.max(jnp.abs(ad)))
    assert rel <= 1e-6, f"{case}: D^3 L[v, v, .] vs central differences: {rel:.2e}"


# --------------------------------------------------------------------------------------------
# Evaluation, predictions with training statistics
# --------------------------------------------------------------------------------------------


def _numpy_bn_mlp(kernels, head, x_train, x):
    """BN-ReLU MLP forward in NumPy: statistics from ``x_train``'s pass, applied to ``x``."""
    h_tr, h = x_train, x
    for k in kernels:
        z_tr, z = h_tr @ k, h @ k
        mu, var = z_tr.mean(0), ((z_tr - z_tr.mean(0)) ** 2).mean(0)
        h_tr = np.maximum((z_tr - mu) / np.sqrt(var), 0)
        h = np.maximum((z - mu) / np.sqrt(var), 0)
    return h @ head


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_evaluate_matches_direct_computation(loss):
    p = _build("mlp_bn", loss=loss)
    w = _point(p, 4)
    metrics = jax.tree.map(float, _call(p.evaluate, w))
    params = p.unravel(w)
    kernels = [np.asarray(params[f"dense_0{i}"]["kernel"]) for i in range(2)]
    head = np.asarray(p.evaluate.network.head_weight)
    ev = p.evaluate
    x_tr, x_te = np.asarray(ev.x_train), np.asarray(ev.x_test)
    y_tr, y_te = np.asarray(ev.y_train), np.asarray(ev.y_test)
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        out = _numpy_bn_mlp(kernels, head, x_tr, x)
        np.testing.assert_allclose(np.asarray(_call(p.predict, w, x)), out, rtol=1e-12, atol=1e-12)
        if loss == "mse":
            ref = 0.5 * np.mean(np.sum((out - np.eye(4)[y]) ** 2, axis=1))
        else:
            shifted = out - out.max(1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
            ref = -np.mean(logp[np.arange(len(y)), y])
        acc = np.mean(np.argmax(out, 1) == y)
        assert 0.0 <= metrics[f"{split}_accuracy"] <= 1.0
        assert metrics[f"{split}_accuracy"] == acc
        np.testing.assert_allclose(metrics[f"{split}_loss"], ref, rtol=1e-12)
    np.testing.assert_allclose(metrics["train_loss"], _loss(p, w), rtol=1e-12)


@pytest.mark.parametrize(
    "case",
    [
        "mlp_bn",
        pytest.param("vgg_bn", marks=pytest.mark.slow),
        pytest.param("mc", marks=pytest.mark.slow),
    ],
)
def test_test_predictions_use_training_statistics(case):
    p = problem(case)
    w = _point(p, 5)
    x_te = p.evaluate.x_test
    full = np.asarray(_call(p.predict, w, x_te))
    # A reordered pair and a single sample: with test-batch statistics the pair would change
    # and the single sample would be undefined (zero variance with eps = 0). The operations per
    # sample are the same, so bitwise equality is expected; 1e-14 allowed.
    for idx in ([3, 1], [2]):
        sub = np.asarray(_call(p.predict, w, x_te[np.asarray(idx)]))
        np.testing.assert_allclose(sub, full[idx], rtol=1e-14, atol=1e-14)
    # The training inputs get the training-mode outputs: the loss recomputed from them agrees.
    out_tr = _call(p.predict, w, p.evaluate.x_train)
    res = (out_tr - nets._targets(p.evaluate.y_train, out_tr.shape[1], out_tr.dtype)).ravel()
    np.testing.assert_allclose(0.5 * float(res @ res) / len(out_tr), _loss(p, w), rtol=1e-12)


def test_matrix_completion_minimizer_and_held_out_entries():
    data = nets.matrix_completion_data(8, 9, true_rank=2, num_observed=40, seed=0)
    p = problem("mc")
    # Recover U*, V* up to scale: M* = U* V*^T exactly at rank 2 (SVD), then rescale the groups.
    u, s, vt = np.linalg.svd(data.target)
    u_star, v_star = u[:, :2] * np.sqrt(s[:2]), vt[:2].T * np.sqrt(s[:2])
    w = jnp.concatenate([jnp.asarray(3.0 * u_star.ravel()), jnp.asarray(0.1 * v_star.ravel())])
    metrics = _call(p.evaluate, w)
    assert float(metrics["train_loss"]) <= 1e-26
    assert float(metrics["test_rel_error"]) <= 1e-12
    pred = np.asarray(_call(p.predict, w, jnp.asarray(data.test_idx)))[:, 0]
    truth = data.target[data.test_idx[:, 0], data.test_idx[:, 1]]
    np.testing.assert_allclose(pred, truth, rtol=1e-12, atol=1e-12)
    assert p.groups == (16, 18) and p.names == ("U", "V")
    assert float(_call(p.evaluate, p.w0)["test_rel_error"]) > 0.1


# --------------------------------------------------------------------------------------------
# The flat view: residuals, vmap, dtypes, data as arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["mlp_bn", pytest.param("vgg_bn", marks=pytest.mark.slow), "mc"])
def test_residuals_match_loss(case):
    p = problem(case)
    w = _point(p, 6)
    r = _call(p.residuals, w)
    n = p.evaluate.x_train.shape[0]
    c = 1 if case == "mc" else (4 if case.startswith("mlp") else 10)
    assert r.shape == (n * c,)
    np.testing.assert_allclose(0.5 * float(r @ r), _loss(p, w), rtol=1e-12)
    assert _build("mlp_bn", loss="ce").residuals is None


@pytest.mark.parametrize("case", ["mlp_bn", "mc"])
def test_vmap_over_weights(case):
    p = problem(case)
    ws = jnp.stack([_point(p, s) for s in range(3)])
    batched = eqx.filter_jit(lambda loss, ws: jax.vmap(loss)(ws))(p.loss, ws)
    looped = np.asarray([_loss(p, w) for w in ws])
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-12)
    metrics = eqx.filter_jit(lambda ev, ws: jax.vmap(ev)(ws))(p.evaluate, ws)
    assert all(v.shape == (3,) for v in metrics.values())
    np.testing.assert_allclose(np.asarray(metrics["train_loss"]), looped, rtol=1e-12)


@pytest.mark.slow  # default-suite budget (11 s idle)
def test_float32_stays_float32():
    p = _build("mlp_bn", dtype=jnp.float32)
    assert p.w0.dtype == jnp.float32
    vals, grads = _vag(p.loss, _rows(p.w0))
    assert vals.dtype == jnp.float32 and grads.dtype == jnp.float32
    assert all(v.dtype == jnp.float32 for v in _call(p.evaluate, p.w0).values())
    assert _call(p.residuals, p.w0).dtype == jnp.float32
    # float32 rounding stays far inside the float32 tolerance of the invariance check (2e-3);
    # measured ~2e-7.
    report = check_scale_invariance(p.loss, p.w0, groups=p.groups)
    assert report.homogeneity <= 1e-5 and report.euler <= 1e-5
    # A float64 problem evaluated at a float32 point computes in float32 (float32 rounding:
    # 1e-5 relative).
    p64 = problem("mlp_bn")
    val32 = _call(p64.loss, p64.w0.astype(jnp.float32))
    assert val32.dtype == jnp.float32
    np.testing.assert_allclose(float(val32), _loss(p64, p64.w0), rtol=1e-5)


def test_data_are_jit_arguments():
    p = _build("mlp_bn")
    x_tr = p.evaluate.x_train
    leaves = jax.tree.leaves(p.loss)
    assert any(leaf is x_tr for leaf in leaves)
    assert any(leaf.shape == p.evaluate.y_train.shape for leaf in leaves)

    def max_const(closed):
        return max([np.size(c) for c in closed.consts], default=0)

    as_argument = jax.make_jaxpr(lambda loss, w: jax.value_and_grad(loss)(w))(p.loss, p.w0)
    assert max_const(as_argument) < 16
    # Control: the same loss closed over bakes the data in as constants.
    closed_over = jax.make_jaxpr(jax.value_and_grad(p.loss))(p.w0)
    assert max_const(closed_over) >= x_tr.size


@pytest.mark.slow
def test_gd_wd_smoke():
    x, y = _digits(32, 0, features=16)
    xt, yt = _digits(8, 1, features=16)
    p = nets.make_problem(
        nets.mlp([8, 8]), x / 16, y, xt / 16, yt, loss="ce", num_outputs=10, dtype=F64
    )
    res = gd_wd(p.loss, p.w0, groups=p.groups, eta=0.1, wd=1e-3, steps=20)
    assert len(res.step) == 21 and res.w.shape == (21, p.w0.shape[0])
    assert np.all(np.isfinite(res.loss)) and np.all(np.isfinite(res.sharpness))
    assert res.loss[-1] < res.loss[0]


# --------------------------------------------------------------------------------------------
# Construction: sizes, groups, init_scale, errors
# --------------------------------------------------------------------------------------------


def _param_sizes(model, shape) -> list[int]:
    """Sizes of the trained tensors, by tracing the init only (no compilation)."""
    init = functools.partial(model.init, train=True)
    params = jax.eval_shape(init, jax.random.PRNGKey(0), jnp.zeros(shape))["params"]
    return [int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)]


@pytest.mark.slow
def test_parameter_counts_and_groups():
    assert _param_sizes(nets.mlp([256, 256]), (2, 64)) == [64 * 256, 256 * 256]  # 81920
    assert _param_sizes(nets.vgg(), (2, 8, 8, 1)) == [9 * 16, 9 * 16 * 32, 9 * 32 * 64]  # 23184
    assert _param_sizes(nets.vgg(), (2, 32, 32, 3)) == [27 * 16, 9 * 16 * 32, 9 * 32 * 64]
    # A fourth stage at 1x1 skips the pool; features are (N, channels[-1]).
    feats = jax.eval_shape(
        lambda x: nets.vgg((2, 3, 4, 5)).init_with_output(jax.random.PRNGKey(0), x)[0],
        jnp.zeros((2, 8, 8, 1)),
    )
    assert feats.shape == (2, 5)
    # make_problem: one group per trained tensor, in the order of the Flax params.
    x, y = _digits(4, 0)
    p = nets.make_problem(nets.mlp([256, 256]), x, y, x, y, num_outputs=10, dtype=F64)
    assert p.groups == (16384, 65536) and p.w0.shape == (81920,)
    assert p.evaluate.network.head_weight.shape == (256, 10)
    # ResNet-20 (3-channel 32x32 inputs): 19 convolutions, 267 696 weights (He et al.'s count
    # of 0.27M includes the last layer); each convolution is one group.
    sizes = _param_sizes(nets.resnet(), (2, 32, 32, 3))
    assert len(sizes) == 19 and sum(sizes) == 267_696
    feats = jax.eval_shape(
        lambda x: nets.resnet((2, 3, 4), blocks=2).init_with_output(jax.random.PRNGKey(0), x)[0],
        jnp.zeros((2, 8, 8, 1)),
    )
    assert feats.shape == (2, 4)
    assert len(problem("resnet_bn").groups) == 1 + 3 * 2 * 2
    assert problem("vgg_bn").groups == (9 * 3, 9 * 3 * 4, 9 * 4 * 5)
    assert problem("vgg_bn").names == ("conv_00/kernel", "conv_01/kernel", "conv_02/kernel")


def test_init_scale_and_single_group():
    base = problem("mlp_bn")
    scaled = _build("mlp_bn", init_scale=(2.0, 0.5))
    np.testing.assert_allclose(
        np.asarray(group_norms(scaled.w0, scaled.groups)),
        np.asarray(group_norms(base.w0, base.groups)) * [2.0, 0.5],
        rtol=1e-14,
    )
    np.testing.assert_allclose(_loss(scaled, scaled.w0), _loss(base, base.w0), rtol=1e-12)
    assert scaled.config["init_scale"] == [2.0, 0.5]
    one = _build("mlp_bn", groups="all")
    assert one.groups == (6 * 8 + 8 * 6,)
    np.testing.assert_array_equal(np.asarray(one.w0), np.asarray(base.w0))
    tree = one.unravel(one.w0)
    assert tree["dense_00"]["kernel"].shape == (6, 8)
    assert one.names == ("dense_00/kernel", "dense_01/kernel")


def _bad(**changes):
    x, y = _digits(6, 0, features=6)
    args = {"x_train": x, "y_train": y, "x_test": x[:3], "y_test": y[:3]}
    kw = {"num_outputs": 10, "loss": "mse"}
    model = changes.pop("model", nets.mlp([4]))
    for k in list(changes):
        (args if k in args else kw)[k] = changes.pop(k)
    return nets.make_problem(model, *args.values(), **kw)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"x_test": np.zeros((3, 5))}, r"x_test must have shape \(N_test, 6\)"),
        ({"x_train": np.zeros((6, 8, 8, 1))}, r"x_train must have shape \(N, features\)"),
        ({"model": nets.vgg((2,)), "x_train": np.zeros((6, 8))}, r"x_train .*\(N, H, W, C\)"),
        ({"y_train": np.zeros(5, int)}, r"y_train .* shape \(6,\)"),
        ({"y_test": np.full(3, 10)}, r"y_test labels must lie in \[0, 10\)"),
        ({"y_train": -np.ones(6, int)}, r"y_train labels must lie in \[0, 10\)"),
        ({"y_train": np.zeros((6, 3)), "y_test": np.zeros((3, 3))}, r"y_train .*\(6, 10\)"),
        ({"loss": "ce", "y_train": np.zeros((6, 10))}, r"loss='ce' needs integer labels"),
        ({"num_outputs": None}, r"num_outputs is required"),
        ({"loss": "hinge"}, r"loss must be 'mse' or 'ce'"),
        ({"groups": "leaf"}, r"groups must be 'layer' or 'all'"),
        ({"init_scale": (1.0, 2.0)}, r"init_scale must be a float or one value per"),
        ({"init_scale": -1.0}, r"init_scale must be positive"),
    ],
)
def test_bad_inputs_raise(changes, match):
    with pytest.raises(ValueError, match=match):
        _bad(**changes)


def test_bad_builder_arguments_raise():
    with pytest.raises(ValueError, match="norm must be one of"):
        nets.mlp([4], norm="group")
    with pytest.raises(ValueError, match="activation must be one of"):
        nets.mlp([4], activation="sigmoid")
    with pytest.raises(ValueError, match="widths must be"):
        nets.mlp([])
    with pytest.raises(ValueError, match="LayerNorm needs every width >= 2"):
        nets.mlp([1], norm="layer")
    with pytest.raises(ValueError, match="channels must be"):
        nets.vgg((4, 0))
    with pytest.raises(ValueError, match=r"channels must not decrease from stage to stage, got"):
        nets.resnet((8, 4))
    with pytest.raises(ValueError, match=r"blocks must be a positive int, got 0"):
        nets.resnet((4, 8), blocks=0)
    p = problem("mlp_bn")
    with pytest.raises(ValueError, match=r"x must have shape \(N, 6\)"):
        p.predict(p.w0, jnp.zeros((2, 7)))
    with pytest.raises(ValueError, match=r"w must have shape \(96,\)"):
        p.loss(jnp.zeros(95))
    data = nets.matrix_completion_data(4, 5, true_rank=1, num_observed=8)
    with pytest.raises(ValueError, match=r"data\.train_idx must be integer index pairs"):
        nets.make_matrix_completion(data._replace(train_idx=np.zeros((8, 3), int)), rank=1)
    with pytest.raises(ValueError, match="num_observed must be < num_rows"):
        nets.matrix_completion_data(4, 5, true_rank=1, num_observed=20)


@pytest.mark.parametrize(
    ("shape", "kernel", "strides"),
    [
        ((3, 8, 8, 1), (3, 3), (1, 1)),
        ((2, 8, 8, 4), (3, 3), (2, 2)),  # the ResNet's downsampling convolution
        # default-suite budget: the rarer shapes in make test-slow
        pytest.param((2, 7, 5, 3), (3, 3), (2, 2), marks=pytest.mark.slow),  # SAME pads unevenly
        pytest.param((2, 1, 6, 2), (3, 3), (1, 2), marks=pytest.mark.slow),  # a spatial axis of 1
        pytest.param((2, 9, 3), (5,), (3,), marks=pytest.mark.slow),  # one axis, a wider kernel
    ],
)
@pytest.mark.parametrize(
    "dtype",
    [
        jnp.float32,
        pytest.param(
            jnp.float64,
            marks=pytest.mark.heavy(  # float32 of the same shapes runs in CI
                covered_by="tests/problems/test_nets.py::"
                "test_patch_conv_is_flax_conv[float32-shape0-kernel0-strides0]"
            ),
        ),
    ],
)  # default-suite budget: float64 in make test-slow
def test_patch_conv_is_flax_conv(shape, kernel, strides, dtype):
    """Oracle: ``nn.Conv(..., padding="SAME", use_bias=False)``. The parameters must be bitwise
    equal (same name, shape, initializer and key), and so must their dtype; outputs and both
    gradients (input and kernel) agree to a few roundings of a sum of
    ``prod(kernel) * channels`` terms: rtol 1e-5 in float32, 1e-12 in float64 (relative to the
    largest entry)."""
    x = jax.random.normal(jax.random.PRNGKey(1), shape, dtype)
    ours = nets.PatchConv(5, kernel, strides)
    flax_conv = nn.Conv(5, kernel, strides, padding="SAME", use_bias=False)
    p_ours = ours.init(jax.random.PRNGKey(0), x)
    p_flax = flax_conv.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(p_ours) == jax.tree.structure(p_flax)
    k_ours, k_flax = p_ours["params"]["kernel"], p_flax["params"]["kernel"]
    assert k_ours.dtype == k_flax.dtype and np.array_equal(k_ours, k_flax)
    params = jax.tree.map(lambda a: a.astype(dtype), p_flax)
    rtol = 1e-5 if dtype == jnp.float32 else 1e-12

    def close(a: jax.Array, b: jax.Array) -> None:
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * float(jnp.max(jnp.abs(b))))

    close(ours.apply(params, x), flax_conv.apply(params, x))
    probe = jax.random.normal(jax.random.PRNGKey(2), flax_conv.apply(params, x).shape, dtype)

    def scalar(module: nn.Module) -> object:
        return lambda p, z: jnp.vdot(probe, module.apply(p, z))

    g_ours = jax.grad(scalar(ours), argnums=(0, 1))(params, x)
    g_flax = jax.grad(scalar(flax_conv), argnums=(0, 1))(params, x)
    close(g_ours[0]["params"]["kernel"], g_flax[0]["params"]["kernel"])
    close(g_ours[1], g_flax[1])


def test_patch_conv_rejects_mismatched_shapes():
    x = jnp.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError, match=r"2 spatial axes, got \(2, 8, 8\)"):
        nets.PatchConv(4, (3, 3)).init(jax.random.PRNGKey(0), x[..., 0])
    with pytest.raises(ValueError, match=r"strides \(1,\)"):
        nets.PatchConv(4, (3, 3), (1,)).init(jax.random.PRNGKey(0), x)
