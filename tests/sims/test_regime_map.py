"""The regime map's configuration: convolutional networks only, and their validation."""

from __future__ import annotations

import pytest

from sims.studies import regime_map as rm


def test_a_map_of_resnets_only_needs_no_mlp_pairing() -> None:
    # No datasets: the MLP widths are not paired with the normalization-loss pairs, and every
    # pair runs on the ResNet.
    cfg = rm.Config(datasets=(), resnet_channels=(4, 8, 16), norm_loss=("batch-ce",))
    names = [a["name"] for a in rm.architectures(cfg)]
    assert names == ["digits_resnet4-8-16x1_bn_ce"]
    with pytest.raises(ValueError, match=r"datasets must be among .*got \(\)"):
        rm.Config(datasets=())
    with pytest.raises(ValueError, match=r"resnet_channels .*got .*1"):
        rm.Config(datasets=(), resnet_channels=(4, 1))
    with pytest.raises(ValueError, match=r"they need equal lengths"):
        rm.Config(norm_loss=("batch-ce",))


def test_solver_tolerances_and_the_new_full_preset() -> None:
    for name in ("mid_tol", "track_tol"):
        with pytest.raises(ValueError, match=rf"{name} must be in \[0, 1\) .*got -0.1"):
            rm.Config(**{name: -0.1})
    new, old = rm.Config.preset("full"), rm.Config.preset("full", tracking="old")
    assert (new.pre_rows, new.mid_tol, new.track_tol) == (0, 0.0, rm.NEW_TOL)
    assert (old.pre_rows, old.mid_tol, old.track_tol) == (12, 0.0, 0.0)
    tracker = rm.make_tracker(new)
    assert tracker.config()["solve_period"] == 45
    assert tracker.config()["stop"] == "error" and tracker.config()["lanczos_tol"] == rm.NEW_TOL
