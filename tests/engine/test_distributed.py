"""Distributed runs: data-parallel ``gd_wd`` on 8 devices, and ``jax.distributed`` with 2 processes.

Everything that needs its own device count or ``jax.distributed`` runs in subprocesses
(``tests/_distributed_worker.py``); the workers save their arrays with ``np.savez`` and the
checks happen here. Every subprocess has a timeout and is killed when it (or a sibling) fails,
so a hang in a collective cannot block the suite.

Measured differences (float64, relative to the largest magnitude of the array over the run):

* data-parallel, 8 devices vs unsharded data (same process): <= 1e-15 before the EoS onset;
  through the EoS <= 1e-12 for ``w`` and ~5e-12 for ``eos`` (largest during the onset transient),
  same onset step. Not bitwise: the example sums are split over devices. Without the 1e-5
  tangent kick the EoS oscillation grows out of rounding noise and the runs agree only to ~1e-2
  after the onset.
* 2 processes x 2 devices: every process gets the same full arrays (bitwise). The sweep is
  bitwise equal to one process with 4 devices and equal to one device to ~1e-11 (different
  batch per device; 1.5e-10 for the loss, whose EoS values are ~1e-10 of its maximum); the
  data-parallel run agrees with one device to ~1e-11 (gloo sums the partial results in another
  order, so not bitwise even against 4 local devices).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from tests import _distributed_worker as W

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
TIMEOUT = 300  # seconds per subprocess group (the runs take ~20-60 s; a hang is killed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def _run(argvs: list[list[str]], devices: int, timeout: float = TIMEOUT) -> list[tuple[int, str]]:
    """Start the workers together; return ``(returncode, log)`` each.

    If one fails, the others are killed at once (a peer blocked in a collective would otherwise
    wait for the coordinator's heartbeat timeout); all are killed at ``timeout``. Logs go to
    temporary files (a full pipe could block a worker).
    """
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in argvs]
        return _run_logged(argvs, devices, timeout, logs)


def _run_logged(argvs, devices, timeout, logs) -> list[tuple[int, str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests._distributed_worker", *argv],
            cwd=ROOT,
            env=_env(devices),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for argv, log in zip(argvs, logs, strict=True)
    ]
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            failed = any(p.returncode not in (None, 0) for p in procs)
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    out = []
    for p, log in zip(procs, logs, strict=True):
        code = p.wait()
        log.seek(0)
        out.append((code, log.read()))
    return out


def _check_ok(results: list[tuple[int, str]]) -> None:
    for i, (code, log) in enumerate(results):
        assert code == 0, f"worker {i} exited with {code}:\n{log[-4000:]}"


def _load(path: str) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    return arrays, meta


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max |b|`` (NaN rows of a stopped configuration ignored)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.nanmax(np.abs(a - b)) / np.nanmax(np.abs(b)))


FIELDS = ("w", "norm", "eta_eff", "loss", "sharpness", "eos")


# --------------------------------------------------------------------------------------------
# 1. Data-parallel gd_wd on 8 forced host devices
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_data_parallel_eight_devices(tmp_path):
    """Data leaves sharded over a mesh axis "data" of 8 devices, parameters replicated: the same
    run as with unsharded data, through the EoS onset, and the data stay sharded."""
    _check_ok(_run([["dp", "--out", str(tmp_path)]], devices=8))
    arr, meta = _load(str(tmp_path / "dp.npz"))
    assert meta["devices"] == 8
    n, d_in = W.DP_PROBLEM["n"], W.DP_PROBLEM["dim"] // W.DP_PROBLEM["hidden"]
    for key in ("inputs_before", "inputs_after"):  # 2 examples on each of the 8 devices
        info = meta[key]
        assert info["num_devices"] == 8 and info["spec"] == "P('data',)", info
        assert info["shape"] == [n, d_in] and info["local_shards"] == [[n // 8, d_in]] * 8
    assert meta["targets_after"]["local_shards"] == [[n // 8]] * 8

    onset = int(arr["plain_onset_step"])
    assert int(arr["dp_onset_step"]) == onset and 0 < onset < W.DP_KW["steps"] - 200
    assert np.nanmax(arr["plain_eos"]) > 2.0
    np.testing.assert_array_equal(arr["dp_step"], arr["plain_step"])
    pre = arr["plain_step"] < onset
    for f in FIELDS:
        got, ref = arr[f"dp_{f}"], arr[f"plain_{f}"]
        assert _rel(got[pre], ref[pre]) < 1e-13, (f, _rel(got[pre], ref[pre]))  # meas. <= 1e-15
        assert _rel(got, ref) < 3e-11, (f, _rel(got, ref))  # measured <= 5.5e-12 (eos)


# --------------------------------------------------------------------------------------------
# 2. Two processes joined by jax.distributed (gloo CPU collectives), 2 devices each
# --------------------------------------------------------------------------------------------


def _multi_process(tmp_path, preset: str) -> tuple[list, list]:
    base = ["--out", str(tmp_path), "--num-processes", "2", "--port", str(_free_port())]
    argvs = [["mp", *base, "--preset", preset, "--process-id", str(i)] for i in range(2)]
    _check_ok(_run(argvs, devices=2))
    return [_load(str(tmp_path / f"mp{i}.npz")) for i in range(2)]


def _check_multi_process(tmp_path, preset: str) -> None:
    (a0, m0), (a1, m1) = _multi_process(tmp_path, preset)
    for i, m in enumerate((m0, m1)):
        assert m["process_index"] == i and m["process_count"] == 2, m
        assert m["devices"] == 4 and m["local_devices"] == 2 and m["sweep_devices"] == 4, m
        # The data are a global array over 4 devices; each process holds its 2 shards.
        info = m["inputs"]
        assert info["num_devices"] == 4 and not info["fully_addressable"], info
        assert info["local_shards"] == [[W.DP_PROBLEM["n"] // 4, info["shape"][1]]] * 2, info
    # Every process got the full result arrays, and the same ones (bitwise).
    assert a0.keys() == a1.keys()
    for k in a0:
        np.testing.assert_array_equal(a0[k], a1[k], err_msg=k)
    n_cfg = len(W.SWEEP_ETAS)
    assert a0["sweep_w"].shape[0] == n_cfg and a0["sweep_eos"].shape[0] == n_cfg

    # The same computations in this (ordinary, one-process) interpreter on one device.
    preset_kw = W.PRESETS[preset]
    ref = W.run_sweep(*W.sweep_problem(), steps=preset_kw["sweep_steps"], devices=jax.devices()[:1])
    np.testing.assert_array_equal(a0["sweep_step"], ref.step)
    np.testing.assert_array_equal(a0["sweep_onset_step"], ref.onset_step)
    np.testing.assert_array_equal(a0["sweep_diverged_at"], ref.diverged_at)
    assert ref.onset_step[2] == 0  # the eta = 0.2 configuration runs at the EoS throughout
    for f in FIELDS:
        # Measured (eos preset): <= 4e-11 for eos, 1.5e-10 for the loss (relative to its largest
        # value; the loss at the EoS is ~1e-10 of it, so this is its most sensitive reading).
        assert _rel(a0[f"sweep_{f}"], getattr(ref, f)) < 1e-9, f

    loss, w0 = W.dp_problem()
    dp = W.run_dp(loss, w0, steps=preset_kw["dp_steps"])
    np.testing.assert_array_equal(a0["dp_step"], dp.step)
    assert int(a0["dp_onset_step"]) == (-1 if dp.onset_step is None else dp.onset_step)
    for f in FIELDS:
        assert _rel(a0[f"dp_{f}"], getattr(dp, f)) < 1e-10, f  # measured <= 4e-12 (eos)


@pytest.mark.slow  # ~100 s on 2 cores: compiling the tracked programs twice at once, 2 workers
def test_multi_process_quick(tmp_path):
    """2 processes: sweep and data-parallel run (short) equal the one-process results."""
    _check_multi_process(tmp_path, "quick")


# ~3 min: the same processes, collectives and checks as the quick run, over more steps
@pytest.mark.heavy(covered_by="tests/engine/test_distributed.py::test_multi_process_quick")
def test_multi_process_through_eos(tmp_path):
    """As above with both runs through the EoS onset (the data-parallel one at step 347)."""
    _check_multi_process(tmp_path, "eos")


# --------------------------------------------------------------------------------------------
# 3. Inconsistent arguments across processes
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_processes_disagreeing_on_the_grid(tmp_path):
    """Different eta grids (same size) per process: unchecked, every configuration would run
    with the values of the process owning its device and each process would label the rows
    with its own grid. The sweep compares a digest of its arguments across processes first
    (``theory.engine.driver.check_same_everywhere``) and raises a ValueError in every process;
    with the same grid everywhere it runs."""
    for consistent in (False, True):
        port = _free_port()
        base = ["--out", str(tmp_path), "--num-processes", "2", "--port", str(port)]
        flag = ["--consistent"] if consistent else []
        argvs = [["bad-grid", *base, "--process-id", str(i), *flag] for i in range(2)]
        _check_ok(_run(argvs, devices=1, timeout=120))
        outcomes = [_load(str(tmp_path / f"bad{i}.npz"))[1]["outcome"] for i in range(2)]
        for outcome in outcomes:
            if consistent:
                assert outcome == "ok", outcome
            else:
                assert "differ across processes" in outcome, outcome
