"""The preconditioned-sharpness tracker, the adaptive specs and the step geometry.

Oracles: closed forms (a quadratic with a known Hessian and a synthetic optax state, whose
preconditioned sharpness is ``eigvalsh(P^{-1/2} H P^{-1/2})``), dense ``jax.hessian`` on a small
normalized network with ``P`` recomputed by hand from a real Adam state, optax's own update
(``P^{-1} m_hat`` is Adam's direction), and the run's consecutive iterates (the step's angle).
"""

from __future__ import annotations

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests._losses import random_loss
from theory.core.linalg import eigvalsh
from theory.core.objective import FullBatch
from theory.engine import GDWD, NoTracking, Optax, SaveAt, StepContext, optax_method, run
from theory.engine.adaptive import (
    AdaptiveSpec,
    PreconditionedTracker,
    SecondMoment,
    StepGeometry,
    adam_method,
    preconditioner,
    second_moment_state,
)
from theory.problems import nets


def _quadratic(dim: int, seed: int) -> tuple[jnp.ndarray, FullBatch]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    h = jnp.asarray(a @ a.T / dim + np.diag(rng.uniform(0, 3, dim)))
    return h, FullBatch(lambda w: 0.5 * w @ h @ w)


@eqx.filter_jit
def _observe(tracker, objective, w, method, state, lr=0.01):
    ctx = StepContext(objective, method, state)
    tstate = tracker.init(objective, w, jnp.asarray(lr), (w.shape[0],), jax.random.PRNGKey(0))
    obs, _ = tracker.observe(
        objective, w, jnp.asarray(lr), (w.shape[0],), tstate, jnp.asarray(0), jax.random.PRNGKey(1),
        jnp.asarray(True), True, ctx,
    )  # fmt: skip
    return obs


def test_closed_form_quadratic_with_a_synthetic_adam_state() -> None:
    dim, lr, b1, b2, eps = 12, 0.01, 0.9, 0.99, 1e-3
    h, objective = _quadratic(dim, 0)
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=dim))
    nu = jnp.asarray(rng.uniform(0.1, 4.0, dim))
    count = 7
    state = (
        optax.ScaleByAdamState(count=jnp.asarray(count, jnp.int32), mu=jnp.zeros(dim), nu=nu),
        optax.EmptyState(),
    )
    method, _ = optax_method(optax.sgd(lr), w, lr=lr)  # the method itself is not read
    tracker = PreconditionedTracker(b1=b1, b2=b2, eps=eps, tol=1e-13)
    obs = _observe(tracker, objective, w, method, state, lr)
    # P by hand: the step's gradient enters nu, bias correction with count + 1.
    g = np.asarray(h) @ np.asarray(w)
    nu_hat = (b2 * np.asarray(nu) + (1 - b2) * g**2) / (1 - b2 ** (count + 1))
    p = np.sqrt(nu_hat) + eps
    d = 1 / np.sqrt(p)
    expected = np.linalg.eigvalsh(d[:, None] * np.asarray(h) * d[None, :])[-1]
    np.testing.assert_allclose(obs.extra["precond.sharpness"], expected, rtol=1e-10)
    edge = (2 + 2 * b1) / ((1 - b1) * lr)
    np.testing.assert_allclose(obs.extra["precond.edge"], edge, rtol=1e-14)
    np.testing.assert_allclose(obs.extra["precond.eos"], expected / edge, rtol=1e-10)
    top = np.linalg.eigvalsh(np.asarray(h))[-1]
    np.testing.assert_allclose(obs.eos, lr * top, rtol=1e-10)
    np.testing.assert_allclose(obs.sharpness, top * float(w @ w), rtol=1e-10)
    np.testing.assert_allclose(obs.grad, g, rtol=1e-12)


def test_closed_form_with_an_rms_state_and_eps_in_the_root() -> None:
    dim, b2, eps = 9, 0.9, 0.5
    h, objective = _quadratic(dim, 2)
    w = jnp.asarray(np.random.default_rng(3).normal(size=dim))
    nu = jnp.asarray(np.random.default_rng(4).uniform(0.0, 2.0, dim))
    method, _ = optax_method(optax.sgd(0.1), w, lr=0.1)
    tracker = PreconditionedTracker(b1=0.0, b2=b2, eps=eps, eps_in_sqrt=True, tol=1e-13)
    obs = _observe(tracker, objective, w, method, (optax.ScaleByRmsState(nu=nu),), 0.1)
    g = np.asarray(h) @ np.asarray(w)
    p = np.sqrt(b2 * np.asarray(nu) + (1 - b2) * g**2 + eps)  # no count: no bias correction
    expected = np.linalg.eigvalsh(np.asarray(h) / np.sqrt(np.outer(p, p)))[-1]
    np.testing.assert_allclose(obs.extra["precond.sharpness"], expected, rtol=1e-10)
    np.testing.assert_allclose(obs.extra["precond.edge"], 2 / 0.1, rtol=1e-14)


def test_preconditioner_is_optax_adams_denominator() -> None:
    """``-lr m_hat / P`` is optax's Adam update of the step, after a few steps."""
    loss, w0 = random_loss(7, None, 0)
    lr, b1, b2, eps = 0.05, 0.8, 0.95, 1e-4
    opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
    state = opt.init(w0)
    w = w0
    for _ in range(4):
        g = jax.grad(loss)(w)
        u, new_state = opt.update(g, state, w)
        moment = second_moment_state(state)
        p = preconditioner(moment, g, b2=b2, eps=eps)
        adam = state[0]
        m_hat = (b1 * adam.mu + (1 - b1) * g) / (1 - b1 ** (int(adam.count) + 1))
        np.testing.assert_allclose(u, -lr * m_hat / p, rtol=1e-12)
        w, state = w + u, new_state


@pytest.mark.slow  # ~20 s of CPU: a network's HVP compiled in two Lanczos loops
def test_small_network_against_the_dense_hessian_with_a_real_adam_state() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 5)), rng.integers(0, 3, 16)
    prob = nets.make_problem(
        nets.mlp((4,), norm="layer", activation="tanh"), x, y, x[:4], y[:4], num_outputs=3,
        groups="all", dtype=np.float64,
    )  # fmt: skip
    lr, b1, b2, eps = 0.02, 0.9, 0.99, 1e-6
    method, flat, tracker, edge = adam_method(
        prob.w0, lr=lr, b1=b1, b2=b2, eps=eps, every=2, tol=1e-12
    )
    res = run(
        FullBatch(prob.loss), method, flat, steps=5, groups=prob.groups, tracker=tracker,
        saveat=SaveAt(every=2),
    )  # fmt: skip
    np.testing.assert_array_equal(res.step, [0, 2, 4, 5])  # the final row is always tracked
    assert np.isfinite(res.observed["precond.sharpness"]).all()
    # The last row is observed with the final state (5 Adam updates made).
    assert res.w is not None
    w = jnp.asarray(res.w[-1])
    hess = np.asarray(jax.hessian(prob.loss)(w))
    g = np.asarray(jax.grad(prob.loss)(w))
    adam = res.final_state[0]
    assert int(adam.count) == 5
    nu_hat = (b2 * np.asarray(adam.nu) + (1 - b2) * g**2) / (1 - b2**6)
    d = 1 / np.sqrt(np.sqrt(nu_hat) + eps)
    expected = float(eigvalsh(jnp.asarray(d[:, None] * hess * d[None, :]))[-1])
    np.testing.assert_allclose(res.observed["precond.sharpness"][-1], expected, rtol=1e-9)
    np.testing.assert_allclose(res.observed["precond.edge"], edge, rtol=1e-14)
    np.testing.assert_allclose(edge, 38 / lr, rtol=1e-14)
    np.testing.assert_allclose(res.eos[-1], lr * np.linalg.eigvalsh(hess)[-1], rtol=1e-9)


def test_methods_without_a_preconditioner_are_refused() -> None:
    loss, w0 = random_loss(4, None, 1)
    sgd, flat = optax_method(optax.sgd(0.1), w0, lr=0.1)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "PreconditionedTracker needs an adaptive method whose state holds a second moment "
            "(optax.ScaleByAdamState (adam, adamw) or ScaleByRmsState (rmsprop)); Optax has "
            "state nodes [EmptyState]"
        ),
    ):
        run(FullBatch(loss), sgd, flat, steps=2, groups=(4,), tracker=PreconditionedTracker())
    gdwd = GDWD(jnp.asarray(0.1), jnp.asarray(0.01), jnp.asarray(0.0), (4,))
    with pytest.raises(ValueError, match=re.escape("; GDWD has state nodes ()")):
        run(FullBatch(loss), gdwd, w0, steps=2, groups=(4,), tracker=PreconditionedTracker())
    two = optax.chain(optax.scale_by_adam(), optax.scale_by_rms())
    with pytest.raises(ValueError, match=re.escape("has 2: ['ScaleByAdamState', 'ScaleByRms")):
        second_moment_state(two.init(w0), "chain")


def test_spec_builds_matching_optimizers_and_edges() -> None:
    loss, w0 = random_loss(6, None, 2)
    g = jax.grad(loss)(w0)
    for spec, edge in (
        (AdaptiveSpec("adam", 0.1), 38 / 0.1),
        (AdaptiveSpec("adamw", 0.1, b1=0.5, wd=0.2), 6 / 0.1),
        (AdaptiveSpec("rmsprop", 0.1, b1=0.0, b2=0.9), 2 / 0.1),
    ):
        assert spec.edge == pytest.approx(edge, rel=1e-14)
        opt = spec.optimizer()
        state = opt.init(w0)
        u, _ = opt.update(g, state, w0)
        # First step: m_hat = g, nu_hat = g^2 (bias-corrected), P = |g| + eps.
        p = preconditioner(second_moment_state(state), g, b2=spec.b2, eps=spec.eps)
        np.testing.assert_allclose(p, np.abs(g) + spec.eps, rtol=1e-12)
        np.testing.assert_allclose(u, -spec.lr * (g / p + spec.wd * w0), rtol=1e-12)
        tracker = spec.tracker(3, tol=1e-9)
        assert (tracker.b1, tracker.b2, tracker.eps, tracker.every) == (
            spec.b1, spec.b2, spec.eps, 3,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "sgd", "lr": 0.1}, "AdaptiveSpec.kind must be 'adam', 'adamw' or 'rmsprop'"),
        ({"kind": "adam", "lr": -1.0}, "AdaptiveSpec.lr must be a positive float, got -1.0"),
        ({"kind": "adam", "lr": 0.1, "b1": 1.0}, "AdaptiveSpec.b1 must be in [0, 1), got 1.0"),
        ({"kind": "rmsprop", "lr": 0.1}, "rmsprop has no momentum, b1 must be 0, got 0.9"),
        ({"kind": "adam", "lr": 0.1, "wd": 0.1}, "'adam' needs wd = 0, got 0.1"),
    ],
)
def test_spec_rejects_bad_values(kwargs, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        AdaptiveSpec(**kwargs)


def test_tracker_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match=re.escape("PreconditionedTracker.b2 must be a float")):
        PreconditionedTracker(b2=1.5)
    with pytest.raises(ValueError, match=re.escape("PreconditionedTracker.every must be a pos")):
        PreconditionedTracker(every=0)
    with pytest.raises(ValueError, match="the second moment has 3 entries but w has 4"):
        preconditioner(SecondMoment(jnp.ones(3), None, "x"), jnp.ones(4), b2=0.9, eps=0.0)


@pytest.mark.parametrize("which", ["gdwd", "adamw"])
def test_step_geometry_matches_consecutive_iterates(which) -> None:
    loss, w0 = random_loss(8, None, 3)
    method: GDWD | Optax
    if which == "gdwd":
        method, flat = GDWD(jnp.asarray(0.3), jnp.asarray(0.05), jnp.asarray(0.0), (8,)), w0
        tracker = StepGeometry(NoTracking())
    else:
        spec = AdaptiveSpec("adamw", 0.05, wd=0.1)
        method, flat = spec.method(w0)
        tracker = StepGeometry(spec.tracker(1, plain=False, tol=1e-12))
    res = run(FullBatch(loss), method, flat, steps=6, groups=(8,), tracker=tracker)
    w = res.w
    assert w is not None
    cos = np.sum(w[:-1] * w[1:], 1) / (
        np.linalg.norm(w[:-1], axis=1) * np.linalg.norm(w[1:], axis=1)
    )
    np.testing.assert_allclose(res.observed["step.angle"][:-1], np.arccos(cos), rtol=1e-7)
    delta = w[1:] - w[:-1]
    np.testing.assert_allclose(res.observed["step.size"][:-1], np.linalg.norm(delta, axis=1))
    radial = np.sum(w[:-1] * delta, 1) / np.linalg.norm(w[:-1], axis=1)
    np.testing.assert_allclose(res.observed["step.radial"][:-1], radial, rtol=1e-9, atol=1e-14)
    assert res.config["step_geometry"] is True
    if which == "adamw":
        # The last row against the dense Hessian, P from the final Adam state by hand.
        adam = res.final_state[0]
        w_end = jnp.asarray(w[-1])
        g = np.asarray(jax.grad(loss)(w_end))
        nu_hat = (spec.b2 * np.asarray(adam.nu) + (1 - spec.b2) * g**2) / (1 - spec.b2**7)
        d = 1 / np.sqrt(np.sqrt(nu_hat) + spec.eps)
        hess = np.asarray(jax.hessian(loss)(w_end))
        expected = np.linalg.eigvalsh(d[:, None] * hess * d[None, :])[-1]
        np.testing.assert_allclose(res.observed["precond.sharpness"][-1], expected, rtol=1e-9)
        assert np.isnan(res.eos).all()  # plain=False: no plain solve
