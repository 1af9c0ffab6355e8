"""A tiny flax (linen) CNN for the bad-input tests, made scale-invariant the way a user would.

Conv 2 3x3 -> BatchNorm -> relu -> avg_pool -> Dense 3 -> BatchNorm -> relu -> a fixed random
readout to 3 outputs; one-hot MSE on 8 random 6x6 images. With ``NetSpec()`` (no biases,
BatchNorm in train mode without affine parameters, epsilon=0) the loss is invariant to the scale
of each trained kernel (two groups); each other setting breaks that in the way named.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from theory.core.invariance import FlatLoss, flatten_loss


@dataclasses.dataclass(frozen=True)
class NetSpec:
    use_scale: bool = False  # BatchNorm's affine scale (a trained parameter, init ones)
    use_bias: bool = False  # BatchNorm's affine offset (a trained parameter, init zeros)
    epsilon: float = 0.0  # BatchNorm's epsilon
    dense_bias: bool = False  # a bias on the Dense layer before its norm (init zeros)
    last_bias: bool = False  # a trained bias after the last normalization (on the readout)


class TinyCNN(nn.Module):
    spec: NetSpec

    @nn.compact
    def __call__(self, x, readout):
        s = self.spec

        def norm(h):
            return nn.BatchNorm(
                use_running_average=False,
                use_scale=s.use_scale,
                use_bias=s.use_bias,
                epsilon=s.epsilon,
            )(h)

        h = nn.Conv(2, (3, 3), use_bias=False)(x)
        h = nn.avg_pool(nn.relu(norm(h)), (2, 2), (2, 2))
        h = h.reshape(h.shape[0], -1)
        h = nn.relu(norm(nn.Dense(3, use_bias=s.dense_bias)(h)))
        out = h @ readout
        if s.last_bias:
            out = out + self.param("last_bias", nn.initializers.normal(1.0), (out.shape[-1],))
        return out


def _mse(params, x, y, readout, *, model):
    out, _ = model.apply({"params": params}, x, readout, mutable=["batch_stats"])
    return jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def tiny_cnn(spec: NetSpec = NetSpec(), dtype=jnp.float64, seed: int = 0) -> FlatLoss:
    """The flattened loss of :class:`TinyCNN` (one group per leaf) at its flax initialization."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(8, 6, 6, 1)), dtype)
    y = jax.nn.one_hot(jnp.asarray(rng.integers(0, 3, 8)), 3, dtype=dtype)
    readout = jnp.asarray(rng.normal(size=(3, 3)), dtype)
    model = TinyCNN(spec)
    params = model.init(jax.random.PRNGKey(seed), x, readout)["params"]
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    return flatten_loss(
        Partial(functools.partial(_mse, model=model), x=x, y=y, readout=readout), params
    )
