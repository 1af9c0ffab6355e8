"""Power laws fitted to measured errors: the one log-log fit of the studies and the checks.

A convergence claim ("the error vanishes like ``(eta wd)^p``", "the integrator has order 4") is
a straight line in ``log y`` against ``log x``. :func:`loglog_fit` fits it by least squares and
says how well the points determine it: the standard error of the slope (from the residuals, so
it needs three points) and the local orders between neighbouring points (a pre-asymptotic
range shows as local orders that drift).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


class LogLogFit(NamedTuple):
    """Least-squares line ``log y = slope log x + intercept``.

    Attributes:
        slope: the fitted order (NaN unless at least two points with distinct ``x`` and every
            ``y`` finite and positive).
        intercept: ``log`` of the prefactor.
        stderr: standard error of the slope from the residuals (NaN for fewer than three points).
        local: the orders between neighbouring points, in increasing ``x``.
    """

    slope: float
    intercept: float
    stderr: float
    local: tuple[float, ...]


_NAN_FIT = LogLogFit(math.nan, math.nan, math.nan, ())


def loglog_fit(x: Sequence[Any] | np.ndarray, y: Sequence[Any] | np.ndarray) -> LogLogFit:
    """Fit ``y ~ C x^p`` by least squares in ``log``-``log`` (see :class:`LogLogFit`).

    ``None`` in ``y`` (a value not measured) counts as missing and makes the fit NaN, as does a
    non-positive or non-finite ``y``: a fit through a missing point would claim more than was
    measured.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray([math.nan if v is None else float(v) for v in np.asarray(y, dtype=object)])
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-d of one length, got shapes {xs.shape}, {ys.shape}")
    if not np.all(np.isfinite(xs) & (xs > 0)):
        raise ValueError(f"x must be finite and positive, got {xs.tolist()}")
    if xs.size < 2 or np.ptp(xs) == 0 or not np.all(np.isfinite(ys) & (ys > 0)):
        return _NAN_FIT
    lx, ly = np.log(xs), np.log(ys)
    (slope, intercept), *_ = np.linalg.lstsq(np.stack([lx, np.ones_like(lx)], 1), ly, rcond=None)
    stderr = math.nan
    if xs.size >= 3:
        resid = ly - (slope * lx + intercept)
        stderr = float(np.sqrt(np.sum(resid**2) / (xs.size - 2) / np.sum((lx - lx.mean()) ** 2)))
    order = np.argsort(lx)
    local = tuple(float(v) for v in np.diff(ly[order]) / np.diff(lx[order]))
    return LogLogFit(float(slope), float(intercept), stderr, local)
