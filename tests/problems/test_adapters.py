"""Tests of ``theory.problems.adapters``: linen, NNX and Equinox models as the engine's loss.

Oracles: each framework's own training loss and ``jax.grad`` of it on the parameter pytree
(mapped through ``ravel_pytree``), the definition of scale invariance (``L`` with one group
scaled by ``c`` against ``L``), a NumPy forward pass of the BN-MLP, and Equinox's own stateful
call. Models: a bias-free MLP 4 -> 6 -> 5 -> 3 in which every Dense is followed by BatchNorm
without affine, ``epsilon = 0``, variance ``mean((x - mean)^2)``; the loss is the MSE of the last
BatchNorm's output against random targets.

Tolerances (float64): values and gradients of the same loss computed two ways 1e-12 relative
(a few hundred rounded operations of size ~1); invariance 1e-12 relative (a normalization with
``epsilon = 1e-5``, the nearest non-invariant model, is off by ~1e-6).
"""

from __future__ import annotations

import functools
import itertools
import warnings

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from theory.core.invariance import ScaleInvarianceError, expand_groups
from theory.engine import LanczosTracker
from theory.engine.gd import gd_wd
from theory.engine.sweep import gd_wd_sweep
from theory.optim.transforms import run_optimizer
from theory.problems.adapters import ModelLoss, from_equinox, from_linen, from_nnx

F64 = jnp.float64
WIDTHS = (6, 5, 3)


def _data(n: int = 8, seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {"x": jnp.asarray(rng.normal(size=(n, 4))), "y": jnp.asarray(rng.normal(size=(n, 3)))}


def _mse(out: jax.Array, y: jax.Array) -> jax.Array:
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


# ---------------------------------------------------------------------------------------------
# The three models
# ---------------------------------------------------------------------------------------------


class LinenMLP(nn.Module):
    eps: float = 0.0
    out_bias: bool = False
    dense_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i, width in enumerate(WIDTHS):
            x = nn.Dense(width, use_bias=self.dense_bias, param_dtype=F64)(x)
            if self.dense_bias:  # LayerNorm: a bias before BatchNorm would cancel exactly
                x = nn.LayerNorm(
                    epsilon=0.0, use_bias=False, use_scale=False, use_fast_variance=False
                )(x)
            else:
                x = nn.BatchNorm(
                    use_running_average=not train,
                    use_bias=False,
                    use_scale=False,
                    epsilon=self.eps,
                    use_fast_variance=False,
                    param_dtype=F64,
                )(x)
            if i < len(WIDTHS) - 1:
                x = nn.relu(x)
        if self.out_bias:
            x = x + self.param("out_bias", nn.initializers.normal(1.0), (WIDTHS[-1],), F64)
        return x


def _linen_loss(apply, data):
    return _mse(apply(data["x"]), data["y"])


@functools.cache
def _linen(**kw) -> tuple[LinenMLP, dict]:
    model = LinenMLP(**kw)
    init = jax.jit(model.init, static_argnames="train")
    return model, init(jax.random.PRNGKey(1), _data()["x"], train=True)


class NNXMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, use_running_average: bool = False):
        sizes = (4, *WIDTHS)
        self.linears = nnx.List(
            [
                nnx.Linear(a, b, use_bias=False, param_dtype=F64, rngs=rngs)
                for a, b in itertools.pairwise(sizes)
            ]
        )
        self.norms = nnx.List(
            [
                nnx.BatchNorm(
                    b,
                    use_running_average=use_running_average,
                    use_scale=False,
                    use_bias=False,
                    epsilon=0.0,
                    use_fast_variance=False,
                    param_dtype=F64,
                    rngs=rngs,
                )
                for b in WIDTHS
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, (lin, bn) in enumerate(zip(self.linears, self.norms, strict=True)):
            x = bn(lin(x))
            if i < len(WIDTHS) - 1:
                x = jax.nn.relu(x)
        return x


def _nnx_loss(model, data):
    return _mse(model(data["x"]), data["y"])


class EqxMLP(eqx.Module):
    linears: list
    norms: list

    def __init__(self, key: jax.Array, mode: str = "batch", eps: float = 0.0):
        sizes = (4, *WIDTHS)
        keys = jax.random.split(key, len(WIDTHS))
        self.linears = [
            eqx.nn.Linear(a, b, use_bias=False, key=k, dtype=F64)
            for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        ]
        self.norms = [
            eqx.nn.BatchNorm(b, "batch", eps=eps, channelwise_affine=False, mode=mode, dtype=F64)
            for b in WIDTHS
        ]

    def __call__(self, x: jax.Array, state: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
        for i, (lin, bn) in enumerate(zip(self.linears, self.norms, strict=True)):
            x, state = bn(lin(x), state)
            if i < len(WIDTHS) - 1:
                x = jax.nn.relu(x)
        return x, state


def _eqx_loss(model, state, data):
    out, state = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
        data["x"], state
    )
    return _mse(out, data["y"]), state


@functools.cache
def _eqx_cached(**kw) -> tuple[EqxMLP, eqx.nn.State]:
    return eqx.nn.make_with_state(EqxMLP)(jax.random.PRNGKey(2), **kw)


def _eqx(**kw) -> tuple[EqxMLP, eqx.nn.State]:
    """The model and a fresh copy of its state (``State.set`` invalidates its argument)."""
    model, state = _eqx_cached(**kw)
    return model, jax.tree.map(lambda x: x, state)


# ---------------------------------------------------------------------------------------------
# Each adapter with its framework's own loss and gradient (the oracles)
# ---------------------------------------------------------------------------------------------


@functools.cache
def _case(name: str) -> tuple[ModelLoss, jax.Array, jax.Array, tuple[tuple[str, ...], ...]]:
    """``(adapter result, own loss at w0, own gradient raveled, expected group names)``."""
    data = _data()
    if name == "linen":
        model, variables = _linen()
        ml = from_linen(model, variables, _linen_loss, data, apply_kwargs={"train": True})

        def own(params):
            out, _ = model.apply(
                {**variables, "params": params}, data["x"], train=True, mutable=["batch_stats"]
            )
            return _mse(out, data["y"])

        params = variables["params"]
        names = tuple((f"['Dense_{i}']['kernel']",) for i in range(3))
    elif name == "nnx":
        module = NNXMLP(nnx.Rngs(0), use_running_average=True)  # the adapter sets train mode
        ml = from_nnx(module, _nnx_loss, data)
        train = nnx.clone(module)
        train.train()
        # NNX's own training path; its float32 statistics take float64 updates (a warning)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "scatter inputs have incompatible types")
            value, grad = nnx.jit(nnx.value_and_grad(_nnx_loss))(train, data)
        names = tuple((f"['linears'][{i}]['kernel']",) for i in range(3))
        return ml, value, ravel_pytree(grad)[0], names
    else:
        model, state = _eqx()
        ml = from_equinox(model, _eqx_loss, data, state)
        params, rest = eqx.partition(model, eqx.is_inexact_array)

        def own(p):
            return _eqx_loss(eqx.combine(p, rest), state, data)[0]

        names = tuple((f".linears[{i}].weight",) for i in range(3))
    value, grad = eqx.filter_jit(jax.value_and_grad(own))(params)
    return ml, value, ravel_pytree(grad)[0], names


@eqx.filter_jit
def _evaluate(loss, w0, scales):
    """``(L(w0), grad L(w0), L(s * w0) for each row s of scales, L(w0) again)``."""
    return loss(w0), jax.grad(loss)(w0), jax.vmap(lambda s: loss(s * w0))(scales), loss(w0)


FRAMEWORKS = ("linen", "nnx", "equinox")


@pytest.mark.parametrize(
    "name", [n if n == "linen" else pytest.param(n, marks=pytest.mark.slow) for n in FRAMEWORKS]
)  # default-suite budget: linen in make test, nnx and equinox in make test-slow
def test_loss_grad_groups_and_invariance_match_the_framework(name):
    ml, value, grad, names = _case(name)
    assert isinstance(ml, ModelLoss)
    assert ml.w0.dtype == F64
    assert ml.names == names
    assert len(ml.groups) == 3 and sum(ml.groups) == ml.w0.shape[0] == 4 * 6 + 6 * 5 + 5 * 3
    assert ml.groups == (24, 30, 15)
    # Each group scaled by 3.7 alone, then all groups by different factors.
    per_group = [[3.7 if h == g else 1.0 for h in range(3)] for g in range(3)] + [[0.3, 5.0, 2.2]]
    scales = jax.vmap(lambda c: expand_groups(c, ml.groups))(jnp.asarray(per_group))
    base, g0, scaled, again = _evaluate(ml.loss, ml.w0, scales)
    # The flat loss is the framework's own training loss, and so is its gradient.
    np.testing.assert_allclose(base, value, rtol=1e-12)
    np.testing.assert_allclose(g0, grad, rtol=1e-12, atol=1e-12 * float(jnp.max(jnp.abs(grad))))
    # Exact invariance in each group separately, and in all at once.
    np.testing.assert_allclose(scaled, jnp.full(4, base), rtol=1e-12, atol=0)
    # Pure: evaluating twice gives the same value (no state carried between calls).
    assert float(again) == float(base)
    assert ml.group_of(names[1][0]) == 1


def test_linen_matches_a_numpy_forward_pass():
    model, variables = _linen()
    data = _data()
    ml = from_linen(model, variables, _linen_loss, data, apply_kwargs={"train": True})
    x = np.asarray(data["x"])
    for i in range(3):
        x = x @ np.asarray(variables["params"][f"Dense_{i}"]["kernel"])
        x = (x - x.mean(0)) / np.sqrt(((x - x.mean(0)) ** 2).mean(0))
        if i < 2:
            x = np.maximum(x, 0)
    want = 0.5 * np.mean(np.sum((x - np.asarray(data["y"])) ** 2, axis=1))
    np.testing.assert_allclose(float(ml.loss(ml.w0)), want, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Through the runners: jit, vmap (sweep), optax -- one object
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # ~30 s CPU (the engine's compile); from_nnx's own check is jit + vmap too
def test_nnx_runs_under_vmap_and_jit_and_through_optax():
    """NNX raised TraceContextError inside the engine's jit/vmap; a sweep is both, with HVPs."""
    ml = _case("nnx")[0]
    sweep = gd_wd_sweep(
        ml.loss,
        ml.w0,
        eta=[0.05, 0.1],
        wd=1e-3,
        steps=1,
        groups=ml.groups,
        tracker=LanczosTracker(every=1),
    )
    grad = jax.grad(ml.loss)(ml.w0)
    for i, eta in enumerate((0.05, 0.1)):
        w1 = (1 - eta * 1e-3) * ml.w0 - eta * grad  # one GD+WD step by hand
        np.testing.assert_allclose(sweep.run(i).w[1], w1, rtol=1e-12, atol=1e-14)
        assert np.all(np.isfinite(sweep.run(i).eos))
    ad = run_optimizer(optax.adamw(1e-2, weight_decay=1e-3), ml, steps=1)
    assert ad.w.shape == (2, ml.w0.shape[0]) and np.all(np.isfinite(ad.w))
    with pytest.raises(ValueError, match="loss_args must be empty"):
        run_optimizer(optax.sgd(0.1), ml, steps=2, loss_args=(1.0,))
    with pytest.raises(ValueError, match="steps"):
        run_optimizer(optax.sgd(0.1), ml)
    with pytest.raises(ValueError, match="params0"):
        run_optimizer(optax.sgd(0.1), ml.pytree_loss, steps=2)


# The engine runs a ModelLoss whatever framework made it: linen in CI (make test-slow), nnx and
# Equinox in make test-heavy (their adapters' loss, gradient and groups are checked in CI, by
# test_loss_grad_groups_and_invariance_match_the_framework).
@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        n
        if n == "linen"
        else pytest.param(
            n,
            marks=pytest.mark.heavy(
                covered_by="tests/problems/test_adapters.py::"
                "test_runs_through_gd_wd_sweep_and_run_optimizer[linen]"
            ),
        )
        for n in FRAMEWORKS
    ],
)
def test_runs_through_gd_wd_sweep_and_run_optimizer(name):
    ml = _case(name)[0]
    tracker = LanczosTracker(every=1)
    # jit + scan, with the tracker's HVPs through the model
    res = gd_wd(ml.loss, ml.w0, eta=0.05, wd=1e-3, steps=2, groups=ml.groups, tracker=tracker)
    assert res.loss.shape == (3,) and np.all(np.isfinite(res.eos))
    np.testing.assert_allclose(res.loss[0], ml.loss(ml.w0), rtol=1e-12)
    w1 = (1 - 0.05 * 1e-3) * ml.w0 - 0.05 * jax.grad(ml.loss)(ml.w0)  # one GD+WD step by hand
    np.testing.assert_allclose(res.w[1], w1, rtol=1e-12, atol=1e-14)
    # vmap over two etas: the first configuration is the run above
    sweep = gd_wd_sweep(
        ml.loss,
        ml.w0,
        eta=[0.05, 0.1],
        wd=1e-3,
        steps=2,
        warn_above_edge=False,  # eta = 0.1 starts above the edge on the Equinox case
        groups=ml.groups,
        tracker=tracker,
        check_invariance=False,
    )
    np.testing.assert_allclose(sweep.run(0).w, res.w, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(sweep.run(0).eos, res.eos, rtol=1e-6)
    assert np.all(np.isfinite(sweep.run(1).eos))
    # optax on the same object, and the old signature on its pytree view
    opt = optax.adamw(1e-2, weight_decay=1e-3)
    ad = run_optimizer(opt, ml, steps=2, tracker=tracker, lr=1e-2)
    assert ad.w.shape == (3, ml.w0.shape[0]) and np.all(np.isfinite(ad.eos))
    old = run_optimizer(opt, ml.pytree_loss, ml.params, 2, groups=ml.groups)
    np.testing.assert_allclose(ad.w, old.w, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ad.group_norms, old.group_norms, rtol=1e-12)
    # a FlatLoss runs optax on the flat vector: SGD is then GD without weight decay
    flat = run_optimizer(optax.sgd(0.05), ml.flat, steps=2)
    gd = gd_wd(ml.loss, ml.w0, eta=0.05, wd=0.0, steps=2, groups=ml.groups, tracker=tracker)
    np.testing.assert_allclose(flat.w, gd.w, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# What is not invariant is named
# ---------------------------------------------------------------------------------------------


def test_a_bias_after_the_last_norm_is_named_and_can_be_frozen():
    model, variables = _linen(out_bias=True)
    data = _data()
    with pytest.raises(ScaleInvarianceError, match=r"group 3 \[\"\['out_bias'\]\"\]") as err:
        from_linen(model, variables, _linen_loss, data, apply_kwargs={"train": True})
    assert "1 of 4 groups" in str(err.value) and "frozen=" in str(err.value)
    ml = from_linen(
        model, variables, _linen_loss, data, apply_kwargs={"train": True}, frozen=["['out_bias']"]
    )
    assert ml.groups == (24, 30, 15) and "['out_bias']" not in ml.leaf_names
    out, _ = model.apply(variables, data["x"], train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(ml.loss(ml.w0), _mse(out, data["y"]), rtol=1e-12)
    loose = from_linen(
        model, variables, _linen_loss, data, apply_kwargs={"train": True}, check_invariance=False
    )
    assert loose.names[-1] == ("['out_bias']",)


def test_running_statistics_and_epsilon_break_invariance():
    data = _data()
    model, variables = _linen()
    # eval mode: normalized by the running averages (constants), not invariant
    with pytest.raises(ScaleInvarianceError, match=r"3 of 3 groups"):
        from_linen(model, variables, _linen_loss, data, apply_kwargs={"train": False})
    model, variables = _linen(eps=1e-5)
    with pytest.raises(ScaleInvarianceError, match=r"\['Dense_0'\]\['kernel'\]"):
        from_linen(model, variables, _linen_loss, data, apply_kwargs={"train": True})


def test_equinox_ema_mode():
    data = _data()
    model, state = _eqx(mode="ema")
    # a fresh state: the first batch is normalized by its own statistics alone
    ml = from_equinox(model, _eqx_loss, data, state)
    want = _eqx_loss(model, state, data)[0]
    np.testing.assert_allclose(ml.loss(ml.w0), want, rtol=1e-12)
    np.testing.assert_allclose(ml.loss(ml.w0), ml.loss(2.5 * ml.w0), rtol=1e-12)
    # after one training batch it mixes in the running statistics: rejected, with the fix
    _, used = _eqx_loss(model, state, data)
    with pytest.raises(ValueError, match=r"\.norms\[0\] has mode='ema'.*mode='batch'"):
        from_equinox(model, _eqx_loss, data, used)
    # mode='batch' with a used state is fine: training reads only the batch statistics
    bmodel, bstate = _eqx(mode="batch")
    used = _eqx_loss(bmodel, bstate, data)[1]
    ml = from_equinox(bmodel, _eqx_loss, data, used)
    np.testing.assert_allclose(ml.loss(ml.w0), _eqx_loss(bmodel, bstate, data)[0], rtol=1e-12)
    with pytest.raises(ValueError, match="no state"):
        from_equinox(model, lambda m, d: 0.0, data)


def test_bad_inputs_name_the_value():
    data = _data()
    model, variables = _linen()
    with pytest.raises(ValueError, match=r"frozen names \['nope'\].*\['Dense_0'\]\['kernel'\]"):
        from_linen(
            model, variables, _linen_loss, data, apply_kwargs={"train": True}, frozen=["nope"]
        )
    with pytest.raises(TypeError, match="frozen must be a sequence"):
        from_linen(model, variables, _linen_loss, data, frozen="['Dense_0']['kernel']")
    with pytest.raises(ValueError, match="'params' collection"):
        from_linen(model, {"batch_stats": {}}, _linen_loss, data)
    with pytest.raises(TypeError, match=r"flax\.linen\.Module"):
        from_linen(object(), variables, _linen_loss, data)
    with pytest.raises(TypeError, match=r"apply_kwargs\['mask'\] must be hashable"):
        from_linen(model, variables, _linen_loss, data, apply_kwargs={"mask": [1]})
    with pytest.raises(ValueError, match="groups must be 'layer', 'leaf', 'all'"):
        from_linen(model, variables, _linen_loss, data, apply_kwargs={"train": True}, groups="x")
    with pytest.raises(TypeError, match=r"flax\.nnx\.Module"):
        from_nnx(model, _nnx_loss, data)
    with pytest.raises(TypeError, match=r"eqx\.nn\.State"):
        from_equinox(_eqx()[0], _eqx_loss, data, state={})
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        from_nnx(NNXMLP(nnx.Rngs(0)), 3, data)


def test_groups_options():
    model, variables = _linen()
    data = _data()
    kw = {"apply_kwargs": {"train": True}, "check_invariance": False}
    one = from_linen(model, variables, _linen_loss, data, groups="all", **kw)
    assert one.groups == (69,) and one.names == (
        ("['Dense_0']['kernel']", "['Dense_1']['kernel']", "['Dense_2']['kernel']"),
    )
    # explicit sizes that split a leaf: both groups name it
    split = from_linen(model, variables, _linen_loss, data, groups=(30, 39), **kw)
    assert split.names == (
        ("['Dense_0']['kernel']", "['Dense_1']['kernel']"),
        ("['Dense_1']['kernel']", "['Dense_2']['kernel']"),
    )
    assert split.leaf_names == one.names[0]
    with pytest.raises(ValueError, match=r"groups \(30, 30\) add up to 60 but .* 69 entries"):
        from_linen(model, variables, _linen_loss, data, groups=(30, 30), **kw)


@pytest.mark.slow  # ~9-10 s on an idle core (default suite budget)
def test_a_layer_with_a_bias_before_its_norm_is_one_group():
    """Kernel and bias of a Dense followed by LayerNorm are jointly invariant, not separately."""
    model, variables = _linen(dense_bias=True)
    params = {
        layer: {**leaves, "bias": jnp.linspace(-1.0, 1.0, leaves["bias"].shape[0])}
        for layer, leaves in variables["params"].items()
    }  # nonzero biases (linen starts them at 0, where a kernel alone is invariant)
    variables = {"params": params}
    data = _data()
    kw = {"apply_kwargs": {"train": True}}
    ml = from_linen(model, variables, _linen_loss, data, **kw)
    assert ml.groups == (30, 35, 18)
    assert ml.names[0] == ("['Dense_0']['bias']", "['Dense_0']['kernel']")
    per_group = jnp.asarray([[0.2, 1.0, 1.0], [1.0, 6.0, 0.5]])
    scales = jax.vmap(lambda c: expand_groups(c, ml.groups))(per_group)
    base, _, scaled, _ = _evaluate(ml.loss, ml.w0, scales)
    np.testing.assert_allclose(scaled, jnp.full(2, base), rtol=1e-12, atol=0)
    with pytest.raises(
        ScaleInvarianceError, match=r"(?s)6 of 6 groups.*\['Dense_0'\]\['bias'\].*groups='layer'"
    ):
        from_linen(model, variables, _linen_loss, data, groups="leaf", **kw)


# ---------------------------------------------------------------------------------------------
# Minibatches of the model's own data
# ---------------------------------------------------------------------------------------------


NO_CHECK = {"check_invariance": False}


@eqx.filter_jit
def _value_and_grad(loss, w):
    return jax.value_and_grad(loss)(w)


def _rebuilt(name: str, data: dict[str, jax.Array]) -> ModelLoss:
    """The oracle: the same model given only ``data`` by its framework's adapter."""
    if name == "linen":
        model, variables = _linen()
        return from_linen(
            model, variables, _linen_loss, data, apply_kwargs={"train": True}, **NO_CHECK
        )
    if name == "nnx":
        module = NNXMLP(nnx.Rngs(0), use_running_average=True)
        return from_nnx(module, _nnx_loss, data, **NO_CHECK)
    model, state = _eqx()
    return from_equinox(model, _eqx_loss, data, state, **NO_CHECK)


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_minibatch_is_the_model_on_each_batch(name):
    ml = _case(name)[0]
    mb = ml.minibatch(4, scheme="iid")
    key = jax.random.PRNGKey(3)
    w = ml.w0 * 1.3 + 0.01 * jax.random.normal(jax.random.PRNGKey(1), ml.w0.shape, F64)
    # The whole-data loss is the model's loss, bitwise.
    assert float(mb(w)) == float(ml.loss(w))
    for t in (0, 5):
        idx = np.asarray(mb.indices(t, key))
        batch = {k: v[idx] for k, v in _data().items()}
        oracle = _rebuilt(name, batch)
        value, grad = _value_and_grad(mb.at(t, key), w)
        want, want_grad = _value_and_grad(oracle.loss, w)
        np.testing.assert_allclose(value, want, rtol=1e-13)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-11, atol=1e-13)
    with pytest.raises(ValueError, match="batch_size = 9 is larger than the data: N = 8"):
        ml.minibatch(9)
