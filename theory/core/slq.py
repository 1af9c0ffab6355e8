"""Stochastic Lanczos quadrature (SLQ): the spectral density of a symmetric operator from matvecs.

For a symmetric ``A`` (``D x D``, given by its matvec) and a unit vector ``u``, ``m`` Lanczos
steps from ``u`` give a tridiagonal ``T_m = S diag(theta) S^T``; the Gauss quadrature rule with
nodes ``theta_i`` (Ritz values) and weights ``tau_i = S[0, i]^2`` satisfies

    u^T f(A) u = sum_i tau_i f(theta_i)      exactly for polynomials f of degree <= 2m - 1

(Golub & Meurant, *Matrices, Moments and Quadrature*, 2010, ch. 6). With ``u`` a normalized
Rademacher or Gaussian probe, ``E[u u^T] = I / D``, so ``E[u^T f(A) u] = tr f(A) / D``; averaging
the rules of ``P`` independent probes estimates the spectral density ``(1/D) sum_j
delta(x - lambda_j)`` in the sense of every smooth ``f`` (Ubaru, Chen & Saad, SIAM J. Matrix
Anal. Appl. 38, 2017; PyHessian's "ESD", Yao et al. 2020). The weights of one probe sum to 1.

Knows nothing about losses (docs/conventions.md item 2). The ``m``-step tridiagonalization
reorthogonalizes every new vector against the whole basis twice (as :mod:`theory.core.lanczos`),
so no spurious copies of converged Ritz values appear. An exact breakdown (an invariant Krylov
space of dimension ``j < m``) is continued with a vector orthogonal to the basis and a zero
coupling ``beta``: ``T_m`` then decouples, and the nodes of the decoupled block get weight
exactly 0, so the quadrature of the probe is unchanged (and exact).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from theory.core import linalg
from theory.core.types import Array, MatVec


class Quadrature(NamedTuple):
    """Gauss quadrature rules, one per probe.

    Attributes:
        nodes: ``(P, m)`` Ritz values of each probe's tridiagonal matrix, ascending.
        weights: ``(P, m)`` squared first components of the eigenvectors of the tridiagonal
            matrix (each row sums to 1).
    """

    nodes: Array
    weights: Array


def tridiagonalize(matvec: MatVec, v0: Array, m: int) -> tuple[Array, Array]:
    """``m`` Lanczos steps from ``v0`` (normalized here): ``(alpha (m,), beta (m - 1,))``, the
    diagonal and off-diagonal of ``T_m = Q^T A Q``.

    Full reorthogonalization (twice against the whole basis). After an exact breakdown
    (``|r| <= 100 eps max|alpha|``, the Krylov space invariant) the coupling is set to 0 and the
    basis continues with the coordinate vector least represented in it, orthogonalized.

    Raises:
        ValueError: if ``v0`` is not a vector or ``m`` is not in ``[1, D]``.
    """
    v0 = jnp.asarray(v0)
    if v0.ndim != 1:
        raise ValueError(f"v0 must be a vector of shape (D,), got shape {v0.shape}")
    (dim,) = v0.shape
    if isinstance(m, bool) or not isinstance(m, int | np.integer) or not 1 <= m <= dim:
        raise ValueError(f"m (the Lanczos depth) must be an int in [1, D={dim}], got {m!r}")
    m = int(m)
    dtype = v0.dtype
    eps = jnp.finfo(dtype).eps
    basis = jnp.zeros((m, dim), dtype).at[0].set(v0 / jnp.linalg.norm(v0))

    def body(j: Array, carry: tuple[Array, Array, Array, Array]) -> tuple[Array, ...]:
        basis, alpha, beta, scale = carry
        q = basis[j]
        x = matvec(q)
        a = jnp.vdot(q, x)
        x = x - basis.T @ (basis @ x)
        x = x - basis.T @ (basis @ x)
        b = jnp.linalg.norm(x)
        scale = jnp.maximum(scale, jnp.abs(a))
        breakdown = b <= 100.0 * eps * jnp.maximum(scale, jnp.finfo(dtype).tiny)

        def restart(x: Array) -> Array:
            coord = jnp.argmin(jnp.sum(basis * basis, axis=0))
            e = jax.nn.one_hot(coord, dim, dtype=dtype)
            e = e - basis.T @ (basis @ e)
            return e - basis.T @ (basis @ e)

        x = jax.lax.cond(breakdown, restart, lambda x: x, x)
        q_next = x / jnp.linalg.norm(x)
        row = jnp.minimum(j + 1, m - 1)
        basis = basis.at[row].set(jnp.where(j + 1 < m, q_next, basis[row]))
        alpha = alpha.at[j].set(a)
        beta = beta.at[j].set(jnp.where(breakdown, 0.0, b))
        return basis, alpha, beta, scale

    init = (basis, jnp.zeros(m, dtype), jnp.zeros(m, dtype), jnp.zeros((), dtype))
    _, alpha, beta, _ = jax.lax.fori_loop(0, m, body, init)
    return alpha, beta[: m - 1]


def gauss_rule(alpha: Array, beta: Array) -> tuple[Array, Array]:
    """Nodes (ascending eigenvalues of the tridiagonal ``T``) and weights (squared first
    components of its unit eigenvectors) of the Gauss rule of ``T = tridiag(beta, alpha, beta)``.
    """
    t = jnp.diag(alpha) + jnp.diag(beta, 1) + jnp.diag(beta, -1)
    vals, vecs = linalg.eigh(t)
    return vals, vecs[0, :] ** 2


def probes(key: Array, num: int, dim: int, kind: str = "rademacher", dtype: Any = None) -> Array:
    """``(num, dim)`` probe vectors: ``"rademacher"`` (entries +-1) or ``"gaussian"`` (standard
    normal). Both give ``E[u u^T] = I / D`` once normalized.

    Raises:
        ValueError: for an unknown ``kind`` or a ``num`` below 1.
    """
    if kind not in ("rademacher", "gaussian"):
        raise ValueError(f"probe kind must be 'rademacher' or 'gaussian', got {kind!r}")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"the number of probes must be a positive int, got {num!r}")
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    if kind == "rademacher":
        return jax.random.rademacher(key, (num, dim), dtype=dtype)
    return jax.random.normal(key, (num, dim), dtype)


def slq(matvec: MatVec, vectors: Array, m: int) -> Quadrature:
    """The Gauss quadrature rule of each probe (``vectors (P, D)``, normalized here) after ``m``
    Lanczos steps (``m <= D``): :class:`Quadrature` with ``(P, m)`` nodes and weights.

    Every probe's rule integrates polynomials of degree ``<= 2m - 1`` exactly against its
    spectral measure ``sum_j (u^T e_j)^2 delta(x - lambda_j)``; with ``m = D`` the nodes are the
    eigenvalues of ``A``. Costs ``P m`` matvecs (vmapped over the probes).
    """
    vectors = jnp.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"probe vectors must have shape (P, D), got shape {vectors.shape}")

    def one(v: Array) -> tuple[Array, Array]:
        return gauss_rule(*tridiagonalize(matvec, v, m))

    nodes, weights = jax.vmap(one)(vectors)
    return Quadrature(nodes, weights)


def moments(quad: Quadrature, order: int) -> Array:
    """``(order + 1,)`` estimates of ``tr(A^k) / D``, ``k = 0 .. order``: the probes' mean of
    ``sum_i tau_i theta_i^k`` (exact per probe for ``k <= 2m - 1``)."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise ValueError(f"order must be a non-negative int, got {order!r}")
    powers = quad.nodes[..., None] ** jnp.arange(order + 1)
    return jnp.mean(jnp.sum(quad.weights[..., None] * powers, axis=-2), axis=0)


def density(quad: Quadrature, grid: Array, width: float | Array) -> Array:
    """The kernel-smoothed spectral density on ``grid``: the probes' mean of
    ``sum_i tau_i phi_width(x - theta_i)``, ``phi_s`` the Gaussian density of standard deviation
    ``s`` (it integrates to 1 over the real line). Rows of NaN nodes (untracked steps) give NaN.
    """
    width = jnp.asarray(width, quad.nodes.dtype)
    if not isinstance(width, jax.core.Tracer) and not float(width) > 0:
        raise ValueError(f"the kernel width must be positive, got {float(width)!r}")
    grid = jnp.asarray(grid, quad.nodes.dtype)
    z = (grid[:, None, None] - quad.nodes[None]) / width
    phi = jnp.exp(-0.5 * z * z) / (width * jnp.sqrt(2.0 * jnp.pi))
    return jnp.mean(jnp.sum(quad.weights[None] * phi, axis=-1), axis=-1)


def exact_density(eigenvalues: Array, grid: Array, width: float | Array) -> Array:
    """The same smoothing of a known spectrum: ``(1/D) sum_j phi_width(x - lambda_j)`` (the
    oracle :func:`density` estimates)."""
    lam = jnp.asarray(eigenvalues)
    dim = lam.shape[0]
    quad = Quadrature(lam[None, :], jnp.full((1, dim), 1.0 / dim, lam.dtype))
    return density(quad, grid, width)
