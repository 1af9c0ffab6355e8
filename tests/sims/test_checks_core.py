"""The theorem checks' infrastructure: kinds and thresholds, always a row, strict semantics,
expected-failure declarations, builders only, and the record of reused results.

Nothing here simulates: the checks are fakes registered for one test, the stored results are
written by hand.
"""

from __future__ import annotations

import ast
import json
import math
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sims import checks
from sims._store import ResultStore
from sims.checks import core

CHECKS_DIR = Path(checks.__file__).resolve().parent


def _row(name: str, passed: bool, **kw: Any) -> checks.CheckResult:
    claim: dict[str, Any] = {
        "kind": "derived",
        "threshold": "exact",
        "source": "src",
        "claim": "claim",
        **kw,
    }
    return checks.at_most(name=name, measured=0.0 if passed else 1.0, bound=0.5, **claim)


# --------------------------------------------------------------------------------------------
# Kinds and thresholds
# --------------------------------------------------------------------------------------------


def test_kinds_and_thresholds_are_validated():
    assert checks.KINDS == ("identity", "theorem", "derived", "model", "empirical", "regression")
    assert checks.THRESHOLDS == ("exact", "derived", "regression")
    r = _row("a", True, kind="model", threshold="regression")
    assert r.kind == "model" and r.threshold == "regression" and r.passed
    with pytest.raises(ValueError, match="kind 'guess'"):
        _row("a", True, kind="guess")
    with pytest.raises(ValueError, match="threshold 'loose'"):
        _row("a", True, threshold="loose")
    with pytest.raises(ValueError, match="regression threshold"):
        _row("a", True, kind="regression", threshold="derived")
    with pytest.raises(ValueError, match="needs a reason"):
        checks.skipped(
            name="a", claim="c", kind="derived", threshold="exact", source="s", reason=" "
        )


def test_report_shows_kind_threshold_and_counts(tmp_path):
    rows = [
        _row("id", True, kind="identity", threshold="derived"),
        _row("emp", False, kind="empirical", threshold="regression"),
        checks.skipped(
            name="later",
            claim="c",
            kind="theorem",
            threshold="exact",
            source="s",
            reason="full scale only",
        ),
    ]
    md, js = checks.write_report(rows, tmp_path, "quick", ran=[])
    text = md.read_text()
    assert (
        "| check | kind | claim | predicted | measured | tolerance | threshold | result |" in text
    )
    assert "| emp | empirical |" in text and "| regression | **FAIL** |" in text
    assert "SKIPPED: full scale only" in text
    assert "| identity | 1 | 1 | 0 | 0 | 0 | 0 |" in text  # the per-kind counts
    payload = json.loads(js.read_text())
    assert payload["counts_by_kind"] == {
        "identity": {"pass": 1},
        "empirical": {"FAIL": 1},
        "theorem": {"SKIPPED": 1},
    }
    assert payload["counts_by_threshold"]["regression"] == {"FAIL": 1}
    assert payload["skipped"] == {"later": "full scale only"}
    assert payload["checks"][2]["skipped"] == "full scale only"
    assert math.isnan(payload["checks"][2]["measured"])


# --------------------------------------------------------------------------------------------
# Always a row; strict semantics
# --------------------------------------------------------------------------------------------


def test_a_check_always_produces_a_row(monkeypatch, capsys):
    def empty(ctx):
        return []

    def broken(ctx):
        raise RuntimeError("no data")

    monkeypatch.setitem(core.REGISTRY, "fake_empty", empty)
    monkeypatch.setitem(core.REGISTRY, "fake_broken", broken)
    ctx = checks.Context(ResultStore("unused"))
    a, b = core.run_registered(ctx, ["fake_empty", "fake_broken"])
    assert a.name == "fake_empty" and a.skipped and checks.verdict(a, "quick") == "SKIPPED"
    assert b.name == "fake_broken" and checks.verdict(b, "quick") == "FAIL"
    assert "RuntimeError: no data" in b.claim and "no data" in capsys.readouterr().err


def test_strict_fails_on_unexpected_pass_missing_declaration_and_skips_at_full(monkeypatch):
    monkeypatch.setattr(core, "EXPECTED_FAILURES", {})
    monkeypatch.setitem(core.REGISTRY, "fake", lambda ctx: [])
    checks.expect_failure("known bad", "a reason", check="fake")
    checks.expect_failure("full only", "a reason", check="fake", scales=("full",))
    checks.expect_failure("never made", "a reason", check="fake")
    rows = [_row("known bad", False), _row("full only", True), _row("fine", True)]
    # At quick: "full only" is a plain pass; "never made" is declared and not produced.
    problems = checks.strict_problems(rows, ["fake"], "quick")
    assert problems == [
        "declared expected failure not produced: never made (check 'fake' ran at scale "
        "'quick' and produced no such result)"
    ]
    assert [checks.verdict(r, "quick") for r in rows] == ["expected FAIL", "pass", "pass"]
    # A declared expected failure that starts passing must fail --strict.
    rows[0] = _row("known bad", True)
    assert checks.verdict(rows[0], "quick") == "unexpected pass"
    assert any(
        "passes (remove the declaration): known bad" in p
        for p in checks.strict_problems(rows, ["fake"], "quick")
    )
    # At full, "full only" passing is an unexpected pass; a check that did not run cannot
    # produce anything, so its declarations are not missing.
    assert checks.verdict(rows[1], "full") == "unexpected pass"
    assert not [p for p in checks.strict_problems(rows, [], "full") if "not produced" in p]
    # SKIPPED is allowed at quick and fails --strict at full.
    skip = checks.skipped(
        name="s", claim="c", kind="derived", threshold="exact", source="x", reason="data at full"
    )
    assert not checks.strict_problems([skip], [], "quick")
    assert checks.strict_problems([skip], [], "full") == [
        "SKIPPED at the full scale: s (data at full)"
    ]
    # A declaration for a check that does not exist is a problem at any scale.
    checks.expect_failure("orphan", "a reason", check="no_such_check")
    assert any(
        "'no_such_check', which is not registered" in p
        for p in checks.strict_problems([], [], "quick")
    )


def test_main_strict_exit_code(monkeypatch, tmp_path):
    monkeypatch.setitem(core.REGISTRY, "fake", lambda ctx: [_row("fake: bad", True)])
    checks.load_topics()
    monkeypatch.setitem(
        core.EXPECTED_FAILURES, "fake: bad", core.ExpectedFailure("r", "fake", ("quick", "full"))
    )
    args = ["fake", "--results-dir", str(tmp_path)]
    assert checks.main(args) == 0  # reported, not fatal without --strict
    assert checks.main([*args, "--strict"]) == 1
    report = json.loads((tmp_path / "checks" / "report.json").read_text())
    assert report["unexpected_passes"] == ["fake: bad"] and report["checks_run"] == ["fake"]


# --------------------------------------------------------------------------------------------
# Declarations and builders: static checks of the topic modules
# --------------------------------------------------------------------------------------------


def test_every_declared_expected_failure_names_a_registered_check():
    checks.load_topics()
    assert core.EXPECTED_FAILURES, "no expected failures declared?"
    for name, exp in core.EXPECTED_FAILURES.items():
        assert exp.check in core.REGISTRY, (name, exp.check)
        assert exp.reason.strip() and set(exp.scales) <= {"quick", "full"}
    assert not core.missing_expected([], [], "quick")


def construction_violations(source: str) -> list[str]:
    """Lines of ``source`` that make a check result or registry entry without the shared
    builders of :mod:`sims.checks.core`: a ``CheckResult(...)`` call, or a write to
    ``REGISTRY`` or ``EXPECTED_FAILURES``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            called = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            if called == "CheckResult":
                out.append(f"line {node.lineno}: CheckResult(...)")
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AugAssign | ast.AnnAssign)
            else []
        )
        for t in targets:
            base = t.value if isinstance(t, ast.Subscript) else t
            name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
            if name in ("REGISTRY", "EXPECTED_FAILURES"):
                out.append(f"line {t.lineno}: writes {name}")
    return out


def test_topic_modules_use_only_the_shared_builders():
    topics = sorted(p for p in CHECKS_DIR.glob("*.py") if p.name not in ("__init__.py", "core.py"))
    assert {f"sims.checks.{p.stem}" for p in topics} == set(checks.TOPIC_MODULES)
    for path in topics:
        assert not construction_violations(path.read_text()), path.name
    # A planted violation shows the test can fail.
    planted = (
        "from sims.checks.core import CheckResult, REGISTRY\n"
        "def f(ctx):\n"
        "    return [CheckResult(name='x', claim='c', kind='derived', source='s', predicted=0.0,\n"
        "                        measured=0.0, tolerance='t', threshold='exact', passed=True)]\n"
        "REGISTRY['x'] = f\n"
    )
    assert sorted(construction_violations(planted)) == [
        "line 3: CheckResult(...)",
        "line 5: writes REGISTRY",
    ]


# --------------------------------------------------------------------------------------------
# Reused results
# --------------------------------------------------------------------------------------------


def test_reused_results_are_recorded(monkeypatch, tmp_path):
    store = ResultStore(tmp_path)

    class Config:
        @staticmethod
        def preset(scale: str) -> dict[str, str]:
            return {"scale": scale}

    def run_and_store(cfg: Any, results_dir: Any) -> Any:
        found = store.find("demo", cfg)
        path = found or store.save("demo", cfg, {"x": np.zeros(2)}, {})
        return store.load(path)

    fake = types.SimpleNamespace(Config=Config, run_and_store=run_and_store)
    monkeypatch.setattr(core.registry, "module", lambda sim: fake)
    ctx = checks.Context(store)
    ctx.results("demo")  # computed by this run
    assert ctx.used["demo"]["reused"] is False
    assert ctx.used["demo"]["hash"] == ctx.results("demo").meta["hash"]
    later = checks.Context(store, since=time.time() + 5)
    later.results("demo")  # found on disk, created before this run
    assert later.used["demo"]["reused"] is True
    md, js = checks.write_report([], tmp_path, "quick", ran=[], used=later.used)
    payload = json.loads(js.read_text())
    assert payload["reused"] is True and payload["results_used"]["demo"]["reused"] is True
    assert "(reused, created" in md.read_text()
    md, js = checks.write_report([], tmp_path, "quick", ran=[], used=ctx.used)
    assert json.loads(js.read_text())["reused"] is False
    assert "(computed in this run)" in md.read_text()
