"""Errors and warnings raised by :mod:`theory` where a numerical method cannot deliver."""

from __future__ import annotations


class ProjectionError(RuntimeError):
    """A projection onto the minimizer manifold did not converge (no nearby minimizer)."""


class DegenerateSharpnessError(RuntimeError):
    """The top Hessian eigenvalue stopped being simple, so ``grad log lambda_1`` is undefined."""


class DegenerateSharpnessWarning(RuntimeWarning):
    """The top eigenvalue came close to degenerate; results near there are less accurate."""


class BudgetExceeded(RuntimeError):
    """A computation ran past its budget (wall seconds or steps, ``theory.flows.common.Budget``).

    Attributes:
        partial: the work finished before the budget ran out, in the shape the entry point
            documents (e.g. the saves reached so far); ``None`` when nothing was finished.
        phase: the phase that was running (e.g. ``"flow"``).
        spent: what had been used: ``{"seconds": ..., "steps": ...}``.
    """

    def __init__(
        self,
        message: str,
        partial: object = None,
        *,
        phase: str = "",
        spent: dict[str, float] | None = None,
    ) -> None:
        super().__init__(message)
        self.partial = partial
        self.phase = phase
        self.spent = dict(spent or {})
