"""Timing shared by the benchmarks: medians of warm runs (the first call compiles)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """``(median seconds over repeats, last output)``, after one untimed warm-up call."""
    out = fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out
