"""Matrix completion with BatchNorm (LLA22 appendix): the simulation runs, stores, resumes
bitwise after a crash, and its figures and checks read the stored result."""

import numpy as np
import pytest

import figures.matrix_completion
from sims import checks, simulation
from sims._checkpoint import Checkpoints
from sims._store import ResultStore, config_hash
from sims.studies import matrix_completion as mc

# 10x10, rank 2, k = 3, half observed; eta*wd = 4e-3 for tau = 0.5: 120 steps, 13 rows, and
# chunks of 5 recorded blocks (3 GD snapshots per run). Every run shares one compiled program
# per model (BN / plain), so the second test compiles nothing new.
TINY = mc.Config(
    num_rows=10,
    num_cols=10,
    true_rank=2,
    rank=3,
    num_observed=50,
    eta_wd=(4e-3,),
    tau_end=1.0,
    record_every=10,
    sharpness_every=5,
    chunk_steps=50,
)
RUNS = ("s0_ewd0.004", "s0_no_wd", "s0_no_norm")


@pytest.mark.slow
def test_tiny_run_stores_expected_arrays_figures_and_checks(tmp_path):
    stored = mc.run_and_store(TINY, results_dir=tmp_path, progress=False)
    s = stored.meta["summary"]
    assert set(s) == set(RUNS)
    assert stored.meta["hash"] == config_hash(mc.NAME, TINY)
    assert stored.meta["provenance"]["versions"]["jax"]
    for name in RUNS:
        assert s[name]["steps"] == 120
        step = stored.arrays[f"{name}.step"]
        np.testing.assert_array_equal(step, np.arange(0, 121, 10))
        for key in ("eos", "sharpness", "norm", "loss", "t_eta_wd", "lanczos_residual"):
            assert stored.arrays[f"{name}.{key}"].shape == (13,), key
        for key in ("group_norms", "group_eta_eff"):
            assert stored.arrays[f"{name}.{key}"].shape == (13, 2), key
        for split in ("train", "test"):
            for kind in ("loss", "rel_error"):
                for prefix in ("", "mid_"):
                    arr = stored.arrays[f"{name}.{prefix}{split}_{kind}"]
                    assert arr.shape == (13,) and np.all(np.isfinite(arr))
        gn = stored.arrays[f"{name}.group_norms"]
        norm = stored.arrays[f"{name}.norm"]
        np.testing.assert_allclose(np.hypot(gn[:, 0], gn[:, 1]), norm, rtol=1e-5)  # float32
        np.testing.assert_allclose(gn[0], [1.0, 1.0], rtol=1e-6)  # unit-norm U and V at init
        assert stored.arrays[f"{name}.t_eta_wd"][-1] == pytest.approx(0.48)
        assert np.all(np.isfinite(stored.arrays[f"{name}.eos"]))
    # S is defined only for the scale-invariant (BN) runs; the plain factorization stores NaN.
    assert np.all(np.isfinite(stored.arrays["s0_ewd0.004.sharpness"]))
    assert np.all(np.isnan(stored.arrays["s0_no_norm.sharpness"]))
    assert not s["s0_no_norm"]["scale_invariant"] and s["s0_no_wd"]["scale_invariant"]
    assert s["s0_no_wd"]["wd"] == 0.0 and s["s0_no_norm"]["wd"] == pytest.approx(8e-3)
    assert s["s0_no_wd"]["norm_min_ratio"] >= -1e-6  # without WD the norm never decreases

    paths = figures.matrix_completion.main(tmp_path, tmp_path / "out")
    assert len(paths) == 3 and all(p.stat().st_size > 10_000 for p in paths)

    ctx = checks.Context(ResultStore(tmp_path))
    ctx._cache[mc.NAME] = stored  # the tiny run, not the quick preset
    names = ["mc_edge_of_stability", "mc_intrinsic_lr", "mc_ablations", "mc_generalization"]
    results = checks.run_checks(ctx, names)
    # A check with nothing to compare in the tiny run (one eta*wd per seed for the intrinsic-LR
    # check) gives one SKIPPED row named after itself, with its reason.
    assert all(r.name.startswith("mc ") or r.skipped for r in results)
    assert [r.name for r in results if r.skipped] == ["mc_intrinsic_lr"]
    assert {r.kind for r in results if not r.skipped} <= {"identity", "derived", "empirical"}
    assert any("never decreases" in r.name and r.passed for r in results)


@pytest.mark.slow  # ~20 s; the other simulations' resume tests run by default
def test_crash_and_resume_is_bitwise_equal(tmp_path, monkeypatch):
    ref = mc.run_and_store(TINY, results_dir=tmp_path / "ref", progress=False)

    # Crash after the second GD snapshot of the no-WD run: the main run is finished (done file)
    # and the no-WD run has a snapshot to resume from.
    original = Checkpoints.save_snapshot
    saved: list[str] = []

    def crashing(self, name, snap):
        original(self, name, snap)
        saved.append(name)
        if saved.count("s0_no_wd") == 2:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(Checkpoints, "save_snapshot", crashing)
    with pytest.raises(KeyboardInterrupt):
        mc.run_and_store(TINY, results_dir=tmp_path / "crash", progress=False)
    assert not (tmp_path / "crash" / mc.NAME / config_hash(mc.NAME, TINY)).exists()
    monkeypatch.setattr(Checkpoints, "save_snapshot", original)

    resumed_from = []  # the `resume` snapshot of every GD run that is (re)started
    gd_wd = simulation.gd_wd  # every simulation's GD runs go through resumable_gd_wd

    def spy(loss, w0, **kw):
        resumed_from.append(kw["resume"])
        return gd_wd(loss, w0, **kw)

    monkeypatch.setattr(simulation, "gd_wd", spy)
    again = mc.run_and_store(TINY, results_dir=tmp_path / "crash", progress=False)
    # The main run came from its done file; the no-WD run continued from its snapshot.
    assert len(resumed_from) == 2
    assert resumed_from[0] is not None and resumed_from[0].done_blocks == 10
    assert resumed_from[1] is None  # the plain-factorization run had not started
    assert sorted(again.arrays) == sorted(ref.arrays)
    for key, arr in ref.arrays.items():
        np.testing.assert_array_equal(again.arrays[key], arr, err_msg=key)
    assert again.meta["summary"] == ref.meta["summary"]
    assert not list((tmp_path / "crash" / mc.NAME).glob(".inprogress-*"))


def test_config_validation():
    with pytest.raises(ValueError, match="num_observed must be in"):
        mc.Config(num_observed=400)
    with pytest.raises(ValueError, match="true_rank must be"):
        mc.Config(true_rank=30)
    with pytest.raises(ValueError, match="ablations must be among"):
        mc.Config(ablations=("no_bn",))
    with pytest.raises(ValueError, match="record_every must divide chunk_steps"):
        mc.Config(chunk_steps=55)
    with pytest.raises(ValueError, match="scale must be"):
        mc.Config.preset("huge")
    full = mc.Config.preset("full")
    assert full.num_observed < full.num_rows * full.num_cols and len(full.seeds) == 3
