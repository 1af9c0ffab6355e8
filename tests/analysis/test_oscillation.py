"""GD's oscillation against a flow's Sigma* (theory/analysis/oscillation.py) against closed forms
on 2x2 matrices: rotations by known angles, axes at known angles, explicit sums."""

from __future__ import annotations

import numpy as np
import pytest

from theory.analysis.oscillation import (
    axis_weights,
    change_basis,
    oscillation_weights,
    principal_axes,
    second_moment,
)


def _rot(phi: float) -> np.ndarray:
    return np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])


def test_second_moment_explicit_sum_and_sign_free():
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]])
    # sum x x^T = diag(2, 4), trace 6
    np.testing.assert_allclose(second_moment(x), [[2 / 6, 0], [0, 4 / 6]], rtol=1e-15)
    np.testing.assert_allclose(second_moment(x * [[-1], [1], [-1]]), second_moment(x))
    with pytest.raises(ValueError, match=r"x must be rows of shape \(m, k\).*got shape \(3,\)"):
        second_moment(x[:, 0])
    with pytest.raises(ValueError, match="nonzero row"):
        second_moment(np.zeros((2, 2)))


def test_change_basis_is_the_rotation_between_bases():
    sigma = np.array([[0.7, 0.1], [0.1, 0.3]])
    b_from = np.eye(4)[:, :2]
    phi = 0.4
    b_to = b_from @ _rot(phi)  # the same plane, turned by phi
    # R = b_to^T b_from = rot(phi)^T = rot(-phi)
    np.testing.assert_allclose(
        change_basis(sigma, b_from, b_to), _rot(-phi) @ sigma @ _rot(-phi).T, atol=1e-15
    )
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(change_basis(sigma, b_from, b_from @ swap), swap @ sigma @ swap)
    with pytest.raises(ValueError, match=r"basis_from and basis_to must both have shape \(D, 2\)"):
        change_basis(sigma, b_from, b_from[:, :1])
    with pytest.raises(ValueError, match=r"sigma must be a square \(k, k\) matrix"):
        change_basis(sigma[:1], b_from, b_to)


def test_principal_axes_closed_form_and_asymmetry():
    phi, a, b = 0.3, 0.2, 0.8
    sigma = _rot(phi) @ np.diag([a, b]) @ _rot(phi).T
    vals, axes = principal_axes(sigma)
    np.testing.assert_allclose(vals, [a, b], rtol=1e-14)
    # the heavy axis (last column) is rot(phi) e_2 up to sign
    heavy = _rot(phi)[:, 1]
    assert abs(abs(float(axes[:, 1] @ heavy)) - 1.0) < 1e-14
    with pytest.raises(ValueError, match=r"sigma must be symmetric, got max \|sigma - sigma\^T\|"):
        principal_axes(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="sigma must be finite"):
        principal_axes(np.array([[np.nan, 0.0], [0.0, 1.0]]))


def test_axis_weights_at_known_angles():
    axes = _rot(0.25)
    theta = 0.1  # x at angle theta from the second axis
    x = 3.0 * (np.cos(theta) * axes[:, 1] + np.sin(theta) * axes[:, 0])
    np.testing.assert_allclose(
        axis_weights(x, axes), [np.sin(theta) ** 2, np.cos(theta) ** 2], rtol=1e-13
    )
    np.testing.assert_array_equal(axis_weights(np.zeros(2), axes), [0.0, 0.0])
    with pytest.raises(ValueError, match=r"x must be \(k,\) and axes \(k, k\)"):
        axis_weights(x, np.eye(3))


def test_oscillation_weights_per_row_against_closed_forms():
    # Row j: Sigma* = rot(phi_j) diag(a, b) rot(phi_j)^T in the flow's basis; GD's basis is the
    # flow's turned by psi_j, and x lies on Sigma*'s heavy axis (weights (0, 1)) or at 45
    # degrees to it (weights (1/2, 1/2)).
    a, b = 0.25, 0.75
    e = np.eye(5)[:, :2]
    xs, sigmas, flows, gds, want = [], [], [], [], []
    for phi, psi, mixed in ((0.0, 0.0, False), (0.3, -0.5, False), (1.1, 0.2, True)):
        sigmas.append(_rot(phi) @ np.diag([a, b]) @ _rot(phi).T)
        flows.append(e)
        gds.append(e @ _rot(psi))
        heavy = _rot(-psi) @ _rot(phi)[:, 1]  # the heavy axis in GD's coordinates
        light = _rot(-psi) @ _rot(phi)[:, 0]
        xs.append(2.0 * (heavy + light) / np.sqrt(2) if mixed else -1.5 * heavy)
        want.append([0.5, 0.5] if mixed else [0.0, 1.0])
    w_gd, w_flow = oscillation_weights(np.array(xs), np.array(sigmas), flows, gds)
    np.testing.assert_allclose(w_gd, want, atol=1e-14)
    np.testing.assert_allclose(w_flow, [[a, b]] * 3, rtol=1e-14)
    with pytest.raises(ValueError, match=r"xs must be \(m, k\) and sigmas \(m, k, k\)"):
        oscillation_weights(np.array(xs), np.array(sigmas)[:2], flows, gds)
    with pytest.raises(ValueError, match=r"one \(D, k\) basis per row of xs \(3\), got 2 and 3"):
        oscillation_weights(np.array(xs), np.array(sigmas), flows[:2], gds)
