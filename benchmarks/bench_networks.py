"""Workload W1: the cost of tracking sharpness on a normalized MLP, every 10 steps and every step.

    python -m benchmarks.bench_networks [--quick]

Digits (first 1024 samples, standardized), MLP 64-256-256-10 with BatchNorm without affine after
each hidden linear layer, ReLU, no biases, fixed last layer, MSE to one-hot; full-batch GD+WD with
eta = 0.1, wd = 1e-3 for 1000 steps, float32. Times are medians of warm runs (the compilation
is excluded); "every step" uses Lanczos with the default float32 tolerance (relative Ritz
residual 1e-3, eigenvalue error well below 1e-3). Target (issue 4): every step <= 2x untracked.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from benchmarks._timing import median_time
from sims import data
from theory import nets
from theory.gd import gd_wd


def measure(quick: bool = False) -> list[dict[str, Any]]:
    ds = data.digits(n_train=1024)
    prob = nets.make_problem(
        nets.mlp([256, 256], norm="batch"),
        ds.x_train,
        ds.y_train,
        ds.x_test,
        ds.y_test,
        loss="mse",
        num_outputs=10,
        seed=0,
        dtype=np.float32,
    )
    steps = 200 if quick else 1000
    repeats = 1 if quick else 3
    common = {
        "eta": 0.1,
        "wd": 1e-3,
        "steps": steps,
        "groups": prob.groups,
        "record_iterates": False,
        "check_invariance": False,
    }
    rows = []
    base = None
    for label, extra in (
        ("untracked", {"track_sharpness": False, "record_every": 10}),
        ("sharpness every 10 steps", {"record_every": 10, "sharpness_every": 10}),
        ("sharpness every step", {"record_every": 10, "sharpness_every": 1}),
    ):
        seconds, res = median_time(
            lambda extra=extra: gd_wd(prob.loss, prob.w0, **common, **extra), repeats
        )
        base = seconds if base is None else base
        rows.append(
            {
                "workload": f"W1 digits MLP 64-256-256-10 BN, {steps} steps, {label}",
                "seconds": seconds,
                "ratio_to_untracked": seconds / base,
                "mean_hvps_per_tracked_step": float(np.mean(res.lanczos_matvecs[:-1]))
                if extra.get("track_sharpness", True)
                else 0.0,
                "final_eos": float(res.eos[-1]) if extra.get("track_sharpness", True) else None,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    ns = parser.parse_args()
    for r in measure(ns.quick):
        print(
            f"{r['workload']:70s} {r['seconds']:8.2f} s  x{r['ratio_to_untracked']:.2f}  "
            f"HVPs/tracked step {r['mean_hvps_per_tracked_step']:.2f}"
        )


if __name__ == "__main__":
    main()
