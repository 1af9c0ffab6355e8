"""Tracking near the floor: RitzTracker against LanczosTracker and an untracked run, on W1.

    python -m benchmarks.bench_floor [--quick] [--repeats N]

The workloads of :mod:`benchmarks.bench_networks` (W1, eta 0.1, and W1-EoS, eta 0.3; the same
BatchNorm MLP on 1024 digits, float32, a row every 10 steps), tracked every step and every 10
steps. Every run is timed as a user times it: the whole ``gd_wd`` call, after one untimed call
that compiles, the median of ``repeats`` calls; the configurations of a workload are timed
interleaved (round after round), so that load from other jobs on the machine hits them alike.
Columns:

* ``x untracked``: median seconds over the untracked run's median (same workload, same process).
* ``HVPs/step``: all Hessian-vector products of the run over its steps (every HVP counted,
  corrections included).
* ``model``: ``1 + HVPs/step * HVP/grad`` (``HVP/grad``: one tangent evaluation, in gradients,
  from ``bench_networks``' floor table); for a RitzTracker with ``fused=True`` (single steps) the
  HVP is fused with the gradient, and its model is ``fused/grad + (HVPs/step - 1) * HVP/grad``;
  the same for a RayleighTracker (fused by default) tracking every step. ``RayleighTracker(tol=1)``
  corrects only where its estimate exceeds ``theta`` itself: its row is what one HVP per step (a
  power step on a carried vector) achieves.
* ``err med/95%/max``: ``|eos - ref| / ref`` over every recorded row (each row carries its own
  step's solve), ``ref`` from an independent Lanczos solve at the same iterate (random start,
  top two pairs to relative residual 1e-4, up to 80 HVPs).
* ``bound max``: the largest certificate ``ritz_bound`` the RitzTracker reported.

``RitzTracker(every=1)`` is left out: it corrects on almost every row (8.99 HVPs per step on W1,
42x untracked when it was last timed, ``docs/engine.md``), which made this benchmark too long.
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

from benchmarks.bench_networks import WD, WORKLOADS, _floor, _problem, _reference
from theory.engine import LanczosTracker, NoTracking, SaveAt
from theory.engine.fast import RayleighTracker, RitzTracker
from theory.engine.gd import GDResult, gd_wd
from theory.problems import nets

CONFIGS: tuple[tuple[str, Any], ...] = (
    ("untracked", NoTracking()),
    ("every step, Rayleigh tol 1e-2", RayleighTracker(every=1, tol=1e-2, spherical=False)),
    (
        "every step, Rayleigh uncorrected (1 HVP/step)",
        RayleighTracker(every=1, tol=1.0, spherical=False),
    ),
    (
        "every step, Lanczos error 1e-2",
        LanczosTracker(every=1, stop="error", tol=1e-2, spherical=False),
    ),
    ("every 10, Ritz tol 1e-3 (block of 2)", RitzTracker(every=10, tol=1e-3, spherical=False)),
    ("every 10, Rayleigh tol 1e-3", RayleighTracker(every=10, tol=1e-3, spherical=False)),
    ("every 10, Lanczos residual 1e-2", LanczosTracker(every=10, tol=1e-2, spherical=False)),
    (
        "every 10, Lanczos error 1e-3",
        LanczosTracker(every=10, stop="error", tol=1e-3, spherical=False),
    ),
)


def _run(prob: nets.NetProblem, eta: float, steps: int, tracker: Any) -> GDResult:
    return gd_wd(
        prob.loss,
        prob.w0,
        eta=eta,
        wd=WD,
        steps=steps,
        groups=prob.groups,
        saveat=SaveAt(every=10),
        tracker=tracker,
        chunk_steps=steps,
        check_invariance=False,
        warn_above_edge=False,  # W1-EoS starts above the edge on purpose (eta 0.3: 3.67 at w0)
    )


def measure(quick: bool = False, repeats: int = 3, verbose: bool = False) -> list[dict[str, Any]]:
    """One row per workload and configuration (module docstring); ``load`` is ``os.getloadavg``
    when the workload's timed rounds began and ended (the machine may be shared)."""
    prob = _problem()
    steps = 200 if quick else 400
    floor = _floor(prob)
    if verbose:
        _print_header(floor)
    rows = []
    for workload, eta in WORKLOADS:
        results = {label: _run(prob, eta, steps, tr) for label, tr in CONFIGS}  # compiles
        times: dict[str, list[float]] = {label: [] for label, _ in CONFIGS}
        load_before = os.getloadavg()[0]
        for _ in range(repeats):  # interleaved rounds
            for label, tr in CONFIGS:
                t0 = time.perf_counter()
                results[label] = _run(prob, eta, steps, tr)
                times[label].append(time.perf_counter() - t0)
        load = f"{load_before:.1f}-{os.getloadavg()[0]:.1f}"
        base = statistics.median(times["untracked"])
        refs: dict[bytes, float] = {}
        for label, tr in CONFIGS:
            res = results[label]
            seconds = statistics.median(times[label])
            row: dict[str, Any] = {
                "workload": f"{workload} (eta {eta}), {steps} steps, {label}",
                "seconds": seconds,
                "ratio_to_untracked": seconds / base,
                "hvp_per_grad": floor["tangent"],
                "fused_per_grad": floor["fused"],
                "hvps_per_step": 0.0,
                "ratio_model": 1.0,
                "err_median": None,
                "err_95": None,
                "err_max": None,
                "bound_max": None,
                "load": load,
            }
            if tr.every:
                assert res.w is not None and res.block_matvecs is not None
                errs = []
                for i in range(len(res.step)):
                    w = res.w[i]
                    if w.tobytes() not in refs:  # the iterates do not depend on the tracking
                        key = jax.random.PRNGKey(i)
                        refs[w.tobytes()] = float(_reference(prob.loss, jnp.asarray(w), eta, key))
                    ref = refs[w.tobytes()]
                    errs.append(abs(float(res.eos[i]) - ref) / ref)
                per_step = float(res.block_matvecs.sum()) / steps
                fused = (isinstance(tr, RitzTracker) and tr.fused and not tr.uses_block()) or (
                    isinstance(tr, RayleighTracker) and tr.fused and tr.every == 1
                )
                model = (
                    floor["fused"] + (per_step - 1.0) * floor["tangent"]
                    if fused
                    else 1.0 + per_step * floor["tangent"]
                )
                row.update(
                    hvps_per_step=per_step,
                    ratio_model=model,
                    err_median=float(np.median(errs)),
                    err_95=float(np.quantile(errs, 0.95)),
                    err_max=float(np.max(errs)),
                )
                if "ritz_bound" in res.observed:
                    row["bound_max"] = float(np.nanmax(res.observed["ritz_bound"]))
            rows.append(row)
            if verbose:
                _print_row(row)
    return rows


def _print_header(floor: dict[str, float]) -> None:
    print(
        f"floor, in gradients: one HVP (tangent) {floor['tangent']:.2f}, fused gradient+HVP "
        f"{floor['fused']:.2f}, linearize {floor['linearize']:.2f}"
    )
    print(
        f"{'workload':68s} {'s/run':>7s} {'x untracked':>11s} {'model':>6s} {'HVPs/step':>9s}"
        f" {'err med':>8s} {'err 95%':>8s} {'err max':>8s} {'bound max':>9s}",
        flush=True,
    )


def _print_row(r: dict[str, Any]) -> None:
    extra = ""
    if r["err_max"] is not None:
        bound = f"{r['bound_max']:9.1e}" if r["bound_max"] is not None else f"{'':9s}"
        extra = (
            f" {r['ratio_model']:6.2f} {r['hvps_per_step']:9.2f}"
            f" {r['err_median']:8.1e} {r['err_95']:8.1e} {r['err_max']:8.1e} {bound}"
        )
    print(
        f"{r['workload']:68s} {r['seconds']:7.2f} {r['ratio_to_untracked']:11.2f}{extra}"
        f"  load {r['load']}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration")
    ns = parser.parse_args()
    measure(ns.quick, ns.repeats, verbose=True)


if __name__ == "__main__":
    main()
