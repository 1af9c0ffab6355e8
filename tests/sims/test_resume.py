"""Long runs never lose finished work: kill -9 mid-run, run again, bitwise-equal results."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGS = [
    sys.executable,
    "-m",
    "sims",
    "phases",
    "--problems",
    "great_circle",
    "--steps",
    "150000",
    "--record-every",
    "50",
    "--checkpoint-every",
    "15000",
]


def _arrays(results: Path) -> dict[str, np.ndarray]:
    (path,) = glob.glob(str(results / "phases" / "*" / "arrays.npz"))
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.slow
def test_kill_and_resume_is_bitwise_equal(tmp_path):
    ref = subprocess.run(
        [*ARGS, "--results-dir", str(tmp_path / "ref")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    proc = subprocess.Popen(
        [*ARGS, "--results-dir", str(tmp_path / "kill")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pattern = str(tmp_path / "kill" / "phases" / ".inprogress-*" / "great_circle.snap.json")
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and proc.poll() is None:
        snaps = glob.glob(pattern)
        if snaps:
            try:
                done = json.loads(Path(snaps[0]).read_text())["done_blocks"]
            except (json.JSONDecodeError, FileNotFoundError):
                done = 0
            if done >= 600:  # 2 of 10 checkpoints written
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not glob.glob(str(tmp_path / "kill" / "phases" / "*" / "arrays.npz"))  # no result yet
    again = subprocess.run(
        [*ARGS, "--results-dir", str(tmp_path / "kill")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = _arrays(tmp_path / "ref"), _arrays(tmp_path / "kill")
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # The in-progress directory is gone once the result is stored.
    assert not glob.glob(str(tmp_path / "kill" / "phases" / ".inprogress-*"))
