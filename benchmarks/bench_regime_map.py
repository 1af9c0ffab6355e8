"""The regime map's cost, and its classifications with the old and the new tracking side by side.

    python -m benchmarks.bench_regime_map costs [--archs NAME ...] [--steps N] [--trackers ...]
    python -m benchmarks.bench_regime_map compare --grid quick [--stride 3]
    python -m benchmarks.bench_regime_map compare --grid full --archs NAME ... [--steps N]

The new path's levers default to the full preset's (``Config.preset("full")``): ``--stride``,
``--pre-rows``, ``--mid-tol``, ``--track-tol``, ``--[no-]sequential`` override them (e.g.
``--mid-tol 0``).

``costs``: for full-grid architectures (``sims.studies.regime_map.Config.preset("full")``, all
15 runs of the sweep) with ``--steps`` steps instead of 3000, the CPU seconds of each part of a
sweep: the initial curvature solve (the midpoint program at ``w_0``, which compiles it; then
warm), and the sweep's chunk untracked (``NoTracking``), with the old tracker (Lanczos on
``eta H`` every ``sharpness_every = 5`` steps) and with the new one (only every
``track_stride``-th recorded row, :class:`theory.engine.RowStrideTracker`), each run
twice: the first call compiles, the second gives the per-step cost. Extrapolated to the preset's
3000 steps: ``init + compile + midpoints + steps x per-step``, where the midpoints are timed
(cold, then warm) on the last sweep's own rows with the old rule (``mid_rows + pre_rows + 2``
rows, residual) and the new one; ``--trackers`` picks which sweeps run (default all three). The
per-step cost includes the tracker's cold solve at ``w_0`` (32 HVPs) spread over ``--steps``,
and the midpoints of a short sweep's rows (close together, so cheap warm starts) understate
those of a 3000-step run: read the extrapolation as rough (docs/regimes.md fits the per-HVP
cost instead). On a 256-256 network each midpoint call takes minutes of CPU.

``compare``: every run of the given architectures by both paths
(:func:`sims.studies.regime_map.run_architecture`): ``old`` is the grid's configuration with
``track_stride = 1`` (``Config.preset(grid, tracking="old")``: for ``--grid full``
``sharpness_every = 5``, 54 midpoint rows, the residual rule), ``new`` has ``sharpness_every =
record_every``, ``track_stride = --stride`` and the other levers. Also printed: in how many runs
both paths set the same ``eta`` (the same ``lambda_1(w_0)``, so identical GD trajectories).
Printed side by side: regime, onset, settled midpoint / iterate means of ``eta lambda_1``,
sharpness factor; per architecture the CPU seconds of each path's sweep and its tracker HVPs.
``--steps`` shortens both paths alike (the comparison is then of the shortened map).

Both write ``<out>/regime_map_<mode>[_<grid>].json`` (default ``results/bench``) with the
provenance: commit, configurations, ``uptime`` before and after, platform, start and end times.
Seconds are CPU seconds of this process (``time.process_time``) and wall seconds; the machine
may be shared (the load averages are in the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sims.studies import regime_map as rm
from theory.analysis.regimes import RegimeCriteria
from theory.engine import NoTracking, SaveAt
from theory.engine.sweep import gd_wd_sweep

FULL_STEPS = rm.Config.preset("full").steps


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"loadavg {os.getloadavg()}"


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
    return out.stdout.strip() + (" (dirty)" if dirty.stdout.strip() else "")


def _arch(cfg: rm.Config, name: str) -> dict[str, Any]:
    archs = {a["name"]: a for a in rm.architectures(cfg)}
    if name not in archs:
        raise ValueError(f"unknown architecture {name!r}; the grid has {sorted(archs)}")
    return archs[name]


def _timed(fn: Any) -> tuple[float, float, Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out) if not isinstance(out, tuple) else out[0])
    return time.perf_counter() - t0, time.process_time() - c0, out


def _arch_costs(
    full: rm.Config,
    name: str,
    steps: int,
    stride: int,
    levers: dict[str, Any],
    which: tuple[str, ...] = ("untracked", "old", "new"),
) -> dict[str, Any]:
    """CPU seconds of the parts of one full-grid architecture's sweep (module docstring)."""
    new_cfg = new_config(full, stride, levers)
    arch = _arch(full, name)
    prob = rm.make_network(full, arch)
    pairs = rm.grid(full)
    row: dict[str, Any] = {"dim": int(prob.w0.shape[0]), "runs": len(pairs), "steps": steps}

    def init() -> Any:
        return rm.initial_curvature(prob.loss, prob.w0, prob.groups, len(pairs), full)

    row["init_cold_wall"], row["init_cold_cpu"], (lam0, _) = _timed(init)
    row["init_warm_wall"], row["init_warm_cpu"], _ = _timed(init)
    print(
        f"{name} initial solve cold {row['init_cold_cpu']:.1f} s warm "
        f"{row['init_warm_cpu']:.1f} s CPU | {_uptime()}",
        flush=True,
    )
    etas = np.array([p[0] / lam0 for p in pairs])
    wds = np.array([p[1] for p in pairs]) / etas
    trackers = {
        label: t
        for label, t in (
            ("untracked", NoTracking()),
            ("old", rm.make_tracker(full)),
            ("new", rm.make_tracker(new_cfg)),
        )
        if label in which
    }

    def sweep(tracker: Any) -> Any:
        return gd_wd_sweep(
            prob.loss,
            prob.w0,
            eta=etas,
            wd=wds,
            steps=steps,
            groups=prob.groups,
            seeds=np.full(len(pairs), full.seed),
            tracker=tracker,
            saveat=SaveAt(every=full.record_every, iterates=True),
            chunk_steps=steps,
            check_invariance=False,
            warn_above_edge=False,
        )

    for label, tracker in trackers.items():
        _, c_cold, _ = _timed(lambda tracker=tracker: sweep(tracker))
        w_warm, c_warm, res = _timed(lambda tracker=tracker: sweep(tracker))
        row[f"{label}_cold_cpu"], row[f"{label}_warm_cpu"] = c_cold, c_warm
        row[f"{label}_warm_wall"] = w_warm
        row[f"{label}_cpu_per_step"] = c_warm / steps
        hv = res.block_matvecs
        row[f"{label}_hvps_per_run"] = 0.0 if hv is None else float(np.mean(np.sum(hv, axis=1)))
        print(
            f"{name} {label:9s} cold {c_cold:7.1f} s warm {c_warm:7.1f} s CPU "
            f"({c_warm / steps:.3f} s/step, {row[f'{label}_hvps_per_run']:.0f} HVPs per run) "
            f"wall {w_warm:.1f} s | {_uptime()}",
            flush=True,
        )
    # Midpoint solves on this sweep's own rows (the last tracked sweep's iterates): the old
    # rule (residual 3 sqrt(eps), mid_rows + pre_rows + 2 rows) and the new one.
    crit = RegimeCriteria()
    for label, cfg in (("mid_old", full), ("mid_new", new_cfg)):
        idx = np.stack(
            [
                rm.midpoint_row_indices(
                    res.eos[i], cfg.mid_rows, cfg.pre_rows, crit.settle_frac, loss=res.loss[i]
                )
                for i in range(len(pairs))
            ]
        )

        def mids(idx: np.ndarray = idx, tol: float = cfg.mid_tol) -> Any:
            return rm.midpoint_columns(prob.loss, res, idx, tol)

        _, c_cold, _ = _timed(mids)
        _, c_warm, _ = _timed(mids)
        row[f"{label}_rows"] = int(idx.shape[1])
        row[f"{label}_cold_cpu"], row[f"{label}_warm_cpu"] = c_cold, c_warm
        print(
            f"{name} {label}: {idx.shape[1]} rows x {len(pairs)} runs, cold {c_cold:.1f} s, "
            f"warm {c_warm:.1f} s CPU | {_uptime()}",
            flush=True,
        )
    for label in trackers:
        compile_s = max(0.0, row[f"{label}_cold_cpu"] - row[f"{label}_warm_cpu"])
        row[f"{label}_compile_cpu"] = compile_s
        mid = row["mid_old_warm_cpu"] if label == "old" else row["mid_new_warm_cpu"]
        row[f"{label}_full_cpu_h"] = (
            row["init_cold_cpu"] + mid + compile_s + FULL_STEPS * row[f"{label}_cpu_per_step"]
        ) / 3600
    hours = ", ".join(f"{label} {row[f'{label}_full_cpu_h']:.2f}" for label in trackers)
    print(f"{name}: extrapolated to {FULL_STEPS} steps, CPU hours {hours}", flush=True)
    return row


def costs(
    names: list[str],
    steps: int,
    stride: int,
    levers: dict[str, Any],
    which: tuple[str, ...] = ("untracked", "old", "new"),
) -> dict[str, Any]:
    """Per architecture: CPU seconds of the parts of one full-grid sweep (module docstring)."""
    full = rm.Config.preset("full", tracking="old")
    return {name: _arch_costs(full, name, steps, stride, levers, which) for name in names}


def new_config(base: rm.Config, stride: int, levers: dict[str, Any]) -> rm.Config:
    """``base`` with the new path: tracking every ``stride``-th recorded row (every row before
    ``dense_steps``) and the given ``pre_rows``, ``mid_tol``, ``track_tol``,
    ``sequential_solves``."""
    return dataclasses.replace(
        base, sharpness_every=base.record_every, track_stride=stride, **levers
    )


def compare(
    grid: str, names: list[str] | None, steps: int | None, stride: int, levers: dict[str, Any]
) -> dict[str, Any]:
    """Every run of the architectures by the old and the new path (module docstring)."""
    base = rm.Config.preset(grid, tracking="old")
    if steps is not None:
        base = dataclasses.replace(base, steps=steps)
    old_cfg = dataclasses.replace(base, track_stride=1)
    new_cfg = new_config(base, stride, levers)
    archs = [_arch(base, n) for n in names] if names else rm.architectures(base)
    runs: dict[str, Any] = {}
    per_arch: dict[str, Any] = {}
    keys = (
        "regime",
        "onset_step",
        "eos_mid_mean",
        "eos_iter_mean",
        "sharpness_ratio",
        "cycles",
        "lambda1_0",
    )
    for arch in archs:
        res = {}
        for label, cfg in (("old", old_cfg), ("new", new_cfg)):
            t0 = time.perf_counter()
            _, summary = rm.run_architecture(cfg, arch, progress=False)
            first = next(iter(summary.values()))
            res[label] = summary
            per_arch.setdefault(arch["name"], {})[label] = {
                "wall": time.perf_counter() - t0,
                "cpu": first["arch_cpu_seconds"],
                "sweep_cpu": first["sweep_cpu_seconds"],
                "midpoint_cpu": first["midpoint_cpu_seconds"],
                "init_cpu": first["init_cpu_seconds"],
                "tracker_hvps": int(sum(s["tracker_hvps"] or 0 for s in summary.values())),
                "uptime": _uptime(),
            }
            a = per_arch[arch["name"]][label]
            print(
                f"{arch['name']} {label}: CPU {a['cpu']:.1f} s (sweep {a['sweep_cpu']:.1f}, "
                f"midpoints {a['midpoint_cpu']:.1f}, init {a['init_cpu']:.1f}), tracker HVPs "
                f"{a['tracker_hvps']} | {a['uptime']}",
                flush=True,
            )
        for run in res["old"]:
            runs[run] = {
                label: {k: res[label][run].get(k) for k in keys} for label in ("old", "new")
            }
    agree = sum(r["old"]["regime"] == r["new"]["regime"] for r in runs.values())
    same_eta = sum(r["old"]["lambda1_0"] == r["new"]["lambda1_0"] for r in runs.values())
    print(
        "\n| run | old | new | onset old / new | <mid> old / new | <it> old / new | S x old / new |"
    )
    print("|---|---|---|---|---|---|---|")
    for run, r in runs.items():
        o, n = r["old"], r["new"]

        def pair(k: str, o: dict[str, Any] = o, n: dict[str, Any] = n) -> str:
            return " / ".join(
                "-" if v is None else f"{float(v):.3f}" if k != "onset_step" else f"{float(v):g}"
                for v in (o[k], n[k])
            )

        mark = "" if o["regime"] == n["regime"] else " **differs**"
        print(
            f"| {run} | {o['regime']} | {n['regime']}{mark} | {pair('onset_step')} | "
            f"{pair('eos_mid_mean')} | {pair('eos_iter_mean')} | {pair('sharpness_ratio')} |"
        )
    print(f"\nsame regime: {agree} of {len(runs)}; the same eta (lambda_1(w_0)): {same_eta}")
    return {
        "grid": grid,
        "steps": base.steps,
        "stride": stride,
        "old_config": dataclasses.asdict(old_cfg),
        "new_config": dataclasses.asdict(new_cfg),
        "agree": agree,
        "same_eta": same_eta,
        "runs_total": len(runs),
        "architectures": per_arch,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_regime_map", description=__doc__
    )
    parser.add_argument("mode", choices=("costs", "compare"))
    parser.add_argument("--grid", choices=("quick", "full"), default="quick")
    parser.add_argument("--archs", nargs="*", default=None)
    parser.add_argument("--steps", type=int, default=None)
    full_new = rm.Config.preset("full")
    parser.add_argument("--stride", type=int, default=full_new.track_stride)
    parser.add_argument("--pre-rows", type=int, default=full_new.pre_rows)
    parser.add_argument("--mid-tol", type=float, default=full_new.mid_tol)
    parser.add_argument("--track-tol", type=float, default=full_new.track_tol)
    parser.add_argument(
        "--sequential",
        action=argparse.BooleanOptionalAction,
        default=full_new.sequential_solves,
        help="new path: the tracker's solves one run at a time (--no-sequential: in lockstep)",
    )
    parser.add_argument(
        "--trackers", nargs="*", default=["untracked", "old", "new"], help="costs: which sweeps"
    )
    parser.add_argument("--out", default="results/bench")
    ns = parser.parse_args()
    meta: dict[str, Any] = {
        "commit": _commit(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "uptime_start": _uptime(),
        "argv": vars(ns),
    }
    levers = {
        "pre_rows": ns.pre_rows,
        "mid_tol": ns.mid_tol,
        "track_tol": ns.track_tol,
        "sequential_solves": ns.sequential,
    }
    if ns.mode == "costs":
        names = ns.archs or ["digits_mlp64-64_bn_ce"]
        result = costs(names, ns.steps or 45, ns.stride, levers, tuple(ns.trackers))
        fname = "regime_map_costs.json"
    else:
        result = compare(ns.grid, ns.archs, ns.steps, ns.stride, levers)
        fname = f"regime_map_compare_{ns.grid}.json"
    meta["end"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["uptime_end"] = _uptime()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / fname).write_text(json.dumps({"meta": meta, "result": result}, indent=1, default=str))
    print(f"wrote {out / fname}")


if __name__ == "__main__":
    main()
