"""Simulations, the results store, the command lines, the check registry and figures."""

import json
import math

import numpy as np
import pytest

import figures.__main__ as figures_cli
import figures.phases
import sims.__main__ as sims_cli
from sims import checks, results
from sims._store import MissingResultsError, ResultStore, config_hash
from sims.studies import phases
from theory.engine import SaveAt

TINY = phases.Config(problems=("great_circle",), wd=0.05, steps=3000, record_every=10)


def test_phases_run_store_reuse_and_figure(tmp_path, monkeypatch):
    stored = phases.run_and_store(TINY, results_dir=tmp_path, progress=False)
    s = stored.meta["summary"]["great_circle"]
    # eta*wd = 5e-3: onset near log(2/0.3)/(2 eta wd) ~ 190 steps, then EoS and a falling S.
    assert s["onset"] is not None and abs(s["onset_rel_error"]) < 0.02
    assert abs(s["eos_mean_last_quarter"] - 2) < 0.3
    assert s["sharpness_end"] < s["sharpness_at_onset"]
    for key in ("great_circle.w", "great_circle.eos", "great_circle.distance"):
        assert key in stored.arrays
    assert stored.arrays["great_circle.step"][-1] == 3000
    meta = stored.meta
    assert meta["config"]["wd"] == 0.05 and meta["seed"] == 0
    assert meta["provenance"]["versions"]["jax"]
    assert meta["hash"] == config_hash("phases", TINY)
    # An identical config reuses the stored run without recomputing.
    monkeypatch.setattr(phases, "run", lambda *a, **k: pytest.fail("recomputed"))
    again = phases.run_and_store(TINY, results_dir=tmp_path)
    assert again.path == stored.path
    paths = figures.phases.main(tmp_path, tmp_path / "out")
    assert paths[0].is_file() and paths[0].stat().st_size > 10_000
    # The typed reader: the Config back as the dataclass, runs grouped by name.
    res = results.load("phases", tmp_path)
    assert res.config == TINY and res.path == stored.path
    assert res.summary == stored.meta["summary"]
    run = res.run("great_circle")
    np.testing.assert_array_equal(run["sharpness"], stored.arrays["great_circle.sharpness"])
    assert set(res.runs()) == {"great_circle"}
    table = res.table("great_circle")
    assert table.dtype.names is not None and "eos" in table.dtype.names
    np.testing.assert_array_equal(table["step"], run["step"])
    assert phases.SIM.load(tmp_path).config == TINY


def test_typed_reader_decodes_stored_nonfinite_numbers_once(tmp_path):
    # The store writes a non-finite float as text (JSON has none); sims.results.decode turns it
    # back, in the summary at any depth, and leaves every other string alone.
    nan, inf = float("nan"), float("inf")
    summary = {"a": nan, "b": [1.0, inf, -inf], "c": {"d": nan, "e": "closed form"}, "f": None}
    path = ResultStore(tmp_path).save("phases", TINY, {"x": np.ones(2)}, summary)
    raw = ResultStore(tmp_path).load(path).meta["summary"]
    assert raw["a"] == "nan" and raw["b"] == [1.0, "inf", "-inf"]  # what is on disk
    s = results.load("phases", tmp_path, path=path).summary
    assert math.isnan(s["a"]) and math.isnan(s["c"]["d"]) and s["b"] == [1.0, inf, -inf]
    assert s["c"]["e"] == "closed form" and s["f"] is None
    assert math.isnan(results.number(None)) and results.number("-inf") == -inf
    assert results.number(3) == 3.0 and isinstance(results.number(3), float)
    with pytest.raises(TypeError, match="expected a stored number"):
        results.number("closed form")


def test_figures_fail_loudly_without_results(tmp_path):
    with pytest.raises(MissingResultsError, match="python -m sims phases"):
        figures.phases.main(tmp_path, tmp_path / "out")
    with pytest.raises(SystemExit):
        figures_cli.main(["nonexistent", "--results-dir", str(tmp_path)])


def test_store_is_atomic_and_detects_damage(tmp_path):
    store = ResultStore(tmp_path)
    path = store.save("demo", {"a": 1}, {"x": np.arange(3)}, {"ok": True})
    run = store.load(path)
    np.testing.assert_array_equal(run.arrays["x"], [0, 1, 2])
    assert run.meta["summary"] == {"ok": True}
    assert store.latest("demo").path == path

    class Boom:
        def __array__(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        store.save("demo", {"a": 2}, {"x": Boom()}, {})
    leftovers = [p.name for p in (tmp_path / "demo").iterdir()]
    assert sorted(leftovers) == sorted([path.name, "LATEST"])  # no half-written run
    (path / "arrays.npz").write_bytes(b"not a zip file")
    with pytest.raises(MissingResultsError, match="damaged"):
        store.load(path)
    (path / "meta.json").unlink()
    with pytest.raises(MissingResultsError, match="no complete run"):
        store.load(path)


def test_latest_moves_to_a_reused_result(tmp_path):
    # Issue 15: after a full-scale run, a quick run whose result was already stored must move
    # LATEST back to it (figures read LATEST), without computing again.
    from sims._runner import stored_or_run

    calls = []

    def compute(config):
        def run(ckpt):
            calls.append(config)
            return {"x": np.arange(config)}, {"n": config}

        return run

    def get(config):
        return stored_or_run(
            "demo", {"n": config}, compute(config), results_dir=tmp_path, force=False
        )

    store = ResultStore(tmp_path)
    quick = get(2)
    full = get(5)
    assert store.latest("demo").path == full.path
    again = get(2)  # reused: not computed, but LATEST now names it
    assert calls == [2, 5] and again.path == quick.path
    assert store.latest("demo").path == quick.path


def test_config_validation():
    with pytest.raises(ValueError, match="eos0 must be < 2"):
        phases.Config(eos0=3.0)
    with pytest.raises(ValueError, match="problems must be among"):
        phases.Config(problems=("nope",))
    with pytest.raises(ValueError, match="eta must be a positive"):
        phases.Config(eta=0.0)
    with pytest.raises(ValueError, match="scale must be"):
        phases.Config.preset("huge")
    assert phases.Config.preset("full").wd == 1e-3


def test_command_lines(tmp_path, capsys):
    assert sims_cli.main(["list"]) == 0
    assert "phases" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        sims_cli.main(["phases", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--eta" in out and "--scale" in out and "--record-every" in out
    with pytest.raises(SystemExit) as exc:
        sims_cli.main(["phases", "--eta", "-1", "--results-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "eta must be a positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sims_cli.main(["phases", "--steps", "many"])
    assert sims_cli.main(["frobnicate"]) == 2
    assert not any(tmp_path.iterdir())  # nothing written by failed commands


def test_all_runs_each_simulation_in_its_own_process_and_goes_on_after_a_failure(
    tmp_path, monkeypatch, capsys
):
    """`sims all`: one subprocess per simulation (compiled code must not pile up in one
    process), a failure reported and not fatal to the rest, the checks last, exit 1."""
    calls = []

    def fake_call(cmd):
        calls.append(cmd)
        return 3 if cmd[3] == "tame" else 0

    monkeypatch.setattr(sims_cli.subprocess, "call", fake_call)
    code = sims_cli.main(["all", "--results-dir", str(tmp_path), "--strict"])
    assert code == 1
    names = [c[3] for c in calls]
    assert names == [*sims_cli.SIMS, "check"]
    assert all(c[:3] == [sims_cli.sys.executable, "-m", "sims"] for c in calls)
    assert calls[-1][-1] == "--strict" and str(tmp_path) in calls[0]
    assert "--since" in calls[-1]  # results older than the run count as reused
    assert "tame (exit 3)" in capsys.readouterr().err


def test_checks_registry_and_report(tmp_path):
    ctx = checks.Context(ResultStore(tmp_path))
    results = checks.run_checks(ctx, ["norm_recursion", "intrinsic_lr"])
    assert len(results) == 3 and all(r.passed for r in results)
    md, js = checks.write_report(results, tmp_path, "quick")
    text = md.read_text()
    assert "3 of 3 checks pass" in text and "| identity |" in text
    payload = json.loads(js.read_text())
    assert payload["total"] == 3 and payload["checks"][0]["kind"] == "identity"
    with pytest.raises(KeyError, match="unknown check"):
        checks.run_checks(ctx, ["no_such_check"])
    # Report tables (the regime map's) follow the checks, before the known failures.
    md, _ = checks.write_report(results, tmp_path, "quick", [["## A table", "", "| x |"]])
    text = md.read_text()
    assert text.index("| identity |") < text.index("## A table") < text.index("| x |")
    checks.load_topics()
    assert "regime_initial_edge" in checks._core.TABLES
    with pytest.raises(ValueError, match="already registered"):
        checks.register_table("regime_initial_edge")(lambda ctx: [])


@pytest.mark.slow
def test_gd_vs_flow_tiny_store_and_figures(tmp_path):
    from sims.studies import gd_vs_flow

    cfg = gd_vs_flow.Config(
        problems=("great_circle",),
        eta_wd=(1e-2, 3e-3),
        rows=8,
        tau_end=1.0,
        starts=("equilibrium", "equilibrium_F0"),
    )
    stored = gd_vs_flow.run_and_store(cfg, results_dir=tmp_path, progress=False)
    s = stored.meta["summary"]["great_circle.equilibrium"]
    # From the equilibrium, GD tracks F1 to ~1e-4..1e-3 at these eta*wd and F0 worse.
    assert max(s["dist_tau2_F1"]) < 2e-3
    assert s["dist_end_F1"][-1] < s["dist_end_F0"][-1]
    # Started with F0's (larger) amplitude, GD still follows F1 better than F0.
    s0 = stored.meta["summary"]["great_circle.equilibrium_F0"]
    assert s0["dist_end_F1"][-1] < s0["dist_end_F0"][-1]
    assert stored.arrays["great_circle.equilibrium.0.tau"][-1] >= 1.0
    import figures.gd_vs_flow

    paths = figures.gd_vs_flow.main(tmp_path, tmp_path / "out")
    assert len(paths) == 3 and all(p.stat().st_size > 10_000 for p in paths)
    with pytest.raises(ValueError, match="eta_wd values"):
        gd_vs_flow.Config(eta_wd=(0.5,))


@pytest.mark.slow
def test_networks_tiny_run_and_figures(tmp_path):
    from sims.studies import net_flow, networks

    cfg = networks.Config(
        widths=(16, 16),
        n_train=128,
        eta_wd=(4e-3,),
        tau_end=2.0,  # tau = 2 eta wd t: t eta wd = 1
        record_every=10,
        sharpness_every=5,
    )
    stored = networks.run_and_store(cfg, results_dir=tmp_path, progress=False)
    s = stored.meta["summary"]
    assert set(s) == {"s0_ewd0.004", "s0_no_wd", "s0_no_norm"}
    main = s["s0_ewd0.004"]
    assert main["onset"] is not None and main["sharpness_end"] < main["sharpness_start"]
    # at midpoints (checked against dense Hessians in the next test): S falls in the EoS
    assert main["sharpness_end_mid"] < main["sharpness_at_onset_mid"]
    mid = stored.arrays["s0_ewd0.004.sharpness_mid"]
    assert np.all(np.isfinite(mid))  # 26 rows: all of them are measured
    assert s["s0_no_wd"]["onset"] is None  # without weight decay no EoS within the run
    assert not s["s0_no_norm"]["scale_invariant"]
    assert 0.5 < main["test_accuracy"] <= 1.0
    assert stored.arrays["s0_ewd0.004.t_eta_wd"][-1] == pytest.approx(1.0, rel=0.02)
    small = net_flow.Config(eta_wd=(3e-3,), tau_end=0.2, rows=4)
    nf = net_flow.run_and_store(small, results_dir=tmp_path, progress=False)
    assert nf.meta["summary"]["dist_end"][0] < 0.05
    import figures.networks

    paths = figures.networks.main(tmp_path, tmp_path / "out")
    assert len(paths) == 4 and all(p.stat().st_size > 10_000 for p in paths)
    with pytest.raises(ValueError, match="needs cifar_path"):
        networks.Config(dataset="cifar10")


@pytest.mark.slow
def test_midpoint_curvature_against_dense_hessian():
    # networks.midpoint_columns (theory.analysis.midpoint on the chosen rows): eta * lambda_1(H)
    # and the spherical sharpness lambda_1(M H M) (M the per-group norms) at (w_t + w_{t+1}) / 2,
    # against eigvalsh of jax.hessian at a midpoint rebuilt here from the GD+WD step; the
    # spherical one also at the normalized point.
    import jax

    from sims.studies import networks
    from tests._losses import random_loss
    from theory.core.invariance import normalize
    from theory.engine.gd import gd_wd

    groups = (5, 7)
    loss, w0 = random_loss(12, groups, 0)
    eta, wd = 0.5, 0.01
    res = gd_wd(
        loss,
        w0,
        eta=eta,
        wd=wd,
        steps=1000,
        saveat=SaveAt(every=10),
        groups=groups,
        perturbation=1e-10,
    )
    assert res.onset_step is not None
    eos, sharp = networks.midpoint_columns(loss, res, eta, wd)
    rows = np.flatnonzero(np.isfinite(eos))
    assert np.array_equal(rows, np.flatnonzero(np.isfinite(sharp)))
    assert np.array_equal(rows, networks.midpoint_rows(res))
    settled = rows[res.step[rows] >= res.onset_step]
    assert len(rows) - len(settled) >= 8 and len(settled) >= 8  # before and in the EoS
    assert len(rows) <= 2 * networks.MID_ROWS + 2 and rows[-1] == len(res.step) - 1
    for i in rows:
        w = jax.numpy.asarray(res.w[i])
        w_next = (1 - eta * wd) * w - eta * jax.grad(loss)(w)
        mid = (w + w_next) / 2
        ref = eta * np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(mid)))[-1]
        assert eos[i] == pytest.approx(ref, rel=1e-8)
        ref_s = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(normalize(mid, groups))))[-1]
        assert sharp[i] == pytest.approx(ref_s, rel=1e-8)


@pytest.mark.slow
def test_fast_theorem_checks_pass_strictly(tmp_path):
    # The checks that need no stored simulation, run as `make all` runs them: any unexpected
    # FAIL among them fails `make test-slow` (and so CI).
    ctx = checks.Context(ResultStore(tmp_path))
    results = checks.run_checks(ctx, list(checks.FAST_CHECKS))
    assert len(results) >= 20
    bad = checks.unexpected_failures(results)
    assert not bad, [(r.name, r.predicted, r.measured, r.tolerance) for r in bad]


def test_expected_failures_are_reported_not_counted(tmp_path):
    def row(name, passed, kind="derived"):
        return checks.condition(
            name=name,
            claim="claim",
            kind=kind,
            threshold="exact",
            source="src",
            predicted=0.0,
            measured=0.0 if passed else 1.0,
            tolerance="<= 0",
            passed=passed,
        )

    ok = row("a", True, "identity")
    known = next(n for n, e in checks.EXPECTED_FAILURES.items() if "quick" in e.scales)
    exp, new = row(known, False), row("b", False)
    assert checks.unexpected_failures([ok, exp, new], "quick") == [new]
    md, js = checks.write_report([ok, exp], tmp_path, "quick", ran=["norm_recursion"])
    text = md.read_text()
    assert "expected FAIL" in text and "## Known failures" in text and "0 unexpected" in text
    assert json.loads(js.read_text())["unexpected_failures"] == []
    with pytest.raises(ValueError, match="reason"):
        checks.expect_failure("x", " ", check="norm_recursion")


def test_check_results_are_built_with_keywords():
    with pytest.raises(TypeError):
        checks.CheckResult("a", "claim", "identity", "src", 0.0, 0.0, "<= 1", "exact", True)  # type: ignore[call-arg]


def test_checks_module_imports_no_topic_and_every_topic_registers():
    import subprocess
    import sys

    code = (
        "import sys, sims.checks as c; "
        "assert not [m for m in c.TOPIC_MODULES if m in sys.modules], 'topic imported'; "
        "reg = c.load_topics(); print(len(reg))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import importlib

    from sims.checks import core as checks_core

    for topic in checks.TOPIC_MODULES:
        module = importlib.import_module(topic)
        assert any(fn.__module__ == module.__name__ for fn in checks_core.REGISTRY.values()), topic
    assert set(checks.FAST_CHECKS) <= set(checks.REGISTRY)


@pytest.mark.slow
def test_great_circle_period2_check_passes(tmp_path):
    """The derived check runs GD+WD through the engine and Lanczos: every row passes and each
    tolerance is below the eta*wd that separates the candidate edges."""
    from sims._store import ResultStore
    from sims.checks import Context, run_checks

    rows = run_checks(Context(ResultStore(tmp_path)), ["great_circle_period2"])
    assert len(rows) == 12 and all(r.passed and r.kind == "derived" for r in rows)
    edges = [r for r in rows if "angular instability" in r.name]
    assert all(abs(r.measured - r.predicted) < 0.01 * (2 - r.predicted) for r in edges)


@pytest.mark.slow  # two network inits compile (~10 s idle)
def test_resnet_in_the_networks_study_and_the_regime_map():
    # The ResNet is one more architecture of both studies: built from their configs (the runs
    # themselves are measured in the issue notes; here, no compilation).
    from sims.studies import networks, regime_map
    from theory.problems import nets

    cfg = networks.Config(model="resnet", channels=(2, 3), blocks=2, n_train=16)
    problem = networks.make_network(cfg, seed=0, norm="batch")
    assert len(problem.groups) == 1 + 2 * 2 * 2 and problem.w0.shape == (sum(problem.groups),)
    with pytest.raises(ValueError, match="model='resnet' needs image data"):
        networks.make_network(networks.Config(model="resnet", dataset="mnist1d"), 0, "batch")
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        networks.Config(blocks=0)
    rcfg = regime_map.Config(resnet_channels=(4, 8), resnet_blocks=2)
    names = [a["name"] for a in regime_map.architectures(rcfg) if a["model"] == "resnet"]
    assert names == ["digits_resnet4-8x2_bn_ce", "digits_resnet4-8x2_ln_mse"]
    arch = next(a for a in regime_map.architectures(rcfg) if a["model"] == "resnet")
    assert isinstance(regime_map.make_network(rcfg, arch).predict.network.model, nets.ResNet)
