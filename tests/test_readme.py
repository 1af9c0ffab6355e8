"""``make readme``: the known-failures section rendered from a theorem report, and the figures
drawn from stored results (synthetic ones here: nothing is simulated)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from figures import readme
from sims import registry
from sims._store import ResultStore


def _report(expected: dict[str, str], unexpected: list[str]) -> dict[str, Any]:
    names = ["identity: Euler", *expected, *unexpected]
    checks = [
        {
            "name": name,
            "claim": f"claim of {name}",
            "kind": "derived",
            "source": "docs/theory.md",
            "predicted": 2.0,
            "measured": 2.5 if name != "identity: Euler" else 2.0,
            "tolerance": "relative 0.1",
            "passed": name == "identity: Euler",
            "details": {},
        }
        for name in names
    ]
    return {
        "scale": "quick",
        "passed": 1,
        "total": len(names),
        "expected_failures": expected,
        "unexpected_failures": unexpected,
        "checks": checks,
        "provenance": {"git": "0123456789abcdef+dirty", "created": "2026-12-01T18:39:00+0000"},
        "results_used": {"phases": {"hash": "0123456789ab", "reused": False}},
        "reused": False,
    }


README = """# Title

intro

## Known failures

<!-- known-failures:start -->
old text
<!-- known-failures:end -->

## After
"""


def test_render_lists_expected_failures_with_reasons() -> None:
    report = _report(
        {
            "ire_net: exact kappa=4 flatter": "quick scale:\n  too few steps | for the IRE gain",
            "ire_net: exact kappa=1 flatter": "the same",
        },
        [],
    )
    text = readme.render_known_failures(report)
    assert "1 of 3 checks pass (scale `quick`, git `0123456+dirty`, 2026-12-01)" in text
    assert "2 expected failures, 0 unexpected" in text
    lines = [line for line in text.splitlines() if line.startswith("- ")]
    # Sorted by name, one line each (the reason's newlines collapsed), with the numbers.
    assert lines == [
        "- **ire_net: exact kappa=1 flatter** (predicted 2, measured 2.5, tolerance "
        "`relative 0.1`): the same",
        "- **ire_net: exact kappa=4 flatter** (predicted 2, measured 2.5, tolerance "
        "`relative 0.1`): quick scale: too few steps | for the IRE gain",
    ]
    assert "No unexpected failures." in text
    assert readme.START not in text and readme.END not in text


def test_render_unexpected_failures_and_none_expected() -> None:
    report = _report({}, ["flow: monotone"])
    report["provenance"] = {}
    text = readme.render_known_failures(report)
    assert "(scale `quick`)" in text
    assert "No expected failures." in text
    assert "**Unexpected failures**" in text
    assert (
        "- **flow: monotone** (predicted 2, measured 2.5, tolerance `relative 0.1`): "
        "claim of flow: monotone" in text
    )
    # A name without a check entry still gets its line.
    report["unexpected_failures"] = ["missing"]
    assert "- **missing**" in readme.render_known_failures(report)


def test_render_rejects_what_is_not_a_report() -> None:
    with pytest.raises(ValueError, match="expected_failures"):
        readme.render_known_failures({"passed": 1, "total": 1})


def test_replace_section_keeps_everything_outside_the_markers() -> None:
    new = readme.replace_section(README, "new\ntext\n")
    assert new == README.replace("old text", "new\ntext")
    assert readme.replace_section(new, "new\ntext") == new  # idempotent
    with pytest.raises(ValueError, match="markers"):
        readme.replace_section("# no markers\n", "x")
    with pytest.raises(ValueError, match="in that order"):
        readme.replace_section(f"{readme.END}\n{readme.START}\n", "x")
    with pytest.raises(ValueError, match="exactly once"):
        readme.replace_section(README + README, "x")


def test_update_readme_from_a_report_file(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(README)
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_report({"a": "reason a"}, [])))
    assert readme.update_readme(path, report)
    text = path.read_text()
    assert "- **a** (predicted 2" in text and "old text" not in text
    assert text.startswith("# Title\n") and text.endswith("## After\n")
    assert not readme.update_readme(path, report)  # unchanged the second time
    with pytest.raises(FileNotFoundError, match="python -m sims check"):
        readme.update_readme(path, tmp_path / "missing.json")


def test_a_report_that_reused_results_is_refused(tmp_path: Path) -> None:
    # The known failures must come from a `make all` that started from an empty results
    # folder: a report that reused a stored result, or does not say, changes nothing.
    path = tmp_path / "README.md"
    path.write_text(README)
    report = _report({"a": "reason a"}, [])
    report["results_used"]["tame"] = {"hash": "abcdefabcdef", "reused": True}
    file = tmp_path / "report.json"
    file.write_text(json.dumps(report))
    with pytest.raises(
        readme.ReusedResultsError, match=r"tame abcdefabcdef.*make clean-results all"
    ):
        readme.update_readme(path, file)
    del report["results_used"]
    file.write_text(json.dumps(report))
    with pytest.raises(readme.ReusedResultsError, match="does not record"):
        readme.update_readme(path, file)
    assert path.read_text() == README
    # `make readme` refuses before drawing anything, with the message, and exits 2.
    (tmp_path / "results" / "checks").mkdir(parents=True)
    (tmp_path / "results" / "checks" / "report.json").write_text(json.dumps(report))
    img = tmp_path / "img"
    args = ["--results-dir", str(tmp_path / "results"), "--readme", str(path)]
    assert readme.main([*args, "--img-dir", str(img)]) == 2
    assert not img.exists() and path.read_text() == README


def test_the_real_readme_has_the_markers() -> None:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert text.count(readme.START) == 1 and text.count(readme.END) == 1
    assert text.index(readme.START) < text.index(readme.END)
    for draw in readme.FIGURES:  # each figure is embedded under the name it is saved as
        assert f"](docs/img/{draw.__name__}.png)" in text


# --------------------------------------------------------------------------------------------
# Figures from synthetic stored results
# --------------------------------------------------------------------------------------------


def _store_synthetic(root: Path) -> None:
    store = ResultStore(root)
    t = np.arange(0, 3000, 10)
    eos = np.where(t < 900, 0.3 * np.exp(t / 500.0), 2 + 0.2 * (-1.0) ** (t // 10))
    sharp = np.where(t < 900, 3.2, 1 + 2.2 * np.exp(-(t - 900) / 300.0))
    cfg = registry.module("phases").Config.preset("quick")
    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {}
    for name in cfg.problems:
        arrays.update({f"{name}.step": t, f"{name}.eos": eos, f"{name}.sharpness": sharp})
        summary[name] = {"phase1_end": 10, "onset": 900, "predicted_onset": 905.0}
    store.save("phases", cfg, arrays, summary)

    cfg = registry.module("gd_vs_flow").Config.preset("quick")
    arrays, summary = {}, {}
    tau = np.linspace(0, 4, 20)
    for name in cfg.problems:
        for start in cfg.starts:
            for i, ewd in enumerate(cfg.eta_wd):
                pre = f"{name}.{start}.{i}"
                arrays[f"{pre}.tau"] = tau
                arrays[f"{pre}.sharpness_phi"] = 3 * np.exp(-tau / 2) + ewd
                arrays[f"{pre}.sharpness_flow_F1"] = 3 * np.exp(-tau / 2)
            summary[f"{name}.{start}"] = {
                "dist_tau2_F1": [0.1 * x for x in cfg.eta_wd],
                "dist_tau2_F0": [0.1] * len(cfg.eta_wd),
                "slope_tau2_F1": 1.0,
                "slope_tau2_F0": 0.0,
            }
    store.save("gd_vs_flow", cfg, arrays, summary)

    cfg = registry.module("ire_flow").Config.preset("quick")
    table = [
        {
            "problem": problem,
            "mode": mode,
            "projector": "midpoint:1",
            "kappa": kappa,
            "speedup": 1 + kappa if mode == "radial" else 1 + kappa / (1 + kappa / 4),
            "predicted": 1 + kappa if mode == "radial" else 1 + kappa / (1 + kappa / 4),
        }
        for problem in ("great_circle", "ire_toy")
        for mode in ("tangent", "radial")
        for kappa in (0.0, 1.0, 3.0, 10.0)
    ]
    store.save("ire_flow", cfg, {"x": np.zeros(1)}, {"table": table})


def test_figures_from_stored_results(tmp_path: Path) -> None:
    _store_synthetic(tmp_path / "results")
    report = tmp_path / "results" / "checks" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps(_report({"a": "reason a"}, [])))
    page = tmp_path / "README.md"
    page.write_text(README)
    img = tmp_path / "img"
    args = ["--results-dir", str(tmp_path / "results"), "--readme", str(page)]
    assert readme.main([*args, "--img-dir", str(img)]) == 0
    pngs = sorted(img.glob("*.png"))
    assert [p.name for p in pngs] == ["eos_phases.png", "gd_vs_flow.png", "ire_speedup.png"]
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(data[16:20], "big") == 700  # width from the IHDR chunk
        assert len(data) < 150_000
    assert "- **a**" in page.read_text()
    assert not list(img.glob(".*"))  # no temporary files left


def _python_blocks() -> list[str]:
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_examples_import_from_theory_alone() -> None:
    # Users need nothing below `theory` (no theory.engine, theory.problems, ...).
    import ast

    blocks = _python_blocks()
    assert len(blocks) >= 2
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("theory"):
                assert node.module == "theory", node.module
            if isinstance(node, ast.Import):
                assert all(not a.name.startswith("theory.") for a in node.names)


@pytest.mark.slow
def test_readme_first_example_runs() -> None:
    # The engine example as written, on 2000 steps instead of 20000 (the onset is at step 403).
    # Measured 37 s on the shared 2-core machine (three compilations): in the slow suite.
    block = _python_blocks()[0]
    assert "steps=20_000" in block
    ns: dict[str, Any] = {}
    exec(block.replace("steps=20_000", "steps=2_000"), ns)
    run = ns["run"]
    assert run.step[-1] == 2000 and len(run.step) == 201
    assert run.onset_step is not None and 300 < run.onset_step < 500
    assert np.all(np.isfinite(run.eos)) and np.all(np.isnan(ns["bare"].eos))
