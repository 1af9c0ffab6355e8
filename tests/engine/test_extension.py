"""The engine's extension points for new trackers and stochastic objectives.

* ``Obs.extra``: a tracker's own named arrays, recorded on every row into ``result.observed``
  (also through a batched sweep, and in padding blocks of a partial last chunk);
* ``StepContext``: the whole objective, the method and the method's state, handed to the tracker;
* ``step_objective``: an objective with ``at(t, key)`` gives the step's objective to the tracker,
  whose gradient drives the update.

Oracles: explicit Python loops (the same update by hand), and the method's own state recomputed
by hand.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests._losses import random_loss
from theory.core.objective import FullBatch, step_objective
from theory.engine import GDWD, NoTracking, SaveAt, StepContext, optax_method, run, run_batch


class _Extras(NoTracking):
    """Records |g|^2, the step's parity and the method-state leaf count, without HVPs."""

    def observe(self, objective, w, lr, groups, state, t, key, tracked, record, ctx):
        obs, state = super().observe(objective, w, lr, groups, state, t, key, tracked, record, ctx)
        assert isinstance(ctx, StepContext)
        n_state = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(ctx.method_state))
        extra = {
            "g2": jnp.vdot(obs.grad, obs.grad),
            "parity": (t % 2).astype(w.dtype),
            "state_size": jnp.asarray(n_state, w.dtype),
            "full_loss": ctx.full(w),
        }
        return obs._replace(extra=extra), state


def test_tracker_extras_are_recorded_on_every_row() -> None:
    loss, w0 = random_loss(8, None, 0)
    objective = FullBatch(loss)
    method = GDWD(jnp.asarray(0.3), jnp.asarray(0.01), jnp.asarray(0.0), (8,))
    # 7 steps, rows every 2 steps, chunks of 2 blocks: the last chunk is padded.
    res = run(
        objective, method, w0, steps=7, groups=(8,), tracker=_Extras(),
        saveat=SaveAt(every=2), chunk_steps=4,
    )  # fmt: skip
    np.testing.assert_array_equal(res.step, [0, 2, 4, 6, 7])
    np.testing.assert_allclose(res.observed["g2"], res.grad_norm**2, rtol=1e-12)
    np.testing.assert_array_equal(res.observed["parity"], res.step % 2)
    np.testing.assert_array_equal(res.observed["state_size"], 0)
    np.testing.assert_allclose(res.observed["full_loss"], res.loss, rtol=1e-12)


def test_tracker_extras_in_a_sweep_match_single_runs() -> None:
    loss, w0 = random_loss(8, None, 1)
    objective = FullBatch(loss)
    etas = jnp.asarray([0.1, 0.4])
    method = GDWD(etas, jnp.full(2, 0.01), jnp.zeros(2), (8,))
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    res = run_batch(
        objective, method, np.stack([w0, w0]), keys, steps=6, groups=(8,), tracker=_Extras(),
        saveat=SaveAt(every=3),
    )  # fmt: skip
    for i in range(2):
        one = run(
            objective, GDWD(etas[i], jnp.asarray(0.01), jnp.asarray(0.0), (8,)), w0, steps=6,
            groups=(8,), tracker=_Extras(), saveat=SaveAt(every=3), key=jax.random.PRNGKey(0),
        )  # fmt: skip
        np.testing.assert_allclose(res.observed["g2"][i], one.observed["g2"], rtol=1e-12)


def test_the_method_state_reaches_the_tracker() -> None:
    loss, w0 = random_loss(6, None, 2)
    method, flat = optax_method(optax.adam(1e-2), w0, lr=None)
    res = run(FullBatch(loss), method, flat, steps=3, groups=(6,), tracker=_Extras())
    # Adam's state: count (1) + mu (6) + nu (6).
    np.testing.assert_array_equal(res.observed["state_size"], 13)


def test_extras_colliding_with_saveat_observe_are_refused() -> None:
    loss, w0 = random_loss(4, None, 3)
    method = GDWD(jnp.asarray(0.1), jnp.asarray(0.0), jnp.asarray(0.0), (4,))
    saveat = SaveAt(observe=lambda w: {"g2": jnp.sum(w)})
    with pytest.raises(ValueError, match=r"the tracker records \['g2'\] and SaveAt.observe"):
        run(FullBatch(loss), method, w0, steps=2, groups=(4,), tracker=_Extras(), saveat=saveat)


class _Alternating(eqx.Module):
    """A stochastic objective: even steps see ``a``'s loss, odd steps ``b``'s."""

    a: Any
    b: Any

    def __call__(self, w):
        return 0.5 * (self.a(w) + self.b(w))

    def at(self, t, key):
        del key
        return FullBatch(lambda w: jnp.where(t % 2 == 0, self.a(w), self.b(w)))


def test_a_stochastic_objective_drives_the_step_with_its_draw() -> None:
    a, w0 = random_loss(5, None, 4)
    b, _ = random_loss(5, None, 5)
    objective = _Alternating(a, b)
    eta = 0.2
    method = GDWD(jnp.asarray(eta), jnp.asarray(0.0), jnp.asarray(0.0), (5,))
    res = run(objective, method, w0, steps=4, groups=(5,), tracker=_Extras())
    w = np.asarray(w0)
    for t in range(4):
        g = jax.grad(a if t % 2 == 0 else b)(jnp.asarray(w))
        np.testing.assert_allclose(res.w[t], w, rtol=1e-12)
        w = w - eta * np.asarray(g)
    # The tracker's ctx.full is the whole objective, not the draw.
    np.testing.assert_allclose(res.observed["full_loss"][:4], [objective(x) for x in res.w[:4]])
    assert step_objective(FullBatch(a), jnp.asarray(0), jax.random.PRNGKey(0)).loss is a
