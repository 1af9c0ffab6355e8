"""Minibatch SGD with momentum and weight decay, its trackers and its equilibrium.

Oracles: an explicit Python loop with PyTorch's update drawing the same batches
(``Minibatch.at``); GD+WD for the full batch without momentum (bitwise); the uninterrupted run
for a resumed one (bitwise); dense ``jax.hessian`` + ``eigvalsh`` of the batch and whole losses
at the recorded iterates for the trackers; a simulation of the norm recursion with random
gradients orthogonal to ``w`` for the angular equilibrium; the companion matrix's spectral
radius for the stability edge.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory.core.minibatch import Minibatch
from theory.engine import (
    NoTracking,
    SaveAt,
    StochasticTracker,
    angular_equilibrium,
    sgd_edge,
    sgd_wd,
)
from theory.engine.gd import gd_wd

N, D = 24, 6


def _problem() -> tuple[np.ndarray, np.ndarray, jax.Array]:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(N, D)), rng.normal(size=(N,))
    return x, y, jnp.asarray(rng.normal(size=D))


def _loss(w, x, y):
    """Scale-invariant in ``w`` (one group)."""
    return jnp.mean((jnp.tanh(2.0 * (x @ (w / jnp.linalg.norm(w)))) - y) ** 2)


ETA, WD, BETA, B = 0.8, 0.02, 0.9, 5


def test_engine_iterates_match_a_python_loop_with_the_same_batches() -> None:
    x, y, w0 = _problem()
    key = jax.random.PRNGKey(4)
    steps = 11
    for scheme in ("epoch", "iid"):
        res = sgd_wd(
            _loss, (x, y), w0, eta=ETA, wd=WD, momentum=BETA, batch_size=B, steps=steps,
            scheme=scheme, tracker=NoTracking(), key=key,
        )  # fmt: skip
        mb = Minibatch(_loss, (x, y), B, scheme=scheme)  # type: ignore[arg-type]
        grad = jax.jit(lambda w, t, mb=mb: jax.grad(mb.at(t, key))(w))
        w, m = np.asarray(w0), np.zeros(D)
        for t in range(steps):
            np.testing.assert_allclose(res.w[t], w, rtol=1e-12, atol=1e-14)
            g = np.asarray(grad(jnp.asarray(w), t))
            m = BETA * m + g + WD * w  # PyTorch: the decay enters the buffer
            w = w - ETA * m
        np.testing.assert_allclose(res.w[steps], w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(res.final_state, m, rtol=1e-11, atol=1e-14)


def test_full_batch_without_momentum_is_gd_wd_bitwise() -> None:
    x, y, w0 = _problem()
    sgd = sgd_wd(_loss, (x, y), w0, eta=ETA, wd=WD, batch_size=N, steps=9, tracker=NoTracking())
    whole = Minibatch(_loss, (x, y), N)
    gd = gd_wd(whole, w0, eta=ETA, wd=WD, steps=9, tracker=NoTracking())
    np.testing.assert_array_equal(sgd.w, gd.w)
    np.testing.assert_array_equal(sgd.loss, gd.loss)


def test_a_resumed_run_equals_the_uninterrupted_one_bitwise() -> None:
    x, y, w0 = _problem()
    # The compiled program of test_a_tracker_records_only_what_it_is_asked_for (two blocks per
    # chunk): the momentum buffer, the batches and the tracker's block sums must carry over.
    kw = dict(
        eta=ETA, wd=WD, momentum=BETA, batch_size=B, steps=8, key=jax.random.PRNGKey(2),
        tracker=StochasticTracker(every=2, full=False, step=False), saveat=SaveAt(every=2),
        chunk_steps=4,
    )  # fmt: skip
    snaps = []
    whole = sgd_wd(_loss, (x, y), w0, on_snapshot=snaps.append, **kw)  # type: ignore[arg-type]
    # Resumed from the snapshot after the first chunk (step 4 of 8).
    resumed = sgd_wd(_loss, (x, y), w0, resume=snaps[0], **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(resumed.w, whole.w)
    for name in whole.observed:
        np.testing.assert_array_equal(resumed.observed[name], whole.observed[name])
    np.testing.assert_array_equal(resumed.final_state, whole.final_state)


@pytest.mark.slow  # ~16 s of CPU (the Lanczos tracker's compilation); measured under load
def test_trackers_match_dense_hessians_at_the_recorded_iterates() -> None:
    x, y, w0 = _problem()
    key = jax.random.PRNGKey(7)
    steps = 5
    res = sgd_wd(
        _loss, (x, y), w0, eta=ETA, wd=WD, momentum=BETA, batch_size=B, steps=steps, key=key,
        tracker=StochasticTracker(every=1),
    )  # fmt: skip
    mb = Minibatch(_loss, (x, y), B)
    obs = res.observed

    @jax.jit
    def dense(w, t):  # (batch gradient, batch Hessian, whole Hessian, whole loss, batch loss)
        draw = mb.at(t, key)
        return jax.grad(draw)(w), jax.hessian(draw)(w), jax.hessian(mb)(w), mb(w), draw(w)

    for t in range(steps):
        w = jnp.asarray(res.w[t])
        g, hb, h, full_loss, batch_loss = (np.asarray(a) for a in dense(w, t))
        g2 = float(g @ g)
        np.testing.assert_allclose(obs["batch_sharpness"][t], g @ hb @ g / g2, rtol=1e-9)
        np.testing.assert_allclose(obs["step_sharpness"][t], g @ h @ g / g2, rtol=1e-9)
        u = res.w[t + 1] - res.w[t]
        np.testing.assert_allclose(obs["update_sharpness"][t], u @ h @ u / (u @ u), rtol=1e-9)
        lam = float(np.linalg.eigvalsh(np.asarray(h))[-1])
        np.testing.assert_allclose(obs["full_sharpness"][t], lam, rtol=1e-6)
        np.testing.assert_allclose(res.eos[t], ETA * lam, rtol=1e-6)
        np.testing.assert_allclose(obs["full_loss"][t], full_loss, rtol=1e-12)
        np.testing.assert_allclose(res.loss[t], batch_loss, rtol=1e-12)
        a, b = res.w[t], res.w[t + 1]
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        np.testing.assert_allclose(obs["angle"][t], np.arccos(cos), rtol=1e-7)
        np.testing.assert_allclose(obs["group_angle"][t], [obs["angle"][t]], rtol=1e-12)
        # Rows every step: each row's block is the one step before it.
        if t > 0:
            one_minus = 1 - res.w[t - 1] @ a / (np.linalg.norm(res.w[t - 1]) * np.linalg.norm(a))
            np.testing.assert_allclose(obs["block_one_minus_cos"][t], one_minus, rtol=1e-6)
    assert np.isnan(obs["block_one_minus_cos"][0])


@pytest.mark.slow  # ~9-10 s on an idle core (default suite budget)
def test_a_tracker_records_only_what_it_is_asked_for() -> None:
    x, y, w0 = _problem()
    res = sgd_wd(
        _loss, (x, y), w0, eta=ETA, wd=WD, batch_size=B, steps=4,
        tracker=StochasticTracker(every=2, full=False, step=False), saveat=SaveAt(every=2),
    )  # fmt: skip
    assert sorted(res.observed) == [
        "angle",
        "batch_sharpness",
        "block_group_one_minus_cos",
        "block_one_minus_cos",
        "group_angle",
        "group_grad_norm",
    ]
    # Rows every 2 steps: a row's block mean is over the two steps before it (every iterate
    # from an untracked run with the same key, hence the same batches).
    every = sgd_wd(_loss, (x, y), w0, eta=ETA, wd=WD, batch_size=B, steps=4, tracker=NoTracking()).w
    unit = every / np.linalg.norm(every, axis=1, keepdims=True)
    one_minus = 1 - np.sum(unit[:-1] * unit[1:], axis=1)
    block = res.observed["block_one_minus_cos"]
    assert np.isnan(block[0])
    # The batch sharpness against the dense batch Hessian at the recorded iterates.
    mb = Minibatch(_loss, (x, y), B)
    key = jax.random.PRNGKey(0)  # sgd_wd's default
    for i, t in enumerate(res.step):
        draw = mb.at(int(t), key)
        w = jnp.asarray(res.w[i])
        g, hb = np.asarray(jax.grad(draw)(w)), np.asarray(jax.hessian(draw)(w))
        np.testing.assert_allclose(
            res.observed["batch_sharpness"][i], g @ hb @ g / (g @ g), rtol=1e-9
        )
    np.testing.assert_allclose(block[1:], [one_minus[0:2].mean(), one_minus[2:4].mean()], rtol=1e-6)
    assert np.all(np.isfinite(res.observed["batch_sharpness"]))
    assert np.all(np.isnan(res.eos)) and np.all(res.lanczos_matvecs == 1)


def _norm_recursion(
    eta: float, wd: float, beta: float, steps: int, spread: bool, dim: int = 64
) -> np.ndarray:
    """Per-step angles of heavy-ball SGD+WD driven by random gradients orthogonal to ``w`` with
    the scale-invariant magnitude ``|g| = G / |w|``: ``G = 1``, or with ``spread`` itself random
    (``|N(0, 1)| + 0.2``, so that the angle fluctuates from step to step as under minibatches)."""

    def step(carry, key):
        w, m = carry
        k1, k2 = jax.random.split(key)
        z = jax.random.normal(k1, w.shape)
        z = z - (z @ w) / (w @ w) * w
        size = jnp.abs(jax.random.normal(k2)) + 0.2 if spread else 1.0
        g = size * z / jnp.linalg.norm(z) / jnp.linalg.norm(w)
        m = beta * m + g + wd * w
        w_new = w - eta * m
        cos = w @ w_new / (jnp.linalg.norm(w) * jnp.linalg.norm(w_new))
        return (w_new, m), jnp.arccos(jnp.clip(cos, -1, 1))

    w0 = jnp.ones(dim) / math.sqrt(dim) * 3.0
    keys = jax.random.split(jax.random.PRNGKey(0), steps)
    _, angles = jax.lax.scan(step, (w0, jnp.zeros(dim)), keys)
    return np.asarray(angles)


# Measured relative errors (20000 steps, the last 10000 averaged): beta = 0: 1e-14 (a fixed G
# converges to the exact fixed point), 1.5e-3 with spread; beta = 0.9: 1.4e-3, 1.1e-2 with
# spread (the norm then fluctuates, and E[1 - cos] is not exactly E[d] / (2 E|w|^2)).
@pytest.mark.parametrize(
    ("beta", "spread", "rtol"),
    [(0.0, False, 1e-10), (0.0, True, 5e-3), (0.9, False, 5e-3), (0.9, True, 2e-2)],
)
def test_the_angular_equilibrium_matches_the_norm_recursion(
    beta: float, spread: bool, rtol: float
) -> None:
    eta, wd = 0.1, 0.05  # eta wd = 5e-3: equilibrium within ~1e3 steps
    angles = _norm_recursion(eta, wd, beta, 20_000, spread)
    # The prediction is E[1 - cos theta] = eta wd / (1 + beta) (not the mean angle).
    measured = float(np.arccos(1 - np.mean(1 - np.cos(angles[10_000:]))))
    predicted = angular_equilibrium(eta, wd, beta)
    np.testing.assert_allclose(measured, predicted, rtol=rtol)
    # The naive 1/(1 - beta) rescaling of both rates is far off with momentum.
    if beta > 0:
        assert abs(math.sqrt(2 * eta * wd / (1 - beta)) - measured) > 0.5 * measured
    if spread and beta == 0:  # the step-to-step spread makes the plain mean angle smaller
        assert np.mean(angles[10_000:]) < 0.9 * predicted
    # The first-order form sqrt(2 eta wd / (1 + beta)) is within 0.1% here.
    np.testing.assert_allclose(
        angular_equilibrium(eta, wd, beta, exact=False), predicted, rtol=1e-3
    )


def test_the_edge_is_where_the_heavy_ball_recursion_turns_unstable() -> None:
    for eta, wd, beta in ((0.1, 0.0, 0.0), (0.3, 0.01, 0.9), (0.05, 0.2, 0.5)):
        lam = sgd_edge(eta, wd, beta)
        for scale, expect in ((1 - 1e-6, "<"), (1.0, "="), (1 + 1e-6, ">")):
            a = 1 + beta - eta * (scale * lam + wd)
            rho = np.max(np.abs(np.linalg.eigvals(np.array([[a, -beta], [1.0, 0.0]]))))
            if expect == "<":
                assert rho < 1
            elif expect == ">":
                assert rho > 1
            else:
                np.testing.assert_allclose(rho, 1.0, rtol=1e-7)
    assert sgd_edge(0.5) == 4.0


def test_bad_settings_are_refused_with_the_values() -> None:
    x, y, w0 = _problem()
    kw = dict(batch_size=B, steps=2)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        sgd_wd(_loss, (x, y), w0, eta=0.1, wd=0.0, momentum=1.0, **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got -0.1"):
        angular_equilibrium(0.1, 0.1, -0.1)
    with pytest.raises(ValueError, match=r"eta \* wd must be < 1 .*eta=2.0, wd=0.5"):
        sgd_wd(_loss, (x, y), w0, eta=2.0, wd=0.5, **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"batch_size = 25 is larger than the data: N = 24"):
        sgd_wd(_loss, (x, y), w0, eta=0.1, wd=0.0, batch_size=25, steps=2)


def _full_lambda1(x: np.ndarray, y: np.ndarray, w0: jax.Array) -> float:
    """Oracle: the top eigenvalue of the dense full-batch Hessian at ``w0`` (NumPy)."""
    h = jax.hessian(lambda w: _loss(w, x, y))(w0)
    return float(np.linalg.eigvalsh(np.asarray(h))[-1])


@pytest.mark.parametrize(
    ("eos", "beta", "warns"),
    [
        (4.0, 0.9, True),  # above heavy-ball's edge 2 (1 + 0.9) = 3.8
        (3.0, 0.9, False),  # above GD's 2, below heavy-ball's 3.8: momentum moves the edge
        (3.0, 0.0, True),  # without momentum the edge is GD's 2
        (1.9, 0.0, False),
    ],
)
def test_a_start_above_the_heavy_ball_edge_warns(eos, beta, warns) -> None:
    import warnings

    from theory.core.edge import AboveEdgeWarning

    x, y, w0 = _problem()
    eta = eos / _full_lambda1(x, y, w0)  # the full-batch eta * lambda_1(w0) is eos
    kw = dict(wd=WD, momentum=beta, batch_size=B, steps=2, tracker=NoTracking())
    if warns:
        edge = 2 * (1 + beta)
        with pytest.warns(AboveEdgeWarning) as caught:
            sgd_wd(_loss, (x, y), w0, eta=eta, **kw)  # type: ignore[arg-type]
        (msg,) = [str(w.message) for w in caught]
        assert f"eta * lambda_1(hess L(w0)) = {eos:.3g} >= {edge:.3g} at step 0" in msg
        assert f"(sgd_wd, momentum {beta:g}, the full-batch Hessian)" in msg
        assert f"eta = {eta * 0.3 / eos:.3g} would start at 0.3" in msg
        assert "warn_above_edge=False" in msg
        with warnings.catch_warnings():
            warnings.simplefilter("error", AboveEdgeWarning)  # the opt-out: no warning at all
            sgd_wd(_loss, (x, y), w0, eta=eta, warn_above_edge=False, **kw)  # type: ignore[arg-type]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AboveEdgeWarning)
            sgd_wd(_loss, (x, y), w0, eta=eta, **kw)  # type: ignore[arg-type]
