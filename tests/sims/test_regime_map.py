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
