"""Classify a tracked GD+WD run into a dynamical regime (the regime map, docs/regimes.md).

Input: the recorded rows of one run (plain arrays, as stored by the simulations): the steps, the
EoS quantity ``eta * lambda_1(hess L(w_t))`` at the iterates, optionally the same quantity at the
midpoints ``(w_t + w_{t+1}) / 2`` of consecutive iterates (NaN on rows where it was not
measured), the spherical sharpness (at iterates and/or midpoints, NaN allowed) and the training
loss. :func:`classify_regime` applies the thresholds of a :class:`RegimeCriteria` and returns a
:class:`RegimeResult`: the regime, the reasons, and every number the decision used.

The regimes, tested in this order (thresholds are the fields of :class:`RegimeCriteria`):

``"diverged"``
    a non-finite loss or EoS quantity on a recorded row.
``"no_eos"``
    the EoS quantity at the iterates never reaches ``edge`` (2) on a recorded row: no Edge of
    Stability within the budget.
``"unresolved"``
    it reaches ``edge``, but the *settled phase* (rows from ``settle_frac`` of the way between
    the onset and the last row) has fewer than ``min_settled_rows`` rows with a measured
    midpoint EoS quantity: the onset came too late in the budget to tell.
``"catapult"``
    at least ``min_cycles`` catapult cycles after the onset. A cycle is a loss spike, the loss
    reaching ``catapult_loss_factor`` times its lowest value since the onset or since the last
    cycle ended, followed by a relaxation: the EoS quantity at the iterates falling below
    ``catapult_relax`` (the spike grows ``|w|``, which lowers the effective learning rate
    ``eta / |w|^2`` and throws the run below the edge; weight decay then brings it back).
``"tame"``
    over the settled phase the midpoint EoS quantity averages ``edge +- tame_tol``, the iterates'
    average is at most ``edge + iterate_tol`` (the period-2 oscillation is small) and the
    spherical sharpness falls: its mean over the last third of the settled rows where it was
    measured is at most ``1 - min_fall`` times its mean over the first third. LLA22's regime:
    GD follows the sharpness-reduction flow.
``"inflated"``
    settled, no catapult cycles, and the oscillation inflates the EoS quantity: the midpoint
    average above ``edge + tame_tol`` or the iterates' average above ``edge + iterate_tol``.
``"below_edge"``
    settled, no catapult cycles, not inflated, and the midpoint average below
    ``edge - tame_tol`` (the run left the edge, e.g. after a single catapult).
``"stalled"``
    at the edge like a tame run, but the spherical sharpness does not fall.

Where the EoS quantity is measured matters: in an inflated EoS the oscillation inflates it at the
iterates (measured on digits, docs/regimes.md), so the midpoint value is the proxy for the point
on the manifold that the iterates straddle. Without midpoint values (``eos_mid=None``) the
iterate values are used in their place, and the result says so (``eos_mid_source``).

Pure NumPy, no JAX: users can classify their own runs (``theory.analysis.regimes.classify_regime``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "REGIMES",
    "RegimeCriteria",
    "RegimeResult",
    "catapult_cycles",
    "classify_regime",
]

REGIMES = (
    "diverged",
    "no_eos",
    "unresolved",
    "catapult",
    "tame",
    "inflated",
    "below_edge",
    "stalled",
)


def _finite_pos(x: Any, name: str) -> float:
    try:
        val = float(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"RegimeCriteria.{name} must be a positive float, got {x!r}") from err
    if not (math.isfinite(val) and val > 0):
        raise ValueError(f"RegimeCriteria.{name} must be a positive finite float, got {x!r}")
    return val


@dataclass(frozen=True)
class RegimeCriteria:
    """The thresholds of :func:`classify_regime` (module docstring), validated on construction.

    Attributes:
        edge: the stability threshold of the EoS quantity (2 for GD).
        tame_tol: half-width of the band around ``edge`` for the settled midpoint average.
        iterate_tol: the iterates' settled average may exceed ``edge`` by at most this in a
            tame run (a larger excess: the oscillation inflates ``lambda_1``, inflated).
        settle_frac: the settled phase starts this fraction of the way from the onset to the
            last row.
        min_settled_rows: midpoint rows needed in the settled phase to classify.
        min_fall: the spherical sharpness must fall by at least this fraction over the settled
            phase (last third against first third of its measured rows) in a tame run.
        catapult_loss_factor: a loss spike is the loss reaching this multiple of its floor.
        catapult_relax: a spike completes a cycle when the iterates' EoS quantity then falls
            below this value.
        min_cycles: completed catapult cycles that make the regime ``"catapult"``.
    """

    edge: float = 2.0
    tame_tol: float = 0.1
    iterate_tol: float = 0.5
    settle_frac: float = 0.25
    min_settled_rows: int = 5
    min_fall: float = 0.02
    catapult_loss_factor: float = 10.0
    catapult_relax: float = 1.5
    min_cycles: int = 2

    def __post_init__(self) -> None:
        for name in ("edge", "tame_tol", "iterate_tol", "catapult_relax"):
            _finite_pos(getattr(self, name), name)
        if _finite_pos(self.catapult_loss_factor, "catapult_loss_factor") <= 1:
            raise ValueError(
                f"RegimeCriteria.catapult_loss_factor must be > 1, got {self.catapult_loss_factor}"
            )
        if self.catapult_relax >= self.edge:
            raise ValueError(
                f"RegimeCriteria.catapult_relax ({self.catapult_relax}) must be below edge "
                f"({self.edge})"
            )
        for name in ("settle_frac", "min_fall"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 <= val < 1:
                raise ValueError(f"RegimeCriteria.{name} must be in [0, 1), got {val!r}")
        for name in ("min_settled_rows", "min_cycles"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
                raise ValueError(f"RegimeCriteria.{name} must be a positive int, got {val!r}")


@dataclass(frozen=True)
class RegimeResult:
    """The regime of one run, why, and the measurements the decision used.

    ``measurements`` (NaN or None where not defined): ``onset_step`` (first recorded row with
    the iterates' EoS quantity ``>= edge``), ``eos_start``, ``eos_max``, ``eos_mid_mean``,
    ``eos_mid_std`` (settled phase), ``eos_mid_source`` (``"midpoints"`` or ``"iterates"``),
    ``eos_iter_mean``, ``eos_iter_q95`` (settled), ``settled_rows``, ``sharpness_start``
    (first measured), ``sharpness_pre_onset`` (last measured before the onset),
    ``sharpening`` (their ratio: progressive sharpening when > 1), ``sharpness_settled_start``,
    ``sharpness_end``, ``sharpness_ratio`` (end / settled start), ``cycles`` (completed catapult
    cycles), ``spikes`` (loss spikes), ``loss_start``, ``loss_at_onset``, ``loss_end``,
    ``norm_growth`` (largest ratio of ``|w|`` between a row and the previous one after the
    onset; > 1 only when the gradient term outgrows the decay).
    """

    regime: str
    reasons: tuple[str, ...]
    measurements: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples as lists)."""
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        return out


def _column(x: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have the shape of step ({n},), got {arr.shape}")
    return arr


def catapult_cycles(
    loss: np.ndarray, eos: np.ndarray, criteria: RegimeCriteria = RegimeCriteria()
) -> tuple[int, int]:
    """``(spikes, completed cycles)`` in rows after the onset (module docstring, ``catapult``).

    ``loss`` and ``eos`` (at the iterates) start at the onset row. A spike is the loss reaching
    ``catapult_loss_factor`` times its floor (its lowest value since the start or since the last
    cycle ended); the cycle completes when ``eos`` then falls below ``catapult_relax``, and the
    floor restarts from there.
    """
    spikes = cycles = 0
    floor = math.inf
    in_spike = False
    for lo, e in zip(np.asarray(loss, float), np.asarray(eos, float), strict=True):
        if not in_spike:
            if np.isfinite(lo) and lo >= criteria.catapult_loss_factor * floor:
                in_spike = True
                spikes += 1
            elif np.isfinite(lo):
                floor = min(floor, lo)
        elif np.isfinite(e) and e < criteria.catapult_relax:
            in_spike = False
            cycles += 1
            floor = lo if np.isfinite(lo) else math.inf
    return spikes, cycles


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.mean(x)) if x.size else math.nan


def classify_regime(
    step: Any,
    eos: Any,
    loss: Any,
    *,
    eos_mid: Any = None,
    sharpness: Any = None,
    sharpness_mid: Any = None,
    norm: Any = None,
    criteria: RegimeCriteria | None = None,
) -> RegimeResult:
    """The regime of one tracked run (module docstring for the regimes and their order).

    Args:
        step: ``(n,)`` increasing recorded steps.
        eos: ``(n,)`` EoS quantity ``eta * lambda_1(hess L(w_t))`` at the iterates (NaN on rows
            where it was not tracked).
        loss: ``(n,)`` training loss at the iterates.
        eos_mid: ``(n,)`` the EoS quantity at the midpoints ``(w_t + w_{t+1}) / 2`` (NaN where
            not measured); ``None``: the iterate values stand in for it.
        sharpness: ``(n,)`` spherical sharpness at the iterates (NaN allowed), or None.
        sharpness_mid: ``(n,)`` spherical sharpness at the midpoints (NaN allowed), or None;
            preferred over ``sharpness`` where both are given (at the EoS the oscillation
            inflates the iterates' value).
        norm: ``(n,)`` ``|w_t|``, or None (only reported: ``norm_growth``).
        criteria: thresholds (default :class:`RegimeCriteria`).

    Returns:
        :class:`RegimeResult`.

    Raises:
        ValueError: arrays of mismatched shapes, fewer than 2 rows, steps not increasing.
    """
    crit = RegimeCriteria() if criteria is None else criteria
    if not isinstance(crit, RegimeCriteria):
        raise TypeError(f"criteria must be a RegimeCriteria, got {crit!r}")
    st = np.asarray(step, dtype=np.float64)
    if st.ndim != 1 or st.shape[0] < 2:
        raise ValueError(f"step must be a 1-D array of at least 2 rows, got shape {st.shape}")
    if not np.all(np.diff(st) > 0):
        raise ValueError("step must be strictly increasing")
    n = st.shape[0]
    e_it = _column(eos, n, "eos")
    lo = _column(loss, n, "loss")
    mid_given = eos_mid is not None
    e_mid = _column(eos_mid, n, "eos_mid") if mid_given else e_it
    s_it = _column(sharpness, n, "sharpness") if sharpness is not None else np.full(n, np.nan)
    s_mid = _column(sharpness_mid, n, "sharpness_mid") if sharpness_mid is not None else None
    s_use = np.where(np.isfinite(s_mid), s_mid, s_it) if s_mid is not None else s_it
    nrm = _column(norm, n, "norm") if norm is not None else None

    m: dict[str, Any] = {
        "onset_step": None,
        "eos_start": float(e_it[0]),
        "eos_max": float(np.nanmax(e_it)) if np.any(np.isfinite(e_it)) else math.nan,
        "eos_mid_source": "midpoints" if mid_given else "iterates",
        "loss_start": float(lo[0]),
        "loss_end": float(lo[-1]),
        "settled_rows": 0,
        "cycles": 0,
        "spikes": 0,
    }
    measured_s = np.flatnonzero(np.isfinite(s_use))
    m["sharpness_start"] = float(s_use[measured_s[0]]) if measured_s.size else math.nan
    bad = ~np.isfinite(lo) | (np.isinf(e_it))
    if np.any(bad):
        first = int(np.flatnonzero(bad)[0])
        m["diverged_step"] = float(st[first])
        return RegimeResult("diverged", (f"non-finite loss or EoS at step {st[first]:g}",), m)
    above = np.flatnonzero(np.isfinite(e_it) & (e_it >= crit.edge))
    if not above.size:
        return RegimeResult(
            "no_eos",
            (f"eta * lambda_1 at the iterates stays below {crit.edge:g} (max {m['eos_max']:.3g})",),
            m,
        )
    i_on = int(above[0])
    m["onset_step"] = float(st[i_on])
    m["loss_at_onset"] = float(lo[i_on])
    pre = measured_s[measured_s < i_on]
    m["sharpness_pre_onset"] = float(s_use[pre[-1]]) if pre.size else math.nan
    m["sharpening"] = m["sharpness_pre_onset"] / m["sharpness_start"] if pre.size else math.nan
    if nrm is not None and n - i_on >= 2:
        ratios = nrm[i_on + 1 :] / nrm[i_on:-1]
        m["norm_growth"] = float(np.nanmax(ratios))

    spikes, cycles = catapult_cycles(lo[i_on:], e_it[i_on:], crit)
    m["spikes"], m["cycles"] = spikes, cycles

    settled = st >= st[i_on] + crit.settle_frac * (st[-1] - st[i_on])
    rows_mid = np.flatnonzero(settled & np.isfinite(e_mid))
    m["settled_rows"] = int(rows_mid.size)
    m["eos_mid_mean"] = _mean(e_mid[rows_mid])
    m["eos_mid_std"] = float(np.std(e_mid[rows_mid])) if rows_mid.size else math.nan
    m["eos_iter_mean"] = _mean(e_it[settled])
    fin_it = e_it[settled & np.isfinite(e_it)]
    m["eos_iter_q95"] = float(np.quantile(fin_it, 0.95)) if fin_it.size else math.nan
    rows_s = np.flatnonzero(settled & np.isfinite(s_use))
    if rows_s.size >= 3:
        third = max(1, rows_s.size // 3)
        m["sharpness_settled_start"] = float(np.mean(s_use[rows_s[:third]]))
        m["sharpness_end"] = float(np.mean(s_use[rows_s[-third:]]))
        m["sharpness_ratio"] = m["sharpness_end"] / m["sharpness_settled_start"]
    else:
        m["sharpness_settled_start"] = m["sharpness_end"] = m["sharpness_ratio"] = math.nan

    if cycles >= crit.min_cycles:
        return RegimeResult(
            "catapult",
            (
                f"{cycles} catapult cycles (loss x{crit.catapult_loss_factor:g} over its floor, "
                f"then eta * lambda_1 < {crit.catapult_relax:g}) >= {crit.min_cycles}",
            ),
            m,
        )
    if rows_mid.size < crit.min_settled_rows:
        return RegimeResult(
            "unresolved",
            (
                f"onset at step {st[i_on]:g}: {rows_mid.size} settled rows with a midpoint value "
                f"< {crit.min_settled_rows}",
            ),
            m,
        )
    mid, it = m["eos_mid_mean"], m["eos_iter_mean"]
    inflated = []
    if mid > crit.edge + crit.tame_tol:
        inflated.append(f"midpoint mean {mid:.3f} > {crit.edge + crit.tame_tol:g}")
    if it > crit.edge + crit.iterate_tol:
        inflated.append(f"iterate mean {it:.3f} > {crit.edge + crit.iterate_tol:g}")
    if inflated:
        return RegimeResult("inflated", tuple(inflated), m)
    if mid < crit.edge - crit.tame_tol:
        return RegimeResult(
            "below_edge", (f"midpoint mean {mid:.3f} < {crit.edge - crit.tame_tol:g}",), m
        )
    ratio = m["sharpness_ratio"]
    at_edge = f"midpoint mean {mid:.3f} within {crit.edge:g} +- {crit.tame_tol:g}"
    if np.isfinite(ratio) and ratio <= 1 - crit.min_fall:
        return RegimeResult("tame", (at_edge, f"spherical sharpness x{ratio:.3f} (falls)"), m)
    why = (
        f"spherical sharpness x{ratio:.3f} > {1 - crit.min_fall:g} (does not fall)"
        if np.isfinite(ratio)
        else "spherical sharpness not measured on 3 settled rows"
    )
    return RegimeResult("stalled", (at_edge, why), m)
