"""RowStrideTracker: which rows it solves, and what it reports there.

Oracles: the set of solved rows by an explicit Python loop over the recorded steps; the inner
tracker run on every row (the same trajectory, so the same values on the shared rows); the dense
``jax.hessian`` + ``eigvalsh`` at the stored iterates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._losses import random_loss
from theory.core.objective import FullBatch
from theory.engine import (
    GDWD,
    LanczosTracker,
    NoTracking,
    RowStrideTracker,
    SaveAt,
    run,
    run_batch,
)

DIM, STEPS, EVERY, PERIOD, DENSE = 8, 25, 2, 6, 8


def _expected_solved(steps: np.ndarray) -> np.ndarray:
    """The rows the stride solves, by hand: the inner tracker's steps before DENSE, then the
    multiples of PERIOD (the forced final row included only if it is one of them)."""
    out = []
    for t in steps.tolist():
        out.append(t % EVERY == 0 and (t < DENSE or t % PERIOD == 0))
    return np.asarray(out)


def _runs():
    loss, w0 = random_loss(DIM, None, 3)
    method = GDWD(jnp.asarray(0.4), jnp.asarray(0.02), jnp.asarray(0.0), (DIM,))
    inner = LanczosTracker(every=EVERY, tol=1e-12, max_iters=DIM, spherical=False)
    kw = dict(steps=STEPS, groups=(DIM,), saveat=SaveAt(every=EVERY, iterates=True))
    full = run(FullBatch(loss), method, w0, tracker=inner, **kw)
    strided = run(FullBatch(loss), method, w0, tracker=RowStrideTracker(inner, PERIOD, DENSE), **kw)
    return loss, full, strided


@pytest.mark.slow  # default-suite budget (about 10 s of CPU); its settings and errors stay default
def test_row_stride_solves_exactly_its_rows_with_the_inner_values() -> None:
    loss, full, strided = _runs()
    np.testing.assert_array_equal(strided.step, [*range(0, STEPS, EVERY), STEPS])
    solved = _expected_solved(strided.step)
    np.testing.assert_array_equal(strided.step[solved], [0, 2, 4, 6, 12, 18, 24])
    # Tracking does not change the step: the same iterates.
    np.testing.assert_allclose(strided.w, full.w, rtol=0, atol=1e-12)
    assert np.all(np.isfinite(strided.eos[solved]))
    assert np.all(np.isnan(strided.eos[~solved]))  # the forced final row (25) included
    assert np.all(np.isnan(strided.lanczos_residual[~solved]))
    np.testing.assert_array_equal(strided.lanczos_matvecs[~solved], 0)
    assert np.all(strided.lanczos_matvecs[solved] >= 1)
    # On the solved rows: the inner tracker's values (run on every row) and the dense oracle.
    np.testing.assert_allclose(strided.eos[solved], full.eos[solved], rtol=1e-9)
    hess = jax.jit(jax.hessian(loss))
    for r in np.flatnonzero(solved):
        lam = np.linalg.eigvalsh(np.asarray(hess(jnp.asarray(strided.w[r]))))[-1]
        assert abs(strided.eos[r] - 0.4 * lam) <= 1e-9 * abs(0.4 * lam)
    assert strided.lanczos_matvecs.sum() < full.lanczos_matvecs.sum()


@pytest.mark.slow  # three compiled runs (~15 s of CPU)
def test_row_stride_in_a_batched_sweep_matches_single_runs() -> None:
    loss, w0 = random_loss(DIM, None, 4)
    etas = jnp.asarray([0.2, 0.5])
    inner = LanczosTracker(every=EVERY, tol=1e-12, max_iters=DIM, spherical=False)
    tracker = RowStrideTracker(inner, PERIOD, DENSE)
    kw = dict(steps=STEPS, groups=(DIM,), tracker=tracker, saveat=SaveAt(every=EVERY))
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    method = GDWD(etas, jnp.full(2, 0.02), jnp.zeros(2), (DIM,))
    batch = run_batch(FullBatch(loss), method, np.stack([w0, w0]), keys, **kw)
    solved = _expected_solved(np.asarray(batch.step))
    for i in range(2):
        one = run(
            FullBatch(loss), GDWD(etas[i], jnp.asarray(0.02), jnp.asarray(0.0), (DIM,)), w0,
            key=keys[i], **kw,
        )  # fmt: skip
        assert np.all(np.isnan(batch.eos[i][~solved]))
        np.testing.assert_allclose(batch.eos[i][solved], one.eos[solved], rtol=1e-9)


def test_row_stride_settings_and_errors() -> None:
    inner = LanczosTracker(every=3)
    t = RowStrideTracker(inner, 9, dense_steps=20)
    assert t.every == 3
    assert t.config()["solve_period"] == 9 and t.config()["dense_steps"] == 20
    assert t.config()["sharpness_every"] == inner.config()["sharpness_every"]
    assert isinstance(t.for_batch().inner, LanczosTracker) and t.for_batch().inner.batched
    steps = jnp.arange(0, 40)
    expect = [(s % 3 == 0) and (s < 20 or s % 9 == 0) for s in range(40)]
    np.testing.assert_array_equal(np.asarray(t.solves(steps)), expect)
    with pytest.raises(ValueError, match=r"period \(10\) must be a multiple.*every \(3\)"):
        RowStrideTracker(inner, 10)
    with pytest.raises(ValueError, match="period must be an int >= 1, got 0"):
        RowStrideTracker(inner, 0)
    with pytest.raises(ValueError, match="dense_steps must be an int >= 0, got -1"):
        RowStrideTracker(inner, 9, dense_steps=-1)
    with pytest.raises(TypeError, match=r"must be a tracker that solves.*got 'lanczos'"):
        RowStrideTracker("lanczos", 9)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"must be a tracker that solves.*NoTracking"):
        RowStrideTracker(NoTracking(), 9)
