"""GD's oscillation against a flow's optimal weights ``Sigma*`` on the top eigenvectors.

Past an eigenvalue crossing the continued sharpness-reduction flow
(:func:`theory.flows.cluster.cluster_flow`) carries a ``(k, k)`` matrix ``Sigma*`` (trace 1,
positive semi-definite) in the basis of the top ``k`` eigenvectors at its point: how GD's
period-2 oscillation should share its energy between those directions
(docs/tame_and_crossings.md). GD's own oscillation at a row is a vector ``x`` of coordinates on
the top eigenvectors at that row's foot on ``Gamma``. The two are compared basis-free:

* :func:`second_moment`: ``E[x x^T] / E[|x|^2]`` over rows, GD's own ``Sigma`` (sign-free, so
  the period-2 sign flips do not cancel);
* :func:`change_basis`: ``Sigma*`` given in one orthonormal basis expressed in a nearby one
  (``R Sigma* R^T`` with ``R = B_to^T B_from``, ``R`` orthogonal up to the bases' drift);
* :func:`principal_axes`: the eigenvalues (ascending) and eigenvectors of a small symmetric
  matrix;
* :func:`axis_weights`: the share ``(a_i^T x)^2 / |x|^2`` of ``|x|^2`` on each axis ``a_i``;
* :func:`oscillation_weights`: per row, ``Sigma*`` rotated into GD's basis, its principal axes,
  GD's weights on them and ``Sigma*``'s eigenvalues (the weights it predicts).

Host-side NumPy on ``(k, k)`` matrices with ``k`` small (2 at a crossing of two eigenvalues):
never traced or vmapped, so ``np.linalg.eigh`` is used directly (the batched-LAPACK hang of
docs/conventions.md item 13 concerns ``jnp.linalg.eigh`` under ``vmap`` only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "axis_weights",
    "change_basis",
    "oscillation_weights",
    "principal_axes",
    "second_moment",
]


def _square(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"{name} must be a square (k, k) matrix with k >= 1, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {a.tolist()}")
    return a


def second_moment(x: Any) -> np.ndarray:
    """``E[x x^T] / E[|x|^2]`` over the rows of ``x`` ``(m, k)``: a ``(k, k)`` matrix of trace 1,
    unchanged by flipping the sign of any row (a period-2 oscillation)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be rows of shape (m, k) with m >= 1, got shape {x.shape}")
    m = np.einsum("ni,nj->ij", x, x) / len(x)
    tr = float(np.trace(m))
    if not tr > 0:
        raise ValueError("x must have a nonzero row: the second moment of zeros has no trace")
    return m / tr


def change_basis(sigma: Any, basis_from: Any, basis_to: Any) -> np.ndarray:
    """``R sigma R^T`` with ``R = basis_to^T basis_from``: ``sigma`` ``(k, k)``, given in the
    orthonormal columns of ``basis_from`` ``(D, k)``, expressed in those of ``basis_to``
    ``(D, k)`` (exact when both span the same space)."""
    sigma = _square(sigma, "sigma")
    b_from, b_to = np.asarray(basis_from), np.asarray(basis_to)
    k = sigma.shape[0]
    if b_from.ndim != 2 or b_from.shape[1] != k or b_to.shape != b_from.shape:
        raise ValueError(
            f"basis_from and basis_to must both have shape (D, {k}), got {b_from.shape} and "
            f"{b_to.shape}"
        )
    rot = b_to.T @ b_from
    return rot @ sigma @ rot.T


def principal_axes(sigma: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(eigenvalues ascending (k,), eigenvectors as columns (k, k))`` of the symmetric
    ``sigma`` ``(k, k)`` (``np.linalg.eigh``, which reads the lower triangle); rejects a matrix
    whose asymmetry exceeds ``1e-8`` of its largest entry."""
    sigma = _square(sigma, "sigma")
    scale = float(np.max(np.abs(sigma)))
    asym = float(np.max(np.abs(sigma - sigma.T)))
    if asym > 1e-8 * max(scale, 1e-300):
        raise ValueError(
            f"sigma must be symmetric, got max |sigma - sigma^T| = {asym:.3g} against "
            f"max |sigma| = {scale:.3g}"
        )
    vals, vecs = np.linalg.eigh(sigma)
    return vals, vecs


def axis_weights(x: Any, axes: Any) -> np.ndarray:
    """``(a_i^T x)^2 / |x|^2`` for each column ``a_i`` of ``axes`` ``(k, k)``: the share of
    ``|x|^2`` on each axis (summing to 1 for orthonormal axes; 0 for ``x = 0``)."""
    x = np.asarray(x, dtype=np.float64)
    axes = np.asarray(axes, dtype=np.float64)
    if x.ndim != 1 or axes.shape != (x.shape[0], x.shape[0]):
        raise ValueError(f"x must be (k,) and axes (k, k), got shapes {x.shape} and {axes.shape}")
    return (axes.T @ x) ** 2 / max(float(x @ x), 1e-300)


def oscillation_weights(
    xs: Any, sigmas: Any, bases_flow: Any, bases_gd: Any
) -> tuple[np.ndarray, np.ndarray]:
    """GD's weights on ``Sigma*``'s principal axes and ``Sigma*``'s eigenvalues, per row.

    For each row ``j``: ``S = change_basis(sigmas[j], bases_flow[j], bases_gd[j])`` (the flow's
    ``Sigma*`` in GD's eigenbasis), ``(values, axes) = principal_axes(S)``, GD's weights
    ``axis_weights(xs[j], axes)``. Basis-free, so a near-degenerate pair whose eigenvectors turn
    from row to row is compared correctly.

    Args:
        xs: ``(m, k)`` GD's oscillation on its top ``k`` eigenvectors, one row each.
        sigmas: ``(m, k, k)`` the flow's ``Sigma*`` in its own eigenbasis.
        bases_flow: ``(m, D, k)`` the flow's top eigenvectors; bases_gd: ``(m, D, k)`` GD's.

    Returns:
        ``(weights_gd (m, k), weights_flow (m, k))``, both ordered by ``Sigma*``'s eigenvalues
        ascending (the last column is the heavier axis).
    """
    xs = np.asarray(xs, dtype=np.float64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    bases_flow, bases_gd = np.asarray(bases_flow), np.asarray(bases_gd)
    if xs.ndim != 2 or sigmas.shape != (*xs.shape, xs.shape[1]):
        raise ValueError(
            f"xs must be (m, k) and sigmas (m, k, k), got shapes {xs.shape} and {sigmas.shape}"
        )
    if len(bases_flow) != len(xs) or len(bases_gd) != len(xs):
        raise ValueError(
            f"bases_flow and bases_gd need one (D, k) basis per row of xs ({len(xs)}), got "
            f"{len(bases_flow)} and {len(bases_gd)}"
        )
    weights_gd, weights_flow = [], []
    for x, sig, b_flow, b_gd in zip(xs, sigmas, bases_flow, bases_gd, strict=True):
        values, axes = principal_axes(change_basis(sig, b_flow, b_gd))
        weights_gd.append(axis_weights(x, axes))
        weights_flow.append(values)
    k = xs.shape[1]
    return np.reshape(weights_gd, (-1, k)), np.reshape(weights_flow, (-1, k))
