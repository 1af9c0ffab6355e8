"""Adaptive methods (Adam, AdamW, RMSProp): the preconditioned sharpness and its edge.

An adaptive method steps ``w_{t+1} = w_t - lr P_t^{-1} m_t`` (plus ``- lr wd w_t`` for AdamW's
decoupled weight decay) with a diagonal preconditioner ``P_t``. Its stability is decided by the
*preconditioned* sharpness ``lambda_1(P_t^{-1} H(w_t))``, which has the spectrum of the
symmetric ``P^{-1/2} H P^{-1/2}`` (Cohen et al., "Adaptive Gradient Methods at the Edge of
Stability", 2022). Frozen-preconditioner linear stability gives the edge

* ``(2 + 2 b1) / ((1 - b1) lr)`` for Adam/AdamW with momentum ``b1`` (the heavy-ball-with-EMA
  recursion ``m_t = b1 m_{t-1} + (1 - b1) g_t`` on a quadratic mode of curvature ``a`` is stable
  iff ``lr a < (2 + 2 b1) / (1 - b1)``); ``38 / lr`` at ``b1 = 0.9``;
* ``2 / lr`` for RMSProp (``b1 = 0``).

AdamW's weight decay adds ``lr wd`` to every mode's contraction; the edge above ignores it
(``lr wd << 1``).

**Which P.** ``P_t`` is the preconditioner that the update *of step t* applies, as optax
computes it: the second moment of the state, updated with the step's gradient,
``nu_t = b2 nu_{t-1} + (1 - b2) g_t^2``, bias-corrected with the incremented count,
``nu_hat = nu_t / (1 - b2^(count + 1))``, then ``P = sqrt(nu_hat) + eps`` (``eps`` outside the
root, as optax's Adam; ``eps_in_sqrt=True`` gives ``sqrt(nu_hat + eps)``, optax's default
RMSProp). The tracker reads ``nu`` (and ``count``) from the method's state before the step
(:class:`theory.engine.trackers.StepContext`) and the gradient from its own linearization; so
``P^{-1} m_hat`` is exactly optax's Adam direction of that step (tested).

**Finding the state.** :func:`second_moment_state` walks the optax state pytree (tuples of a
chain, named tuples, ``InjectHyperparamsState`` ...) in ``jax.tree_util`` order and collects every
node that is an ``optax.ScaleByAdamState`` (``nu``, ``count``: bias-corrected),
``ScaleByRmsWithCountState`` (``nu``, ``count``: bias-corrected) or ``ScaleByRmsState`` (``nu``
only: no bias correction). Exactly one must be found; none (plain GD, ``optax.sgd``, a GD+WD
method) or several is an error that names what was found.

The hyperparameters ``b1, b2, eps`` are not in the optax state, so the tracker holds them; an
:class:`AdaptiveSpec` builds the optax optimizer, the engine method and the matching tracker
from one set of values, so they cannot disagree. ``lr`` comes from the method (the engine hands
``method.lr`` to the tracker), so the edge follows the method's step size.

:class:`StepGeometry` wraps any tracker and records the step's geometry (the angle between
``w_t`` and ``w_{t+1}``, the update's size and its radial part), computed by calling the method's
own update on the step's gradient and state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from theory.core.lanczos import default_tol, lanczos
from theory.core.objective import Objective
from theory.core.types import Array, Groups
from theory.engine.methods import Optax, optax_method
from theory.engine.trackers import AbstractTracker, Obs, StepContext

Kind = Literal["adam", "adamw", "rmsprop"]

#: The names of :class:`PreconditionedTracker`'s extras in ``result.observed``.
EXTRAS = ("precond.sharpness", "precond.edge", "precond.eos")
#: The names of :class:`StepGeometry`'s extras in ``result.observed``.
STEP_EXTRAS = ("step.angle", "step.size", "step.radial")

_MOMENT_STATES = (optax.ScaleByAdamState, optax.ScaleByRmsState)


def _rms_with_count() -> type | None:
    from optax._src import transform  # the bias-corrected RMS state is not re-exported

    found = vars(transform).get("ScaleByRmsWithCountState")
    return found if isinstance(found, type) else None


def _moment_types() -> tuple[type, ...]:
    extra = _rms_with_count()
    return _MOMENT_STATES + ((extra,) if extra is not None else ())


def adaptive_edge(lr: Any, b1: Any) -> Any:
    """The edge of stability of an adaptive method, ``(2 + 2 b1) / ((1 - b1) lr)`` (``b1 = 0``:
    RMSProp's ``2 / lr``)."""
    return (2 + 2 * b1) / ((1 - b1) * lr)


class SecondMoment(NamedTuple):
    """The second-moment statistics found in an optax state.

    ``nu``: the second moment (a pytree like the parameters); ``updates``: the number of
    updates made, the state's ``count`` (``None`` where the state keeps no count: no bias
    correction); ``kind``: the state's class name.
    """

    nu: Any
    updates: Array | None
    kind: str


def _describe(state: Any) -> str:
    """The class names of the nodes of an optax state (for error messages)."""
    names: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, tuple):
            if type(node) is not tuple:
                names.append(type(node).__name__)
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)

    visit(state)
    unique = list(dict.fromkeys(names))
    return "[" + ", ".join(unique) + "]" if unique else repr(state)[:120]


def second_moment_state(state: Any, method: str = "the method") -> SecondMoment:
    """The one ``ScaleByAdamState``/``ScaleByRmsState``/``ScaleByRmsWithCountState`` in ``state``.

    Rule: every node of the state pytree is visited in ``jax.tree_util`` order (a chain's tuple,
    named tuples and dicts are descended into); the moment states are collected. Exactly one
    is required.

    Raises:
        ValueError: none or several found, naming ``method`` and the state's node types.
    """
    types = _moment_types()
    found = [
        node
        for node in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, types))
        if isinstance(node, types)
    ]
    wanted = "optax.ScaleByAdamState (adam, adamw) or ScaleByRmsState (rmsprop)"
    if not found:
        raise ValueError(
            f"PreconditionedTracker needs an adaptive method whose state holds a second moment "
            f"({wanted}); {method} has state nodes {_describe(state)}"
        )
    if len(found) > 1:
        raise ValueError(
            f"PreconditionedTracker needs exactly one second-moment state ({wanted}); {method} "
            f"has {len(found)}: {[type(n).__name__ for n in found]}"
        )
    node: Any = found[0]
    # (a NamedTuple without a ``count`` field still has tuple.count: read the fields)
    count = node.count if "count" in node._fields else None
    return SecondMoment(node.nu, count, type(node).__name__)


def preconditioner(
    moment: SecondMoment, grad: Array, *, b2: Any, eps: Any, eps_in_sqrt: bool = False
) -> Array:
    """The diagonal ``P`` (flat, ``(D,)``) that the step with gradient ``grad`` applies.

    ``nu' = b2 nu + (1 - b2) grad^2``; with a count, ``nu_hat = nu' / (1 - b2^(count + 1))``
    (optax's bias correction), else ``nu_hat = nu'``; ``P = sqrt(nu_hat) + eps``, or
    ``sqrt(nu_hat + eps)`` with ``eps_in_sqrt``.
    """
    nu = ravel_pytree(moment.nu)[0].astype(grad.dtype)
    if nu.shape != grad.shape:
        raise ValueError(
            f"the second moment has {nu.shape[0]} entries but w has {grad.shape[0]}: the method's "
            "state must be that of the flat parameter vector the tracker sees"
        )
    nu = b2 * nu + (1 - b2) * grad * grad
    if moment.updates is not None:
        done = (moment.updates + 1).astype(grad.dtype)
        nu = nu / (1 - jnp.asarray(b2, grad.dtype) ** done)
    return jnp.sqrt(nu + eps) if eps_in_sqrt else jnp.sqrt(nu) + eps


class PrecondState(NamedTuple):
    """Warm starts of :class:`PreconditionedTracker`: ``v`` the top eigenvector of
    ``P^{-1/2} H P^{-1/2}``, ``vh`` that of ``lr H`` (``plain``), at the last tracked step."""

    v: Array
    vh: Array


class PreconditionedTracker(AbstractTracker):
    """Lanczos on ``P^{-1/2} H(w) P^{-1/2}`` every ``every`` steps (module docstring for ``P``).

    On a tracked step: one linearization (its loss and gradient drive the step, as
    :class:`theory.engine.LanczosTracker`'s), ``P`` from the method's state and the step's
    gradient, and a Lanczos solve warm-started from the last tracked step's eigenvector, stopped
    at relative Ritz residual ``tol``. Extras on every row: ``precond.sharpness`` =
    ``lambda_1(P^{-1} H)`` and ``precond.eos`` = its ratio to the edge (1 at the edge; both NaN
    where not tracked), ``precond.edge`` = ``(2 + 2 b1) / ((1 - b1) lr)`` (on every row). The
    warm start is always the last tracked step's eigenvector.

    With ``plain`` a second solve gives the plain columns: ``eos = lr lambda_1(H)`` and, with
    one group, the spherical sharpness ``lambda_1(H) |w|^2``; with several groups ``sharpness``
    is NaN (use :class:`theory.engine.LanczosTracker` for it). Without ``plain`` both are NaN.
    Under an adaptive method ``lr lambda_1(H)`` is not a stability number (module docstring).

    Attributes:
        every: tracking period (>= 1).
        b1, b2, eps: the optimizer's hyperparameters (:class:`AdaptiveSpec` sets them).
        eps_in_sqrt: ``P = sqrt(nu_hat + eps)`` instead of ``sqrt(nu_hat) + eps``.
        tol: relative Ritz residual (``None``: ``3 sqrt(eps)`` of the dtype).
        max_iters: HVP cap per solve (the first tracked solve starts cold, from a random
            vector; later ones warm, from the last tracked step's eigenvector, and usually
            stop after a few HVPs).
        plain: also solve ``lr H`` (the ``eos`` and ``sharpness`` columns).
    """

    every: int = eqx.field(static=True, default=1)
    b1: float = eqx.field(static=True, default=0.9)
    b2: float = eqx.field(static=True, default=0.999)
    eps: float = eqx.field(static=True, default=1e-8)
    eps_in_sqrt: bool = eqx.field(static=True, default=False)
    tol: float | None = eqx.field(static=True, default=None)
    max_iters: int = eqx.field(static=True, default=64)
    plain: bool = eqx.field(static=True, default=True)

    def __check_init__(self) -> None:
        for name in ("every", "max_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"PreconditionedTracker.{name} must be a positive int, got {value!r}"
                )
        for name in ("b1", "b2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, float | int) and 0 <= value < 1):
                raise ValueError(
                    f"PreconditionedTracker.{name} must be a float in [0, 1), got {value!r}"
                )
        if isinstance(self.eps, bool) or not (isinstance(self.eps, float | int) and self.eps >= 0):
            raise ValueError(f"PreconditionedTracker.eps must be a float >= 0, got {self.eps!r}")
        if self.tol is not None and (
            isinstance(self.tol, bool) or not (isinstance(self.tol, float | int) and self.tol > 0)
        ):
            raise ValueError(
                f"PreconditionedTracker.tol must be a positive float or None, got {self.tol!r}"
            )

    def _tol(self, dtype: Any) -> Array:
        return jnp.asarray(default_tol(dtype) if self.tol is None else self.tol, dtype)

    def init(
        self, objective: Objective, w: Array, lr: Array, groups: Groups, key: Array
    ) -> PrecondState:
        """Random unit starts: the first tracked solve is cold (the preconditioner needs the
        method's state, which ``init`` does not see)."""
        del objective, lr, groups
        v = jax.random.normal(jax.random.fold_in(key, 2), w.shape, w.dtype)
        vh = jax.random.normal(jax.random.fold_in(key, 3), w.shape, w.dtype)
        return PrecondState(v / jnp.linalg.norm(v), vh / jnp.linalg.norm(vh))

    def _extras(self, sharp: Array, lr: Array, dtype: Any) -> dict[str, Array]:
        edge = jnp.asarray(adaptive_edge(lr, self.b1), dtype)
        return {"precond.sharpness": sharp, "precond.edge": edge, "precond.eos": sharp / edge}

    def observe(
        self,
        objective: Objective,
        w: Array,
        lr: Array,
        groups: Groups,
        state: PrecondState,
        t: Array,
        key: Array,
        tracked: Array,
        record: bool,
        ctx: StepContext,
    ) -> tuple[Obs, PrecondState]:
        del key, record
        moment = second_moment_state(ctx.method_state, type(ctx.method).__name__)
        tol = self._tol(w.dtype)
        nan = jnp.asarray(jnp.nan, w.dtype)
        max_iters = min(w.shape[0], self.max_iters)

        def top(matvec: Any, start: Array) -> tuple[Array, Array, Array, Array]:
            res = lanczos(matvec, start, max_iters=max_iters, tol=tol)
            lam = res.eigenvalues[0]
            return lam, res.eigenvectors[:, 0], res.residuals[0] / jnp.abs(lam), res.num_matvecs

        def solve(state: PrecondState) -> tuple[Obs, PrecondState]:
            (val, grad), hvp = objective.linearize(w)
            p = preconditioner(moment, grad, b2=self.b2, eps=self.eps, eps_in_sqrt=self.eps_in_sqrt)
            d = 1 / jnp.sqrt(p)
            sharp, v, resid, matvecs = top(lambda x: d * hvp(d * x), state.v)
            eos, sph, vh = nan, nan, state.vh
            if self.plain:
                eos, vh, resid_h, matvecs_h = top(lambda x: lr * hvp(x), state.vh)
                sph = eos * jnp.vdot(w, w) / lr if len(groups) == 1 else nan
                resid = jnp.maximum(resid, resid_h)
                matvecs = matvecs + matvecs_h
            obs = Obs(val, grad, eos, sph, jnp.asarray(matvecs, jnp.int32), resid)
            return obs._replace(extra=self._extras(sharp, lr, w.dtype)), PrecondState(v, vh)

        def skip(state: PrecondState) -> tuple[Obs, PrecondState]:
            val, grad = objective.value_and_grad(w)
            obs = Obs(val, grad, nan, nan, jnp.asarray(0, jnp.int32), nan)
            return obs._replace(extra=self._extras(nan, lr, w.dtype)), state

        return jax.lax.cond(tracked, solve, skip, state)

    def top_vector(self, state: PrecondState, w: Array) -> Array:
        """The top eigenvector of ``P^{-1/2} H P^{-1/2}`` at the last tracked step."""
        del w
        return state.v

    def config(self) -> dict[str, Any]:
        return {
            "tracker": "preconditioned",
            "sharpness_every": self.every,
            "b1": self.b1,
            "b2": self.b2,
            "eps": self.eps,
            "eps_in_sqrt": self.eps_in_sqrt,
            "lanczos_tol": self.tol,
            "lanczos_iters": self.max_iters,
            "plain": self.plain,
        }


class StepGeometry(AbstractTracker):
    """Any tracker, plus the geometry of each step (recorded on every row).

    The step's ``w_{t+1}`` is computed by the method's own ``update`` on the inner tracker's
    gradient, the method's state, ``t`` and the run's key (the same call the engine makes next),
    so it is the run's next iterate. Extras: ``step.angle`` = the angle between ``w_t`` and
    ``w_{t+1}`` (radians), ``step.size`` = ``|w_{t+1} - w_t|``, ``step.radial`` =
    ``<w_t, w_{t+1} - w_t> / |w_t|`` (the update's component along ``w_t``). Cost: one more
    method update per step (elementwise for GD and Adam).
    """

    inner: AbstractTracker
    every: int = eqx.field(static=True)

    def __init__(self, inner: AbstractTracker) -> None:
        if not isinstance(inner, AbstractTracker):
            raise TypeError(f"StepGeometry wraps an AbstractTracker, got {type(inner).__name__}")
        self.inner = inner
        self.every = inner.every

    def init(self, objective: Objective, w: Array, lr: Array, groups: Groups, key: Array) -> Any:
        return self.inner.init(objective, w, lr, groups, key)

    def observe(
        self,
        objective: Objective,
        w: Array,
        lr: Array,
        groups: Groups,
        state: Any,
        t: Array,
        key: Array,
        tracked: Array,
        record: bool,
        ctx: StepContext,
    ) -> tuple[Obs, Any]:
        obs, state = self.inner.observe(
            objective, w, lr, groups, state, t, key, tracked, record, ctx
        )
        w_next, _ = ctx.method.update(w, obs.grad, ctx.method_state, t, key)
        delta = w_next - w
        norm = jnp.linalg.norm(w)
        radial = jnp.vdot(w, delta) / norm
        size = jnp.linalg.norm(delta)
        tangential = jnp.sqrt(jnp.maximum(size**2 - radial**2, 0.0))
        extra = dict(obs.extra or {})
        extra.update(
            {
                "step.angle": jnp.arctan2(tangential, norm + radial),
                "step.size": size,
                "step.radial": radial,
            }
        )
        return obs._replace(extra=extra), state

    def top_vector(self, state: Any, w: Array) -> Array:
        return self.inner.top_vector(state, w)

    def config(self) -> dict[str, Any]:
        return {**self.inner.config(), "step_geometry": True}

    def for_batch(self) -> StepGeometry:
        return StepGeometry(self.inner.for_batch())


@dataclasses.dataclass(frozen=True)
class AdaptiveSpec:
    """One adaptive optimizer's hyperparameters: builds its optax transform, engine method and
    the matching :class:`PreconditionedTracker` (so ``b1, b2, eps`` cannot disagree).

    * ``"adam"``: ``optax.adam(lr, b1, b2, eps)`` (``wd`` must be 0);
    * ``"adamw"``: ``optax.adamw(lr, b1, b2, eps, weight_decay=wd)``: ``w <- w - lr (m_hat /
      (sqrt(nu_hat) + eps) + wd w)`` (decoupled weight decay);
    * ``"rmsprop"``: ``optax.rmsprop(lr, decay=b2, eps=eps, eps_in_sqrt=False,
      bias_correction=True)`` (``b1`` must be 0, ``wd`` 0): ``w <- w - lr g / (sqrt(nu_hat) +
      eps)``, the same ``P`` as Adam's.
    """

    kind: Kind
    lr: float
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    wd: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("adam", "adamw", "rmsprop"):
            raise ValueError(
                f"AdaptiveSpec.kind must be 'adam', 'adamw' or 'rmsprop', got {self.kind!r}"
            )
        if not (isinstance(self.lr, float | int) and self.lr > 0 and np.isfinite(self.lr)):
            raise ValueError(f"AdaptiveSpec.lr must be a positive float, got {self.lr!r}")
        for name in ("b1", "b2"):
            value = getattr(self, name)
            if not (isinstance(value, float | int) and 0 <= value < 1):
                raise ValueError(f"AdaptiveSpec.{name} must be in [0, 1), got {value!r}")
        for name in ("eps", "wd"):
            value = getattr(self, name)
            if not (isinstance(value, float | int) and value >= 0 and np.isfinite(value)):
                raise ValueError(f"AdaptiveSpec.{name} must be a float >= 0, got {value!r}")
        if self.kind == "rmsprop" and self.b1 != 0:
            raise ValueError(f"AdaptiveSpec: rmsprop has no momentum, b1 must be 0, got {self.b1}")
        if self.kind != "adamw" and self.wd != 0:
            raise ValueError(
                f"AdaptiveSpec: only 'adamw' has (decoupled) weight decay; {self.kind!r} needs "
                f"wd = 0, got {self.wd}"
            )

    @property
    def edge(self) -> float:
        """``(2 + 2 b1) / ((1 - b1) lr)``."""
        return float(adaptive_edge(self.lr, self.b1))

    def optimizer(self) -> optax.GradientTransformation:
        """The optax transform (class docstring)."""
        if self.kind == "adam":
            return optax.adam(self.lr, b1=self.b1, b2=self.b2, eps=self.eps)
        if self.kind == "adamw":
            return optax.adamw(self.lr, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.wd)
        return optax.rmsprop(
            self.lr, decay=self.b2, eps=self.eps, eps_in_sqrt=False, bias_correction=True
        )

    def tracker(self, every: int = 1, **settings: Any) -> PreconditionedTracker:
        """A :class:`PreconditionedTracker` with this optimizer's ``b1, b2, eps``; ``settings``:
        its other fields (``tol``, ``max_iters``, ``plain``, ...)."""
        return PreconditionedTracker(every=every, b1=self.b1, b2=self.b2, eps=self.eps, **settings)

    def method(self, w0: Array) -> tuple[Optax, Array]:
        """``(engine method, flat start)`` on the flat vector ``w0`` (``method.lr = lr``; the
        optimizer's state is that of the flat vector, as the tracker needs)."""
        w0 = jnp.asarray(w0)
        if w0.ndim != 1:
            raise ValueError(f"AdaptiveSpec.method needs a flat vector w0 (D,), got {w0.shape}")
        return optax_method(self.optimizer(), w0, lr=self.lr)


def adam_method(
    w0: Array,
    *,
    lr: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    wd: float = 0.0,
    every: int = 1,
    **settings: Any,
) -> tuple[Optax, Array, PreconditionedTracker, float]:
    """``(method, flat start, tracker, edge)`` of Adam (``wd = 0``) or AdamW (``wd > 0``) on the
    flat vector ``w0``, from one set of hyperparameters (:class:`AdaptiveSpec`)."""
    spec = AdaptiveSpec("adamw" if wd > 0 else "adam", lr, b1, b2, eps, wd)
    method, flat = spec.method(w0)
    return method, flat, spec.tracker(every, **settings), spec.edge
