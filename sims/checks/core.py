"""The core of the theorem checks: one result type, the registry, expected failures, the report.

This module imports no topic module. A topic module (``sims/checks/<topic>.py``) imports from
here (or from :mod:`sims.checks`, which re-exports these names), decorates its check functions
with :func:`register`, builds every result with the builders below (never ``CheckResult(...)``
itself: ``tests/sims/test_checks_core.py`` enforces it) and is named once in ``TOPIC_MODULES``
of :mod:`sims.checks`, which imports the topics when the registry is first needed.

Kind of a check (what the claim rests on), :data:`KINDS`:

* ``identity``: exact mathematics (of scale invariance, of the update, of a closed form);
* ``theorem``: stated and proved in a paper, on a problem that meets its assumptions;
* ``derived``: derived in the project's docs (docs/theory.md, docs/ire.md, ...), not read in a
  paper;
* ``model``: a prediction of an informal model (the central flow: derived for small steps and
  validated by experiment in its paper, not proved; Edge Flow, a model built here, against
  a measured GD run);
* ``empirical``: an observation (a paper's experiment, a network where no theorem's assumptions
  are verified);
* ``regression``: a bound from an earlier measurement of this code (it catches a change of
  behaviour, not a wrong theory; the claim says which measurement).

Basis of the threshold (what decides pass/fail), :data:`THRESHOLDS`:

* ``exact``: no slack: a sign, an order, a count, an existence, or a comparison of two
  measured values;
* ``derived``: the tolerance follows from an argument stated with the check (float64 rounding,
  the order of a neglected term, the spread measured across the run's cycles);
* ``regression``: a number set from an earlier measurement or chosen after seeing the data.

Every registered check produces at least one row: ``pass``, ``FAIL``, ``expected FAIL`` or
``SKIPPED`` with its reason (:func:`skipped`); a check that returns nothing, or raises, gets a
row from :func:`run_registered` saying so. :func:`strict_problems` lists what ``--strict`` fails
on: unexpected failures, declared expected failures that pass or that no check produced, and
(at the full scale) skipped rows.
"""

from __future__ import annotations

import json
import math
import operator
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, Unpack, get_args

import numpy as np

from sims import registry
from sims._store import ResultStore, StoredRun, _write_text, provenance
from sims.results import Result, from_stored

Kind = Literal["identity", "theorem", "derived", "model", "empirical", "regression"]
KINDS: tuple[Kind, ...] = get_args(Kind)
Threshold = Literal["exact", "derived", "regression"]
THRESHOLDS: tuple[Threshold, ...] = get_args(Threshold)
SCALES = ("quick", "full")


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """One measured statement. Built by the builders of this module (keywords only).

    ``predicted`` is the predicted value, or the bound of a one-sided check; ``tolerance`` says
    in words what passes and ``threshold`` on what that rests (:data:`THRESHOLDS`). A skipped
    result has ``skipped`` set to the reason, NaN numbers and ``passed`` False. ``kind`` and
    ``threshold`` are ``None`` only on the rows :func:`run_registered` makes for a check that
    returned nothing or raised.
    """

    name: str
    claim: str
    kind: Kind | None
    source: str
    predicted: float
    measured: float
    tolerance: str
    threshold: Threshold | None
    passed: bool
    skipped: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"check {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.threshold is not None and self.threshold not in THRESHOLDS:
            raise ValueError(
                f"check {self.name!r}: threshold {self.threshold!r} is not one of {THRESHOLDS}"
            )
        if self.kind == "regression" and self.threshold != "regression":
            raise ValueError(
                f"check {self.name!r}: a regression check has a regression threshold, "
                f"got {self.threshold!r}"
            )
        if self.skipped and self.passed:
            raise ValueError(f"check {self.name!r}: a skipped result cannot pass")


@dataclass
class Context:
    """What checks may use: the results store and the scale for missing simulations.

    ``since`` (seconds since the epoch; default: when the context was made) separates results
    computed in this run from reused ones: every stored result a check reads is recorded in
    ``used`` with its config hash, creation time and ``reused`` (created before ``since``).
    """

    store: ResultStore
    scale: str = "quick"
    since: float = field(default_factory=time.time)
    used: dict[str, dict[str, Any]] = field(default_factory=dict)
    _cache: dict[str, StoredRun] = field(default_factory=dict)

    def results(self, sim: str) -> StoredRun:
        """Stored results of ``sim`` at ``scale`` (computed first if absent)."""
        if sim not in self._cache:
            module: Any = registry.module(sim)
            cfg = module.Config.preset(self.scale)
            stored = module.run_and_store(cfg, results_dir=self.store.root)
            self._cache[sim] = stored
            self.used[sim] = result_origin(stored, self.since)
        return self._cache[sim]

    def result(self, sim: str) -> Result[Any]:
        """:meth:`results` read back with the simulation's typed ``Config``
        (:func:`sims.results.load`)."""
        return from_stored(sim, self.results(sim))


def result_origin(stored: StoredRun, since: float) -> dict[str, Any]:
    """Config hash, path, creation time of a stored result and whether it was ``reused``:
    created before ``since`` (an unreadable creation time counts as reused)."""
    created = str((stored.meta.get("provenance") or {}).get("created", ""))
    try:
        stamp = datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        stamp = -math.inf
    return {
        "hash": stored.meta.get("hash", stored.path.name),
        "path": str(stored.path),
        "created": created,
        # creation times have 1 s resolution: a result created in the second the run began
        # counts as computed in it
        "reused": bool(stamp < math.floor(since)),
    }


CheckFn = Callable[[Context], list[CheckResult]]
REGISTRY: dict[str, CheckFn] = {}


@dataclass(frozen=True)
class ExpectedFailure:
    """A check result known to fail: why, which registered check produces it, and at which
    scales (a result declared at ``full`` only may pass, or not exist, at ``quick``)."""

    reason: str
    check: str
    scales: tuple[str, ...]


# Check results (by name) known to fail: shown as "expected FAIL" in the report and not
# counted as failures; --strict fails if one passes or is not produced. Declared next to the
# checks (expect_failure).
EXPECTED_FAILURES: dict[str, ExpectedFailure] = {}


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


def expect_failure(name: str, reason: str, *, check: str, scales: Sequence[str] = SCALES) -> None:
    """Declare that the result ``name`` of the registered check ``check`` is known to fail at
    ``scales``, and why."""
    if not reason.strip():
        raise ValueError(f"an expected failure needs a reason: {name!r}")
    bad = [s for s in scales if s not in SCALES]
    if bad or not scales:
        raise ValueError(f"expected failure {name!r}: scales {list(scales)} not among {SCALES}")
    EXPECTED_FAILURES[name] = ExpectedFailure(reason, check, tuple(scales))


def declared(name: str, scale: str | None = None) -> ExpectedFailure | None:
    """The expected-failure declaration of ``name`` at ``scale`` (any scale if ``None``)."""
    exp = EXPECTED_FAILURES.get(name)
    if exp is None or (scale is not None and scale not in exp.scales):
        return None
    return exp


def verdict(r: CheckResult, scale: str | None = None) -> str:
    """``pass``, ``FAIL``, ``expected FAIL``, ``unexpected pass`` (declared expected to fail at
    ``scale``, passes) or ``SKIPPED``."""
    if r.skipped:
        return "SKIPPED"
    if declared(r.name, scale) is not None:
        return "unexpected pass" if r.passed else "expected FAIL"
    return "pass" if r.passed else "FAIL"


def unexpected_failures(
    results: Sequence[CheckResult], scale: str | None = None
) -> list[CheckResult]:
    """The failed results (not skipped) that are not declared expected failures at ``scale``."""
    return [r for r in results if verdict(r, scale) == "FAIL"]


def missing_expected(
    results: Sequence[CheckResult], ran: Sequence[str], scale: str
) -> dict[str, str]:
    """Declared expected failures (at ``scale``) that no result carries although their check
    ran, or whose check is not registered: name -> what is wrong."""
    names = {r.name for r in results}
    out = {}
    for name, exp in EXPECTED_FAILURES.items():
        if exp.check not in REGISTRY:
            out[name] = f"declared for check {exp.check!r}, which is not registered"
        elif scale in exp.scales and exp.check in ran and name not in names:
            out[name] = f"check {exp.check!r} ran at scale {scale!r} and produced no such result"
    return out


def strict_problems(results: Sequence[CheckResult], ran: Sequence[str], scale: str) -> list[str]:
    """What ``--strict`` fails on, one line each: unexpected failures; declared expected
    failures that pass (remove the declaration) or that no check produced; at the full scale,
    skipped results."""
    out = []
    for r in results:
        v = verdict(r, scale)
        if v == "FAIL":
            out.append(f"FAIL {r.name}")
        elif v == "unexpected pass":
            out.append(f"declared expected to fail but passes (remove the declaration): {r.name}")
        elif v == "SKIPPED" and scale == "full":
            out.append(f"SKIPPED at the full scale: {r.name} ({r.skipped})")
    out += [
        f"declared expected failure not produced: {name} ({why})"
        for name, why in missing_expected(results, ran, scale).items()
    ]
    return out


# --------------------------------------------------------------------------------------------
# Builders: one comparison each (eos_onset: whether an onset exists), NaN always fails
# --------------------------------------------------------------------------------------------


class Claim(TypedDict):
    """What every check result states besides its numbers (the builders' keyword arguments)."""

    name: str
    claim: str
    kind: Kind
    source: str
    threshold: Threshold


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


def condition(
    *,
    predicted: float,
    measured: float,
    tolerance: str,
    passed: bool,
    details: Mapping[str, Any] | None = None,
    **claim: Unpack[Claim],
) -> CheckResult:
    """A condition no comparison above states (``tolerance`` says in words what passes; a NaN
    ``measured`` still fails): e.g. a divergence, an onset within one step, a ratio in a band."""
    return _compare(
        claim,
        predicted=predicted,
        measured=measured,
        tolerance=tolerance,
        passed=passed,
        details=details,
    )


def skipped(
    *, reason: str, details: Mapping[str, Any] | None = None, **claim: Unpack[Claim]
) -> CheckResult:
    """A result that could not be measured here, with the ``reason`` (e.g. the data exist at
    the full scale only). Allowed at the quick scale; ``--strict`` fails on it at the full
    scale."""
    if not reason.strip():
        raise ValueError(f"a skipped result needs a reason: {claim['name']!r}")
    return CheckResult(
        **claim,
        predicted=math.nan,
        measured=math.nan,
        tolerance="skipped",
        passed=False,
        skipped=" ".join(reason.split()),
        details=dict(details or {}),
    )


# --------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------


def _runner_row(name: str, claim: str, *, skip: str = "", error: str = "") -> CheckResult:
    return CheckResult(
        name=name,
        claim=claim,
        kind=None,
        source="sims/checks/core.py run_registered",
        predicted=math.nan,
        measured=math.nan,
        tolerance="skipped" if skip else "the check runs",
        threshold=None,
        passed=False,
        skipped=skip,
        details={"error": error} if error else {},
    )


def run_registered(ctx: Context, names: Sequence[str] | None = None) -> list[CheckResult]:
    """Run the registered checks ``names`` (default all, in registration order).

    A check always yields a row: one that returns no result gets a SKIPPED row, one that raises
    a FAIL row with the error (the traceback goes to stderr and the other checks still run).
    """
    names = list(REGISTRY) if not names else list(names)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise KeyError(f"unknown check(s) {unknown}; available: {list(REGISTRY)}")
    out: list[CheckResult] = []
    for name in names:
        try:
            rows = REGISTRY[name](ctx)
        except Exception as err:  # reported as a FAIL row with the traceback, not swallowed
            traceback.print_exc(file=sys.stderr)
            msg = f"{type(err).__name__}: {err}"
            rows = [_runner_row(name, f"the check raised {msg}", error=msg)]
        if not rows:
            rows = [_runner_row(name, "the check", skip="the check produced no result")]
        out += rows
    return out


def fmt(x: float) -> str:
    return f"{x:.4g}" if np.isfinite(x) else str(x)


def _verdict_md(r: CheckResult, scale: str) -> str:
    v = verdict(r, scale)
    return {
        "FAIL": "**FAIL**",
        "unexpected pass": "**pass, declared expected to fail**",
        "SKIPPED": f"SKIPPED: {r.skipped}",
    }.get(v, v)


def _counts(results: Sequence[CheckResult], scale: str, attr: str) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for r in results:
        key = str(getattr(r, attr) or "none")
        out.setdefault(key, Counter())[verdict(r, scale)] += 1
    return {k: dict(v) for k, v in out.items()}


def write_report(
    results: list[CheckResult],
    root: Path,
    scale: str,
    tables: Sequence[list[str]] = (),
    *,
    ran: Sequence[str] | None = None,
    used: Mapping[str, Mapping[str, Any]] | None = None,
    since: float | None = None,
) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` under ``<root>/checks/`` (atomic writes); ``tables``
    (markdown lines each, from :func:`register_table`) follow the checks in ``report.md``.

    ``ran``: the checks that ran (default: every registered one); ``used``: the stored results
    the checks read (:attr:`Context.used`), recorded with whether each was reused, so that the
    README's known failures can refuse a report that did not start from an empty results folder.
    """
    ran = list(REGISTRY) if ran is None else list(ran)
    used = {k: dict(v) for k, v in (used or {}).items()}
    out = Path(root) / "checks"
    out.mkdir(parents=True, exist_ok=True)
    verdicts = [verdict(r, scale) for r in results]
    passed = verdicts.count("pass")
    expected = [r for r, v in zip(results, verdicts, strict=True) if v == "expected FAIL"]
    unexpected = [r for r, v in zip(results, verdicts, strict=True) if v == "FAIL"]
    passes = [r for r, v in zip(results, verdicts, strict=True) if v == "unexpected pass"]
    skips = {r.name: r.skipped for r, v in zip(results, verdicts, strict=True) if v == "SKIPPED"}
    missing = missing_expected(results, ran, scale)
    reused = sorted(sim for sim, u in used.items() if u.get("reused"))
    by_kind = _counts(results, scale, "kind")
    by_threshold = _counts(results, scale, "threshold")
    problems = strict_problems(results, ran, scale)
    payload = {
        "scale": scale,
        "passed": passed,
        "total": len(results),
        "expected_failures": {r.name: EXPECTED_FAILURES[r.name].reason for r in expected},
        "unexpected_failures": [r.name for r in unexpected],
        "unexpected_passes": [r.name for r in passes],
        "missing_expected_failures": missing,
        "skipped": skips,
        "strict_problems": problems,
        "counts_by_kind": by_kind,
        "counts_by_threshold": by_threshold,
        "checks_run": ran,
        "results_used": used,
        "reused": bool(reused),
        "since": since,
        "checks": [asdict(r) for r in results],
        "provenance": provenance(),
    }
    _write_text(out / "report.json", json.dumps(payload, indent=2, default=str))
    lines = [
        "# Theorem report",
        "",
        f"{passed} of {len(results)} checks pass (scale `{scale}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}); {len(expected)} expected failures, "
        f"{len(unexpected)} unexpected, {len(passes)} declared expected failures that pass, "
        f"{len(skips)} skipped, {len(missing)} declared expected failures not produced.",
        "",
        "Kinds: *identity* (exact mathematics), *theorem* (stated and proved in a paper), "
        "*derived* (derived in this project's docs), *model* (a prediction of an informal model, "
        "such as the central flow), *empirical* (an observation), *regression* (a bound from an "
        "earlier measurement of this code). Threshold: *exact* (no slack), *derived* (the "
        "tolerance follows from a stated argument), *regression* (set from an earlier "
        "measurement or chosen after seeing the data).",
        "",
        "| kind | rows | pass | FAIL | expected FAIL | unexpected pass | SKIPPED |",
        "|---|---|---|---|---|---|---|",
    ]
    cols = ("pass", "FAIL", "expected FAIL", "unexpected pass", "SKIPPED")
    for kind in [*KINDS, "none"]:
        c = by_kind.get(kind)
        if c:
            cells = " | ".join(str(c.get(v, 0)) for v in cols)
            lines.append(f"| {kind} | {sum(c.values())} | {cells} |")
    origin = [
        f"`{sim}` {u['hash']} "
        + (f"(reused, created {u['created']})" if u["reused"] else "(computed in this run)")
        for sim, u in sorted(used.items())
    ]
    lines += [
        "",
        "Thresholds: "
        + ", ".join(f"{t} {sum(c.values())}" for t, c in sorted(by_threshold.items()))
        + ".",
        "",
        "Stored results read: " + (", ".join(origin) + "." if origin else "none."),
        "",
        "| check | kind | claim | predicted | measured | tolerance | threshold | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.kind or '-'} | {r.claim} | {fmt(r.predicted)} | {fmt(r.measured)} "
            f"| {r.tolerance} | {r.threshold or '-'} | {_verdict_md(r, scale)} |"
        )
    for table in tables:
        lines += ["", *table]
    if expected:
        lines += ["", "## Known failures", ""]
        lines += [f"- **{r.name}**: {EXPECTED_FAILURES[r.name].reason}" for r in expected]
    if problems:
        lines += ["", "## What --strict fails on", ""]
        lines += [f"- {p}" for p in problems]
    _write_text(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md", out / "report.json"
