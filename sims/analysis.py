"""Measurements on stored GD+WD runs: phases, EoS onset, and the EoS predictions of docs/theory.md.

Every function takes plain arrays (as stored) so that simulations, checks and figures measure
the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from theory.engine.gd import predicted_eos_onset


def phase1_end(step: np.ndarray, loss: np.ndarray, onset: int | None, rel: float = 1e-3) -> int:
    """First recorded step where the loss fell below ``rel`` times its start (phase I over).

    Phase I is the spherical gradient flow to the manifold; capped at the EoS onset.
    """
    below = np.flatnonzero(loss <= rel * loss[0])
    end = int(step[below[0]]) if below.size else int(step[-1])
    return end if onset is None else min(end, onset)


def eos_summary(
    arrays: Mapping[str, np.ndarray],
    *,
    eta: float,
    wd: float,
    onset: int | None,
    distance: np.ndarray | None = None,
) -> dict[str, Any]:
    """The quantities that docs/theory.md predicts for a run that entered the EoS.

    Args:
        arrays: ``step, norm, eta_eff, loss, sharpness, eos`` (one row per recorded step).
        eta, wd: the run's hyperparameters.
        onset: the run's EoS onset step (``None`` if it never reached 2).
        distance: optional distance of each recorded direction to ``Gamma`` (amplitude).

    Returns a dict with: ``onset``, ``predicted_onset`` (from step 0's ``eta_eff`` and the
    sharpness just before the onset, exact discrete form) and its relative error; the mean and
    spread of the EoS quantity over the last quarter; ``S`` at the onset and at the end; the
    ratios ``<|w|^2> / (eta <S> / 2)``, ``<loss> / (eta wd <S> / 4)`` and
    ``<A^2> / (eta wd / 2)`` over the last quarter [derived predictions, all expected ~1].
    """
    step = np.asarray(arrays["step"])
    eos = np.asarray(arrays["eos"])
    sharp = np.asarray(arrays["sharpness"])
    n = len(step)
    q = slice(3 * n // 4, n)
    out: dict[str, Any] = {
        "onset": onset,
        "phase1_end": phase1_end(step, np.asarray(arrays["loss"]), onset),
        "eos_mean_last_quarter": float(np.nanmean(eos[q])),
        "eos_std_last_quarter": float(np.nanstd(eos[q])),
        "sharpness_start": float(sharp[0]),
        "sharpness_end": float(sharp[-1]),
        "sharpness_mean_last_quarter": float(np.nanmean(sharp[q])),
    }
    if onset is None:
        return out
    before = max(int(np.searchsorted(step, onset)) - 1, 0)
    eos0 = float(arrays["eta_eff"][0]) * float(sharp[before])
    pred = predicted_eos_onset(eta, wd, eos0)
    s_q = float(np.nanmean(sharp[q]))
    out.update(
        {
            "predicted_onset": pred,
            "predicted_onset_first_order": predicted_eos_onset(eta, wd, eos0, exact=False),
            "onset_rel_error": (onset - pred) / pred if pred > 0 else math.nan,
            "sharpness_at_onset": float(sharp[before + 1 if before + 1 < n else before]),
            "norm_sq_ratio": float(np.mean(np.asarray(arrays["norm"])[q] ** 2) / (eta * s_q / 2)),
            "loss_ratio": float(np.mean(np.asarray(arrays["loss"])[q]) / (eta * wd * s_q / 4)),
        }
    )
    if distance is not None:
        amp_sq = float(np.mean(np.asarray(distance)[q] ** 2))
        out["amplitude_sq_ratio"] = amp_sq / (eta * wd / 2)
    return out
