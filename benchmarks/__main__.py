"""``python -m benchmarks [--quick] [--out DIR]``: every benchmark, one JSON and one markdown table.

Runs ``bench_core`` (Lanczos cold/warm HVP counts; cost of tracking sharpness every step),
``bench_flow`` (flow vs GD to tau = 4), ``bench_sweep`` (16 configurations as a sweep vs one by
one), ``bench_networks`` (workload W1), ``bench_ire`` (IRE's selectors on W1's network) and
``bench_memory`` (peak memory of chunked vs full-batch objectives, XLA's analysis),
``bench_trackers`` (the add-on trackers on W1) and ``bench_floor`` (RitzTracker,
RayleighTracker and LanczosTracker on W1 and W1-EoS against the floor) and ``bench_conv``
(``nn.Conv`` against ``PatchConv`` at the top level and inside ``lax.scan``), then writes
``<out>/report.json`` and ``<out>/report.md`` (default ``results/bench``). Every number is a
ratio measured in the same run or an error; seconds are medians of warm runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
import uuid
from pathlib import Path
from typing import Any

MODULES = (
    "bench_core",
    "bench_flow",
    "bench_sweep",
    "bench_networks",
    "bench_ire",
    "bench_memory",
    "bench_trackers",
    "bench_floor",
    "bench_conv",
)


def _table(name: str, rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    cols = list(rows[0])
    out = [f"### {name}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return [*out, ""]


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {MODULES})")
    ns = parser.parse_args()
    names = ns.names or [m for m in MODULES if (Path(__file__).parent / f"{m}.py").exists()]
    report: dict[str, Any] = {"quick": ns.quick, "platform": platform.platform(), "results": {}}
    lines = ["# Benchmarks", ""]
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        t0 = time.perf_counter()
        result = module.measure(ns.quick)
        elapsed = time.perf_counter() - t0
        report["results"][name] = {"rows": result, "seconds": elapsed}
        print(f"{name}: done in {elapsed:.1f} s")
        groups = result if isinstance(result, dict) else {name: result}
        for title, rows in groups.items():
            lines += _table(f"{name}: {title}" if title != name else name, rows)
    import jax

    report["jax"] = jax.__version__
    report["devices"] = [str(d) for d in jax.devices()]
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "report.json", json.dumps(report, indent=2, default=str))
    _write(out / "report.md", "\n".join(lines) + "\n")
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}")


if __name__ == "__main__":
    main()
