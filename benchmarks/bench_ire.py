"""Cost per step of IRE's two selectors against the base GD+WD, on workload W1's network.

    python -m benchmarks.bench_ire [--quick]

Digits (first 1024 samples, standardized), MLP 64-256-256-10 with BatchNorm without affine, MSE
to one-hot, full-batch GD+WD (``theory.optim.transforms.gd_wd_transform``, eta = 0.1, wd = 1e-3)
through
``theory.optim.transforms.run_optimizer``, against IRE (kappa = 4) on it with

* the diagonal mask (the paper's Algorithm 1: sampled-label Fisher diagonal, gamma = 0.7),
  refreshed every K = 10 steps (the paper's default) and every step;
* the exact selector (top-10 Hessian eigenspace by warm-started Lanczos, tangent only with the
  per-layer groups, midpoint), refreshed every K = 10 steps.

Times are medians of warm runs (compilation excluded), reported as ratios to the base in the
same run. The paper quotes about 10% overhead for the mask at K = 10 on GPUs; :func:`main`
prints the measured mask overhead next to that claim. It is a wall-clock ratio on a (possibly
shared) machine, so it lives here and not in the theorem report (``python -m sims check``).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from benchmarks._timing import median_time
from sims import data
from theory.engine import SaveAt
from theory.optim.ire import diagonal_mask, exact_flat, fisher_diagonal, ire
from theory.optim.transforms import gd_wd_transform, run_optimizer
from theory.problems import nets

MASK_K10 = "IRE mask, K=10"
PAPER_OVERHEAD = 1.1  # seconds per step of the mask at K = 10 over the base's, the paper's claim


def _loss(w: Any, loss: Any, predict: Any, x: Any) -> Any:
    return loss(w)


def _predict(w: Any, loss: Any, predict: Any, x: Any) -> Any:
    return predict(w, x)


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
    args = (prob.loss, prob.predict, prob.predict.x_train)
    steps = 40 if quick else 200
    repeats = 1 if quick else 3
    base = gd_wd_transform(0.1, 1e-3)
    fisher = fisher_diagonal(_predict, loss="mse")
    variants = {
        "GD+WD (base)": base,
        MASK_K10: ire(base, 4.0, diagonal_mask(fisher, 0.7, refresh_every=10)),
        "IRE mask, K=1": ire(base, 4.0, diagonal_mask(fisher, 0.7, refresh_every=1)),
        "IRE exact k=10, K=10": ire(
            base,
            4.0,
            exact_flat(
                _loss, 10, radial=False, groups=prob.groups, refresh_every=10, point="midpoint"
            ),
        ),
    }
    rows = []
    t_base = None
    for label, opt in variants.items():
        # run_optimizer returns NumPy arrays: each call waits for the device.
        def one_run(opt: Any = opt) -> Any:
            return run_optimizer(
                opt, _loss, prob.w0, steps, loss_args=args, saveat=SaveAt(every=steps)
            )

        seconds, _ = median_time(one_run, repeats)
        t_base = seconds if t_base is None else t_base
        rows.append(
            {
                "workload": f"W1 network, {steps} steps, {label}",
                "ms_per_step": 1e3 * seconds / steps,
                "ratio_to_base": seconds / t_base,
                "paper": f"about {PAPER_OVERHEAD:g} (GPU)" if label == MASK_K10 else "",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    ns = parser.parse_args()
    rows = measure(ns.quick)
    for r in rows:
        print(f"{r['workload']:55s} {r['ms_per_step']:8.2f} ms/step  x{r['ratio_to_base']:.2f}")
    mask = next(r for r in rows if r["workload"].endswith(MASK_K10))
    print(
        f"IRE mask overhead at K=10: x{mask['ratio_to_base']:.2f} per step of GD+WD's "
        f"(the paper: about x{PAPER_OVERHEAD:g} on GPUs; a wall-clock ratio on this machine)"
    )


if __name__ == "__main__":
    main()
