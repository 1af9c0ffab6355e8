"""GD with weight decay on a scale-invariant loss, compiled whole, with EoS tracking.

The update (MATH.md section 2; ``wd`` is LLA22's lambda, never the eigenvalue):

    w_{t+1} = (1 - eta * wd) w_t - eta * grad L(w_t)

Recorded per recorded step ``t`` (one row; row 0 is step 0, the last row is step ``steps``): the
iterate, its norm (and per-group norms), the effective learning rate ``eta / |w_t|^2``, the loss,
``|grad L(w_t)|``, the spherical sharpness ``S(w_t) = lambda_1(hess L(w_hat_t))`` and the EoS
quantity ``eta * lambda_1(hess L(w_t))`` (``= eta_eff * S`` for one group; the top eigenvalue of
``D^{1/2} H(w_hat) D^{1/2}`` with per-group effective rates for several groups).

The EoS quantity is computed on every tracked step (every ``sharpness_every`` steps) by Lanczos
on ``eta H(w_t)``, warm-started from an earlier tracked step's eigenvector (of the same parity
when ``sharpness_every`` is odd: the EoS oscillation has period 2) and stopped at the first
Krylov dimension whose relative Ritz residual meets ``lanczos_tol``; the gradient that the GD step
needs comes from the same linearization, so the primal pass is shared. With several groups the
spherical sharpness is a second operator and is solved only on recorded rows (by default). The
whole run is a ``lax.scan`` over recorded blocks inside ``jit``, split into equal chunks (one
compilation) so long runs can report progress between chunks.

Cost and accuracy (measured, ``benchmarks/bench_networks.py``): one HVP costs about 1.5-2.0
gradients on a dense network (its tangent program has about twice the gradient's matmuls), so
tracking every step costs at least ``1 + 1.5 m`` gradients per step with ``m`` HVPs per solve.
A relative residual ``r`` gives an eigenvalue error of at most ``r`` and about ``r^2 / gap``
(relative gap to the next eigenvalue), so ``lanczos_tol = 1e-2`` already gives about 1e-3 when
the top gap is a few percent. Where the top two eigenvalues nearly cross, a warm-started solve
can converge on the second one (an error up to their gap, rare: measured once in 1000 steps on
a small problem at ``lanczos_tol = 1e-3``); the residual does not reveal it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _validate as check
from ._types import Array, Groups, LossFn
from .invariance import (
    check_scale_invariance,
    expand_groups,
    group_norms,
    normalize,
)
from .lanczos import default_tol, lanczos
from .sharpness import eos_quantity, sharpness_eigs


class DivergenceError(FloatingPointError):
    """The iterate became non-finite. ``step`` is the first bad step, ``result`` the rows before."""

    def __init__(self, step: int, result: GDResult):
        self.step = step
        self.result = result
        super().__init__(
            f"GD+WD diverged: the iterate is non-finite (NaN/inf) at step {step} (eta={result.eta},"
            f" wd={result.wd}). The {len(result.step)} rows recorded before it are in "
            "`err.result`; pass on_nonfinite='stop' to get them as the return value instead."
        )


@dataclasses.dataclass(frozen=True)
class GDResult:
    """A GD+WD run: one row per recorded step (NumPy arrays on the host).

    Attributes:
        step: ``(n,)`` step index of each row; row 0 is step 0.
        w: ``(n, D)`` iterates (``None`` if ``record_iterates=False``).
        norm: ``(n,)`` ``|w_t|``.
        group_norms: ``(n, G)`` per-group norms.
        eta_eff: ``(n,)`` ``eta / |w_t|^2``.
        group_eta_eff: ``(n, G)`` ``eta / |w_g|^2``.
        loss: ``(n,)`` ``L(w_t)``.
        grad_norm: ``(n,)`` ``|grad L(w_t)|`` (raw; times ``|w_t|`` for the sphere's gradient).
        sharpness: ``(n,)`` spherical sharpness ``S(w_t)`` of the row's own step (NaN where not
            tracked). One group: ``eos |w_t|^2 / eta``, free. Several groups: its own Lanczos
            solve, done on recorded rows only (never on the tracked steps between rows, where it
            would not be stored; ``record_every = sharpness_every`` has it on every tracked
            step), warm-started from the previous row's eigenvector.
        eos: ``(n,)`` EoS quantity ``eta * lambda_1(hess L(w_t))`` of the row's own step (NaN
            where not tracked). Every row is a tracked step (``sharpness_every`` divides
            ``record_every``) and its value comes from the same per-step solve as the steps
            between rows, so the rows sample the per-step tracker's accuracy.
        lanczos_matvecs: ``(n,)`` HVPs spent on the row's own step (EoS solve plus, with several
            groups, the spherical solve).
        lanczos_residual: ``(n,)`` relative Ritz residual ``|A y - theta y| / |theta|`` achieved on
            the row's own step (the larger of the two solves' with several groups); above
            ``lanczos_tol`` only where a solve hit ``lanczos_iters``.
        block_matvecs: ``(n,)`` HVPs spent by all steps from the row's step up to the next row's
            (exclusive; the last row: its own step), so ``block_matvecs.sum()`` is the run's
            total. ``None`` for results stored before it existed.
        onset_step: first tracked step with ``eos >= 2`` (``None`` if never), resolved to
            ``sharpness_every`` steps and found inside the run, not only on recorded rows.
        diverged_at: first step with a non-finite iterate (``None`` if none).
        v1: ``(D,)`` last top eigenvector of ``eta * hess L(w)`` (warm start for a continuation).
        eta, wd, groups, config: the run's settings.
    """

    step: np.ndarray
    w: np.ndarray | None
    norm: np.ndarray
    group_norms: np.ndarray
    eta_eff: np.ndarray
    group_eta_eff: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    sharpness: np.ndarray
    eos: np.ndarray
    lanczos_matvecs: np.ndarray
    lanczos_residual: np.ndarray
    onset_step: int | None
    diverged_at: int | None
    v1: np.ndarray
    eta: float
    wd: float
    groups: Groups
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    block_matvecs: np.ndarray | None = None

    ARRAYS = (
        "step",
        "w",
        "norm",
        "group_norms",
        "eta_eff",
        "group_eta_eff",
        "loss",
        "grad_norm",
        "sharpness",
        "eos",
        "lanczos_matvecs",
        "lanczos_residual",
        "block_matvecs",
        "v1",
    )

    def arrays(self) -> dict[str, np.ndarray]:
        """The array attributes by name (``w`` omitted when not recorded)."""
        out = {name: getattr(self, name) for name in self.ARRAYS}
        return {k: v for k, v in out.items() if v is not None}

    def meta(self) -> dict[str, Any]:
        """The non-array attributes (JSON-friendly); with :meth:`arrays`, all of the result."""
        return {
            "onset_step": self.onset_step,
            "diverged_at": self.diverged_at,
            "eta": self.eta,
            "wd": self.wd,
            "groups": list(self.groups),
            "config": dict(self.config),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> GDResult:
        """Rebuild a result stored as :meth:`arrays` and :meth:`meta`."""
        return cls(
            **{name: arrays.get(name) for name in cls.ARRAYS},  # type: ignore[arg-type]
            onset_step=meta["onset_step"],
            diverged_at=meta["diverged_at"],
            eta=float(meta["eta"]),
            wd=float(meta["wd"]),
            groups=tuple(int(g) for g in meta["groups"]),
            config=dict(meta["config"]),
        )

    def take(self, rows: np.ndarray | slice) -> GDResult:
        """The same run restricted to some rows."""
        sub: dict[str, Any] = {}
        for name in self.ARRAYS:
            arr = getattr(self, name)
            if name != "v1" and arr is not None:
                sub[name] = arr[rows]
        return dataclasses.replace(self, **sub)


class GDSnapshot(NamedTuple):
    """Everything needed to continue a run bitwise: handed to ``on_snapshot`` after each chunk
    and accepted back by ``gd_wd(..., resume=snapshot)`` (NumPy arrays, safe to store).

    Attributes:
        carry: the runner's state by name (iterate, warm eigenvectors, step, onset, bad, key).
        rows: the rows recorded so far by name.
        done_blocks: recorded blocks finished.
        config: the run's settings; a resume with different settings is refused.
    """

    carry: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    done_blocks: int
    config: dict[str, Any]


def predicted_eos_onset(eta: float, wd: float, eos0: float, *, exact: bool = True) -> float:
    """Steps for ``eta_eff * S`` to grow from ``eos0`` to 2 when the gradient is negligible.

    Near the minimizer manifold ``|w_t|^2 = (1 - eta wd)^{2t} |w_0|^2``, so
    ``eta_eff_t S = eos0 (1 - eta wd)^{-2t}`` reaches 2 after
    ``log(2 / eos0) / (-2 log(1 - eta wd))`` steps (``exact=True``), which is
    ``log(2 / eos0) / (2 eta wd)`` to first order (``exact=False``; MATH.md section 3) [derived].
    Assumes the sharpness stays at its initial value (phase I has already converged).
    """
    eta, wd, eos0 = (
        check.positive(eta, "eta"),
        check.positive(wd, "wd"),
        check.positive(eos0, "eos0"),
    )
    if eta * wd >= 1:
        raise ValueError(f"eta * wd must be < 1, got {eta * wd}")
    if eos0 >= 2:
        return 0.0
    rate = -2.0 * math.log1p(-eta * wd) if exact else 2.0 * eta * wd
    return math.log(2.0 / eos0) / rate


# --------------------------------------------------------------------------------------------
# The compiled core
# --------------------------------------------------------------------------------------------


class _Static(NamedTuple):
    """Settings that change the compiled program (hashable, passed as static).

    ``parity_warm_start``: warm-start a tracked step from the eigenvector of two tracked steps
    before when ``sharpness_every`` is odd (see :func:`_observe`); it has a default so that
    callers built before it (the sweep) keep working.
    """

    groups: Groups
    track: bool
    max_iters: int
    record_iterates: bool
    parity_warm_start: bool = True


class _Params(NamedTuple):
    """Settings that are plain data (traced)."""

    eta: Array
    wd: Array
    tol: Array
    record_every: Array
    sharpness_every: Array
    perturbation: Array
    perturb_every: Array


class _Carry(NamedTuple):
    w: Array
    v: Array  # warm start: top eigenvector of eta * H(w) at the last tracked step
    vs: Array  # warm start: top eigenvector of H(w_hat) where last solved (several groups only)
    t: Array
    onset: Array
    bad: Array
    key: Array
    # Top eigenvector of eta * H(w) at the tracked step before the last (the warm start of the
    # other parity). None where it is not kept (callers built before it, e.g. the sweep): the
    # warm start is then always ``v``.
    vp: Array | None = None


class _Obs(NamedTuple):
    """What one step learns about the current iterate (before the update)."""

    loss: Array
    grad: Array
    eos: Array
    sharpness: Array
    matvecs: Array
    residual: Array


class _Row(NamedTuple):
    step: Array
    w: Array
    group_norms: Array
    loss: Array
    grad_norm: Array
    sharpness: Array
    eos: Array
    matvecs: Array
    residual: Array
    block_matvecs: Array  # HVPs spent by all steps of the row's block (the row's own included)


def _observe(
    loss: LossFn, c: _Carry, p: _Params, st: _Static, track: Array, record: bool
) -> tuple[_Obs, _Carry]:
    """Loss, gradient and (if ``track``) the EoS quantity at ``c.w``; updates the warm starts.

    A tracked step linearizes ``grad L`` at ``c.w`` once: the primal output is the gradient the
    GD step needs and every HVP only evaluates the tangent program. The EoS quantity is solved
    by Lanczos (``k = 1``) warm-started from an earlier tracked step's eigenvector; it stops as
    soon as the relative Ritz residual is ``<= p.tol`` (after one HVP if the warm start is
    already an eigenvector to tolerance), or at ``st.max_iters`` HVPs.

    Warm start. At the Edge of Stability the iterate oscillates with period 2, and so does the
    Hessian: the top eigenvector of an even step is closer to that of the previous even step
    than to that of the odd step in between. With ``st.parity_warm_start`` and an odd
    ``sharpness_every`` (consecutive tracked steps alternate parity) the solve starts from the
    eigenvector of two tracked steps before (``c.vp``), otherwise from the last one (``c.v``).
    Each parity thus follows its own chain of eigenvectors; like any warm-started tracker, a
    chain can stay on an eigenvector that has just been overtaken by another (a crossing of the
    top two eigenvalues) until the Krylov space picks the new one up.

    Spherical sharpness. With one group it is free, ``eos |w|^2 / eta``. With several groups it is
    a second operator, ``M H(w) M = H(w_hat)`` (``M`` the per-group norms), solved only where it
    is recorded (``record``, static: the steps between rows never store it; to have it on every
    tracked step, record every tracked step), warm-started from its own last eigenvector
    ``c.vs``. (Not from the EoS eigenvector just found: with unequal group norms the two
    operators' top eigenvectors can lie on different branches of the spectrum, and a solve
    started there was measured to converge to a lower eigenvalue, 18% off.)
    """
    dtype = c.w.dtype
    nan = jnp.asarray(jnp.nan, dtype)

    def tracked(c: _Carry) -> tuple[_Obs, _Carry]:
        (val, grad), lin = jax.linearize(jax.value_and_grad(loss), c.w)

        def hvp_fn(x: Array) -> Array:
            return lin(x)[1]

        key = jax.random.fold_in(c.key, c.t)
        start = c.v
        if st.parity_warm_start and c.vp is not None:
            start = jnp.where(p.sharpness_every % 2 == 1, c.vp, c.v)
        res = lanczos(
            lambda x: p.eta * hvp_fn(x), start, max_iters=st.max_iters, tol=p.tol, key=key
        )
        eos, v = res.eigenvalues[0], res.eigenvectors[:, 0]
        resid = res.residuals[0] / jnp.abs(eos)
        matvecs = res.num_matvecs
        vs = c.vs
        if len(st.groups) == 1:
            sharp, vs = eos * jnp.vdot(c.w, c.w) / p.eta, v
        elif record:
            m = expand_groups(group_norms(c.w, st.groups), st.groups)
            res_s = lanczos(
                lambda x: m * hvp_fn(m * x), c.vs, max_iters=st.max_iters, tol=p.tol, key=key
            )
            sharp, vs = res_s.eigenvalues[0], res_s.eigenvectors[:, 0]
            resid = jnp.maximum(resid, res_s.residuals[0] / jnp.abs(sharp))
            matvecs = matvecs + res_s.num_matvecs
        else:
            sharp = nan
        obs = _Obs(val, grad, eos, sharp, jnp.asarray(matvecs, jnp.int32), resid)
        return obs, c._replace(v=v, vs=vs, vp=None if c.vp is None else c.v)

    def untracked(c: _Carry) -> tuple[_Obs, _Carry]:
        val, grad = jax.value_and_grad(loss)(c.w)
        return _Obs(val, grad, nan, nan, jnp.asarray(0, jnp.int32), nan), c

    if not st.track:
        return untracked(c)
    return jax.lax.cond(track, tracked, untracked, c)


def _perturb(w: Array, key: Array, scale: Array, groups: Groups) -> Array:
    """Random tangent perturbation of relative size ``scale`` per group (norm kept to 2nd order)."""
    xi = jax.random.normal(key, w.shape, w.dtype)
    w_hat = normalize(w, groups)
    radial = jax.ops.segment_sum(
        xi * w_hat, jnp.asarray(np.repeat(np.arange(len(groups)), groups)), len(groups)
    )
    xi = xi - expand_groups(radial, groups) * w_hat
    per_coord = group_norms(w, groups) / jnp.sqrt(jnp.asarray(groups, w.dtype))
    return w + scale * expand_groups(per_coord, groups) * xi


def _step(
    loss: LossFn,
    c: _Carry,
    p: _Params,
    st: _Static,
    record: bool = True,
    force_track: Array | bool = False,
) -> tuple[_Carry, _Obs]:
    """One GD+WD step from ``c`` (a no-op once the run has diverged); ``record``: see _observe;
    ``force_track``: track this step whatever ``sharpness_every`` says (the final row)."""
    track = ((c.t % p.sharpness_every) == 0) | force_track
    obs, c = _observe(loss, c, p, st, track, record)
    w_new = (1 - p.eta * p.wd) * c.w - p.eta * obs.grad
    due = (p.perturbation > 0) & ((c.t % p.perturb_every) == 0)
    w_new = jax.lax.cond(
        due,
        lambda w: _perturb(w, jax.random.fold_in(c.key, -1 - c.t), p.perturbation, st.groups),
        lambda w: w,
        w_new,
    )
    finite = jnp.all(jnp.isfinite(w_new)) & jnp.isfinite(obs.loss)
    ok = c.bad < 0
    onset = jnp.where(ok & track & (obs.eos >= 2) & (c.onset < 0), c.t, c.onset)
    bad = jnp.where(ok & ~finite, c.t + jnp.where(jnp.isfinite(obs.loss), 1, 0), c.bad)
    w_next = jnp.where(ok & finite, w_new, c.w)
    return c._replace(w=w_next, t=c.t + 1, onset=onset, bad=bad), obs


def _row(c: _Carry, obs: _Obs, st: _Static, block_matvecs: Array) -> _Row:
    w = c.w if st.record_iterates else jnp.zeros((0,), c.w.dtype)
    return _Row(
        c.t,
        w,
        group_norms(c.w, st.groups),
        obs.loss,
        jnp.linalg.norm(obs.grad),
        obs.sharpness,
        obs.eos,
        obs.matvecs,
        obs.residual,
        jnp.asarray(block_matvecs, jnp.int32),
    )


def _segment_core(
    loss: LossFn,
    c: _Carry,
    p: _Params,
    st: _Static,
    n_blocks: int,
    active: Array,
    last: Array,
    final: Array,
) -> tuple[_Carry, _Row]:
    """``active`` of ``n_blocks`` recorded blocks run, the last of them for ``last`` steps.

    A block records the row of its first step and runs ``record_every`` steps in all; blocks
    past ``active`` pad the last chunk to the compiled length and are discarded. ``final``
    (with ``active = last = 1``) makes the one block the run's final row: tracked whatever
    ``sharpness_every`` says; the caller keeps only its row and warm starts (:func:`_final_row`).
    The final row reuses this compiled program rather than compiling its own, which was a third
    of a run's compilation time.
    """

    def quiet(_: Any, cn: tuple[_Carry, Array]) -> tuple[_Carry, Array]:
        def go(c: _Carry) -> tuple[_Carry, Array]:
            c, obs = _step(loss, c, p, st, record=False)
            return c, obs.matvecs

        c, n = cn
        c, spent = jax.lax.cond(c.bad < 0, go, lambda c: (c, jnp.asarray(0, jnp.int32)), c)
        return c, n + spent

    def block(c: _Carry, i: Array) -> tuple[_Carry, _Row]:
        def run(c: _Carry) -> tuple[_Carry, _Row]:
            c_next, obs = _step(loss, c, p, st, record=True, force_track=final)
            length = jnp.where(i == active - 1, last, p.record_every)
            c_next, spent = jax.lax.fori_loop(1, length, quiet, (c_next, obs.matvecs))
            return c_next, _row(c, obs, st, spent)

        def skip(c: _Carry) -> tuple[_Carry, _Row]:
            zero = jnp.zeros((), c.w.dtype)
            none = jnp.asarray(0, jnp.int32)
            obs = _Obs(zero, jnp.zeros_like(c.w), zero, zero, none, zero)
            return c, _row(c, obs, st, none)

        return jax.lax.cond(i < active, run, skip, c)

    return jax.lax.scan(block, c, jnp.arange(n_blocks))


_segment = eqx.filter_jit(_segment_core)


def _final_row(
    segment: Callable[..., tuple[_Carry, _Row]],
    loss: LossFn,
    c: _Carry,
    p: _Params,
    st: _Static,
    n_blocks: int,
) -> tuple[_Carry, _Row]:
    """The final row at ``c`` (no step): one forced-tracked block of the compiled ``segment``
    (``_segment`` or the sweep's batched one), whose rows the caller cuts to the first block.
    Of the stepped carry only the warm starts are kept; iterate, counters and onset are ``c``'s.
    """
    one = jnp.asarray(1)
    stepped, rows = segment(loss, c, p, st, n_blocks, one, one, jnp.asarray(True))
    return c._replace(v=stepped.v, vs=stepped.vs, vp=stepped.vp), rows


# --------------------------------------------------------------------------------------------
# The public runner
# --------------------------------------------------------------------------------------------


def check_rates(
    eta: Any, wd: Any, perturbation: Any = 0.0, where: str = ""
) -> tuple[float, float, float]:
    """Validated ``(eta > 0, wd >= 0, perturbation >= 0)`` with ``eta * wd < 1``."""
    eta = check.positive(eta, "eta")
    wd = check.nonnegative(wd, "wd")
    perturbation = check.nonnegative(perturbation, "perturbation")
    if eta * wd >= 1:
        raise ValueError(
            f"eta * wd must be < 1 (the decay factor 1 - eta*wd must stay positive), "
            f"got eta={eta}, wd={wd}{where}"
        )
    return eta, wd, perturbation


def check_schedule(steps: Any, record_every: Any, sharpness_every: Any) -> tuple[int, int, int]:
    """Validated ``(steps, record_every, sharpness_every)``; the last divides the second."""
    steps = check.positive_int(steps, "steps")
    record_every = check.positive_int(record_every, "record_every")
    s_every = record_every if sharpness_every is None else sharpness_every
    s_every = check.positive_int(s_every, "sharpness_every")
    if record_every % s_every:
        raise ValueError(
            f"sharpness_every ({s_every}) must divide record_every ({record_every}) so that every "
            "recorded row carries the sharpness of its own step"
        )
    return steps, record_every, s_every


def gd_wd(
    loss: LossFn,
    w0: Array,
    *,
    eta: float,
    wd: float,
    steps: int,
    record_every: int = 1,
    groups: Sequence[int] | None = None,
    track_sharpness: bool = True,
    sharpness_every: int | None = None,
    lanczos_tol: float | None = None,
    lanczos_iters: int = 24,
    warm_start: Literal["parity", "last"] = "parity",
    v0: Array | None = None,
    perturbation: float = 0.0,
    perturb_every: int = 1,
    key: Array | None = None,
    record_iterates: bool = True,
    chunk_steps: int = 20_000,
    callback: Callable[[int, int], None] | None = None,
    on_nonfinite: Literal["raise", "stop"] = "raise",
    check_invariance: bool = True,
    on_snapshot: Callable[[GDSnapshot], None] | None = None,
    resume: GDSnapshot | None = None,
) -> GDResult:
    """Run GD with weight decay on a scale-invariant loss, tracking sharpness and the EoS.

    ``w_{t+1} = (1 - eta wd) w_t - eta grad L(w_t)`` for ``steps`` steps, compiled as one
    ``lax.scan`` per chunk. The dtype is ``w0``'s (float64 needs x64 enabled).

    Args:
        loss: scale-invariant loss ``(D,) -> ()``; data-carrying losses should be pytrees
            (``jax.tree_util.Partial``, ``eqx.Module``) so data are jit arguments.
        w0: initial point ``(D,)``, finite, nonzero in every group.
        eta: learning rate ``> 0``.
        wd: weight decay ``>= 0`` (0 is the no-WD ablation).
        steps: number of GD steps ``>= 1``.
        record_every: record a row every this many steps (and always at step ``steps``).
        groups: contiguous block sizes for multi-group invariance (``None``: one group).
        track_sharpness: compute ``S`` and the EoS quantity (Lanczos); ``False`` runs bare GD.
        sharpness_every: track every this many steps (must divide ``record_every``; default
            ``record_every``). EoS onset is detected at this resolution.
        lanczos_tol: relative Ritz residual at which every solve stops (default
            ``3 sqrt(eps)``: float32 ~1e-3, float64 ~4.5e-8). The eigenvalue error is at most
            the residual and about ``residual^2 / relative gap`` (module docstring): ``1e-2``
            gives ~1e-3 on a network whose top gap is a few percent, for about half the HVPs
            of the default.
        lanczos_iters: Krylov dimension (= HVP) cap per solve. The first eigenvector is solved
            cold and accurately before the run; later steps start warm and stop as soon as the
            residual meets ``lanczos_tol`` (one HVP when the warm start already does). The
            cap binds only where the top eigenvalues cluster or cross; a step that hits it
            shows it in ``lanczos_residual``.
        warm_start: ``"parity"`` (default) starts each tracked step's EoS solve from the
            eigenvector of two tracked steps before when ``sharpness_every`` is odd (the EoS
            oscillation has period 2, and so does the Hessian; measured on small multi-group
            problems at the EoS: 30-70% fewer HVPs, and fewer solves stuck on the second
            eigenvalue);
            ``"last"`` always from the previous tracked step's.
        v0: start vector for the first tracked step (default: an accurate cold solve).
        perturbation: relative size of a random tangent kick that seeds the EoS oscillation when
            exact arithmetic sits exactly on the manifold (ALP22); 0 disables it.
        perturb_every: kick every this many steps (when ``perturbation > 0``).
        key: PRNG key for the start vector, kicks and Lanczos restarts (default ``PRNGKey(0)``).
        record_iterates: store ``w`` per row (``False`` for large ``D``: ``w`` is then None).
        chunk_steps: steps per compiled chunk (rounded to whole recorded blocks); the callback
            runs and divergence is checked between chunks.
        callback: ``callback(steps_done, steps)`` after each chunk (for progress bars).
        on_nonfinite: ``"raise"`` a :class:`DivergenceError` (carrying the rows before the bad
            step) or ``"stop"`` and return those rows with ``diverged_at`` set.
        check_invariance: reject a loss that is not scale-invariant around ``w0``.
        on_snapshot: ``on_snapshot(GDSnapshot)`` after each chunk (to write a checkpoint).
        resume: a snapshot of this same run (same ``w0`` and settings) to continue from; the
            continued run is bitwise identical to an uninterrupted one (same machine, dtype and
            ``chunk_steps``), because the remaining chunks run the same compiled program on the
            same state.

    Returns:
        :class:`GDResult`.
    """
    eta, wd, perturbation = check_rates(eta, wd, perturbation)
    steps, record_every, s_every = check_schedule(steps, record_every, sharpness_every)
    perturb_every, lanczos_iters, chunk_steps = (
        check.positive_int(perturb_every, "perturb_every"),
        check.positive_int(lanczos_iters, "lanczos_iters"),
        check.positive_int(chunk_steps, "chunk_steps"),
    )
    if on_nonfinite not in ("raise", "stop"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'stop', got {on_nonfinite!r}")
    if warm_start not in ("parity", "last"):
        raise ValueError(f"warm_start must be 'parity' or 'last', got {warm_start!r}")
    w0, sizes = check.flat_vector(w0, "w0", groups)
    if check_invariance:
        check_scale_invariance(loss, w0, groups=sizes)
    dtype = w0.dtype
    key = jax.random.PRNGKey(0) if key is None else key
    tol = default_tol(dtype) if lanczos_tol is None else check.positive(lanczos_tol, "lanczos_tol")
    if resume is not None:
        v0 = vs0 = w0  # replaced by the snapshot's carry below
    elif v0 is not None:
        v0, _ = check.flat_vector(v0, "v0")
        if v0.shape != w0.shape:
            raise ValueError(f"v0 must have the shape of w0 {w0.shape}, got {v0.shape}")
        v0 = vs0 = v0.astype(dtype)
    elif track_sharpness:
        # One accurate cold solve up front; every tracked step then starts warm, so a small
        # Krylov cap per step suffices.
        _, v0 = eos_quantity(loss, w0, eta, groups=sizes, tol=tol, key=key, check_invariance=False)
        vs0 = v0
        if len(sizes) > 1:
            res0 = sharpness_eigs(loss, w0, groups=sizes, tol=tol, key=key, check_invariance=False)
            vs0 = res0.eigenvectors[:, 0]
    else:
        v0 = vs0 = jnp.zeros_like(w0)
    st = _Static(
        sizes,
        bool(track_sharpness),
        min(lanczos_iters, w0.shape[0]),
        record_iterates,
        parity_warm_start=warm_start == "parity",
    )
    p = _Params(
        jnp.asarray(eta, dtype),
        jnp.asarray(wd, dtype),
        jnp.asarray(tol, dtype),
        jnp.asarray(record_every),
        jnp.asarray(s_every),
        jnp.asarray(perturbation, dtype),
        jnp.asarray(perturb_every),
    )
    carry = _Carry(w0, v0, vs0, jnp.asarray(0), jnp.asarray(-1), jnp.asarray(-1), key, v0)
    config = {
        "eta": eta,
        "wd": wd,
        "steps": steps,
        "record_every": record_every,
        "sharpness_every": s_every,
        "groups": list(sizes),
        "track_sharpness": bool(track_sharpness),
        "lanczos_tol": tol,
        "lanczos_iters": st.max_iters,
        "warm_start": warm_start,
        "perturbation": perturbation,
        "perturb_every": perturb_every,
        "record_iterates": record_iterates,
        "chunk_steps": chunk_steps,
        "dtype": jnp.dtype(dtype).name,
        "dim": int(w0.shape[0]),
    }
    n_blocks = -(-steps // record_every)  # rows before the final one
    last_len = steps - (n_blocks - 1) * record_every
    chunk = max(1, min(n_blocks, chunk_steps // record_every))
    rows: list[_Row] = []
    done_blocks = 0
    if resume is not None:
        carry, rows, done_blocks = _restore(resume, config, carry)
    while done_blocks < n_blocks and int(carry.bad) < 0:
        active = min(chunk, n_blocks - done_blocks)
        final_chunk = done_blocks + active == n_blocks
        last = last_len if final_chunk else record_every
        carry, seg = _segment(
            loss, carry, p, st, chunk, jnp.asarray(active), jnp.asarray(last), jnp.asarray(False)
        )
        rows.append(jax.tree.map(lambda a, n=active: np.asarray(a[:n]), seg))
        done_blocks += active
        if on_snapshot is not None:
            on_snapshot(_snapshot(carry, rows, done_blocks, config))
        if callback is not None:
            callback(min(int(carry.t), steps), steps)
    carry, final = _final_row(_segment, loss, carry, p, st, chunk)
    rows.append(jax.tree.map(lambda a: np.asarray(a)[:1], final))
    result = _assemble(rows, carry, eta, wd, sizes, st, config)
    if result.diverged_at is not None and on_nonfinite == "raise":
        raise DivergenceError(result.diverged_at, result)
    return result


def _snapshot(c: _Carry, rows: list[_Row], done: int, config: dict[str, Any]) -> GDSnapshot:
    cols = {n: np.concatenate([np.asarray(getattr(r, n)) for r in rows]) for n in _Row._fields}
    carry = {n: np.asarray(v) for n, v in c._asdict().items()}
    return GDSnapshot(carry, cols, done, dict(config))


def _restore(
    snap: GDSnapshot, config: dict[str, Any], like: _Carry
) -> tuple[_Carry, list[_Row], int]:
    differ = sorted(k for k in config if snap.config.get(k) != config[k])
    if differ:
        raise ValueError(
            f"cannot resume: the snapshot was taken with different settings ({differ}); "
            "start the run afresh or pass the same settings"
        )

    def restore(name: str) -> Array:
        ref, value = getattr(like, name), np.asarray(snap.carry[name])
        if getattr(ref, "weak_type", False):  # a Python-scalar counter: keep it weakly typed,
            return jnp.asarray(value.item())  # or the resumed run compiles a second program
        return jnp.asarray(value, dtype=ref.dtype)

    carry = _Carry(**{n: restore(n) for n in _Carry._fields})
    rows = [_Row._make(np.asarray(snap.rows[n]) for n in _Row._fields)]
    return carry, rows, int(snap.done_blocks)


def _assemble(
    rows: list[_Row],
    c: _Carry,
    eta: float,
    wd: float,
    sizes: Groups,
    st: _Static,
    config: dict[str, Any],
) -> GDResult:
    names = _Row._fields
    cols = {n: np.concatenate([np.asarray(getattr(r, n)) for r in rows]) for n in names}
    bad = int(c.bad)
    if bad >= 0:
        keep = cols["step"] < bad
        cols = {n: a[keep] for n, a in cols.items()}
    gsq = cols["group_norms"] ** 2
    norm = np.sqrt(gsq.sum(axis=1))
    onset = int(c.onset)
    return GDResult(
        step=cols["step"].astype(np.int64),
        w=cols["w"] if st.record_iterates else None,
        norm=norm,
        group_norms=cols["group_norms"],
        eta_eff=eta / norm**2,
        group_eta_eff=eta / gsq,
        loss=cols["loss"],
        grad_norm=cols["grad_norm"],
        sharpness=cols["sharpness"],
        eos=cols["eos"],
        lanczos_matvecs=cols["matvecs"],
        lanczos_residual=cols["residual"],
        block_matvecs=cols["block_matvecs"],
        onset_step=onset if onset >= 0 else None,
        diverged_at=bad if bad >= 0 else None,
        v1=np.asarray(c.v),
        eta=eta,
        wd=wd,
        groups=sizes,
        config=config,
    )
