"""Progress reports and budgets for the projections and flows of :mod:`theory.flows`.

Two settings objects, in the style of the other settings of :mod:`theory.flows.common` (which
re-exports them), and the host-side :class:`Meter` that the entry points share:

* :class:`Progress` -- where progress goes: ``callback(done, total)`` (the engine's shape,
  ``theory/engine/driver.py``), ``on_phase(name)`` when a phase starts, and/or a tqdm bar
  (``bar=True``, described by the phase's name). An entry point's ``progress`` argument also
  takes a bare callable (``Progress(callback=fn)``) or ``True`` (``Progress(bar=True)``).
* :class:`Budget` -- wall seconds and/or steps (integrator steps and solver iterations,
  summed over the phases of one call). Checked between segments (and after every Gauss-Newton
  iteration); when it runs out the entry point raises :class:`theory.core.errors.BudgetExceeded`
  carrying the part of the result finished so far.

With neither given an entry point runs exactly as before (one compiled solve, bitwise the same
results). With either, a flow is integrated segment by segment between its save times (the
state carried from one segment to the next; an adaptive step-size controller restarts at each
segment, so results agree with the unsegmented solve to the controller's tolerance, not
bitwise).

A :class:`Meter` made by an entry point is *active* while it runs (:meth:`Meter.activate`):
the projections and flows it calls report to it and charge their steps to the same budget, so
``predict_from_init(..., progress=...)`` shows every phase, including the Gauss-Newton
iterations of its projection (reported from inside the compiled loop by
``jax.experimental.io_callback``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from theory.core import validate as check
from theory.core.errors import BudgetExceeded

__all__ = [
    "Budget",
    "Meter",
    "Progress",
    "activated",
    "active_meter",
    "meter_for",
    "segments",
]


@dataclasses.dataclass(frozen=True)
class Budget:
    """A cap on one call of a projection or flow (``None``: no cap on that count).

    Attributes:
        seconds: wall-clock seconds since the call started (compilation included).
        steps: integrator steps (as each entry point counts them in its result's
            ``num_steps``) plus Gauss-Newton residual evaluations, summed over the call's
            phases.
    """

    seconds: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.seconds is None and self.steps is None:
            raise ValueError("Budget needs seconds and/or steps, got neither")
        if self.seconds is not None:
            check.positive(self.seconds, "Budget.seconds")
        if self.steps is not None:
            check.positive_int(self.steps, "Budget.steps")


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a call reports its progress.

    Attributes:
        callback: ``callback(done, total)`` after each segment (``done`` counts the current
            phase's units: save intervals of a flow, iterations of a projection).
        on_phase: ``on_phase(name)`` when a phase starts (``"projection"``, ``"flow"``, and for
            :func:`theory.predict_from_init` ``"phase I model"``, ``"rows"`` too).
        bar: show a tqdm bar per phase.
    """

    callback: Callable[[int, int], None] | None = None
    on_phase: Callable[[str], None] | None = None
    bar: bool = False

    def __post_init__(self) -> None:
        for name in ("callback", "on_phase"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"Progress.{name} must be callable or None, got {value!r}")
        if not isinstance(self.bar, bool):
            raise TypeError(f"Progress.bar must be a bool, got {self.bar!r}")

    @classmethod
    def of(cls, value: Any) -> Progress | None:
        """``value`` as :class:`Progress`: itself, ``True`` (a bar), a callable (the
        ``callback``), or ``None``/``False`` (no progress)."""
        if value is None or value is False:
            return None
        if value is True:
            return cls(bar=True)
        if isinstance(value, Progress):
            return value
        if callable(value):
            return cls(callback=value)
        raise TypeError(
            "progress must be None, True (a tqdm bar), a callable progress(done, total) or "
            f"theory.Progress(...), got {value!r}"
        )


def _budget_of(value: Any) -> Budget | None:
    if value is None or isinstance(value, Budget):
        return value
    raise TypeError(f"budget must be None or theory.Budget(seconds=..., steps=...), got {value!r}")


class Meter:
    """The host-side progress and budget of one call (made by :func:`meter_for`).

    ``phase(name, total)`` starts a phase, ``update(done, steps)`` reports ``done`` of
    ``total`` and charges ``steps`` to the budget, ``over()`` says what ran out (or ``None``),
    and ``check(partial)`` raises :class:`BudgetExceeded` with ``partial()`` when it did.
    """

    def __init__(self, progress: Progress | None, budget: Budget | None) -> None:
        self.progress = progress
        self.budget = budget
        self.start = time.perf_counter()
        self.steps = 0
        self.phase_name = ""
        self.total = 0
        self.phases: list[str] = []
        self._bar: Any = None
        self._done = 0

    def seconds(self) -> float:
        """Wall seconds since the call started."""
        return time.perf_counter() - self.start

    def phase(self, name: str, total: int) -> None:
        """Start the phase ``name`` of ``total`` units (the current phase again: only its
        total changes, so a nested call may restate its enclosing call's phase)."""
        if name == self.phase_name:
            self.total = int(total)
            return
        self._close_bar()
        self.phase_name, self.total, self._done = name, int(total), 0
        self.phases.append(name)
        if self.progress is None:
            return
        if self.progress.on_phase is not None:
            self.progress.on_phase(name)
        if self.progress.bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=name, leave=False)

    def update(self, done: int, steps: int = 0) -> None:
        """``done`` units of the current phase finished; ``steps`` more steps spent."""
        self.steps += int(steps)
        done = int(done)
        if self.progress is not None:
            if self.progress.callback is not None:
                self.progress.callback(done, self.total)
            if self._bar is not None:
                self._bar.update(done - self._done)
        self._done = done

    def over(self) -> str | None:
        """What of the budget ran out, or ``None``."""
        if self.budget is None:
            return None
        if self.budget.steps is not None and self.steps >= self.budget.steps:
            return f"{self.steps} steps used, budget {self.budget.steps}"
        seconds = self.seconds()
        if self.budget.seconds is not None and seconds >= self.budget.seconds:
            return f"{seconds:.3g} s elapsed, budget {self.budget.seconds:g} s"
        return None

    def spent(self) -> dict[str, float]:
        """``{"seconds": ..., "steps": ...}`` so far."""
        return {"seconds": self.seconds(), "steps": float(self.steps)}

    def check(self, what: str, partial: Callable[[], Any]) -> None:
        """Raise :class:`BudgetExceeded` (with ``partial()``) if the budget ran out; ``what``
        says where the call stood (e.g. ``"flow at tau = 0.5"``)."""
        reason = self.over()
        if reason is None:
            return
        self._close_bar()
        raise BudgetExceeded(
            f"budget exceeded in phase {self.phase_name!r} ({what}): {reason}; the part "
            "finished so far is in the error's .partial",
            partial(),
            phase=self.phase_name,
            spent=self.spent(),
        )

    def close(self) -> None:
        """Close the bar of the last phase."""
        self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @contextlib.contextmanager
    def activate(self) -> Iterator[Meter]:
        """Make this meter the one that nested projections and flows report to."""
        _ACTIVE.append(self)
        try:
            yield self
        finally:
            _ACTIVE.pop()
            if not _ACTIVE:
                self._close_bar()


_ACTIVE: list[Meter] = []


def active_meter() -> Meter | None:
    """The meter of the call that is running (innermost), or ``None``."""
    return _ACTIVE[-1] if _ACTIVE else None


def meter_for(progress: Any, budget: Any) -> Meter | None:
    """The meter a call reports to: a new one for its own ``progress``/``budget`` (checked),
    else the active meter of an enclosing call, else ``None`` (no monitoring: the call runs
    unsegmented, as before)."""
    prog, bud = Progress.of(progress), _budget_of(budget)
    if prog is None and bud is None:
        return active_meter()
    return Meter(prog, bud)


def activated(meter: Meter | None) -> contextlib.AbstractContextManager[Meter | None]:
    """``meter.activate()``, or a context that does nothing for ``None``."""
    if meter is None:
        return contextlib.nullcontext()
    return meter.activate()


def segments(n: int, count: int = 20) -> list[tuple[int, int]]:
    """``[(i, j), ...]``: the first and last save index of each of about ``count`` segments
    that cover ``n`` saves (consecutive segments share their end save)."""
    size = max(1, math.ceil((n - 1) / count))
    return [(i, min(i + size, n - 1)) for i in range(0, n - 1, size)]
