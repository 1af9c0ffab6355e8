"""Tests of ``theory.problems.transformer``: shapes, exact causality, the gradient against
central finite differences, the residual writers' scale invariance, and a NumPy forward pass.

Tolerances (float64): causality is exact (bit for bit: the masked scores are ``-inf``, whose
``exp`` is an exact 0); the NumPy re-implementation agrees to 1e-12 relative (a few hundred
rounded operations of size ~1); finite differences with step ``h = 1e-5`` have truncation error
~``h^2 |D^3 L|`` ~ 1e-10 and rounding error ~``eps |L| / h`` ~ 1e-11, so 1e-7 relative to the
gradient's norm; scale invariance at ``eps = 0`` uses the project's default float64 tolerance
(:func:`theory.core.invariance.check_scale_invariance`), and ``ln_eps = 1e-2`` must fail it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from theory.core.invariance import ScaleInvarianceError, check_scale_invariance
from theory.problems import transformer as tf

SPEC = tf.TransformerSpec(vocab=7, seq_len=5, d_model=8, n_heads=2, n_layers=2, d_mlp=12)
# compiled once per spec and shape (eager dispatch of every op was most of these tests' time)
_logits = jax.jit(tf.logits, static_argnums=0)
_loss = jax.jit(tf.last_token_loss, static_argnums=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _params(spec: tf.TransformerSpec = SPEC, seed: int = 0) -> tf.Params:
    p = tf.init(spec, jax.random.PRNGKey(seed), jnp.float64)
    # nonzero biases, gains and shifts, so that every parameter is exercised
    flat, unravel = ravel_pytree(p)
    noise = 0.1 * jax.random.normal(jax.random.PRNGKey(seed + 100), flat.shape, flat.dtype)
    return unravel(flat + noise)


def _tokens(b: int, t: int, vocab: int, seed: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.PRNGKey(seed), (b, t), 0, vocab, jnp.int32)


def test_shapes_and_parameter_count() -> None:
    p = _params()
    z = _logits(SPEC, p, _tokens(3, 4, SPEC.vocab))
    assert z.shape == (3, 4, SPEC.vocab) and z.dtype == jnp.float64
    assert jax.eval_shape(
        functools.partial(tf.last_logits, SPEC), p, _tokens(3, 5, SPEC.vocab)
    ).shape == (
        3,
        SPEC.vocab,
    )
    assert ravel_pytree(p)[0].shape[0] == tf.num_params(SPEC)
    with pytest.raises(ValueError, match=r"T <= seq_len=5, got \(2, 6\)"):
        tf.logits(SPEC, p, _tokens(2, 6, SPEC.vocab))


def test_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"n_heads \(3\) must divide d_model \(8\)"):
        tf.TransformerSpec(vocab=5, seq_len=3, d_model=8, n_heads=3)
    with pytest.raises(ValueError, match="vocab"):
        tf.TransformerSpec(vocab=0, seq_len=3)
    with pytest.raises(ValueError, match="ln_eps"):
        tf.TransformerSpec(vocab=5, seq_len=3, ln_eps=-1.0)


def test_causality_is_exact() -> None:
    """Changing the tokens after position i leaves the logits at positions <= i bit for bit."""
    p = _params()
    toks = _tokens(4, 5, SPEC.vocab)
    z = np.asarray(_logits(SPEC, p, toks))
    for i in range(4):
        other = toks.at[:, i + 1 :].set((toks[:, i + 1 :] + 3) % SPEC.vocab)
        z2 = np.asarray(_logits(SPEC, p, other))
        np.testing.assert_array_equal(z2[:, : i + 1], z[:, : i + 1])
        assert np.max(np.abs(z2[:, i + 1 :] - z[:, i + 1 :])) > 1e-3  # the future does change


def _numpy_logits(spec: tf.TransformerSpec, p: tf.Params, toks: np.ndarray) -> np.ndarray:
    """An independent NumPy forward pass with explicit loops over heads and positions."""
    p = jax.tree.map(np.asarray, p)

    def ln(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return g * (x - mu) / np.sqrt(var + spec.ln_eps) + b

    def gelu(x: np.ndarray) -> np.ndarray:  # jax.nn.gelu's default tanh form
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    bsz, t = toks.shape
    dh = spec.d_model // spec.n_heads
    x = p["embed"][toks] + p["pos"][:t]
    for blk in p["blocks"]:
        h = ln(x, blk["ln1_g"], blk["ln1_b"])
        out = np.zeros_like(x)
        for head in range(spec.n_heads):
            cols = slice(head * dh, (head + 1) * dh)
            q, k, v = (h @ blk[w][:, cols] for w in ("wq", "wk", "wv"))
            for b in range(bsz):
                for i in range(t):
                    s = np.array([q[b, i] @ k[b, j] / math.sqrt(dh) for j in range(i + 1)])
                    a = np.exp(s - s.max())
                    a /= a.sum()
                    out[b, i, cols] = a @ v[b, : i + 1]
        x = x + out @ blk["wo"] + blk["bo"]
        h = ln(x, blk["ln2_g"], blk["ln2_b"])
        x = x + gelu(h @ blk["w1"] + blk["b1"]) @ blk["w2"] + blk["b2"]
    return ln(x, p["lnf_g"], p["lnf_b"]) @ p["unembed"]


def test_forward_matches_numpy_loops() -> None:
    p = _params()
    toks = _tokens(3, 5, SPEC.vocab)
    np.testing.assert_allclose(
        np.asarray(_logits(SPEC, p, toks)), _numpy_logits(SPEC, p, np.asarray(toks)), rtol=1e-12,
        atol=1e-12,
    )  # fmt: skip


def test_loss_and_accuracy_against_explicit_sums() -> None:
    p = _params()
    toks = _tokens(6, 4, SPEC.vocab)
    y = jnp.asarray([0, 1, 2, 3, 4, 5], jnp.int32)
    z = np.asarray(_logits(SPEC, p, toks))[:, -1]
    nll = [np.log(np.sum(np.exp(z[b]))) - z[b, int(y[b])] for b in range(6)]
    assert float(_loss(SPEC, p, toks, y)) == pytest.approx(np.mean(nll), rel=1e-12)
    acc = np.mean(np.argmax(z, axis=1) == np.asarray(y))
    accuracy = jax.jit(tf.last_token_accuracy, static_argnums=0)
    assert float(accuracy(SPEC, p, toks, y)) == acc


@pytest.mark.slow  # default-suite budget (transformer oracles run in the slow suite)
def test_gradient_matches_central_differences() -> None:
    spec = tf.TransformerSpec(vocab=5, seq_len=3, d_model=4, n_heads=2, d_mlp=6)
    p = _params(spec)
    toks = _tokens(5, 3, spec.vocab)
    y = jnp.asarray([0, 1, 2, 3, 4], jnp.int32)
    w, unravel = ravel_pytree(p)

    @jax.jit
    def loss(x: jax.Array) -> jax.Array:
        return tf.last_token_loss(spec, unravel(x), toks, y)

    g = np.asarray(jax.grad(loss)(w))
    h = 1e-5
    steps = h * jnp.eye(w.shape[0], dtype=w.dtype)
    fd = np.asarray(jax.vmap(lambda e: (loss(w + e) - loss(w - e)) / (2 * h))(steps))
    assert np.max(np.abs(fd - g)) < 1e-7 * np.linalg.norm(g)
    assert np.count_nonzero(np.abs(g) > 1e-6) > 0.5 * len(g)  # most parameters matter


def _writer_loss(spec: tf.TransformerSpec, p: tf.Params) -> tuple[object, jax.Array]:
    """The loss as a function of the residual writers only (the rest fixed), flat."""
    mask = tf.residual_writers(p)
    writers = jax.tree.map(lambda x, m: x if m else None, p, mask)
    z0, unravel = ravel_pytree(writers)
    toks = _tokens(5, 4, spec.vocab)
    y = jnp.asarray([0, 1, 2, 3, 4], jnp.int32)

    @jax.jit
    def loss(z: jax.Array) -> jax.Array:
        new = unravel(z)
        full = jax.tree.map(lambda x, n: x if n is None else n, p, new, is_leaf=lambda x: x is None)
        return tf.last_token_loss(spec, full, toks, y)

    return loss, z0


def test_residual_writers_mark_embeddings_and_output_projections() -> None:
    mask = tf.residual_writers(_params())
    assert mask["embed"] and mask["pos"] and not mask["unembed"] and not mask["lnf_g"]
    for blk in mask["blocks"]:
        assert {k for k, v in blk.items() if v} == {"wo", "bo", "w2", "b2"}


@pytest.mark.slow  # default-suite budget (14 s idle)
def test_residual_writers_are_jointly_scale_invariant_at_eps_zero() -> None:
    spec = tf.TransformerSpec(
        vocab=7, seq_len=5, d_model=8, n_heads=2, n_layers=2, d_mlp=12, ln_eps=0.0
    )
    loss, z0 = _writer_loss(spec, _params(spec))
    rep = check_scale_invariance(loss, z0, name="transformer (residual writers)")
    assert rep.homogeneity < 1e-12 and rep.euler < 1e-12
    # and scaling by hand moves the logits by nothing (to rounding)
    assert float(loss(3.0 * z0)) == pytest.approx(float(loss(z0)), rel=1e-12)


@pytest.mark.slow  # a second compiled invariance measurement (~50 s on the loaded 2-core machine)
def test_layernorm_eps_breaks_the_invariance() -> None:
    spec = tf.TransformerSpec(
        vocab=7, seq_len=5, d_model=8, n_heads=2, n_layers=2, d_mlp=12, ln_eps=1e-2
    )
    loss, z0 = _writer_loss(spec, _params(spec))
    with pytest.raises(ScaleInvarianceError):
        check_scale_invariance(loss, z0, name="transformer with ln_eps=1e-2")
