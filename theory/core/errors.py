"""Errors and warnings raised by :mod:`theory` where a numerical method cannot deliver."""

from __future__ import annotations


class ProjectionError(RuntimeError):
    """A projection onto the minimizer manifold did not converge (no nearby minimizer)."""


class DegenerateSharpnessError(RuntimeError):
    """The top Hessian eigenvalue stopped being simple, so ``grad log lambda_1`` is undefined."""


class DegenerateSharpnessWarning(RuntimeWarning):
    """The top eigenvalue came close to degenerate; results near there are less accurate."""
