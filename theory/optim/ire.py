"""IRE (implicit regularization enhancement, Wang et al. 2024) as an optax transformation.

IRE wraps a base optimizer and amplifies its update along the *flat* directions by ``1 + kappa``
(docs/theory.md section 4)::

    u_t      = base update (GD/SGD + weight decay, SAM, AdamW, ... : theta_base - theta)
    theta'   = theta + u_t + kappa * P_flat(t) u_t

Two ways to choose the flat part (the *selector*):

* :func:`exact_flat` -- ``P_flat`` is the orthogonal complement of the top-``k`` Hessian
  eigenspace ``V`` at the current parameters (Lanczos, warm-started from the last ``V``, refreshed
  every ``refresh_every`` steps), optionally also removing the radial directions ``w_g / |w_g|``
  of the scale-invariance groups (``radial=False``: the norm dynamics are those of the base
  optimizer). This is the paper's ideal form ``theta - eta (g + kappa P g)``.
* :func:`diagonal_mask` -- the paper's practical Algorithm 1: ``P_flat = diag(n)``, ``n_j = 1`` on
  the ``gamma`` fraction of coordinates with the smallest diagonal Hessian/Fisher estimate (one
  global threshold), refreshed every ``K`` steps after ``warmup`` steps.

Before ``warmup`` steps nothing is amplified. The selector's curvature needs the loss: the update
takes the extra argument ``loss_args`` (a tuple, e.g. the batch) and calls
``loss_fn(params, *loss_args)``; ``optax.chain`` forwards it to every member that takes it (SAM
uses the same argument, so ``ire(optax.chain(sam(...), ...), ...)`` is SAM-IRE).

What exact IRE does to the sharpness-reduction flow of GD+WD on a scale-invariant loss is
derived in ``docs/ire.md`` [derived here, not in the paper]; one consequence: the projector must
not be recomputed at every step of a period-2 Edge-of-Stability oscillation (``refresh_every=1``
reverses the sign of the amplified drift), see that note.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from theory.core import linalg
from theory.core import validate as check
from theory.core.invariance import as_groups, group_ids
from theory.core.lanczos import default_tol, lanczos
from theory.flows.reduction import rk4_step

Array = jax.Array
PyTree = Any
LossFn = Callable[..., Array]  # loss_fn(params, *loss_args) -> scalar
DiagFn = Callable[..., PyTree]  # diag_fn(params, key, *loss_args) -> like params (or flat)


# --------------------------------------------------------------------------------------------
# Selectors: which part of the update is flat
# --------------------------------------------------------------------------------------------


class FlatSelector(NamedTuple):
    """How IRE chooses the flat part (build with :func:`exact_flat` or :func:`diagonal_mask`).

    Attributes:
        init: ``flat_params (D,) -> state``.
        refresh: ``(state, flat_params, key, unravel, loss_args) -> state`` (curvature work).
        project: ``(state, flat_params, u (D,)) -> P_flat u``.
        refresh_every: ``K``, steps between refreshes.
        warmup: steps before the first refresh; nothing is amplified before it.
        point: where the curvature is evaluated: ``"current"`` parameters or the ``"midpoint"``
            of the current and previous ones.
        describe: JSON-able settings (provenance).
    """

    init: Callable[[Array], Any]
    refresh: Callable[..., Any]
    project: Callable[[Any, Array, Array], Array]
    refresh_every: int
    warmup: int
    point: str
    describe: dict[str, Any]


DENSE_MAX_DIM = 64  # exact_flat(solver="auto") uses the dense Hessian up to this many parameters


class ExactFlatState(NamedTuple):
    """Top-``k`` eigenpairs of the Hessian at the last refresh."""

    vectors: Array  # (D, k), orthonormal columns
    values: Array  # (k,)
    matvecs: Array  # HVPs spent by the last refresh
    residual: Array  # max relative Ritz residual of the last refresh


def _check_warmup(warmup: Any) -> int:
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0 (steps before IRE starts), got {warmup!r}")
    return int(warmup)


def exact_flat(
    loss_fn: LossFn,
    k: int = 1,
    *,
    radial: bool = True,
    groups: Any = None,
    refresh_every: int = 10,
    warmup: int = 0,
    max_iters: int | None = None,
    tol: float | None = None,
    point: str = "current",
    solver: str = "auto",
) -> FlatSelector:
    """Flat part = complement of the top-``k`` Hessian eigenspace (IRE's ideal form).

    ``P_flat u = u - Q Q^T u`` with ``Q`` an orthonormal basis of ``span(V)`` (``radial=True``) or
    of ``span(V, r_1, ..., r_G)`` (``radial=False``), where ``V`` holds the top-``k`` eigenvectors
    of ``hess loss_fn`` at the last refresh and ``r_g`` is the current parameter vector restricted
    to scale-invariance group ``g`` (normalized). With ``radial=True`` the radial direction, which
    lies in the Hessian's kernel for a scale-invariant loss, is amplified with the tangent ones,
    so the weight decay part of the update is multiplied by ``1 + kappa`` as well.

    Args:
        loss_fn: ``loss_fn(params, *loss_args) -> scalar``.
        k: number of sharp directions left alone (``>= 1``).
        radial: whether the radial directions are amplified (default: yes, the literal
            complement of the top-``k`` eigenspace).
        groups: block sizes of the scale-invariance groups in flat order (``None``: one group);
            only used with ``radial=False``.
        refresh_every: recompute ``V`` every this many steps (``>= 1``). Beware ``1`` at the Edge
            of Stability (see the module docstring).
        warmup: steps before the first refresh (``>= 0``; with ``point="midpoint"`` at least 1,
            since step 0 has no previous iterate).
        max_iters: Lanczos Krylov dimension cap (default ``min(D, max(20, 2k + 10))``).
        tol: Lanczos relative residual tolerance (default ``3 sqrt(eps)`` of the dtype).
        point: ``"current"`` (the Hessian at ``theta_t``, the paper's form) or ``"midpoint"``
            (at ``(theta_t + theta_{t-1}) / 2``). At the Edge of Stability the iterates
            oscillate by ``+-x v_1`` around the manifold, the top eigenvector at ``theta_t`` is
            tilted by ``O(x)``, and the projected gradient picks up a term ``-x^2 P grad
            lambda_1`` that is as large as the drift itself and of opposite sign; the midpoint
            cancels the tilt to first order (docs/ire.md).
        solver: ``"lanczos"`` (matrix-free, warm-started), ``"dense"`` (the full Hessian by ``D``
            HVPs and ``eigh``: exact, for small problems) or ``"auto"`` (dense up to
            ``DENSE_MAX_DIM`` parameters).
    """
    k = check.positive_int(k, "k")
    if solver not in ("auto", "dense", "lanczos"):
        raise ValueError(f"solver must be 'auto', 'dense' or 'lanczos', got {solver!r}")
    if point not in ("current", "midpoint"):
        raise ValueError(f"point must be 'current' or 'midpoint', got {point!r}")
    refresh_every = check.positive_int(refresh_every, "refresh_every (K)")
    warmup = _check_warmup(warmup)
    if max_iters is not None:
        max_iters = check.positive_int(max_iters, "max_iters")
    if tol is not None:
        tol = check.positive(tol, "tol")
    radial = bool(radial)

    def init(x: Array) -> ExactFlatState:
        d = x.shape[0]
        if k >= d:
            raise ValueError(f"k must be < the number of parameters D={d}, got k={k}")
        # Any orthonormal start; the first refresh replaces it.
        q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(17), (d, k), x.dtype))
        zero = jnp.zeros((), x.dtype)
        return ExactFlatState(q, jnp.zeros((k,), x.dtype), jnp.zeros((), jnp.int32), zero)

    def refresh(
        st: ExactFlatState, x: Array, key: Array, unravel: Callable, loss_args: tuple
    ) -> ExactFlatState:
        def flat_loss(y: Array) -> Array:
            return loss_fn(unravel(y), *loss_args)

        _, lin = jax.linearize(jax.grad(flat_loss), x)
        d = x.shape[0]
        if solver == "dense" or (solver == "auto" and d <= DENSE_MAX_DIM):
            hess = jax.vmap(lin)(jnp.eye(d, dtype=x.dtype))
            vals, vecs = linalg.eigh(0.5 * (hess + hess.T))
            return ExactFlatState(
                vecs[:, ::-1][:, :k],
                vals[::-1][:k],
                jnp.asarray(d, jnp.int32),
                jnp.zeros((), x.dtype),
            )
        iters = min(d, max(20, 2 * k + 10)) if max_iters is None else min(d, max_iters)
        res = lanczos(
            lin,
            jnp.sum(st.vectors, axis=1),
            k=k,
            max_iters=max(iters, k + 1) if d > k else d,
            tol=default_tol(x.dtype) if tol is None else tol,
            key=key,
        )
        scale = jnp.maximum(jnp.abs(res.eigenvalues), jnp.finfo(x.dtype).tiny)
        return ExactFlatState(
            res.eigenvectors,
            res.eigenvalues,
            jnp.asarray(res.num_matvecs, jnp.int32),
            jnp.max(res.residuals / scale).astype(x.dtype),
        )

    def project(st: ExactFlatState, x: Array, u: Array) -> Array:
        basis = st.vectors
        if not radial:
            sizes = as_groups(groups, x.shape[0])
            ids = jnp.asarray(group_ids(sizes))
            onehot = (ids[:, None] == jnp.arange(len(sizes))[None, :]).astype(x.dtype)
            basis = jnp.concatenate([basis, onehot * x[:, None]], axis=1)
        q, _ = jnp.linalg.qr(basis)
        return u - q @ (q.T @ u)

    describe = {
        "selector": "exact",
        "k": k,
        "radial": radial,
        "groups": None if groups is None else [int(g) for g in groups],
        "refresh_every": refresh_every,
        "warmup": warmup,
        "max_iters": max_iters,
        "tol": tol,
        "point": point,
        "solver": solver,
    }
    first = max(warmup, 1) if point == "midpoint" else warmup
    return FlatSelector(init, refresh, project, refresh_every, first, point, describe)


class MaskState(NamedTuple):
    """The mask of flat coordinates and the estimate it was chosen from."""

    mask: Array  # (D,) 0/1
    diag: Array  # (D,) last diagonal estimate


def mask_size(gamma: float, dim: int) -> int:
    """Number of coordinates a ``gamma`` mask selects out of ``dim``: ``round(gamma * dim)``."""
    return int(min(dim, max(0, round(gamma * dim))))


_UINT = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def smallest_mask(x: Array, m: int) -> Array:
    """0/1 mask of the ``m`` smallest entries of ``x`` (equal values: the lower index first).

    The same set as ``lax.top_k(-x, m)`` but without sorting: the ``m``-th smallest value is
    found by bisection on order-preserving unsigned-integer keys of the floats (one count over
    ``x`` per bit: 32 passes in float32), then ties at that value are taken in index order.
    ``top_k`` with ``m ~ 0.7 D`` is a partial sort and cost as much as a whole training step of
    the small networks here (measured: 1.3 ms at D = 8256, 17 ms at D = 82000 on CPU). The
    order is IEEE's total order, like ``top_k``'s: ``-0.0`` before ``+0.0``, a positive NaN after
    ``inf``.
    """
    if x.ndim != 1 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a float vector, got {x.dtype} of shape {x.shape}")
    if not 0 <= int(m) <= x.shape[0]:
        raise ValueError(f"m must be in [0, {x.shape[0]}], got {m}")
    return _smallest_mask(x, jnp.asarray(m))


@jax.jit
def _smallest_mask(x: Array, m: Array) -> Array:
    nbytes = jnp.dtype(x.dtype).itemsize
    utype = _UINT[nbytes]
    nbits = 8 * nbytes
    u = jax.lax.bitcast_convert_type(x, utype)
    top = jnp.asarray(1 << (nbits - 1), utype)
    key = jnp.where(u >= top, ~u, u | top)  # monotone: x < y  <=>  key(x) < key(y)

    def halve(_: int, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
        # invariant: count(key <= hi) >= m > count(key < lo)
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(key <= mid) >= m
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    zero, full = jnp.asarray(0, utype), jnp.asarray(np.iinfo(utype).max, utype)
    thr, _ = jax.lax.fori_loop(0, nbits, halve, (zero, full))
    less = key < thr
    tie = key == thr
    take_tie = tie & (jnp.cumsum(tie) <= m - jnp.sum(less))
    return (less | take_tie).astype(x.dtype)


def diagonal_mask(
    diag_fn: DiagFn, gamma: float, *, refresh_every: int = 10, warmup: int = 0
) -> FlatSelector:
    """Flat part = the ``gamma`` fraction of coordinates with the smallest diagonal estimate.

    The paper's Algorithm 1: ``n_j = 1`` on exactly ``round(gamma * D)`` coordinates, those with
    the smallest ``diag_fn`` value over all parameters (one global threshold; ties broken by
    index), recomputed every ``refresh_every`` steps starting at step ``warmup``.

    Args:
        diag_fn: ``diag_fn(params, key, *loss_args)`` -> diagonal estimate, a pytree like
            ``params`` or a flat ``(D,)`` array (e.g. :func:`fisher_diagonal`,
            :func:`hutchinson_diagonal`, :func:`dense_hessian_diagonal`).
        gamma: fraction of coordinates amplified, in ``(0, 1)`` (the paper uses 0.5-0.8).
        refresh_every: ``K >= 1`` (paper default 10).
        warmup: steps before the first mask (``>= 0``).
    """
    try:
        g = float(gamma)
    except (TypeError, ValueError) as err:
        raise TypeError(f"gamma must be a float in (0, 1), got {gamma!r}") from err
    if not (0.0 < g < 1.0):
        raise ValueError(
            f"gamma must be in (0, 1) (the fraction of coordinates amplified), got {gamma!r}"
        )
    refresh_every = check.positive_int(refresh_every, "refresh_every (K)")
    warmup = _check_warmup(warmup)

    def init(x: Array) -> MaskState:
        return MaskState(jnp.zeros_like(x), jnp.zeros_like(x))

    def refresh(
        st: MaskState, x: Array, key: Array, unravel: Callable, loss_args: tuple
    ) -> MaskState:
        del st
        est = diag_fn(unravel(x), key, *loss_args)
        flat = ravel_pytree(est)[0].astype(x.dtype)
        if flat.shape != x.shape:
            raise ValueError(
                f"diag_fn returned {flat.shape[0]} values for {x.shape[0]} parameters; expected "
                "a pytree like params or a flat (D,) array"
            )
        return MaskState(smallest_mask(flat, mask_size(g, x.shape[0])), flat)

    def project(st: MaskState, x: Array, u: Array) -> Array:
        del x
        return st.mask * u

    describe = {
        "selector": "diagonal",
        "gamma": g,
        "refresh_every": refresh_every,
        "warmup": warmup,
    }
    return FlatSelector(init, refresh, project, refresh_every, warmup, "current", describe)


# --------------------------------------------------------------------------------------------
# Diagonal curvature estimators (for diagonal_mask)
# --------------------------------------------------------------------------------------------


def fisher_diagonal(
    predict_fn: Callable[..., Array], *, loss: str = "cross_entropy", num_samples: int = 1
) -> DiagFn:
    """Sampled-label Fisher (Gauss-Newton) diagonal, the paper's estimator.

    Labels are drawn from the model's own predictive distribution (softmax of the logits for
    ``cross_entropy``; ``y ~ N(f, 1)`` per output for ``mse``), and the estimate is the squared
    gradient of the mean loss at those labels, averaged over ``num_samples`` draws.

    Args:
        predict_fn: ``predict_fn(params, *loss_args) -> (N, C)`` outputs (logits for CE).
        loss: ``"cross_entropy"`` or ``"mse"``.
        num_samples: label draws averaged (``>= 1``).
    """
    if loss not in ("cross_entropy", "mse"):
        raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}")
    num_samples = check.positive_int(num_samples, "num_samples")

    def diag(params: PyTree, key: Array, *loss_args: Any) -> PyTree:
        out = jax.lax.stop_gradient(predict_fn(params, *loss_args))

        def one(key: Array) -> PyTree:
            if loss == "cross_entropy":
                labels = jax.random.categorical(key, out, axis=-1)

                def sampled(p: PyTree) -> Array:
                    logits = predict_fn(p, *loss_args)
                    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

            else:
                target = out + jax.random.normal(key, out.shape, out.dtype)

                def sampled(p: PyTree) -> Array:
                    return 0.5 * jnp.mean(jnp.sum((predict_fn(p, *loss_args) - target) ** 2, -1))

            return jax.tree.map(jnp.square, jax.grad(sampled)(params))

        if num_samples == 1:  # no vmap: a batch of one costs ~3x more on CPU
            return one(key)
        est = jax.vmap(one)(jax.random.split(key, num_samples))
        return jax.tree.map(lambda a: jnp.mean(a, axis=0), est)

    return diag


def hutchinson_diagonal(loss_fn: LossFn, *, num_samples: int = 1) -> DiagFn:
    """Hutchinson's unbiased diagonal-Hessian estimate ``E[z * (H z)]``, Rademacher ``z``."""
    num_samples = check.positive_int(num_samples, "num_samples")

    def diag(params: PyTree, key: Array, *loss_args: Any) -> Array:
        x, unravel = ravel_pytree(params)
        _, lin = jax.linearize(jax.grad(lambda y: loss_fn(unravel(y), *loss_args)), x)
        z = jax.random.rademacher(key, (num_samples, x.shape[0]), x.dtype)
        return jnp.mean(z * jax.vmap(lin)(z), axis=0)

    return diag


def dense_hessian_diagonal(loss_fn: LossFn) -> DiagFn:
    """Exact Hessian diagonal by ``D`` HVPs (small problems and tests only)."""

    def diag(params: PyTree, key: Array, *loss_args: Any) -> Array:
        del key
        x, unravel = ravel_pytree(params)
        _, lin = jax.linearize(jax.grad(lambda y: loss_fn(unravel(y), *loss_args)), x)
        return jnp.diagonal(jax.vmap(lin)(jnp.eye(x.shape[0], dtype=x.dtype)))

    return diag


# --------------------------------------------------------------------------------------------
# The transformation
# --------------------------------------------------------------------------------------------


class IREState(NamedTuple):
    """State of :func:`ire`: the step count, the base optimizer's state and the selector's."""

    step: Array
    base: Any
    flat: Any
    prev: Array  # flat parameters of the previous step (for ``point="midpoint"``)
    key: Array


def ire(
    base: optax.GradientTransformation,
    kappa: float,
    selector: FlatSelector,
    *,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``base`` so its update is amplified by ``1 + kappa`` on the flat part.

    ``update(grads, state, params, *, loss_args=(), **extra)`` computes the base update ``u``
    (``extra`` and ``loss_args`` are forwarded to ``base``), refreshes the selector when due
    (step ``warmup + j K``), and returns ``u + kappa * P_flat u`` (or ``u`` before ``warmup``).
    A Python ``kappa = 0`` returns the base update bit for bit (and skips the curvature work); a
    traced zero runs the amplification and equals the base to rounding
    (``tests/optim/test_ire.py``).
    ``params`` are required.

    Args:
        base: any optax transformation producing the update to add to the parameters (e.g.
            ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(eta))`` for GD+WD).
        kappa: amplification ``>= 0`` (a float; or a traced scalar, e.g. through
            ``optax.inject_hyperparams(ire, static_args=("base", "selector", "seed"))``).
        selector: :func:`exact_flat` or :func:`diagonal_mask`.
        seed: PRNG seed for the selector's randomness (label sampling, Lanczos restarts).

    Example:
        >>> opt = ire(optax.sgd(0.1), 9.0, exact_flat(loss_fn, k=1, refresh_every=2))
        >>> state = opt.init(params)
        >>> updates, state = opt.update(grads, state, params, loss_args=(batch,))
    """
    # A traced kappa (e.g. under ``optax.inject_hyperparams``, which keeps it in the state so
    # runs with different kappa share one compiled program) is validated where it is concrete.
    kappa = kappa if check.is_traced(kappa) else check.nonnegative(kappa, "kappa")
    if not isinstance(selector, FlatSelector):
        raise TypeError(
            f"selector must be built by exact_flat(...) or diagonal_mask(...), got {selector!r}"
        )
    base = optax.with_extra_args_support(base)

    def init_fn(params: PyTree) -> IREState:
        x, _ = ravel_pytree(params)
        prev = x if selector.point == "midpoint" else jnp.zeros((0,), x.dtype)
        return IREState(
            jnp.zeros((), jnp.int32),
            base.init(params),
            selector.init(x),
            prev,
            jax.random.PRNGKey(seed),
        )

    def update_fn(
        updates: PyTree,
        state: IREState,
        params: PyTree | None = None,
        *,
        loss_args: tuple = (),
        **extra: Any,
    ) -> tuple[PyTree, IREState]:
        if params is None:
            raise ValueError("ire needs params: call update(grads, state, params, ...)")
        if not isinstance(loss_args, tuple):
            raise TypeError(f"loss_args must be a tuple (passed as *loss_args), got {loss_args!r}")
        u, base_state = base.update(updates, state.base, params, loss_args=loss_args, **extra)
        if isinstance(kappa, float) and kappa == 0:  # the base itself: no work, no arithmetic on u
            return u, state._replace(step=state.step + 1, base=base_state)
        x, unravel = ravel_pytree(params)
        u_flat, unravel_u = ravel_pytree(u)
        t = state.step
        due = (t >= selector.warmup) & ((t - selector.warmup) % selector.refresh_every == 0)
        key = jax.random.fold_in(state.key, t)
        x_ref = 0.5 * (x + state.prev) if selector.point == "midpoint" else x
        flat = jax.lax.cond(
            due,
            lambda s: selector.refresh(s, x_ref, key, unravel, loss_args),
            lambda s: s,
            state.flat,
        )
        active = (t >= selector.warmup).astype(u_flat.dtype)
        amplified = u_flat + (kappa * active) * selector.project(flat, x, u_flat)
        prev = x if selector.point == "midpoint" else state.prev
        new_state = IREState(t + 1, base_state, flat, prev, state.key)
        return unravel_u(amplified), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# Exact IRE on the sharpness-reduction flow of scale-invariant GD+WD [derived, docs/ire.md]
# --------------------------------------------------------------------------------------------


def flow_gains(kappa: float, *, radial: bool, reversed_drift: bool) -> tuple[float, float]:
    """[derived, docs/ire.md] ``(a, b)``: the factor exact IRE applies to the drift along
    ``Gamma`` (``1 + kappa``; ``1 - kappa`` when the projector is taken at the current iterate
    and refreshed every step, ``reversed_drift``) and to the norm balance (``1 + kappa`` when the
    radial directions are amplified too, else 1)."""
    a = 1.0 - kappa if reversed_drift else 1.0 + kappa
    return a, (1.0 + kappa if radial else 1.0)


def flow_speedup(a: float, b: float, g_sq: Any) -> Any:
    """[derived, docs/ire.md] Speed of IRE along the flow relative to GD+WD where ``|g|^2 = g_sq``:
    ``a (1 + |g|^2/4) / (1 + a |g|^2 / (4 b))``; NaN where the denominator is not positive (no
    EoS equilibrium: the amplitude the norm balance asks for does not exist)."""
    den = 1.0 + a * np.asarray(g_sq) / (4.0 * b)
    return np.where(den > 0, a * (1.0 + np.asarray(g_sq) / 4.0) / np.where(den > 0, den, 1), np.nan)


def flow_time(
    tau: np.ndarray,
    grid_tau: np.ndarray,
    grid_g_sq: np.ndarray,
    a: float,
    b: float,
    substeps: int = 50,
) -> np.ndarray:
    """[derived, docs/ire.md] The flow time ``tau_eff(tau)`` that IRE reaches at GD+WD's slow
    time ``tau``: the solution of ``d tau_eff / d tau = flow_speedup(a, b, |g(tau_eff)|^2)``,
    ``tau_eff(tau[0]) = 0``, where ``|g|^2`` along the GD+WD flow is tabulated on ``grid_tau``
    (increasing). RK4 (:func:`theory.flows.reduction.rk4_step`) with ``substeps`` steps per
    interval of
    ``tau``; NaN from where the speed is undefined or ``tau_eff`` leaves the grid."""

    def speed(te: float) -> float:
        if not grid_tau[0] <= te <= grid_tau[-1]:
            return float("nan")
        return float(flow_speedup(a, b, np.interp(te, grid_tau, grid_g_sq)))

    out = np.full(tau.shape, np.nan)
    out[0], te = 0.0, 0.0
    for i in range(1, len(tau)):
        h = (tau[i] - tau[i - 1]) / substeps
        for _ in range(substeps):
            te = rk4_step(speed, te, h)
        if not np.isfinite(te):
            break
        out[i] = te
    return out
