"""Subprocess worker for tests/engine/test_distributed.py (run as
``python -m tests._distributed_worker``).

Each mode runs in a fresh interpreter, because the device count (``XLA_FLAGS``) and
``jax.distributed`` must be set up before JAX creates its backend, and the test process already
has one. The caller sets ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` in the
environment; this script enables float64 itself (tests/conftest.py does that only for the pytest
process).

Modes (all write ``<out>/<name>.npz``; ``meta`` holds a JSON string):

* ``dp``: one process, all local devices. The data-parallel run (data leaves sharded over a 1-D
  mesh axis ``"data"``, parameters replicated) and the same run with unsharded data.
* ``mp``: one of ``--num-processes`` workers joined by ``jax.distributed`` (CPU collectives:
  gloo). The sweep over the global devices and the data-parallel run over a global mesh.
* ``ref``: the same two computations as ``mp`` in one ordinary process.
* ``bad-grid``: a multi-process sweep in which every process passes a *different* grid of the
  same size (or, with ``--consistent``, the same one); records the sweep's ValueError or "ok".

Problems and settings are module constants so that the test can rebuild the references.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

# --------------------------------------------------------------------------------------------
# Shared settings (NumPy only at import: no JAX array may be created before x64 is enabled)
# --------------------------------------------------------------------------------------------

# Data-parallel problem: theory.problems.analytic.random_regression, a realizable 2-layer tanh
# regression ``L(w) = 1/(2n) sum_i (a^T tanh(s W_hat z_i) - y_i)^2`` (one invariance group).
# n = 16 examples (divisible by 8 devices), D = 48 > n: the minimizers form a manifold, GD+WD
# reaches it, eta_eff grows and the EoS onset comes at step 347 (eta * wd = 2e-3).
DP_PROBLEM = {"dim": 48, "n": 16, "hidden": 6, "seed": 0}
DP_KW = {
    "eta": 0.1,
    "wd": 0.02,
    "steps": 700,
    # Rows every 10 steps, sharpness tracked every step (the engine objects are made in
    # run_dp / run_sweep, after x64 is enabled).
    # A tangent kick of relative size 1e-5 on every step seeds the EoS oscillation
    # deterministically. Without it the oscillation grows out of rounding noise, and two runs
    # that differ only in the summation order of the data (sharded vs not) then agree to
    # rounding before the onset but only to ~1e-2 after it (measured; see docs/distributed.md).
    "perturbation": 1e-5,
}

# Sweep: curved_manifold (D = 6), 5 configurations (padded to a multiple of the device count).
# Onsets (steps): 135, 66, 0 (eta = 0.2 starts at the EoS), 33, none (wd = 0). Same kick as above.
SWEEP_ETAS = [0.05, 0.1, 0.2, 0.1, 0.1]
SWEEP_WDS = [0.1, 0.05, 0.02, 0.1, 0.0]
SWEEP_KW = {"steps": 300, "perturbation": 1e-5}  # rows every 10 steps, tracked every step

# Presets of the multi-process test: "quick" (default suite: the mechanics, short runs; the
# sweep's eta = 0.2 configuration is at the EoS throughout) and "eos" (slow: both runs through
# the EoS onset).
PRESETS = {
    "quick": {"sweep_steps": 60, "dp_steps": 60},
    "eos": {"sweep_steps": SWEEP_KW["steps"], "dp_steps": DP_KW["steps"]},
}

GD_FIELDS = ("step", "w", "norm", "eta_eff", "sharpness", "eos", "loss", "grad_norm")
SWEEP_FIELDS = (*GD_FIELDS, "onset_step", "diverged_at", "v1")


def dp_problem():
    """The data-parallel loss (data leaves ``inputs`` ``(n, d_in)``, ``targets`` ``(n,)``)."""
    from theory.problems.analytic import random_regression

    prob = random_regression(**DP_PROBLEM)
    return prob.loss, np.asarray(prob.start, np.float64)


def sweep_problem():
    from theory.problems.analytic import curved_manifold

    prob = curved_manifold()
    return prob.loss, 0.6 * np.asarray(prob.start, np.float64)


def shard_data(loss, devices):
    """``loss`` with its data leaves laid out over a 1-D mesh ``"data"`` of ``devices``.

    Built with ``jax.make_array_from_callback``: each process supplies the slices of its own
    devices, so this works in one process and across processes alike. The parameters stay
    replicated (``w0`` is passed as a host array; ``out_weights`` and ``input_scale`` likewise).
    """
    import equinox as eqx
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(devices), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))

    def put(host):
        host = np.asarray(host)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return eqx.tree_at(lambda l: (l.inputs, l.targets), loss, (put(loss.inputs), put(loss.targets)))


def run_dp(loss, w0, steps=None):
    import theory

    parts = {"tracker": theory.LanczosTracker(every=1), "saveat": theory.SaveAt(every=10)}
    return theory.gd_wd(loss, w0, **{**DP_KW, **parts, "steps": steps or DP_KW["steps"]})


def run_sweep(loss, w0, steps=None, etas=SWEEP_ETAS, **kw):
    from theory.engine import LanczosTracker, SaveAt
    from theory.engine.sweep import gd_wd_sweep

    parts = {"tracker": LanczosTracker(every=1), "saveat": SaveAt(every=10)}
    kw = {**SWEEP_KW, **parts, "steps": steps or SWEEP_KW["steps"], **kw}
    # one configuration deliberately starts above the edge
    return gd_wd_sweep(loss, w0, eta=etas, wd=SWEEP_WDS, warn_above_edge=False, **kw)


def gd_arrays(res, prefix):
    out = {f"{prefix}{f}": np.asarray(getattr(res, f)) for f in GD_FIELDS}
    out[f"{prefix}onset_step"] = np.asarray(-1 if res.onset_step is None else res.onset_step)
    return out


def sweep_arrays(res, prefix):
    return {f"{prefix}{f}": np.asarray(getattr(res, f)) for f in SWEEP_FIELDS}


def sharding_info(arr):
    """How an array is laid out: global shape, device count, this process's shard shapes."""
    return {
        "shape": list(arr.shape),
        "num_devices": len(arr.sharding.device_set),
        "local_shards": [list(s.data.shape) for s in arr.addressable_shards],
        "fully_addressable": bool(arr.is_fully_addressable),
        "spec": str(getattr(arr.sharding, "spec", None)),
    }


# --------------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------------


def _setup(args):
    import jax

    jax.config.update("jax_enable_x64", True)
    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}",
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=args.init_timeout,
        )
    return jax


def _save(args, name, arrays, meta):
    path = os.path.join(args.out, f"{name}.npz")
    tmp = path + ".tmp.npz"
    np.savez(tmp, meta=np.asarray(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def mode_dp(args):
    jax = _setup(args)
    loss, w0 = dp_problem()
    sharded = shard_data(loss, jax.devices())
    before = sharding_info(sharded.inputs)
    t0 = time.perf_counter()
    dp = run_dp(sharded, w0)
    t1 = time.perf_counter()
    plain = run_dp(loss, w0)
    t2 = time.perf_counter()
    meta = {
        "devices": jax.device_count(),
        "inputs_before": before,
        "inputs_after": sharding_info(sharded.inputs),
        "targets_after": sharding_info(sharded.targets),
        "seconds_sharded": t1 - t0,
        "seconds_plain": t2 - t1,
    }
    _save(args, "dp", {**gd_arrays(dp, "dp_"), **gd_arrays(plain, "plain_")}, meta)


def _both(args, jax, tag):
    """The sweep and the data-parallel run over all (global) devices."""
    preset = PRESETS[args.preset]
    t0 = time.perf_counter()
    sweep = run_sweep(*sweep_problem(), steps=preset["sweep_steps"])
    t1 = time.perf_counter()
    loss, w0 = dp_problem()
    sharded = shard_data(loss, jax.devices())
    dp = run_dp(sharded, w0, steps=preset["dp_steps"])
    t2 = time.perf_counter()
    meta = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "sweep_devices": sweep.config["devices"],
        "inputs": sharding_info(sharded.inputs),
        "seconds_sweep": t1 - t0,
        "seconds_dp": t2 - t1,
    }
    _save(args, tag, {**sweep_arrays(sweep, "sweep_"), **gd_arrays(dp, "dp_")}, meta)


def mode_mp(args):
    jax = _setup(args)
    _both(args, jax, f"mp{args.process_id}")
    jax.distributed.shutdown()


def mode_ref(args):
    jax = _setup(args)
    _both(args, jax, "ref")


def _bad_etas(process_id):
    """A user error: process ``i`` passes eta[0] = 0.05 * (1 + i), the rest agrees."""
    etas = list(SWEEP_ETAS)
    etas[0] *= 1 + process_id
    return etas


def mode_bad_grid(args):
    """Every process passes a different eta grid of the same size: the sweep must refuse it."""
    jax = _setup(args)
    from theory.engine import NoTracking

    etas = SWEEP_ETAS if args.consistent else _bad_etas(args.process_id)
    try:
        run_sweep(*sweep_problem(), steps=20, etas=etas, tracker=NoTracking())
        outcome = "ok"
    except ValueError as err:
        outcome = str(err)
    _save(args, f"bad{args.process_id}", {}, {"outcome": outcome, "etas_passed": etas})
    jax.distributed.shutdown()


MODES = {
    "dp": mode_dp,
    "mp": mode_mp,
    "ref": mode_ref,
    "bad-grid": mode_bad_grid,
}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=sorted(MODES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--num-processes", type=int, default=1)
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--init-timeout", type=int, default=60)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--consistent", action="store_true")
    args = ap.parse_args(argv)
    MODES[args.mode](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
