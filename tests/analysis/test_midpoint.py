"""Midpoint curvature and trajectory summaries (theory/analysis/midpoint.py, trajectory.py)
against independent oracles: explicit GD steps, NumPy ``eigvalsh`` of ``jax.hessian`` at the
per-group normalized point, explicit loops and ``arccos``."""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._losses import random_loss
from theory.analysis.midpoint import (
    curvature_along,
    gd_midpoint,
    gd_wd_step,
    iterate_midpoints,
    midpoint_curvature,
    top_hessian_eigenvalues,
)
from theory.analysis.trajectory import angle_between, moving_average
from theory.flows.compare import eos_amplitude_sq

GROUPS = (5, 7)


def _rows(n: int = 4, seed: int = 0) -> tuple[Any, np.ndarray]:
    loss, w = random_loss(sum(GROUPS), GROUPS, seed)
    rng = np.random.default_rng(seed + 1)
    rows = np.asarray(w)[None] + 0.3 * rng.normal(size=(n, sum(GROUPS)))
    return loss, rows


def _oracle(hess: Any, p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenvalues of ``H(p)`` and of ``H(p_hat)`` (``p_hat`` normalized per group:
    ``M H(p) M`` for a scale-invariant loss), by NumPy on the dense Hessian."""
    h = np.asarray(hess(jnp.asarray(p)))
    bounds = np.cumsum((0, *GROUPS))
    p_hat = np.concatenate([p[a:b] / np.linalg.norm(p[a:b]) for a, b in itertools.pairwise(bounds)])
    h_hat = np.asarray(hess(jnp.asarray(p_hat)))
    return np.linalg.eigvalsh(h)[::-1][:k], np.linalg.eigvalsh(h_hat)[::-1][:k]


def test_gd_step_and_midpoint_are_the_gd_wd_update():
    loss, rows = _rows()
    eta, wd = 0.2, 0.01
    for w in rows:
        g = np.asarray(jax.grad(loss)(jnp.asarray(w)))
        nxt = w - eta * wd * w - eta * g  # written out, not (1 - eta wd) w
        np.testing.assert_allclose(gd_wd_step(loss, jnp.asarray(w), eta, wd), nxt, rtol=1e-14)
        np.testing.assert_allclose(
            gd_midpoint(loss, jnp.asarray(w), eta, wd), (w + nxt) / 2, rtol=1e-14
        )
    np.testing.assert_array_equal(gd_midpoint(loss, jnp.asarray(rows[0]), 0.0, wd), rows[0])


def test_iterate_midpoints_and_bad_rows():
    w = np.arange(12.0).reshape(6, 2)
    np.testing.assert_array_equal(iterate_midpoints(w, [0, 3]), [[1.0, 2.0], [7.0, 8.0]])
    with pytest.raises(ValueError, match=r"rows must be in \[0, 4\]"):
        iterate_midpoints(w, [5])
    with pytest.raises(ValueError, match="shape"):
        iterate_midpoints(w[0], [0])


@pytest.mark.parametrize("lanczos_iters", [None, 12])
def test_curvature_along_against_dense_eigvalsh(lanczos_iters):
    # Dense and Lanczos (Krylov space = the whole R^12, so exact up to rounding) both against
    # NumPy's eigvalsh: H(p) and the spherical Hessian at the per-group normalized point.
    loss, rows = _rows()
    hess = jax.jit(jax.hessian(loss))
    curv = curvature_along(loss, jnp.asarray(rows), groups=GROUPS, k=2, lanczos_iters=lanczos_iters)
    assert curv.hessian is not None and curv.spherical is not None
    assert curv.hessian.shape == curv.spherical.shape == (len(rows), 2)
    for i, p in enumerate(rows):
        ref, ref_s = _oracle(hess, p, 2)
        np.testing.assert_allclose(curv.hessian[i], ref, rtol=1e-9)
        np.testing.assert_allclose(curv.spherical[i], ref_s, rtol=1e-9)
    only = curvature_along(loss, jnp.asarray(rows), groups=GROUPS, spherical=False)
    assert only.spherical is None
    np.testing.assert_allclose(only.hessian[:, 0], curv.hessian[:, 0], rtol=1e-12)


def test_midpoint_curvature_is_curvature_at_the_explicit_midpoints():
    loss, rows = _rows(5, seed=3)
    eta, wd = 0.3, 0.02
    curv = midpoint_curvature(loss, rows, eta, wd, groups=GROUPS, k=1, lanczos_iters=12)
    hess = jax.jit(jax.hessian(loss))
    for i, w in enumerate(rows):
        g = np.asarray(jax.grad(loss)(jnp.asarray(w)))
        mid = (w + (w - eta * wd * w - eta * g)) / 2
        ref, ref_s = _oracle(hess, mid, 1)
        assert curv.hessian[i, 0] == pytest.approx(ref[0], rel=1e-9)
        assert curv.spherical[i, 0] == pytest.approx(ref_s[0], rel=1e-9)


@pytest.mark.slow  # default-suite budget
def test_midpoint_curvature_vmaps_over_runs():
    # Batched over runs (traced eta, wd, v0), as the regime map calls it: each run equals its
    # own unbatched call.
    loss, rows = _rows(3, seed=5)
    batch = np.stack([rows, rows[::-1]])
    etas, wds = jnp.asarray([0.1, 0.4]), jnp.asarray([0.01, 0.05])
    v0 = jnp.ones((2, sum(GROUPS)))

    def one(w, eta, wd, v):
        c = midpoint_curvature(loss, w, eta, wd, groups=GROUPS, lanczos_iters=12, v0=v)
        return c.hessian, c.spherical

    lam, sph = jax.jit(jax.vmap(one))(jnp.asarray(batch), etas, wds, v0)
    for b in range(2):
        ref = midpoint_curvature(
            loss, batch[b], float(etas[b]), float(wds[b]), groups=GROUPS, lanczos_iters=12
        )
        np.testing.assert_allclose(lam[b], ref.hessian, rtol=1e-9)
        np.testing.assert_allclose(sph[b], ref.spherical, rtol=1e-9)


def test_curvature_bad_inputs():
    loss, rows = _rows(2)
    with pytest.raises(ValueError, match="hessian=True or spherical=True"):
        curvature_along(loss, rows, hessian=False, spherical=False)
    with pytest.raises(ValueError, match="k=3 exceeds lanczos_iters=2"):
        curvature_along(loss, rows, k=3, lanczos_iters=2)
    with pytest.raises(ValueError, match=r"points must have shape \(N, D\)"):
        curvature_along(loss, rows[0])
    with pytest.raises(ValueError, match=r"v0 must have shape \(12,\)"):
        curvature_along(loss, rows, v0=jnp.ones(3))
    with pytest.raises(ValueError, match="eta must be a non-negative"):
        midpoint_curvature(loss, rows, -0.1, 0.0)


def test_eos_amplitude_sq_closed_forms():
    g = np.array([0.0, 1.0, 2.0])
    np.testing.assert_allclose(eos_amplitude_sq(1e-3, g**2), [5e-4, 5e-4 / 1.25, 5e-4 / 2])
    np.testing.assert_allclose(eos_amplitude_sq(1e-3, g**2, "F0"), [5e-4] * 3)
    with pytest.raises(ValueError, match="form must be"):
        eos_amplitude_sq(1e-3, g, "F2")


def test_angle_between_against_arccos_and_for_tiny_angles():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(angle_between(a, 3.0 * b), np.arccos(cos), rtol=1e-12)
    eps = 1e-9  # arccos would return 0 or ~1.5e-8 here
    assert angle_between(np.array([1.0, 0.0]), np.array([1.0, eps])) == pytest.approx(eps, rel=1e-6)
    assert angle_between(np.array([1.0, 0.0]), np.array([-1.0, 0.0])) == pytest.approx(np.pi)
    with pytest.raises(ValueError, match="same last axis"):
        angle_between(a, b[:, :3])


def test_moving_average_against_an_explicit_loop():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 2))
    for window in (1, 2, 4, 5):
        pad = window // 2
        clamp = lambda s: x[min(max(s, 0), len(x) - 1)]  # noqa: E731
        ref = np.stack([np.mean([clamp(t - pad + j) for j in range(window)], 0) for t in range(9)])
        np.testing.assert_allclose(moving_average(x, window), ref, rtol=1e-13)
        np.testing.assert_allclose(moving_average(x[:, 0], window), ref[:, 0], rtol=1e-13)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        moving_average(x, 0)


@pytest.mark.parametrize("dense_max_dim", [12, 0])
def test_top_hessian_eigenvalues_dense_and_lanczos_against_eigvalsh(dense_max_dim):
    # D = 12: dense at dense_max_dim = 12, Lanczos at 0 (12 vectors: the whole R^12, so exact up
    # to rounding); both against NumPy's eigvalsh of the dense jax.hessian at each row.
    loss, rows = _rows()
    hess = jax.jit(jax.hessian(loss))
    top = top_hessian_eigenvalues(loss, rows, dense_max_dim=dense_max_dim, lanczos_iters=12)
    assert isinstance(top, np.ndarray) and top.shape == (len(rows),)
    ref = [np.linalg.eigvalsh(np.asarray(hess(jnp.asarray(p))))[-1] for p in rows]
    np.testing.assert_allclose(top, ref, rtol=1e-9)


def test_top_hessian_eigenvalues_short_krylov_is_a_lower_bound():
    # 2 Lanczos vectors on D = 12: Ritz values lie inside the spectrum, strictly below lambda_1
    # here (the test can fail: a dense solve would give equality).
    loss, rows = _rows()
    hess = jax.jit(jax.hessian(loss))
    top = top_hessian_eigenvalues(loss, rows, dense_max_dim=0, lanczos_iters=2)
    ref = np.array([np.linalg.eigvalsh(np.asarray(hess(jnp.asarray(p))))[-1] for p in rows])
    assert np.all(top <= ref * (1 + 1e-12)) and np.any(top < ref * (1 - 1e-6))


def test_top_hessian_eigenvalues_bad_inputs():
    loss, rows = _rows()
    with pytest.raises(ValueError, match=r"dense_max_dim must be an int >= 0, got -1"):
        top_hessian_eigenvalues(loss, rows, dense_max_dim=-1)
    with pytest.raises(ValueError, match=r"dense_max_dim must be an int >= 0, got 2.5"):
        top_hessian_eigenvalues(loss, rows, dense_max_dim=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"lanczos_iters must be >= 1, got 0"):
        top_hessian_eigenvalues(loss, rows, lanczos_iters=0)
    with pytest.raises(ValueError, match=r"points must have shape \(N, D\), got shape \(12,\)"):
        top_hessian_eigenvalues(loss, rows[0])


def test_midpoints_memory_does_not_grow_with_the_rows():
    """The midpoints are computed one row at a time: XLA's temporary memory for 64 rows equals
    that for 4 (vmapped over the rows it grew 20x with the rows on this network, and a VGG
    16-32 on 1024 images, the regime map's former full-scale VGG, asked for 49 GB). Oracle:
    the compiled program's memory analysis; the output (64 rows) is not temporary memory."""
    from sims import data as datasets
    from theory.analysis import midpoint
    from theory.problems import nets

    ds = datasets.digits(n_train=256, images=False, dtype=np.float32, seed=0)
    prob = nets.make_problem(
        nets.mlp([64, 64]), ds.x_train, ds.y_train, ds.x_test, ds.y_test, num_outputs=10, seed=0
    )
    temp = {}
    for n in (4, 64):
        w = jnp.broadcast_to(prob.w0, (n, *prob.w0.shape))
        compiled = jax.jit(midpoint._midpoints).lower(prob.loss, w, 0.1, 0.01).compile()
        mem = compiled.memory_analysis()
        assert mem is not None, "no memory analysis on this backend"
        temp[n] = mem.temp_size_in_bytes
    assert temp[64] <= 1.1 * temp[4], temp
