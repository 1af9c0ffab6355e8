"""The regime classifier (theory/analysis/regimes.py) on synthetic runs of known regime, and the
regime
map simulation (sims/studies/regime_map.py) on one tiny real sweep."""

import math

import numpy as np
import pytest

from theory.analysis.regimes import REGIMES, RegimeCriteria, catapult_cycles, classify_regime

N = 200
STEP = np.arange(N) * 5.0


def _ramp(onset_row: int, start: float = 0.5) -> np.ndarray:
    """An EoS quantity rising geometrically from ``start`` to 2 at ``onset_row``."""
    return start * (2.0 / start) ** (np.arange(N) / onset_row)


def _run(
    *,
    onset_row: int = 40,
    iter_level: float = 2.05,
    iter_amp: float = 0.05,
    mid_level: float = 2.0,
    mid_noise: float = 0.02,
    s_decay: float = 0.3,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A run that rises to the edge at ``onset_row`` and then oscillates with period 2 about
    ``iter_level`` at the iterates and ``mid_level`` at the midpoints; after the onset the
    spherical sharpness falls by the factor ``exp(-s_decay)`` (measured every 4th row)."""
    rng = np.random.default_rng(seed)
    eos = _ramp(onset_row)
    after = np.arange(N) >= onset_row
    sign = np.where(np.arange(N) % 2 == 0, 1.0, -1.0)
    eos[after] = iter_level + iter_amp * sign[after]
    eos[onset_row] = max(eos[onset_row], 2.0)
    mid = np.where(after, mid_level + mid_noise * rng.standard_normal(N), eos)
    mid[np.arange(N) % 4 != 0] = np.nan
    frac = np.clip((np.arange(N) - onset_row) / (N - onset_row), 0, 1)
    sharp = 50.0 * np.exp(-s_decay * frac)
    sharp_mid = np.where(np.arange(N) % 4 == 0, sharp, np.nan)
    loss = 2.0 * np.exp(-np.arange(N) / 30.0) + 0.05
    norm = 10.0 * np.exp(-np.arange(N) / 400.0)
    return {"eos": eos, "eos_mid": mid, "sharpness_mid": sharp_mid, "loss": loss, "norm": norm}


def _classify(run, **kw):
    return classify_regime(
        STEP,
        run["eos"],
        run["loss"],
        **{
            **{
                "eos_mid": run["eos_mid"],
                "sharpness_mid": run["sharpness_mid"],
                "norm": run["norm"],
            },
            **kw,
        },
    )


def test_tame_run_is_tame_and_measured():
    res = _classify(_run())
    assert res.regime == "tame", res.reasons
    m = res.measurements
    assert m["onset_step"] == STEP[40]
    assert abs(m["eos_mid_mean"] - 2.0) < 0.02
    assert abs(m["eos_iter_mean"] - 2.05) < 0.01
    assert m["sharpness_ratio"] < 0.98
    assert m["settled_rows"] >= 30
    assert m["cycles"] == 0 and m["eos_mid_source"] == "midpoints"
    assert m["eos_start"] == pytest.approx(0.5)
    assert res.as_dict()["regime"] == "tame"


def test_midpoint_band_edges():
    # Midpoint average 2.08 is inside 2 +- 0.1, 2.12 and 1.88 are outside.
    assert _classify(_run(mid_level=2.08, mid_noise=0.0)).regime == "tame"
    res = _classify(_run(mid_level=2.12, mid_noise=0.0))
    assert res.regime == "inflated" and "midpoint mean 2.120" in res.reasons[0]
    assert _classify(_run(mid_level=1.88, mid_noise=0.0)).regime == "below_edge"


def test_inflated_when_the_iterates_are_inflated():
    # The digits measurement: iterates ~2.9, midpoints ~2.05 -> inflated by the iterates.
    res = _classify(_run(iter_level=2.9, iter_amp=0.8, mid_level=2.05))
    assert res.regime == "inflated"
    assert any("iterate mean" in r for r in res.reasons)
    # The same run with a looser iterate tolerance is tame.
    loose = RegimeCriteria(iterate_tol=1.0)
    assert _classify(_run(iter_level=2.9, iter_amp=0.8, mid_level=2.05), criteria=loose).regime == (
        "tame"
    )


def test_stalled_when_the_sharpness_does_not_fall():
    res = _classify(_run(s_decay=0.0))
    assert res.regime == "stalled" and "does not fall" in res.reasons[1]
    assert res.measurements["sharpness_ratio"] == pytest.approx(1.0)
    # A rising sharpness too.
    assert _classify(_run(s_decay=-0.2)).regime == "stalled"


def test_no_eos_and_unresolved():
    run = _run()
    below = np.minimum(_ramp(150), 1.9)  # reaches 1.9 and stays
    res = classify_regime(STEP, below, run["loss"])
    assert res.regime == "no_eos" and res.measurements["onset_step"] is None
    assert res.measurements["eos_max"] == pytest.approx(1.9)
    # Onset 3 rows before the end: too few settled midpoint rows.
    late = _run(onset_row=N - 3)
    res = _classify(late)
    assert res.regime == "unresolved", res.reasons
    assert res.measurements["onset_step"] == STEP[N - 3]


def test_catapult_cycles():
    run = _run()
    loss, eos = run["loss"].copy(), run["eos"].copy()
    # Three catapults after the onset: the loss jumps x100 for 3 rows, then eos relaxes to 1.0
    # for 10 rows (the norm grew), then the run returns to the edge.
    for start in (60, 100, 140):
        loss[start : start + 3] *= 100
        eos[start : start + 3] = 5.0
        eos[start + 3 : start + 13] = 1.0
    res = _classify({**run, "loss": loss, "eos": eos})
    assert res.regime == "catapult"
    assert res.measurements["cycles"] == 3 and res.measurements["spikes"] == 3
    assert catapult_cycles(loss[40:], eos[40:]) == (3, 3)
    # One catapult is not a cycle pattern: classified by the settled phase instead.
    loss1, eos1 = run["loss"].copy(), run["eos"].copy()
    loss1[60:63] *= 100
    eos1[63:73] = 1.0
    assert _classify({**run, "loss": loss1, "eos": eos1}).regime == "tame"
    # A loss spike without the relaxation below 1.5 (wandering) is no cycle.
    loss2 = run["loss"].copy()
    loss2[60:63] *= 100
    loss2[100:103] *= 100
    assert catapult_cycles(loss2[40:], run["eos"][40:]) == (1, 0)


def test_divergence():
    run = _run()
    loss = run["loss"].copy()
    loss[150:] = np.nan
    res = _classify({**run, "loss": loss})
    assert res.regime == "diverged" and res.measurements["diverged_step"] == STEP[150]


def test_iterates_stand_in_without_midpoints():
    run = _run(iter_level=2.02, iter_amp=0.05)
    res = classify_regime(
        STEP,
        run["eos"],
        run["loss"],
        sharpness=np.where(np.isfinite(run["sharpness_mid"]), run["sharpness_mid"], np.nan),
    )
    assert res.measurements["eos_mid_source"] == "iterates"
    assert res.regime == "tame"
    assert abs(res.measurements["eos_mid_mean"] - 2.02) < 0.01


def test_progressive_sharpening_measured():
    run = _run()
    s = run["sharpness_mid"].copy()
    pre = np.arange(N) < 40
    s[pre] = np.where(np.isfinite(s[pre]), np.linspace(20, 60, 40), np.nan)
    res = _classify({**run, "sharpness_mid": s})
    assert res.measurements["sharpness_start"] == pytest.approx(20.0)
    assert res.measurements["sharpness_pre_onset"] == pytest.approx(s[36])
    assert res.measurements["sharpening"] == pytest.approx(s[36] / 20.0)


def test_regimes_listed_and_criteria_validated():
    assert set(REGIMES) == {
        "diverged",
        "no_eos",
        "unresolved",
        "catapult",
        "tame",
        "inflated",
        "below_edge",
        "stalled",
    }
    with pytest.raises(ValueError, match="tame_tol"):
        RegimeCriteria(tame_tol=-0.1)
    with pytest.raises(ValueError, match="catapult_relax"):
        RegimeCriteria(catapult_relax=2.5)
    with pytest.raises(ValueError, match="catapult_loss_factor"):
        RegimeCriteria(catapult_loss_factor=1.0)
    with pytest.raises(ValueError, match="settle_frac"):
        RegimeCriteria(settle_frac=1.0)
    with pytest.raises(ValueError, match="min_cycles"):
        RegimeCriteria(min_cycles=0)
    with pytest.raises(TypeError, match="edge"):
        RegimeCriteria(edge="two")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="criteria"):
        classify_regime(STEP, np.ones(N), np.ones(N), criteria={"edge": 2})  # type: ignore[arg-type]


def test_bad_inputs_named():
    with pytest.raises(ValueError, match="loss must have the shape"):
        classify_regime(STEP, np.ones(N), np.ones(N - 1))
    with pytest.raises(ValueError, match="eos_mid must have the shape"):
        classify_regime(STEP, np.ones(N), np.ones(N), eos_mid=np.ones(3))
    with pytest.raises(ValueError, match="strictly increasing"):
        classify_regime(STEP[::-1], np.ones(N), np.ones(N))
    with pytest.raises(ValueError, match="at least 2 rows"):
        classify_regime([0.0], [1.0], [1.0])
    assert math.isnan(classify_regime(STEP, np.ones(N), np.ones(N)).measurements["sharpness_start"])


# --------------------------------------------------------------------------------------------
# One tiny real sweep: the engine's batched run, the midpoints, the classification, the store,
# the checks and the figures
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_regime_map(tmp_path):
    import figures.regime_map
    from sims import checks
    from sims._store import ResultStore
    from sims.studies import regime_map

    cfg = regime_map.Config(
        datasets=("digits",),
        n_train=64,
        widths=(8,),
        norm_loss=("layer-mse",),
        eos0=(0.3, 3.0),
        eta_wd=(1e-3, 3e-2),
        steps=200,
        record_every=5,
        sharpness_every=5,
        mid_rows=8,
        pre_rows=3,
    )
    stored = regime_map.run_and_store(cfg, results_dir=tmp_path, progress=False)
    s = stored.meta["summary"]
    assert len(s) == 4
    slow_run = s["digits_mlp8-8_ln_mse_e00.3_ewd0.001"]
    fast_run = s["digits_mlp8-8_ln_mse_e00.3_ewd0.03"]
    # eta was set so that eta * lambda_1(H(w0)) = 0.3: the tracker measures it at step 0.
    assert abs(slow_run["eos0"] / 0.3 - 1) < 0.01
    # Phase II from 0.3 at eta*wd = 1e-3 needs log(2/0.3)/0.002 ~ 950 steps > 200: no EoS.
    assert slow_run["predicted_onset"] > 900
    assert slow_run["regime"] == "no_eos", slow_run["reasons"]
    # At eta*wd = 3e-2 the edge is reached within ~35 steps and the large oscillation inflates
    # the EoS quantity at the midpoints above 2.1: inflated.
    assert fast_run["onset_step"] is not None and float(fast_run["onset_step"]) < 60
    assert fast_run["regime"] == "inflated", fast_run["reasons"]
    assert float(fast_run["eos_mid_mean"]) > 2.1
    # Started above the edge, every run grows its norm and comes down from eos0 = 3.
    for name in ("digits_mlp8-8_ln_mse_e03_ewd0.001", "digits_mlp8-8_ln_mse_e03_ewd0.03"):
        assert s[name]["regime"] != "diverged"
        assert float(s[name]["norm_growth"]) > 1
    arr = stored.arrays
    mid = arr["digits_mlp8-8_ln_mse_e00.3_ewd0.03.eos_mid"]
    assert np.isfinite(mid).sum() >= 8 and arr["digits_mlp8-8_ln_mse.step"][-1] == 200
    # The checks run on the stored map (pass or fail, each result complete) ...
    ctx = checks.Context(ResultStore(tmp_path))
    ctx._cache["regime_map"] = stored
    names = [n for n in checks.load_topics() if n.startswith("regime_")]
    results = checks.run_checks(ctx, names)
    assert {r.kind for r in results} <= {"identity", "derived", "empirical", "regression"}
    initial = [r for r in results if "target eos0" in r.name]
    assert initial and initial[0].passed
    # ... and the figures draw from it.
    paths = figures.regime_map.main(tmp_path, tmp_path / "out")
    assert len(paths) == 3 and all(p.stat().st_size > 10_000 for p in paths)


# --------------------------------------------------------------------------------------------
# The map's design: widths paired with normalization-loss pairs, zero-padded MNIST-1D inputs
# --------------------------------------------------------------------------------------------


def test_paired_widths_and_validation():
    from sims.studies import regime_map

    quick = regime_map.Config.preset("quick")
    names = [a["name"] for a in regime_map.architectures(quick)]
    assert names == [
        "digits_mlp32-32_bn_ce",
        "digits_mlp16-16_ln_mse",
        "mnist1d_mlp32-32_bn_ce",
        "mnist1d_mlp16-16_ln_mse",
    ]
    full = regime_map.Config.preset("full")
    assert len(regime_map.architectures(full)) == 20
    with pytest.raises(ValueError, match="equal lengths"):
        regime_map.Config(widths=(16, 32, 64), cross_widths=False)


@pytest.mark.slow
def test_padded_mnist1d_is_the_unpadded_network():
    """Zero inputs with zero weights: the same loss and gradient, no gradient on the padded
    weights, the same per-layer norms; and the parameter layout of the digits network of equal
    widths (so the two share compiled programs)."""
    import jax
    import jax.numpy as jnp

    from sims.studies import regime_map

    cfg = regime_map.Config(n_train=32, widths=(8,), norm_loss=("batch-ce",))
    arch = {a["dataset"]: a for a in regime_map.architectures(cfg)}
    padded = regime_map.make_network(cfg, arch["mnist1d"])
    plain = regime_map.make_network(
        regime_map.Config(**{**cfg.__dict__, "pad_inputs": False}), arch["mnist1d"]
    )
    assert regime_map.input_padding(cfg, arch["mnist1d"]) == 24
    assert regime_map.input_padding(cfg, arch["digits"]) == 0
    assert padded.unravel.shapes[0] == (64, 8) and plain.unravel.shapes[0] == (40, 8)
    assert padded.unravel.shapes[1:] == plain.unravel.shapes[1:]
    k = 40 * 8
    w_plain = np.asarray(plain.w0)
    w_pad = np.asarray(padded.w0)
    first = w_pad[: 64 * 8].reshape(64, 8)
    np.testing.assert_array_equal(first[:40].ravel(), w_plain[:k])
    assert not np.any(first[40:])
    np.testing.assert_array_equal(w_pad[64 * 8 :], w_plain[k:])
    assert float(padded.loss(padded.w0)) == pytest.approx(float(plain.loss(plain.w0)), rel=1e-6)
    g_pad = np.asarray(jax.grad(padded.loss)(padded.w0))
    g_plain = np.asarray(jax.grad(plain.loss)(plain.w0))
    assert not np.any(g_pad[: 64 * 8].reshape(64, 8)[40:])
    np.testing.assert_allclose(g_pad[: 64 * 8].reshape(64, 8)[:40].ravel(), g_plain[:k], atol=1e-6)
    np.testing.assert_allclose(g_pad[64 * 8 :], g_plain[k:], atol=1e-6)
    # Weight decay keeps the padded weights at 0: one GD+WD step leaves them 0.
    w1 = jnp.asarray(w_pad) * (1 - 1e-3) - 0.1 * jnp.asarray(g_pad)
    assert not np.any(np.asarray(w1[: 64 * 8]).reshape(64, 8)[40:])


def test_results_stored_with_the_old_label_read_as_inflated():
    from sims.studies.regime_map import relabel
    from theory.analysis.regimes import REGIMES

    out = relabel({"a": {"regime": "chaotic", "x": 1}, "b": {"regime": "tame"}, "c": {}})
    assert out == {"a": {"regime": "inflated", "x": 1}, "b": {"regime": "tame"}, "c": {}}
    assert "chaotic" not in REGIMES and "inflated" in REGIMES


# --------------------------------------------------------------------------------------------
# The new path: tracking only every track_stride-th recorded row (issue 23)
# --------------------------------------------------------------------------------------------


def test_row_stride_validation_named():
    from sims.studies import regime_map
    from theory.engine import LanczosTracker, RowStrideTracker

    with pytest.raises(ValueError, match=r"track_stride must be odd.*got 2"):
        regime_map.Config(track_stride=2)
    with pytest.raises(ValueError, match=r"sharpness_every \(5\) must then equal record_every"):
        regime_map.Config(record_every=15, sharpness_every=5, track_stride=3)
    full = regime_map.Config.preset("full")
    assert full.track_stride == 3 and full.sharpness_every == full.record_every == 15
    assert full.dense_steps == 300
    with pytest.raises(ValueError, match="tracking must be 'new' or 'old', got 'fast'"):
        regime_map.Config.preset("full", tracking="fast")  # type: ignore[arg-type]
    old = regime_map.Config.preset("full", tracking="old")
    assert old.track_stride == 1 and old.sharpness_every == 5
    assert isinstance(regime_map.make_tracker(old), LanczosTracker)
    # The tracker itself is tested in tests/engine/test_stride.py.
    assert isinstance(regime_map.make_tracker(full), RowStrideTracker)


def test_midpoint_rows_with_unsolved_rows():
    """With ``eos`` NaN on unsolved rows, the settled midpoint rows still end at the run's last
    row (read from the loss), and start from the first solved row at the edge."""
    from sims.studies.regime_map import midpoint_row_indices

    n = 40
    eos = np.where(np.arange(n) < 10, 1.0, 2.05)
    loss = np.ones(n)
    dense = midpoint_row_indices(eos, 6, 3, 0.25, loss=loss)
    sparse_eos = np.where(np.arange(n) % 3 == 0, eos, np.nan)  # rows 0, 3, ..., 39 solved
    sparse = midpoint_row_indices(sparse_eos, 6, 3, 0.25, loss=loss)
    assert dense[-1] == sparse[-1] == n - 1
    # onset: row 10 (dense) and row 12 (the first solved row at the edge)
    assert dense[0] == 0 and 9 in dense and 11 in sparse
    # without the loss the last solved row ends the run (row 39 is solved here: 39 % 3 == 0)
    assert midpoint_row_indices(sparse_eos[:-1], 6, 3, 0.25)[-1] == 36
    # a divergence at row 30: no midpoint row after it
    loss_div = np.where(np.arange(n) < 30, 1.0, np.nan)
    assert midpoint_row_indices(sparse_eos, 6, 3, 0.25, loss=loss_div).max() == 29


def test_classifier_reads_thinned_iterate_rows():
    """With ``eos`` solved on every third row only (NaN between, as with ``track_stride = 3``)
    the synthetic tame, inflated and no-EoS runs keep their regime; the onset moves to the
    first solved row at the edge."""
    keep = np.arange(N) % 3 == 0
    for kw, regime in (({}, "tame"), ({"iter_level": 2.9}, "inflated")):
        run = _run(**kw)
        thin = {**run, "eos": np.where(keep, run["eos"], np.nan)}
        dense, sparse = _classify(run), _classify(thin)
        assert dense.regime == sparse.regime == regime, (dense.reasons, sparse.reasons)
        assert dense.measurements["onset_step"] == STEP[40]
        assert sparse.measurements["onset_step"] == STEP[42]  # 42: first row % 3 == 0 after 40
    flat = {**_run(), "eos": np.where(keep, 0.5, np.nan)}
    assert _classify(flat).regime == "no_eos"
