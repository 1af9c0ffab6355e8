"""A small causal transformer as a pure function of a parameter pytree (for AdamW and AdmIRE).

The model (``B`` sequences of ``T`` tokens from a vocabulary of ``V``, width ``d``)::

    x_0     = E[tokens] + P[:T]                                   (token + position embeddings)
    for each block (pre-LN):
        x  <- x + Attn(LN_1(x)) W_O + b_O                         (causal multi-head attention)
        x  <- x + gelu(LN_2(x) W_1 + b_1) W_2 + b_2               (MLP)
    logits  = LN_f(x) U                                           (final LayerNorm, unembedding)

``LN(x) = g * (x - mean(x)) / sqrt(var(x) + eps) + b`` over the ``d`` features of each token
(``var`` the population variance ``mean((x - mean)^2)``). Attention has ``n_heads`` heads of
width ``d / n_heads``, scores ``q . k / sqrt(d / n_heads)``, and the causal mask sets the score of
key ``j > i`` to ``-inf`` before the softmax, so ``exp`` gives an exact 0 and the output at
position ``i`` does not depend on the tokens after ``i`` (bit for bit; tested).

**Scale invariance of the residual stream.** Every term added to the residual stream ``x`` is
written by one of the *residual writers*: ``E``, ``P`` and, per block, ``W_O, b_O, W_2, b_2``.
Scaling all of them by ``c > 0`` scales ``x`` by ``c`` at every depth (each block reads ``x`` only
through a LayerNorm, and ``LN(c x) = LN(x)`` when ``eps = 0``), and the logits read ``x`` through
``LN_f``; so with ``eps = 0`` the loss is exactly invariant under that joint scaling, one
scale-invariance group (``residual_writers`` marks it; the tests check it with
:func:`theory.core.invariance.check_scale_invariance`). With ``eps > 0`` the invariance holds
only where ``c^2 var(x) >> eps``. The other parameters (``W_Q, W_K, W_V, W_1, b_1``, the
LayerNorm gains and shifts, ``U``) are not scale-invariant.

Parameters are a dict pytree (:func:`init`); ``jax.flatten_util.ravel_pytree`` gives the flat
vector. The data (tokens, targets) are arguments, never closed over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from theory.core import validate as check

Array = jax.Array
Params = dict[str, Any]

# Residual writers of a block (scale together with the embeddings: module docstring).
BLOCK_WRITERS = ("wo", "bo", "w2", "b2")
TOP_WRITERS = ("embed", "pos")


@dataclass(frozen=True)
class TransformerSpec:
    """Shape and settings of the transformer.

    Attributes:
        vocab: vocabulary size ``V`` (tokens are ints in ``[0, V)``; also the number of logits).
        seq_len: maximal sequence length ``T`` (rows of the position embedding).
        d_model: residual width ``d``.
        n_heads: attention heads (must divide ``d_model``).
        n_layers: pre-LN blocks.
        d_mlp: hidden width of each block's MLP.
        ln_eps: the LayerNorms' ``eps`` (0: the residual writers are exactly scale-invariant).
    """

    vocab: int
    seq_len: int
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 1
    d_mlp: int = 64
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab", "seq_len", "d_model", "n_heads", "n_layers", "d_mlp"):
            check.positive_int(getattr(self, name), name)
        check.nonnegative(self.ln_eps, "ln_eps")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must divide d_model ({self.d_model}): heads of equal "
                "width"
            )


def init(spec: TransformerSpec, key: Array, dtype: Any = jnp.float32) -> Params:
    """Random parameters: embeddings ``N(0, 1)``; every matrix ``N(0, 1/fan_in)``; biases 0;
    LayerNorm gains 1 and shifts 0."""
    d, m, v = spec.d_model, spec.d_mlp, spec.vocab
    keys = iter(jax.random.split(key, 3 + 6 * spec.n_layers))

    def normal(shape: tuple[int, ...], fan_in: int) -> Array:
        return jax.random.normal(next(keys), shape, dtype) / math.sqrt(fan_in)

    blocks = []
    for _ in range(spec.n_layers):
        blocks.append(
            {
                "ln1_g": jnp.ones((d,), dtype),
                "ln1_b": jnp.zeros((d,), dtype),
                "wq": normal((d, d), d),
                "wk": normal((d, d), d),
                "wv": normal((d, d), d),
                "wo": normal((d, d), d),
                "bo": jnp.zeros((d,), dtype),
                "ln2_g": jnp.ones((d,), dtype),
                "ln2_b": jnp.zeros((d,), dtype),
                "w1": normal((d, m), d),
                "b1": jnp.zeros((m,), dtype),
                "w2": normal((m, d), m),
                "b2": jnp.zeros((d,), dtype),
            }
        )
    return {
        "embed": normal((v, d), 1),
        "pos": normal((spec.seq_len, d), 1),
        "blocks": blocks,
        "lnf_g": jnp.ones((d,), dtype),
        "lnf_b": jnp.zeros((d,), dtype),
        "unembed": normal((d, v), d),
    }


def residual_writers(params: Params) -> Params:
    """A pytree like ``params`` of Python bools: ``True`` on the residual writers (``E``, ``P``,
    and per block ``W_O, b_O, W_2, b_2``), the parameters that scale together (module
    docstring)."""
    out: Params = {k: k in TOP_WRITERS for k in params if k != "blocks"}
    out["blocks"] = [{k: k in BLOCK_WRITERS for k in blk} for blk in params["blocks"]]
    return out


def layer_norm(x: Array, g: Array, b: Array, eps: float) -> Array:
    """``g * (x - mean) / sqrt(var + eps) + b`` over the last axis (population variance)."""
    mu = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    var = jnp.mean(xc * xc, axis=-1, keepdims=True)
    return g * xc / jnp.sqrt(var + eps) + b


def causal_attention(h: Array, blk: Params, n_heads: int) -> Array:
    """Multi-head causal self-attention of ``h`` ``(B, T, d)`` (before ``W_O``): ``(B, T, d)``."""
    bsz, t, d = h.shape
    dh = d // n_heads

    def heads(w: Array) -> Array:
        return (h @ w).reshape(bsz, t, n_heads, dh)

    q, k, v = heads(blk["wq"]), heads(blk["wk"]), heads(blk["wv"])
    scores = jnp.einsum("bihc,bjhc->bhij", q, k) / math.sqrt(dh)
    allowed = jnp.tril(jnp.ones((t, t), dtype=bool))
    scores = jnp.where(allowed, scores, -jnp.inf)
    att = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhij,bjhc->bihc", att, v).reshape(bsz, t, d)


def logits(spec: TransformerSpec, params: Params, tokens: Array) -> Array:
    """The logits ``(B, T, V)`` of integer ``tokens`` ``(B, T)``, ``T <= spec.seq_len``
    (module docstring)."""
    if tokens.ndim != 2 or tokens.shape[1] > spec.seq_len:
        raise ValueError(
            f"tokens must have shape (B, T) with T <= seq_len={spec.seq_len}, got {tokens.shape}"
        )
    t = tokens.shape[1]
    x = params["embed"][tokens] + params["pos"][:t]
    for blk in params["blocks"]:
        a = causal_attention(
            layer_norm(x, blk["ln1_g"], blk["ln1_b"], spec.ln_eps), blk, spec.n_heads
        )
        x = x + a @ blk["wo"] + blk["bo"]
        h = layer_norm(x, blk["ln2_g"], blk["ln2_b"], spec.ln_eps)
        x = x + jax.nn.gelu(h @ blk["w1"] + blk["b1"]) @ blk["w2"] + blk["b2"]
    return layer_norm(x, params["lnf_g"], params["lnf_b"], spec.ln_eps) @ params["unembed"]


def last_logits(spec: TransformerSpec, params: Params, tokens: Array) -> Array:
    """The logits at the last position, ``(B, V)`` (the prediction of the next token)."""
    return logits(spec, params, tokens)[:, -1, :]


def last_token_loss(spec: TransformerSpec, params: Params, tokens: Array, targets: Array) -> Array:
    """Mean cross-entropy ``-(1/B) sum_b log softmax(last_logits)_b[targets_b]`` of the next
    token after each sequence (``targets`` ``(B,)`` ints in ``[0, V)``)."""
    z = last_logits(spec, params, tokens)
    logp = jax.nn.log_softmax(z, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[:, None].astype(jnp.int32), axis=1))


def last_token_accuracy(
    spec: TransformerSpec, params: Params, tokens: Array, targets: Array
) -> Array:
    """Fraction of sequences whose last-position argmax equals the target (the logits' dtype)."""
    z = last_logits(spec, params, tokens)
    return jnp.mean((jnp.argmax(z, axis=-1) == targets).astype(z.dtype))


def num_params(spec: TransformerSpec) -> int:
    """Number of scalar parameters ``D``."""
    d, m, v = spec.d_model, spec.d_mlp, spec.vocab
    block = 4 * d * d + 2 * d * m + m + 6 * d
    return v * d + spec.seq_len * d + spec.n_layers * block + 2 * d + d * v
