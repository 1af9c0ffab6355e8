"""The theorem checks: the one list of topic modules, running them, and the report.

Each check states a claim, its kind (what the claim rests on: ``identity``, ``theorem``,
``derived``, ``model``, ``empirical`` or ``regression``; see :mod:`sims.checks.core`), where it
comes from, the predicted value, the measured value, a tolerance with the basis of its threshold
(``exact``, ``derived`` or ``regression``) and the verdict: pass, FAIL, expected FAIL or SKIPPED
with the reason. ``python -m sims check`` runs them all and writes ``<results>/checks/report.md``
and ``report.json`` (atomically), with the counts per kind and which stored results were reused
rather than computed in the run. Checks that need simulation results read the stored ones,
running the simulation at the chosen scale first if there are none.

The result type, the registry and the report live in :mod:`sims.checks.core` (re-exported here);
the checks themselves live in one module per topic, named once in :data:`TOPIC_MODULES` and
imported when the registry is first needed (:func:`load_topics`), so no module here imports a
topic at import time. A topic module::

    from sims.checks import CheckResult, Context, register

    @register("my_check")
    def _my_check(ctx: Context) -> list[CheckResult]:
        return [at_least(name=..., claim=..., kind=..., source=..., threshold=...,
                         measured=..., bound=..., details={...})]

with one builder per comparison (NaN always fails): ``within`` (relative tolerance),
``at_most``, ``below``, ``at_least``, ``above`` (one-sided against a bound), ``bounded`` (a
predicted value and a looser bound), ``eos_onset`` (whether a run reaches the edge),
``condition`` (a condition no comparison states, in words) and ``skipped`` (not measurable
here, with the reason). Every builder takes ``name``, ``claim``, ``kind``, ``source`` and
``threshold``; topic modules never build a ``CheckResult`` themselves.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sims._store import ResultStore
from sims.checks import core as _core
from sims.checks.core import (
    KINDS,
    THRESHOLDS,
    CheckFn,
    CheckResult,
    Context,
    ExpectedFailure,
    Kind,
    Threshold,
    above,
    at_least,
    at_most,
    below,
    bounded,
    condition,
    eos_onset,
    expect_failure,
    register,
    register_table,
    skipped,
    strict_problems,
    unexpected_failures,
    verdict,
    within,
    write_report,
)

__all__ = [
    "FAST_CHECKS",
    "KINDS",
    "THRESHOLDS",
    "TOPIC_MODULES",
    "CheckFn",
    "CheckResult",
    "Context",
    "ExpectedFailure",
    "Kind",
    "Threshold",
    "above",
    "at_least",
    "at_most",
    "below",
    "bounded",
    "condition",
    "eos_onset",
    "expect_failure",
    "load_topics",
    "main",
    "register",
    "register_table",
    "run_checks",
    "skipped",
    "strict_problems",
    "unexpected_failures",
    "verdict",
    "within",
    "write_report",
]

# The checks, one module per topic, in report order: the one place a topic is named.
TOPIC_MODULES: tuple[str, ...] = (
    "sims.checks.identities",
    "sims.checks.eos",
    "sims.checks.flow",
    "sims.checks.tracking",
    "sims.checks.networks",
    "sims.checks.mc",
    "sims.checks.ire",
    "sims.checks.ire_apps",
    "sims.checks.tame",
    "sims.checks.regime",
    "sims.checks.central",
    "sims.checks.predict",
    "sims.checks.adamw",
    "sims.checks.sgd",
    "sims.checks.spectrum",
    "sims.checks.admire",
    "sims.checks.ire_practice",
)
# Checks that need no stored simulation (they compute what they test): run strictly by the
# slow tests (tests/sims/test_sims.py, `make test-slow`, which CI runs), so a new FAIL there
# stops CI.
FAST_CHECKS = (
    "scale_invariance_identities",
    "closed_form_sharpness",
    "norm_recursion",
    "intrinsic_lr",
    "flow_closed_form",
    "flow_monotone",
    "flow_independent",
    "integrator_accuracy",
)


def load_topics() -> dict[str, CheckFn]:
    """Import every topic module (registering its checks) and return the registry."""
    for topic in TOPIC_MODULES:
        importlib.import_module(topic)
    return _core.REGISTRY


def __getattr__(name: str) -> Any:
    """``REGISTRY`` and ``EXPECTED_FAILURES``, complete: the topics are loaded on first use."""
    if name in ("REGISTRY", "EXPECTED_FAILURES"):
        load_topics()
        return getattr(_core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_checks(ctx: Context, names: Sequence[str] | None = None) -> list[CheckResult]:
    """Run the checks ``names`` (default all, in the order of :data:`TOPIC_MODULES`)."""
    load_topics()
    return _core.run_registered(ctx, names)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    registry = load_topics()
    parser = argparse.ArgumentParser(prog="python -m sims check", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"checks to run (default all: {list(registry)})")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--scale", choices=("quick", "full"), default="quick")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 on a FAIL not declared expected, on a declared expected failure that passes "
        "or is not produced, and (at --scale full) on a SKIPPED result",
    )
    parser.add_argument(
        "--since",
        type=float,
        default=None,
        help="seconds since the epoch: stored results created before it count as reused "
        "(default: now; `python -m sims all` passes its own start)",
    )
    ns = parser.parse_args(argv)
    ctx = Context(ResultStore(ns.results_dir), ns.scale)
    if ns.since is not None:
        ctx.since = ns.since
    try:
        results = run_checks(ctx, ns.names)
    except KeyError as err:
        parser.error(str(err))
    ran = ns.names or list(registry)
    tables = [fn(ctx) for check, fn in _core.TABLES.items() if check in ran]
    md, _ = write_report(
        results, Path(ns.results_dir), ns.scale, tables, ran=ran, used=ctx.used, since=ctx.since
    )
    verdicts = [verdict(r, ns.scale) for r in results]
    reused = sorted(f"{sim} {u['hash']}" for sim, u in ctx.used.items() if u["reused"])
    print(
        f"checks: {verdicts.count('pass')} of {len(results)} pass, "
        f"{verdicts.count('expected FAIL')} expected failures, {verdicts.count('SKIPPED')} "
        f"skipped; report in {md}"
    )
    if reused:
        print(f"  reused stored results (created before this run): {', '.join(reused)}")
    for r, v in zip(results, verdicts, strict=True):
        if v in ("FAIL", "expected FAIL"):
            print(
                f"  {v} {r.name}: predicted {_core.fmt(r.predicted)}, "
                f"measured {_core.fmt(r.measured)} ({r.tolerance})"
            )
    problems = strict_problems(results, ran, ns.scale)
    for p in problems:
        if not p.startswith("FAIL "):
            print(f"  {p}")
    return 1 if ns.strict and problems else 0
