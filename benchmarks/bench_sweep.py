"""16 tracked GD+WD configurations as one sweep against 16 runs one by one (issue 12's workload).

    python -m benchmarks.bench_sweep [--quick] [--devices N]

curved_manifold (D = 6, float64), eta from 0.03 to 0.3 (16 values, geometric), wd = 3e-3, 3000
steps, a row every 10 steps; untracked, and with the sharpness tracked every 10 steps by the
same tracker as ``gd_wd`` (``LanczosTracker(every=10)``: parity warm start, residual tolerance
``3 sqrt(eps)``, 24 HVPs cap). Columns:

* ``warm``: medians of repeated calls after a first one (compiled programs reused), sweep and
  one by one (``gd_wd`` sixteen times);
* ``cold``: the first call of each, compilation included (what a user waits for once);
* ``speed-up``: one-by-one seconds over sweep seconds;
* ``max dev``: the largest difference of iterates, EoS quantity and sharpness between the sweep
  and the one-by-one runs on rows before each configuration's EoS onset.

``--devices N`` (N > 1) reruns the measurement in a subprocess with N forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which must be set before JAX starts):
the sweep then runs one program per device, in parallel on the machine's cores, while the
one-by-one runs use one device as a user's loop would.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # a script, not library code

from benchmarks._timing import median_time  # noqa: E402
from theory.engine import LanczosTracker, NoTracking, SaveAt  # noqa: E402
from theory.engine.gd import gd_wd  # noqa: E402
from theory.engine.sweep import gd_wd_sweep  # noqa: E402
from theory.problems.analytic import curved_manifold  # noqa: E402

STEPS, WD, EVERY = 3000, 3e-3, 10


def _measure_here(quick: bool) -> list[dict[str, Any]]:
    prob = curved_manifold()
    w0 = jnp.asarray(prob.start) * 0.6
    etas = np.geomspace(0.03, 0.3, 16)
    steps = 1000 if quick else STEPS
    repeats = 1 if quick else 5
    # EoS onsets of the tracked runs: deviations are compared before them (after it, the EoS
    # oscillation amplifies rounding differences exponentially).
    onsets = [
        gd_wd(
            prob.loss,
            w0,
            eta=e,
            wd=WD,
            steps=steps,
            tracker=LanczosTracker(every=1),
            saveat=SaveAt(every=EVERY),
        ).onset_step
        for e in etas
    ]
    rows = []
    for label, extra in (
        ("untracked", {"tracker": NoTracking()}),
        (f"sharpness every {EVERY} steps", {"tracker": LanczosTracker(every=EVERY)}),
    ):
        kw: dict[str, Any] = {"steps": steps, "saveat": SaveAt(every=EVERY), **extra}

        def sweep(kw: dict[str, Any] = kw) -> Any:
            return gd_wd_sweep(prob.loss, w0, eta=etas, wd=WD, seeds=np.zeros(16, int), **kw)

        def one_by_one(kw: dict[str, Any] = kw) -> list[Any]:
            return [gd_wd(prob.loss, w0, eta=e, wd=WD, **kw) for e in etas]

        jax.clear_caches()
        t0 = time.perf_counter()
        sweep()
        cold_sweep = time.perf_counter() - t0
        t0 = time.perf_counter()
        one_by_one()
        cold_seq = time.perf_counter() - t0
        t_sweep, sw = median_time(sweep, repeats)
        t_seq, seq = median_time(one_by_one, repeats)
        dev = 0.0
        for i, ref in enumerate(seq):
            cut = onsets[i] if onsets[i] is not None else steps + 1
            keep = ref.step < max(cut, 1)
            for name in ("w", "eos", "sharpness"):
                a, b = getattr(sw, name)[i][keep], getattr(ref, name)[keep]
                if np.all(np.isnan(b)):
                    continue
                dev = max(dev, float(np.nanmax(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))))
        rows.append(
            {
                "workload": f"16 configs, {steps} steps, {label}",
                "devices": len(jax.devices()),
                "sweep_warm_s": t_sweep,
                "one_by_one_warm_s": t_seq,
                "speedup_warm": t_seq / t_sweep,
                "sweep_cold_s": cold_sweep,
                "one_by_one_cold_s": cold_seq,
                "speedup_cold": cold_seq / cold_sweep,
                "max_rel_dev_before_onset": dev,
            }
        )
    return rows


def measure(quick: bool = False, devices: int = 2) -> list[dict[str, Any]]:
    """One device in this process, then ``devices`` forced host devices in a subprocess."""
    rows = _measure_here(quick)
    if devices > 1:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        cmd = [sys.executable, "-m", "benchmarks.bench_sweep", "--json", "--devices", "1"]
        out = subprocess.run(
            cmd + (["--quick"] if quick else []),
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
        )
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--devices", type=int, default=2, help="also run with N host devices")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line")
    ns = parser.parse_args()
    rows = measure(ns.quick, ns.devices)
    if ns.json:
        print(json.dumps(rows))
        return
    for r in rows:
        print(
            f"{r['workload']:44s} {r['devices']} dev  warm: sweep {r['sweep_warm_s']:6.3f} s, "
            f"one-by-one {r['one_by_one_warm_s']:6.3f} s, x{r['speedup_warm']:5.2f}  cold: "
            f"{r['sweep_cold_s']:6.2f} s vs {r['one_by_one_cold_s']:6.2f} s, "
            f"x{r['speedup_cold']:5.2f}  (max rel dev {r['max_rel_dev_before_onset']:.1e})"
        )


if __name__ == "__main__":
    main()
