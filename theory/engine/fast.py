"""Tracking near the floor: a carried block of two Ritz vectors, certified every tracked step.

:class:`RitzTracker` keeps an orthonormal block ``V = [v_1, v_2]`` (``D x 2``), the top two Ritz
vectors of ``A = lr H(w)`` from an earlier tracked step, and for it ``alpha``, an estimate of an
upper bound on ``lambda_2`` (``theta_2 + |R|_F`` of the solve that produced the block, ``R`` its
residual block). A tracked step at ``w`` is one of two kinds:

* **block step** (two HVPs): one ``objective.linearize`` (shared with the step) and ``A v_1``,
  ``A v_2``; the ``2 x 2`` projected problem ``V^T A V = S diag(theta) S^T`` (Rayleigh-Ritz),
  ``theta_1 >= theta_2``, Ritz vectors ``Y = V S``, residuals ``r_i = |A y_i - theta_i y_i|``,
  ``alpha = theta_2 + |R|_F``. The projected problem is what resolves a near-crossing of the top
  two eigenvalues: whichever carried direction is now on top, ``theta_1`` is the largest Rayleigh
  quotient over their span (a single warm-started vector stays on the second eigenvalue with a
  small residual when the two swap);
* **single step** (one HVP): one ``objective.linearize`` (shared with the step) and ``A v_1``
  (with ``fused=True``, ``objective.value_grad_hvp(w, v_1)``: the loss, the gradient and
  ``A v_1`` in one forward-over-reverse pass); ``theta_1`` is the
  Rayleigh quotient of ``v_1``, ``r_1`` its residual, and ``alpha`` is the chain's, widened by
  how far ``theta_1`` has moved since the block was solved and by ``alpha``'s own rise per step
  between the chain's last two solves, times the steps since.

Either way the certificate (Kato-Temple for the top pair) is

    ``bound = r_1^2 / (theta_1 - alpha)`` if ``theta_1 > alpha``, else ``inf``,

and ``theta_1`` is accepted when ``bound <= tol |theta_1|``. Otherwise a correction runs: Lanczos
(:func:`theory.core.lanczos.lanczos`, ``k = 2``) on ``A`` from ``y_1 + y_2``, to relative
residual ``tol * correction``; its top two Ritz pairs become the block and its certificate (the
same formula) is reported. Everything is inside ``jit``/``lax.scan``: the step kind and the
correction are ``lax.cond`` branches.

The guarantee. Every tracked row reports ``theta_1`` (``eos``) and its certificate
``ritz_bound = bound / |theta_1|`` (``result.observed["ritz_bound"]``; ``ritz_corrected`` is 1 on
rows that paid for a correction). Always ``theta_1 <= lambda_1`` (a Rayleigh quotient). If
``lambda_2 <= alpha``, Kato-Temple's inequality gives ``0 <= lambda_1 - theta_1 <= bound``, so a
row with ``ritz_bound <= tol`` is within ``tol`` (relative, from below) of ``lambda_1``. On a
block step or after a correction, ``lambda_2 <= alpha`` holds whenever the Ritz pairs
approximate the top two eigenpairs (``theta_2 <= lambda_2`` always, by interlacing, and an
eigenvalue lies within ``|R|_F`` of ``theta_2``); on a single step it holds while ``lambda_2``
has not risen faster than the widening allows. A row whose correction did not reach the
certificate within ``max_iters`` HVPs reports its larger ``ritz_bound`` rather than hide it. What
no certificate built from computed vectors can see: an eigenvalue rising above ``theta_1`` with
an eigenvector orthogonal to everything computed (for single steps, orthogonal to ``v_1`` and
faster than the widening); ``refresh`` bounds how long that can last (a block step sees ``v_2``).

With ``every == 1`` the default is single steps with a block step every ``refresh`` steps of
each warm-start chain: near one HVP per step. With ``every > 1`` the
Hessian moves further between tracked steps and every tracked step is a block step.
``Obs.matvecs`` counts every HVP (1 or 2 per tracked step, plus the correction's).

With one group the spherical sharpness is ``eos |w|^2 / lr`` (free). With several groups it is
the top eigenvalue of ``M H(w) M`` (``M`` the per-group norms), solved on recorded rows only by
a warm-started Lanczos (``stop="error"`` at ``tol``), as :class:`LanczosTracker` does;
``spherical=False`` skips it.

Cost: ``python -m benchmarks.bench_floor`` measures it on W1 and W1-EoS; the floor it measured
and the HVP budget that floor allows are in ``docs/engine.md`` ("Tracking near the floor").
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from theory.core.invariance import expand_groups, group_norms
from theory.core.lanczos import lanczos
from theory.core.linalg import eigh
from theory.core.objective import Objective
from theory.core.types import Array, Groups
from theory.engine.trackers import AbstractTracker, Obs, StepContext, _untracked


def _check_solver_fields(owner: str, fields: dict[str, Any]) -> None:
    """The settings :class:`RitzTracker` and :class:`RayleighTracker` share, named by class.

    ``fields`` maps each setting's name to its value: the tracker passes ``vars(self)``, so
    this module never reads attributes by name.
    """
    refresh = fields["refresh"]
    if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 0:
        raise ValueError(f"{owner}.refresh must be an int >= 0, got {refresh!r}")
    for name in ("every", "max_iters", "init_iters"):
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")
    for label in ("tol", "correction"):
        x = fields[label]
        if isinstance(x, bool) or not (isinstance(x, float | int) and 0 < x <= 1):
            raise ValueError(f"{owner}.{label} must be a float in (0, 1], got {x!r}")


def _row_sharpness(
    objective: Objective,
    w: Array,
    lr: Array,
    groups: Groups,
    eos: Array,
    top: Array,
    vs: Array,
    *,
    solve: bool,
    max_iters: int,
    tol: Array,
    lin: Any = None,
) -> tuple[Array, Array, Any]:
    """A tracked row's spherical sharpness, its warm start for the next row and the HVPs spent.

    One group: ``eos |w|^2 / lr`` (free; ``top``, the row's top eigenvector of ``lr H(w)``, is
    kept). Several groups with ``solve``: a warm-started Lanczos (``stop="error"``) on
    ``M H(w) M`` (``M`` the per-group norms) from ``vs``, through ``lin`` (the row's HVP, if
    already linearized). Otherwise NaN, and ``vs`` is kept."""
    if len(groups) == 1:
        return eos * jnp.vdot(w, w) / lr, top, 0
    if not solve:
        return jnp.asarray(jnp.nan, w.dtype), vs, 0
    hvp = objective.linearize(w)[1] if lin is None else lin
    m = expand_groups(group_norms(w, groups), groups)
    res = lanczos(lambda x: m * hvp(m * x), vs, max_iters=max_iters, tol=tol, stop="error")
    return res.eigenvalues[0], res.eigenvectors[:, 0], res.num_matvecs


class RitzState(NamedTuple):
    """Carried blocks of :class:`RitzTracker`, one per warm-start chain (``*p``: the tracked step
    before the last, the other parity's chain).

    ``v``: ``(D, 2)`` orthonormal top-two Ritz vectors of ``lr H(w)``; ``info``: ``(4,)``, of
    the chain's last block or correction solve: ``alpha`` (``theta_2 + |R|_F``, the estimate of
    an upper bound on ``lambda_2``), ``theta_1``, the step ``t`` it was solved at, and the rate
    at which ``alpha`` rose per step between the chain's last two solves (``>= 0``); ``vs``: top
    eigenvector of ``H(w_hat)`` where it was last solved (several groups only).
    """

    v: Array
    vp: Array
    info: Array
    info_p: Array
    vs: Array


def ritz_pair_bound(theta: Array, resid: Array) -> Array:
    """The Kato-Temple certificate of the top Ritz value of a two-vector block (absolute).

    ``theta``: the two Ritz values, descending; ``resid``: their residual norms
    ``|A y_i - theta_i y_i|``. With ``alpha = theta_2 + |resid|_2``, returns
    ``resid_1^2 / (theta_1 - alpha)`` if ``theta_1 > alpha`` and ``inf`` otherwise: a bound on
    ``lambda_1 - theta_1`` (which is ``>= 0``) whenever ``lambda_2 <= alpha``.
    """
    alpha = theta[1] + jnp.linalg.norm(resid)
    delta = theta[0] - alpha
    safe = jnp.where(delta > 0, delta, 1.0)
    return jnp.where(delta > 0, resid[0] ** 2 / safe, jnp.inf)


def rayleigh_ritz(v: Array, av: Array) -> tuple[Array, Array, Array]:
    """Rayleigh-Ritz on the span of the orthonormal columns of ``v`` (``(D, k)``), given
    ``av = A v``: ``(theta (k,) descending, Ritz vectors (D, k), residual norms (k,))``."""
    g = v.T @ av
    theta, s = eigh(0.5 * (g + g.T))
    theta, s = theta[::-1], s[:, ::-1]
    y, ay = v @ s, av @ s
    resid = jnp.linalg.norm(ay - y * theta[None, :], axis=0)
    return theta, y, resid


def _orthonormal(v: Array) -> Array:
    """Orthonormal columns spanning ``v``'s (thin QR, signs fixed so the diagonal is >= 0)."""
    q, r = jnp.linalg.qr(v)
    sign = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(v.dtype)
    return q * sign[None, :]


class RitzTracker(AbstractTracker):
    """Certified top eigenvalue of ``lr H(w)`` from a carried two-vector block (module docstring).

    Attributes:
        every: tracking period in steps (>= 1).
        tol: relative accuracy asked of ``eos`` (the certificate ``ritz_bound <= tol``).
        block: ``True``: two HVPs per tracked step (one linearization, shared with the step, and
            two tangents) and the ``2 x 2`` Rayleigh-Ritz problem; ``False``: single steps, one
            HVP on the top carried vector, certified against the chain's ``lambda_2`` estimate
            (and a block step every ``refresh``). ``None``: single-vector when ``every == 1`` (the
            Hessian moves little from step to step), block otherwise.
        correction: the correction solve's relative residual is ``tol * correction``.
        max_iters: HVP cap of a correction solve.
        warm_start: ``"parity"`` starts an odd-``every`` tracker from the chain of two tracked
            steps before (the Edge of Stability oscillates with period 2); ``"last"`` from the
            previous tracked step's.
        init_iters: Krylov cap of the accurate cold solve at the start (capped at ``D``).
        refresh: single steps only: every ``refresh``-th tracked step of each warm-start chain
            (with parity: the two steps with ``(t // every) % (2 refresh) < 2``; else those with
            ``(t // every) % refresh == 0``) is a block step instead, which sees the second
            carried direction again; 0: never.
        fused: single steps evaluate the HVP in the gradient's own forward-over-reverse pass
            (``objective.value_grad_hvp``) instead of one linearization and one tangent (the
            correction then needs a linearization of its own). Measured on the BatchNorm MLP
            of ``benchmarks/bench_floor.py`` the fused pass was the slower of the two, hence
            the default ``False``.
        spherical: with several groups, also solve the spherical sharpness on recorded rows.
        v0: the first block (``(D, 2)``; orthonormalized here); ``None``: a cold Lanczos solve
            for the top two pairs at the start (``init``). With ``v0`` the first single-vector
            step has no ``lambda_2`` estimate and corrects.
    """

    every: int = eqx.field(static=True, default=1)
    tol: float = eqx.field(static=True, default=1e-2)
    block: bool | None = eqx.field(static=True, default=None)
    correction: float = eqx.field(static=True, default=0.5)
    max_iters: int = eqx.field(static=True, default=32)
    warm_start: Literal["parity", "last"] = eqx.field(static=True, default="parity")
    init_iters: int = eqx.field(static=True, default=64)
    refresh: int = eqx.field(static=True, default=10)
    fused: bool = eqx.field(static=True, default=False)
    spherical: bool = eqx.field(static=True, default=True)
    v0: Array | None = None

    def __check_init__(self) -> None:
        _check_solver_fields(type(self).__name__, vars(self))
        if not isinstance(self.fused, bool):
            raise ValueError(f"RitzTracker.fused must be a bool, got {self.fused!r}")
        if self.block not in (None, True, False):
            raise ValueError(f"RitzTracker.block must be a bool or None, got {self.block!r}")
        if self.warm_start not in ("parity", "last"):
            raise ValueError(
                f"RitzTracker.warm_start must be 'parity' or 'last', got {self.warm_start!r}"
            )
        if self.v0 is not None:
            v0 = jnp.asarray(self.v0)
            if v0.ndim != 2 or v0.shape[1] != 2:
                raise ValueError(f"RitzTracker.v0 must be a (D, 2) block, got shape {v0.shape}")
            if not bool(jnp.all(jnp.isfinite(v0))) or int(jnp.linalg.matrix_rank(v0)) < 2:
                raise ValueError("RitzTracker.v0 must be finite with two independent columns")

    def uses_block(self) -> bool:
        """Whether every tracked step is a block step (``block``, or ``every > 1``)."""
        return self.every > 1 if self.block is None else self.block

    def init(
        self, objective: Objective, w: Array, lr: Array, groups: Groups, key: Array
    ) -> RitzState:
        """A cold Lanczos solve for the top two pairs at ``w`` (or the block ``v0``)."""
        if w.shape[0] < 3:
            raise ValueError(f"RitzTracker needs D >= 3 parameters, got D = {w.shape[0]}")
        inf = jnp.asarray(jnp.inf, w.dtype)
        if self.v0 is not None:
            v0 = jnp.asarray(self.v0, w.dtype)
            if v0.shape[0] != w.shape[0]:
                raise ValueError(
                    f"RitzTracker.v0 must have {w.shape[0]} rows (the size of w0), got shape "
                    f"{v0.shape}"
                )
            blk = _orthonormal(v0)
            info = jnp.stack([inf, inf, jnp.zeros((), w.dtype), jnp.zeros((), w.dtype)])
            return RitzState(blk, blk, info, info, blk[:, 0])
        _, hvp = objective.linearize(w)
        m = min(w.shape[0], self.init_iters)
        start = jax.random.normal(jax.random.fold_in(key, 1), w.shape, w.dtype)
        res = lanczos(lambda x: lr * hvp(x), start, k=2, max_iters=m, tol=1e-2 * self.tol)
        blk = _orthonormal(res.eigenvectors)
        alpha = res.eigenvalues[1] + jnp.linalg.norm(res.residuals)
        zero = jnp.zeros((), w.dtype)
        info = jnp.stack([alpha, res.eigenvalues[0], zero, zero])
        vs = blk[:, 0]
        if len(groups) > 1:
            s = expand_groups(group_norms(w, groups), groups)
            vs = lanczos(lambda x: s * hvp(s * x), start, max_iters=m).eigenvectors[:, 0]
        return RitzState(blk, blk, info, info, vs)

    def observe(
        self,
        objective: Objective,
        w: Array,
        lr: Array,
        groups: Groups,
        state: RitzState,
        t: Array,
        key: Array,
        tracked: Array,
        record: bool,
        ctx: StepContext,
    ) -> tuple[Obs, RitzState]:
        del key, ctx
        dtype = w.dtype
        tol = jnp.asarray(self.tol, dtype)
        nan = jnp.asarray(jnp.nan, dtype)
        max_iters = min(max(self.max_iters, 2), w.shape[0])
        use_block = self.uses_block()

        tf = jnp.asarray(t, dtype)

        def solved(alpha: Array, theta: Array, info: Array) -> Array:
            """The chain's info after a solve at step ``t`` (from its info before)."""
            rate = jnp.maximum(alpha - info[0], 0.0) / jnp.maximum(tf - info[2], 1.0)
            rate = jnp.where(jnp.isfinite(rate), rate, 0.0)
            return jnp.stack([alpha, theta, tf, rate]).astype(dtype)

        def correct(y: Array, lin: Any, info: Array) -> tuple[Array, ...]:
            """Lanczos for the top two pairs from ``y_1 + y_2``: ``(eos, block, bound, r_1,
            HVPs, info)``."""
            lin = objective.linearize(w)[1] if lin is None else lin
            res = lanczos(
                lambda x: lr * lin(x),
                y[:, 0] + y[:, 1],
                k=2,
                max_iters=max_iters,
                tol=tol * self.correction,
            )
            th = res.eigenvalues
            return (
                th[0],
                res.eigenvectors,
                ritz_pair_bound(th, res.residuals),
                res.residuals[0],
                res.num_matvecs.astype(jnp.int32),
                solved(th[1] + jnp.linalg.norm(res.residuals), th[0], info),
            )

        def certified(
            ok: Array, accepted: tuple[Array, ...], y: Array, lin: Any, info: Array
        ) -> Any:
            return jax.lax.cond(ok, lambda: accepted, lambda: correct(y, lin, info))

        def block_path(blk: Array, info: Array) -> tuple[Any, ...]:
            """Two HVPs (one linearization), the 2 x 2 Rayleigh-Ritz problem, the certificate."""
            (val, grad), lin = objective.linearize(w)
            hv = jnp.stack([lin(blk[:, 0]), lin(blk[:, 1])], axis=1)
            theta, y, resid = rayleigh_ritz(blk, lr * hv)
            bound = ritz_pair_bound(theta, resid)
            ok = bound <= tol * jnp.abs(theta[0])
            zero = jnp.asarray(0, jnp.int32)
            info_now = solved(theta[1] + jnp.linalg.norm(resid), theta[0], info)
            out = certified(ok, (theta[0], y, bound, resid[0], zero, info_now), y, lin, info)
            return val, grad, out, 2, ok

        def single_path(blk: Array, info: Array) -> tuple[Any, ...]:
            """One HVP (fused with the gradient if asked), certified against the widened alpha."""
            v1 = blk[:, 0]
            if self.fused:
                val, grad, hv1 = objective.value_grad_hvp(w, v1)
                lin = None
            else:
                (val, grad), lin = objective.linearize(w)
                hv1 = lin(v1)
            u = lr * hv1
            eos = jnp.vdot(v1, u)
            r1 = jnp.linalg.norm(u - eos * v1)
            alpha, theta_c, t_c, rate = info[0], info[1], info[2], info[3]
            # lambda_2 may have risen since the chain's last solve: allow as much as theta_1
            # has moved, plus alpha's own trend over the steps since.
            alpha_now = alpha + jnp.abs(eos - theta_c) + rate * (tf - t_c)
            delta = eos - alpha_now
            bound = jnp.where(delta > 0, r1**2 / jnp.where(delta > 0, delta, 1.0), jnp.inf)
            ok = bound <= tol * jnp.abs(eos)
            accepted = (eos, blk, bound, r1, jnp.asarray(0, jnp.int32), info)
            out = certified(ok, accepted, blk, lin, info)
            return val, grad, out, 1, ok

        def solve(state: RitzState) -> tuple[Obs, RitzState]:
            chain = (state.v, state.info)
            if self.warm_start == "parity" and self.every % 2 == 1:
                chain = (state.vp, state.info_p)
            if use_block:
                val, grad, out, spent, ok = block_path(*chain)
            elif self.refresh:
                k = t // self.every  # this tracked step's index
                if self.warm_start == "parity" and self.every % 2 == 1:
                    now = k % (2 * self.refresh) < 2  # each chain every refresh of its steps
                else:
                    now = k % self.refresh == 0

                def as_arrays(path: Any) -> Any:
                    def run(chain: tuple[Array, ...]) -> Any:
                        val, grad, out, spent, ok = path(*chain)
                        return val, grad, out, jnp.asarray(spent, jnp.int32), ok

                    return run

                val, grad, out, spent, ok = jax.lax.cond(
                    now, as_arrays(block_path), as_arrays(single_path), chain
                )
            else:
                val, grad, out, spent, ok = single_path(*chain)
            eos, y, bound, r1, more, info_next = out
            lin_or_none = None
            blk_next = _orthonormal(y)
            matvecs = spent + more
            sharp, vs, more = _row_sharpness(
                objective, w, lr, groups, eos, blk_next[:, 0], state.vs,
                solve=record and self.spherical, max_iters=max_iters, tol=tol, lin=lin_or_none,
            )  # fmt: skip
            matvecs = matvecs + more
            rel = jnp.abs(eos)
            extra = {
                "ritz_bound": (bound / rel).astype(dtype),
                "ritz_corrected": jnp.asarray(~ok, dtype),
            }
            obs = Obs(val, grad, eos, sharp, jnp.asarray(matvecs, jnp.int32), r1 / rel, extra)
            nxt = RitzState(blk_next, state.v, info_next, state.info, vs)
            return obs, nxt

        def skip(state: RitzState) -> tuple[Obs, RitzState]:
            obs = _untracked(objective, w)
            return obs._replace(extra={"ritz_bound": nan, "ritz_corrected": nan}), state

        return jax.lax.cond(tracked, solve, skip, state)

    def top_vector(self, state: RitzState, w: Array) -> Array:
        del w
        return state.v[:, 0]

    def config(self) -> dict[str, Any]:
        return {
            "tracker": "ritz",
            "sharpness_every": self.every,
            "ritz_tol": self.tol,
            "ritz_block": self.uses_block(),
            "ritz_correction": self.correction,
            "ritz_iters": self.max_iters,
            **({} if self.uses_block() else {"ritz_refresh": self.refresh, "fused": self.fused}),
            "warm_start": self.warm_start,
            **({} if self.spherical else {"spherical": False}),
        }


class RayleighState(NamedTuple):
    """Carried state of :class:`RayleighTracker`.

    ``v``: ``(D,)`` unit vector, the next tracked step's Rayleigh-quotient vector; ``p``: ``(D,)``
    the momentum partner (the previous iterate of the power recurrence, scaled by the same factor
    as ``v``; zero right after a solve); ``v2``: ``(D,)`` unit vector orthogonal to the last
    solve's top Ritz vector, the second direction a correction starts from; ``info``: ``(4,)``,
    of the last Lanczos solve: ``alpha`` (its estimate of an upper bound on ``lambda_2``),
    ``theta_1``, the step ``t`` it ran at, and the rise of ``alpha`` per step between the last
    two solves (``>= 0``); ``vs``: top eigenvector of ``H(w_hat)`` where it was last solved
    (several groups only).
    """

    v: Array
    p: Array
    v2: Array
    info: Array
    vs: Array


def rayleigh_estimate(theta: Array, resid: Array, alpha: Array) -> Array:
    """The error estimate :class:`RayleighTracker` certifies a Rayleigh quotient with (absolute).

    ``theta``: the Rayleigh quotient of a unit vector ``v``; ``resid``: ``|A v - theta v|``;
    ``alpha``: an estimate of an upper bound on ``lambda_2``. With ``gap = theta - alpha``:

    * ``gap > resid``: ``resid^2 / gap``, Kato-Temple's bound on ``lambda_1 - theta`` (rigorous
      when ``lambda_2 <= alpha``);
    * ``0 < gap <= resid``: ``resid``. Some eigenvalue lies within ``resid`` of ``theta``
      (always); with ``lambda_2 <= alpha`` it is ``lambda_1`` or ``lambda_2``, both within about
      ``resid`` of ``theta`` when the top two are that close (a near-degeneracy, where any vector
      of their span has a Rayleigh quotient near both): a heuristic, not a bound;
    * ``gap <= 0`` (the ``lambda_2`` estimate at or above ``theta``: a crossing, or a widened
      estimate): ``resid + (alpha - theta)``, i.e. heuristically ``lambda_1 <= alpha + resid``.
    """
    gap = theta - alpha
    safe = jnp.where(gap > resid, gap, 1.0)
    return jnp.where(
        gap > resid, resid**2 / safe, jnp.where(gap > 0, resid, resid + jnp.maximum(-gap, 0.0))
    )


class RayleighTracker(AbstractTracker):
    """``lr lambda_1`` from one HVP per tracked step: a Rayleigh quotient on a carried vector.

    A tracked step at ``w`` spends one HVP: one linearization shared with the step and one
    tangent (``fused=True``: ``objective.value_grad_hvp(w, v)``, the loss, the gradient and
    ``H v`` in one forward-over-reverse pass), ``u = lr H v``, ``theta = v . u``,
    ``r = |u - theta v|``. It estimates ``lambda_1 - theta`` with :func:`rayleigh_estimate`
    against ``alpha_now = alpha + |theta - theta_s| + rate (t - t_s)``: the last solve's
    ``lambda_2`` estimate ``alpha``, widened by how far ``theta`` has moved from that solve's
    ``theta_s`` and by ``alpha``'s rise per step between the last two solves times the steps
    since. If the estimate is ``<= tol theta`` the row reports ``theta`` and the vector takes one
    power step for the next tracked step, at no further HVP: ``v <- (u - beta p) / s`` with
    momentum ``beta = alpha^2 / 4`` (``momentum=True``; the accelerated power iteration, whose
    rate on the components below ``lambda_2`` is Chebyshev's) or ``beta = 0``. Otherwise a
    correction runs: Lanczos (:func:`theory.core.lanczos.lanczos`, ``stop="error"``, relative
    eigenvalue accuracy ``tol * correction``) from ``u`` (the power step of ``v``), which
    reports its top Ritz value; its Krylov gap ``g = theta_1 - theta_2`` gives the new
    ``alpha = theta_1 - g / 3`` (the same safety factor 3 as the Lanczos stopping rule). Every
    ``refresh``-th tracked step corrects regardless (0: never), which bounds how long an
    eigenvalue rising past ``theta`` with an eigenvector orthogonal to ``v`` can go unseen.

    What holds: every reported value is a Rayleigh quotient or a Ritz value, so ``eos <=
    lr lambda_1``. The estimate is Kato-Temple's bound when the top gap exceeds the residual and
    ``lambda_2 <= alpha_now``, and a heuristic otherwise (:func:`rayleigh_estimate`); its
    maximum error is measured against dense eigenvalues in ``tests/engine/test_fast_rayleigh.py``
    and against converged solves on W1 and W1-EoS by ``python -m benchmarks.bench_floor``.
    ``result.observed["ritz_bound"]`` is the estimate over ``theta``; ``ritz_corrected`` is 1
    on rows that ran a correction. ``Obs.matvecs`` counts every HVP.

    With one group the spherical sharpness is ``eos |w|^2 / lr``; with several it is solved on
    recorded rows as :class:`RitzTracker` does (``spherical=False`` skips it).

    Attributes:
        every: tracking period in steps (>= 1).
        tol: relative accuracy asked of ``eos``.
        correction: the correction's relative eigenvalue accuracy is ``tol * correction``.
        max_iters: HVP cap of a correction.
        init_iters: Krylov cap of the cold solve at the start (capped at ``D``).
        refresh: every ``refresh``-th tracked step corrects (0: only when the estimate fails).
        momentum: the power step's momentum ``beta = alpha^2 / 4`` (``False``: plain power).
        fused: the tracked step's HVP in the gradient's own pass (``value_grad_hvp``); off by
            default: on W1's BatchNorm MLP that pass measured slower than a linearization plus
            one tangent (``python -m benchmarks.bench_floor``'s floor table).
        spherical: with several groups, also solve the spherical sharpness on recorded rows.
    """

    every: int = eqx.field(static=True, default=1)
    tol: float = eqx.field(static=True, default=1e-2)
    correction: float = eqx.field(static=True, default=0.5)
    max_iters: int = eqx.field(static=True, default=32)
    init_iters: int = eqx.field(static=True, default=64)
    refresh: int = eqx.field(static=True, default=0)
    momentum: bool = eqx.field(static=True, default=False)
    fused: bool = eqx.field(static=True, default=False)
    spherical: bool = eqx.field(static=True, default=True)

    def __check_init__(self) -> None:
        _check_solver_fields(type(self).__name__, vars(self))
        for label, flag in (("momentum", self.momentum), ("fused", self.fused)):
            if not isinstance(flag, bool):
                raise ValueError(f"RayleighTracker.{label} must be a bool, got {flag!r}")

    def init(
        self, objective: Objective, w: Array, lr: Array, groups: Groups, key: Array
    ) -> RayleighState:
        """A cold Lanczos solve for the top two pairs at ``w``."""
        if w.shape[0] < 3:
            raise ValueError(f"RayleighTracker needs D >= 3 parameters, got D = {w.shape[0]}")
        _, hvp = objective.linearize(w)
        m = min(w.shape[0], self.init_iters)
        start = jax.random.normal(jax.random.fold_in(key, 1), w.shape, w.dtype)
        res = lanczos(lambda x: lr * hvp(x), start, k=2, max_iters=m, tol=1e-2 * self.tol)
        v, v2 = res.eigenvectors[:, 0], res.eigenvectors[:, 1]
        alpha = res.eigenvalues[1] + jnp.linalg.norm(res.residuals)
        zero = jnp.zeros((), w.dtype)
        info = jnp.stack([alpha, res.eigenvalues[0], zero, zero]).astype(w.dtype)
        vs = v
        if len(groups) > 1:
            s = expand_groups(group_norms(w, groups), groups)
            vs = lanczos(lambda x: s * hvp(s * x), start, max_iters=m).eigenvectors[:, 0]
        return RayleighState(v, jnp.zeros_like(v), v2, info, vs)

    def observe(
        self,
        objective: Objective,
        w: Array,
        lr: Array,
        groups: Groups,
        state: RayleighState,
        t: Array,
        key: Array,
        tracked: Array,
        record: bool,
        ctx: StepContext,
    ) -> tuple[Obs, RayleighState]:
        del key, ctx
        dtype = w.dtype
        tol = jnp.asarray(self.tol, dtype)
        nan = jnp.asarray(jnp.nan, dtype)
        max_iters = min(max(self.max_iters, 2), w.shape[0])
        tf = jnp.asarray(t, dtype)

        def solve(state: RayleighState) -> tuple[Obs, RayleighState]:
            v = state.v
            if self.fused:
                val, grad, hv = objective.value_grad_hvp(w, v)
                lin = None
            else:
                (val, grad), lin = objective.linearize(w)
                hv = lin(v)
            u = lr * hv
            theta = jnp.vdot(v, u)
            r = jnp.linalg.norm(u - theta * v)
            alpha, theta_s, t_s, rate = state.info[0], state.info[1], state.info[2], state.info[3]
            alpha_now = alpha + jnp.abs(theta - theta_s) + rate * (tf - t_s)
            est = rayleigh_estimate(theta, r, alpha_now)
            ok = est <= tol * jnp.abs(theta)
            if self.refresh:
                ok = ok & ((t // self.every) % self.refresh != 0)

            def accept() -> tuple[Array, ...]:
                beta = 0.25 * jnp.clip(alpha, 0.0, 0.9 * jnp.abs(theta)) ** 2
                x = u - beta * state.p if self.momentum else u
                s = jnp.linalg.norm(x)
                zero = jnp.asarray(0, jnp.int32)
                return theta, est, r, x / s, v / s, state.v2, state.info, zero

            def correct() -> tuple[Array, ...]:
                hvp = objective.linearize(w)[1] if lin is None else lin
                res = lanczos(
                    lambda x: lr * hvp(x),
                    u / jnp.linalg.norm(u) + 0.1 * state.v2,
                    max_iters=max_iters,
                    tol=tol * self.correction,
                    stop="error",
                    prior_gap=jnp.maximum(theta_s - alpha, 0.0),
                )
                th, r1 = res.eigenvalues[0], res.residuals[0]
                gap = res.gap if res.gap is not None else nan
                a_new = jnp.where(jnp.isfinite(gap), th - gap / 3.0, alpha_now)
                e_new = rayleigh_estimate(th, r1, a_new)
                rise = jnp.maximum(a_new - alpha, 0.0) / jnp.maximum(tf - t_s, 1.0)
                rise = jnp.where(jnp.isfinite(rise), rise, 0.0)
                info = jnp.stack([a_new, th, tf, rise]).astype(dtype)
                y = res.eigenvectors[:, 0]
                # The second direction: what the old pair spans beside the new top vector (after
                # a swap of the top two, the old top vector).
                x2 = state.v2 + v
                x2 = x2 - jnp.vdot(y, x2) * y
                n2 = jnp.linalg.norm(x2)
                y2 = jnp.where(n2 > 0, x2 / jnp.where(n2 > 0, n2, 1.0), state.v2)
                spent = res.num_matvecs.astype(jnp.int32)
                return th, e_new, r1, y, jnp.zeros_like(y), y2, info, spent

            out = jax.lax.cond(ok, accept, correct)
            eos, bound, r1, v_next, p_next, v2_next, info_next, more = out
            matvecs = 1 + more
            sharp, vs, more = _row_sharpness(
                objective, w, lr, groups, eos, v_next, state.vs,
                solve=record and self.spherical, max_iters=max_iters, tol=tol,
            )  # fmt: skip
            matvecs = matvecs + more
            rel = jnp.abs(eos)
            extra = {
                "ritz_bound": (bound / rel).astype(dtype),
                "ritz_corrected": jnp.asarray(~ok, dtype),
            }
            obs = Obs(val, grad, eos, sharp, jnp.asarray(matvecs, jnp.int32), r1 / rel, extra)
            return obs, RayleighState(v_next, p_next, v2_next, info_next, vs)

        def skip(state: RayleighState) -> tuple[Obs, RayleighState]:
            obs = _untracked(objective, w)
            return obs._replace(extra={"ritz_bound": nan, "ritz_corrected": nan}), state

        return jax.lax.cond(tracked, solve, skip, state)

    def top_vector(self, state: RayleighState, w: Array) -> Array:
        del w
        return state.v

    def config(self) -> dict[str, Any]:
        return {
            "tracker": "rayleigh",
            "sharpness_every": self.every,
            "ritz_tol": self.tol,
            "ritz_correction": self.correction,
            "ritz_iters": self.max_iters,
            "ritz_refresh": self.refresh,
            "momentum": self.momentum,
            "fused": self.fused,
            **({} if self.spherical else {"spherical": False}),
        }
