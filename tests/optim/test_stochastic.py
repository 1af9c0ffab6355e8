"""Optax optimizers on minibatches (theory/optim/stochastic.py): SGD, SAM and IRE on step batches.

Oracles: the batches are recomputed here from the epoch rule (``permutation(fold_in(key, epoch))``,
consecutive slices, drop-last) and every step is written out by hand in NumPy for a linear
least-squares model, whose gradient, SAM perturbation and Hessian diagonal have closed forms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from theory.core.minibatch import Minibatch
from theory.engine import SaveAt
from theory.optim.ire import dense_hessian_diagonal, diagonal_mask, fisher_diagonal, ire
from theory.optim.stochastic import MinibatchOptax, run_optimizer_minibatch
from theory.optim.transforms import gd_wd_transform, sam

N, B, D = 24, 6, 5


def lsq(w: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean over the batch of (x_i . w - y_i)^2 / 2."""
    return 0.5 * jnp.mean((x @ w - y) ** 2)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N, D)) * np.linspace(0.3, 2.0, D)  # distinct per-coordinate curvature
    return x, rng.normal(size=N)


def _batch_ids(t: int, key: jax.Array) -> np.ndarray:
    """Step t's example indices under the epoch scheme (the independent oracle)."""
    spe = N // B
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, t // spe), N))
    i = t % spe
    return perm[i * B : (i + 1) * B]


def _grad(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x.T @ (x @ w - y) / x.shape[0]


def test_sgd_wd_on_minibatches_is_the_hand_written_loop() -> None:
    x, y = _data()
    key = jax.random.PRNGKey(5)
    eta, wd, steps = 0.1, 0.01, 10  # 10 steps: two epochs and a half (spe = 4)
    w0 = np.linspace(-1, 1, D)
    res = run_optimizer_minibatch(
        gd_wd_transform(eta, wd), lsq, jnp.asarray(w0), (x, y), B, steps, key=key
    )
    w = w0.copy()
    ref = [w.copy()]
    for t in range(steps):
        ids = _batch_ids(t, key)
        w = w - eta * (_grad(w, x[ids], y[ids]) + wd * w)
        ref.append(w.copy())
    np.testing.assert_allclose(res.w, np.stack(ref), rtol=1e-12, atol=1e-14)  # rows 0..steps
    # the recorded loss is that of the step's batch
    ids0 = _batch_ids(0, key)
    np.testing.assert_allclose(res.loss[0], 0.5 * np.mean((x[ids0] @ w0 - y[ids0]) ** 2), 1e-12)


def test_sam_step_on_the_batch_is_the_hand_computed_sam_step() -> None:
    """SAM + weight decay + SGD: g = grad_B(w), e = rho g/|g|, w' = w - eta (grad_B(w + e) + wd w),
    every gradient on the SAME batch B_t."""
    x, y = _data()
    key = jax.random.PRNGKey(11)
    eta, wd, rho, steps = 0.05, 0.02, 0.3, 7
    w0 = np.linspace(0.5, -0.7, D)
    opt = optax.chain(sam(lsq, rho), optax.add_decayed_weights(wd), optax.sgd(eta))
    res = run_optimizer_minibatch(opt, lsq, jnp.asarray(w0), (x, y), B, steps, key=key)
    w = w0.copy()
    for t in range(steps):
        ids = _batch_ids(t, key)
        g = _grad(w, x[ids], y[ids])
        e = rho * g / np.linalg.norm(g)
        w = w - eta * (_grad(w + e, x[ids], y[ids]) + wd * w)
    np.testing.assert_allclose(res.w[-1], w, rtol=1e-12, atol=1e-14)
    # and it differs from plain SGD + WD by more than rounding (the perturbation matters)
    plain = run_optimizer_minibatch(
        gd_wd_transform(eta, wd), lsq, jnp.asarray(w0), (x, y), B, steps, key=key
    )
    assert np.max(np.abs(np.asarray(plain.w[-1]) - w)) > 1e-3


@pytest.mark.parametrize("base", ["sgd", "sam"])
def test_ire_mask_is_refreshed_on_the_step_batch(base: str) -> None:
    """IRE with the exact Hessian diagonal: at refresh steps t = warmup + jK the mask holds the
    gamma-fraction of coordinates with the smallest mean_{i in B_t} x_ij^2 (the linear model's
    Hessian diagonal on that batch), and each step is w' = w + u + kappa * mask * u."""
    x, y = _data()
    key = jax.random.PRNGKey(2)
    eta, wd, rho, kappa, gamma, k_every, warm, steps = 0.05, 0.01, 0.2, 3.0, 0.6, 3, 2, 11
    w0 = np.linspace(-0.4, 0.9, D)
    inner = gd_wd_transform(eta, wd)
    if base == "sam":
        inner = optax.chain(sam(lsq, rho), optax.add_decayed_weights(wd), optax.sgd(eta))
    sel = diagonal_mask(dense_hessian_diagonal(lsq), gamma, refresh_every=k_every, warmup=warm)
    res = run_optimizer_minibatch(
        ire(inner, kappa, sel), lsq, jnp.asarray(w0), (x, y), B, steps, key=key
    )
    m = round(gamma * D)
    w, mask = w0.copy(), np.zeros(D)
    for t in range(steps):
        ids = _batch_ids(t, key)
        xb, yb = x[ids], y[ids]
        g = _grad(w, xb, yb)
        if base == "sam":
            g = _grad(w + rho * g / np.linalg.norm(g), xb, yb)
        u = -eta * (g + wd * w)
        if t >= warm and (t - warm) % k_every == 0:
            diag = np.mean(xb**2, axis=0)
            mask = np.zeros(D)
            mask[np.argsort(diag, kind="stable")[:m]] = 1.0
        w = w + u + (kappa * mask * u if t >= warm else 0.0)
    np.testing.assert_allclose(res.final_state.flat.mask, mask)
    np.testing.assert_allclose(res.w[-1], w, rtol=1e-12, atol=1e-14)


def _linear_logits(w: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    return x @ w.reshape(D, 3)


def _ce(w: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(_linear_logits(w, x, y), y).mean()


def test_fisher_mask_is_estimated_on_the_batch_of_the_refresh_step() -> None:
    """The sampled-label Fisher diagonal stored at the last refresh is fisher_diagonal at that
    step's iterate, key fold_in(PRNGKey(seed), t) and batch B_t -- not the whole data's."""
    x, _ = _data()
    labels = np.arange(N) % 3
    key = jax.random.PRNGKey(4)
    steps, k_every, seed = 8, 3, 9
    w0 = jnp.asarray(np.random.default_rng(0).normal(size=3 * D))
    fisher = fisher_diagonal(_linear_logits)
    sel = diagonal_mask(fisher, 0.5, refresh_every=k_every)
    opt = ire(gd_wd_transform(0.1, 0.0), 2.0, sel, seed=seed)
    res = run_optimizer_minibatch(
        opt, _ce, w0, (x, labels), B, steps, key=key, saveat=SaveAt(every=1)
    )
    t_last = ((steps - 1) // k_every) * k_every  # 6
    ids = _batch_ids(t_last, key)
    k_t = jax.random.fold_in(jax.random.PRNGKey(seed), t_last)
    est = jax.jit(fisher)
    want = est(jnp.asarray(res.w[t_last]), k_t, x[ids], labels[ids])
    np.testing.assert_allclose(res.final_state.flat.diag, want, rtol=1e-10)
    whole = est(jnp.asarray(res.w[t_last]), k_t, x, labels)
    assert np.max(np.abs(np.asarray(whole) - np.asarray(want))) > 1e-4


@pytest.mark.parametrize(("scheme", "batch"), [("epoch", B), ("epoch", N), ("iid", B)])
def test_cached_epoch_permutation_gives_the_minibatch_indices(scheme: str, batch: int) -> None:
    """The method keeps the epoch's permutation in its state; its indices equal
    Minibatch.indices at every step of three epochs (compiled, state carried as in a run)."""
    x, y = _data()
    key = jax.random.PRNGKey(8)
    mb = Minibatch(lsq, (x, y), batch, scheme=scheme)  # type: ignore[arg-type]
    method = MinibatchOptax(
        optax.with_extra_args_support(optax.sgd(0.1)), lambda w: w, (), mb, jnp.asarray(0.1)
    )
    steps = 3 * (N // batch) + 1

    def body(state, t):
        idx, perm, epoch = method.indices(t, key, state)
        return state._replace(perm=perm, epoch=epoch), idx

    _, got = jax.lax.scan(body, method.init(jnp.zeros(D)), jnp.arange(steps))
    want = np.stack([np.asarray(mb.indices(t, key)) for t in range(steps)])
    np.testing.assert_array_equal(got, want)


def test_bad_inputs_name_the_value() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match=f"batch_size = {N + 1} is larger than the data: N = {N}"):
        run_optimizer_minibatch(optax.sgd(0.1), lsq, jnp.zeros(D), (x, y), N + 1, 2)
    with pytest.raises(TypeError, match="loss_args must be a tuple, got list"):
        run_optimizer_minibatch(optax.sgd(0.1), lsq, jnp.zeros(D), (x, y), B, 2, loss_args=[])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"steps \(5\) must be a multiple of SaveAt.every \(2\)"):
        run_optimizer_minibatch(
            optax.sgd(0.1), lsq, jnp.zeros(D), (x, y), B, 5, saveat=SaveAt(every=2)
        )
