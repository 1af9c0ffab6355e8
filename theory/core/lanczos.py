"""Lanczos for the top eigenpairs of a symmetric operator given by its matvec.

Knows nothing about losses (docs/conventions.md item 2): spherical sharpness builds ``v -> H(w/|w|)
v`` and calls :func:`lanczos`, which is what makes it testable against ``eigh`` on a small matrix.

The recurrence (Golub & Van Loan, *Matrix Computations*, 4th ed., section 10.1) builds an
orthonormal Krylov basis ``Q_j = [q_0 .. q_{j-1}]`` with ``A Q_j = Q_j T_j + beta_{j-1} q_j e_j^T``,
``T_j`` tridiagonal. Each new vector is orthogonalized against the whole basis twice ("twice is
enough", Parlett), so the basis stays orthonormal to working precision and no spurious copies of
converged eigenvalues appear. The Ritz pair ``(theta_i, Q_j s_i)`` has residual
``|A y_i - theta_i y_i| = beta_{j-1} |e_j^T s_i|``; iteration stops when every one of the top ``k``
pairs has residual ``<= tol * max|theta|``, a criterion that does not involve the dimension. The
eigenvalue error of a pair with residual ``r`` is at most ``r`` and, away from other eigenvalues,
about ``r^2 / gap``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from theory.core import linalg
from theory.core.types import Array, MatVec


class LanczosResult(NamedTuple):
    """Top-``k`` Ritz pairs and how well they are converged.

    Attributes:
        eigenvalues: ``(k,)``, algebraically largest first.
        eigenvectors: ``(D, k)``, orthonormal columns.
        residuals: ``(k,)``, ``|A y_i - theta_i y_i|`` (absolute; divide by ``max|theta|`` for
            the relative residual the stopping rule uses).
        num_matvecs: number of matvecs performed (= Krylov dimension).
        converged: whether every residual met the tolerance.
        gap: ``theta_1 - theta_2`` of the final Krylov space, ``nan`` below three vectors
            (where it overestimates the true gap too much to be used).
    """

    eigenvalues: Array
    eigenvectors: Array
    residuals: Array
    num_matvecs: Array
    converged: Array
    gap: Array | None = None  # theta_1 - theta_2 of the final Krylov space (nan below 3 vectors)


def default_tol(dtype: jnp.dtype) -> float:
    """Relative residual tolerance: ``3 sqrt(eps)`` (float32 ~1e-3, float64 ~4.5e-8).

    A residual ``r`` gives an eigenvalue error ``~ r^2 / gap``, i.e. about ``eps / gap``.
    """
    return 3.0 * float(jnp.finfo(dtype).eps) ** 0.5


class _State(NamedTuple):
    j: Array  # index of the vector whose matvec is taken next (= matvecs done)
    basis: Array  # (m, D), rows q_0 .. q_j filled
    alpha: Array  # (m,)
    beta: Array  # (m,), beta[i] couples q_i and q_{i+1}
    done: Array
    converged: Array


def _ritz(alpha: Array, beta: Array, size: Array) -> tuple[Array, Array]:
    """Eigen-decomposition of the leading ``size x size`` block of the tridiagonal matrix.

    The trailing block is replaced by a decoupled diagonal far below the spectrum, so the top
    eigenpairs of the padded ``m x m`` matrix are exactly those of the leading block (and their
    eigenvectors vanish on the padding). Returns eigenvalues descending and eigenvectors
    ``(m, m)`` as columns.
    """
    m = alpha.shape[0]
    idx = jnp.arange(m)
    active = idx < size
    scale = jnp.max(jnp.abs(jnp.where(active, alpha, 0.0))) + 2.0 * jnp.max(
        jnp.where(idx < size - 1, jnp.abs(beta), 0.0)
    )
    pad = -(4.0 * scale + 1.0)
    diag = jnp.where(active, alpha, pad)
    off = jnp.where(idx[:-1] < size - 1, beta[:-1], 0.0)
    t = jnp.diag(diag) + jnp.diag(off, 1) + jnp.diag(off, -1)
    vals, vecs = linalg.eigh(t)
    return vals[::-1], vecs[:, ::-1]


def _orthogonalize(basis: Array, x: Array) -> Array:
    """Remove from ``x`` its components along the (zero-padded) rows of ``basis``, twice."""
    x = x - basis.T @ (basis @ x)
    return x - basis.T @ (basis @ x)


def _orthogonalize_first(basis: Array, j: Array, x: Array) -> Array:
    """The same as :func:`_orthogonalize` while only rows ``j - 1`` and ``j <= 1`` are filled.

    Reads two rows instead of the whole basis: warm-started tracking mostly stops after one or
    two matvecs, and a full pass over the ``(m, D)`` basis costs as much as an HVP there.
    """
    pair = jnp.stack([basis[j], basis[jnp.maximum(j - 1, 0)] * (j > 0)])
    x = x - pair.T @ (pair @ x)
    return x - pair.T @ (pair @ x)


def lanczos(
    matvec: MatVec,
    v0: Array,
    *,
    k: int = 1,
    max_iters: int | None = None,
    tol: float | Array | None = None,
    key: Array | None = None,
    peel_first: bool = False,
    stop: str = "residual",
    safety: float = 3.0,
    prior_gap: float | Array = 0.0,
) -> LanczosResult:
    """Top-``k`` (algebraically largest) eigenpairs of a symmetric operator.

    Full reorthogonalization, a preallocated ``(max_iters, D)`` basis and a ``lax.while_loop``:
    jit-compatible and usable inside ``lax.scan``. Warm start by passing the previous
    eigenvector as ``v0``: if it is close to the top eigenvector, one or two matvecs suffice.
    An exactly invariant Krylov space (``beta = 0``, e.g. ``v0`` an exact eigenvector) is
    continued with the coordinate vector least represented in the basis, orthogonalized, so
    ``k > 1`` still works.

    Args:
        matvec: ``v -> A v`` for symmetric ``A``, ``(D,) -> (D,)``.
        v0: start vector ``(D,)``, nonzero (normalized here).
        k: number of eigenpairs.
        max_iters: Krylov dimension cap (= matvec cap); default ``min(D, max(64, 2k + 20))``.
        tol: relative residual tolerance (see module docstring); default :func:`default_tol`.
        key: accepted for compatibility and unused: the continuation after an exact breakdown
            is a deterministic coordinate vector (see the loop body).
        peel_first: run the first iteration before the loop, with its ``1 x 1`` Ritz pair in
            closed form (no eigen-decomposition). Under ``vmap`` the loop then runs only if
            some batch member's warm start is not converged after one product, instead of
            every member paying a batched ``eigh`` per iteration (the cost that dominated
            sweeps of small problems). The matvec is then compiled twice (before and in the
            loop), so it is off by default.
        stop: ``"residual"`` (above) or ``"error"`` (``k = 1`` only): stop when the
            Kato-Temple estimate of the eigenvalue error ``min(r, safety r^2 / gap)`` is
            ``<= tol |theta|``, so ``tol`` is the relative eigenvalue accuracy. ``gap`` is
            ``theta_1 - theta_2``, trusted from three Krylov vectors on (with two, ``theta_2``
            underestimates ``lambda_2`` badly; measured errors 2-34x the tolerance), capped
            by ``prior_gap`` when that is ``> 0`` (e.g. the gap of the previous tracked solve);
            with no trusted gap the plain residual is used.
        safety: the factor on ``r^2 / gap`` (``stop="error"``).
        prior_gap: see ``stop``.

    Returns:
        :class:`LanczosResult`.

    Example:
        >>> a = jnp.diag(jnp.arange(1.0, 6.0))
        >>> res = lanczos(lambda v: a @ v, jnp.ones(5), k=2)
        >>> res.eigenvalues  # [5., 4.]
    """
    v0 = jnp.asarray(v0)
    if v0.ndim != 1:
        raise ValueError(f"v0 must be a vector of shape (D,), got shape {v0.shape}")
    if not isinstance(v0, jax.core.Tracer):
        host = np.asarray(v0)
        if not np.all(np.isfinite(host)) or not np.any(host):
            raise ValueError("v0 must be finite and nonzero (it starts the Krylov basis)")
    if max_iters is not None and (isinstance(max_iters, bool) or int(max_iters) < 1):
        raise ValueError(f"max_iters must be a positive int, got {max_iters!r}")
    (dim,) = v0.shape
    dtype = v0.dtype
    m = int(min(dim, max(64, 2 * k + 20) if max_iters is None else max_iters))
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, max_iters={m}] (and <= D={dim}), got k={k}")
    tol = default_tol(dtype) if tol is None else tol
    tol = jnp.asarray(tol, dtype)
    if stop not in ("residual", "error"):
        raise ValueError(f"stop must be 'residual' or 'error', got {stop!r}")
    if stop == "error" and k != 1:
        raise ValueError(
            f"stop='error' estimates the top eigenvalue's error only: k must be 1, got {k}"
        )
    rule = (
        None if stop == "residual" else (jnp.asarray(safety, dtype), jnp.asarray(prior_gap, dtype))
    )
    del key
    # A warm start that is already an eigenvector to tolerance stops after its first product
    # (the loop's first convergence test is the 1x1 Rayleigh quotient's residual), the common
    # case when tracking sharpness along a run. The matvec appears once in the program: every
    # inlined copy of an HVP is compiled again, and the solver is inlined in long-run programs.
    return _run(matvec, v0 / jnp.linalg.norm(v0), k, m, tol, peel_first, rule)


def _run(
    matvec: MatVec,
    q0: Array,
    k: int,
    m: int,
    tol: Array,
    peel: bool,
    rule: tuple[Array, Array] | None,
) -> LanczosResult:
    """The Lanczos loop from unit ``q0``."""
    (dim,) = q0.shape
    dtype = q0.dtype
    eps = jnp.finfo(dtype).eps
    basis = jnp.zeros((m, dim), dtype).at[0].set(q0)
    init = _State(
        jnp.asarray(0, jnp.int32),
        basis,
        jnp.zeros(m, dtype),
        jnp.zeros(m, dtype),
        jnp.asarray(False),
        jnp.asarray(False),
    )

    def body(s: _State, first: bool = False) -> _State:
        q = s.basis[s.j]
        x = matvec(q)
        a = jnp.vdot(q, x)
        x = jax.lax.cond(
            s.j <= 1,
            lambda x: _orthogonalize_first(s.basis, s.j, x),
            lambda x: _orthogonalize(s.basis, x),
            x,
        )
        b = jnp.linalg.norm(x)
        alpha = s.alpha.at[s.j].set(a)
        size = s.j + 1
        tiny = jnp.finfo(dtype).tiny
        if first:  # size 1: the Ritz pair is (alpha_0, q_0), its residual b
            scale = jnp.maximum(jnp.abs(a), tiny)
            res = jnp.full((k,), b)
            gap = jnp.asarray(jnp.inf, dtype)
        else:
            vals, vecs = _ritz(alpha, s.beta, size)
            scale = jnp.maximum(
                jnp.abs(vals[0]), jnp.max(jnp.where(jnp.arange(m) < size, -vals, 0))
            )
            scale = jnp.maximum(scale, tiny)
            res = b * jnp.abs(vecs[s.j, :k])
            gap = jnp.where(size >= 3, vals[0] - vals[1], jnp.inf)
        if rule is not None:  # Kato-Temple: the error of theta_1 is about r^2 / gap
            safety, prior = rule
            gap = jnp.where(prior > 0, jnp.minimum(gap, prior), gap)
            kt = safety * res * res / jnp.where(jnp.isfinite(gap), jnp.maximum(gap, tiny), 1.0)
            res = jnp.where(jnp.isfinite(gap), jnp.minimum(res, kt), res)
        met = (size >= k) & jnp.all(res <= tol * scale)
        exact = size >= dim  # the basis spans the space: the Ritz pairs are exact
        done = met | exact | (size >= m)
        # Exact breakdown: the Krylov space is invariant. Continue with the coordinate vector
        # least represented in the basis (orthogonalized; its remainder has squared norm
        # >= 1 - size/D > 0). Deterministic: a random restart would cost a random draw per
        # iteration wherever the cond becomes a select (under vmap, in a sweep).
        breakdown = b <= 100.0 * eps * scale

        def restart(x: Array) -> Array:
            coord = jnp.argmin(jnp.sum(s.basis * s.basis, axis=0))
            return _orthogonalize(s.basis, jax.nn.one_hot(coord, dim, dtype=dtype))

        x = jax.lax.cond(breakdown & ~done, restart, lambda x: x, x)
        q_next = x / jnp.linalg.norm(x)
        row = jnp.minimum(size, m - 1)  # a row update, not a select over the whole basis
        basis = s.basis.at[row].set(jnp.where(done, s.basis[row], q_next))
        beta = s.beta.at[s.j].set(jnp.where(breakdown & ~done, 0.0, b))
        return _State(jnp.where(done, s.j, size), basis, alpha, beta, done, met | exact)

    if peel:
        init = body(init, first=True)
    final = jax.lax.while_loop(lambda s: ~s.done, body, init)
    size = final.j + 1
    vals, vecs = _ritz(final.alpha, final.beta, size)
    res = final.beta[final.j] * jnp.abs(vecs[final.j, :k])
    res = jnp.where(size >= dim, 0.0, res)  # a full basis is exact
    eigvecs = final.basis.T @ vecs[:, :k]
    eigvecs = eigvecs / jnp.linalg.norm(eigvecs, axis=0, keepdims=True)
    gap = jnp.where(size >= 3, vals[0] - vals[1], jnp.nan) if m >= 2 else jnp.asarray(jnp.nan)
    return LanczosResult(vals[:k], eigvecs, res, size.astype(jnp.int32), final.converged, gap)
