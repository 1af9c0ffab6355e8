"""Tests of ``theory.core.objective``: :class:`FullBatch` and :class:`Chunked`, and chunked
networks.

Oracles: the dense Hessian ``jax.hessian`` of the full-batch loss, the full-batch objective
itself, per-chunk BatchNorm losses built independently by :func:`theory.problems.nets.make_problem`
on each
chunk's data, and the per-layer scale-invariance identity.

Tolerances (float64): 1e-12 relative for two computations of the same quantity (a chunked sum of
K terms and the unchunked one differ by the order of summation: errors ~K eps ~ 1e-15 relative on
these O(1) problems; a wrong chunk weighting or a missing chunk is off by O(1/K)); float32:
1e-5 relative (same argument with eps ~ 1e-7). Sharpness/EoS through Lanczos: 1e-9 relative
(two Lanczos runs from the same start on HVPs that differ by rounding; the Ritz value converges
to the tolerance ``3 sqrt(eps)`` on the residual, i.e. ~eps/gap on the eigenvalue, and rounding
differences are amplified at most by the Krylov conditioning).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from theory.core.objective import Chunked, FullBatch, Objective, as_objective
from theory.problems import nets

F64 = jnp.float64
N, D = 12, 5


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# --------------------------------------------------------------------------------------------
# A small per-example loss (not a network): l_i(w) = softplus(-y_i tanh(<x_i, w>)) + <x_i, w>^2/8
# --------------------------------------------------------------------------------------------


def _chunk_loss(w, x, y):
    z = x @ w
    return jnp.mean(jax.nn.softplus(-y * jnp.tanh(z)) + z**2 / 8)


def _toy(dtype=F64):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(N, D)), dtype)
    y = jnp.asarray(rng.choice([-1.0, 1.0], size=N), dtype)
    w = jnp.asarray(rng.normal(size=D), dtype)
    v = jnp.asarray(rng.normal(size=D), dtype)
    return x, y, w, v


def _full(x, y):
    return jax.tree_util.Partial(_chunk_loss, x=x, y=y)


@eqx.filter_jit
def _all_passes(obj, w, v):
    """Every pass of an objective at ``(w, v)``; the linearized HVP reused on a basis too."""
    (val, grad), hvp = obj.linearize(w)
    cols = jax.lax.map(hvp, jnp.eye(w.shape[0], dtype=w.dtype))  # row i = H e_i = column i
    return obj(w), obj.value_and_grad(w), (val, grad), hvp(v), cols, obj.value_grad_hvp(w, v)


@pytest.mark.parametrize(
    "chunk_size",
    [pytest.param(1, marks=pytest.mark.slow), 4, pytest.param(N, marks=pytest.mark.slow)],
)  # default-suite budget: the others in make test-slow
def test_chunked_and_fullbatch_match_dense_hessian(chunk_size):
    x, y, w, v = _toy()
    loss = _full(x, y)
    val, grad, hess = loss(w), jax.grad(loss)(w), jax.hessian(loss)(w)
    hv = hess @ v
    for obj in (FullBatch(loss), Chunked(_chunk_loss, (x, y), chunk_size=chunk_size)):
        assert isinstance(obj, Objective)
        v0, (v1, g1), (v2, g2), hv2, cols, (v3, g3, h3) = _all_passes(obj, w, v)
        for got in (v0, v1, v2, v3):
            assert _rel(got, val) < 1e-12
        for got in (g1, g2, g3):
            assert _rel(got, grad) < 1e-12
        assert _rel(hv2, hv) < 1e-12 and _rel(h3, hv) < 1e-12
        assert _rel(cols, hess) < 1e-12  # the reused hvp gives the whole (symmetric) Hessian


def test_chunked_float32_keeps_dtype():
    x, y, w, v = _toy(jnp.float32)
    obj, ref = Chunked(_chunk_loss, (x, y), chunk_size=3), FullBatch(_full(x, y))
    got, want = obj.value_grad_hvp(w, v), ref.value_grad_hvp(w, v)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == jnp.float32
        assert _rel(a, b) < 1e-5
    (val, grad), hvp = obj.linearize(w)
    assert val.dtype == grad.dtype == hvp(v).dtype == jnp.float32


def test_chunked_pytree_data_and_as_objective():
    x, y, w, v = _toy()

    def chunk_loss(w, batch):
        return _chunk_loss(w, batch["x"], batch["y"])

    obj = Chunked(chunk_loss, ({"x": x, "y": y},), chunk_size=6)
    assert as_objective(obj) is obj
    assert obj.num_examples == N and obj.num_chunks == 2
    ref = FullBatch(_full(x, y))
    for a, b in zip(obj.value_grad_hvp(w, v), ref.value_grad_hvp(w, v), strict=True):
        assert _rel(a, b) < 1e-12
    # a lone array is data too
    single = Chunked(lambda w, x: jnp.mean(jnp.sin(x @ w)), x, chunk_size=4)
    assert _rel(single(w), jnp.mean(jnp.sin(x @ w))) < 1e-12


def test_chunked_under_jit_vmap_and_scan():
    x, y, w, v = _toy()
    obj = Chunked(_chunk_loss, (x, y), chunk_size=4)
    ref = FullBatch(_full(x, y))
    ws = jnp.stack([w, 0.5 * w + 0.1, -w])
    vs = jnp.stack([v, -v, v + 1.0])

    @eqx.filter_jit
    def batched(o, ws, vs):
        vg = jax.vmap(o.value_and_grad)(ws)
        hv = jax.vmap(lambda a, b: o.linearize(a)[1](b))(ws, vs)
        fused = jax.vmap(o.value_grad_hvp)(ws, vs)
        return vg, hv, fused

    (vals, grads), hvs, fused = batched(obj, ws, vs)
    for i in range(len(ws)):
        val, grad, hv = ref.value_grad_hvp(ws[i], vs[i])
        assert _rel(vals[i], val) < 1e-12 and _rel(grads[i], grad) < 1e-12
        assert _rel(hvs[i], hv) < 1e-12
        for j, want in enumerate((val, grad, hv)):
            assert _rel(fused[j][i], want) < 1e-12

    # inside lax.scan: 5 GD steps with weight decay, against the full-batch objective
    def run(o, w0):
        def step(w, _):
            val, grad = o.value_and_grad(w)
            return w - 0.1 * grad - 0.01 * w, val

        return jax.lax.scan(step, w0, None, length=5)

    w_c, vals_c = eqx.filter_jit(run)(obj, w)
    w_f, vals_f = eqx.filter_jit(run)(ref, w)
    assert _rel(w_c, w_f) < 1e-12 and _rel(vals_c, vals_f) < 1e-12

    # vmap over the objective's data (several data sets at once)
    xs = jnp.stack([x, 2 * x])
    batched_obj = jax.vmap(lambda xx: Chunked(_chunk_loss, (xx, y), chunk_size=3)(w))(xs)
    assert _rel(batched_obj, jnp.stack([_chunk_loss(w, x, y), _chunk_loss(w, 2 * x, y)])) < 1e-12


def test_chunked_bad_arguments():
    x, y, _, _ = _toy()
    with pytest.raises(ValueError, match=r"chunk_size must divide the number of examples N = 12"):
        Chunked(_chunk_loss, (x, y), chunk_size=5)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="chunk_size must be a positive int"):
            Chunked(_chunk_loss, (x, y), chunk_size=bad)
    bad_types: tuple[Any, ...] = (2.0, True, "4", None)
    for bad in bad_types:
        with pytest.raises(TypeError, match="chunk_size must be a positive int"):
            Chunked(_chunk_loss, (x, y), chunk_size=bad)
    with pytest.raises(ValueError, match=r"same leading example axis N.*data\[1\]"):
        Chunked(_chunk_loss, (x, y[:10]), chunk_size=2)
    with pytest.raises(ValueError, match="leading example axis"):
        Chunked(_chunk_loss, (x, jnp.asarray(1.0)), chunk_size=2)
    with pytest.raises(ValueError, match="N >= 1 examples"):
        Chunked(_chunk_loss, (x[:0], y[:0]), chunk_size=2)
    with pytest.raises(ValueError, match="at least one array"):
        Chunked(_chunk_loss, (), chunk_size=2)
    with pytest.raises(TypeError, match="data must be arrays"):
        Chunked(_chunk_loss, (x, "labels"), chunk_size=2)
    with pytest.raises(TypeError, match="chunk_loss must be a callable"):
        Chunked(3.0, (x, y), chunk_size=2)  # type: ignore[arg-type]
    obj = Chunked(lambda w, x: x @ w, x, chunk_size=2)  # not a scalar
    with pytest.raises(ValueError, match="chunk_loss must return a scalar"):
        obj(jnp.ones(D))


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


def _data(n, seed, image=False):
    rng = np.random.default_rng(seed)
    shape = (n, 4, 4, 1) if image else (n, 7)
    return rng.normal(size=shape), rng.integers(0, 3, size=n)


def _problem(norm, *, model="mlp", loss="ce", n=N, seed=0):
    x, y = _data(n, seed, image=model == "vgg")
    xt, yt = _data(4, seed + 1, image=model == "vgg")
    net: Any = (
        nets.vgg((2, 3), norm=norm)
        if model == "vgg"
        else nets.mlp((6, 5), norm=norm, activation="tanh")
    )
    return nets.make_problem(net, x, y, xt, yt, loss=loss, num_outputs=3, dtype=F64)


def _point(prob, seed=3):
    rng = np.random.default_rng(seed)
    w = prob.w0 * (1 + 0.3 * jnp.asarray(rng.normal(size=prob.w0.shape)))
    v = jnp.asarray(rng.normal(size=prob.w0.shape))
    return w, v


@eqx.filter_jit
def _fused(obj, w, v):
    return obj.value_grad_hvp(w, v)


@eqx.filter_jit
def _value(loss, w):
    return loss(w)


@pytest.mark.parametrize(
    ("norm", "model", "loss", "chunk_size"),
    [
        ("layer", "mlp", "ce", 3),
        ("layer", "mlp", "mse", 4),
        ("none", "mlp", "ce", 6),
        ("layer", "vgg", "ce", 4),
    ],
)
@pytest.mark.slow
def test_per_example_network_chunked_equals_full_batch(norm, model, loss, chunk_size):
    prob = _problem(norm, model=model, loss=loss)
    obj = nets.chunked_objective(prob, chunk_size=chunk_size)
    assert isinstance(obj, Objective) and obj.num_chunks == N // chunk_size
    ref = FullBatch(prob.loss)
    w, v = _point(prob)

    @eqx.filter_jit
    def passes(o, w, v):
        (val, grad), hvp = o.linearize(w)
        return o(w), val, grad, hvp(v), o.value_grad_hvp(w, v)

    got, want = passes(obj, w, v), passes(ref, w, v)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert _rel(a, b) < 1e-12
    # ghost_batch=True changes nothing without batch statistics
    ghost = nets.chunked_objective(prob.loss, chunk_size=chunk_size, ghost_batch=True)
    assert _rel(_value(ghost, w), want[0]) < 1e-12


def test_ghost_batch_batchnorm_is_mean_of_per_chunk_losses_and_invariant():
    c = 4
    prob = _problem("batch")
    obj = nets.chunked_objective(prob, chunk_size=c, ghost_batch=True)
    w, v = _point(prob)
    x, y = _data(N, 0)
    vals, grads, hvs = [], [], []
    for k in range(N // c):  # each chunk's full-batch BN loss, on its own
        sl = slice(k * c, (k + 1) * c)
        loss_k = nets.NetLoss(prob.loss.network, jnp.asarray(x[sl]), jnp.asarray(y[sl]), "ce")
        val, grad, hv = _fused(FullBatch(loss_k), w, v)  # one compile for the K chunks
        vals.append(val)
        grads.append(grad)
        hvs.append(hv)
    want = (np.mean(vals), np.mean(grads, axis=0), np.mean(hvs, axis=0))
    got = _fused(obj, w, v)
    for a, b in zip(got, want, strict=True):
        assert _rel(a, b) < 1e-12
    # a different loss from full-batch BN
    assert abs(float(got[0]) - float(_value(prob.loss, w))) > 1e-6
    # exactly scale-invariant per layer: per-group scales, and Euler's identity <grad_g, w_g> = 0
    assert len(prob.groups) == 2
    scales = theory.core.invariance.expand_groups(jnp.asarray([0.3, 4.0]), prob.groups)
    assert _rel(_value(obj, w * scales), got[0]) < 1e-12
    ends = np.cumsum(prob.groups)
    for a, b in zip(ends - np.asarray(prob.groups), ends, strict=True):
        g_g, w_g = np.asarray(got[1][a:b]), np.asarray(w[a:b])
        assert abs(g_g @ w_g) < 1e-12 * np.linalg.norm(g_g) * np.linalg.norm(w_g)
    # chunk_size = N without the opt-in: one chunk, the full-batch BN loss
    whole = nets.chunked_objective(prob, chunk_size=N)
    assert _rel(_value(whole, w), _value(prob.loss, w)) < 1e-12


def test_network_chunked_bad_arguments():
    bn = _problem("batch")
    with pytest.raises(ValueError, match=r"BatchNorm.*ghost_batch=True"):
        nets.chunked_objective(bn, chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size must be >= 2 with ghost-batch"):
        nets.chunked_objective(bn, chunk_size=1, ghost_batch=True)
    with pytest.raises(ValueError, match="chunk_size must divide the number of examples N = 12"):
        nets.chunked_objective(bn, chunk_size=5, ghost_batch=True)
    data = nets.matrix_completion_data(6, 7, true_rank=2, num_observed=20, seed=0)
    mc = nets.make_matrix_completion(data, rank=2, dtype=F64)
    with pytest.raises(ValueError, match="BatchNorm"):
        nets.chunked_objective(mc, chunk_size=10)
    ln = _problem("layer")
    with pytest.raises(ValueError, match="chunk_size must divide"):
        nets.chunked_objective(ln, chunk_size=5)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        nets.chunked_objective(ln, chunk_size=0)
    with pytest.raises(TypeError, match="ghost_batch must be a bool"):
        nets.chunked_objective(ln, chunk_size=4, ghost_batch="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="problem must be a NetProblem"):
        nets.chunked_objective(ln.evaluate, chunk_size=4)


@pytest.mark.slow  # default-suite budget
def test_sharpness_and_eos_through_chunked_objective():
    prob = _problem("layer")
    obj = nets.chunked_objective(prob, chunk_size=3)
    w, _ = _point(prob)
    kw = {"groups": prob.groups, "check_invariance": False}  # invariance: tested above
    s_ref, v_ref = theory.spherical_sharpness(prob.loss, w, **kw)
    s_chk, v_chk = theory.spherical_sharpness(obj, w, **kw)
    assert _rel(s_chk, s_ref) < 1e-9
    assert abs(abs(float(v_chk @ v_ref)) - 1) < 1e-8
    e_ref, _ = theory.eos_quantity(prob.loss, w, 0.1, **kw)
    e_chk, _ = theory.eos_quantity(obj, w, 0.1, **kw)
    assert _rel(e_chk, e_ref) < 1e-9


def test_network_chunked_vmap_over_w():
    prob = _problem("layer", loss="mse")
    obj = nets.chunked_objective(prob, chunk_size=4)
    w, v = _point(prob)
    ws = jnp.stack([w, 2.0 * w, _point(prob, seed=5)[0]])

    @eqx.filter_jit
    def batched(o, ws):
        return jax.vmap(lambda a: o.value_grad_hvp(a, v))(ws)

    got, want = batched(obj, ws), batched(FullBatch(prob.loss), ws)
    for a, b in zip(got, want, strict=True):
        assert _rel(a, b) < 1e-12
    # scale invariance seen through vmap: rows 0 and 1 share value, grad scales by 1/2
    assert _rel(got[0][1], got[0][0]) < 1e-12
    assert _rel(2 * got[1][1], got[1][0]) < 1e-12
