"""The sharpness flow continued through eigenvalue crossings (theory/flows/cluster.py).

Oracles: a brute-force search on the disk for the small convex problem; the smooth flow's field
(theory/flows/reduction.py) away from crossings; and a constructed loss on ``R^5`` whose minimizer
manifold
is the great sphere ``z = 0`` and whose two normal eigenvalues are ``a_i(t) = 1.5 + t_i``
(``t = u[:3]``, ``z = u[3:]``): everything there is in closed form, including the flow along the
ridge ``t_1 = t_2`` where the two eigenvalues coincide (module ``_ridge_oracle``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from theory.core.curvature import mixed_third
from theory.core.errors import DegenerateSharpnessError
from theory.flows.cluster import ClusterFlowField, Clustering, cluster_flow, min_norm_disk
from theory.flows.common import Dense, GaussNewton, SaveTimes
from theory.flows.reduction import SharpnessFlowField, sharpness_flow

A0 = 1.5


def crossing_loss(w: jax.Array) -> jax.Array:
    """``(a_1(t) z_1^2 + a_2(t) z_2^2) / 2`` at ``u = w / |w|``, ``a_i = 1.5 + t_i``."""
    u = w / jnp.linalg.norm(w)
    t, z = u[:3], u[3:]
    return 0.5 * ((A0 + t[0]) * z[0] ** 2 + (A0 + t[1]) * z[1] ** 2)


def stuck_loss(w: jax.Array) -> jax.Array:
    """As :func:`crossing_loss` but ``a_2 = 1.2`` is constant: ``lambda_max`` cannot pass it."""
    u = w / jnp.linalg.norm(w)
    t, z = u[:3], u[3:]
    return 0.5 * ((A0 + t[0]) * z[0] ** 2 + 1.2 * z[1] ** 2)


def _point(t: np.ndarray | list[float]) -> jnp.ndarray:
    t = np.asarray(t, float) / np.linalg.norm(t)
    return jnp.asarray(np.concatenate([t, [0.0, 0.0]]))


T_START = np.array([0.5, -0.3, 0.8])


def _ridge_oracle(taus: np.ndarray, form: str) -> tuple[np.ndarray, float]:
    """Closed-form flow on the constructed loss (F0/F1), fine RK4 in NumPy.

    Before the crossing ``g = (e_1 - t_1 t) / a_1``; on the ridge ``t_1 = t_2 = s`` the
    minimal-norm element is the midpoint ``g* = ((e_1 + e_2) / 2 - s t) / a`` (two subgradients
    of equal norm), ``|g*|^2 = (1/2 - s^2) / a^2``.
    """

    def speed(g2: float) -> float:
        return 0.25 if form == "F0" else 0.25 / (1 + 0.25 * g2)

    def before(t: np.ndarray) -> np.ndarray:
        lam = A0 + t[0]
        g = (np.array([1.0, 0, 0]) - t[0] * t) / lam
        return -speed(float(g @ g)) * g

    def on_ridge(t: np.ndarray) -> np.ndarray:
        s = t[0]
        lam = A0 + s
        g = (np.array([0.5, 0.5, 0.0]) - s * t) / lam
        return -speed(float(g @ g)) * g

    h = 1e-3
    t = T_START / np.linalg.norm(T_START)
    out, tau, tau_x, field = [], 0.0, float("nan"), before
    for target in taus:
        while tau < target - 1e-12:
            dt = min(h, target - tau)
            k1 = field(t)
            k2 = field(t + dt / 2 * k1)
            k3 = field(t + dt / 2 * k2)
            k4 = field(t + dt * k3)
            new = t + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            new /= np.linalg.norm(new)
            if field is before and new[0] <= new[1]:  # crossed: land on the ridge
                frac = (t[0] - t[1]) / ((t[0] - t[1]) - (new[0] - new[1]))
                tau_x = tau + frac * dt
                m = 0.5 * (new[0] + new[1])
                new = np.array([m, m, np.sqrt(1 - 2 * m * m)])
                field = on_ridge
            t, tau = new, tau + dt
        out.append(t.copy())
    return np.array(out), tau_x


# ------------------------------------------------------------------ the convex problem


@pytest.mark.parametrize("seed", range(6))
def test_min_norm_disk_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    d = 7
    c, a, b = (rng.normal(size=d) for _ in range(3))
    if seed % 3 == 0:
        c = 0.1 * c  # the unconstrained minimizer inside the disk
    lin = 0.0 if seed % 2 else abs(rng.normal())
    xy = np.asarray(min_norm_disk(jnp.asarray(c), jnp.asarray(a), jnp.asarray(b), jnp.asarray(lin)))
    assert np.hypot(*xy) <= 1 + 1e-12

    def obj(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        g = c[:, None] + np.outer(a, x) + np.outer(b, y)
        return 0.5 * np.sum(g * g, 0) - lin * x

    r = np.sqrt(rng.uniform(0, 1, 200_000))
    phi = rng.uniform(0, 2 * np.pi, 200_000)
    grid = obj(
        np.concatenate([r * np.cos(phi), np.cos(phi)]),
        np.concatenate([r * np.sin(phi), np.sin(phi)]),
    )
    best = float(obj(np.array([xy[0]]), np.array([xy[1]]))[0])
    assert best <= grid.min() + 1e-12
    assert best >= grid.min() - 1e-3 * max(1.0, abs(grid.min()))


# ------------------------------------------------------------------ the field


def test_mixed_third_against_polarization():
    w = _point([0.2, -0.4, 0.7]) + jnp.asarray([0, 0, 0, 0.05, -0.03])
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.normal(size=5)) for _ in range(2))

    def third(v: jax.Array) -> jax.Array:
        return mixed_third(crossing_loss, w, v, v)

    polar = (third(a + b) - third(a - b)) / 4
    np.testing.assert_allclose(mixed_third(crossing_loss, w, a, b), polar, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", ["F0", pytest.param("F1", marks=pytest.mark.slow)])
def test_equals_smooth_field_away_from_crossings(form):
    theta = _point(T_START)
    smooth = SharpnessFlowField(crossing_loss, Dense(rank=2), form)(0.0, theta, None)
    field = ClusterFlowField(crossing_loss, Dense(rank=2), form)
    q = field.quantities(theta)
    assert int(q.size) == 1
    np.testing.assert_allclose(field(0.0, theta, None), smooth, rtol=1e-12, atol=1e-14)


def test_on_the_ridge_the_cluster_moves_together():
    # At t_1 = t_2: Sigma* = I / 2, g* is the closed-form midpoint, both eigenvalues fall at one
    # rate, and a step along the velocity leaves a gap of second order only.
    s = -0.2
    t = np.array([s, s, np.sqrt(1 - 2 * s * s)])
    theta = _point(t)
    field = ClusterFlowField(crossing_loss, Dense(rank=2), "F1")
    q = field.quantities(theta)
    assert int(q.size) == 2
    np.testing.assert_allclose(q.sigma, np.eye(2) / 2, atol=1e-10)
    g_ref = np.concatenate([(np.array([0.5, 0.5, 0]) - s * t) / (A0 + s), [0, 0]])
    np.testing.assert_allclose(q.g, g_ref, atol=1e-12)
    np.testing.assert_allclose(q.rates[0], q.rates[1], rtol=1e-10)
    v = field(0.0, theta, None)
    gaps = []
    for h in (1e-2, 5e-3):
        y = theta + h * v
        y = y / jnp.linalg.norm(y)
        tt = np.asarray(y[:3]) / np.linalg.norm(y[:3])
        gaps.append(abs(tt[0] - tt[1]))
    assert gaps[0] < 1e-12 and gaps[1] < 1e-12  # here exactly: the ridge is a symmetry plane


def test_cluster_with_residual_gap_closes_it():
    # Entering with a relative gap delta <= cluster_tol: the gap-closing term makes lambda_1
    # fall faster than lambda_2 by relax * delta at least (rates in log lambda per unit -g).
    s = -0.2
    t = np.array([s + 1e-4, s - 1e-4, 1.0])
    theta = _point(t)
    field = ClusterFlowField(crossing_loss, Dense(rank=2), "F1", Clustering(tol=1e-3, relax=20.0))
    q = field.quantities(theta)
    assert int(q.size) == 2
    delta = 1 - float(q.lam[1] / q.lam[0])
    g2 = float(jnp.vdot(q.g, q.g))
    c = 0.5 * (q.rates[0] + q.rates[1])
    assert float(q.rates[0] - q.rates[1]) > 0
    # tau-rate of the gap: (rates_1 - rates_2) / (4 (1 + |g|^2 / 4)) >= relax * delta
    rate = float(q.rates[0] - q.rates[1]) / (4 * (1 + g2 / 4))
    assert rate >= 20.0 * delta * 0.999
    assert np.isfinite(float(c))


@pytest.mark.slow
def test_least_squares_geometry_equals_smooth_gauss_newton_field():
    from theory.flows.gauss_newton import gauss_newton_project
    from theory.problems import nets

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5))

    def problem(y: np.ndarray) -> nets.NetProblem:
        model = nets.mlp((6, 4), norm="layer", activation="tanh")
        return nets.make_problem(
            model, x, y, x[:2], y[:2], loss="mse", groups="all", dtype=np.float64
        )

    first = problem(np.zeros((8, 1)))
    # targets reachable near the initialization, so that Gauss-Newton lands on Gamma
    y = np.asarray(first.predict(first.w0, jnp.asarray(x))) + 0.05 * rng.normal(size=(8, 1))
    prob = problem(y)
    assert prob.residuals is not None
    theta = gauss_newton_project(prob.residuals, prob.w0).theta
    smooth = SharpnessFlowField(prob.loss, GaussNewton(prob.residuals, rank=8), "F1")
    field = ClusterFlowField(prob.loss, GaussNewton(prob.residuals, rank=8, jacobian=True), "F1")
    qs, qc = smooth.quantities(theta), field.quantities(theta)
    assert int(qc.size) == 1
    np.testing.assert_allclose(qc.lam[:2], [qs.lam1, qs.lam2], rtol=1e-9)
    np.testing.assert_allclose(qc.g, qs.g, rtol=1e-6, atol=1e-8 * float(jnp.linalg.norm(qs.g)))


def test_bad_inputs():
    theta = _point(T_START)
    with pytest.raises(ValueError, match="form"):
        cluster_flow(crossing_loss, theta, 1.0, form="F2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"theory.GaussNewton\(residual_fn\)"):
        cluster_flow(crossing_loss, theta, 1.0, geometry="least_squares")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Clustering.tol must be a small relative gap"):
        Clustering(tol=0.7)
    with pytest.raises(ValueError, match=r"Clustering\.relax"):
        Clustering(relax=-1.0)
    with pytest.raises(TypeError, match=r"theory\.Clustering"):
        cluster_flow(crossing_loss, theta, 1.0, clustering=1e-3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"SaveTimes\.t1"):
        cluster_flow(crossing_loss, theta, -1.0)


# ------------------------------------------------------------------ through the crossing


@pytest.mark.slow
@pytest.mark.parametrize("form", ["F1"])
def test_flow_through_the_crossing_against_closed_form(form):
    taus = np.linspace(0.0, 12.0, 25)
    ref, tau_x = _ridge_oracle(taus, form)
    assert 2.0 < tau_x < 8.0  # the constructed start crosses mid-run
    theta0 = _point(T_START)
    with pytest.raises(DegenerateSharpnessError, match="tau"):
        sharpness_flow(crossing_loss, theta0, SaveTimes(ts=taus), form=form, geometry=Dense(rank=2))
    res = cluster_flow(
        crossing_loss,
        theta0,
        SaveTimes(ts=taus),
        form=form,
        geometry=Dense(rank=2),
        clustering=Clustering(tol=1e-6),
    )
    assert res.stopped is None and len(res.tau) == len(taus)
    t = res.theta[:, :3] / np.linalg.norm(res.theta[:, :3], axis=1, keepdims=True)
    np.testing.assert_allclose(t, ref, atol=2e-5)
    assert abs(res.tau_cluster - tau_x) <= taus[1] - taus[0]
    after = res.tau > tau_x + 1e-9
    lam = res.eigenvalues
    assert np.all(res.cluster_size[after] == 2)  # the cluster never splits again
    assert np.all((lam[after, 0] - lam[after, 1]) / lam[after, 0] <= 1e-6)
    assert np.all(np.diff(lam[:, 0]) < 0)  # lambda_max keeps falling through the crossing
    sig = np.linalg.eigvalsh(res.sigma[after])
    np.testing.assert_allclose(sig, 0.5, atol=1e-4)  # full rank: both members weighted


@pytest.mark.slow
def test_stuck_at_a_clarke_stationary_crossing():
    # a_2 constant: at the crossing the minimal-norm element is (nearly) 0 and lambda_max stays
    # at 1.2; the cluster holds (the weight sits on the constant member) and the flow stops.
    theta0 = _point(T_START)
    res = cluster_flow(
        stuck_loss,
        theta0,
        SaveTimes(20.0, n=21),
        geometry=Dense(rank=2),
        clustering=Clustering(tol=1e-6),
    )
    joined = res.cluster_size == 2
    assert joined.any() and np.all(joined[np.argmax(joined) :])
    lam = res.eigenvalues[joined]
    np.testing.assert_allclose(lam[:, 0], 1.2, rtol=2e-6)
    assert res.g_norm[-1] < 1e-4 * res.g_norm[0]
    assert np.all(np.linalg.eigvalsh(res.sigma[-1])[::-1] >= [0.999, -1e-9])
