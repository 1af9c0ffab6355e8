"""The CNN tutorial (examples/tutorial_cnn.py) runs end to end and its numbers make sense.

The quick run is slow-marked (`make test-slow`): a 2372-weight CNN tracked at every step and
the central flow with Lanczos over the 109 steps from 20 before the onset to the end.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests._examples import load_example

LOSS_ERR = 0.2  # provisional (not measured)
EOS_ERR = 0.2  # provisional (not measured)


def load_tutorial() -> ModuleType:
    return load_example("tutorial_cnn")


@pytest.mark.slow
@pytest.mark.skip(
    reason="the central-flow step of the quick run has not been completed on this project's "
    "machines yet (over 50 min on a loaded 2-core machine): its bounds are unmeasured (issue 24)"
)
def test_tutorial_cnn_quick(tmp_path: Path) -> None:
    out = load_tutorial().main(tmp_path, quick=True)
    # The CNN of the brief: D = 2372 in three groups, exactly invariant (measured ~1e-16).
    assert out["dim"] == 2372 and out["groups"] == (36, 288, 2048)
    assert out["invariance"]["homogeneity"] < 1e-10 and out["invariance"]["euler"] < 1e-10
    # The start is at 0.3 of the edge.
    assert out["eos0"] == pytest.approx(0.6, rel=1e-3)
    # The onset is reached with phase I unfinished (measured: step 241, loss ratio 0.198),
    # after the sharpness has moved (S 1690 -> 1380 at the onset), so the S-based onset
    # prediction is off (measured 200 against 241).
    assert out["onset"] < out["settings"].gd_steps - 2 * out["settings"].window
    assert out["loss_ratio"] > 0.05
    assert out["sharpness_onset"] < 0.9 * out["sharpness_start"]
    assert abs(out["onset_from_s0"] - out["onset"]) > 0.1 * out["onset"]
    # eta_eff S after the onset: measured 1.79 on average over the quick run's 89 steps after
    # it (GD dips to 1.55-1.9 for about 60 steps before it settles; 1.93 over 210 steps), so
    # the bound is 1.7, not 1.8. The sharpness falls (1380 -> 813, mean of the last 16 steps).
    assert 1.7 <= out["eos_mean_after_onset"] <= 2.2
    assert out["sharpness_end"] < 0.8 * out["sharpness_onset"]
    # The rule takes the central flow, which tracks GD's moving averages. PROVISIONAL bounds:
    # the quick run's flow part had not finished when this test was committed (see the commit
    # message); they are not measured values.
    assert out["branch"] == "central"
    assert any("phase I has not finished" in r for r in out["reasons"])
    assert abs(out["onset_err"]) < 0.05
    assert out["loss_err"] < LOSS_ERR
    assert out["eos_err"] < EOS_ERR
    figure = Path(out["figure"])
    assert figure.parent == tmp_path and figure.stat().st_size > 10_000


def test_tutorial_cnn_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    tutorial = load_tutorial()
    ns = tutorial.parse_args(["--quick", "--out-dir", "somewhere"])
    assert ns.quick and ns.out_dir == "somewhere"
    monkeypatch.setenv("SHARPSIM_TUTORIAL_OUT", "from-env")
    ns = tutorial.parse_args(["-f", "kernel.json"])  # a notebook kernel's own arguments
    assert not ns.quick and ns.out_dir == "from-env"
