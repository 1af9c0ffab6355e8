"""The minibatch objective: batches against explicit index arithmetic, losses against the loss
evaluated by hand on the gathered examples, the per-example-mean contract (an epoch's batch
losses average to the whole loss), reproducibility and the error messages."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory.core.minibatch import Minibatch
from theory.core.objective import step_objective

N, F = 23, 4


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, F)), rng.normal(size=(N,))


def _loss(w, x, y):
    return jnp.mean((jnp.tanh(x @ (w / jnp.linalg.norm(w))) - y) ** 2)


def test_epoch_batches_are_slices_of_one_permutation_per_epoch() -> None:
    x, y = _data()
    mb = Minibatch(_loss, (x, y), 5)
    key = jax.random.PRNGKey(3)
    assert mb.steps_per_epoch == 4  # 23 // 5, the last 3 of each permutation dropped
    for t in range(10):
        e, i = divmod(t, 4)
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, e), N))
        np.testing.assert_array_equal(mb.indices(t, key), perm[5 * i : 5 * i + 5])
    epoch = np.concatenate([np.asarray(mb.indices(t, key)) for t in range(4)])
    assert len(set(epoch.tolist())) == 20  # no example twice within an epoch


def test_iid_batches_are_distinct_draws_from_the_step_key() -> None:
    x, y = _data()
    key = jax.random.PRNGKey(1)
    mb = Minibatch(_loss, (x, y), 7, scheme="iid")
    for t in (0, 1, 5):
        idx = np.asarray(mb.indices(t, key))
        expected = jax.random.choice(jax.random.fold_in(key, t), N, (7,), replace=False)
        np.testing.assert_array_equal(idx, expected)
        assert len(set(idx.tolist())) == 7
    with_repl = Minibatch(_loss, (x, y), 7, scheme="iid", replace=True)
    expected = jax.random.choice(jax.random.fold_in(key, 2), N, (7,), replace=True)
    np.testing.assert_array_equal(with_repl.indices(2, key), expected)
    # The same key gives the same batches; another key others.
    np.testing.assert_array_equal(mb.indices(4, key), mb.indices(4, jax.random.PRNGKey(1)))
    assert not np.array_equal(mb.indices(4, key), mb.indices(4, jax.random.PRNGKey(2)))


@pytest.mark.slow  # ~9-10 s on an idle core (default suite budget)
def test_the_batch_objective_is_the_loss_of_the_gathered_examples() -> None:
    x, y = _data(1)
    mb = Minibatch(_loss, (x, y), 6)
    key = jax.random.PRNGKey(0)
    w = jnp.asarray(np.random.default_rng(5).normal(size=F))
    t = jnp.asarray(7)
    idx = np.asarray(mb.indices(t, key))
    by_hand = lambda v: _loss(v, jnp.asarray(x[idx]), jnp.asarray(y[idx]))  # noqa: E731
    draw = step_objective(mb, t, key)
    val, grad = draw.value_and_grad(w)
    np.testing.assert_allclose(val, by_hand(w), rtol=1e-13)
    np.testing.assert_allclose(grad, jax.grad(by_hand)(w), rtol=1e-12, atol=1e-15)
    v = jnp.ones(F)
    _, _, hv = draw.value_grad_hvp(w, v)
    np.testing.assert_allclose(hv, jax.hessian(by_hand)(w) @ v, rtol=1e-10, atol=1e-13)
    # Under jit with a traced step: the same batch.
    val_jit = eqx.filter_jit(lambda m, s, k: m.at(s, k)(w))(mb, t, key)
    np.testing.assert_allclose(val_jit, val, rtol=1e-13)
    # The whole objective is the loss on all the data.
    whole = lambda v: _loss(v, jnp.asarray(x), jnp.asarray(y))  # noqa: E731
    np.testing.assert_allclose(mb(w), whole(w), rtol=1e-13)
    np.testing.assert_allclose(mb.value_and_grad(w)[1], jax.grad(whole)(w), rtol=1e-12)
    (_, _), hvp = mb.linearize(w)
    np.testing.assert_allclose(hvp(v), jax.hessian(whole)(w) @ v, rtol=1e-10, atol=1e-13)


def test_an_epochs_batch_losses_average_to_the_whole_loss() -> None:
    """The per-example-mean contract: with b dividing N, one epoch covers every example once."""
    x, y = _data(2)
    x, y = x[:20], y[:20]
    mb = Minibatch(_loss, (x, y), 4)
    key = jax.random.PRNGKey(9)
    w = jnp.asarray(np.random.default_rng(6).normal(size=F))
    mean = np.mean([float(mb.at(t, key)(w)) for t in range(5, 10)])  # epoch 1
    np.testing.assert_allclose(mean, mb(w), rtol=1e-13)


def test_a_full_batch_is_the_data_in_order() -> None:
    x, y = _data()
    for scheme in ("epoch", "iid"):
        mb = Minibatch(_loss, (x, y), N, scheme=scheme)  # type: ignore[arg-type]
        np.testing.assert_array_equal(mb.indices(3, jax.random.PRNGKey(0)), np.arange(N))


def test_bad_batch_settings_are_refused_with_the_numbers() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match=r"batch_size = 24 is larger than the data: N = 23"):
        Minibatch(_loss, (x, y), 24)
    with pytest.raises(ValueError, match=r"batch_size must be a positive int \(>= 1\), got 0"):
        Minibatch(_loss, (x, y), 0)
    with pytest.raises(TypeError, match=r"batch_size must be a positive int, got 2\.5"):
        Minibatch(_loss, (x, y), 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scheme must be 'epoch' or 'iid', got 'cyclic'"):
        Minibatch(_loss, (x, y), 4, scheme="cyclic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replace=True needs scheme='iid'"):
        Minibatch(_loss, (x, y), 4, replace=True)
    with pytest.raises(TypeError, match="loss_fn must be a callable"):
        Minibatch(3, (x, y), 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same leading example axis"):
        Minibatch(_loss, (x, y[:5]), 4)
