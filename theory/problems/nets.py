"""Scale-invariant Flax networks flattened for the simulator (LLA22's network experiments).

The models are Flax ``linen`` modules whose training loss is *exactly* scale-invariant in each
trained weight tensor, ``L(c_1 W_1, ..., c_k W_k) = L(W_1, ..., W_k)`` for all ``c_i > 0``
(docs/theory.md section 1, multi-group invariance). :func:`make_problem` flattens one into the
simulator's convention: a flat vector ``w`` ``(D,)``, contiguous ``groups`` (one per trained
tensor, in the order of ``jax.tree.leaves`` of the Flax params) and a loss ``(D,) -> ()`` that
is an ``equinox.Module`` whose array leaves are the data, so the runners pass the data to ``jit``
as arguments instead of baking them in as constants.

Rules that make the invariance exact (each one is needed; the tests check the result):

1. Every trained layer is followed by a normalization before anything else sees its output, and
   no trained layer has a bias (a bias added before the normalization would not scale with the
   weights; one after it would be an un-normalized parameter).
2. Normalizations have no trainable scale or shift (``use_scale=False, use_bias=False``).
3. Normalizations use ``epsilon = 0``: Flax's default ``1e-5`` computes
   ``(c x - c mu) / sqrt(c^2 var + eps)``, which depends on ``c``. Variances are computed as
   ``mean((x - mean)^2)`` (``use_fast_variance=False``: no cancellation, no clipping at 0).
   ``epsilon = 0`` also means the loss is undefined where a normalized quantity has zero
   variance (a dead channel, a batch of one); generic weights never get there.
4. BatchNorm in the loss uses the full-batch statistics of the batch it is applied to (training
   mode); LayerNorm normalizes each sample over its features (over ``(H, W, C)`` in the CNN).
5. The last layer is FIXED: a random ``(F, C)`` matrix drawn from the seed (Flax's default
   ``Dense`` init, ``lecun_normal``), carried as data, not trained. A trained last layer would
   not be followed by a normalization (rule 1).

Hence ``L(c_1 W_1, ..., c_k W_k) = L(W_1, ..., W_k)``: the output of normalization ``i`` does
not depend on ``c_i``, and nothing else does. ``norm="none"`` gives the plain network for the
"no normalization" ablation; it is NOT invariant (a bias-free ReLU net is positively homogeneous
of degree ``k`` in the weights) and :func:`theory.core.invariance.check_scale_invariance` rejects
it.

Losses (``N`` samples, outputs ``f(x_i) in R^C``, ``C = num_outputs``):

* ``"mse"``: ``L = (1/N) sum_i (1/2) |f(x_i) - y_i|^2`` with ``y_i`` the one-hot vector of an
  integer label, or a row of a float target matrix ``(N, C)``. Residuals
  ``r = vec(f(X) - Y) / sqrt(N)`` of shape ``(N*C,)`` (row-major: sample, then output), so that
  ``L = |r|^2 / 2`` (the least-squares form :mod:`theory.flows.gauss_newton` needs).
* ``"ce"``: ``L = -(1/N) sum_i log softmax(f(x_i))[y_i]`` with integer labels ``y_i``.

Evaluation ("eval mode"). The test predictions use the TRAINING set's normalization statistics
at the current weights: the model is applied to the training inputs in training mode with
BatchNorm ``momentum = 0``, so the stored ``batch_stats`` are exactly that batch's mean and
variance (``0 * old + 1 * new``), then to the test inputs with ``use_running_average=True``.
A test sample's prediction therefore does not depend on which other test samples are evaluated
with it (tested), and the training inputs get the same outputs in both modes.

Initialization and effective learning rates. Trained tensors start at Flax's default init
(``lecun_normal``: entries of variance ``1/fan_in``, so ``|W|_F^2 ~ fan_out`` for a ``Dense``
kernel and ``~ out_channels`` for a ``Conv`` kernel), optionally multiplied per tensor by
``init_scale``. The loss does not see these scales, but GD+WD does: group ``g`` moves with the
effective learning rate ``eta / |W_g|^2`` (docs/theory.md section 2), so ``init_scale`` sets the
initial effective learning rates, ``eta / (init_scale_g^2 |W_g(0)|^2)``.

Matrix completion with BatchNorm (our construction: LLA22's appendix uses a BN matrix-completion
model whose details we do not have). Ground truth ``M* = U* V*^T`` (``n x m``, rank ``r``)
observed on a random index set ``Omega``; the model ``U (n, k)``, ``V (m, k)`` predicts the
entries ``p_ij = <u_i, v_j>`` on ``Omega``, normalizes them by BatchNorm over the observed
entries (``z = (p - mean_Omega p) / std_Omega p``, ``eps = 0``) and applies the fixed affine map
``a z + b``, ``a = std_Omega(M*)``, ``b = mean_Omega(M*)``; the loss is the MSE above on
``Omega`` (``C = 1``). It is invariant to the scale of ``U`` and of ``V`` separately (two groups)
and every ``U V^T = c M*`` (``c > 0``) is a global minimizer. Held-out entries are predicted with
the training statistics: ``a (p_ij - mean_Omega p) / std_Omega p + b``.

Data that does not fit at once: :func:`chunked_objective` accumulates the loss, gradient and
HVPs over chunks of training examples (:class:`theory.core.objective.Chunked`). It is the training
loss itself for networks without batch statistics (LayerNorm, none); with BatchNorm it is the
different *ghost-batch* loss (statistics per chunk), only on explicit request.

To compile a loss, pass it as an argument of a jitted function or use ``equinox.filter_jit``;
``jax.jit(loss)`` fails because a module with array fields is unhashable.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, NamedTuple, cast

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from theory.core import validate as check
from theory.core.objective import Chunked
from theory.core.types import Array, Groups, LossFn

Norm = Literal["batch", "layer", "none"]
Activation = Literal["relu", "tanh", "gelu"]
LossKind = Literal["mse", "ce"]

_NORMS = ("batch", "layer", "none")
_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
}


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def _normalization(norm: str, name: str, conv: bool) -> nn.Module | None:
    """The exactly invariant normalization layer (no affine, eps = 0, two-pass variance)."""
    if norm == "batch":
        return nn.BatchNorm(
            momentum=0.0,  # stored batch_stats = this batch's statistics (eval mode)
            epsilon=0.0,
            use_bias=False,
            use_scale=False,
            use_fast_variance=False,
            name=name,
        )
    if norm == "layer":
        return nn.LayerNorm(
            epsilon=0.0,
            use_bias=False,
            use_scale=False,
            use_fast_variance=False,
            reduction_axes=(-3, -2, -1) if conv else -1,
            name=name,
        )
    return None


def _apply_norm(layer: nn.Module | None, x: Array, train: bool) -> Array:
    if layer is None:
        return x
    if isinstance(layer, nn.BatchNorm):
        return layer(x, use_running_average=not train)
    return layer(x)


class MLP(nn.Module):
    """``x -> act(norm(x W_1)) -> ... -> act(norm(h W_L))``: features ``(N, widths[-1])``.

    Hidden ``Dense`` layers without bias, each followed by the normalization and the activation.
    Input ``(N, F)``. The fixed output layer is added by :func:`make_problem`.
    """

    widths: tuple[int, ...]
    norm: Norm = "batch"
    activation: Activation = "relu"
    input_ndim: ClassVar[int] = 2

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        act = _ACTIVATIONS[self.activation]
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, use_bias=False, name=f"dense_{i:02d}")(x)
            x = _apply_norm(_normalization(self.norm, f"norm_{i:02d}", conv=False), x, train)
            x = act(x)
        return x


class PatchConv(nn.Module):
    """A bias-free convolution with ``"SAME"`` padding computed as patches times a matrix.

    The same function, parameter (``"kernel"``, ``kernel_size + (in, out)``), initialization
    and dtype rules as ``nn.Conv(features, kernel_size, strides, padding="SAME",
    use_bias=False)``, so swapping one for the other leaves the parameters bitwise equal and
    the outputs equal up to the order of the sums (tested against ``nn.Conv``). The input is
    padded as XLA pads ``"SAME"`` (``lax.padtype_to_pads``), the ``prod(kernel_size)``
    shifted, strided views are concatenated along the channels and multiplied by the reshaped
    kernel: a ``dot_general`` and slices, no convolution op.

    Why: on CPU, XLA runs a convolution (and its two transposes in the gradient) several
    times slower inside a loop body (``lax.scan``, ``while_loop``: every chunk of a run and
    every Lanczos solve) than at the top level of a program; products of matrices do not slow
    down in loops. On a VGG 16-32 (1024 digits images, float32; the full regime map's VGG
    until 2026-12-07, now 8-16 on 256 images) a GD step
    inside ``lax.scan`` took 468 ms of CPU with ``nn.Conv`` against 74 ms with this, 15
    vmapped runs 9.9 s against 1.3 s; a gradient at the top level 67 ms against 92 ms
    (``benchmarks/bench_conv.py``, docs/models.md).
    """

    features: int
    kernel_size: tuple[int, ...] = (3, 3)
    strides: tuple[int, ...] | None = None
    kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        window = tuple(self.kernel_size)
        strides = tuple(self.strides) if self.strides is not None else (1,) * len(window)
        if x.ndim != len(window) + 2 or len(strides) != len(window):
            raise ValueError(
                f"PatchConv with kernel_size {window} and strides {strides} takes inputs of "
                f"shape (N, spatial..., C) with {len(window)} spatial axes, got {x.shape}"
            )
        cin = x.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init, (*window, cin, self.features), self.param_dtype
        )
        dtype = jnp.result_type(x, kernel)
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        spatial = x.shape[1:-1]
        pads = jax.lax.padtype_to_pads(spatial, window, strides, "SAME")
        xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
        out = [(n - 1) // s + 1 for n, s in zip(spatial, strides, strict=True)]
        views = []
        for offset in itertools.product(*(range(k) for k in window)):
            index = tuple(
                slice(o, o + (m - 1) * s + 1, s)
                for o, m, s in zip(offset, out, strides, strict=True)
            )
            views.append(xp[(slice(None), *index, slice(None))])
        patches = jnp.concatenate(views, axis=-1)
        return patches @ kernel.reshape(math.prod(window) * cin, self.features)


class VGG(nn.Module):
    """Small VGG-style CNN: per stage conv3x3 (no bias) -> norm -> ReLU -> 2x2 max-pool.

    The pool is skipped along a spatial axis of size 1. Global average pooling at the end gives
    features ``(N, channels[-1])``. Input NHWC. BatchNorm statistics are over ``(N, H, W)``.
    """

    channels: tuple[int, ...] = (16, 32, 64)
    norm: Norm = "batch"
    input_ndim: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        for i, ch in enumerate(self.channels):
            x = PatchConv(ch, (3, 3), name=f"conv_{i:02d}")(x)
            x = _apply_norm(_normalization(self.norm, f"norm_{i:02d}", conv=True), x, train)
            x = nn.relu(x)
            window = (min(2, x.shape[1]), min(2, x.shape[2]))
            if window != (1, 1):
                x = nn.max_pool(x, window, strides=window)
        return jnp.mean(x, axis=(1, 2))


class _BasicBlock(nn.Module):
    """``relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))``: ResNet v1's basic block.

    Both 3x3 convolutions (no bias) are followed by the normalization, so the residual branch
    does not depend on the scale of either. The shortcut has no parameters (ResNet-20's "option
    A"): the identity, or, where the stage halves the resolution and widens, ``x`` subsampled
    by 2 and zero-padded to the new channel count. ``x`` is an invariant function of the earlier
    layers, so the sum, and the block's output, are invariant to the scale of every convolution.
    (A pre-activation block, ``x + conv(relu(norm(x)))``, adds an un-normalized convolution
    output and is not scale-invariant.)
    """

    channels: int
    stride: int
    norm: Norm
    index: str

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        s = (self.stride, self.stride)
        h = PatchConv(self.channels, (3, 3), strides=s, name=f"conv_{self.index}a")(x)
        h = nn.relu(_apply_norm(_normalization(self.norm, f"norm_{self.index}a", True), h, train))
        h = PatchConv(self.channels, (3, 3), name=f"conv_{self.index}b")(h)
        h = _apply_norm(_normalization(self.norm, f"norm_{self.index}b", True), h, train)
        x = x[:, :: self.stride, :: self.stride, :]
        extra = self.channels - x.shape[-1]
        if extra < 0:
            raise ValueError(f"a stage cannot narrow: {x.shape[-1]} -> {self.channels} channels")
        if extra:
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return nn.relu(h + x)


class ResNet(nn.Module):
    """ResNet-20's structure (He et al. 2016, the CIFAR variant) at any width and depth.

    A 3x3 stem convolution -> norm -> ReLU, then one stage per entry of ``channels``, each of
    ``blocks`` basic blocks (:class:`_BasicBlock`); the first block of every stage after the
    first halves the resolution (stride 2, skipped where a spatial axis is already 1) and widens
    through a parameter-free shortcut. Global average pooling at the end gives features
    ``(N, channels[-1])``. ``channels = (16, 32, 64)`` and ``blocks = 3`` is ResNet-20: 19
    convolutions (267 696 weights on 3-channel inputs) plus the fixed last layer. Each
    convolution is followed by the normalization without affine parameters and is its own
    scale-invariance group (``make_problem(groups="layer")``). Channel counts must not
    decrease from stage to stage. Input NHWC.
    """

    channels: tuple[int, ...] = (16, 32, 64)
    blocks: int = 3
    norm: Norm = "batch"
    input_ndim: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        x = PatchConv(self.channels[0], (3, 3), name="conv_stem")(x)
        x = nn.relu(_apply_norm(_normalization(self.norm, "norm_stem", True), x, train))
        for i, ch in enumerate(self.channels):
            for j in range(self.blocks):
                stride = 2 if (i > 0 and j == 0 and min(x.shape[1], x.shape[2]) > 1) else 1
                x = _BasicBlock(ch, stride, self.norm, f"{i}{j}", name=f"block_{i}{j}")(x, train)
        return jnp.mean(x, axis=(1, 2))


def _unit_normal(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """Gaussian entries scaled to unit Frobenius norm."""
    x = jax.random.normal(key, shape, dtype)
    return x / jnp.linalg.norm(x)


class MatrixFactorization(nn.Module):
    """Entries ``p_ij = <u_i, v_j>`` at index pairs ``(N, 2)``, BatchNorm-ed over the batch.

    Params ``U (num_rows, rank)`` and ``V (num_cols, rank)``, each initialized to a Gaussian
    matrix of unit Frobenius norm. Features ``(N, 1)``; the fixed affine head is added by
    :func:`make_matrix_completion`.
    """

    num_rows: int
    num_cols: int
    rank: int
    norm: Literal["batch", "none"] = "batch"
    input_ndim: ClassVar[int] = 2

    @nn.compact
    def __call__(self, idx: Array, train: bool = True) -> Array:
        u = self.param("U", _unit_normal, (self.num_rows, self.rank))
        v = self.param("V", _unit_normal, (self.num_cols, self.rank))
        p = jnp.sum(u[idx[:, 0]] * v[idx[:, 1]], axis=-1)[:, None]
        return _apply_norm(_normalization(self.norm, "norm", conv=False), p, train)


def _check_norm(norm: Any, allowed: Sequence[str] = _NORMS) -> None:
    if norm not in allowed:
        raise ValueError(f"norm must be one of {tuple(allowed)}, got {norm!r}")


def _positive_ints(values: Any, name: str) -> tuple[int, ...]:
    try:
        out = tuple(values)
    except TypeError as err:
        raise TypeError(f"{name} must be a sequence of positive ints, got {values!r}") from err
    if not out or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in out
    ):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {values!r}")
    return tuple(int(v) for v in out)


def mlp(widths: Sequence[int], *, norm: Norm = "batch", activation: Activation = "relu") -> MLP:
    """An :class:`MLP` with hidden ``widths``, ``norm`` in ``{"batch", "layer", "none"}``.

    ``norm="none"`` is the plain (not scale-invariant) network for the ablation. LayerNorm needs
    every width ``>= 2`` (one feature has zero variance).
    """
    widths_t = _positive_ints(widths, "widths")
    _check_norm(norm)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
    if norm == "layer" and min(widths_t) < 2:
        raise ValueError(f"LayerNorm needs every width >= 2, got widths {widths_t}")
    return MLP(widths_t, norm=norm, activation=activation)


def vgg(channels: Sequence[int] = (16, 32, 64), *, norm: Norm = "batch") -> VGG:
    """A :class:`VGG` with ``channels`` per stage (works on 8x8x1 digits and 32x32x3 CIFAR)."""
    channels_t = _positive_ints(channels, "channels")
    _check_norm(norm)
    return VGG(channels_t, norm=norm)


def resnet(
    channels: Sequence[int] = (16, 32, 64), *, blocks: int = 3, norm: Norm = "batch"
) -> ResNet:
    """A :class:`ResNet` with ``channels`` per stage and ``blocks`` basic blocks per stage
    (``(16, 32, 64)``, 3: ResNet-20; narrower and shallower versions run on a laptop CPU)."""
    channels_t = _positive_ints(channels, "channels")
    if any(b < a for a, b in itertools.pairwise(channels_t)):
        raise ValueError(f"channels must not decrease from stage to stage, got {channels_t}")
    if isinstance(blocks, bool) or not isinstance(blocks, (int, np.integer)) or blocks < 1:
        raise ValueError(f"blocks must be a positive int, got {blocks!r}")
    blocks_t = int(blocks)
    _check_norm(norm)
    return ResNet(channels_t, blocks_t, norm=norm)


# --------------------------------------------------------------------------------------------
# The flat view: unravel, network, loss, residuals, predictions, evaluation
# --------------------------------------------------------------------------------------------


class Unravel(eqx.Module):
    """Flat ``(D,)`` -> Flax params pytree, keeping ``w``'s dtype (all fields static).

    Unlike ``ravel_pytree``'s closure it is hashable by value (same architecture, same compiled
    program) and does not cast back to the dtype the params were created in.
    """

    treedef: Any = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)

    @property
    def sizes(self) -> Groups:
        return tuple(math.prod(s) for s in self.shapes)

    def __call__(self, w: Array) -> Any:
        dim = sum(self.sizes)
        if w.shape != (dim,):
            raise ValueError(f"w must have shape ({dim},), got {w.shape}")
        leaves, start = [], 0
        for shape, size in zip(self.shapes, self.sizes, strict=True):
            leaves.append(w[start : start + size].reshape(shape))
            start += size
        return jax.tree.unflatten(self.treedef, leaves)


def _cast(x: Array, dtype: Any) -> Array:
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x


class _Network(eqx.Module):
    """The Flax model (static), the unravel map and the fixed head ``(W_head, b_head)``."""

    model: nn.Module = eqx.field(static=True)
    unravel: Unravel
    head_weight: Array  # (F, C)
    head_bias: Array  # (C,)

    def _head(self, feats: Array, dtype: Any) -> Array:
        return feats @ self.head_weight.astype(dtype) + self.head_bias.astype(dtype)

    def train_outputs(self, w: Array, x: Array) -> tuple[Array, Any]:
        """Outputs ``(N, C)`` with batch statistics of ``x``, and the collected statistics."""
        params = self.unravel(w)
        feats, state = cast(
            tuple[Array, Any],
            self.model.apply(
                {"params": params}, _cast(x, w.dtype), train=True, mutable=["batch_stats"]
            ),
        )
        return self._head(feats, w.dtype), state

    def eval_outputs(self, w: Array, state: Any, x: Array) -> Array:
        """Outputs ``(N, C)`` normalized with the given (training) statistics."""
        variables = {"params": self.unravel(w), **state}
        feats = cast(Array, self.model.apply(variables, _cast(x, w.dtype), train=False))
        return self._head(feats, w.dtype)


def _targets(y: Array, num_outputs: int, dtype: Any) -> Array:
    """One-hot rows for integer labels, the float targets otherwise (``(N, C)``)."""
    if jnp.issubdtype(y.dtype, jnp.integer):
        return jax.nn.one_hot(y, num_outputs, dtype=dtype)
    return y.astype(dtype)


def _loss_value(kind: str, out: Array, y: Array) -> Array:
    if kind == "ce":
        logp = jax.nn.log_softmax(out, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
    diff = out - _targets(y, out.shape[1], out.dtype)
    return 0.5 * jnp.mean(jnp.sum(diff * diff, axis=1))


def _check_w(w: Array) -> None:
    if w.ndim != 1 or not jnp.issubdtype(w.dtype, jnp.floating):
        raise ValueError(f"w must be a flat floating vector (D,), got {w.shape} {w.dtype}")


class NetLoss(eqx.Module):
    """The flat training loss ``(D,) -> ()`` (MSE or CE, module docstring); data are leaves."""

    network: _Network
    x: Array
    y: Array
    kind: str = eqx.field(static=True)

    def __call__(self, w: Array) -> Array:
        _check_w(w)
        out, _ = self.network.train_outputs(w, self.x)
        return _loss_value(self.kind, out, self.y)


class NetResiduals(eqx.Module):
    """``r(w) = vec(f(X) - Y) / sqrt(N)``, shape ``(N*C,)``: ``|r|^2 / 2`` is the MSE loss."""

    network: _Network
    x: Array
    y: Array

    def __call__(self, w: Array) -> Array:
        _check_w(w)
        out, _ = self.network.train_outputs(w, self.x)
        diff = out - _targets(self.y, out.shape[1], out.dtype)
        return diff.reshape(-1) / jnp.sqrt(jnp.asarray(out.shape[0], out.dtype))


class NetPredict(eqx.Module):
    """``(w, x) -> (N, C)`` outputs on any inputs ``x``, normalized with training statistics."""

    network: _Network
    x_train: Array

    def __call__(self, w: Array, x: Array) -> Array:
        _check_w(w)
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[1:] != self.x_train.shape[1:]:
            raise ValueError(
                f"x must have shape (N, {', '.join(map(str, self.x_train.shape[1:]))}) like the "
                f"training inputs, got {x.shape}"
            )
        _, state = self.network.train_outputs(w, self.x_train)
        return self.network.eval_outputs(w, state, x)


class NetEvaluate(eqx.Module):
    """``w -> dict`` of train/test metrics (jit-friendly, vmappable over rows of ``w``).

    Keys: ``train_loss``, ``test_loss`` and, with integer labels, ``train_accuracy``,
    ``test_accuracy`` (argmax of the outputs); with float targets ``train_rel_error``,
    ``test_rel_error`` (``|f(X) - Y|_F / |Y|_F``). Test outputs use the training statistics.
    """

    network: _Network
    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array
    kind: str = eqx.field(static=True)

    def __call__(self, w: Array) -> dict[str, Array]:
        _check_w(w)
        out_train, state = self.network.train_outputs(w, self.x_train)
        out_test = self.network.eval_outputs(w, state, self.x_test)
        metrics = {
            "train_loss": _loss_value(self.kind, out_train, self.y_train),
            "test_loss": _loss_value(self.kind, out_test, self.y_test),
        }
        for split, out, y in (("train", out_train, self.y_train), ("test", out_test, self.y_test)):
            if jnp.issubdtype(y.dtype, jnp.integer):
                hits = jnp.argmax(out, axis=-1) == y
                metrics[f"{split}_accuracy"] = jnp.mean(hits.astype(out.dtype))
            else:
                t = y.astype(out.dtype)
                metrics[f"{split}_rel_error"] = jnp.linalg.norm(out - t) / jnp.linalg.norm(t)
        return metrics


class NetProblem(NamedTuple):
    """A network training problem in the simulator's flat convention.

    Attributes:
        loss: the flat scale-invariant training loss ``(D,) -> ()`` (:class:`NetLoss`).
        w0: ``(D,)`` initial weights (Flax default init times ``init_scale`` per tensor).
        groups: contiguous block sizes, one per trained tensor (``groups="all"``: ``(D,)``).
        unravel: ``(D,) -> params`` pytree (:class:`Unravel`).
        evaluate: ``w -> dict`` of metrics (:class:`NetEvaluate`).
        predict: ``(w, x) -> (N, C)`` outputs with training statistics (:class:`NetPredict`).
        residuals: ``w -> (N*C,)`` with ``|r|^2/2 = loss`` for MSE; ``None`` for CE.
        names: path of each trained tensor in the Flax params (``"dense_00/kernel"``), in
            flat order (with ``groups="layer"``, one per group).
        config: the builder's arguments (JSON-able, for provenance).
    """

    loss: LossFn
    w0: Array
    groups: Groups
    unravel: Unravel
    evaluate: NetEvaluate
    predict: NetPredict
    residuals: NetResiduals | None
    names: tuple[str, ...]
    config: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def _resolve_dtype(dtype: Any) -> np.dtype:
    """``dtype`` (default: float64 with x64 enabled, else float32); float64 needs x64."""
    if dtype is None:
        return np.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))
    want = np.dtype(dtype)
    if not np.issubdtype(want, np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {want}")
    got = np.dtype(jax.dtypes.canonicalize_dtype(want))
    if got != want:
        raise ValueError(
            f"dtype {want} needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) "
            "at program start, or ask for float32"
        )
    return want


def _shape_str(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_inputs(model: nn.Module, x_train: np.ndarray, x_test: np.ndarray) -> None:
    ndim = getattr(model, "input_ndim", None)
    if ndim is not None and x_train.ndim != ndim:
        layout = {2: "(N, features)", 4: "(N, H, W, C)"}.get(ndim, f"{ndim}-D")
        raise ValueError(
            f"x_train must have shape {layout} for {type(model).__name__}, got {x_train.shape}"
            + ("; flatten images with x.reshape(len(x), -1)" if ndim == 2 else "")
        )
    if x_train.ndim < 1 or x_train.shape[0] < 1:
        raise ValueError(f"x_train must have shape (N, ...) with N >= 1, got {x_train.shape}")
    if x_test.shape[1:] != x_train.shape[1:] or x_test.ndim != x_train.ndim:
        expected = _shape_str(("N_test", *x_train.shape[1:]))
        raise ValueError(
            f"x_test must have shape {expected} to match the model's input (set by x_train "
            f"{x_train.shape}), got {x_test.shape}"
        )


def _check_labels(
    y: np.ndarray, n: int, name: str, x_name: str, loss: str, num_outputs: int | None
) -> int:
    """Validate ``y`` against ``n`` inputs; return the number of outputs."""
    if np.issubdtype(y.dtype, np.integer):
        if y.shape != (n,):
            raise ValueError(
                f"{name} (integer labels) must have shape ({n},) like {x_name}, got {y.shape}"
            )
        if num_outputs is None:
            raise ValueError("num_outputs is required with integer labels")
        if y.size and (y.min() < 0 or y.max() >= num_outputs):
            raise ValueError(
                f"{name} labels must lie in [0, {num_outputs}) (num_outputs={num_outputs}), "
                f"got values in [{y.min()}, {y.max()}]"
            )
        return num_outputs
    if not np.issubdtype(y.dtype, np.floating):
        raise ValueError(f"{name} must be integer labels or float targets, got dtype {y.dtype}")
    if loss == "ce":
        raise ValueError(f"loss='ce' needs integer labels, but {name} has dtype {y.dtype}")
    if y.ndim != 2 or y.shape[0] != n:
        c = "C" if num_outputs is None else num_outputs
        raise ValueError(
            f"{name} (float targets) must have shape ({n}, {c}) like {x_name}, got {y.shape}"
        )
    if num_outputs is not None and y.shape[1] != num_outputs:
        raise ValueError(
            f"{name} must have shape ({n}, {num_outputs}) for num_outputs={num_outputs}, "
            f"got {y.shape}"
        )
    return int(y.shape[1])


def _init_scales(init_scale: float | Sequence[float], k: int) -> np.ndarray:
    scales = (
        np.broadcast_to(np.asarray(init_scale, np.float64), (k,))
        if np.ndim(init_scale) == 0
        else np.asarray(init_scale, np.float64)
    )
    if scales.shape != (k,):
        raise ValueError(
            f"init_scale must be a float or one value per trained tensor ({k}), got "
            f"{np.shape(init_scale)}"
        )
    check.all_positive(scales.tolist(), "init_scale")
    return scales


def _flatten(
    params: Any, scales_arg: float | Sequence[float], dtype: np.dtype
) -> tuple[Array, Unravel, tuple[str, ...], np.ndarray]:
    with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = tuple("/".join(str(getattr(k, "key", k)) for k in path) for path, _ in with_path)
    scales = _init_scales(scales_arg, len(with_path))
    leaves = [
        np.asarray(leaf, np.float64) * s for (_, leaf), s in zip(with_path, scales, strict=True)
    ]
    unravel = Unravel(treedef, tuple(tuple(int(d) for d in leaf.shape) for leaf in leaves))
    w0 = jnp.asarray(np.concatenate([leaf.ravel() for leaf in leaves]), dtype)
    return w0, unravel, names, scales


def _assemble(
    network: _Network,
    w0: Array,
    names: tuple[str, ...],
    groups: str,
    kind: str,
    data: tuple[Array, Array, Array, Array],
    config: dict[str, Any],
) -> NetProblem:
    if groups == "layer":
        sizes: Groups = network.unravel.sizes
    elif groups == "all":
        sizes = (int(w0.shape[0]),)
    else:
        raise ValueError(f"groups must be 'layer' or 'all', got {groups!r}")
    x_tr, y_tr, x_te, y_te = data
    loss = NetLoss(network, x_tr, y_tr, kind)
    residuals = NetResiduals(network, x_tr, y_tr) if kind == "mse" else None
    return NetProblem(
        loss=loss,
        w0=w0,
        groups=sizes,
        unravel=network.unravel,
        evaluate=NetEvaluate(network, x_tr, y_tr, x_te, y_te, kind),
        predict=NetPredict(network, x_tr),
        residuals=residuals,
        names=names,
        config=config,
    )


def make_problem(
    model: nn.Module,
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    loss: LossKind = "ce",
    num_outputs: int | None = None,
    seed: int = 0,
    groups: Literal["layer", "all"] = "layer",
    init_scale: float | Sequence[float] = 1.0,
    dtype: Any = None,
) -> NetProblem:
    """Flatten a normalized Flax model with a fixed random last layer into a :class:`NetProblem`.

    ``f(x) = features(x) @ W_head`` with ``features`` the Flax ``model`` (called as
    ``model.apply(variables, x, train=...)``, returning ``(N, F)``) and ``W_head`` ``(F, C)``
    drawn from ``seed`` with Flax's default ``Dense`` init and held fixed. Losses, evaluation
    and the invariance rules: module docstring.

    Args:
        model: e.g. :func:`mlp`, :func:`vgg` or :func:`resnet` (or any linen module following
            the rules).
        x_train: training inputs ``(N, ...)`` (``(N, F)`` for an MLP, NHWC for a CNN).
        y_train: integer labels ``(N,)`` in ``[0, num_outputs)``, or float targets ``(N, C)``
            (``loss="mse"`` only).
        x_test: test inputs, same trailing shape as ``x_train``.
        y_test: test labels/targets like ``y_train``.
        loss: ``"mse"`` or ``"ce"``.
        num_outputs: ``C`` (required with integer labels; inferred from float targets).
        seed: PRNG seed of the init and the fixed head.
        groups: ``"layer"`` -- one scale-invariance group per trained tensor; ``"all"`` -- one
            group (invariance to the global scale only, implied by the per-layer one).
        init_scale: factor applied to the default init of every trained tensor (a float), or
            one factor per tensor (in ``names`` order); sets the initial effective LRs.
        dtype: of ``w0`` and the data (default float64 with x64 enabled, else float32). The
            loss computes in the dtype of its argument ``w``.

    Raises:
        ValueError: inputs, labels or options of the wrong shape/type, naming the argument.
    """
    if loss not in ("mse", "ce"):
        raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")
    if groups not in ("layer", "all"):
        raise ValueError(f"groups must be 'layer' or 'all', got {groups!r}")
    if num_outputs is not None and (
        isinstance(num_outputs, bool)
        or not isinstance(num_outputs, (int, np.integer))
        or num_outputs < 1
    ):
        raise ValueError(f"num_outputs must be a positive int, got {num_outputs!r}")
    dt = _resolve_dtype(dtype)
    xs = [np.asarray(a) for a in (x_train, x_test)]
    ys = [np.asarray(a) for a in (y_train, y_test)]
    _check_inputs(model, xs[0], xs[1])
    c = _check_labels(ys[0], len(xs[0]), "y_train", "x_train", loss, num_outputs)
    _check_labels(ys[1], len(xs[1]), "y_test", "x_test", loss, c)
    if np.issubdtype(ys[0].dtype, np.integer) != np.issubdtype(ys[1].dtype, np.integer):
        raise ValueError("y_train and y_test must both be integer labels or both float targets")
    if getattr(model, "norm", None) == "batch" and len(xs[0]) < 2:
        raise ValueError(f"BatchNorm needs at least 2 training samples, got {len(xs[0])}")

    key_init, key_head = jax.random.split(jax.random.PRNGKey(seed))
    probe = jnp.asarray(xs[0][: min(len(xs[0]), 8)], dt)
    # Shapes by tracing only; the init compiled without the (dead) forward pass.
    feats, _ = jax.eval_shape(
        functools.partial(model.init_with_output, train=True), key_init, probe
    )
    variables = jax.jit(functools.partial(model.init, train=True))(key_init, probe)
    if len(feats.shape) != 2:
        raise ValueError(f"the model must return features (N, F), got shape {feats.shape}")
    w0, unravel, names, scales = _flatten(variables["params"], init_scale, dt)
    head_w = nn.initializers.lecun_normal()(key_head, (int(feats.shape[1]), c), dt)
    network = _Network(model, unravel, head_w, jnp.zeros((c,), dt))

    def as_data(a: np.ndarray) -> Array:
        return jnp.asarray(a, dt if np.issubdtype(a.dtype, np.floating) else jnp.int32)

    config = {
        "model": repr(model),
        "loss": loss,
        "num_outputs": c,
        "seed": int(seed),
        "groups": groups,
        "init_scale": [float(s) for s in scales],
        "dtype": dt.name,
        "num_train": len(xs[0]),
        "num_test": len(xs[1]),
    }
    data = (as_data(xs[0]), as_data(ys[0]), as_data(xs[1]), as_data(ys[1]))
    return _assemble(network, w0, names, groups, loss, data, config)


# --------------------------------------------------------------------------------------------
# Matrix completion
# --------------------------------------------------------------------------------------------


class MatrixCompletionData(NamedTuple):
    """A matrix-completion instance (NumPy): ``target`` ``(n, m)`` and index pairs ``(K, 2)``."""

    target: np.ndarray
    train_idx: np.ndarray
    test_idx: np.ndarray


def matrix_completion_data(
    num_rows: int,
    num_cols: int,
    *,
    true_rank: int,
    num_observed: int,
    seed: int = 0,
) -> MatrixCompletionData:
    """Random rank-``true_rank`` ``M* = U* V*^T``, ``num_observed`` entries observed.

    ``U*, V*`` have i.i.d. Gaussian entries of standard deviation ``true_rank^{-1/4}``, so
    the entries of ``M*`` have unit variance. ``Omega`` (``train_idx``) is uniform without
    replacement; all other entries are held out (``test_idx``). Identifiability needs roughly
    ``num_observed >> (num_rows + num_cols) true_rank``.
    """
    num_rows, num_cols, true_rank, num_observed = _positive_ints(
        (num_rows, num_cols, true_rank, num_observed),
        "(num_rows, num_cols, true_rank, num_observed)",
    )
    if num_observed >= num_rows * num_cols:
        raise ValueError(
            f"num_observed must be < num_rows * num_cols = {num_rows * num_cols} (held-out "
            f"entries are the test set), got {num_observed}"
        )
    rng = np.random.default_rng(seed)
    s = true_rank**-0.25
    target = (s * rng.standard_normal((num_rows, true_rank))) @ (
        s * rng.standard_normal((num_cols, true_rank))
    ).T
    perm = rng.permutation(num_rows * num_cols)
    pairs = np.stack(np.unravel_index(perm, (num_rows, num_cols)), axis=1).astype(np.int32)
    return MatrixCompletionData(target, pairs[:num_observed], pairs[num_observed:])


def make_matrix_completion(
    data: MatrixCompletionData,
    *,
    rank: int,
    seed: int = 0,
    norm: Literal["batch", "none"] = "batch",
    groups: Literal["layer", "all"] = "layer",
    init_scale: float | Sequence[float] = 1.0,
    dtype: Any = None,
) -> NetProblem:
    """Matrix completion with BatchNorm (module docstring): a :class:`NetProblem`, MSE, ``C=1``.

    Groups ``(n k, m k)`` for ``U``, ``V`` (each initialized with unit Frobenius norm times
    ``init_scale``). ``norm="none"`` is plain factorization ``p_ij`` with no BN and no affine
    map (not invariant). Test metrics are on ``data.test_idx`` with the training statistics.
    """
    rank = _positive_ints((rank,), "rank")[0]
    _check_norm(norm, ("batch", "none"))
    target = np.asarray(data.target, np.float64)
    if target.ndim != 2:
        raise ValueError(f"data.target must be a matrix (n, m), got shape {target.shape}")
    n, m = target.shape
    idx = []
    for name in ("train_idx", "test_idx"):
        pairs = np.asarray(getattr(data, name))
        if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
            raise ValueError(f"data.{name} must be integer index pairs (K, 2), got {pairs.shape}")
        if pairs.size and (pairs.min() < 0 or pairs[:, 0].max() >= n or pairs[:, 1].max() >= m):
            raise ValueError(f"data.{name} must index a ({n}, {m}) matrix")
        idx.append(pairs.astype(np.int32))
    if len(idx[0]) < 2:
        raise ValueError(f"data.train_idx needs at least 2 observed entries, got {len(idx[0])}")
    dt = _resolve_dtype(dtype)
    y_tr = target[idx[0][:, 0], idx[0][:, 1]][:, None]
    y_te = target[idx[1][:, 0], idx[1][:, 1]][:, None]
    model = MatrixFactorization(n, m, rank, norm=norm)
    init = jax.jit(functools.partial(model.init, train=True))
    variables = init(jax.random.PRNGKey(seed), jnp.asarray(idx[0][:2]))
    w0, unravel, names, scales = _flatten(variables["params"], init_scale, dt)
    if norm == "batch":  # fixed affine a z + b: the observed targets' std and mean
        a, b = float(np.std(y_tr)), float(np.mean(y_tr))
    else:
        a, b = 1.0, 0.0
    network = _Network(model, unravel, jnp.full((1, 1), a, dt), jnp.full((1,), b, dt))
    config = {
        "model": repr(model),
        "loss": "mse",
        "num_outputs": 1,
        "seed": int(seed),
        "groups": groups,
        "init_scale": [float(s) for s in scales],
        "dtype": dt.name,
        "num_train": len(idx[0]),
        "num_test": len(idx[1]),
        "head": [a, b],
    }
    arrays = (
        jnp.asarray(idx[0]),
        jnp.asarray(y_tr, dt),
        jnp.asarray(idx[1]),
        jnp.asarray(y_te, dt),
    )
    return _assemble(network, w0, names, groups, "mse", arrays, config)


# --------------------------------------------------------------------------------------------
# Chunked objectives: data that does not fit at once
# --------------------------------------------------------------------------------------------


class NetChunkLoss(eqx.Module):
    """``(w, x_chunk, y_chunk) -> ()``: the training loss (MSE or CE) on one chunk of examples.

    The mean over the chunk, with batch statistics (if any) of the CHUNK: a per-chunk loss for
    :class:`theory.core.objective.Chunked` (see :func:`chunked_objective`).
    """

    network: _Network
    kind: str = eqx.field(static=True)

    def __call__(self, w: Array, x: Array, y: Array) -> Array:
        _check_w(w)
        out, _ = self.network.train_outputs(w, x)
        return _loss_value(self.kind, out, y)


def uses_batch_statistics(loss: NetLoss) -> bool:
    """Whether the network normalizes with statistics over the batch (collects ``batch_stats``).

    Decided by tracing the training pass on two examples (no computation): a Flax ``BatchNorm``
    anywhere in the model collects ``batch_stats``. A model without them is assumed to treat
    examples independently (LayerNorm, no normalization), which holds for every model of this
    module; a custom model that mixes examples some other way is not detected.
    """
    if getattr(loss.network.model, "norm", None) == "batch":
        return True
    dim = sum(loss.network.unravel.sizes)
    w = jax.ShapeDtypeStruct((dim,), loss.network.head_weight.dtype)
    x = jax.ShapeDtypeStruct((min(2, loss.x.shape[0]), *loss.x.shape[1:]), loss.x.dtype)
    _, state = jax.eval_shape(loss.network.train_outputs, w, x)
    return bool(jax.tree.leaves(dict(state).get("batch_stats", {})))


def chunked_objective(
    problem: NetProblem | NetLoss,
    *,
    chunk_size: int,
    ghost_batch: bool = False,
) -> Chunked:
    """The training loss of a network problem as a :class:`theory.core.objective.Chunked` objective.

    The ``N`` training examples are split into ``K = N / chunk_size`` consecutive chunks (in
    the order of ``x_train``) and the loss, gradient and HVPs are accumulated over them in
    ``lax.scan``: memory of one chunk's forward and reverse pass instead of ``N`` examples'.

    * Per-example networks (LayerNorm, ``norm="none"``: no batch statistics). The loss is a mean
      of per-example terms, ``L(w) = (1/N) sum_i l(f(x_i), y_i)``, so the chunked objective IS
      ``problem.loss`` (equal up to rounding, any ``chunk_size`` dividing ``N``).
    * BatchNorm (and matrix completion's BN over observed entries). The full-batch statistics
      do not decompose over examples, so this is a DIFFERENT loss, the *ghost-batch* loss

          ``L_ghost(w) = (1/K) sum_k L_BN(w; chunk_k)``,

      each chunk normalized with its own mean and variance (a mean over the chunk's examples
      only). It is still exactly scale-invariant per trained tensor (each ``L_BN(.; chunk_k)``
      is, module docstring), but its minimizers, sharpness and EoS dynamics are those of
      ghost-batch BN, not of ``problem.loss``; ``problem.evaluate``/``predict`` still use the
      full-batch statistics. It must be asked for with ``ghost_batch=True`` (else ValueError),
      except ``chunk_size = N``: one chunk, ``problem.loss`` itself. Each chunk needs ``>= 2``
      examples (one example has zero variance: the loss is undefined with ``eps = 0``).

    ``ghost_batch=True`` on a network without batch statistics changes nothing (the loss is the
    full-batch one).

    Args:
        problem: a :class:`NetProblem` from :func:`make_problem` / :func:`make_matrix_completion`,
            or its ``loss`` (a :class:`NetLoss`).
        chunk_size: examples per chunk, a positive int dividing ``N`` (``len(x_train)``).
        ghost_batch: opt in to per-chunk BatchNorm statistics (required with BatchNorm).

    Returns:
        ``Chunked(NetChunkLoss(network, kind), (x_train, y_train), chunk_size=chunk_size)``: a
        loss ``(D,) -> ()`` and a :class:`theory.core.objective.Objective`.

    Raises:
        TypeError: ``problem`` is not a NetProblem/NetLoss, ``ghost_batch`` not a bool,
            ``chunk_size`` not an int.
        ValueError: ``chunk_size`` not positive or not dividing ``N``; BatchNorm without
            ``ghost_batch=True``; ghost batches of one example.
    """
    loss = problem.loss if isinstance(problem, NetProblem) else problem
    if not isinstance(loss, NetLoss):
        raise TypeError(
            f"problem must be a NetProblem (from make_problem) or its NetLoss, got "
            f"{type(problem).__name__}"
        )
    if not isinstance(ghost_batch, (bool, np.bool_)):
        raise TypeError(f"ghost_batch must be a bool, got {ghost_batch!r}")
    n = int(loss.x.shape[0])
    if uses_batch_statistics(loss) and not (isinstance(chunk_size, int) and chunk_size == n):
        if not ghost_batch:
            raise ValueError(
                "this network uses BatchNorm, whose full-batch statistics do not decompose "
                "over chunks: a chunked objective is the different ghost-batch loss (BN "
                f"statistics per chunk of chunk_size examples, got chunk_size = {chunk_size!r}). "
                "Pass ghost_batch=True to ask for it explicitly, or chunk_size = N = "
                f"{n} (one chunk: the full-batch loss)"
            )
        if not isinstance(chunk_size, bool) and chunk_size == 1:
            raise ValueError(
                "chunk_size must be >= 2 with ghost-batch BatchNorm (a ghost batch of one "
                "example has zero variance: the loss is undefined with eps = 0), got 1"
            )
    return Chunked(NetChunkLoss(loss.network, loss.kind), (loss.x, loss.y), chunk_size=chunk_size)
