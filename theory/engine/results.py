"""Results of the engine: one family for single runs, sweeps and optax runs.

:class:`GDResult` holds one run's rows (NumPy, host); :class:`GDSnapshot` everything needed to
continue a run bitwise; :class:`DivergenceError` is raised at a non-finite iterate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

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
        out = {name: getattr(self, name) for name in self.ARRAYS}
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
        for name in self.ARRAYS:
            arr = getattr(self, name)
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
