"""Matrix-free Gauss-Newton projection onto ``Gamma`` for interpolating least squares.

Setting. A scale-invariant residual map ``r : R^D -> R^n`` (``r(c w) = r(w)`` for ``c > 0``; in
practice ``r(w) = rho(w / |w|)``), the loss ``L(w) = 1/2 |r(w)|^2`` and interpolation:
``Gamma = {theta unit : r(theta) = 0}`` is a smooth manifold on which ``J(theta) = Dr(theta)``
has full row rank ``n``. Scale invariance gives ``J(theta) theta = 0`` (differentiate
``r(c theta) = r(theta)`` in ``c``), so the rows of ``J`` are tangent to the sphere and the
normal space of ``Gamma`` inside the sphere at ``theta`` is ``range(J^T)``.

Gauss-Newton (minimum-norm) step. At a unit ``theta`` the linearized constraint
``r + J delta = 0`` has the minimum-norm solution ``delta = -J^T y`` with ``(J J^T) y = r``.
It is orthogonal to ``theta`` (rows of ``J`` are), so ``theta - J^T y`` has norm
``sqrt(1 + |delta|^2)`` and the normalization is a retraction onto the sphere; ``r`` does not see
it. The iteration

    theta_{k+1} = normalize(theta_k - J_k^T y_k),        (J_k J_k^T) y_k = r(theta_k)

is Newton's method for the underdetermined system ``r = 0`` (the Gauss-Newton method of
Ben-Israel 1966; Nocedal & Wright, *Numerical Optimization*, 2nd ed., section 10.3): it
converges quadratically from a start close enough to ``Gamma`` where ``J`` has full row rank.

What the limit is [derived here; measured in ``tests/flows/test_gauss_newton.py``]. Each step moves
along the normal space of the level set of ``r`` through the current iterate, which is tilted by
``O(dist)`` from the normal space of ``Gamma`` at its foot point; so the limit is the nearest
point of ``Gamma`` (foot of the normal through ``w``) *to first order* only: the two differ by
``O(dist^2)``. Nor is it ``Phi(w)``, the limit of the spherical gradient flow
``d theta/ds = -grad L(theta) = -J^T r``: the flow moves along ``J^T r``, not along
``J^T (J J^T)^{-1} r``, and curves as it goes; ``|GN(w) - Phi(w)| = O(dist^2)`` as well (the
tests fit the exponent, ~2). Use :func:`theory.flows.manifold.project_to_manifold` when ``Phi``
itself
is needed (e.g. to read the slow variable of GD+WD at EoS); use this projection as a cheap
retraction onto ``Gamma`` or to land on ``Gamma`` from a known nearby point.

Inner solver. Conjugate gradients on the ``n x n`` SPD system ``(J J^T) y = r``, each matvec
``y -> J (J^T y)`` one transposed-linear (VJP) and one linear (JVP) evaluation of the residual
map linearized once per outer iteration (``jax.linearize`` + ``jax.linear_transpose``: one
primal pass, then only the tangent program). CG here is our own ~20-line ``lax.while_loop`` in
the form of Craig's method (CGNE: it carries ``x = J^T y`` along, so the step needs no extra
VJP, and ``p^T J J^T p = |J^T p|^2 >= 0`` is computed as a squared norm). We do not use
``jax.scipy.sparse.linalg.cg`` because it reports neither the number of iterations nor whether
it met its tolerance, and lineax would need a ``FunctionLinearOperator`` around the same two
closures for no gain; both would also hide ``J^T y``. No preconditioner: on well-conditioned
Jacobians (random features, the analytic problems) CG needs few iterations, and in exact
arithmetic never more than ``n``.

Inexact Newton forcing [standard, Dembo-Eisenstat-Steihaug 1982]: a CG solution with relative
residual ``eta_k`` gives ``|r_{k+1}| <= eta_k |r_k| + C |r_k|^2``. The default
``eta_k = clip(|r_k| / max(1, |r_0|), 100 eps, 0.1)`` keeps the convergence quadratic while
saving CG iterations on the first, far-from-``Gamma`` steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from theory.core import validate as check
from theory.core.errors import ProjectionError as ProjectionError
from theory.core.types import Array
from theory.flows.monitor import Budget, Progress, active_meter, meter_for

ResidualFn = Callable[[Array], Array]
"""``(D,) -> (n,)``, scale-invariant. Data should be array leaves of a pytree callable
(``jax.tree_util.Partial``, ``equinox.Module``) so they stay arguments of the compiled loop."""

_ETA_MAX = 0.1  # cap of the default forcing term: the first step solves to at least 10%


class GNProjection(NamedTuple):
    """Result of :func:`gauss_newton_project`.

    Attributes:
        theta: ``(D,)``, the unit point reached (on ``Gamma`` if ``converged``).
        residual_norm: ``|r(theta)|``.
        iterations: Gauss-Newton steps taken (0 if ``w`` already met the tolerance).
        converged: ``residual_norm <= tol``.
        residual_history: ``(max_iters + 1,)``, ``|r(theta_k)|`` for ``k = 0 .. iterations``,
            NaN after.
        cg_iterations: total CG iterations (each one JVP and one VJP) over all steps.
        tol: the tolerance used on ``|r|``.
        stalled: the loop stopped because ``|r|`` had not fallen below ``0.9`` times its best
            value for ``patience`` iterations in a row (:func:`gauss_newton_project`).
        cg_failures: Gauss-Newton steps whose inner CG stopped above its tolerance (cap reached
            or breakdown ``J^T p = 0``: a rank-deficient or inconsistent linear system).
    """

    theta: Array
    residual_norm: Array
    iterations: Array
    converged: Array
    residual_history: Array
    cg_iterations: Array
    tol: Array
    stalled: Array
    cg_failures: Array


def default_tol(dtype: Any, r0_norm: Array | float) -> Array:
    """Absolute tolerance on ``|r|``: ``1e3 eps max(1, |r_0|)``, ``r_0 = r(w / |w|)``.

    ``eps`` of ``dtype`` (float64 ``2.2e-13``, float32 ``1.2e-4`` for ``|r_0| <= 1``). Relative to
    the starting residual when it is large, absolute below 1, so that residuals of size ~1 are
    solved to ~1e3 rounding units. Newton cannot go below the rounding noise of evaluating ``r``
    (at a point itself rounded to ``eps``), which grows with the size of the terms and with
    ``D``: measured for ``r = Z theta - y``, ``Z ~ N(0, 1)`` of shape ``(64, D)``, in float32 on
    CPU, ``2e-5`` at ``D = 2e5`` and ``6e-5`` at ``D = 1e6`` -- still below ``1.2e-4``, but pass
    ``tol`` explicitly for larger or worse-scaled float32 problems. The failure message of
    :func:`gauss_newton_project` reports a noise estimate, ``|r(theta) - r(3 theta)|``.
    """
    eps = jnp.finfo(dtype).eps
    return 1e3 * eps * jnp.maximum(jnp.asarray(1.0, dtype), jnp.asarray(r0_norm, dtype))


def default_cg_tol(dtype: Any) -> float:
    """Relative CG residual for :func:`ls_tangent_projector`: ``100 eps``.

    A relative residual ``eta`` moves ``P v`` by at most ``eta cond(J) |v|``. Where rounding
    keeps CG above it (``cond(J J^T) >~ 100``), CG just runs to ``cg_max_iters``.
    """
    return 100.0 * float(jnp.finfo(dtype).eps)


def _default_cg_max_iters(n: int) -> int:
    """``2 n + 10``: CG terminates in ``n`` steps in exact arithmetic; slack for rounding."""
    return 2 * n + 10


def _linearize(residual_fn: ResidualFn, theta: Array) -> tuple[Array, ResidualFn, ResidualFn]:
    """``(r(theta), J, J^T)`` as functions, from one primal pass. ``r`` is cast to ``theta``'s
    dtype, so the whole solve runs in the dtype of ``w``."""

    def fn(x: Array) -> Array:
        return jnp.asarray(residual_fn(x)).astype(theta.dtype)

    r, jvp = jax.linearize(fn, theta)
    transpose = jax.linear_transpose(jvp, theta)

    def vjp(y: Array) -> Array:
        return transpose(y)[0]

    return r, jvp, vjp


class _CGState(NamedTuple):
    k: Array
    x: Array  # J^T y, (D,)
    res: Array  # b - J J^T y, (n,)
    p: Array  # search direction, (n,)
    rs: Array  # |res|^2
    done: Array


def _craig(
    jvp: ResidualFn, vjp: ResidualFn, b: Array, atol: Array, max_iters: int, like: Array
) -> tuple[Array, Array, Array]:
    """CG on ``(J J^T) y = b`` from ``y = 0``, returning ``(J^T y, iterations, |b - J J^T y|)``.

    ``like``: an array of the shape and dtype of ``J^T y`` (the point of linearization).

    Stops when the (recursively updated) residual is ``<= atol``, after ``max_iters`` or on a
    breakdown (``J^T p = 0``). ``y`` itself is never formed.
    """
    rs0 = jnp.vdot(b, b)

    def cond(s: _CGState) -> Array:
        return ~s.done

    def body(s: _CGState) -> _CGState:
        q = vjp(s.p)  # J^T p
        qq = jnp.vdot(q, q)  # p^T J J^T p
        ok = qq > 0
        alpha = jnp.where(ok, s.rs / jnp.where(ok, qq, 1), 0)
        x = s.x + alpha * q
        res = s.res - alpha * jvp(q)
        rs = jnp.vdot(res, res)
        beta = jnp.where(s.rs > 0, rs / jnp.where(s.rs > 0, s.rs, 1), 0)
        k = s.k + 1
        done = (rs <= atol**2) | (k >= max_iters) | ~ok
        return _CGState(k, x, res, res + beta * s.p, rs, done)

    init = _CGState(
        jnp.asarray(0, jnp.int32),
        jnp.zeros_like(like),
        b,
        b,
        rs0,
        (rs0 <= atol**2) | (max_iters <= 0),
    )
    final = jax.lax.while_loop(cond, body, init)
    return final.x, final.k, jnp.sqrt(final.rs)


_SHRINK = 0.9  # an iteration "makes progress" when |r| falls below 0.9 x its best so far


class _GNState(NamedTuple):
    k: Array
    theta: Array
    rnorm: Array
    history: Array
    cg_total: Array
    done: Array
    best: Array  # the smallest |r| that counted as progress
    idle: Array  # iterations in a row without progress
    cg_failures: Array


def _gn_loop(
    residual_fn: ResidualFn,
    w: Array,
    tol: Array | None,
    cg_tol: Array | None,
    max_iters: int,
    cg_max_iters: int | None,
    patience: int | None = None,
    monitored: bool = False,
) -> GNProjection:
    """The jit-compatible iteration (no validation, no raising).

    ``patience``: stop once ``|r|`` has not fallen below ``_SHRINK`` times its best value for
    that many iterations in a row (``None``: never)."""
    theta0 = w / jnp.linalg.norm(w)
    dtype = theta0.dtype
    eps = jnp.finfo(dtype).eps
    r0 = jnp.asarray(residual_fn(theta0)).astype(dtype)
    if r0.ndim != 1:
        raise ValueError(f"residual_fn must return a flat vector (n,), got shape {r0.shape}")
    n = r0.shape[0]
    cg_cap = _default_cg_max_iters(n) if cg_max_iters is None else cg_max_iters
    r0_norm = jnp.linalg.norm(r0)
    scale = jnp.maximum(1.0, r0_norm)
    tol_ = default_tol(dtype, r0_norm) if tol is None else jnp.asarray(tol, dtype)

    def body(s: _GNState) -> _GNState:
        r, jvp, vjp = _linearize(residual_fn, s.theta)
        rnorm = jnp.linalg.norm(r)
        history = s.history.at[s.k].set(rnorm)
        progress = rnorm < _SHRINK * s.best
        best = jnp.where(progress, rnorm, s.best)
        idle = jnp.where(progress, 0, s.idle + 1)
        stalled = jnp.asarray(False) if patience is None else idle >= patience
        stop = (rnorm <= tol_) | (s.k >= max_iters) | ~jnp.isfinite(rnorm) | stalled
        if monitored:  # report to the active Meter; it says whether the budget ran out
            halt = io_callback(_tick, jax.ShapeDtypeStruct((), jnp.bool_), s.k, max_iters)
            stop = stop | halt

        def step(_: None) -> tuple[Array, Array, Array]:
            if cg_tol is None:
                eta = jnp.clip(rnorm / scale, 100 * eps, _ETA_MAX)
            else:
                eta = jnp.asarray(cg_tol, dtype)
            x, iters, cg_res = _craig(jvp, vjp, r, eta * rnorm, cg_cap, s.theta)
            new = s.theta - x
            return new / jnp.linalg.norm(new), iters, ~(cg_res <= eta * rnorm)

        def stay(_: None) -> tuple[Array, Array, Array]:
            return s.theta, jnp.asarray(0, jnp.int32), jnp.asarray(False)

        theta, iters, cg_failed = jax.lax.cond(stop, stay, step, None)
        k = jnp.where(stop, s.k, s.k + 1)
        return _GNState(
            k, theta, rnorm, history, s.cg_total + iters, stop, best, idle,
            s.cg_failures + cg_failed.astype(jnp.int32),
        )  # fmt: skip

    init = _GNState(
        jnp.asarray(0, jnp.int32),
        theta0,
        r0_norm,
        jnp.full((max_iters + 1,), jnp.nan, dtype),
        jnp.asarray(0, jnp.int32),
        jnp.asarray(False),
        jnp.asarray(jnp.inf, dtype),
        jnp.asarray(0, jnp.int32),
        jnp.asarray(0, jnp.int32),
    )
    final = jax.lax.while_loop(lambda s: ~s.done, body, init)
    converged = final.rnorm <= tol_
    stalled = ~converged & jnp.asarray(patience is not None) & (final.idle >= (patience or 0))
    return GNProjection(
        final.theta, final.rnorm, final.k, converged, final.history, final.cg_total, tol_,
        stalled, final.cg_failures,
    )  # fmt: skip


_gn_loop_jit = eqx.filter_jit(_gn_loop)


def _tick(k: Any, max_iters: Any) -> np.ndarray:
    """Host side of a monitored loop: one residual evaluation done; ``True`` to halt."""
    meter = active_meter()
    if meter is None:
        return np.asarray(False)
    meter.update(int(k), steps=1)
    return np.asarray(meter.over() is not None)


def _optional_positive(x: Any, name: str) -> Any:
    if x is None or check.is_traced(x):
        return x
    return check.positive(x, name)


def gauss_newton_project(
    residual_fn: ResidualFn,
    w: Array,
    *,
    tol: float | Array | None = None,
    max_iters: int = 50,
    cg_tol: float | Array | None = None,
    cg_max_iters: int | None = None,
    raise_on_failure: bool = True,
    groups: Sequence[int] | None = None,
    patience: int | None = 10,
    progress: Progress | Callable[[int, int], None] | bool | None = None,
    budget: Budget | None = None,
) -> GNProjection:
    """Gauss-Newton (minimum-norm) projection of ``w / |w|`` onto ``Gamma = {r = 0} ∩ S^{D-1}``.

    Iterates ``theta <- normalize(theta - J^T y)``, ``(J J^T) y = r(theta)`` (module docstring)
    until ``|r(theta)| <= tol``. The limit agrees with the nearest point of ``Gamma`` and with
    ``Phi(w)`` (the spherical gradient-flow limit) to first order in the distance ``d`` of ``w``
    from ``Gamma``, and differs from each by ``O(d^2)``: it is not ``Phi(w)``.

    Matrix-free: ``J`` and ``J^T`` only through ``jax.linearize`` / ``jax.linear_transpose`` of
    ``residual_fn`` (cost per CG iteration ~ two passes over the residual's computation), so it
    runs at ``D ~ 1e6`` with ``n`` up to ~1e3. The loop is a ``lax.while_loop`` compiled with
    ``equinox.filter_jit`` (``residual_fn`` is an argument: its array leaves are data, not
    constants); the function may also be called inside ``jit``/``vmap``, where the input checks
    and ``raise_on_failure`` are skipped (check ``converged`` yourself).

    Args:
        residual_fn: scale-invariant ``r``, ``(D,) -> (n,)``; its output is cast to ``w.dtype``.
            Pass data as array leaves of a pytree callable (``jax.tree_util.Partial``).
        w: start, ``(D,)``, finite and nonzero (normalized here).
        tol: absolute tolerance on ``|r(theta)|``; default :func:`default_tol`
            (``1e3 eps max(1, |r(w/|w|)|)``).
        max_iters: cap on Gauss-Newton steps (static: sizes ``residual_history``).
        cg_tol: relative residual of each inner CG solve; default the adaptive forcing term
            ``clip(|r_k| / max(1, |r_0|), 100 eps, 0.1)``, which keeps convergence quadratic.
        cg_max_iters: cap on CG iterations per step; default ``2 n + 10``.
        raise_on_failure: raise :class:`ProjectionError` if not converged.
        groups: the scale-invariance groups of ``w`` (block sizes; ``None``: one group). Each
            group's radial direction is in the kernel of ``J``, so ``Gamma`` can only exist
            for ``n <= D - len(groups)`` residuals; more is refused up front.
        patience: stop (and, with ``raise_on_failure``, raise) once ``|r|`` has not fallen
            below ``0.9`` times its best value for ``patience`` Gauss-Newton iterations in a row
            (``None``: only ``max_iters`` stops a stalled or oscillating run).
        progress: ``progress(k, max_iters)`` after every residual evaluation, ``True`` for a
            tqdm bar, or :class:`theory.Progress` (``None``: the active meter of an enclosing
            call, if any; :mod:`theory.flows.monitor`).
        budget: :class:`theory.Budget` (steps: residual evaluations); checked after every
            iteration inside the compiled loop.

    Returns:
        :class:`GNProjection`.

    Raises:
        ValueError: ``w`` not a flat, finite, nonzero vector; or a bad option.
        ProjectionError: more residuals than ``D - len(groups)`` (before any iteration), or
            no convergence and ``raise_on_failure`` (the message says whether the residual
            stalled, and gives its last values and the iteration it stopped at).
        theory.BudgetExceeded: the budget ran out; ``.partial`` is the :class:`GNProjection`
            reached.

    Example:
        >>> from jax.tree_util import Partial
        >>> def res(z, y, w): return z @ (w / jnp.linalg.norm(w)) - y
        >>> out = gauss_newton_project(Partial(res, z, y), w0)
        >>> out.theta, out.iterations
    """
    w, sizes = check.flat_vector(w, "w", groups)
    max_iters = check.positive_int(max_iters, "max_iters")
    if patience is not None:
        patience = check.positive_int(patience, "patience")
    if cg_max_iters is not None:
        cg_max_iters = check.positive_int(cg_max_iters, "cg_max_iters")
    tol = _optional_positive(tol, "tol")
    cg_tol = _optional_positive(cg_tol, "cg_tol")
    if cg_tol is not None and not check.is_traced(cg_tol) and not cg_tol < 1:
        raise ValueError(f"cg_tol is a relative residual and must be < 1, got {cg_tol}")
    if not callable(residual_fn):
        raise TypeError(f"residual_fn must be callable, got {type(residual_fn).__name__}")
    dtype = w.dtype
    tol_arr = None if tol is None else jnp.asarray(tol, dtype)
    cg_tol_arr = None if cg_tol is None else jnp.asarray(cg_tol, dtype)
    traced = check.is_traced(w) or any(check.is_traced(x) for x in jax.tree.leaves(residual_fn))
    if not traced:  # a host-side check of the caller's problem (a flow's retraction is traced)
        check_dimensions(residual_fn, w, sizes)
    meter = None if check.is_traced(w) else meter_for(progress, budget)
    if meter is None:
        out = _gn_loop_jit(residual_fn, w, tol_arr, cg_tol_arr, max_iters, cg_max_iters, patience)
    else:
        with meter.activate():
            meter.phase("projection", max_iters)
            out = _gn_loop_jit(
                residual_fn, w, tol_arr, cg_tol_arr, max_iters, cg_max_iters, patience, True
            )
            meter.check(f"Gauss-Newton iteration {int(out.iterations)}", lambda: out)
    if raise_on_failure and not check.is_traced(out.converged) and not bool(out.converged):
        raise ProjectionError(_failure_message(residual_fn, out, max_iters, patience))
    return out


def check_dimensions(residual_fn: ResidualFn, w: Array, groups: Sequence[int]) -> None:
    """Refuse, before any iteration, a residual map with more entries ``n`` than
    ``D - len(groups)``: each scale-invariance group's radial direction is in the kernel of
    the Jacobian, so ``rank J <= D - len(groups)`` and ``r = 0`` (``n`` equations) generically
    has no solution on the sphere: ``Gamma`` is empty."""
    shape = jax.eval_shape(residual_fn, jax.ShapeDtypeStruct(w.shape, w.dtype)).shape
    if len(shape) != 1:
        raise ValueError(f"residual_fn must return a flat vector (n,), got shape {shape}")
    n, dim, g = int(shape[0]), int(w.shape[0]), len(groups)
    if n <= dim - g:
        return
    raise ProjectionError(
        f"Gauss-Newton projection onto Gamma = {{r = 0}} cannot succeed: the residual has "
        f"n = {n} entries but w has D = {dim} weights in {g} scale-invariance group(s) "
        f"(sizes {tuple(groups)}), and an interpolating Gamma needs n <= D - {g} = {dim - g} "
        f"(each group's radial direction is a null direction of the Jacobian, so rank J <= "
        f"{dim - g}; with more residuals r = 0 generically has no solution and Gamma is "
        f"empty). Use fewer samples (n <= {dim - g}), a wider network (D >= {n + g}), or "
        "project onto a minimizer of the loss by the spherical gradient flow instead of onto "
        "Gamma: theory.flows.manifold.project_to_manifold(loss, w) (Phi, dense Newton polish: "
        "D up to a few thousand; one sphere for the whole w)"
    )


def _rounding_noise(residual_fn: ResidualFn, theta: Array) -> float:
    """``|r(theta) - r(3 theta)|``: zero in exact arithmetic (scale invariance), so a measure of
    how precisely ``r`` can be evaluated near ``theta`` (representation of ``theta`` included)."""
    theta = jnp.asarray(theta)
    diff = jnp.asarray(residual_fn(theta)) - jnp.asarray(residual_fn(3 * theta))
    return float(jnp.linalg.norm(diff.astype(theta.dtype)))


def _failure_message(
    residual_fn: ResidualFn, out: GNProjection, max_iters: int, patience: int | None = None
) -> str:
    hist = np.asarray(out.residual_history)
    k = int(out.iterations)
    rn = float(out.residual_norm)
    what = "became non-finite" if not np.isfinite(rn) else f"reached |r(theta)| = {rn:.3g}"
    if bool(out.stalled):
        what += (
            f" and stalled (no decrease below 0.9 x its best value for patience={patience} "
            "iterations in a row)"
        )
    cg = int(out.cg_failures)
    if cg:
        what += (
            f"; the inner CG stopped above its tolerance in {cg} of {k} steps (J J^T singular or "
            "ill-conditioned: J rank-deficient, or the linearized system inconsistent)"
        )
    trail = ", ".join(f"{h:.2g}" for h in hist[max(0, k - 4) : k + 1])
    noise = _rounding_noise(residual_fn, out.theta) if np.isfinite(rn) else float("nan")
    return (
        f"Gauss-Newton projection onto Gamma did not converge: the residual {what} after {k} "
        f"iterations (max_iters={max_iters}), above tol = {float(out.tol):.3g}; |r| started at "
        f"{hist[0]:.3g}, last values [{trail}]; rounding noise of r there ~{noise:.2g} "
        "(|r(theta) - r(3 theta)|). Gauss-Newton converges only near Gamma, where J has full "
        "row rank: start closer (e.g. theory.flows.manifold.project_to_manifold or a few "
        "gradient-flow steps first), check that r has zeros on the unit sphere near w, raise "
        "max_iters or cg_max_iters, or, if the residual stalls at the rounding noise, loosen tol."
    )


def ls_tangent_projector(
    residual_fn: ResidualFn,
    theta: Array,
    *,
    cg_tol: float | Array | None = None,
    cg_max_iters: int | None = None,
) -> Callable[[Array], Array]:
    """``v -> P_Gamma(theta) v = P_sphere (v - J^T (J J^T)^{-1} J v)``, matrix-free.

    ``theta`` is a point of ``Gamma`` (normalized here), ``J = Dr(theta)`` of full row rank,
    ``P_sphere = I - theta theta^T``. ``T_theta Gamma = ker J ∩ theta^perp``, and ``I - J^T (J
    J^T)^{-1} J`` is the orthogonal projector onto ``ker J``; ``J theta = 0`` (scale
    invariance) makes the two projectors commute, so the product is the orthogonal projector
    onto the tangent space (symmetric, idempotent, rank ``D - 1 - n``). Off ``Gamma`` it is the
    projector onto the tangent space of the level set of ``r`` through ``theta``.

    The residual map is linearized once here; each application is one JVP, then CG (Craig's
    method, module docstring) with one JVP + one VJP per iteration. Call it inside the jitted
    function that uses it (or ``jax.vmap`` it over columns to get a dense matrix).

    Args:
        residual_fn: scale-invariant ``r``, ``(D,) -> (n,)``.
        theta: ``(D,)``, a point of ``Gamma``.
        cg_tol: relative CG residual ``|J J^T z - J v| / |J v|``; default
            :func:`default_cg_tol` (``100 eps``).
        cg_max_iters: CG cap per application; default ``2 n + 10``.

    Returns:
        ``v -> P_Gamma v``, ``(D,) -> (D,)``.
    """
    theta, _ = check.flat_vector(theta, "theta")
    if cg_max_iters is not None:
        cg_max_iters = check.positive_int(cg_max_iters, "cg_max_iters")
    cg_tol = _optional_positive(cg_tol, "cg_tol")
    u = theta / jnp.linalg.norm(theta)
    dtype = u.dtype
    r, jvp, vjp = _linearize(residual_fn, u)
    if r.ndim != 1:
        raise ValueError(f"residual_fn must return a flat vector (n,), got shape {r.shape}")
    cap = _default_cg_max_iters(r.shape[0]) if cg_max_iters is None else cg_max_iters
    rel = jnp.asarray(default_cg_tol(dtype) if cg_tol is None else cg_tol, dtype)

    def project(v: Array) -> Array:
        v = jnp.asarray(v, dtype)
        b = jvp(v)
        x, _, _ = _craig(jvp, vjp, b, rel * jnp.linalg.norm(b), cap, u)
        out = v - x
        return out - u * jnp.vdot(u, out)

    return project
