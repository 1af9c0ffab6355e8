"""Results of the engine: one family for single runs, sweeps and optax runs.

:class:`GDResult` holds one run's rows (NumPy, host), :class:`SweepResult` those of a batch of
configurations; :class:`GDSnapshot` everything needed to continue a run bitwise;
:class:`DivergenceError` is raised at a non-finite iterate.

Both results are made in one place, :func:`assemble`: the driver's rows (with a leading
configuration axis, of length 1 for a single run) become a :class:`SweepResult`, and a single
run's :class:`GDResult` is its configuration 0 (:meth:`SweepResult.run`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from theory.core.types import Groups


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
        w: ``(n, D)`` iterates (``None`` with ``SaveAt(iterates=False)``).
        norm: ``(n,)`` ``|w_t|``.
        group_norms: ``(n, G)`` per-group norms.
        eta_eff: ``(n,)`` ``eta / |w_t|^2``.
        group_eta_eff: ``(n, G)`` ``eta / |w_g|^2``.
        loss: ``(n,)`` ``L(w_t)``.
        grad_norm: ``(n,)`` ``|grad L(w_t)|`` (raw; times ``|w_t|`` for the sphere's gradient).
        sharpness: ``(n,)`` spherical sharpness ``S(w_t)`` of the row's own step (NaN where not
            tracked). One group: ``eos |w_t|^2 / eta``, free. Several groups: its own Lanczos
            solve, done on recorded rows only (never on the tracked steps between rows, where it
            would not be stored; ``SaveAt.every`` equal to the tracker's ``every`` has it on
            every tracked step), warm-started from the previous row's eigenvector.
        eos: ``(n,)`` EoS quantity ``eta * lambda_1(hess L(w_t))`` of the row's own step (NaN
            where not tracked). Every row is a tracked step (the tracker's ``every`` divides
            ``SaveAt.every``) and its value comes from the same per-step solve as the steps
            between rows, so the rows sample the per-step tracker's accuracy.
        lanczos_matvecs: ``(n,)`` HVPs spent on the row's own step (EoS solve plus, with several
            groups, the spherical solve).
        lanczos_residual: ``(n,)`` relative Ritz residual ``|A y - theta y| / |theta|`` achieved on
            the row's own step (the larger of the two solves' with several groups); above
            the tracker's ``tol`` only where a solve hit its ``max_iters``.
        block_matvecs: ``(n,)`` HVPs spent by all steps from the row's step up to the next row's
            (exclusive; the last row: its own step), so ``block_matvecs.sum()`` is the run's
            total. ``None`` for results stored before it existed.
        onset_step: first tracked step with ``eos >= 2`` (``None`` if never), resolved to
            the tracker's ``every`` steps and found inside the run, not only on recorded rows.
        diverged_at: first step with a non-finite iterate, or a non-finite loss at a finite one
            (``None`` if none); the rows from it on are dropped.
        v1: ``(D,)`` last top eigenvector of ``eta * hess L(w)`` (warm start for a continuation).
        eta, wd, groups, config: the run's settings (``eta``: the step size of the EoS
            quantity, ``nan`` for an optax run without one; ``wd``: ``nan`` where the method
            has no weight decay of its own).
        observed: ``name -> (n, ...)`` arrays of ``SaveAt.observe`` on every row.
        final_state: the method's state after the run (optax runs), else ``None``.
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
    observed: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    final_state: Any = None

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
        fields = vars(self)
        out = {name: fields[name] for name in self.ARRAYS}
        out.update({f"observed.{k}": v for k, v in self.observed.items()})
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
            observed={k[9:]: v for k, v in arrays.items() if k.startswith("observed.")},
        )

    def take(self, rows: np.ndarray | slice) -> GDResult:
        """The same run restricted to some rows."""
        sub: dict[str, Any] = {}
        fields = vars(self)
        for name in self.ARRAYS:
            arr = fields[name]
            if name != "v1" and arr is not None:
                sub[name] = arr[rows]
        sub["observed"] = {k: v[rows] for k, v in self.observed.items()}
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


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """A batch of ``B`` configurations: arrays with a leading configuration axis (NumPy, host).

    ``step`` ``(n,)`` is shared; ``w`` ``(B, n, D)`` (or None), ``norm, eta_eff, loss, grad_norm,
    sharpness, eos, lanczos_matvecs, lanczos_residual, block_matvecs`` ``(B, n)``,
    ``group_norms, group_eta_eff`` ``(B, n, G)``; ``eta, wd`` ``(B,)``; ``onset_step,
    diverged_at`` ``(B,)`` (-1 for none); ``v1`` ``(B, D)``. Rows of a configuration from its
    divergence on are NaN. ``settings``: per-configuration settings ``name -> (B,)`` (e.g.
    ``eta``, ``wd``, ``perturbation`` of :func:`theory.gd_wd_sweep`), which
    :meth:`run` writes into each configuration's ``config``. :meth:`run` extracts one
    configuration as a :class:`GDResult`.
    """

    step: np.ndarray
    w: np.ndarray | None
    norm: np.ndarray
    group_norms: np.ndarray
    eta_eff: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    sharpness: np.ndarray
    eos: np.ndarray
    lanczos_matvecs: np.ndarray
    lanczos_residual: np.ndarray
    onset_step: np.ndarray
    diverged_at: np.ndarray
    eta: np.ndarray
    wd: np.ndarray
    v1: np.ndarray
    groups: Groups
    config: dict[str, Any]
    block_matvecs: np.ndarray | None = None
    group_eta_eff: np.ndarray | None = None
    observed: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    settings: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    final_state: Any = None  # the methods' states after the run (leading axis B), or None

    def __len__(self) -> int:
        return int(self.eta.shape[0])

    @property
    def perturbation(self) -> np.ndarray | None:
        """``(B,)`` kick sizes of a GD+WD sweep (``None`` for other methods)."""
        return self.settings.get("perturbation")

    def run(self, i: int) -> GDResult:
        """Configuration ``i`` as a :class:`GDResult` (rows from its divergence on dropped)."""
        bad = int(self.diverged_at[i])
        keep = self.step < bad if bad >= 0 else np.ones(self.step.shape, bool)
        onset = int(self.onset_step[i])

        def row(a: np.ndarray | None) -> Any:
            return None if a is None else a[i][keep]

        final = None
        if self.final_state is not None:
            final = jax.tree.map(lambda a: a[i], self.final_state)
        return GDResult(
            step=self.step[keep],
            w=row(self.w),
            norm=row(self.norm),
            group_norms=row(self.group_norms),
            eta_eff=row(self.eta_eff),
            group_eta_eff=row(self.group_eta_eff),
            loss=row(self.loss),
            grad_norm=row(self.grad_norm),
            sharpness=row(self.sharpness),
            eos=row(self.eos),
            lanczos_matvecs=row(self.lanczos_matvecs),
            lanczos_residual=row(self.lanczos_residual),
            block_matvecs=row(self.block_matvecs),
            onset_step=onset if onset >= 0 else None,
            diverged_at=bad if bad >= 0 else None,
            v1=self.v1[i],
            eta=float(self.eta[i]),
            wd=float(self.wd[i]),
            groups=self.groups,
            config={**self.config, **{k: float(v[i]) for k, v in self.settings.items()}},
            observed={k: v[i][keep] for k, v in self.observed.items()},
            final_state=final,
        )


def assemble(
    cols: dict[str, np.ndarray],
    onset: np.ndarray,
    bad: np.ndarray,
    v1: np.ndarray,
    eta: np.ndarray,
    wd: np.ndarray,
    *,
    groups: Groups,
    config: dict[str, Any],
    iterates: bool,
    settings: dict[str, np.ndarray] | None = None,
    final_state: Any = None,
) -> SweepResult:
    """The one assembly of the engine's results (module docstring).

    ``cols``: the recorded columns ``name -> (B, n, ...)`` (``step, w, group_norms, loss,
    grad_norm, sharpness, eos, matvecs, residual, block_matvecs, observed.<name>``); ``onset``,
    ``bad`` ``(B,)``: EoS onset and divergence step (-1 for none); ``v1`` ``(B, D)``; ``eta``,
    ``wd`` ``(B,)``: the recorded step size and weight decay. Rows from a configuration's
    divergence on become NaN; ``norm``, ``eta_eff`` (in the run's dtype) and ``group_eta_eff``
    are derived here.
    """
    step = cols["step"][0].astype(np.int64)
    invalid = (bad[:, None] >= 0) & (step[None, :] >= bad[:, None])
    gsq = cols["group_norms"] ** 2
    norm = np.sqrt(gsq.sum(axis=2))
    rate = np.asarray(eta).astype(norm.dtype)

    def mask(a: np.ndarray) -> np.ndarray:
        if not np.issubdtype(a.dtype, np.inexact):
            return a
        shape = invalid.shape + (1,) * (a.ndim - 2)
        return np.where(invalid.reshape(shape), np.nan, a)

    prefix = "observed."
    return SweepResult(
        step=step,
        w=mask(cols["w"]) if iterates else None,
        norm=mask(norm),
        group_norms=mask(cols["group_norms"]),
        eta_eff=mask(rate[:, None] / norm**2),
        group_eta_eff=mask(rate[:, None, None] / gsq),
        loss=mask(cols["loss"]),
        grad_norm=mask(cols["grad_norm"]),
        sharpness=mask(cols["sharpness"]),
        eos=mask(cols["eos"]),
        lanczos_matvecs=cols["matvecs"],
        lanczos_residual=mask(cols["residual"]),
        block_matvecs=cols["block_matvecs"],
        onset_step=np.asarray(onset).astype(np.int64),
        diverged_at=np.asarray(bad).astype(np.int64),
        eta=np.asarray(eta, np.float64),
        wd=np.asarray(wd, np.float64),
        v1=v1,
        groups=tuple(groups),
        config=config,
        observed={k[len(prefix) :]: mask(v) for k, v in cols.items() if k.startswith(prefix)},
        settings={} if settings is None else dict(settings),
        final_state=final_state,
    )
