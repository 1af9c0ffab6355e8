"""The core of the theorem checks: one result type, the registry, expected failures, the report.

This module imports no topic module. A topic module (``sims/checks/<topic>.py``) imports from
here (or from :mod:`sims.checks`, which re-exports these names), decorates its check functions
with :func:`register`, and is named once in ``TOPIC_MODULES`` of :mod:`sims.checks`, which
imports the topics when the registry is first needed.

Kinds of a check: ``identity`` (exact mathematics of scale invariance), ``theorem`` (stated in a
paper), ``derived`` (predicted in docs/theory.md or docs/ire.md, not read in a paper) and
``regression`` (a bound set from an earlier measurement of this code, not a prediction: it
catches a change of behaviour, not a wrong theory; the claim says which measurement) and
``model`` (how closely a continuous model built here, e.g. Edge Flow, tracks a measured GD run:
the model's output is the prediction and the tolerance is the claim).
"""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, Unpack

import numpy as np

from sims import registry
from sims._store import ResultStore, StoredRun, _write_text, provenance
from sims.results import Result, from_stored

Kind = Literal["identity", "theorem", "derived", "regression", "model"]


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """One measured statement (built with keywords only).

    ``predicted`` is the predicted value, or the bound of a one-sided check; ``tolerance`` says
    in words what passes.
    """

    name: str
    claim: str
    kind: Kind
    source: str
    predicted: float
    measured: float
    tolerance: str
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What checks may use: the results store and the scale for missing simulations."""

    store: ResultStore
    scale: str = "quick"
    _cache: dict[str, StoredRun] = field(default_factory=dict)

    def results(self, sim: str) -> StoredRun:
        """Stored results of ``sim`` at ``scale`` (computed first if absent)."""
        if sim not in self._cache:
            module: Any = registry.module(sim)
            cfg = module.Config.preset(self.scale)
            self._cache[sim] = module.run_and_store(cfg, results_dir=self.store.root)
        return self._cache[sim]

    def result(self, sim: str) -> Result[Any]:
        """:meth:`results` read back with the simulation's typed ``Config``
        (:func:`sims.results.load`)."""
        return from_stored(sim, self.results(sim))


CheckFn = Callable[[Context], list[CheckResult]]
REGISTRY: dict[str, CheckFn] = {}
# Check results (by name) known to fail, with the reason: shown as "expected FAIL" in the
# report and not counted by --strict. Declared next to the checks (expect_failure).
EXPECTED_FAILURES: dict[str, str] = {}


def register(name: str) -> Callable[[CheckFn], CheckFn]:
    """Decorator: register ``fn(ctx) -> list[CheckResult]`` as the check ``name``."""

    def deco(fn: CheckFn) -> CheckFn:
        if name in REGISTRY and REGISTRY[name] is not fn:
            raise ValueError(f"two checks named {name!r}")
        REGISTRY[name] = fn
        return fn

    return deco


TableFn = Callable[["Context"], list[str]]
TABLES: dict[str, TableFn] = {}


def register_table(check: str) -> Callable[[TableFn], TableFn]:
    """Register ``fn(ctx) -> markdown lines`` (a heading and a table) for the report, written
    whenever the registered check ``check`` runs (from the same stored results)."""

    def deco(fn: TableFn) -> TableFn:
        if check in TABLES:
            raise ValueError(f"a report table for check {check!r} is already registered")
        TABLES[check] = fn
        return fn

    return deco


def expect_failure(name: str, reason: str) -> None:
    """Declare that the check result ``name`` is known to fail, and why."""
    if not reason.strip():
        raise ValueError(f"an expected failure needs a reason: {name!r}")
    EXPECTED_FAILURES[name] = reason


def unexpected_failures(results: Sequence[CheckResult]) -> list[CheckResult]:
    """The failed results that are not declared expected failures."""
    return [r for r in results if not r.passed and r.name not in EXPECTED_FAILURES]


# --------------------------------------------------------------------------------------------
# Builders: one comparison each (eos_onset: whether an onset exists), NaN always fails
# --------------------------------------------------------------------------------------------


class Claim(TypedDict):
    """What every check result states besides its numbers (the builders' keyword arguments)."""

    name: str
    claim: str
    kind: Kind
    source: str


def _compare(
    claim: Claim,
    *,
    predicted: float,
    measured: float,
    tolerance: str,
    passed: bool,
    details: Mapping[str, Any] | None,
) -> CheckResult:
    return CheckResult(
        **claim,
        predicted=float(predicted),
        measured=float(measured),
        tolerance=tolerance,
        passed=bool(np.isfinite(measured) and passed),  # NaN never passes
        details=dict(details or {}),
    )


def within(
    *,
    predicted: float,
    measured: float,
    rtol: float,
    details: Mapping[str, Any] | None = None,
    **claim: Unpack[Claim],
) -> CheckResult:
    """Pass iff ``|measured - predicted| / |predicted| <= rtol``."""
    ok = abs(measured - predicted) / abs(predicted) <= rtol
    tol = f"relative {rtol:g}"
    return _compare(
        claim, predicted=predicted, measured=measured, tolerance=tol, passed=ok, details=details
    )


Op = Literal["<=", "<", ">=", ">"]
_OPS: dict[Op, Callable[[Any, Any], Any]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}


class OneSided(Protocol):
    def __call__(
        self,
        *,
        measured: float,
        bound: float,
        details: Mapping[str, Any] | None = None,
        **claim: Unpack[Claim],
    ) -> CheckResult: ...


def _one_sided(op: Op, doc: str) -> OneSided:
    compare = _OPS[op]

    def build(
        *,
        measured: float,
        bound: float,
        details: Mapping[str, Any] | None = None,
        **claim: Unpack[Claim],
    ) -> CheckResult:
        return _compare(
            claim,
            predicted=0.0 if op == "<=" else bound,
            measured=measured,
            tolerance=f"{op} {bound:g}" if op == "<=" else f"{op} {bound:.6g}",
            passed=compare(measured, bound),
            details=details,
        )

    build.__doc__ = doc
    return build


at_most = _one_sided("<=", "Pass iff ``measured <= bound`` (an error or a count; predicted 0).")
below = _one_sided("<", "Pass iff ``measured < bound`` strictly (``predicted`` reports the bound).")
above = _one_sided(">", "Pass iff ``measured > bound`` strictly (``predicted`` reports the bound).")
at_least = _one_sided(">=", "Pass iff ``measured >= bound`` (``predicted`` reports the bound).")


def bounded(
    *,
    predicted: float,
    measured: float,
    op: Op,
    bound: float,
    details: Mapping[str, Any] | None = None,
    **claim: Unpack[Claim],
) -> CheckResult:
    """Pass iff ``measured <op> bound`` (``op`` one of ``<=``, ``<``, ``>=``, ``>``), where
    ``predicted`` is a value the bound loosens: a slope predicted 1 that passes at ``>= 0.9``, an
    earlier measurement with slack. Where ``predicted`` is 0 (``<=``) or the bound itself, use
    the one-sided builders above."""
    return _compare(
        claim,
        predicted=predicted,
        measured=measured,
        tolerance=f"{op} {bound:g}",
        passed=_OPS[op](measured, bound),
        details=details,
    )


def eos_onset(
    *,
    onset: object,
    measured: float,
    expected: bool = True,
    details: Mapping[str, Any] | None = None,
    **claim: Unpack[Claim],
) -> CheckResult:
    """Pass iff the run reaches the edge of stability (its ``onset`` is not ``None``) or, with
    ``expected=False``, never does; ``measured`` reports the EoS quantity (NaN fails) and
    ``predicted`` the edge, 2 (0 where no onset is expected)."""
    return _compare(
        claim,
        predicted=2.0 if expected else 0.0,
        measured=measured,
        tolerance="onset exists" if expected else "no onset",
        passed=(onset is not None) == expected,
        details=details,
    )


# --------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------


def run_registered(ctx: Context, names: Sequence[str] | None = None) -> list[CheckResult]:
    """Run the registered checks ``names`` (default all, in registration order)."""
    names = list(REGISTRY) if not names else list(names)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise KeyError(f"unknown check(s) {unknown}; available: {list(REGISTRY)}")
    out: list[CheckResult] = []
    for name in names:
        out += REGISTRY[name](ctx)
    return out


def fmt(x: float) -> str:
    return f"{x:.4g}" if np.isfinite(x) else str(x)


def _verdict(r: CheckResult) -> str:
    if r.name in EXPECTED_FAILURES:
        return "expected FAIL" if not r.passed else "pass (expected to fail)"
    return "pass" if r.passed else "**FAIL**"


def write_report(
    results: list[CheckResult],
    root: Path,
    scale: str,
    tables: Sequence[list[str]] = (),
) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` under ``<root>/checks/`` (atomic writes); ``tables``
    (markdown lines each, from :func:`register_table`) follow the checks in ``report.md``."""
    out = Path(root) / "checks"
    out.mkdir(parents=True, exist_ok=True)
    passed = sum(r.passed for r in results)
    unexpected = unexpected_failures(results)
    expected = [r for r in results if not r.passed and r.name in EXPECTED_FAILURES]
    payload = {
        "scale": scale,
        "passed": passed,
        "total": len(results),
        "expected_failures": {r.name: EXPECTED_FAILURES[r.name] for r in expected},
        "unexpected_failures": [r.name for r in unexpected],
        "checks": [asdict(r) for r in results],
        "provenance": provenance(),
    }
    _write_text(out / "report.json", json.dumps(payload, indent=2, default=str))
    lines = [
        "# Theorem report",
        "",
        f"{passed} of {len(results)} checks pass (scale `{scale}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}); {len(expected)} expected failures, "
        f"{len(unexpected)} unexpected. Kinds: *identity* (exact mathematics), *theorem* "
        "(stated in a paper), *derived* (predicted in docs/theory.md, not read in a paper), "
        "*regression* (a bound from an earlier measurement of this code, not a prediction).",
        "",
        "| check | kind | claim | predicted | measured | tolerance | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.kind} | {r.claim} | {fmt(r.predicted)} | {fmt(r.measured)} | "
            f"{r.tolerance} | {_verdict(r)} |"
        )
    for table in tables:
        lines += ["", *table]
    if expected:
        lines += ["", "## Known failures", ""]
        lines += [f"- **{r.name}**: {EXPECTED_FAILURES[r.name]}" for r in expected]
    _write_text(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md", out / "report.json"
