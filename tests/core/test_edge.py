"""The learning rate at the edge (edge_at_init) against dense eigvalsh, and AboveEdgeWarning."""

import itertools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests._losses import random_loss
from theory.core.edge import AboveEdgeWarning, edge_at_init
from theory.core.invariance import normalize
from theory.engine import NoTracking
from theory.engine.gd import gd_wd
from theory.engine.sweep import gd_wd_sweep

EDGE_CI = "tests/core/test_edge.py::test_edge_at_init_against_eigvalsh[None]"


@pytest.mark.parametrize(
    "groups", [None, pytest.param((3, 4, 5), marks=pytest.mark.heavy(covered_by=EDGE_CI))]
)
def test_edge_at_init_against_eigvalsh(groups):
    # float64; Lanczos at its default tol gives lambda_1 to ~1e-11 relative on this gap.
    loss, w = random_loss(12, groups, 3)
    w = w.at[:3].multiply(4.0)  # unequal group norms: the groups' rates differ
    sizes = groups or (12,)
    s_dense = float(np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(normalize(w, groups))))[-1])
    lam_dense = float(np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(w)))[-1])
    e = edge_at_init(loss, w, eta=0.7, eos0=0.3, groups=groups)
    np.testing.assert_allclose(e.sharpness, s_dense, rtol=1e-10)
    np.testing.assert_allclose(e.curvature, lam_dense, rtol=1e-10)
    np.testing.assert_allclose(e.sq_norm, float(jnp.vdot(w, w)), rtol=1e-14)
    bounds = np.cumsum((0, *sizes))
    gsq = [float(jnp.vdot(w[a:b], w[a:b])) for a, b in itertools.pairwise(bounds)]
    np.testing.assert_allclose(e.group_sq_norms, gsq, rtol=1e-14)
    np.testing.assert_allclose(e.eos, 0.7 * lam_dense, rtol=1e-10)
    np.testing.assert_allclose(e.eta_eff_sharpness, 0.7 * s_dense / e.sq_norm, rtol=1e-10)
    # The eta it gives starts at eos0: eta * lambda_1(hess L(w0)) = 0.3, by the dense oracle.
    np.testing.assert_allclose(e.eta_for_eos0 * lam_dense, 0.3, rtol=1e-10)
    if groups is None:  # one group: the stability number is eta_eff * S
        np.testing.assert_allclose(e.eos, e.eta_eff_sharpness, rtol=1e-12)
    else:  # several: it is not, and lies between the per-group bounds
        assert abs(e.eos - e.eta_eff_sharpness) > 0.05 * e.eos
        assert s_dense / max(gsq) <= e.curvature <= s_dense / min(gsq)
    assert e.above_edge == (e.eos >= 2)
    bare = edge_at_init(loss, w, groups=groups)
    assert bare.eta is bare.eos is bare.eos0 is bare.eta_for_eos0 is None
    assert not bare.above_edge


def test_edge_at_init_bad_eos0():
    loss, w = random_loss(6)
    with pytest.raises(ValueError, match=r"eos0 must be in \(0, 2\), got 2.5"):
        edge_at_init(loss, w, eos0=2.5)


def _suggested_eta(message: str) -> float:
    return float(re.search(r"eta = ([0-9.e+-]+) would start at 0.3", message).group(1))


def test_gd_wd_warns_above_edge_and_suggests_an_eta():
    loss, w = random_loss(12, None, 1)
    edge = edge_at_init(loss, w, eos0=0.3)
    eta = 3.0 / edge.curvature  # starts at eta * lambda_1 = 3
    with pytest.warns(
        AboveEdgeWarning, match=r"lambda_1\(hess L\(w0\)\) = 3 >= 2 at step 0"
    ) as rec:
        res = gd_wd(loss, w, eta=eta, wd=1e-4, steps=2)
    assert res.eos[0] == pytest.approx(3.0, rel=1e-8)
    assert res.onset_step == 0
    msg = str(rec[0].message)
    assert "theory.edge_at_init(loss, w0, eos0=...)" in msg and "warn_above_edge=False" in msg
    np.testing.assert_allclose(_suggested_eta(msg), edge.eta_for_eos0, rtol=1e-2)  # 3 digits
    # Below the edge, without tracking, or opted out: nothing is said (warnings are errors here).
    gd_wd(loss, w, eta=edge.eta_for_eos0, wd=1e-4, steps=2)
    gd_wd(loss, w, eta=eta, wd=1e-4, steps=2, tracker=NoTracking())
    gd_wd(loss, w, eta=eta, wd=1e-4, steps=2, warn_above_edge=False)


@pytest.mark.slow  # ~9-10 s on an idle core (default suite budget)
def test_sweep_warns_once_naming_the_configurations():
    loss, w = random_loss(12, None, 1)
    lam = edge_at_init(loss, w).curvature
    etas = [0.5 / lam, 3.0 / lam, 4.0 / lam]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        gd_wd_sweep(loss, w, eta=etas, wd=1e-4, steps=2)
    assert [r.category for r in rec] == [AboveEdgeWarning]
    msg = str(rec[0].message)
    assert "the run (configuration 1) starts above the edge" in msg
    assert "(2 of 3 configurations start above the edge: [1, 2])" in msg
    gd_wd_sweep(loss, w, eta=etas, wd=1e-4, steps=2, warn_above_edge=False)
