"""The add-on trackers (theory/engine/spectral.py) inside the engine.

Oracles: dense ``jax.hessian`` + ``eigvalsh`` at the recorded iterates (spectra, diagonal blocks),
the closed form of the realized EoS on a quadratic, hand loops of GD+WD, and the same trackers
run alone (a composite must not change what its parts record).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests._losses import random_loss, random_spd
from theory.core import slq
from theory.core.invariance import expand_groups, group_norms, normalize
from theory.core.objective import FullBatch
from theory.engine import GDWD, LanczosTracker, NoTracking, SaveAt, optax_method, run, run_batch
from theory.engine.spectral import (
    Composite,
    GroupSharpness,
    SLQTracker,
    StepDiagnostics,
    with_extras,
)

GROUPS = (7, 5)


def _gdwd(eta: float, wd: float, groups: tuple[int, ...]) -> GDWD:
    return GDWD(jnp.asarray(eta), jnp.asarray(wd), jnp.asarray(0.0), groups)


def _spherical_hessian(loss, w, groups):
    m = expand_groups(group_norms(w, groups), groups)
    h = jax.hessian(loss)(w)
    return np.asarray(m[:, None] * h * m[None, :])


@pytest.mark.slow  # default-suite budget (17 s); tests/core/test_slq.py tests SLQ in make test
def test_slq_at_full_depth_gives_the_spectrum_of_the_spherical_hessian() -> None:
    loss, w0 = random_loss(12, GROUPS, 0)
    # alone, a period must divide SaveAt.every (the driver's rule); inside a composite not
    tracker = with_extras(NoTracking(), SLQTracker(every=2, probes=3, m=12))
    res = run(FullBatch(loss), _gdwd(0.2, 0.01, GROUPS), w0, steps=4, groups=GROUPS,
              tracker=tracker)  # fmt: skip
    nodes, weights = res.observed["slq.nodes"], res.observed["slq.weights"]
    assert nodes.shape == (5, 3, 12)
    for t in (0, 2, 4):
        ev = np.linalg.eigvalsh(_spherical_hessian(loss, jnp.asarray(res.w[t]), GROUPS))
        # H(w_hat) itself: the spherical Hessian equals the Hessian at the normalized point.
        ev_hat = np.linalg.eigvalsh(jax.hessian(loss)(normalize(jnp.asarray(res.w[t]), GROUPS)))
        np.testing.assert_allclose(ev, ev_hat, atol=1e-9)
        for p in range(3):
            np.testing.assert_allclose(nodes[t, p], ev, atol=1e-9)
        np.testing.assert_allclose(weights[t].sum(axis=1), 1.0, atol=1e-12)
    assert np.all(np.isnan(nodes[[1, 3]]))
    np.testing.assert_array_equal(res.lanczos_matvecs, [36, 0, 36, 0, 36])


def test_slq_eos_operator_moments_match_the_dense_traces_in_expectation() -> None:
    """With m < D the first 2m - 1 moments are exact per probe; averaged over many probes they
    approach tr(A^k)/D. 400 probes of a 12 x 12 operator: the standard error of the second
    moment is below 2% of it; the tolerance is 8% (4 standard errors)."""
    loss, w0 = random_loss(12, GROUPS, 1)
    eta = 0.3
    res = run(FullBatch(loss), _gdwd(eta, 0.0, GROUPS), w0, steps=1, groups=GROUPS,
              tracker=SLQTracker(probes=400, m=3, operator="eos"))  # fmt: skip
    quad = slq.Quadrature(jnp.asarray(res.observed["slq.nodes"][0]),
                          jnp.asarray(res.observed["slq.weights"][0]))  # fmt: skip
    ev = eta * np.linalg.eigvalsh(jax.hessian(loss)(w0))
    est = np.asarray(slq.moments(quad, 2))
    np.testing.assert_allclose(est[0], 1.0, atol=1e-12)
    np.testing.assert_allclose(est[2], np.mean(ev**2), rtol=0.08)
    np.testing.assert_allclose(est[1], np.mean(ev), atol=0.08 * np.sqrt(np.mean(ev**2)))


def test_group_sharpness_against_dense_blocks_and_the_homogeneity_identity() -> None:
    loss, w0 = random_loss(12, GROUPS, 2)
    eta = 0.25
    res = run(FullBatch(loss), _gdwd(eta, 0.02, GROUPS), w0, steps=5, groups=GROUPS,
              tracker=GroupSharpness(every=1))  # fmt: skip
    ends = np.cumsum((0, *GROUPS))
    for t in range(6):
        w = jnp.asarray(res.w[t])
        h = np.asarray(jax.hessian(loss)(w))
        h_hat = np.asarray(jax.hessian(loss)(normalize(w, GROUPS)))
        for g in range(2):
            sl = slice(ends[g], ends[g + 1])
            top = np.linalg.eigvalsh(h[sl, sl])[-1]
            top_hat = np.linalg.eigvalsh(h_hat[sl, sl])[-1]
            # the identity lambda_1(H_gg(w_hat)) = |w_g|^2 lambda_1(H_gg(w)), by dense oracles
            np.testing.assert_allclose(top_hat, np.sum(res.w[t][sl] ** 2) * top, rtol=1e-9)
            np.testing.assert_allclose(res.observed["group.eos"][t, g], eta * top, rtol=1e-7)
            np.testing.assert_allclose(res.observed["group.sharpness"][t, g], top_hat, rtol=1e-7)
    assert np.all(res.observed["group.residual"] <= 5e-8)
    assert np.all(res.lanczos_matvecs > 0)


def test_realized_eos_on_a_quadratic_is_the_rayleigh_quotient_along_the_gradient() -> None:
    a, _ = random_spd(10, seed=3, top=(10.0, 9.0, 8.5))
    a = a / 10.0

    def loss(w):
        return 0.5 * w @ a @ w

    eta = 0.19  # eta * lambda_1 = 1.9: GD converges slowly along the top direction
    w0 = jnp.asarray(np.random.default_rng(3).normal(size=10))
    res = run(FullBatch(loss), _gdwd(eta, 0.0, (10,)), w0, steps=6, groups=(10,),
              tracker=StepDiagnostics())  # fmt: skip
    obs = res.observed
    assert np.isnan(obs["diag.realized_eos"][0]) and np.isnan(obs["diag.alignment"][0])
    an = np.asarray(a)
    for t in range(1, 7):
        g = an @ res.w[t - 1]
        rayleigh = eta * g @ an @ g / (g @ g)
        np.testing.assert_allclose(obs["diag.realized_eos"][t], rayleigh, rtol=1e-12)
        d_loss = obs["diag.loss_change"][t]
        np.testing.assert_allclose(2 * (1 + d_loss / (eta * g @ g)), rayleigh, rtol=1e-12)
        np.testing.assert_allclose(obs["diag.alignment"][t], 1.0, rtol=1e-12)
        np.testing.assert_allclose(obs["diag.grad_sq"][t], np.sum((an @ res.w[t]) ** 2),
                                   rtol=1e-12)  # fmt: skip
    assert np.all(res.lanczos_matvecs == 0)


def test_step_diagnostics_with_weight_decay_against_a_hand_loop() -> None:
    loss, w0 = random_loss(12, GROUPS, 4)
    eta, wd = 0.4, 0.05
    res = run(FullBatch(loss), _gdwd(eta, wd, GROUPS), w0, steps=5, groups=GROUPS,
              tracker=StepDiagnostics(), saveat=SaveAt(every=2))  # fmt: skip
    vg = jax.value_and_grad(loss)
    w = np.asarray(w0)
    hand = {}  # step t -> (w_t, w_{t-1}, L(w_{t-1}), g_{t-1})
    for t in range(1, 6):
        val, grad = (np.asarray(x) for x in vg(jnp.asarray(w)))
        w_next = w - eta * (grad + wd * w)
        hand[t] = (w_next, w, float(val), grad)
        w = w_next
    for row, t in enumerate(res.step):
        if t == 0:
            continue
        w_t, w_p, l_p, g_p = hand[int(t)]
        u = w_t - w_p
        d_loss = float(loss(jnp.asarray(w_t))) - l_p
        np.testing.assert_allclose(res.w[row], w_t, rtol=1e-12)
        np.testing.assert_allclose(res.observed["diag.loss_change"][row], d_loss, rtol=1e-9)
        np.testing.assert_allclose(res.observed["diag.realized_eos"][row],
                                   2 * eta * (d_loss - g_p @ u) / (u @ u), rtol=1e-7)  # fmt: skip
        np.testing.assert_allclose(res.observed["diag.alignment"][row],
                                   -(g_p @ u) / np.linalg.norm(g_p) / np.linalg.norm(u),
                                   rtol=1e-12)  # fmt: skip


@pytest.mark.slow
def test_a_composite_records_what_its_parts_record_alone() -> None:
    loss, w0 = random_loss(12, GROUPS, 5)
    method = _gdwd(0.3, 0.01, GROUPS)
    main = LanczosTracker(every=1)
    parts = (SLQTracker(every=2, probes=2, m=4), GroupSharpness(every=2), StepDiagnostics())
    kw = dict(steps=4, groups=GROUPS, key=jax.random.PRNGKey(3))
    both = run(FullBatch(loss), method, w0, tracker=with_extras(main, *parts), **kw)
    alone = run(FullBatch(loss), method, w0, tracker=main, **kw)
    np.testing.assert_array_equal(both.w, alone.w)
    np.testing.assert_allclose(both.eos, alone.eos, rtol=1e-12)
    np.testing.assert_allclose(both.sharpness, alone.sharpness, rtol=1e-12)
    spent = alone.lanczos_matvecs.copy()
    for part in parts[1:]:  # deterministic parts: the same arrays as alone
        one = run(FullBatch(loss), method, w0, tracker=with_extras(NoTracking(), part), **kw)
        for name, arr in one.observed.items():
            # (group.residual: rounding-level values, ~1e-16, that depend on the cold start)
            np.testing.assert_allclose(
                both.observed[name], arr, rtol=1e-9, atol=1e-12, equal_nan=True
            )
        spent = spent + one.lanczos_matvecs
    # the SLQ probes: 2 x 4 HVPs on rows 0, 2, 4
    np.testing.assert_array_equal(both.lanczos_matvecs, spent + np.array([8, 0, 8, 0, 8]))
    assert both.observed["slq.nodes"].shape == (5, 2, 4)


@pytest.mark.slow
def test_composites_under_optax_and_in_a_sweep() -> None:
    loss, w0 = random_loss(12, GROUPS, 6)
    tracker = with_extras(NoTracking(), GroupSharpness(), StepDiagnostics())
    method, flat = optax_method(optax.sgd(0.1, momentum=0.9), w0, lr=0.1)
    res = run(FullBatch(loss), method, flat, steps=3, groups=GROUPS, tracker=tracker)
    u = res.w[2] - res.w[1]
    g = np.asarray(jax.grad(loss)(jnp.asarray(res.w[1])))
    cos = -(g @ u) / np.linalg.norm(g) / np.linalg.norm(u)
    np.testing.assert_allclose(res.observed["diag.alignment"][2], cos, rtol=1e-10)
    etas = jnp.asarray([0.1, 0.3])
    batch = GDWD(etas, jnp.full(2, 0.01), jnp.zeros(2), GROUPS)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    sweep = run_batch(FullBatch(loss), batch, np.stack([w0, w0]), keys, steps=3, groups=GROUPS,
                      tracker=tracker)  # fmt: skip
    for i in range(2):
        one = run(FullBatch(loss), _gdwd(float(etas[i]), 0.01, GROUPS), w0, steps=3,
                  groups=GROUPS, tracker=tracker, key=keys[i])  # fmt: skip
        for name in ("group.eos", "diag.realized_eos"):
            np.testing.assert_allclose(sweep.observed[name][i], one.observed[name], rtol=1e-9,
                                       equal_nan=True)  # fmt: skip


def test_bad_settings_are_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match=r"SLQTracker\.probes must be a positive int, got 0"):
        SLQTracker(probes=0)
    with pytest.raises(ValueError, match=r"SLQTracker\.operator must be 'spherical' or 'eos'"):
        SLQTracker(operator="flat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"GroupSharpness\.tol must be a positive float"):
        GroupSharpness(tol=-1.0)
    with pytest.raises(ValueError, match=r"StepDiagnostics\.every must be 0"):
        StepDiagnostics(every=2)
    with pytest.raises(TypeError, match=r"Composite\.extras must be a tuple of AbstractAddOn"):
        Composite(LanczosTracker(), (LanczosTracker(),))  # type: ignore[arg-type]
    loss, w0 = random_loss(4, None, 7)
    twice = with_extras(LanczosTracker(), StepDiagnostics(), StepDiagnostics())
    with pytest.raises(ValueError, match=r"records \['diag.alignment'"):
        run(FullBatch(loss), _gdwd(0.1, 0.0, (4,)), w0, steps=1, groups=(4,), tracker=twice)
