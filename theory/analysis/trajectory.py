"""Summaries of recorded trajectories shared by the studies: angles between directions and
centered moving averages (host NumPy arrays in, host arrays out)."""

from __future__ import annotations

import numpy as np


def angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between the directions of ``a`` and ``b`` along the last axis (radians).

    ``2 arcsin(|a_hat - b_hat| / 2)``: the same angle as ``arccos(<a_hat, b_hat>)``, but accurate
    for tiny angles (``arccos`` near 1 loses half the digits). Rows broadcast against each other.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[-1:] != b.shape[-1:]:
        raise ValueError(f"a and b must have the same last axis, got shapes {a.shape}, {b.shape}")
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return 2.0 * np.arcsin(np.clip(np.linalg.norm(a - b, axis=-1) / 2.0, 0.0, 1.0))


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average of ``x`` over ``window`` rows (axis 0), same shape as ``x``.

    Row ``t`` averages rows ``t - window // 2 .. t + window - window // 2 - 1``; beyond either
    end the first or last row is repeated (so a constant stays constant up to the edges).
    """
    x = np.asarray(x)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if x.ndim not in (1, 2) or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty (n,) or (n, d) array, got shape {x.shape}")
    kernel = np.ones(window) / window
    pad = window // 2
    xp = np.concatenate([np.repeat(x[:1], pad, 0), x, np.repeat(x[-1:], window - pad - 1, 0)])
    if x.ndim == 1:
        return np.convolve(xp, kernel, mode="valid")
    return np.stack([np.convolve(xp[:, j], kernel, mode="valid") for j in range(x.shape[1])], 1)
