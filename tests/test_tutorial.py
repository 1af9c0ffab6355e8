"""The tutorial (examples/tutorial.py) runs end to end and its numbers make sense.

The quick run is slow-marked (`make test-slow`, which CI runs), the full one heavy (`make
test-heavy`: the same code over more steps). The quick one costs about 80 s of
one core, most of it compilation, which kept the default suite over its 8-minute budget.
Tolerances are on float64 runs of a 384-parameter network and leave a margin over the
measured values (in the comments).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests._examples import load_example


def load_tutorial() -> ModuleType:
    return load_example("tutorial")


def check_numbers(out: dict[str, Any], tmp_path: Path) -> None:
    # Invariance: exact up to rounding in float64 (measured ~1e-16).
    assert out["invariance"]["homogeneity"] < 1e-10
    assert out["invariance"]["euler"] < 1e-10
    assert len(out["groups"]) == 2 and sum(out["groups"]) == out["dim"]
    # The default LayerNorm is rejected with the check's message, naming the model.
    assert "default-LN MLP is not scale-invariant" in out["not_invariant_error"]

    # EoS onset within 10% of the prediction made where phase I ends (measured -1.8% quick,
    # -4.6% full); the a priori guess only has to be the right order of magnitude (0.7, 0.68).
    onset, predicted = out["onset"], out["predicted_onset"]
    assert out["phase1_end"] < onset
    assert abs(onset - predicted) / predicted < 0.10
    assert 0.5 < onset / out["predicted_onset_a_priori"] < 2.0
    # Self-stabilization: eta_eff * S hovers at 2 after the onset (measured 2.01).
    assert 1.9 < out["eos_mean_after_onset"] < 2.2

    # The projection lands on Gamma (|r| ~ 1e-15), near the iterate (an EoS amplitude away).
    assert out["projection"]["residual"] < 1e-10
    assert out["projection"]["distance"] < 0.2

    # The flow lowers the sharpness monotonically (by ~40% at tau = 0.5).
    sharp = out["flow_sharpness"]
    assert np.all(np.diff(sharp) <= 1e-9 * sharp[0])
    assert sharp[-1] < 0.8 * sharp[0]
    assert out["flow_tau"][-1] >= 0.9 * out["settings"].tau_end

    # GD against the flow at the smallest eta * wd: well within the distance the flow itself
    # travels (measured 0.18 of it quick, 0.08 full), and the sharpness along GD within 10% of
    # the flow's (measured 6% quick, 2.5% full). With several eta * wd: closer at the smaller.
    comparisons = out["comparisons"]
    ewd = [c["eta_wd"] for c in comparisons]
    smallest, largest = comparisons[int(np.argmin(ewd))], comparisons[int(np.argmax(ewd))]
    assert smallest["distance"][-1] < 0.4 * smallest["travel"]
    assert smallest["sharpness_rel_diff"] < 0.10
    if len(comparisons) > 1:
        assert smallest["distance"][-1] < largest["distance"][-1]

    figure = Path(out["figure"])
    assert figure.parent == tmp_path and figure.stat().st_size > 10_000


@pytest.mark.slow
def test_tutorial_quick(tmp_path: Path) -> None:
    out = load_tutorial().main(tmp_path, quick=True)
    check_numbers(out, tmp_path)


@pytest.mark.heavy(
    covered_by="tests/test_tutorial.py::test_tutorial_quick"
)  # same code, more steps
def test_tutorial_full(tmp_path: Path) -> None:
    out = load_tutorial().main(tmp_path, quick=False)
    check_numbers(out, tmp_path)
    assert len(out["comparisons"]) >= 3


def test_tutorial_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    tutorial = load_tutorial()
    ns = tutorial.parse_args(["--quick", "--out-dir", "somewhere"])
    assert ns.quick and ns.out_dir == "somewhere"
    monkeypatch.setenv("SHARPSIM_TUTORIAL_OUT", "from-env")
    ns = tutorial.parse_args(["-f", "kernel.json"])  # a notebook kernel's own arguments
    assert not ns.quick and ns.out_dir == "from-env"
