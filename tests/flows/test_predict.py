"""theory.predict: the prediction from the initialization against closed forms and GD itself.

The tests that run the prediction are marked slow: each compiles diffrax solves (phase I with its
event, the projection, the flow), which dominates their time on CPU.
"""

from __future__ import annotations

import math

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from theory.engine import LanczosTracker, SaveAt
from theory.engine.gd import gd_wd
from theory.flows.common import Dense, GaussNewton, Lanczos
from theory.flows.manifold import project_to_manifold
from theory.flows.predict import (
    Phase1Model,
    Phase3Flow,
    gauss_newton_feet,
    predict_from_init,
    relaxation_cycle,
    top_eigenvalues,
)
from theory.problems.analytic import great_circle

ETA = 0.1


def _start(prob, eos0: float, lift: bool = True) -> jnp.ndarray:
    """The problem's start (or its foot on the equator) with ``eta_eff * S = eos0``."""
    u = jnp.asarray(prob.start, jnp.float64)
    if not lift:
        u = u.at[2].set(0.0)
        u = u / jnp.linalg.norm(u)
    s = float(prob.lambda1(project_to_manifold(prob.loss, u)))
    return u * math.sqrt(ETA * s / eos0)


@pytest.mark.slow
def test_onset_on_the_manifold_is_the_exact_norm_recursion() -> None:
    """Start exactly on Gamma: the gradient is exactly 0, |w_t|^2 = (1 - eta wd)^{2t} |w_0|^2,
    and the onset is the first integer step with eta S / |w_t|^2 >= 2 (closed form), which is
    also GD's tracked onset."""
    prob = great_circle()
    eos0, ewd = 0.37, 1e-2
    w0 = _start(prob, eos0, lift=False)
    pred = predict_from_init(prob.loss, w0, eta=ETA, wd=ewd / ETA, steps=120, record_every=1)
    t_exact = math.log(2 / eos0) / (-2 * math.log1p(-ewd))
    assert abs(pred.onset - t_exact) < 1e-6
    assert pred.onset_step == math.ceil(t_exact)
    gd = gd_wd(prob.loss, w0, eta=ETA, wd=ewd / ETA, steps=120, tracker=LanczosTracker(every=1))
    assert gd.onset_step == pred.onset_step
    before = pred.step < pred.onset
    np.testing.assert_allclose(pred.norm[before], gd.norm[before], rtol=1e-12)


@pytest.mark.slow
def test_phase1_with_the_plain_flow_lands_on_phi() -> None:
    """A re-timed spherical gradient flow has the gradient flow's limit: Phi(w0)."""
    prob = great_circle()
    w0 = _start(prob, 0.3)
    pred = predict_from_init(
        prob.loss,
        w0,
        eta=ETA,
        wd=0.1,
        steps=200,
        phase1=Phase1Model(equation="flow", reference_phi=True),
    )
    phi = np.asarray(project_to_manifold(prob.loss, w0))
    assert np.linalg.norm(pred.theta_landing - phi) < 1e-9
    assert pred.phi is not None and np.linalg.norm(pred.phi - phi) < 1e-9


@pytest.mark.slow
def test_phase3_rows_are_the_closed_form_flow() -> None:
    """After the onset the rows follow F1 from the landing point on tau = 2 eta wd (t - t_on)
    (great circle: closed-form flow), with |w|^2 = eta lambda_1 / 2."""
    prob = great_circle()
    ewd = 1e-2
    pred = predict_from_init(
        prob.loss, _start(prob, 0.3), eta=ETA, wd=ewd / ETA, steps=300, record_every=5
    )
    in3 = pred.phase == 3
    assert in3.sum() > 10
    ref = np.asarray(
        prob.flow_closed_form(jnp.asarray(pred.theta_landing), jnp.asarray(pred.tau[in3]), "F1")
    )
    # The flow is saved on 201 equally spaced tau and interpolated linearly: the error bound
    # (dtau^2 / 8) |theta''| is ~5e-6 here (dtau ~ 0.02, |theta''| < 0.1).
    assert np.max(np.linalg.norm(pred.theta[in3] - ref, axis=1)) < 1e-5
    np.testing.assert_allclose(pred.norm[in3] ** 2, ETA * pred.sharpness[in3] / 2, rtol=1e-12)
    np.testing.assert_allclose(pred.eos[in3], 2.0, rtol=1e-12)
    lam = np.asarray([float(prob.lambda1(jnp.asarray(t))) for t in ref[::8]])
    np.testing.assert_allclose(pred.sharpness[in3][::8], lam, rtol=2e-5)  # interpolated too


@pytest.mark.slow
def test_phase2_norm_and_onset_against_gd() -> None:
    """From a start off Gamma (distance 0.1): the phase II norm within 1e-5 of GD's with the
    discrete gradient term (the plain flow's term is off by ~3e-4, no term by ~2e-3: measured),
    and the predicted onset step equal to GD's."""
    prob = great_circle()
    ewd = 1e-2
    w0 = _start(prob, 0.3)
    gd = gd_wd(prob.loss, w0, eta=ETA, wd=ewd / ETA, steps=110, tracker=LanczosTracker(every=1))
    errs = {}
    for term in ("discrete", "none"):
        pred = predict_from_init(
            prob.loss, w0, eta=ETA, wd=ewd / ETA, steps=110, phase1=Phase1Model(gradient_term=term)
        )
        in2 = pred.phase == 2
        assert in2.sum() > 20
        errs[term] = float(np.max(np.abs(pred.norm[in2] ** 2 / gd.norm[in2] ** 2 - 1)))
        if term == "discrete":
            assert pred.onset_step == gd.onset_step
            assert pred.gradient_norm_sq > 0
    assert errs["discrete"] < 1e-5
    assert errs["none"] > 1e-3


def test_relaxation_cycle_against_direct_integration() -> None:
    """The quadrature period and extremes against solve_ivp of du/dt = c - k z,
    d log z/dt = 4 u, started at the orbit's z_min with u = 0; small orbits: pi / sqrt(c)."""
    ewd, g = 1e-3, 0.3
    cyc = relaxation_cycle(ewd, z_min=1e-12, g_norm=g)
    c, k = -2 * math.log1p(-ewd), 4 + g**2

    def rhs(t: float, y: np.ndarray) -> list[float]:
        return [c - k * math.exp(y[1]), 4 * y[0]]

    def back(t: float, y: np.ndarray) -> float:
        return y[0]

    back.direction = 1.0  # type: ignore[attr-defined]
    sol = solve_ivp(
        rhs, (0, 10 * cyc.period), [0.0, math.log(1e-12)], events=back, rtol=1e-11,
        atol=1e-12, max_step=1.0,
    )  # fmt: skip
    crossings = sol.t_events[0]
    period = crossings[crossings > 1.0][0]  # the start itself is a crossing
    assert abs(cyc.period / period - 1) < 1e-6
    assert abs(math.log(cyc.z_max) - np.max(sol.y[1])) < 1e-4
    assert abs(cyc.u_max - np.max(sol.y[0])) < 1e-6
    small = relaxation_cycle(ewd, u_max=1e-6)
    assert abs(small.period * math.sqrt(c) / math.pi - 1) < 1e-6
    same = relaxation_cycle(ewd, u_max=cyc.u_max, g_norm=g)
    assert abs(same.z_min / 1e-12 - 1) < 1e-6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eta": -1.0}, "eta"),
        ({"wd": 0.0}, "wd"),
        ({"wd": 20.0}, "eta \\* wd"),
        ({"steps": 0}, "steps"),
        ({"record_every": 0}, "record_every"),
        ({"phase1": "modified"}, "phase1 must be a theory.Phase1Model"),
        ({"phase3": {"form": "F1"}}, "phase3 must be a theory.Phase3Flow"),
        # a geometry is an object now: the old strings are refused with the objects named
        ({"geometry": "dense"}, "geometry must be a geometry object .*Dense"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    prob = great_circle()
    args = {"eta": ETA, "wd": 0.1, "steps": 10, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        predict_from_init(prob.loss, jnp.asarray(prob.start), **args)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Phase1Model(equation="euler"), ValueError, "Phase1Model.equation must be among"),
        (
            lambda: Phase1Model(gradient_term="exact"),
            ValueError,
            "Phase1Model.gradient_term must be among",
        ),
        (lambda: Phase1Model(max_steps=0), ValueError, "Phase1Model.max_steps must be"),
        (lambda: Phase1Model(reference_phi=1), TypeError, "Phase1Model.reference_phi must be"),
        (
            lambda: Phase1Model(stepsize_controller=diffrax.ConstantStepSize()),
            TypeError,
            "Phase1Model.stepsize_controller must be adaptive",
        ),
        (
            lambda: Phase1Model(stepsize_controller=diffrax.PIDController(rtol=0.0, atol=1e-9)),
            ValueError,
            "Phase1Model.stepsize_controller.rtol must be a positive",
        ),
        (lambda: Phase3Flow(form="F2"), ValueError, "Phase3Flow.form must be among"),
        (lambda: Phase3Flow(gap_tol=-1.0), ValueError, "Phase3Flow.gap_tol must be a positive"),
        (lambda: Phase3Flow(on_degenerate="warn"), ValueError, "Phase3Flow.on_degenerate"),
        (lambda: Phase3Flow(saves=1), ValueError, "Phase3Flow.saves must be >= 2"),
        (lambda: Phase3Flow(stepsize_controller=1e-8), TypeError, "Phase3Flow.stepsize_controller"),
    ],
)
def test_phase_settings_refuse_bad_values(make, error, match) -> None:
    with pytest.raises(error, match=match):
        make()


def test_settings_configs_name_every_knob() -> None:
    """The result's config is built from these: each knob under its historical key."""
    ode = diffrax.PIDController(rtol=1e-7, atol=1e-9)
    cfg = Phase1Model(equation="flow", gradient_term="none", stepsize_controller=ode).config()
    assert cfg["phase1"] == "flow" and cfg["gradient_term"] == "none"
    assert (cfg["ode_rtol"], cfg["ode_atol"], cfg["ode_max_steps"]) == (1e-7, 1e-9, 100_000)
    assert cfg["reference_phi"] is False
    cfg3 = Phase3Flow(form="F0", gap_tol=2e-3, saves=11).config()
    assert (cfg3["form"], cfg3["gap_tol"], cfg3["flow_saves"]) == ("F0", 2e-3, 11)
    assert (cfg3["flow_rtol"], cfg3["flow_atol"], cfg3["on_degenerate"]) == (1e-8, 1e-10, "stop")


@pytest.mark.slow
def test_start_at_the_edge_is_refused() -> None:
    prob = great_circle()
    with pytest.raises(ValueError, match="Edge of Stability"):
        predict_from_init(prob.loss, _start(prob, 3.0), eta=ETA, wd=0.1, steps=50)


def test_relaxation_cycle_bad_arguments() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        relaxation_cycle(1e-3)
    with pytest.raises(ValueError, match="z_min"):
        relaxation_cycle(1e-3, z_min=1.0)
    with pytest.raises(ValueError, match="eta_wd"):
        relaxation_cycle(-1e-3, u_max=0.1)


@pytest.mark.slow
def test_long_run_follows_gd_on_average() -> None:
    """GD over tau = 3 after the onset (eta wd = 3e-3): the onset step matches, and GD's
    sharpness at Phi averaged over the last relaxation cycles is within 1% of the prediction."""
    prob = great_circle()
    ewd = 3e-3
    w0 = _start(prob, 0.3)
    pred = predict_from_init(prob.loss, w0, eta=ETA, wd=ewd / ETA, steps=900, record_every=10)
    gd = gd_wd(
        prob.loss, w0, eta=ETA, wd=ewd / ETA, steps=900, tracker=LanczosTracker(every=1),
        saveat=SaveAt(every=10), perturbation=1e-10,
    )  # fmt: skip
    assert gd.onset_step == pred.onset_step
    assert gd.w is not None
    phi = np.asarray(project_to_manifold(prob.loss, jnp.asarray(gd.w[-30:])))
    s_gd = np.mean([float(prob.lambda1(jnp.asarray(p))) for p in phi])
    assert abs(s_gd / np.mean(pred.sharpness[-30:]) - 1) < 1e-2


@pytest.mark.slow  # default-suite budget
def test_top_eigenvalues_is_lambda1_on_the_manifold() -> None:
    """Rows on the great circle's equator (and scaled off the unit sphere): lambda_1 is
    1 + beta cos^2 phi (closed form); odd batch sizes are padded and cut back."""
    prob = great_circle()
    phis = np.linspace(0.1, 1.4, 5)
    pts = np.stack([np.cos(phis), np.sin(phis), np.zeros_like(phis)], 1) * 3.0
    ref = [float(prob.lambda1(jnp.asarray(p / 3.0))) for p in pts]
    for geometry in (Dense(), Lanczos(), GaussNewton(prob.residuals)):
        lam = top_eigenvalues(prob.loss, pts, geometry=geometry)
        np.testing.assert_allclose(lam, ref, rtol=1e-10)
    with pytest.raises(ValueError, match="points"):
        top_eigenvalues(prob.loss, np.full((2, 3), np.nan))
    with pytest.raises(TypeError, match="geometry must be a geometry object"):
        top_eigenvalues(prob.loss, pts, geometry="dense")


def test_gauss_newton_feet_land_on_the_equator() -> None:
    """Least-squares form of the great circle, r(w) = sqrt(1 + beta u_1^2) u_3: the feet of
    points lifted off the equator are unit vectors with u_3 = 0, close to the points' own
    equatorial direction (the foot of the normal is within O(dist^2) of Phi)."""
    beta = 3.0

    def residuals(w: jnp.ndarray) -> jnp.ndarray:
        u = w / jnp.linalg.norm(w)
        return jnp.sqrt(1.0 + beta * u[0] ** 2) * u[2:3]

    phis, d = np.array([0.3, 0.9, 1.2]), 1e-3
    pts = np.stack([np.cos(phis), np.sin(phis), np.full(3, d)], 1)
    feet = gauss_newton_feet(residuals, pts)
    assert feet.shape == pts.shape
    np.testing.assert_allclose(np.linalg.norm(feet, axis=1), 1.0, atol=1e-12)
    assert np.max(np.abs(feet[:, 2])) < 1e-12
    eq = pts[:, :2] / np.linalg.norm(pts[:, :2], axis=1, keepdims=True)
    assert np.max(np.abs(feet[:, :2] - eq)) < 10 * d**2


def test_cycles_and_whole_cycle_slope() -> None:
    """The sim's burst finder on a synthetic relaxation cycle (period 50, swing u = 0.2 in
    log |w|^2), and the checks' log-log slope of errors ~ eta_wd^0.8."""
    from sims.studies.predict_init import cycles
    from theory.analysis.fits import loglog_fit

    t = np.arange(600)
    log_n = 0.2 * np.sin(2 * np.pi * t / 50)
    log_l = -30 + 12 * np.exp(-(((t % 50) - 25) ** 2) / 8.0)  # a burst every 50 steps
    cyc = cycles(np.exp(0.5 * log_n), np.exp(log_l))
    assert cyc["count"] >= 8
    assert cyc["period"] == 50
    assert abs(cyc["u_max"] - 0.2) < 5e-3
    assert all(b - a == 50 for a, b in cyc["spans"])
    assert cyc["merged"] == 0
    # A secondary burst 20 steps after a main one: merged into its cycle, the period stays 50.
    log_l2 = np.maximum(log_l, -30 + 12 * np.exp(-(((t - 245) % 600) ** 2) / 8.0))
    cyc2 = cycles(np.exp(0.5 * log_n), np.exp(log_l2))
    assert cyc2["merged"] == 1
    assert cyc2["period"] == 50
    assert all(b - a == 50 for a, b in cyc2["spans"])
    assert sum(b - a for a, b in cyc2["spans"]) == sum(b - a for a, b in cyc["spans"])
    ewd = [1e-2, 3e-3, 1e-3]
    assert abs(loglog_fit(ewd, [2.0 * e**0.8 for e in ewd]).slope - 0.8) < 1e-12
    assert np.isnan(loglog_fit(ewd, [1.0, None, 0.5]).slope)
