"""Workload W1: the cost of tracking sharpness on a normalized MLP, every 10 steps and every step.

    python -m benchmarks.bench_networks [--quick]

Digits (first 1024 samples, standardized), MLP 64-256-256-10 with BatchNorm without affine after
each hidden linear layer, ReLU, no biases, fixed last layer, MSE to one-hot; full-batch GD+WD with
wd = 1e-3, float32, two scale-invariance groups (one per layer), a row every 10 steps. Two
learning rates: W1 itself (eta = 0.1: ``eta lambda_1`` stays near 1.1-1.2, no EoS within the
run, but the top eigenpair moves ~5% from step to step) and W1-EoS (eta = 0.3: the EoS
oscillation starts near step 200). Targets (issue 12): every 10 steps <= 1.5x untracked at
relative error <= 1e-3; every step <= 3x at <= 1e-2 and an accurate mode <= 6x at <= 1e-3.

One run per configuration, timed by chunks (``chunk_steps``): the first chunk compiles and is
dropped, the time per run is that of the fastest other chunk (steady state, the least disturbed
by other jobs). Columns:

* ``x untracked``: that time over the untracked run's (same workload, same process).
* ``HVPs/tracked``: all Hessian-vector products of the run (``GDResult.block_matvecs``) over the
  number of tracked steps. The default tracker also solves the spherical sharpness (a second
  operator with two groups) on every recorded row; the other rows track the EoS quantity only
  (``LanczosTracker(spherical=False)``), which is what the targets are about.
* ``model``: ``1 + (all HVPs / steps) * HVP/grad`` with the measured cost of one HVP in
  gradients (the floor table printed first), the ratio the HVPs alone would impose.
* ``err med/95%/max``: distribution of ``|eos - ref| / ref`` over every 2nd recorded row (rows
  carry the value of their own step's tracked solve, so for "every step" they sample the
  per-step tracker), ``ref`` from an independent solve at the same iterate (Lanczos from a
  random start, top-2 pairs to relative residual 1e-4, up to 80 HVPs).

The floor table: one plain gradient; ``jax.linearize`` of the gradient (the primal pass a tracked
step shares with the GD step); one tangent evaluation of that linearization (an HVP inside
Lanczos); ``jax.jvp`` of the gradient (gradient and one HVP fused) — in gradients, best of
interleaved repeats.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sims import data
from theory.core.lanczos import lanczos
from theory.engine import LanczosTracker, NoTracking, SaveAt
from theory.engine.gd import GDResult, gd_wd
from theory.problems import nets

WD = 1e-3
WORKLOADS = (("W1", 0.1), ("W1-EoS", 0.3))


def _problem() -> nets.NetProblem:
    ds = data.digits(n_train=1024)
    return nets.make_problem(
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


def _timed_run(
    prob: nets.NetProblem, eta: float, steps: int, chunk: int, **kw: Any
) -> tuple[float, GDResult]:
    """``(steady-state seconds per `steps` steps, result)`` from the chunk timestamps: the
    fastest chunk after the first (the least disturbed by other jobs on the machine)."""
    stamps: list[float] = []
    t0 = time.perf_counter()
    res = gd_wd(
        prob.loss,
        prob.w0,
        eta=eta,
        wd=WD,
        steps=steps,
        groups=prob.groups,
        saveat=SaveAt(every=10),
        chunk_steps=chunk,
        callback=lambda done, total: stamps.append(time.perf_counter()),
        check_invariance=False,
        warn_above_edge=False,  # W1-EoS starts above the edge on purpose
        **kw,
    )
    times = np.diff([t0, *stamps])[1:]  # the first chunk compiles
    return float(np.min(times)) * steps / chunk, res


@eqx.filter_jit
def _reference(loss: Any, w: jax.Array, eta: float, key: jax.Array) -> jax.Array:
    _, lin = jax.linearize(jax.grad(loss), w)
    v0 = jax.random.normal(key, w.shape, w.dtype)
    res = lanczos(lambda x: eta * lin(x), v0, k=2, max_iters=80, tol=1e-4)
    return res.eigenvalues[0]


def _floor(prob: nets.NetProblem, n: int = 20) -> dict[str, float]:
    """Seconds of each pass over one gradient's (best of interleaved repeats)."""
    loss, w0 = prob.loss, prob.w0

    def scan(f: Any) -> Any:
        def run(w: jax.Array) -> jax.Array:
            def body(w: jax.Array, _: None) -> tuple[jax.Array, None]:
                return f(w), None

            return jax.lax.scan(body, w, None, length=n)[0]

        return jax.jit(run)

    def tangent(w: jax.Array) -> jax.Array:
        _, lin = jax.linearize(jax.grad(loss), w)

        def body(v: jax.Array, _: None) -> tuple[jax.Array, None]:
            x = lin(v)
            return x / jnp.linalg.norm(x), None

        return jax.lax.scan(body, w / jnp.linalg.norm(w), None, length=n)[0]

    def fused(w: jax.Array) -> jax.Array:
        g, hv = jax.jvp(jax.grad(loss), (w,), (w / jnp.linalg.norm(w),))
        return w - 1e-3 * g + 1e-9 * hv

    def primal(w: jax.Array) -> jax.Array:
        g, _ = jax.linearize(jax.grad(loss), w)
        return w - 1e-3 * g

    fns = {
        "grad": scan(lambda w: w - 1e-3 * jax.grad(loss)(w)),
        "linearize": scan(primal),
        "tangent": jax.jit(tangent),
        "fused": scan(fused),
    }
    best = dict.fromkeys(fns, math.inf)
    for fn in fns.values():
        fn(w0).block_until_ready()
    for _ in range(5):  # interleaved, best of 5: the least disturbed by other jobs
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(w0).block_until_ready()
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: best[name] / best["grad"] for name in fns}


def _eos_only(every: int, **kw: Any) -> dict[str, Any]:
    """A tracker of the EoS quantity only (no spherical solve on the rows)."""
    return {"tracker": LanczosTracker(every=every, spherical=False, **kw)}


CONFIGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("untracked", {"tracker": NoTracking()}),
    ("every 10 steps, default (+ spherical on rows)", {"tracker": LanczosTracker(every=10)}),
    ("every 10 steps, residual 1e-2", _eos_only(10, tol=1e-2)),
    ("every 10 steps, error 1e-3", _eos_only(10, stop="error", tol=1e-3)),
    ("every step, default (+ spherical on rows)", {"tracker": LanczosTracker(every=1)}),
    ("every step, residual 1e-2", _eos_only(1, tol=1e-2)),
    ("every step, error 1e-2", _eos_only(1, stop="error", tol=1e-2)),
    ("every step, error 1e-3", _eos_only(1, stop="error", tol=1e-3)),
)


def measure(quick: bool = False) -> list[dict[str, Any]]:
    prob = _problem()
    steps, chunk = (200, 50) if quick else (400, 100)
    floor = _floor(prob)
    rows = []
    for workload, eta in WORKLOADS[:1] if quick else WORKLOADS:
        refs: dict[bytes, float] = {}
        base = None
        for label, extra in CONFIGS:
            seconds, res = _timed_run(prob, eta, steps, chunk, **extra)
            if base is None:  # the untracked run is short: best of three
                again = (_timed_run(prob, eta, steps, chunk, **extra)[0] for _ in "ab")
                seconds = min(seconds, *again)
                base = seconds
            row: dict[str, Any] = {
                "workload": f"{workload} (eta {eta}), {steps} steps, {label}",
                "seconds": seconds,
                "ratio_to_untracked": seconds / base,
                "hvp_per_grad": floor["tangent"],
                "fused_per_grad": floor["fused"],
                "linearize_per_grad": floor["linearize"],
                "mean_hvps_per_tracked_step": 0.0,
                "ratio_model_from_hvps": 1.0,
                "err_median": None,
                "err_95": None,
                "err_max": None,
                "onset_step": res.onset_step,
            }
            tracker = extra.get("tracker")
            every = tracker.every if tracker is not None else extra.get("sharpness_every", 0)
            if every:
                assert res.w is not None and res.block_matvecs is not None
                tracked = -(-steps // every) + 1  # the final row is tracked too
                errs = []
                for i in range(0, len(res.step), 2):
                    w = res.w[i]
                    if w.tobytes() not in refs:  # the iterates do not depend on the tracking
                        key = jax.random.PRNGKey(i)
                        refs[w.tobytes()] = float(_reference(prob.loss, jnp.asarray(w), eta, key))
                    ref = refs[w.tobytes()]
                    errs.append(abs(float(res.eos[i]) - ref) / ref)
                hvps = float(res.block_matvecs.sum())
                row.update(
                    mean_hvps_per_tracked_step=hvps / tracked,
                    ratio_model_from_hvps=1.0 + hvps * floor["tangent"] / steps,
                    err_median=float(np.median(errs)),
                    err_95=float(np.quantile(errs, 0.95)),
                    err_max=float(np.max(errs)),
                )
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 steps of W1 only")
    ns = parser.parse_args()
    rows = measure(ns.quick)
    r0 = rows[0]
    print(
        f"floor, in gradients: linearize {r0['linearize_per_grad']:.2f}, one HVP (tangent) "
        f"{r0['hvp_per_grad']:.2f}, fused gradient+HVP {r0['fused_per_grad']:.2f}"
    )
    print(
        f"{'workload':72s} {'s/run':>7s} {'x untracked':>11s} {'model':>6s} {'HVPs/tracked':>12s}"
        f" {'err med':>8s} {'err 95%':>8s} {'err max':>8s}"
    )
    for r in rows:
        extra = (
            f" {r['ratio_model_from_hvps']:6.2f} {r['mean_hvps_per_tracked_step']:12.2f}"
            f" {r['err_median']:8.1e} {r['err_95']:8.1e} {r['err_max']:8.1e}"
            if r["err_max"] is not None
            else ""
        )
        print(f"{r['workload']:72s} {r['seconds']:7.2f} {r['ratio_to_untracked']:11.2f}{extra}")


if __name__ == "__main__":
    main()
