"""The cost of the add-on trackers (theory/engine/spectral.py) on workload W1.

    python -m benchmarks.bench_trackers [--quick]

W1's network (built as in :mod:`benchmarks.bench_networks`: digits, MLP 64-256-256-10 with
BatchNorm, MSE, float32, two groups), GD+WD with ``eta = 0.1``, ``wd = 1e-3``, a row every 10
steps. One run per tracker, timed by chunks: the first chunk compiles and is dropped, the time
per run is that of the fastest other chunk (the least disturbed by other jobs). Columns:

* ``x untracked``: that time over the untracked run's (same process);
* ``HVPs/solved row``: all HVPs of the run (``GDResult.block_matvecs``) over the rows on which
  the add-on solves (for the composites: the rows of their most frequent HVP-spending part);
* ``grad-eq/step``: ``1 + (HVPs / steps) * (HVP cost in gradients)``, the cost per step the
  HVPs alone impose, in gradients (the HVP's cost measured by ``bench_networks``'s floor).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks.bench_networks import WD, _floor, _problem
from theory.engine import AbstractTracker, LanczosTracker, NoTracking, SaveAt
from theory.engine.gd import GDResult, gd_wd
from theory.engine.spectral import GroupSharpness, SLQTracker, StepDiagnostics, with_extras
from theory.problems import nets

ETA = 0.1


def _timed(
    prob: nets.NetProblem, tracker: AbstractTracker, steps: int, chunk: int
) -> tuple[float, GDResult]:
    stamps: list[float] = []
    t0 = time.perf_counter()
    res = gd_wd(
        prob.loss,
        prob.w0,
        eta=ETA,
        wd=WD,
        steps=steps,
        groups=prob.groups,
        tracker=tracker,
        saveat=SaveAt(every=10, iterates=False),
        chunk_steps=chunk,
        callback=lambda done, total: stamps.append(time.perf_counter()),
        check_invariance=False,
    )
    times = np.diff([t0, *stamps])[1:]
    return float(np.min(times)) * steps / chunk, res


def configs() -> list[tuple[str, AbstractTracker, int]]:
    """``(label, tracker, period of the solved rows)``."""
    return [
        ("untracked", NoTracking(), 0),
        ("step diagnostics (no HVP)", with_extras(NoTracking(), StepDiagnostics()), 0),
        ("group sharpness every 10", with_extras(NoTracking(), GroupSharpness(every=10)), 10),
        ("SLQ 8 probes x m 32 every 100", with_extras(NoTracking(), SLQTracker(every=100)), 100),
        ("Lanczos every 10 (EoS only)", LanczosTracker(every=10, spherical=False), 10),
        (
            "Lanczos every 10 + SLQ every 100 + diagnostics",
            with_extras(
                LanczosTracker(every=10, spherical=False),
                SLQTracker(every=100),
                StepDiagnostics(),
            ),
            10,
        ),
    ]


def measure(quick: bool = False) -> list[dict[str, Any]]:
    prob = _problem()
    steps, chunk = (200, 100) if quick else (400, 100)
    floor = _floor(prob)
    rows: list[dict[str, Any]] = []
    base = None
    for label, tracker, period in configs():
        seconds, res = _timed(prob, tracker, steps, chunk)
        if base is None:
            base = min(seconds, _timed(prob, tracker, steps, chunk)[0])
            seconds = base
        assert res.block_matvecs is not None
        hvps = float(res.block_matvecs.sum())
        solved = (steps // period + 1) if period else 0
        rows.append(
            {
                "tracker": f"W1 (eta {ETA}), {steps} steps, {label}",
                "seconds": seconds,
                "ratio_to_untracked": seconds / base,
                "hvps_per_solved_row": hvps / solved if solved else 0.0,
                "grad_equivalents_per_step": 1.0 + hvps * floor["tangent"] / steps,
                "hvp_per_grad": floor["tangent"],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 steps")
    ns = parser.parse_args()
    rows = measure(ns.quick)
    print(f"one HVP = {rows[0]['hvp_per_grad']:.2f} gradients")
    head = f"{'s/run':>7s} {'x untracked':>11s} {'HVPs/solved':>11s} {'grad-eq/step':>12s}"
    print(f"{'tracker':72s} {head}")
    for r in rows:
        print(
            f"{r['tracker']:72s} {r['seconds']:7.3f} {r['ratio_to_untracked']:11.2f}"
            f" {r['hvps_per_solved_row']:11.1f} {r['grad_equivalents_per_step']:12.2f}"
        )


if __name__ == "__main__":
    main()
