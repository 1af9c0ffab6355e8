"""The SGD+WD equilibrium study (sims/studies/sgd_equilibrium.py): config validation, a tiny run
stored and read back, its checks and its figure."""

from __future__ import annotations

import numpy as np
import pytest

from sims import checks
from sims._store import ResultStore
from sims.studies import sgd_equilibrium

TINY = sgd_equilibrium.Config(
    n_train=48,
    widths=(6,),
    batch_size=12,
    steps=40,
    record_every=10,
    sharpness_every=10,
    momenta=(0.0, 0.9),
    dtype="float64",
)


def test_config_validates_with_the_values() -> None:
    assert sgd_equilibrium.Config.preset("quick") == sgd_equilibrium.Config()
    assert sgd_equilibrium.Config.preset("full").steps > sgd_equilibrium.Config().steps
    with pytest.raises(ValueError, match=r"momenta values must be in \[0, 1\), got \(1.0,\)"):
        sgd_equilibrium.Config(momenta=(1.0,))
    with pytest.raises(ValueError, match="batch_size = 600 is larger than the data: n_train = 512"):
        sgd_equilibrium.Config(batch_size=600)
    with pytest.raises(ValueError, match=r"eta \* wd must be < 1"):
        sgd_equilibrium.Config(eta=10.0, wd=0.2)
    with pytest.raises(ValueError, match=r"sharpness_every \(3\) must divide record_every"):
        sgd_equilibrium.Config(sharpness_every=3)


def test_mean_square_angle_is_the_statistic_of_the_prediction() -> None:
    angles = np.array([[0.1], [0.3], [0.2], [0.4]])
    expected = np.arccos(1 - np.mean(1 - np.cos(angles[2:, 0])))
    np.testing.assert_allclose(sgd_equilibrium.mean_square_angle(angles, 0.5), [expected])


@pytest.mark.slow  # ~27 s of CPU: two tiny runs with the Lanczos tracker, checks, the figure
def test_tiny_run_stores_checks_and_draws(tmp_path) -> None:
    stored = sgd_equilibrium.run_and_store(TINY, results_dir=tmp_path, progress=False)
    s, arr = stored.meta["summary"], stored.arrays
    assert set(s) == {"beta0", "beta0.9"}
    for name in s:
        assert arr[f"{name}.step"].tolist() == [0, 10, 20, 30]
        assert arr[f"{name}.group_norms"].shape == arr[f"{name}.group_angle"].shape == (4, 1)
        for key in ("angle", "batch_eos", "full_eos", "step_eos", "update_eos", "full_loss"):
            assert np.all(np.isfinite(arr[f"{name}.{key}"])), key
        # One group: the group's angle is the whole vector's.
        np.testing.assert_allclose(arr[f"{name}.group_angle"][:, 0], arr[f"{name}.angle"])
        np.testing.assert_allclose(
            s[name]["angle_predicted"],
            np.arccos(1 - TINY.eta * TINY.wd / (1 + s[name]["momentum"])),
        )
    ctx = checks.Context(ResultStore(tmp_path))
    ctx._cache[sgd_equilibrium.NAME] = stored
    results = checks.REGISTRY["sgd_equilibrium"](ctx)
    assert len(results) == 10 and all(np.isfinite(r.measured) for r in results)
    assert {r.kind for r in results} == {"derived", "model", "empirical"}
    import figures.sgd_equilibrium

    paths = figures.sgd_equilibrium.main(tmp_path, tmp_path / "out")
    assert len(paths) == 1 and paths[0].stat().st_size > 20_000
