"""The shared objects of the flows (theory/flows/common.py): save times, geometries, stepping.

Oracles: dense ``eigh`` of ``jax.hessian`` for the top eigenpairs; the problems' closed-form
tangent projectors, distances to ``Gamma`` and codimensions; the classical RK4 formula
(:func:`theory.flows.reduction.rk4_step`) for the fixed-step solver.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import theory
from theory.core import linalg
from theory.flows.common import (
    RK4,
    Dense,
    FixedSteps,
    GaussNewton,
    Lanczos,
    SaveTimes,
    check_stepping,
    controller_config,
    evals_per_step,
    geometry_of,
    solve_on_gamma,
)
from theory.flows.manifold import project_to_manifold
from theory.flows.reduction import rk4_step
from theory.problems.analytic import PROBLEMS, curved_manifold

# ------------------------------------------------------------------ SaveTimes


def test_save_times_forms():
    np.testing.assert_allclose(SaveTimes(2.0, n=5).times(), [0.0, 0.5, 1.0, 1.5, 2.0])
    st = SaveTimes(ts=[0.5, 1.0, 3.0])
    np.testing.assert_allclose(st.times(), [0.0, 0.5, 1.0, 3.0])  # 0 prepended
    assert st.end == 3.0 and not st.equally_spaced()
    assert SaveTimes(4.0, n=9).equally_spaced()
    assert SaveTimes.of(st) is st
    np.testing.assert_allclose(SaveTimes.of(1.0).times(), np.linspace(0.0, 1.0, 101))
    np.testing.assert_allclose(SaveTimes.of(np.array([0.0, 0.25])).times(), [0.0, 0.25])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SaveTimes(), "exactly one of t1"),
        (lambda: SaveTimes(1.0, ts=[1.0]), "exactly one of t1"),
        (lambda: SaveTimes(-1.0), "SaveTimes.t1 must be"),
        (lambda: SaveTimes(float("nan")), "SaveTimes.t1 must be"),
        (lambda: SaveTimes(1.0, n=1), r"SaveTimes.n must be an int >= 2, got 1"),
        (lambda: SaveTimes(1.0, n=True), r"SaveTimes.n must be an int >= 2, got True"),
        (lambda: SaveTimes(ts=[0.0, 2.0, 1.0]), r"strictly increasing, got \[0.0, 2.0, 1.0\]"),
        (lambda: SaveTimes(ts=[-1.0, 1.0]), ">= 0"),
        (lambda: SaveTimes(ts=[0.0, np.inf]), "finite"),
        (lambda: SaveTimes(ts=[]), "non-empty"),
        (lambda: SaveTimes(ts=[0.0]), "must contain a positive time"),
    ],
)
def test_save_times_refuses_bad_input(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ------------------------------------------------------------------ geometries


def _sym_problem(dim: int = 12, seed: int = 0):
    """A scale-invariant quadratic with a known, well-separated spectrum on the sphere."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    a = jnp.asarray(q @ np.diag(np.linspace(1.0, 6.0, dim) ** 2) @ q.T)

    def loss(w):
        u = w / jnp.linalg.norm(w)
        return 0.5 * u @ a @ u

    return loss, jnp.asarray(rng.normal(size=dim))


@pytest.mark.parametrize(
    "geometry",
    [
        Dense(),
        Lanczos(),
        pytest.param(Lanczos(iters=12, seed=None), marks=pytest.mark.slow),
        GaussNewton(lambda w: w[:1]),
    ],
    ids=["dense", "lanczos", "lanczos-ones", "gauss_newton"],
)  # default-suite budget: the others in make test-slow
def test_top_eigs_against_dense_eigh(geometry):
    loss, w = _sym_problem()
    vals, vecs = jax.jit(lambda x: geometry.top_eigs(loss, x, 3))(w)
    ref_vals, ref_vecs = linalg.eigh(jax.hessian(loss)(w))
    ref_vals, ref_vecs = ref_vals[::-1][:3], ref_vecs[:, ::-1][:, :3]
    assert vals.shape == (3,) and vecs.shape == (12, 3)
    np.testing.assert_allclose(vals, ref_vals, rtol=1e-9)
    overlap = np.abs(np.sum(np.asarray(vecs) * np.asarray(ref_vecs), axis=0))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-8)


@pytest.mark.slow
def test_resolve_dense_gives_phi_and_the_rank():
    prob = curved_manifold()  # Gamma of codimension k = 2 in the sphere
    theta0 = jnp.asarray(prob.start)
    for geometry in (Dense(), Lanczos()):
        start, resolved = geometry.resolve(prob.loss, theta0)
        assert geometry.rank is None and resolved.rank == 2
        np.testing.assert_allclose(start, project_to_manifold(prob.loss, theta0), atol=1e-14)
        assert float(prob.distance_to_manifold(start)) < 1e-10
    _, given = Dense(rank=3).resolve(prob.loss, theta0)
    assert given.rank == 3  # a given rank is kept, not counted


@pytest.mark.slow  # default-suite budget
def test_resolve_gauss_newton_lands_on_gamma_with_rank_n():
    prob = curved_manifold()
    assert prob.residuals is not None
    theta0 = jnp.asarray(prob.start)
    start, resolved = GaussNewton(prob.residuals).resolve(prob.loss, theta0)
    assert resolved.rank == 2 == int(prob.residuals(start).shape[0])
    assert float(prob.distance_to_manifold(start)) < 1e-10
    # the foot of the normal, not Phi: close to it, to second order in the distance
    d0 = float(prob.distance_to_manifold(theta0 / jnp.linalg.norm(theta0)))
    gap = float(jnp.linalg.norm(start - project_to_manifold(prob.loss, theta0)))
    assert gap < 10 * d0**2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["curved_manifold", "great_circle"])
def test_frames_against_closed_form_projector(name):
    prob = PROBLEMS[name]()
    assert prob.residuals is not None
    u = prob.sample_on_manifold(jax.random.PRNGKey(3), jnp.float64)
    rank = prob.dim - 1 - prob.manifold_dim
    p_ref = np.asarray(prob.tangent_projector(u))
    for geometry in (
        Dense(rank=rank),
        Lanczos(rank=rank),
        GaussNewton(prob.residuals, rank=rank),
        GaussNewton(prob.residuals, rank=rank, jacobian=True),
    ):
        frame = jax.jit(lambda x, g=geometry: g.frame(prob.loss, x, 2)[:2])(u)
        vals = np.asarray(frame[0])
        np.testing.assert_allclose(vals[0], prob.lambda1(u), rtol=1e-9)
        p = np.asarray(
            jax.jit(
                lambda x, g=geometry: jax.vmap(g.frame(prob.loss, x, 2).project)(jnp.eye(x.size))
            )(u)
        )
        np.testing.assert_allclose(p, p_ref, atol=1e-8)


def test_jacobian_frame_pads_when_n_is_small():
    prob = PROBLEMS["great_circle"]()  # one residual
    assert prob.residuals is not None
    u = prob.sample_on_manifold(jax.random.PRNGKey(0), jnp.float64)
    frame = GaussNewton(prob.residuals, jacobian=True).frame(prob.loss, u, 3)
    assert frame.values.shape == (3,) and frame.vectors.shape == (prob.dim, 3)
    np.testing.assert_allclose(frame.values[1:], 0.0)
    np.testing.assert_allclose(frame.values[0], prob.lambda1(u), rtol=1e-10)


@pytest.mark.slow  # default-suite budget
def test_retraction_returns_to_gamma():
    prob = curved_manifold()
    assert prob.residuals is not None
    u = prob.sample_on_manifold(jax.random.PRNGKey(1), jnp.float64)
    kick = 1e-3 * jax.random.normal(jax.random.PRNGKey(2), u.shape, u.dtype)
    for geometry in (Dense(rank=2), GaussNewton(prob.residuals)):
        back = geometry.retract(prob.loss, u + kick)
        assert float(prob.distance_to_manifold(back)) < 1e-10


def test_geometry_strings_and_unknown_rank_are_refused():
    with pytest.raises(TypeError, match=r"theory.Dense\(\), theory.Lanczos\(...\)"):
        geometry_of("dense")
    with pytest.raises(TypeError, match="geometry must be a geometry object"):
        theory.sharpness_flow(lambda w: jnp.sum(w), jnp.ones(3), 1.0, geometry="lanczos")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Dense.rank is unknown"):
        theory.SharpnessFlowField(lambda w: jnp.sum(w), Dense())
    with pytest.raises(ValueError, match=r"Lanczos\.iters"):
        Lanczos(iters=0)
    with pytest.raises(TypeError, match=r"GaussNewton\.residual_fn must be callable"):
        GaussNewton(3.0)  # type: ignore[arg-type]


def test_geometry_config_records_settings():
    assert Lanczos(rank=2, iters=30).config() == {
        "geometry": "Lanczos",
        "rank": 2,
        "iters": 30,
        "seed": 0,
    }
    cfg = GaussNewton(lambda w: w, jacobian=True).config()
    assert cfg == {"geometry": "GaussNewton", "rank": None, "iters": 64, "jacobian": True}


# ------------------------------------------------------------------ stepping


def test_fixed_steps_and_controllers():
    assert FixedSteps(0.3).substeps(SaveTimes(1.0, n=3)) == 2  # interval 0.5, ceil(0.5 / 0.3)
    assert FixedSteps(0.25).substeps(SaveTimes(1.0, n=3)) == 2  # exact division
    with pytest.raises(ValueError, match=r"FixedSteps\.dt must be"):
        FixedSteps(0.0)
    with pytest.raises(ValueError, match="equally spaced"):
        FixedSteps(0.1).substeps(SaveTimes(ts=[0.0, 1.0, 3.0]))
    with pytest.raises(TypeError, match=r"theory.FixedSteps\(dt\)"):
        check_stepping("pid")
    with pytest.raises(ValueError, match=r"stepsize_controller\.atol must be"):
        check_stepping(diffrax.PIDController(rtol=1e-6, atol=-1.0))
    assert controller_config(FixedSteps(0.1)) == {"controller": "FixedSteps", "dt": 0.1}
    pid = controller_config(diffrax.PIDController(rtol=1e-6, atol=1e-8))
    assert pid["controller"] == "PIDController" and pid["rtol"] == 1e-6 and pid["atol"] == 1e-8
    assert evals_per_step(diffrax.Tsit5()) == 6 and evals_per_step(RK4()) == 4


def test_rk4_solver_is_the_classical_formula():
    # One step of the diffrax RK4 against rk4_step on a nonlinear ODE.
    def f(t, y, args):
        return jnp.stack([y[1], -jnp.sin(y[0])])

    term = diffrax.ODETerm(f)
    y0, h = jnp.array([1.0, 0.2]), 0.3
    state = RK4().init(term, 0.0, h, y0, None)
    y1 = RK4().step(term, 0.0, h, y0, None, state, False)[0]
    np.testing.assert_allclose(y1, rk4_step(lambda y: f(None, y, None), y0, h), rtol=1e-13)


@pytest.mark.slow
def test_solve_on_gamma_fixed_and_adaptive_agree():
    # The great circle: a 1-d Gamma; the projected flow with RK4 steps against Tsit5.
    prob = PROBLEMS["great_circle"]()
    start, geometry = Dense().resolve(prob.loss, jnp.asarray(prob.start))
    field = theory.SharpnessFlowField(prob.loss, geometry)
    saveat = SaveTimes(1.0, n=3)
    fixed = solve_on_gamma(field, geometry, prob.loss, start, saveat, RK4(), FixedSteps(0.05))
    adaptive = solve_on_gamma(
        field,
        geometry,
        prob.loss,
        start,
        saveat,
        diffrax.Tsit5(),
        diffrax.PIDController(rtol=1e-10, atol=1e-12),
    )
    assert fixed.num_steps == 20 and fixed.num_evals == 80 and fixed.stopped_at is None
    np.testing.assert_allclose(fixed.ts, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(fixed.ys, adaptive.ys, atol=1e-7)
    ref = np.asarray(prob.flow_closed_form(start, jnp.asarray(fixed.ts), "F1"))
    np.testing.assert_allclose(adaptive.ys, ref, atol=1e-9)
    with pytest.raises(ValueError, match="RK4 has no error estimate"):
        solve_on_gamma(
            field,
            geometry,
            prob.loss,
            start,
            saveat,
            RK4(),
            diffrax.PIDController(rtol=1e-6, atol=1e-8),
        )


@pytest.mark.slow
@pytest.mark.parametrize("geometry", [Dense(), Lanczos(), GaussNewton(lambda w: w[:1])])
def test_grad_and_top_eigs_share_the_linearization_and_match_separate_calls(geometry):
    prob = curved_manifold()
    w = jnp.asarray(prob.start)
    grad, vals, vecs = geometry.grad_and_top_eigs(prob.loss, w, 2)
    ref_vals, _ = geometry.top_eigs(prob.loss, w, 2)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(jax.grad(prob.loss)(w)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(vals), np.asarray(ref_vals), rtol=1e-10)
    hv = jax.jvp(jax.grad(prob.loss), (w,), (vecs[:, 0],))[1]
    np.testing.assert_allclose(np.asarray(hv), float(vals[0]) * np.asarray(vecs[:, 0]), atol=1e-8)
