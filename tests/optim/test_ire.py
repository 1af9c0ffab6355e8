"""IRE and SAM as optax transformations: exactness, projections, composition, compilation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from theory.engine import SaveAt
from theory.optim.ire import (
    dense_hessian_diagonal,
    diagonal_mask,
    exact_flat,
    fisher_diagonal,
    hutchinson_diagonal,
    ire,
    mask_size,
    smallest_mask,
)
from theory.optim.transforms import gd_wd_transform, run_optimizer, sam


def toy(p: jax.Array) -> jax.Array:
    """IRE paper's Figure 1: L(u, v) = (1 + u^2) v^2 / 2, manifold v = 0, sharpness 1 + u^2."""
    return 0.5 * (1 + p[0] ** 2) * p[1] ** 2


def quartic(p: jax.Array, a: jax.Array) -> jax.Array:
    """A non-quadratic loss with a dense, well-separated Hessian (data passed as an argument)."""
    return 0.5 * p @ a @ p + 0.1 * jnp.sum(p**4) + 0.05 * jnp.sum(p[:-1] * p[1:] ** 2)


def _spd(d: int, seed: int) -> jax.Array:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return jnp.asarray(q @ np.diag(np.geomspace(10.0, 1e-3, d)) @ q.T)


def _ident(x: jax.Array) -> jax.Array:
    return x


def _steps(opt: optax.GradientTransformation, loss, p, n: int, *args):
    """A Python loop of jitted steps (the reference for the compiled driver)."""
    opt = optax.with_extra_args_support(opt)

    @jax.jit
    def step(p, state, args):
        u, state = opt.update(jax.grad(loss)(p, *args), state, p, loss_args=args)
        return optax.apply_updates(p, u), state

    state = opt.init(p)
    out = [p]
    for _ in range(n):
        p, state = step(p, state, args)
        out.append(p)
    return jnp.stack(out), state


# --------------------------------------------------------------------------------------------
# kappa = 0 and closed forms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "which",
    [
        "gd_wd",
        pytest.param("adamw", marks=pytest.mark.slow),
        pytest.param("sam", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("selector", ["exact", "mask"])
def test_kappa_zero_reproduces_base_bit_for_bit(which: str, selector: str) -> None:
    a = _spd(8, 0)
    p0 = jnp.linspace(-1.0, 1.0, 8)
    bases = {
        "gd_wd": lambda: gd_wd_transform(0.05, 1e-2),
        "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-2),
        "sam": lambda: optax.chain(
            sam(quartic, 0.05), optax.add_decayed_weights(1e-2), optax.sgd(0.05)
        ),
    }
    sel = (
        exact_flat(quartic, 2, refresh_every=3)
        if selector == "exact"
        else diagonal_mask(dense_hessian_diagonal(quartic), 0.5, refresh_every=3)
    )
    ref = run_optimizer(bases[which](), quartic, p0, 12, loss_args=(a,))
    got = run_optimizer(ire(bases[which](), 0.0, sel), quartic, p0, 12, loss_args=(a,))
    np.testing.assert_array_equal(got.w, ref.w)


@pytest.mark.parametrize("selector", ["exact", "mask"])
def test_traced_kappa_zero_runs_the_amplification_and_is_the_base(selector: str) -> None:
    # A Python 0.0 returns before the amplification code; a traced kappa (kept in the state by
    # optax.inject_hyperparams, as sims/studies/ire_flow.py does) cannot, so this runs the
    # selector's
    # refreshes and the projection and adds 0 * (P u). That is the base to rounding, not bit
    # for bit: measured 1.5e-14 relative (1 ulp on a quarter of the entries over 12 steps),
    # from XLA fusing the update differently in the two programs. A traced kappa of 1 must
    # differ (the path is live).
    a = _spd(8, 0)
    p0 = jnp.linspace(-1.0, 1.0, 8)
    sel = (
        exact_flat(quartic, 2, refresh_every=3)
        if selector == "exact"
        else diagonal_mask(dense_hessian_diagonal(quartic), 0.5, refresh_every=3)
    )
    factory = optax.inject_hyperparams(ire, static_args=("base", "selector", "seed"))
    opt = factory(base=gd_wd_transform(0.05, 1e-2), kappa=0.0, selector=sel)
    ref = run_optimizer(gd_wd_transform(0.05, 1e-2), quartic, p0, 12, loss_args=(a,))
    state0 = opt.init(p0)
    assert isinstance(state0.hyperparams["kappa"], jax.Array)  # traced inside the run
    got = run_optimizer(opt, quartic, p0, 12, loss_args=(a,), state0=state0)
    np.testing.assert_allclose(got.w, ref.w, rtol=1e-13, atol=1e-15)
    state1 = opt.init(p0)
    state1.hyperparams["kappa"] = jnp.asarray(1.0, p0.dtype)
    live = run_optimizer(opt, quartic, p0, 12, loss_args=(a,), state0=state1)
    assert np.max(np.abs(live.w - ref.w)) > 1e-6


def test_first_step_on_the_toy_matches_the_closed_form() -> None:
    # GD: u1 = u - eta u v^2, v1 = v - eta (1 + u^2) v; IRE with the mask on u (the manifold
    # tangent): u1 = u - eta (1 + kappa) u v^2, v unchanged.
    p0 = jnp.array([1.0, 0.01])
    eta, kappa = 1.0, 900.0
    gd = run_optimizer(optax.sgd(eta), toy, p0, 1)
    np.testing.assert_allclose(gd.w[1], [1 - 1e-4, 0.01 - 2 * 0.01], rtol=1e-12)
    sel = diagonal_mask(dense_hessian_diagonal(toy), 0.5, refresh_every=1)
    got = run_optimizer(ire(optax.sgd(eta), kappa, sel), toy, p0, 1)
    np.testing.assert_allclose(got.w[1], [1 - (1 + kappa) * 1e-4, -0.01], rtol=1e-12)


def test_exact_ire_at_the_current_iterate_reverses_the_drift_and_midpoint_does_not() -> None:
    # The top eigenvector at (u, v) is tilted by ~2uv/(1+u^2); the flat projection of the
    # gradient (u v^2, (1+u^2) v) is then ~ -u v^2: IRE at the current point pushes u *up*.
    p0 = jnp.array([1.0, 0.01])
    cur = run_optimizer(ire(optax.sgd(1.0), 90.0, exact_flat(toy, 1, refresh_every=1)), toy, p0, 1)
    np.testing.assert_allclose(cur.w[1, 0] - 1.0, 89 * 1e-4, rtol=1e-3)
    mid = run_optimizer(
        ire(optax.sgd(1.0), 90.0, exact_flat(toy, 1, refresh_every=1, point="midpoint")),
        toy,
        p0,
        100,
    )
    np.testing.assert_allclose(mid.w[1], [1 - 1e-4, -0.01], rtol=1e-12)  # no midpoint yet
    assert mid.w[-1, 0] < 0.95  # drifts toward the flat end, like the mask
    assert mid.diverged_at is None


# --------------------------------------------------------------------------------------------
# The two selectors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.1, 0.5, 0.77, 0.95])
def test_mask_holds_the_requested_fraction_of_smallest_coordinates(gamma: float) -> None:
    d = 37
    vals = jnp.asarray(np.random.default_rng(1).permutation(d).astype(float) ** 2)
    sel = diagonal_mask(lambda p, key: vals, gamma, refresh_every=1)
    p = jnp.ones(d)
    state = sel.refresh(sel.init(p), p, jax.random.PRNGKey(0), lambda x: x, ())
    mask = np.asarray(state.mask)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert mask.sum() == mask_size(gamma, d) == round(gamma * d)
    assert np.max(np.asarray(vals)[mask == 1]) < np.min(np.asarray(vals)[mask == 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smallest_mask_selects_the_same_set_as_a_sort(dtype: type) -> None:
    # The bisection selection against a sort (numpy lexsort: value, then -0.0 before +0.0 as in
    # IEEE's total order, then index), on vectors with many ties, signed zeros, infinities and
    # values spread over 60 decades, every m; and against lax.top_k(-x, m), which it replaces.
    rng = np.random.default_rng(0)
    pools = (
        lambda d: rng.normal(size=d),
        lambda d: rng.integers(-3, 4, size=d).astype(float),
        lambda d: rng.choice([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf], size=d),
        lambda d: rng.normal(size=d) * 10.0 ** rng.integers(-30, 30, size=d),
    )
    d = 24
    for trial in range(24):
        x = pools[trial % 4](d).astype(dtype)
        order = np.lexsort((np.arange(d), ~np.signbit(x), x))
        for m in range(d + 1):
            ref = np.zeros(d, dtype)
            ref[order[:m]] = 1
            got = np.asarray(smallest_mask(jnp.asarray(x), m))
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, ref, err_msg=f"x={x}, m={m}")
        m = d // 3
        ref = np.zeros(d, dtype)
        ref[np.asarray(jax.lax.top_k(-jnp.asarray(x), m)[1])] = 1
        np.testing.assert_array_equal(np.asarray(smallest_mask(jnp.asarray(x), m)), ref)
    with pytest.raises(ValueError, match="m must be in"):
        smallest_mask(jnp.ones(3), 4)
    with pytest.raises(ValueError, match="float vector"):
        smallest_mask(jnp.ones((2, 2)), 1)


def test_mask_threshold_is_global_over_a_pytree() -> None:
    params = {"a": jnp.ones(3), "b": jnp.ones((2, 2))}
    diag = {"a": jnp.array([5.0, 0.1, 7.0]), "b": jnp.array([[0.2, 9.0], [0.3, 8.0]])}
    sel = diagonal_mask(lambda p, key: diag, 3 / 7, refresh_every=1)
    opt = ire(optax.sgd(1.0), 1.0, sel)
    grads = jax.tree.map(jnp.ones_like, params)
    u, _ = opt.update(grads, opt.init(params), params)
    # -1 everywhere, doubled on the three smallest estimates: a[1], b[0,0], b[1,0].
    np.testing.assert_array_equal(u["a"], [-1.0, -2.0, -1.0])
    np.testing.assert_array_equal(u["b"], [[-2.0, -1.0], [-2.0, -1.0]])


@pytest.mark.parametrize("k", [1, pytest.param(3, marks=pytest.mark.slow)])
@pytest.mark.parametrize("radial", [True, False])
def test_exact_projection_is_orthogonal_to_the_top_k_eigenvectors(k: int, radial: bool) -> None:
    d = 12
    a = _spd(d, 2)
    p = jnp.asarray(np.random.default_rng(3).normal(size=d))
    groups = (5, 7)
    sel = exact_flat(quartic, k, radial=radial, groups=groups, refresh_every=1, solver="dense")
    st = sel.refresh(sel.init(p), p, jax.random.PRNGKey(0), lambda x: x, (a,))
    evals, evecs = np.linalg.eigh(np.asarray(jax.hessian(quartic)(p, a)))
    top = evecs[:, ::-1][:, :k]
    np.testing.assert_allclose(np.asarray(st.values), evals[::-1][:k], rtol=1e-9)
    if k == 3 and not radial:  # the matrix-free solver agrees (compiled once: costly)
        lz = exact_flat(quartic, k, radial=radial, groups=groups, solver="lanczos")
        st_lz = jax.jit(lz.refresh, static_argnums=(3,))(
            lz.init(p), p, jax.random.PRNGKey(0), _ident, (a,)
        )
        np.testing.assert_allclose(np.asarray(st_lz.values), evals[::-1][:k], rtol=1e-9)
        assert int(st_lz.matvecs) <= d and float(st_lz.residual) < 1e-6
    u = jnp.asarray(np.random.default_rng(4).normal(size=d))
    pu = np.asarray(sel.project(st, p, u))
    assert np.max(np.abs(top.T @ pu)) < 1e-9 * np.linalg.norm(u)
    np.testing.assert_allclose(np.asarray(sel.project(st, p, jnp.asarray(pu))), pu, atol=1e-12)
    if not radial:
        for lo, hi in ((0, 5), (5, 12)):
            assert abs(np.dot(np.asarray(p[lo:hi]), pu[lo:hi])) < 1e-9 * np.linalg.norm(u)
    else:  # the complement of the top-k eigenspace only: its dimension is d - k
        proj = np.stack([np.asarray(sel.project(st, p, e)) for e in jnp.eye(d)])
        assert round(float(np.trace(proj))) == d - k


def test_refresh_happens_at_warmup_plus_multiples_of_k_and_nothing_before_warmup() -> None:
    calls = []

    def diag(p, key):
        return p  # the mask follows the parameters, so each refresh is visible

    sel = diagonal_mask(diag, 0.5, refresh_every=3, warmup=4)
    opt = ire(optax.sgd(0.1), 2.0, sel)
    p = jnp.array([1.0, 2.0, 3.0, 4.0])
    state = opt.init(p)
    g = jnp.ones(4)
    for t in range(12):
        u, new = opt.update(g, state, p)
        if t < 4:
            np.testing.assert_array_equal(u, -0.1 * g)
        else:
            assert np.count_nonzero(np.isclose(np.asarray(u), -0.3, rtol=1e-12)) == 2
        if not np.array_equal(new.flat.diag, state.flat.diag):
            calls.append(t)
        state = new
        p = p[::-1] + t  # reorder so a refresh changes the estimate
    assert calls == [4, 7, 10]


@pytest.mark.slow  # default-suite budget
def test_midpoint_refresh_uses_the_average_of_two_iterates() -> None:
    a = _spd(6, 5)
    p0 = jnp.linspace(0.5, 1.5, 6)
    sel = exact_flat(quartic, 1, refresh_every=1, point="midpoint", max_iters=6)
    traj, state = _steps(ire(optax.sgd(0.05), 3.0, sel), quartic, p0, 3, a)
    mid = 0.5 * (traj[1] + traj[2])  # the last update was computed at traj[2], prev traj[1]
    top = np.linalg.eigh(np.asarray(jax.hessian(quartic)(mid, a)))[1][:, -1]
    assert abs(abs(float(np.dot(top, state.flat.vectors[:, 0]))) - 1) < 1e-9


# --------------------------------------------------------------------------------------------
# Composition and compilation
# --------------------------------------------------------------------------------------------


def test_composes_with_optax_chain_and_forwards_loss_args() -> None:
    a = _spd(8, 6)
    p0 = jnp.linspace(-1.0, 1.0, 8)
    sel = exact_flat(quartic, 2, refresh_every=1, max_iters=8)
    kappa = 4.0
    # IRE inside a chain (after clipping) and SAM inside IRE (SAM-IRE): both need loss_args.
    outer = optax.chain(optax.clip_by_global_norm(1e6), ire(optax.sgd(0.05), kappa, sel))
    traj, _ = _steps(outer, quartic, p0, 1, a)
    g = jax.grad(quartic)(p0, a)
    evecs = np.linalg.eigh(np.asarray(jax.hessian(quartic)(p0, a)))[1][:, ::-1][:, :2]
    u = -0.05 * np.asarray(g)
    expected = np.asarray(p0) + u + kappa * (u - evecs @ (evecs.T @ u))
    np.testing.assert_allclose(traj[1], expected, rtol=1e-9, atol=1e-12)

    sam_ire = ire(optax.chain(sam(quartic, 0.1), optax.sgd(0.05)), kappa, sel)
    traj, _ = _steps(sam_ire, quartic, p0, 1, a)
    e = 0.1 * np.asarray(g) / np.linalg.norm(g)
    u = -0.05 * np.asarray(jax.grad(quartic)(p0 + e, a))
    expected = np.asarray(p0) + u + kappa * (u - evecs @ (evecs.T @ u))
    np.testing.assert_allclose(traj[1], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("selector", ["exact", "mask"])
def test_state_goes_through_jit_and_scan(selector: str) -> None:
    a = _spd(8, 7)
    p0 = jnp.linspace(-1.0, 1.0, 8)
    sel = (
        exact_flat(quartic, 2, refresh_every=2, point="midpoint")
        if selector == "exact"
        else diagonal_mask(hutchinson_diagonal(quartic, num_samples=4), 0.6, refresh_every=2)
    )
    opt = ire(gd_wd_transform(0.05, 1e-2), 3.0, sel)
    loop, _ = _steps(opt, quartic, p0, 9, a)

    @jax.jit
    def scanned(p, a):
        def body(c, _):
            p, s = c
            u, s = opt.update(jax.grad(quartic)(p, a), s, p, loss_args=(a,))
            return (optax.apply_updates(p, u), s), p

        (p, s), _ = jax.lax.scan(body, (p, opt.init(p)), None, length=9)
        return p, s

    p_end, state = scanned(p0, a)
    np.testing.assert_allclose(p_end, loop[-1], rtol=1e-12)
    assert int(state.step) == 9
    compiled = run_optimizer(opt, quartic, p0, 9, loss_args=(a,), saveat=SaveAt(every=3))
    np.testing.assert_allclose(compiled.w, loop[::3], rtol=1e-12)


# --------------------------------------------------------------------------------------------
# SAM and the diagonal estimators
# --------------------------------------------------------------------------------------------


def test_sam_standard_and_average_perturbations() -> None:
    a = _spd(6, 8)
    p = jnp.linspace(-1.0, 1.0, 6)
    g = a @ p

    def quad(w, a):
        return 0.5 * w @ a @ w

    s = sam(quad, 0.2)
    out, _ = s.update(g, s.init(p), p, loss_args=(a,))
    np.testing.assert_allclose(out, a @ (p + 0.2 * g / jnp.linalg.norm(g)), rtol=1e-12)
    s = sam(quad, 0.2, variant="average", seed=3)
    out1, st = s.update(g, s.init(p), p, loss_args=(a,))
    out2, _ = s.update(g, st, p, loss_args=(a,))
    e1 = np.linalg.solve(np.asarray(a), np.asarray(out1)) - np.asarray(p)
    assert abs(np.linalg.norm(e1) - 0.2) < 1e-9  # on the sphere of radius rho
    assert not np.allclose(out1, out2)  # a fresh direction each step
    again, _ = s.update(g, s.init(p), p, loss_args=(a,))
    np.testing.assert_array_equal(again, out1)  # seeded


def test_diagonal_estimators_against_exact_values() -> None:
    a = _spd(7, 9)
    p = jnp.linspace(-1.0, 1.0, 7)
    exact = np.diag(np.asarray(jax.hessian(quartic)(p, a)))
    got = dense_hessian_diagonal(quartic)(p, jax.random.PRNGKey(0), a)
    np.testing.assert_allclose(got, exact, rtol=1e-12)
    est = hutchinson_diagonal(quartic, num_samples=20000)(p, jax.random.PRNGKey(1), a)
    # Hutchinson's variance per sample is sum_{j != i} H_ij^2 (~ 25 here): 3 sigma / sqrt(n).
    off = np.sqrt(np.sum(np.asarray(jax.hessian(quartic)(p, a)) ** 2, 1) - exact**2)
    assert np.all(np.abs(np.asarray(est) - exact) < 4 * off / np.sqrt(20000) + 1e-12)


def test_fisher_diagonal_is_the_expected_squared_sampled_gradient() -> None:
    # One input, three classes, linear logits: E_y[(d CE(y)/dW)^2] enumerated exactly.
    x = jnp.array([0.5, -1.0])
    w = jnp.array([[0.3, -0.2, 0.1], [0.05, 0.4, -0.3]])

    def predict(w, x):
        return (x @ w)[None, :]

    probs = jax.nn.softmax(predict(w, x))[0]

    def ce(w, c):
        return optax.softmax_cross_entropy_with_integer_labels(predict(w, x), jnp.array([c]))[0]

    exact = sum(probs[c] * jax.grad(ce)(w, c) ** 2 for c in range(3))
    est = fisher_diagonal(predict, num_samples=40000)(w, jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(est, exact, rtol=0.05, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


def test_bad_inputs_name_the_value_and_what_was_expected() -> None:
    sel = exact_flat(toy, 1)
    with pytest.raises(ValueError, match="kappa must be a non-negative finite float, got -1"):
        ire(optax.sgd(1.0), -1.0, sel)
    for gamma in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match=rf"gamma must be in \(0, 1\).*got {gamma}"):
            diagonal_mask(dense_hessian_diagonal(toy), gamma)
    for bad_k in (0, -3):
        with pytest.raises(ValueError, match=rf"refresh_every \(K\) must be >= 1, got {bad_k}"):
            diagonal_mask(dense_hessian_diagonal(toy), 0.5, refresh_every=bad_k)
        with pytest.raises(ValueError, match=r"refresh_every \(K\) must be >= 1"):
            exact_flat(toy, 1, refresh_every=bad_k)
    with pytest.raises(TypeError, match=r"refresh_every \(K\) must be a positive int, got 2.5"):
        exact_flat(toy, 1, refresh_every=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup must be an int >= 0"):
        exact_flat(toy, 1, warmup=-1)
    with pytest.raises(ValueError, match="point must be 'current' or 'midpoint'"):
        exact_flat(toy, 1, point="middle")
    with pytest.raises(ValueError, match="k must be < the number of parameters D=2, got k=2"):
        ire(optax.sgd(1.0), 1.0, exact_flat(toy, 2)).init(jnp.ones(2))
    with pytest.raises(TypeError, match="selector must be built by exact_flat"):
        ire(optax.sgd(1.0), 1.0, "exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rho must be a positive finite float, got 0"):
        sam(toy, 0.0)
    with pytest.raises(ValueError, match="variant must be 'standard' or 'average'"):
        sam(toy, 0.1, variant="worst")
    opt = ire(optax.sgd(1.0), 1.0, sel)
    with pytest.raises(ValueError, match="ire needs params"):
        opt.update(jnp.ones(2), opt.init(jnp.ones(2)))
    with pytest.raises(TypeError, match="loss_args must be a tuple"):
        opt.update(jnp.ones(2), opt.init(jnp.ones(2)), jnp.ones(2), loss_args=[1])
    bad = diagonal_mask(lambda p, key: jnp.ones(3), 0.5)
    with pytest.raises(ValueError, match="diag_fn returned 3 values for 2 parameters"):
        ire(optax.sgd(1.0), 1.0, bad).update(
            jnp.ones(2), ire(optax.sgd(1.0), 1.0, bad).init(jnp.ones(2)), jnp.ones(2)
        )
    with pytest.raises(ValueError, match=r"steps \(10\) must be a multiple of SaveAt.every \(3\)"):
        run_optimizer(optax.sgd(1.0), toy, jnp.ones(2), 10, saveat=SaveAt(every=3))
