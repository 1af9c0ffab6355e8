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

The second table (:func:`measure_sgd`) is the setting of the ``ire_practice`` study and of the
paper's Algorithm 1: minibatch SGD (momentum 0.9, coupled weight decay) through
``theory.optim.stochastic.run_optimizer_minibatch`` on the LayerNorm MLP of ``ire_practice``
(digits, batch 64, cross-entropy), against SGD-IRE with the Fisher mask refreshed every
K = 1, 10 and 100 steps. A step's time is ``t(n) / n`` for a whole warm run of ``n = 2000``
steps (compilation excluded; the fixed cost of a call, a few milliseconds, is under 1% of a
run), median of 7 interleaved repeats. Beside it, the floor model: a refresh costs one
sampled-label Fisher diagonal (a forward pass and one gradient at sampled labels) plus the mask
selection (:func:`theory.optim.ire.smallest_mask`), so the ratio to SGD is at least
``1 + (t_fisher + t_select) / (K t_sgd)``, with ``t_sgd`` SGD's measured time per step in its
run and ``t_fisher``, ``t_select`` each timed inside a compiled loop on batches of the same
size; ``t_fisher`` is also given in units of one SGD step (gradient and update) timed the same
way, what one Fisher diagonal costs in gradients. The amplification itself (one multiply-add
over the parameters) is left out of the floor. The machine's load (``os.getloadavg``) is
printed before and after: it is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._timing import median_time
from sims import data
from theory.engine import SaveAt
from theory.optim.ire import (
    diagonal_mask,
    exact_flat,
    fisher_diagonal,
    ire,
    mask_size,
    smallest_mask,
)
from theory.optim.stochastic import run_optimizer_minibatch
from theory.optim.transforms import gd_wd_transform, run_optimizer
from theory.problems import nets

MASK_K10 = "IRE mask, K=10"
PAPER_OVERHEAD = 1.1  # seconds per step of the mask at K = 10 over the base's, the paper's claim


def _loss(w: Any, loss: Any, predict: Any, x: Any) -> Any:
    return loss(w)


def _predict(w: Any, loss: Any, predict: Any, x: Any) -> Any:
    return predict(w, x)


def measure_full_batch(quick: bool = False) -> list[dict[str, Any]]:
    """The full-batch table (W1's network, module docstring)."""
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


SGD_INTERVALS = (1, 10, 100)


def _sgd_batch_loss(w: Any, chunk: Any, x: Any, y: Any) -> Any:
    return chunk(w, x, y)


def _sgd_batch_logits(w: Any, chunk: Any, x: Any, y: Any) -> Any:
    return chunk.network.train_outputs(w, x)[0]


def _loop_seconds(body: Any, carry: Any, n: int, repeats: int) -> float:
    """Median over ``repeats`` of the seconds per iteration of ``lax.fori_loop(0, n, body,
    carry)``, compiled (the first call compiles, untimed): the cost of ``body`` inside a
    compiled loop, as in a training run, without a call's dispatch."""
    loop = jax.jit(lambda c: jax.lax.fori_loop(0, n, body, c))
    jax.block_until_ready(loop(carry))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(loop(carry))
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def measure_sgd(quick: bool = False) -> list[dict[str, Any]]:
    """Per-step time of SGD-IRE (Fisher mask, K = 1, 10, 100) over minibatch SGD's, and the
    floor model (module docstring)."""
    ds = data.digits(n_train=1024)
    prob = nets.make_problem(
        nets.mlp([64, 64], norm="layer"),
        ds.x_train,
        ds.y_train,
        ds.x_test,
        ds.y_test,
        loss="ce",
        num_outputs=10,
        seed=0,
        dtype=np.float32,
    )
    chunk = nets.NetChunkLoss(prob.loss.network, prob.loss.kind)  # type: ignore[attr-defined]
    xy = (jnp.asarray(ds.x_train, jnp.float32), jnp.asarray(ds.y_train))
    batch, eta, wd, kappa, gamma = 64, 0.1, 5e-4, 2.0, 0.7
    n = 200 if quick else 2000
    repeats = 1 if quick else 7
    base = optax.with_extra_args_support(
        optax.chain(optax.add_decayed_weights(wd), optax.sgd(eta, momentum=0.9))
    )
    fisher = fisher_diagonal(_sgd_batch_logits, loss="cross_entropy")
    variants: dict[str, Any] = {"SGD (base)": base}
    for k in SGD_INTERVALS:
        variants[f"SGD-IRE mask, K={k}"] = ire(
            base, kappa, diagonal_mask(fisher, gamma, refresh_every=k)
        )

    def run(opt: Any, steps: int) -> float:
        t0 = time.perf_counter()
        run_optimizer_minibatch(
            opt,
            _sgd_batch_loss,
            prob.w0,
            xy,
            batch,
            steps,
            loss_args=(chunk,),
            saveat=SaveAt(every=steps, iterates=False),
        )
        return time.perf_counter() - t0

    load_before = os.getloadavg()
    for opt in variants.values():  # compile (untimed)
        run(opt, n)
    per_step: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(repeats):  # interleaved: a change of load hits every variant alike
        for label, opt in variants.items():
            per_step[label].append(run(opt, n) / n)
    # The floor model's parts, each inside a compiled loop on batches of the same size (the
    # batch and the Fisher key change with the iteration, so nothing is hoisted out).
    m = mask_size(gamma, int(prob.w0.shape[0]))
    n_loop = 50 if quick else 500

    def batch_at(i: Any) -> tuple[Any, Any]:
        start = (i * batch) % (xy[0].shape[0] - batch)
        xb = jax.lax.dynamic_slice_in_dim(xy[0], start, batch)
        return xb, jax.lax.dynamic_slice_in_dim(xy[1], start, batch)

    def sgd_body(i: Any, c: Any) -> Any:
        w, st = c
        xb, yb = batch_at(i)
        g = jax.grad(_sgd_batch_loss)(w, chunk, xb, yb)
        u, st = base.update(g, st, w, loss_args=(chunk, xb, yb))
        return w + u, st

    def fisher_body(i: Any, c: Any) -> Any:
        w, acc = c
        xb, yb = batch_at(i)
        return w, acc + fisher(w, jax.random.PRNGKey(i), chunk, xb, yb)

    def select_body(i: Any, c: Any) -> Any:
        d, acc = c
        return d, acc + smallest_mask(d + i.astype(d.dtype), m)  # shifted: not hoisted

    w0 = prob.w0
    t_step = _loop_seconds(sgd_body, (w0, base.init(w0)), n_loop, repeats)
    t_fisher = _loop_seconds(fisher_body, (w0, jnp.zeros_like(w0)), n_loop, repeats)
    diag = jax.random.uniform(jax.random.PRNGKey(1), w0.shape, w0.dtype)
    t_select = _loop_seconds(select_body, (diag, jnp.zeros_like(w0)), n_loop, repeats)
    load_after = os.getloadavg()
    t_base = statistics.median(per_step["SGD (base)"])
    rows = []
    for label, times in per_step.items():
        sec = statistics.median(times)
        k = None if label == "SGD (base)" else int(label.rsplit("=", 1)[1])
        floor = 1.0 if k is None else 1.0 + (t_fisher + t_select) / (k * t_base)
        rows.append(
            {
                "workload": f"digits LN-MLP 64-64, batch {batch}, {label}",
                "ms_per_step": 1e3 * sec,
                "ratio_to_base": sec / t_base,
                "floor_model_ratio": floor,
                "paper": f"about {PAPER_OVERHEAD:g} (GPU)" if k == 10 else "",
                "grad_step_in_loop_ms": 1e3 * t_step,
                "fisher_ms": 1e3 * t_fisher,
                "select_ms": 1e3 * t_select,
                "fisher_in_gradient_steps": t_fisher / t_step,
                "load_1min_before_after": f"{load_before[0]:.1f} / {load_after[0]:.1f}",
            }
        )
    return rows


def measure(quick: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Both tables: the full-batch selectors on W1's network and minibatch SGD-IRE's mask at
    refresh intervals 1, 10, 100."""
    return {
        "full-batch selectors (W1 network)": measure_full_batch(quick),
        "minibatch SGD-IRE mask overhead (ire_practice network)": measure_sgd(quick),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sgd-only", action="store_true", help="only the minibatch table")
    ns = parser.parse_args()
    if not ns.sgd_only:
        rows = measure_full_batch(ns.quick)
        for r in rows:
            print(f"{r['workload']:55s} {r['ms_per_step']:8.2f} ms/step  x{r['ratio_to_base']:.2f}")
        mask = next(r for r in rows if r["workload"].endswith(MASK_K10))
        print(
            f"IRE mask overhead at K=10: x{mask['ratio_to_base']:.2f} per step of GD+WD's "
            f"(the paper: about x{PAPER_OVERHEAD:g} on GPUs; a wall-clock ratio on this machine)"
        )
    sgd = measure_sgd(ns.quick)
    print(f"load average (1 min) before / after: {sgd[0]['load_1min_before_after']}")
    for r in sgd:
        print(
            f"{r['workload']:58s} {r['ms_per_step']:7.3f} ms/step  measured "
            f"x{r['ratio_to_base']:.3f}  floor x{r['floor_model_ratio']:.3f}  {r['paper']}"
        )
    r0 = sgd[0]
    print(
        f"inside compiled loops, batch 64: one SGD step (gradient + update) "
        f"{r0['grad_step_in_loop_ms']:.3f} ms, one Fisher diagonal {r0['fisher_ms']:.3f} ms "
        f"(= {r0['fisher_in_gradient_steps']:.2f} gradient steps), one mask selection "
        f"{r0['select_ms']:.3f} ms; floor = 1 + (Fisher + selection) / (K x SGD's step in the run, "
        f"{r0['ms_per_step']:.3f} ms)"
    )


if __name__ == "__main__":
    main()
