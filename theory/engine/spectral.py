"""More trackers: the Hessian's spectral density, per-group sharpness and free per-step diagnostics.

Each is an *add-on* (:class:`AbstractAddOn`, a subclass of :class:`AbstractTracker`): it adds
named arrays (``Obs.extra``, recorded on every row into ``result.observed``) to an observation
whose loss and gradient come from elsewhere, through the hook
``extra(objective, w, lr, groups, obs, state, t, key, record, ctx) -> (arrays, state, hvps)``.
Used alone, an add-on is a tracker (one ``value_and_grad`` per step, then its hook; ``eos`` and
``sharpness`` NaN; the driver then asks its ``every`` to divide ``SaveAt.every``).
:class:`Composite` runs a main tracker (e.g. :class:`LanczosTracker`: the loss, gradient, EoS
quantity and sharpness) and hands its observation to each add-on, so the gradient is computed
once. A curvature add-on linearizes the objective again on the rows it
solves (one extra primal pass, small beside its HVPs).

* :class:`SLQTracker` (``slq.nodes``, ``slq.weights``, ``(probes, m)``): the Gauss quadrature
  rules of stochastic Lanczos quadrature (:mod:`theory.core.slq`) for the spherical Hessian
  ``H(w_hat) = M H(w) M`` (``M`` the per-group norms; with one group ``|w|^2 H(w)``) or, with
  ``operator="eos"``, for ``lr H(w)``; on recorded rows with ``t % every == 0`` (NaN on other
  rows). Cost: ``probes * m`` HVPs per solved row. Turn the rules into a density or moments with
  :func:`theory.core.slq.density` / :func:`theory.core.slq.moments`.
* :class:`GroupSharpness` (``group.sharpness``, ``group.eos``, ``group.residual``, ``(G,)``):
  for each scale-invariance group ``g``, ``lambda_1(H_gg(w))`` of the group's diagonal block of
  the Hessian, by Lanczos on ``v -> P_g H(w) P_g v`` (``P_g`` the group's coordinate mask),
  warm-started per group from the last solve. Recorded as the per-group EoS quantity
  ``lr lambda_1(H_gg(w))`` and the per-group spherical sharpness
  ``lambda_1(H_gg(w_hat)) = |w_g|^2 lambda_1(H_gg(w))`` (the block of ``H`` at ``w`` scales as
  ``1 / |w_g|^2`` under the group's rescaling: homogeneity of degree ``-2``). For GD+WD, whose
  group ``g`` moves on its sphere with the effective step ``eta / |w_g|^2``, the per-group EoS
  quantity is also ``(eta / |w_g|^2) lambda_1(H_gg(w_hat))``. ``group.residual`` is the
  relative Ritz residual reached. Cost: the HVPs of ``G`` warm-started Lanczos solves.
* :class:`StepDiagnostics` (``diag.*``, scalars, every row, no HVP): the realized EoS of the
  update executed by the *previous* step (a tracker sees only ``w_t``: the state carries
  ``w_{t-1}``, ``L(w_{t-1})`` and ``g_{t-1}``, and the row of step ``t`` reports the step
  ``t-1 -> t``; NaN on the row of step 0). With ``u = w_t - w_{t-1}`` and
  ``dL = L(w_t) - L(w_{t-1})``, the secant curvature of ``L`` along ``u`` is
  ``c = 2 (dL - g_{t-1}^T u) / |u|^2`` and ``diag.realized_eos = lr c``. On a quadratic
  ``c = u^T H u / |u|^2`` exactly, for any update; for GD without weight decay
  (``u = -eta g``) it is ``eta g^T H g / |g|^2`` (the Rayleigh quotient along the gradient) and
  equals ``2 (1 + dL / (eta |g|^2))``, so it reaches 2 exactly when the step stops decreasing the
  loss. Also ``diag.loss_change`` (``dL``), ``diag.alignment``
  (``-g_{t-1}^T u / (|g_{t-1}| |u|)``, 1 for plain GD) and ``diag.grad_sq`` (``|g_t|^2`` of
  the current row). With an objective that draws minibatches (``at(t, key)``), ``dL`` is taken
  on the previous step's draw (one extra forward pass), so ``dL`` and ``g_{t-1}`` share a draw.
"""

from __future__ import annotations

import abc
import itertools
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.core import slq as slq_core
from theory.core.invariance import expand_groups, group_norms, group_sq_norms
from theory.core.lanczos import default_tol, lanczos
from theory.core.objective import Objective, draws_minibatches, step_objective
from theory.core.types import Array, Groups
from theory.engine.trackers import AbstractTracker, Obs, StepContext, _untracked


def _positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


class AbstractAddOn(AbstractTracker):
    """A tracker that adds named arrays to an observation made elsewhere (module docstring).

    Subclasses provide ``every``, ``init``, ``extra`` and ``config``. Alone, ``observe`` takes
    one ``value_and_grad`` at ``w`` and calls ``extra``; inside :class:`Composite` the main
    tracker's observation is passed instead. The shapes of the returned arrays must not depend
    on ``t`` or on whether the row is solved (NaN where not).
    """

    @abc.abstractmethod
    def extra(
        self,
        objective: Objective,
        w: Array,
        lr: Array,
        groups: Groups,
        obs: Obs,
        state: Any,
        t: Array,
        key: Array,
        record: bool,
        ctx: StepContext,
    ) -> tuple[dict[str, Array], Any, Array]:
        """``(named arrays, next state, HVPs spent)`` at ``w``, given the step's ``obs`` (loss
        and gradient at ``w``); ``record`` (static): the row is stored."""

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
        del tracked
        obs = _untracked(objective, w)
        extra, state, hvps = self.extra(objective, w, lr, groups, obs, state, t, key, record, ctx)
        return obs._replace(extra=extra, matvecs=jnp.asarray(hvps, jnp.int32)), state

    def top_vector(self, state: Any, w: Array) -> Array:
        del state
        return jnp.zeros_like(w)


class Composite(AbstractTracker):
    """A main tracker and add-ons: ``main`` gives the loss, gradient, ``eos``, ``sharpness``,
    residual and top vector (and its own extras); each add-on in ``extras`` adds its arrays from
    the main observation (the gradient is not recomputed). ``matvecs`` is the sum of the HVPs of
    all parts. The tracking period (``every``) is the main tracker's; add-ons keep their own.

    Raises:
        TypeError: if ``main`` is not an ``AbstractTracker`` or an extra not an
            :class:`AbstractAddOn`.
        ValueError: (when the run is traced) if two parts record the same name.
    """

    main: AbstractTracker
    extras: tuple[AbstractAddOn, ...]
    every: int = eqx.field(static=True)

    def __init__(self, main: AbstractTracker, extras: tuple[AbstractAddOn, ...] = ()) -> None:
        if not isinstance(main, AbstractTracker):
            raise TypeError(f"Composite.main must be an AbstractTracker, got {main!r}")
        if not isinstance(extras, tuple) or not all(isinstance(a, AbstractAddOn) for a in extras):
            raise TypeError(
                f"Composite.extras must be a tuple of AbstractAddOn trackers, got {extras!r}"
            )
        self.main = main
        self.extras = extras
        self.every = main.every

    def init(self, objective: Objective, w: Array, lr: Array, groups: Groups, key: Array) -> Any:
        main = self.main.init(objective, w, lr, groups, key)
        keys = [jax.random.fold_in(key, 1000 + i) for i in range(len(self.extras))]
        return main, tuple(
            a.init(objective, w, lr, groups, k) for a, k in zip(self.extras, keys, strict=True)
        )

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
        ms, states = state
        obs, ms = self.main.observe(objective, w, lr, groups, ms, t, key, tracked, record, ctx)
        extra = dict(obs.extra or {})
        matvecs = obs.matvecs
        new_states = []
        for i, (addon, st) in enumerate(zip(self.extras, states, strict=True)):
            k = jax.random.fold_in(key, 1000 + i)
            arrays, st, hvps = addon.extra(objective, w, lr, groups, obs, st, t, k, record, ctx)
            clash = sorted(set(arrays) & set(extra))
            if clash:
                raise ValueError(
                    f"Composite: {type(addon).__name__} records {clash}, already recorded by "
                    "another part of the composite"
                )
            extra.update(arrays)
            matvecs = matvecs + jnp.asarray(hvps, jnp.int32)
            new_states.append(st)
        obs = obs._replace(extra=extra or None, matvecs=matvecs)
        return obs, (ms, tuple(new_states))

    def top_vector(self, state: Any, w: Array) -> Array:
        return self.main.top_vector(state[0], w)

    def for_batch(self) -> Composite:
        return Composite(self.main.for_batch(), self.extras)

    def config(self) -> dict[str, Any]:
        return {
            "tracker": "composite",
            "main": self.main.config(),
            "extras": [a.config() for a in self.extras],
        }


def _curvature_objective(full: bool, objective: Objective, ctx: StepContext) -> Objective:
    return ctx.full if full else objective


def _solve_row(record: bool, t: Array, every: int, solve: Any, skip: Any, state: Any) -> Any:
    """``solve(state)`` on recorded rows with ``t % every == 0``, ``skip(state)`` otherwise
    (``record`` is static: unrecorded steps compile no solve)."""
    if not record:
        return skip(state)
    return jax.lax.cond(t % every == 0, solve, skip, state)


class SLQTracker(AbstractAddOn):
    """Stochastic Lanczos quadrature of the spherical Hessian (module docstring).

    Attributes:
        every: solve on recorded rows whose step is a multiple of ``every``.
        probes: number of probe vectors (drawn from the run's key folded with the step).
        m: Lanczos depth per probe (capped at ``D``); the rule is exact for polynomials of
            degree ``<= 2m - 1``.
        kind: ``"rademacher"`` or ``"gaussian"`` probes.
        operator: ``"spherical"``: ``H(w_hat) = M H(w) M``; ``"eos"``: ``lr H(w)`` (its edge of
            stability is at 2).
        full: take the curvature of the whole objective (``StepContext.full``) rather than of
            the step's draw (the same for a full-batch objective).
    """

    every: int = eqx.field(static=True, default=1)
    probes: int = eqx.field(static=True, default=8)
    m: int = eqx.field(static=True, default=32)
    kind: Literal["rademacher", "gaussian"] = eqx.field(static=True, default="rademacher")
    operator: Literal["spherical", "eos"] = eqx.field(static=True, default="spherical")
    full: bool = eqx.field(static=True, default=True)

    def __check_init__(self) -> None:
        for name in ("every", "probes", "m"):
            _positive_int("SLQTracker", name, getattr(self, name))
        if self.kind not in ("rademacher", "gaussian"):
            raise ValueError(
                f"SLQTracker.kind must be 'rademacher' or 'gaussian', got {self.kind!r}"
            )
        if self.operator not in ("spherical", "eos"):
            raise ValueError(
                f"SLQTracker.operator must be 'spherical' or 'eos', got {self.operator!r}"
            )

    def init(self, objective: Objective, w: Array, lr: Array, groups: Groups, key: Array) -> Any:
        del objective, lr, groups, key
        return jnp.zeros((0,), w.dtype)

    def extra(
        self,
        objective: Objective,
        w: Array,
        lr: Array,
        groups: Groups,
        obs: Obs,
        state: Any,
        t: Array,
        key: Array,
        record: bool,
        ctx: StepContext,
    ) -> tuple[dict[str, Array], Any, Array]:
        del obs
        m = min(self.m, w.shape[0])
        target = _curvature_objective(self.full, objective, ctx)

        def solve(state: Any) -> tuple[Array, Array, Array]:
            _, hvp = target.linearize(w)
            if self.operator == "spherical":
                s = expand_groups(group_norms(w, groups), groups)

                def matvec(x: Array) -> Array:
                    return s * hvp(s * x)
            else:

                def matvec(x: Array) -> Array:
                    return lr * hvp(x)

            k = jax.random.fold_in(jax.random.fold_in(key, t), 0x510)
            vectors = slq_core.probes(k, self.probes, w.shape[0], self.kind, w.dtype)
            quad = slq_core.slq(matvec, vectors, m)
            return quad.nodes, quad.weights, jnp.asarray(self.probes * m, jnp.int32)

        def skip(state: Any) -> tuple[Array, Array, Array]:
            nan = jnp.full((self.probes, m), jnp.nan, w.dtype)
            return nan, nan, jnp.asarray(0, jnp.int32)

        nodes, weights, hvps = _solve_row(record, t, self.every, solve, skip, state)
        return {"slq.nodes": nodes, "slq.weights": weights}, state, hvps

    def config(self) -> dict[str, Any]:
        return {
            "tracker": "slq",
            "every": self.every,
            "probes": self.probes,
            "m": self.m,
            "kind": self.kind,
            "operator": self.operator,
            "full": self.full,
        }


class GroupSharpness(AbstractAddOn):
    """Per-group EoS quantity and spherical sharpness from the Hessian's diagonal blocks
    (module docstring).

    Attributes:
        every: solve on recorded rows whose step is a multiple of ``every``.
        tol: relative Ritz residual per solve; ``None``: ``3 sqrt(eps)`` of the run's dtype.
        max_iters: HVP cap per group and solve (capped at the group's size).
        init_iters: Krylov cap of the cold solves at the start (capped at the group's size).
        full: take the curvature of the whole objective (``StepContext.full``).

    A block whose top eigenvalue is negative can be reported as 0 (after an exact breakdown
    Lanczos continues with a coordinate outside the group, where the operator vanishes).
    """

    every: int = eqx.field(static=True, default=1)
    tol: float | None = eqx.field(static=True, default=None)
    max_iters: int = eqx.field(static=True, default=24)
    init_iters: int = eqx.field(static=True, default=64)
    full: bool = eqx.field(static=True, default=True)

    def __check_init__(self) -> None:
        for name in ("every", "max_iters", "init_iters"):
            _positive_int("GroupSharpness", name, getattr(self, name))
        if self.tol is not None and (
            isinstance(self.tol, bool) or not (isinstance(self.tol, float | int) and self.tol > 0)
        ):
            raise ValueError(
                f"GroupSharpness.tol must be a positive float or None, got {self.tol!r}"
            )

    def _tol(self, dtype: Any) -> Array:
        return jnp.asarray(default_tol(dtype) if self.tol is None else self.tol, dtype)

    @staticmethod
    def _masks(groups: Groups, dtype: Any) -> list[Array]:
        ends = np.cumsum((0, *groups))
        idx = np.arange(ends[-1])
        return [jnp.asarray((idx >= a) & (idx < b), dtype) for a, b in itertools.pairwise(ends)]

    def _solve(
        self, hvp: Any, groups: Groups, starts: Array, iters: int, dtype: Any
    ) -> tuple[Array, Array, Array, Array]:
        """``(lambda_1 per group, unit eigenvectors (G, D), relative residuals, HVPs)``."""
        lams, vecs, resids = [], [], []
        hvps = jnp.asarray(0, jnp.int32)
        for g, mask in enumerate(self._masks(groups, dtype)):

            def op(x: Array, mask: Array = mask) -> Array:
                return mask * hvp(mask * x)

            start = mask * starts[g]
            res = lanczos(op, start, max_iters=min(iters, groups[g]), tol=self._tol(dtype))
            lam = res.eigenvalues[0]
            lams.append(lam)
            vecs.append(mask * res.eigenvectors[:, 0])
            resids.append(res.residuals[0] / jnp.abs(lam))
            hvps = hvps + res.num_matvecs
        return jnp.stack(lams), jnp.stack(vecs), jnp.stack(resids), hvps

    def init(self, objective: Objective, w: Array, lr: Array, groups: Groups, key: Array) -> Any:
        """Cold solves at ``w``: the per-group warm starts ``(G, D)``."""
        del lr
        _, hvp = objective.linearize(w)
        v0 = jax.random.normal(jax.random.fold_in(key, 2), w.shape, w.dtype)
        starts = jnp.stack([mask * v0 for mask in self._masks(groups, w.dtype)])
        return self._solve(hvp, groups, starts, self.init_iters, w.dtype)[1]

    def extra(
        self,
        objective: Objective,
        w: Array,
        lr: Array,
        groups: Groups,
        obs: Obs,
        state: Any,
        t: Array,
        key: Array,
        record: bool,
        ctx: StepContext,
    ) -> tuple[dict[str, Array], Any, Array]:
        del obs, key
        target = _curvature_objective(self.full, objective, ctx)
        n = len(groups)

        def solve(state: Array) -> tuple[Array, Array, Array, Array]:
            _, hvp = target.linearize(w)
            lam, vecs, resid, hvps = self._solve(hvp, groups, state, self.max_iters, w.dtype)
            return lam, resid, vecs, jnp.asarray(hvps, jnp.int32)

        def skip(state: Array) -> tuple[Array, Array, Array, Array]:
            nan = jnp.full((n,), jnp.nan, w.dtype)
            return nan, nan, state, jnp.asarray(0, jnp.int32)

        lam, resid, state, hvps = _solve_row(record, t, self.every, solve, skip, state)
        arrays = {
            "group.sharpness": group_sq_norms(w, groups) * lam,
            "group.eos": lr * lam,
            "group.residual": resid,
        }
        return arrays, state, hvps

    def config(self) -> dict[str, Any]:
        return {
            "tracker": "group_sharpness",
            "every": self.every,
            "tol": self.tol,
            "max_iters": self.max_iters,
            "init_iters": self.init_iters,
            "full": self.full,
        }


class DiagState(NamedTuple):
    """What :class:`StepDiagnostics` carries from the previous step."""

    w: Array  # w_{t-1}
    loss: Array  # L(w_{t-1})
    grad: Array  # g_{t-1}, the gradient that drove the update w_{t-1} -> w_t
    valid: Array  # a previous step exists


class StepDiagnostics(AbstractAddOn):
    """Free per-step diagnostics: realized EoS of the executed update, ``|g|^2``, alignment
    (module docstring). No HVP; every row."""

    every: int = eqx.field(static=True, default=0)

    def __check_init__(self) -> None:
        if self.every != 0:
            raise ValueError(
                f"StepDiagnostics.every must be 0 (it observes every step), got {self.every!r}"
            )

    def init(
        self, objective: Objective, w: Array, lr: Array, groups: Groups, key: Array
    ) -> DiagState:
        del objective, lr, groups, key
        zero = jnp.zeros((), w.dtype)
        return DiagState(jnp.zeros_like(w), zero, jnp.zeros_like(w), jnp.asarray(False))

    def extra(
        self,
        objective: Objective,
        w: Array,
        lr: Array,
        groups: Groups,
        obs: Obs,
        state: DiagState,
        t: Array,
        key: Array,
        record: bool,
        ctx: StepContext,
    ) -> tuple[dict[str, Array], Any, Array]:
        del objective, groups, record
        loss_now = obs.loss
        if draws_minibatches(ctx.full):  # the previous step's draw, evaluated at w_t
            loss_now = step_objective(ctx.full, t - 1, key)(w)
        u = w - state.w
        d_loss = loss_now - state.loss
        gu = jnp.vdot(state.grad, u)
        uu = jnp.vdot(u, u)
        nan = jnp.asarray(jnp.nan, w.dtype)
        ok = state.valid & (uu > 0)
        safe_uu = jnp.where(ok, uu, 1.0)
        realized = jnp.where(ok, 2.0 * lr * (d_loss - gu) / safe_uu, nan)
        norms = jnp.linalg.norm(state.grad) * jnp.sqrt(safe_uu)
        align = jnp.where(ok & (norms > 0), -gu / jnp.where(norms > 0, norms, 1.0), nan)
        arrays = {
            "diag.realized_eos": realized,
            "diag.loss_change": jnp.where(state.valid, d_loss, nan),
            "diag.alignment": align,
            "diag.grad_sq": jnp.vdot(obs.grad, obs.grad),
        }
        return arrays, DiagState(w, obs.loss, obs.grad, jnp.asarray(True)), jnp.asarray(0)

    def config(self) -> dict[str, Any]:
        return {"tracker": "step_diagnostics"}


def with_extras(main: AbstractTracker, *extras: AbstractAddOn) -> Composite:
    """``Composite(main, extras)``: e.g. ``with_extras(LanczosTracker(every=10),
    SLQTracker(every=100), StepDiagnostics())``."""
    return Composite(main, tuple(extras))


__all__ = [
    "AbstractAddOn",
    "Composite",
    "DiagState",
    "GroupSharpness",
    "SLQTracker",
    "StepDiagnostics",
    "with_extras",
]
