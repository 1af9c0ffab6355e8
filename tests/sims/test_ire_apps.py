"""IRE applications: the paper's toy (closed-form first steps) and the two simulations, tiny.

Float64 on the toy (x64 is enabled in conftest): the first iterates are polynomials of the start,
so they must match the hand computation to rounding (rtol 1e-12).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import figures.ire_networks
import figures.ire_toy
from sims import checks
from sims._store import ResultStore
from sims.studies import ire_networks, ire_toy
from theory.problems.analytic import ire_toy_chart_loss

U0, V0 = 1.0, 0.01


TOY = ire_toy.Config(steps=40, kappas=(90.0, 9000.0), exact_kappas=())
TINY_NET = ire_networks.Config(
    n_train=64,
    widths=(6, 6),
    steps=10,
    record_every=5,
    kappas=(2.0,),
    selectors=("mask",),
    k=2,
    refresh_every=5,
    lanczos_iters=6,
    spectrum_k=0,
    timing_steps=5,
    timing_repeats=0,
)


@pytest.fixture(scope="module")
def toy_stored(tmp_path_factory):
    return ire_toy.run_and_store(TOY, results_dir=tmp_path_factory.mktemp("toy"), progress=False)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # GD: u1 = u0 - eta u0 v0^2, v1 = v0 - eta (1 + u0^2) v0.
        ("gd_eta1", (U0 - U0 * V0**2, V0 - 2 * V0)),
        ("gd_eta2", (U0 - 2 * U0 * V0**2, V0 - 2 * 2 * V0)),
        # IRE mask: diag H = (v^2, 1 + u^2), gamma = 1/2 selects u: its step is times 1 + kappa.
        ("mask_k90", (U0 - 91 * U0 * V0**2, V0 - 2 * V0)),
        ("mask_k9000", (U0 - 9001 * U0 * V0**2, V0 - 2 * V0)),
    ],
)
def test_toy_first_step_closed_form(toy_stored, name, expected):
    arr = toy_stored.arrays
    assert arr[f"{name}.step"][1] == 1
    got = (arr[f"{name}.u"][1], arr[f"{name}.v"][1])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_toy_exact_first_step_against_eigh():
    """Exact IRE: u1 = w0 - eta (g + kappa (I - e e^T) g), e the top eigenvector (numpy eigh).

    (At step 0 the midpoint of (w0, w0) is w0: ``point="midpoint"`` takes the same first step.)
    """
    cfg = ire_toy.Config(exact_kappas=(90.0,))
    spec = next(s for s in ire_toy.runs(cfg) if s["name"] == "exact_current_k90")
    opt = ire_toy.make_optimizer(cfg, spec)
    w = jnp.asarray([U0, V0], jnp.float64)
    upd, _ = opt.update(jax.grad(ire_toy_chart_loss)(w), opt.init(w), w, loss_args=())
    w0 = np.array([U0, V0])
    hess = np.array([[V0**2, 2 * U0 * V0], [2 * U0 * V0, 1 + U0**2]])
    e = np.linalg.eigh(hess)[1][:, -1]
    g = np.array([U0 * V0**2, (1 + U0**2) * V0])
    expected = w0 - (g + 90 * (g - e * (e @ g)))
    assert expected[0] > U0  # the reversal: the first step moves u away from 0
    np.testing.assert_allclose(np.asarray(w + upd), expected, rtol=1e-10)


def test_toy_sim_stores_and_checks(toy_stored, tmp_path):
    stored = toy_stored
    s, arr = stored.meta["summary"], stored.arrays
    assert set(s) == {"gd_eta1", "gd_eta2", "mask_k90", "mask_k9000"}
    for name in s:
        for key in ("step", "u", "v", "loss", "sharpness", "lambda_max"):
            assert arr[f"{name}.{key}"].shape == (41,)
    assert s["gd_eta2"]["diverged_at"] is not None
    d = s["gd_eta2"]["diverged_at"]
    # diverged_at: the first step whose iterate is non-finite (the engine's convention).
    assert np.all(np.isnan(arr["gd_eta2.u"][d:])) and np.isfinite(arr["gd_eta2.u"][d - 1])
    assert s["gd_eta1"]["diverged_at"] is None
    # On Gamma the top eigenvalue is 1 + u^2; v = 0.01 off it moves it by O(v^2).
    np.testing.assert_allclose(arr["gd_eta1.lambda_max"], arr["gd_eta1.sharpness"], atol=1e-3)
    assert s["mask_k9000"]["steps_below"]["1.01"] == 1
    ctx = checks.Context(ResultStore(tmp_path))
    ctx._cache[ire_toy.NAME] = stored
    for name in ("ire_toy_divergence", "ire_toy_flatter", "ire_toy_kappa_order"):
        results = checks.REGISTRY[name](ctx)
        assert results and all(r.passed for r in results), results
    paths = figures.ire_toy.main(stored.path.parent.parent, tmp_path / "out")
    assert paths[0].is_file() and paths[0].stat().st_size > 10_000


def _check_network_run(stored, selectors):
    s, arr = stored.meta["summary"], stored.arrays
    assert set(s) == {"s0_base"} | {f"s0_{sel}_k2" for sel in selectors}
    for name, info in s.items():
        assert arr[f"{name}.step"].tolist() == [0, 5, 10]
        assert arr[f"{name}.sharpness"].shape == arr[f"{name}.eos"].shape == (3,)
        assert arr[f"{name}.group_norms"].shape == (3, 2)
        assert np.all(np.isfinite(arr[f"{name}.sharpness"])) and info["diverged_at"] is None
        assert 0 <= info["test_accuracy"] <= 1
    # All runs start at the same weights, and the recorded norms are those of the weights.
    assert len({info["sharpness_start"] for info in s.values()}) == 1
    return s, arr


@pytest.mark.slow
def test_network_sim_mask_stores_and_figure(tmp_path):
    stored = ire_networks.run_and_store(TINY_NET, results_dir=tmp_path, progress=False)
    s, _ = _check_network_run(stored, ("mask",))
    assert all(info["overhead"] is None for info in s.values())
    ctx = checks.Context(ResultStore(tmp_path))
    ctx._cache[ire_networks.NAME] = stored
    results = checks.REGISTRY["ire_net_sharpness"](ctx)
    assert len(results) == 2 and all(np.isfinite(r.measured) for r in results)
    paths = figures.ire_networks.main(tmp_path, tmp_path / "out")
    assert paths[0].is_file() and paths[0].stat().st_size > 10_000


@pytest.mark.slow
def test_network_sim_exact_timing_spectrum(tmp_path):
    cfg = dataclasses.replace(TINY_NET, selectors=("exact", "mask"), spectrum_k=4, timing_repeats=1)
    stored = ire_networks.run_and_store(cfg, results_dir=tmp_path, progress=False)
    s, arr = _check_network_run(stored, ("exact", "mask"))
    for name, info in s.items():
        assert arr[f"{name}.spectrum_end"].shape == (4,)
        assert info["overhead"] > 0 and np.isfinite(info["lambda_ratio_end"])
    assert s["s0_base"]["overhead"] == 1.0
    assert s["s0_exact_k2"]["lanczos_matvecs_last"] > 0
    ctx = checks.Context(ResultStore(tmp_path))
    ctx._cache[ire_networks.NAME] = stored
    for name in ("ire_net_sharpness", "ire_net_exact_eos"):
        assert all(np.isfinite(r.measured) for r in checks.REGISTRY[name](ctx))
    # the EoS quantity at the base's midpoints of the last third of the rows (one row here)
    assert arr["s0_exact_k2.eos_mid_tail"].shape == (1,)
    assert s["s0_base"]["eos_mid_rows"] == 1 and np.isfinite(s["s0_base"]["eos_mid_end"])
    # the wall-clock overhead is a benchmark (benchmarks/bench_ire.py), not a theorem check
    assert "ire_net_overhead" not in checks.REGISTRY
    paths = figures.ire_networks.main(tmp_path, tmp_path / "out")
    assert paths[0].is_file()


def _fake_networks_run(summary, selectors=("exact",)):
    from pathlib import Path

    from sims._store import StoredRun, _jsonable

    cfg = dataclasses.replace(ire_networks.Config(), selectors=selectors, kappas=(1.0, 4.0))
    meta = {"config": _jsonable(cfg), "summary": summary}
    return StoredRun(Path("fake"), {}, meta)


def _net_run(selector, kappa, mid, std, rows=10):
    return {
        "selector": selector,
        "kappa": kappa,
        "seed": 0,
        "eos_end": mid + 0.5,
        "lambda_ratio_end": 0.5,
        "eos_mid_end": mid,
        "eos_mid_std": std,
        "eos_mid_rows": rows,
    }


def test_exact_eos_check_compares_midpoints_within_standard_errors(tmp_path):
    # ire_net_exact_eos: |mean_exact - mean_base| <= 3 standard errors of the difference,
    # each from its rows' spread: 0.05 apart with std 0.1 over 10 rows passes (3 se = 0.134),
    # 0.2 apart fails; stale results (no midpoint quantity) and runs without exact IRE give
    # SKIPPED rows with the reason.
    summary = {
        "s0_base": _net_run("none", 0.0, 2.0, 0.1),
        "s0_exact_k1": _net_run("exact", 1.0, 2.05, 0.1),
        "s0_exact_k4": _net_run("exact", 4.0, 1.8, 0.1),
    }
    ctx = checks.Context(ResultStore(tmp_path))
    ctx._cache[ire_networks.NAME] = _fake_networks_run(summary)
    k1, k4 = checks.REGISTRY["ire_net_exact_eos"](ctx)
    assert k1.passed and not k4.passed and k1.threshold == "derived"
    tol = 3 * np.hypot(0.1 / np.sqrt(10), 0.1 / np.sqrt(10))
    assert f"{tol:.3g}" in k1.tolerance and k1.predicted == 2.0 and k1.measured == 2.05
    assert k4.details["edge_of_amplified"] == pytest.approx(2 / (5 * 0.5))
    for run in summary.values():
        del run["eos_mid_end"]
    ctx._cache[ire_networks.NAME] = _fake_networks_run(summary)
    rows = checks.REGISTRY["ire_net_exact_eos"](ctx)
    assert len(rows) == 2 and all("rerun ire_networks" in r.skipped for r in rows)
    ctx._cache[ire_networks.NAME] = _fake_networks_run(
        {"s0_base": summary["s0_base"]}, selectors=("mask",)
    )
    rows = checks.REGISTRY["ire_net_exact_eos"](ctx)
    assert len(rows) == 2 and all("no exact-IRE runs" in r.skipped for r in rows)


def test_configs_validate():
    with pytest.raises(ValueError, match="record_every"):
        ire_toy.Config(steps=10, record_every=3)
    with pytest.raises(ValueError, match="selectors"):
        ire_networks.Config(selectors=("nope",))
    with pytest.raises(ValueError, match="spectrum_k"):
        ire_networks.Config(k=10, spectrum_k=10)
    with pytest.raises(ValueError, match="refresh_every must divide timing_steps"):
        ire_networks.Config(refresh_every=10, timing_steps=15)
    with pytest.raises(ValueError, match="scale"):
        ire_toy.Config.preset("huge")
