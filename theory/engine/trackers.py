"""Sharpness trackers: what the engine learns about the curvature along a run, and at what cost.

A tracker subclasses :class:`AbstractTracker` (an ``equinox.Module``, settings static; in the
style of lineax's ``AbstractLinearSolver``) and provides

* ``every``: track on steps ``t`` with ``t % every == 0`` (0: never);
* ``init(objective, w0, lr, groups, key) -> state``: its state, e.g. warm-start vectors
  (jit/vmap-compatible);
* ``observe(objective, w, lr, groups, state, t, key, tracked, record, ctx) -> (Obs, state)``: the
  loss and gradient at ``w`` (which the step uses) and, on tracked steps, the EoS quantity
  ``lr * lambda_1(hess L(w))`` and the spherical sharpness ``lambda_1(hess L(w_hat))``, plus any
  further named arrays of its own (``Obs.extra``, recorded on every row into
  ``result.observed``). ``objective`` is the step's objective (a minibatch objective's draw for
  step ``t``; the whole objective otherwise); ``ctx`` (:class:`StepContext`) holds the whole
  objective, the method and the method's state, for trackers that need them (full-batch
  curvature under SGD, a preconditioner read from an optimizer's state);
* ``top_vector(state, w)``: the last top eigenvector it holds (the result's ``v1``);
* ``config()``: the settings that decide a run's arrays (compared on resume);
* ``for_batch()``: the same tracker for configurations stepping in lockstep (a sweep).

Trackers here:

* :class:`NoTracking`: bare GD (one ``value_and_grad`` per step).
* :class:`LanczosTracker`: Lanczos on ``lr H(w)`` every ``every`` steps, warm-started from an
  earlier tracked step's eigenvector, stopped at a relative Ritz residual ``tol``; the primal
  pass of the linearization is shared with the GD step.

With one group the spherical sharpness is free (``eos |w|^2 / lr``). With several groups it is
the top eigenvalue of a second operator ``M H(w) M = H(w_hat)`` (``M`` the per-group norms),
solved only on recorded rows.
"""

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from equinox import AbstractVar

from theory.core import validate as check
from theory.core.invariance import expand_groups, group_norms
from theory.core.lanczos import default_tol, lanczos
from theory.core.objective import Objective
from theory.core.types import Array, Groups


class Obs(NamedTuple):
    """What one step learns at the current iterate (before the update).

    ``extra``: further named arrays of the tracker (``None``: none), recorded on every row into
    ``result.observed`` under these names (a name must not collide with ``SaveAt.observe``'s).
    Their shapes and dtypes must not depend on whether the step is tracked (fill NaN where not).
    """

    loss: Array
    grad: Array
    eos: Array
    sharpness: Array
    matvecs: Array  # HVPs spent on this step (int32)
    residual: Array  # relative Ritz residual achieved (nan where not tracked)
    extra: dict[str, Array] | None = None


class StepContext(NamedTuple):
    """What a tracker may read beyond the step's objective (:meth:`AbstractTracker.observe`).

    Attributes:
        full: the whole objective (the same as the step's objective unless the objective draws
            minibatches, :func:`theory.core.objective.step_objective`).
        method: the engine method of the run (an ``AbstractMethod``; its hyperparameters are
            leaves, batched in a sweep).
        method_state: the method's state before this step's update (e.g. an optax state).
    """

    full: Objective
    method: Any
    method_state: Any


def _untracked(objective: Objective, w: Array) -> Obs:
    val, grad = objective.value_and_grad(w)
    nan = jnp.asarray(jnp.nan, w.dtype)
    return Obs(val, grad, nan, nan, jnp.asarray(0, jnp.int32), nan)


class AbstractTracker(eqx.Module):
    """What the engine learns about the curvature at each iterate (module docstring).

    The driver (:func:`theory.engine.run`) refuses anything that is not an instance of this
    class. The tracker's state (warm starts, ...) is its own: made by :meth:`init`, carried by
    the driver, read back only through :meth:`top_vector`.
    """

    every: AbstractVar[int]

    @abc.abstractmethod
    def init(self, objective: Objective, w: Array, lr: Array, groups: Groups, key: Array) -> Any:
        """The tracker's state at the start ``w``."""

    @abc.abstractmethod
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
        """``(Obs at w, next state)``; ``tracked``: solve for the curvature on this step;
        ``record`` (static): the step's row is stored; ``ctx``: the whole objective, the method
        and its state (:class:`StepContext`)."""

    @abc.abstractmethod
    def top_vector(self, state: Any, w: Array) -> Array:
        """The last top eigenvector held in ``state`` (zeros of ``w``'s shape if none)."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """The settings that decide the run's arrays (JSON-friendly; compared on resume)."""

    def for_batch(self) -> "AbstractTracker":
        """This tracker for configurations that step in lockstep (:func:`theory.engine.run_batch`).
        The default: itself."""
        return self


class NoTracking(AbstractTracker):
    """Bare GD: no curvature is computed (``eos`` and ``sharpness`` are NaN)."""

    every: int = eqx.field(static=True, default=0)

    def init(self, objective: Objective, w: Array, lr: Array, groups: Groups, key: Array) -> Any:
        del objective, lr, groups, key
        return jnp.zeros((0,), w.dtype)

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
        del lr, groups, t, key, tracked, record, ctx
        return _untracked(objective, w), state

    def top_vector(self, state: Any, w: Array) -> Array:
        del state
        return jnp.zeros_like(w)

    def config(self) -> dict[str, Any]:
        return {"tracker": "none"}


class LanczosState(NamedTuple):
    """Warm starts of :class:`LanczosTracker`.

    ``v``: top eigenvector of ``lr H(w)`` at the last tracked step; ``vp``: at the tracked step
    before it (the other parity's chain); ``vs``: top eigenvector of ``H(w_hat)`` where it was
    last solved (several groups only).
    """

    v: Array
    vp: Array
    vs: Array
    gap: Array  # top Ritz gap of the last solve (``stop="error"``; 0 where unknown)
    gp: Array  # the same, of the solve before it (the other parity's chain)


class LanczosTracker(AbstractTracker):
    """Lanczos on ``lr H(w)`` every ``every`` steps, warm-started, stopped at residual ``tol``.

    Warm start: ``"parity"`` starts an odd-``every`` tracker from the eigenvector of two tracked
    steps before (at the Edge of Stability the iterate, and so the Hessian, oscillates with
    period 2: the top eigenvector of an even step is closer to that of the previous even step);
    ``"last"`` always from the previous tracked step's. Each solve stops at the first Krylov
    dimension whose relative Ritz residual ``|A y - theta y| / |theta|`` is ``<= tol`` (one HVP
    when the warm start already meets it), or at ``max_iters`` HVPs. A residual ``r`` bounds the
    eigenvalue error by ``r`` and makes it about ``r^2 / gap`` (relative gap to the next
    eigenvalue); where the top two eigenvalues nearly cross a warm-started solve can settle on
    the second one (an error up to their gap; the residual does not reveal it).

    Stopping rule ``stop``: ``"residual"`` as above; ``"error"`` stops instead on an estimate
    of the eigenvalue error, ``min(r, safety r^2 / gap) <= tol |theta|`` (Kato-Temple, with the
    gap of the top two Ritz values; :func:`theory.core.lanczos.lanczos` with ``stop="error"``), so
    ``tol`` is then the relative eigenvalue accuracy asked for (the gap is trusted from three
    Krylov vectors on, and the last trusted gap of the same chain caps it). At the same ``tol``
    it stops earlier than the residual rule and still meets ``tol``; at equal *accuracy* it is
    not always cheaper, since the residual rule's error ``~ r^2 / gap`` is often far below its
    ``tol`` (measured in ``tests/engine/test_engine.py`` and ``benchmarks/bench_networks.py``). The
    residual is still reported.

    Near a crossing of the top two eigenvalues (at the Edge of Stability of W1 the top gap is
    about 1%), a loose ``tol`` lets a warm-started solve stop on the second eigenvalue: measured
    on W1-EoS, ``tol = 1e-2`` or ``stop="error", tol = 1e-3`` had median errors 1-3e-4 but 95%
    quantiles ~5e-3 and maxima ~1.4e-2 (the gap); the default tolerance stayed below 5e-5.

    Attributes:
        every: tracking period in steps (>= 1).
        tol: relative residual (``stop="residual"``) or relative eigenvalue error
            (``stop="error"``); ``None``: ``3 sqrt(eps)`` of the run's dtype.
        max_iters: HVP cap per solve.
        warm_start: ``"parity"`` or ``"last"``.
        init_iters: Krylov cap of the accurate cold solve at the start (capped at ``D``).
        stop: ``"residual"`` or ``"error"``.
        safety: the factor on ``r^2 / gap`` of ``stop="error"`` (3: measured to keep every
            tracked row of W1 within ``tol``; 1 stopped too early on most rows).
        spherical: with several groups, also solve the spherical sharpness (a second
            operator) on recorded rows; ``False`` leaves ``sharpness`` NaN there and spends HVPs
            on the EoS quantity only (about half the HVPs of tracking every recorded row).
        batched: set by the batched driver (:func:`theory.engine.run_batch`, through
            :meth:`for_batch`): the residual solve then tests the warm start before its loop
            (``lanczos(peel_first=True)``), so that a batch whose warm starts all converge
            after one HVP skips the loop's per-iteration eigen-decomposition. Results are the
            same.
        v0: the first warm start (a ``(D,)`` vector, normalized here; part of the tracker's
            state from then on); ``None``: an accurate cold solve at the start (``init``).
        sequential: under ``vmap`` (a sweep), solve the configurations' eigenproblems one
            after another (``jax.custom_batching.sequential_vmap``) instead of in lockstep.
            In lockstep every Lanczos iteration runs until the slowest configuration stops,
            and every configuration's Krylov basis goes through each iteration's selects (both
            branches of every ``lax.cond``); one at a time, each solve stops at its own
            tolerance on single-vector HVPs. The loss and gradient that drive the step stay
            batched (the primal pass of the batched linearization, as without it), so the
            trajectories are bitwise those of the lockstep tracker; each configuration's solve
            re-linearizes at its own ``w`` (one extra forward and backward pass per tracked
            step and configuration). Tracked values agree with the lockstep ones to rounding.
            A single run gains nothing and pays the extra pass: leave it off there. Measured
            in ``benchmarks/bench_regime_map.py`` (``--sequential``) and docs/regimes.md.
    """

    every: int = eqx.field(static=True, default=1)
    tol: float | None = eqx.field(static=True, default=None)
    max_iters: int = eqx.field(static=True, default=24)
    warm_start: Literal["parity", "last"] = eqx.field(static=True, default="parity")
    init_iters: int = eqx.field(static=True, default=64)
    stop: Literal["residual", "error"] = eqx.field(static=True, default="residual")
    safety: float = eqx.field(static=True, default=3.0)
    spherical: bool = eqx.field(static=True, default=True)
    batched: bool = eqx.field(static=True, default=False)
    v0: Array | None = None
    sequential: bool = eqx.field(static=True, default=False)

    def __check_init__(self) -> None:
        for name, value in (
            ("every", self.every),
            ("max_iters", self.max_iters),
            ("init_iters", self.init_iters),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LanczosTracker.{name} must be a positive int, got {value!r}")
        if self.tol is not None and (
            isinstance(self.tol, bool) or not (isinstance(self.tol, float | int) and self.tol > 0)
        ):
            raise ValueError(
                f"LanczosTracker.tol must be a positive float or None, got {self.tol!r}"
            )
        if self.stop not in ("residual", "error"):
            raise ValueError(
                f"LanczosTracker.stop must be 'residual' or 'error', got {self.stop!r}"
            )
        if isinstance(self.safety, bool) or not (
            isinstance(self.safety, float | int) and self.safety >= 1
        ):
            raise ValueError(f"LanczosTracker.safety must be a float >= 1, got {self.safety!r}")
        if self.warm_start not in ("parity", "last"):
            raise ValueError(
                f"LanczosTracker.warm_start must be 'parity' or 'last', got {self.warm_start!r}"
            )
        if self.v0 is not None:
            check.flat_vector(self.v0, "LanczosTracker.v0")

    def _tol(self, dtype: Any) -> Array:
        return jnp.asarray(default_tol(dtype) if self.tol is None else self.tol, dtype)

    def init(
        self, objective: Objective, w: Array, lr: Array, groups: Groups, key: Array
    ) -> LanczosState:
        """An accurate cold solve at ``w`` (every later solve then starts warm), or ``v0``."""
        zero = jnp.zeros((), w.dtype)
        if self.v0 is not None:
            if self.v0.shape != w.shape:
                raise ValueError(
                    f"LanczosTracker.v0 must have the shape of w0 {w.shape}, got {self.v0.shape}"
                )
            v = self.v0.astype(w.dtype) / jnp.linalg.norm(self.v0)
            return LanczosState(v, v, v, zero, zero)
        _, hvp = objective.linearize(w)
        tol = self._tol(w.dtype)
        m = min(w.shape[0], self.init_iters)
        v0 = jax.random.normal(jax.random.fold_in(key, 1), w.shape, w.dtype)
        v = lanczos(lambda x: lr * hvp(x), v0, max_iters=m, tol=tol).eigenvectors[:, 0]
        vs = v
        if len(groups) > 1:
            s = expand_groups(group_norms(w, groups), groups)
            res = lanczos(lambda x: s * hvp(s * x), v0, max_iters=m, tol=tol)
            vs = res.eigenvectors[:, 0]
        return LanczosState(v, v, vs, zero, zero)

    def observe(
        self,
        objective: Objective,
        w: Array,
        lr: Array,
        groups: Groups,
        state: LanczosState,
        t: Array,
        key: Array,
        tracked: Array,
        record: bool,
        ctx: StepContext,
    ) -> tuple[Obs, LanczosState]:
        del ctx
        max_iters = min(self.max_iters, w.shape[0])

        def top(
            matvec: Callable[[Array], Array], start: Array, prior_gap: Array
        ) -> tuple[Array, ...]:
            """``(eigenvalue, unit eigenvector, relative residual, HVPs, gap to carry)``."""
            # Made here, not closed over: under ``sequential`` this runs inside a
            # ``custom_vmap`` body, which must not capture values traced outside it.
            tol = self._tol(start.dtype)
            res = lanczos(
                matvec,
                start,
                max_iters=max_iters,
                tol=tol,
                peel_first=self.batched,
                stop=self.stop,
                safety=self.safety,
                prior_gap=prior_gap,
            )
            lam = res.eigenvalues[0]
            # The last trusted Ritz gap (three vectors or more) is carried forward.
            gap = res.gap if res.gap is not None else jnp.asarray(jnp.nan, start.dtype)
            gap = jnp.where(jnp.isfinite(gap), gap, prior_gap).astype(start.dtype)
            resid = res.residuals[0] / jnp.abs(lam)
            return lam, res.eigenvectors[:, 0], resid, res.num_matvecs, gap

        def spectral(
            hvp: Callable[[Array], Array], w: Array, lr: Array, state: LanczosState
        ) -> tuple[Any, ...]:
            """``(eos, sharpness, relative residual, HVPs, new state)`` at ``w``."""
            start, prior = state.v, state.gap
            if self.warm_start == "parity" and self.every % 2 == 1:
                start, prior = state.vp, state.gp
            eos, v, resid, matvecs, gap = top(lambda x: lr * hvp(x), start, prior)
            vs = state.vs
            if len(groups) == 1:
                sharp, vs = eos * jnp.vdot(w, w) / lr, v
            elif record and self.spherical:
                m = expand_groups(group_norms(w, groups), groups)
                sharp, vs, resid_s, matvecs_s, _ = top(
                    lambda x: m * hvp(m * x), state.vs, jnp.zeros((), w.dtype)
                )
                resid = jnp.maximum(resid, resid_s)
                matvecs = matvecs + matvecs_s
            else:
                sharp = jnp.asarray(jnp.nan, w.dtype)
            return eos, sharp, resid, matvecs, LanczosState(v, state.v, vs, gap, state.gap)

        def solve(state: LanczosState) -> tuple[Obs, LanczosState]:
            if self.sequential:
                # The primal pass of the batched linearization drives the step (its tangent
                # program is unused and dropped), so the trajectory is the lockstep one; the
                # objective's arrays are explicit arguments, as a minibatch objective's draw
                # differs between configurations.
                (val, grad), _ = objective.linearize(w)
                dyn, static = eqx.partition(objective, eqx.is_array)

                @jax.custom_batching.sequential_vmap
                def each(dyn: Any, w: Array, lr: Array, state: LanczosState) -> tuple[Any, ...]:
                    _, hvp = eqx.combine(dyn, static).linearize(w)
                    return spectral(hvp, w, lr, state)

                eos, sharp, resid, matvecs, new = each(dyn, w, lr, state)
            else:
                (val, grad), hvp = objective.linearize(w)
                eos, sharp, resid, matvecs, new = spectral(hvp, w, lr, state)
            obs = Obs(val, grad, eos, sharp, jnp.asarray(matvecs, jnp.int32), resid)
            return obs, new

        def skip(state: LanczosState) -> tuple[Obs, LanczosState]:
            return _untracked(objective, w), state

        return jax.lax.cond(tracked, solve, skip, state)

    def top_vector(self, state: LanczosState, w: Array) -> Array:
        del w
        return state.v

    def for_batch(self) -> "LanczosTracker":
        return dataclasses.replace(self, batched=True)

    def config(self) -> dict[str, Any]:
        return {
            "tracker": "lanczos",
            "sharpness_every": self.every,
            "lanczos_tol": self.tol,
            "lanczos_iters": self.max_iters,
            "warm_start": self.warm_start,
            **({"stop": "error", "safety": self.safety} if self.stop == "error" else {}),
            **({} if self.spherical else {"spherical": False}),
            **({"sequential": True} if self.sequential else {}),
        }
