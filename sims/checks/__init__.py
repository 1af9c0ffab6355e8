"""The theorem checks: the one list of topic modules, running them, and the report.

Each check states a claim, where it comes from (``identity``: exact mathematics of scale
invariance; ``theorem``: stated in a paper; ``derived``: a prediction derived in docs/theory.md and
not read in a paper; ``regression``: a bound from an earlier measurement of this code), the
predicted value, the measured value, a tolerance and pass/fail. ``python -m sims check`` runs them
all and writes ``<results>/checks/report.md`` and ``report.json`` (atomically). Checks that need
simulation results read the stored ones, running the simulation at the chosen scale first if there
are none.

The result type, the registry and the report live in :mod:`sims.checks.core` (re-exported here);
the checks themselves live in one module per topic, named once in :data:`TOPIC_MODULES` and
imported when the registry is first needed (:func:`load_topics`), so no module here imports a
topic at import time. A topic module::

    from sims.checks import CheckResult, Context, register

    @register("my_check")
    def _my_check(ctx: Context) -> list[CheckResult]:
        return [at_least(name=..., claim=..., kind=..., source=..., measured=..., bound=...,
                     details={...})]

with one builder per comparison (NaN always fails): ``within`` (relative tolerance),
``at_most``, ``below``, ``at_least``, ``above`` (one-sided against a bound), ``bounded`` (a
predicted value and a looser bound) and ``eos_onset`` (whether a run reaches the edge); a
condition no builder states is a hand-built ``CheckResult(...)`` with keywords.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sims._store import ResultStore
from sims.checks import core as _core
from sims.checks.core import (
    CheckFn,
    CheckResult,
    Context,
    Kind,
    above,
    at_least,
    at_most,
    below,
    bounded,
    eos_onset,
    expect_failure,
    register,
    register_table,
    unexpected_failures,
    within,
    write_report,
)

__all__ = [
    "FAST_CHECKS",
    "TOPIC_MODULES",
    "CheckFn",
    "CheckResult",
    "Context",
    "Kind",
    "above",
    "at_least",
    "at_most",
    "below",
    "bounded",
    "eos_onset",
    "expect_failure",
    "load_topics",
    "main",
    "register",
    "register_table",
    "run_checks",
    "unexpected_failures",
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
)
# Checks that need no stored simulation (they compute what they test): run strictly by the
# default test suite (tests/sims/test_sims.py), so a new FAIL there stops CI.
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
        help="exit 1 if a check fails that is not a declared expected failure",
    )
    ns = parser.parse_args(argv)
    ctx = Context(ResultStore(ns.results_dir), ns.scale)
    try:
        results = run_checks(ctx, ns.names)
    except KeyError as err:
        parser.error(str(err))
    ran = ns.names or list(registry)
    tables = [fn(ctx) for check, fn in _core.TABLES.items() if check in ran]
    md, _ = write_report(results, Path(ns.results_dir), ns.scale, tables)
    failed = [r for r in results if not r.passed]
    unexpected = unexpected_failures(results)
    print(
        f"checks: {len(results) - len(failed)} of {len(results)} pass, "
        f"{len(failed) - len(unexpected)} expected failures; report in {md}"
    )
    for r in failed:
        tag = "expected FAIL" if r.name in _core.EXPECTED_FAILURES else "FAIL"
        print(
            f"  {tag} {r.name}: predicted {_core.fmt(r.predicted)}, "
            f"measured {_core.fmt(r.measured)} ({r.tolerance})"
        )
    return 1 if ns.strict and unexpected else 0
