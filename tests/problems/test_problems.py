"""Tests of ``theory.problems.analytic`` against independent oracles.

Oracles: scale-invariance identities (docs/theory.md section 1), dense ``jax.hessian`` + ``eigh``
for the closed-form sharpness and eigenvector, third-order autodiff (Hellmann-Feynman) and finite
differences of the dense ``lambda_1`` for the Riemannian gradient, Jacobians of the
parametrization for the tangent projector, ``scipy.integrate.solve_ivp`` for the closed-form
flows, and projected gradient descent for the default starts.

Tolerances: float64 oracle comparisons use ~1e-10 relative (rounding of a dense Hessian and its
``eigh`` is ~1e-15 relative, times modest condition numbers); float32 uses ~1e-4 (eps 1.2e-7
times conditioning up to ~1e3). Finite differences and ODE solves have their own error budgets,
stated where used.

Speed: compilation dominates, so each quantity is computed by one compiled, vmapped function per
problem (cached), and assertions run in NumPy.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from theory.core.invariance import check_scale_invariance
from theory.problems import analytic as pr

DTYPES = [jnp.float32, jnp.float64]
RTOL = {jnp.float32: 1e-4, jnp.float64: 1e-10}  # see the module docstring

CASES = {
    "great_circle": ("great_circle", {}),
    "ire_toy": ("ire_toy", {}),
    "curved_manifold": ("curved_manifold", {}),  # k = 2: closed-form 2x2 eigenpair
    "curved_k1": ("curved_manifold", {"m": 3, "k": 1, "seed": 1}),  # scalar M
    "curved_k3": ("curved_manifold", {"m": 5, "k": 3, "seed": 2}),  # eigh branch
}
ALL = list(CASES)
MAIN = ["great_circle", "ire_toy", "curved_manifold"]
CURVES = ["great_circle", "ire_toy"]  # the problems with closed-form flows


# --------------------------------------------------------------------------------------------
# Cached problems, points and compiled evaluations
# --------------------------------------------------------------------------------------------


@functools.cache
def _problem(case: str) -> pr.AnalyticProblem:
    name, kwargs = CASES[case]
    problem = pr.get_problem(name, **kwargs)
    assert isinstance(problem, pr.AnalyticProblem)
    return problem


def _closed_forms(problem: pr.AnalyticProblem) -> tuple:
    return (
        problem.lambda1,
        problem.top_eigvec,
        problem.riemannian_grad_log_lambda1,
        problem.tangent_projector,
        problem.distance_to_manifold,
    )


@eqx.filter_jit
def _sample(sample_fn, n: int, seed: int) -> jax.Array:
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    return jax.vmap(lambda k: sample_fn(k, jnp.float64))(keys)


@functools.cache
def _on_points(case: str, n: int = 6, seed: int = 0) -> np.ndarray:
    """``n`` float64 points of Gamma from ``sample_on_manifold``, ``(n, D)``."""
    return np.asarray(_sample(_problem(case).sample_on_manifold, n, seed))


def _near_points(case: str, dtype, n: int = 4) -> jax.Array:
    """Points at distance ~0.05-0.1 from Gamma, at random scales in [e^-1, e]."""
    on = _on_points(case)[:n]
    rng = np.random.default_rng(1)
    scale = np.exp(rng.uniform(-1.0, 1.0, (n, 1)))
    return jnp.asarray(scale * (on + 0.05 * rng.standard_normal(on.shape)), dtype)


def _hellmann_feynman(loss, u, v):
    """``grad_x [v^T hess L(x) v]`` at ``x = u`` with ``v`` fixed (third-order autodiff)."""

    def vhv(x):
        return jax.jvp(lambda y: jax.jvp(loss, (y,), (v,))[1], (x,), (v,))[1]

    return jax.grad(vhv)(u)


@eqx.filter_jit
def _closed_at(fns, us) -> dict:
    """The closed forms at the rows of ``us``."""
    names = ("lam", "v1", "g", "proj", "dist")
    return {k: jax.vmap(f)(us) for k, f in zip(names, fns, strict=True)}


@eqx.filter_jit
def _evaluate(loss, fns, us) -> dict:
    """Closed forms and their oracles (dense Hessian, eigh, Hellmann-Feynman) at ``us``."""
    out = _closed_at(fns, us)
    out["us"], out["loss"], out["grad_loss"] = us, jax.vmap(loss)(us), jax.vmap(jax.grad(loss))(us)
    out["hess"] = jax.vmap(jax.hessian(loss))(us)
    out["evals"], out["evecs"] = jnp.linalg.eigh(out["hess"])
    out["hf"] = jax.vmap(lambda u, v: _hellmann_feynman(loss, u, v))(us, out["evecs"][:, :, -1])
    return out


@functools.cache
def _bundle(case: str) -> dict[str, np.ndarray]:
    """Float64 closed forms and oracles at 6 sampled points of Gamma (one compile per case)."""
    problem = _problem(case)
    out = _evaluate(problem.loss, _closed_forms(problem), jnp.asarray(_on_points(case)))
    return {k: np.asarray(v) for k, v in out.items()}


@eqx.filter_jit
def _identities(loss, ws):
    vals = jax.vmap(loss)(ws)
    scaled = jax.vmap(loss)(3.7 * ws)
    grads = jax.vmap(jax.grad(loss))(ws)
    hess = jax.vmap(jax.hessian(loss))(ws)
    hw = jnp.einsum("pij,pj->pi", hess, ws)
    return vals, scaled, grads, hw, jnp.linalg.norm(hess, 2, axis=(1, 2))


@functools.cache
def _distance(case: str):
    return jax.jit(jax.vmap(_problem(case).distance_to_manifold))


# --------------------------------------------------------------------------------------------
# Scale invariance and dtypes
# --------------------------------------------------------------------------------------------


def test_ire_toy_in_its_own_coordinates():
    # The chart loss is the sphere toy read in the chart; its closed-form lambda_max against
    # eigvalsh of the dense Hessian; the stall prediction only for the paper's start.
    for u, v in [(1.0, 0.01), (-0.7, 0.3), (2.0, -1.5)]:
        w2 = jnp.asarray([u, v], jnp.float64)
        w3 = pr.ire_to_sphere(u, v)
        np.testing.assert_allclose(pr.ire_toy_chart_loss(w2), _problem("ire_toy").loss(w3), 1e-14)
        ref = np.linalg.eigvalsh(np.asarray(jax.hessian(pr.ire_toy_chart_loss)(w2)))[-1]
        np.testing.assert_allclose(pr.ire_toy_chart_lambda_max(w2), ref, rtol=1e-13)
    assert pr.ire_toy_stall(1.0, 0.01, 1.0, 0.0) == pytest.approx(math.exp(-0.01 / math.sqrt(2)))
    assert math.isnan(pr.ire_toy_stall(1.0, 0.01, 0.5, 0.0))


def test_curve_charts():
    # great_circle: (longitude, latitude); ire_toy: the toy's (u, v); none for surfaces.
    gc = _problem("great_circle")
    assert gc.chart is not None
    x, y = gc.chart(jnp.asarray([[0.0, 1.0, 0.0], [math.cos(0.1), 0.0, math.sin(0.1)]]))
    np.testing.assert_allclose(np.asarray(x), [math.pi / 2, 0.0], atol=1e-15)
    np.testing.assert_allclose(np.asarray(y), [0.0, 0.1], rtol=1e-14, atol=1e-15)
    toy = _problem("ire_toy")
    assert toy.chart is not None
    np.testing.assert_allclose(toy.chart(pr.ire_to_sphere(0.5, -0.2)), (0.5, -0.2), rtol=1e-14)
    assert _problem("curved_manifold").chart is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case", ["great_circle", "ire_toy", pytest.param("curved_manifold", marks=pytest.mark.slow)]
)
def test_scale_invariance_identities(case, dtype):
    problem = _problem(case)
    ws = _near_points(case, dtype)
    out = _identities(problem.loss, ws)
    assert all(o.dtype == dtype for o in out)
    vals, scaled, grads, hw, hnorm = (np.asarray(o, np.float64) for o in out)
    ws = np.asarray(ws, np.float64)
    tol = RTOL[dtype]
    wn, gn = np.linalg.norm(ws, axis=1), np.linalg.norm(grads, axis=1)
    assert np.all(vals > 1e-5)  # really off Gamma, so the identities are not trivially 0 = 0
    np.testing.assert_array_less(np.abs(scaled - vals), tol * np.max(vals))
    np.testing.assert_array_less(np.abs(np.sum(grads * ws, axis=1)), tol * gn * wn)
    # hess L(w) w = -grad L(w); rounding of H w is ~eps |H| |w|.
    np.testing.assert_array_less(np.linalg.norm(hw + grads, axis=1), tol * hnorm * wn)
    if dtype == jnp.float64:  # the shared check (looser than the float32 checks above)
        assert check_scale_invariance(problem.loss, jnp.asarray(ws[0]), name=case).ok


def test_identity_checks_can_fail():
    """A non-invariant perturbation of the loss visibly violates the identities used above."""
    loss = _problem("great_circle").loss
    vals, scaled, *_ = _identities(
        lambda w: loss(w) + 1e-3 * w[0] ** 2, _near_points(MAIN[0], jnp.float64)
    )
    assert np.max(np.abs(scaled - vals)) > 1e-3 * np.max(vals)


@eqx.filter_jit
def _residual_identities(loss, residuals, ws):
    res = jax.vmap(residuals)(ws)
    return jax.vmap(loss)(ws), res, jax.vmap(residuals)(3.7 * ws)


@pytest.mark.parametrize("case", ALL)
def test_residuals_reproduce_the_loss(case):
    """``1/2 |r(w)|^2 = L(w)`` off Gamma (float64; both sides are a few roundings of the same
    products, so 1e-13 relative), ``r`` is scale-invariant and vanishes on Gamma."""
    problem = _problem(case)
    assert problem.residuals is not None
    ws = _near_points(case, jnp.float64)
    vals, res, scaled = (
        np.asarray(x) for x in _residual_identities(problem.loss, problem.residuals, ws)
    )
    assert res.shape == (ws.shape[0], problem.dim - 1 - problem.manifold_dim)  # codimension
    assert np.all(vals > 1e-5)  # off Gamma: not a trivial 0 = 0
    np.testing.assert_allclose(0.5 * np.sum(res**2, axis=1), vals, rtol=1e-13)
    np.testing.assert_allclose(scaled, res, rtol=1e-13, atol=1e-15)
    on_gamma = _residual_identities(problem.loss, problem.residuals, jnp.asarray(_on_points(case)))
    np.testing.assert_array_less(np.abs(np.asarray(on_gamma[1])), 1e-14)


@pytest.mark.parametrize(
    "case", ["great_circle", "ire_toy", pytest.param("curved_manifold", marks=pytest.mark.slow)]
)
def test_float32_in_float32_out(case):
    """The closed forms compute in the input's dtype; float32 agrees with float64 (float32
    rounding times conditioning <= ~1e2: tolerance 1e-5); float64 in gives float64 out."""
    problem, b = _problem(case), _bundle(case)
    assert all(v.dtype == np.float64 for v in b.values())
    us = jnp.asarray(b["us"][:2], jnp.float32)
    out = _closed_at(_closed_forms(problem), us)
    assert all(v.dtype == jnp.float32 for v in out.values())
    assert problem.loss(us[0]).dtype == jnp.float32
    assert problem.point(np.zeros(problem.manifold_dim, np.float32)).dtype == jnp.float32
    np.testing.assert_allclose(out["lam"], b["lam"][:2], rtol=1e-5)
    np.testing.assert_allclose(out["g"], b["g"][:2], atol=1e-5 * (1 + np.max(np.abs(b["g"]))))
    if problem.has_closed_form_flow:
        for form in ("F0", "F1"):
            out32 = problem.flow_closed_form(us[0], 2.0, form)
            assert out32.dtype == jnp.float32
            ref = problem.flow_closed_form(jnp.asarray(b["us"][0]), 2.0, form)
            np.testing.assert_allclose(out32, ref, atol=1e-5)


def test_coefficients_are_float64_jit_arguments():
    for case in ALL:
        for leaf in jax.tree.leaves(_problem(case).loss):
            assert isinstance(leaf, np.ndarray) and leaf.dtype == np.float64
    loss = _problem("curved_manifold").loss
    jaxpr = jax.make_jaxpr(lambda mod, w: mod(w))(loss, jnp.ones(6, jnp.float32))
    assert not jaxpr.consts  # coefficients are inputs, not baked-in constants
    assert all(v.aval.dtype == jnp.float32 for v in jaxpr.jaxpr.outvars)


# --------------------------------------------------------------------------------------------
# Hessian on Gamma
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL)
def test_closed_form_sharpness_matches_dense_hessian(case):
    problem, b = _problem(case), _bundle(case)
    assert np.max(np.abs(b["loss"])) < 1e-28  # h: sum of squares of O(1e-16) residuals
    assert np.max(np.abs(b["grad_loss"])) < 1e-13
    evals, evecs = b["evals"], b["evecs"]
    np.testing.assert_allclose(evals[:, -1], b["lam"], rtol=1e-10)
    overlap = np.abs(np.sum(b["v1"] * evecs[:, :, -1], axis=1))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-10)  # eigvec error ~ eps / gap
    np.testing.assert_allclose(np.linalg.norm(b["v1"], axis=1), 1.0, atol=1e-14)
    # Simple top eigenvalue; the measured minimum over these cases' samples is 0.56.
    assert np.min((evals[:, -1] - evals[:, -2]) / evals[:, -1]) > 0.3
    # Rank of the Hessian = codimension of Gamma in the sphere (dim - 1 - manifold_dim).
    rank = np.sum(np.abs(evals) > 1e-8 * evals[:, -1:], axis=1)
    np.testing.assert_array_equal(rank, problem.dim - 1 - problem.manifold_dim)


@eqx.filter_jit
def _spectra(loss, us):
    """Eigenvalues of the reduced ``k x k`` matrix M at each row of ``us``, and of the dense
    Hessian at the first two rows."""
    reduced = jax.vmap(lambda u: jnp.linalg.eigvalsh(pr._cm_reduced(loss, u)[0]))(us)
    return reduced, jnp.linalg.eigvalsh(jax.vmap(jax.hessian(loss))(us[:2]))


@pytest.mark.parametrize(("m", "k"), [(4, 2), pytest.param(48, 16, marks=pytest.mark.slow)])
def test_curved_manifold_eigengap(m, k):
    """lambda_1 stays simple on Gamma: min relative gap over 2000 samples (measured 0.68 at the
    default and 0.54 at m=48, k=16 over 20000 samples; 0.4 leaves margin across seeds)."""
    problem = pr.curved_manifold(m=m, k=k)
    us = _sample(problem.sample_on_manifold, 2000, 3)
    reduced, dense = (np.asarray(x) for x in _spectra(problem.loss, us))
    assert np.min((reduced[:, -1] - reduced[:, -2]) / reduced[:, -1]) > 0.4
    # M's spectrum is the Hessian's nonzero spectrum, and its top the closed-form lambda_1.
    np.testing.assert_allclose(dense[:, -k:], reduced[:2], rtol=1e-10)
    np.testing.assert_allclose(problem.lambda1(us[0]), reduced[0, -1], rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Riemannian gradient
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL)
def test_riemannian_grad_matches_hellmann_feynman(case):
    """g = P_Gamma grad_x[v1^T hess L(x) v1] / lambda_1 (v1 fixed), at x = u on Gamma."""
    b = _bundle(case)
    hf = np.einsum("pij,pj->pi", b["proj"], b["hf"]) / b["evals"][:, -1:]
    assert np.max(np.linalg.norm(b["g"], axis=1)) > 0.1  # not a trivial 0 = 0
    np.testing.assert_allclose(b["g"], hf, atol=1e-10 * (1 + np.max(np.abs(hf))))


@eqx.filter_jit
def _directional_fd(point, loss, grad, params, dirs, h):
    """Per (s, e): <g(point(s)), d point/ds e> and the central difference of the dense
    log lambda_1 along t -> point(s + t e)."""

    def dense_log_lam(s):
        return jnp.log(jnp.linalg.eigvalsh(jax.hessian(loss)(point(s)))[-1])

    def one(s, e):
        u, du = jax.jvp(point, (s,), (e,))
        fd = (dense_log_lam(s + h * e) - dense_log_lam(s - h * e)) / (2 * h)
        return grad(u) @ du, fd, jnp.linalg.norm(du)

    return jax.vmap(one)(params, dirs)


@pytest.mark.parametrize("case", MAIN)
def test_riemannian_grad_matches_finite_differences(case):
    """<g, gamma'(0)> = d/dt log lambda_1^dense(gamma(t)) along curves gamma(t) = point(s + t e).

    Central differences with h = 1e-5: truncation ~h^2 |f'''| ~ 1e-9, rounding of the dense
    eigenvalue ~1e-15 / h = 1e-10; tolerance 1e-7.
    """
    problem = _problem(case)
    dim = problem.manifold_dim
    params = np.repeat(np.random.default_rng(0).uniform(-0.8, 0.8, (2, dim)), dim, axis=0)
    dirs = np.tile(np.eye(dim), (2, 1))
    directional, fd, speed = (
        np.asarray(x)
        for x in _directional_fd(
            problem.point, problem.loss, problem.riemannian_grad_log_lambda1, params, dirs, 1e-5
        )
    )
    assert np.max(np.abs(fd)) > 0.05  # the sharpness really varies along these curves
    np.testing.assert_allclose(directional, fd, atol=1e-7 * (1 + np.max(speed)))


# --------------------------------------------------------------------------------------------
# Tangent projector, parametrization, distance, start
# --------------------------------------------------------------------------------------------


@eqx.filter_jit
def _parametrization(point, proj_fn, dist_fn, loss, params):
    """Per s: point(s), its Jacobian ``(D, manifold_dim)``, P_Gamma, distance and loss there."""
    us = jax.vmap(point)(params)
    jacs = jax.vmap(jax.jacfwd(point))(params)
    return us, jacs, jax.vmap(proj_fn)(us), jax.vmap(dist_fn)(us), jax.vmap(loss)(us)


@functools.cache
def _param_bundle(case: str) -> tuple[np.ndarray, ...]:
    """The parametrization at 5 random parameters in [-1.2, 1.2]^manifold_dim."""
    problem = _problem(case)
    params = np.random.default_rng(1).uniform(-1.2, 1.2, (5, problem.manifold_dim))
    fns = (problem.point, problem.tangent_projector, problem.distance_to_manifold)
    return tuple(np.asarray(x) for x in _parametrization(*fns, problem.loss, params))


@pytest.mark.parametrize("case", ALL)
def test_tangent_projector(case):
    problem, b = _problem(case), _bundle(case)
    proj, us = b["proj"], b["us"]
    np.testing.assert_allclose(proj, np.swapaxes(proj, 1, 2), atol=1e-14)
    np.testing.assert_allclose(proj @ proj, proj, atol=1e-13)
    np.testing.assert_allclose(np.trace(proj, axis1=1, axis2=2), problem.manifold_dim, atol=1e-12)
    np.testing.assert_allclose(np.einsum("pij,pj->pi", proj, us), 0.0, atol=1e-14)
    # range(hess L) is the normal space: P_Gamma H = 0 on Gamma.
    np.testing.assert_allclose(proj @ b["hess"], 0.0, atol=1e-12 * np.max(b["evals"]))
    np.testing.assert_allclose(np.einsum("pij,pj->pi", proj, b["g"]), b["g"], atol=1e-13)
    # Tangent vectors of the parametrization lie in, and span, the projector's range.
    _, jacs, projs, _, _ = _param_bundle(case)
    np.testing.assert_allclose(projs @ jacs, jacs, atol=1e-13)
    for jac in jacs:
        assert np.linalg.matrix_rank(jac, tol=1e-8) == problem.manifold_dim


@pytest.mark.slow
@pytest.mark.parametrize("case", ALL)
def test_points_lie_on_gamma(case):
    b = _bundle(case)
    us, _, _, dist, vals = _param_bundle(case)
    for points, d, v in [(us, dist, vals), (b["us"], b["dist"], b["loss"])]:
        np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0, atol=1e-15)
        np.testing.assert_array_less(d, 1e-14)
        np.testing.assert_array_less(v, 1e-28)


@pytest.mark.parametrize("case", MAIN)
def test_distance_to_manifold_along_normals(case):
    """Moving by geodesic distance eps along a unit normal gives distance eps: exactly for the
    great circles, to first order for the curved ones (error <= eps^2; measured <= 0.1 eps^2)."""
    problem, b = _problem(case), _bundle(case)
    u, normal = b["us"][0], b["evecs"][0, :, -1]  # range(H) is normal to Gamma and to u
    eps = np.array([1e-3, 1e-2, 0.1])
    ws = np.cos(eps)[:, None] * u + np.sin(eps)[:, None] * normal
    d = np.asarray(_distance(case)(ws))
    bound = 1e-14 if problem.name != "curved_manifold" else eps**2
    np.testing.assert_array_less(np.abs(d - eps), bound)


@eqx.filter_jit
def _descend(loss, w):
    """1500 steps of projected GD ``w <- normalize(w - 0.1 grad L(w))``."""

    def step(w, _):
        w = w - 0.1 * jax.grad(loss)(w)
        return w / jnp.linalg.norm(w), None

    return jax.lax.scan(step, w, None, length=1500)[0]


@pytest.mark.parametrize("case", MAIN)
def test_start_is_near_gamma_and_gradient_flow_reaches_it(case):
    """Phase I: projected GD (a discretized spherical gradient flow, step 0.1 < 2/lambda_max)
    from ``start`` converges onto Gamma."""
    problem = _problem(case)
    start = jnp.asarray(problem.start)
    np.testing.assert_allclose(np.linalg.norm(problem.start), 1.0, atol=1e-15)
    lo = 5e-3 if problem.name == "ire_toy" else 0.05  # the IRE toy's (1, 0.01) is ~7e-3 away
    end = _descend(problem.loss, start)
    d0, d1 = _distance(case)(jnp.stack([start, end]))
    assert lo < d0 < 0.25
    assert d1 < 1e-10


# --------------------------------------------------------------------------------------------
# Closed-form flows
# --------------------------------------------------------------------------------------------


def _ivp_flow(problem: pr.AnalyticProblem, u0: np.ndarray, taus, form: str) -> np.ndarray:
    """Reference: solve_ivp of d theta/d tau = -(1/4) g (/(1 + |g|^2/4)) with closed-form g."""
    grad = jax.jit(problem.riemannian_grad_log_lambda1)

    def rhs(_, theta):
        g = np.asarray(grad(theta))
        return -0.25 * g / (1 + 0.25 * (g @ g) if form == "F1" else 1.0)

    sol = solve_ivp(rhs, (0, max(taus)), u0, method="DOP853", t_eval=taus, rtol=1e-11, atol=1e-13)
    assert sol.success
    return sol.y.T


@pytest.mark.parametrize("form", ["F0", "F1"])
@pytest.mark.parametrize("case", CURVES)
def test_closed_form_flow_matches_solve_ivp(case, form):
    """Against DOP853 at rtol 1e-11: the measured difference is <= 1e-11; tolerance 1e-10."""
    problem = _problem(case)
    taus = [0.5, 2.0, 4.0]
    for s0 in (0.3, 1.2, -1.0, 2.0 if case == "great_circle" else -0.1):
        u0 = np.asarray(problem.point(s0))
        closed = problem.flow_closed_form(jnp.asarray(u0), jnp.asarray(taus), form)
        assert closed.shape == (3, problem.dim)
        np.testing.assert_allclose(closed, _ivp_flow(problem, u0, taus, form), atol=1e-10)


@pytest.mark.parametrize("case", CURVES)
def test_closed_form_flows_decrease_sharpness(case):
    problem = _problem(case)
    flow = problem.flow_closed_form
    u0 = np.asarray(problem.point(1.0))
    taus = jnp.linspace(0.0, 6.0, 301)
    lam = {}
    for f in ("F0", "F1"):
        path = flow(u0, taus, f)
        lam[f] = np.asarray(jax.vmap(problem.lambda1)(path))
        assert np.all(np.diff(lam[f]) <= 1e-14 * lam[f][:-1])  # non-increasing (to rounding)
        assert lam[f][-1] < 0.9 * lam[f][0]  # and really decreasing
        assert np.max(jax.vmap(problem.distance_to_manifold)(path)) < 1e-15  # stays on Gamma
    assert np.all(lam["F1"][1:] > lam["F0"][1:])  # (F1) is the slower flow
    np.testing.assert_allclose(flow(u0, 0.0, "F1"), u0, atol=1e-15)
    # Fixed points of the flow (g = 0) stay put.
    for s in (0.0, math.pi / 2) if case == "great_circle" else (0.0,):
        u = np.asarray(problem.point(s))
        np.testing.assert_allclose(flow(u, 3.0, "F1"), u, atol=1e-15)


@pytest.mark.parametrize("form", ["F0", "F1"])
@pytest.mark.parametrize("case", CURVES)
def test_closed_form_flow_composes(case, form):
    """theta(tau1 + tau2; u0) = theta(tau2; theta(tau1; u0)), also backward (tau2 < 0)."""
    problem = _problem(case)
    flow = problem.flow_closed_form
    u0 = np.asarray(problem.point(-0.9))
    tau1, tau2 = jnp.asarray([0.5, 2.0, 4.0]), jnp.asarray([1.5, 2.0, -3.5])
    composed = flow(flow(u0, tau1, form), tau2, form)  # batched u0 (3, D) with tau (3,)
    np.testing.assert_allclose(composed, flow(u0, tau1 + tau2, form), atol=1e-14)
    if case == "ire_toy" and form == "F0":  # backward, (F0) leaves the hemisphere at tau_exit
        tau_exit = math.log(abs(math.sin(-0.9)))
        out = np.asarray(flow(u0, jnp.asarray([tau_exit - 0.1, tau_exit + 0.1, 0.0]), form))
        assert np.all(np.isnan(out[0])) and np.all(np.isfinite(out[1:]))


def test_closed_form_flow_errors():
    problem = _problem("great_circle")
    with pytest.raises(ValueError, match="form must be one of"):
        problem.flow_closed_form(problem.start, 1.0, "F2")
    curved = _problem("curved_manifold")
    assert not curved.has_closed_form_flow
    with pytest.raises(ValueError, match="no closed-form flow"):
        curved.flow_closed_form(curved.start, 1.0)


# --------------------------------------------------------------------------------------------
# IRE chart, random regression, registry
# --------------------------------------------------------------------------------------------


def test_ire_chart_recovers_the_toy():
    loss = _problem("ire_toy").loss
    for u, v in [(1.0, 0.01), (-0.7, 0.3), (2.0, -1.5)]:
        w = 2.5 * pr.ire_to_sphere(u, v)
        np.testing.assert_allclose(np.linalg.norm(w), 2.5, rtol=1e-15)
        np.testing.assert_allclose(pr.ire_to_chart(w), (u, v), rtol=1e-15)
        np.testing.assert_allclose(loss(w), 0.5 * (1 + u**2) * v**2, rtol=1e-14)
    np.testing.assert_allclose(_problem("ire_toy").start, pr.ire_to_sphere(1.0, 0.01), atol=1e-16)
    batch = pr.ire_to_sphere(np.array([0.5, -2.0]), np.array([0.1, 0.0]))
    np.testing.assert_allclose(np.linalg.norm(batch, axis=-1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(pr.ire_to_chart(batch)[0], [0.5, -2.0], rtol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_regression_is_scale_invariant(dtype):
    problem = pr.random_regression(dim=512, n=32, hidden=16, seed=0)
    assert isinstance(problem, pr.BenchmarkProblem) and problem.dim == 512
    w = jnp.asarray(problem.start, dtype)
    loss = eqx.filter_jit(problem.loss)  # jax.jit would hash the module (arrays: unhashable)
    assert loss(w).dtype == dtype and loss(w) > 1e-3
    np.testing.assert_allclose(loss(7.0 * w), loss(w), rtol=RTOL[dtype])
    assert check_scale_invariance(problem.loss, w, name="random_regression").ok
    jaxpr = jax.make_jaxpr(lambda mod, w: mod(w))(problem.loss, w)
    assert not jaxpr.consts  # the data are arguments of the compiled loss


def test_random_regression_default_is_unsaturated():
    problem = pr.random_regression()
    assert problem.dim == 131072
    loss = problem.loss
    w = problem.start.reshape(256, -1)
    pre = loss.input_scale * (loss.inputs @ w.T)
    assert 0.7 < np.std(pre) < 1.3  # tanh preactivations ~ N(0, 1) at the start
    assert np.isfinite(loss(jnp.asarray(problem.start, jnp.float32)))


def test_get_problem_and_unknown_name():
    assert set(pr.PROBLEMS) == {"great_circle", "curved_manifold", "ire_toy"}
    assert pr.get_problem("great_circle", beta=2.0).config == {"beta": 2.0}
    assert isinstance(pr.get_problem("random_regression", dim=64, hidden=8), pr.BenchmarkProblem)
    with pytest.raises(ValueError, match=r"unknown problem 'nope'.*curved_manifold.*ire_toy"):
        pr.get_problem("nope")


def test_factory_argument_validation():
    with pytest.raises(ValueError, match="beta"):
        pr.great_circle(beta=0.0)
    with pytest.raises(ValueError, match="m >= 2"):
        pr.curved_manifold(m=1)
    with pytest.raises(ValueError, match="psi_max"):
        pr.ire_toy(psi_max=2.0)
    with pytest.raises(ValueError, match="multiple of hidden"):
        pr.random_regression(dim=100, hidden=16)


# --------------------------------------------------------------------------------------------
# The exact period-2 orbit of GD+WD on the great circle (docs/theory.md section 6)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.5, 3.0])
@pytest.mark.parametrize("ewd", [pytest.param(0.3, marks=pytest.mark.slow), 1e-2, 1e-3])
def test_great_circle_period2_against_explicit_gd(beta, ewd):
    """Oracle: the GD+WD update written out by hand with ``jax.grad``, and dense
    ``jax.hessian`` + ``eigvalsh`` for the EoS quantities. Rounding: ~1e-16 per step on
    O(0.1) iterates; the 2x2 block of the two-step map has determinant 1, so 200 steps keep
    the error near 1e-14 (a linearly unstable orbit would amplify it)."""
    eta = 0.1
    wd = ewd / eta
    orbit = pr.great_circle_period2(eta, wd, beta)
    loss = pr.great_circle(beta).loss

    def step(w):
        return (1 - eta * wd) * w - eta * jax.grad(loss)(w)

    wp = jnp.asarray(orbit.w_plus)
    np.testing.assert_allclose(step(wp), orbit.w_minus, rtol=0, atol=1e-15)
    np.testing.assert_allclose(step(jnp.asarray(orbit.w_minus)), orbit.w_plus, rtol=0, atol=1e-15)
    w200 = jax.lax.fori_loop(0, 200, lambda i, w: step(w), wp)
    np.testing.assert_allclose(w200, orbit.w_plus, rtol=0, atol=1e-13)
    assert orbit.norm == pytest.approx(float(jnp.linalg.norm(wp)), rel=1e-15)
    assert float(loss(wp)) == pytest.approx(orbit.loss, rel=1e-12)
    assert orbit.loss == pytest.approx(ewd / 4, rel=1e-12)  # section 3's eta wd lambda_1 / 4

    def eos(w):
        return eta * float(jnp.linalg.eigvalsh(jax.hessian(loss)(w))[-1])

    assert eos(wp) == pytest.approx(orbit.eos_iterates, rel=1e-12)
    assert eos(jnp.asarray(orbit.w_minus)) == pytest.approx(orbit.eos_iterates, rel=1e-12)
    mean = (wp + jnp.asarray(orbit.w_minus)) / 2
    assert float(mean[2]) == 0.0  # the mean iterate lies on Gamma
    assert eos(mean) == pytest.approx(orbit.eos_mean, rel=1e-12)
    if beta < 2:  # the e_1 eigenvalue (beta - 1) sin^2 psi / r^2 is not the top one
        assert orbit.eos_iterates == pytest.approx(2 - ewd, rel=1e-15)

    # the angular curvature: eta_eff d^2 L / d psi^2 along the circle through w_+ in the plane
    r, psi = orbit.norm, orbit.psi

    def along(p):
        return loss(r * jnp.stack([jnp.zeros_like(p), jnp.cos(p), jnp.sin(p)]))

    curv = float(jax.grad(jax.grad(along))(jnp.asarray(psi)))
    assert eta / r**2 * curv == pytest.approx(orbit.eos_angular, rel=1e-12)


@pytest.mark.parametrize("ewd", [1e-2, 1e-3])
def test_great_circle_period2_stability_and_angular_edge(ewd):
    """The two-step map's Jacobian at the orbit (``jax.jacfwd`` of two explicit steps): the
    along-``Gamma`` multiplier is below ``1 - eta wd`` and the pair in the plane
    ``w_1 = 0`` lies on the unit circle (the orbit is linearly neutral, not attracting). Near
    ``Gamma`` the angle's one-step multiplier at ``eta_eff S = 2 (1 - eta wd)`` is ``-1``."""
    eta, wd = 0.1, ewd / 0.1
    orbit = pr.great_circle_period2(eta, wd)
    loss = pr.great_circle().loss

    def step(w):
        return (1 - eta * wd) * w - eta * jax.grad(loss)(w)

    jac = np.asarray(jax.jacfwd(lambda w: step(step(w)))(jnp.asarray(orbit.w_plus)))
    mu = np.linalg.eigvals(jac[1:, 1:])  # the invariant plane w_1 = 0
    np.testing.assert_allclose(np.abs(mu), 1.0, rtol=0, atol=1e-12)
    assert np.all(np.abs(mu.imag) > 0.1 * math.sqrt(ewd))  # a rotation, not a real pair
    assert abs(jac[0, 0]) < 1 - ewd  # along Gamma (jac[0, 1:] = 0 by the symmetry w_1 -> -w_1)
    np.testing.assert_allclose(jac[0, 1:], 0.0, atol=1e-15)

    # angle multiplier near Gamma at u_1 = 0, norm chosen so eta_eff S = angular_edge (S = 1)
    r = math.sqrt(eta / orbit.angular_edge)

    def angle_after_step(p):
        w = r * jnp.stack([jnp.zeros_like(p), jnp.cos(p), jnp.sin(p)])
        w1 = step(w)
        return jnp.arctan2(w1[2], w1[1])

    mult = float(jax.grad(angle_after_step)(jnp.asarray(1e-9)))
    assert mult == pytest.approx(-1.0, abs=1e-9)
    # the central flow's linear edge eta (lambda_1 + wd) = 2 is past it: multiplier < -1
    r_cf = math.sqrt(eta / (2 - ewd))

    def angle_cf(p):
        w = r_cf * jnp.stack([jnp.zeros_like(p), jnp.cos(p), jnp.sin(p)])
        w1 = step(w)
        return jnp.arctan2(w1[2], w1[1])

    assert float(jax.grad(angle_cf)(jnp.asarray(1e-9))) < -1 - 0.4 * ewd


def test_great_circle_period2_bad_input():
    with pytest.raises(ValueError, match="eta \\* wd"):
        pr.great_circle_period2(1.0, 1.0)
    with pytest.raises(ValueError, match="wd"):
        pr.great_circle_period2(0.1, -1.0)
    with pytest.raises(ValueError, match="eta"):
        pr.great_circle_period2(0.0, 0.1)
