"""64 GD+WD configurations as one vmapped, sharded sweep against 64 runs one by one.

    python -m benchmarks.bench_sweep [--quick]

An 8 x 8 grid over (eta, wd) on curved_manifold (D = 6, float64), untracked and with the
sharpness tracked every 10 steps. Times are medians of warm runs (compiled once before); the
ratio one-by-one / sweep is the speed-up. Also reports the largest deviation between the two
before any EoS onset (rounding only).
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # a script, not library code

from benchmarks._timing import median_time  # noqa: E402
from theory.gd import gd_wd  # noqa: E402
from theory.problems import curved_manifold  # noqa: E402
from theory.sweep import gd_wd_sweep  # noqa: E402


def measure(quick: bool = False) -> list[dict[str, Any]]:
    prob = curved_manifold()
    w0 = jnp.asarray(prob.start) * 0.6
    etas, wds = np.meshgrid(np.geomspace(0.02, 0.3, 8), np.geomspace(1e-3, 2e-2, 8))
    etas, wds = etas.ravel(), wds.ravel()
    steps = 1000 if quick else 4000
    repeats = 1 if quick else 3
    # EoS onsets (from tracked one-by-one runs): deviations are compared before them, where
    # rounding differences are not amplified by the oscillation.
    onsets = [
        gd_wd(
            prob.loss,
            w0,
            eta=e,
            wd=d,
            steps=steps,
            record_every=10,
            sharpness_every=1,
            track_sharpness=True,
            record_iterates=False,
        ).onset_step
        for e, d in zip(etas, wds, strict=True)
    ]
    rows = []
    for label, extra in (
        ("untracked", {"track_sharpness": False, "record_every": 10}),
        ("sharpness every 10 steps", {"record_every": 10, "sharpness_every": 10}),
    ):
        kw = {"steps": steps, "perturbation": 1e-10, **extra}

        def sweep(kw: dict[str, Any] = kw) -> Any:
            return gd_wd_sweep(prob.loss, w0, eta=etas, wd=wds, **kw)

        def one_by_one(kw: dict[str, Any] = kw) -> list[Any]:
            return [
                gd_wd(prob.loss, w0, eta=e, wd=d, key=jax.random.PRNGKey(i), **kw)
                for i, (e, d) in enumerate(zip(etas, wds, strict=True))
            ]

        t_sweep, sw = median_time(sweep, repeats)
        t_seq, seq = median_time(one_by_one, repeats)
        dev = 0.0
        for i, ref in enumerate(seq):
            cut = onsets[i] if onsets[i] is not None else steps + 1
            keep = ref.step < max(cut, 1)
            dev = max(dev, float(np.max(np.abs(sw.w[i][keep] - ref.w[keep]))))
        rows.append(
            {
                "workload": f"64 configs, {steps} steps, {label}",
                "devices": len(jax.devices()),
                "sweep_seconds": t_sweep,
                "one_by_one_seconds": t_seq,
                "speedup": t_seq / t_sweep,
                "max_deviation_before_onset": dev,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    ns = parser.parse_args()
    for r in measure(ns.quick):
        print(
            f"{r['workload']:52s} sweep {r['sweep_seconds']:7.3f} s  one-by-one "
            f"{r['one_by_one_seconds']:7.3f} s  speed-up {r['speedup']:6.1f}x  "
            f"(max deviation {r['max_deviation_before_onset']:.1e}, {r['devices']} device(s))"
        )


if __name__ == "__main__":
    main()
