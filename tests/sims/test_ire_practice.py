"""The ire_practice study at a tiny scale: stored arrays, the seed aggregates, checks, figure.

Numbers: IRE with a Python ``kappa = 0`` is its base bit for bit (tests/optim/test_ire.py), so
at ``kappa = 0`` SGD-IRE's runs equal SGD's exactly and every paired difference is 0; the checks
then read a sharpness ratio of exactly 1 (not below 1: FAIL) and a zero accuracy gain.
"""

import dataclasses

import numpy as np
import pytest

import figures.ire_practice
from sims import checks
from sims._store import ResultStore
from sims.studies import ire_practice

TINY = ire_practice.Config(
    n_train=128,
    widths=(8, 8),
    batch_size=16,
    steps=20,
    warmup=4,
    refresh_every=5,
    record_every=10,
    methods=("sgd", "sgd_ire"),
    seeds=(0, 1),
    lanczos_iters=8,
    trace_probes=4,
    kappa=0.0,
)


@pytest.mark.slow
def test_tiny_study_kappa_zero_is_the_base_and_checks_read_it(tmp_path):
    stored = ire_practice.run_and_store(TINY, results_dir=tmp_path, progress=False)
    s, arr = stored.meta["summary"], stored.arrays
    for seed in TINY.seeds:
        a, b = f"s{seed}_sgd", f"s{seed}_sgd_ire"
        np.testing.assert_array_equal(arr[f"{a}.train_loss"], arr[f"{b}.train_loss"])
        np.testing.assert_array_equal(arr[f"{a}.sharpness_tail"], arr[f"{b}.sharpness_tail"])
        assert arr[f"{a}.step"].tolist() == [0, 10, 20]
        assert arr[f"{a}.sharpness_tail"].shape == (1,)  # last third of 3 rows
        assert s[a]["sharpness_start"] > 0 and np.isfinite(s[a]["trace_end"])
        assert s[a]["diverged_at"] is None and 0 <= s[a]["test_accuracy"] <= 1
    agg = s["methods"]
    acc = [s[f"s{seed}_sgd"]["test_accuracy"] for seed in TINY.seeds]
    assert agg["sgd"]["test_accuracy"]["mean"] == pytest.approx(np.mean(acc), abs=1e-12)
    assert agg["sgd"]["test_accuracy"]["std"] == pytest.approx(np.std(acc, ddof=1), abs=1e-12)
    assert agg["sgd_ire"]["diff_test_accuracy"]["values"] == [0.0, 0.0]
    assert agg["sgd_ire"]["base"] == "sgd" and "diff_test_accuracy" not in agg["sgd"]
    assert s["n_test"] == 1797 - 128

    ctx = checks.Context(ResultStore(tmp_path))
    ctx._cache[ire_practice.NAME] = stored
    sharp = checks.REGISTRY["ire_practice_sharpness"](ctx)
    assert [r.measured for r in sharp] == [1.0, 1.0] and not any(r.passed for r in sharp)
    (gain,) = checks.REGISTRY["ire_practice_accuracy"](ctx)
    assert gain.measured == 0.0 and not gain.passed
    assert gain.details["paper_gain_points"] == 0.40
    (fin,) = checks.REGISTRY["ire_practice_trained"](ctx)
    assert fin.passed and fin.measured == 0.0

    paths = figures.ire_practice.main(tmp_path, tmp_path / "out")
    assert paths[0].is_file() and paths[0].stat().st_size > 10_000


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        dataclasses.replace(TINY, momentum=1.0)
    with pytest.raises(ValueError, match=r"record_every \(7\) must divide steps \(20\)"):
        dataclasses.replace(TINY, record_every=7)
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\), got 1.2"):
        dataclasses.replace(TINY, gamma=1.2)
    with pytest.raises(ValueError, match="methods"):
        dataclasses.replace(TINY, methods=("adam",))
    with pytest.raises(ValueError, match="scale must be 'quick' or 'full'"):
        ire_practice.Config.preset("huge")
