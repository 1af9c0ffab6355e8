"""The one reader of stored results, for figures, checks and users.

>>> from sims import results
>>> res = results.load("phases", "results")          # the run LATEST names
>>> res.config.eta, res.config.problems               # the simulation's typed Config
>>> res.summary["great_circle"]["onset"]
>>> res.run("great_circle")["sharpness"]              # the arrays of one run (prefix stripped)
>>> res.table("great_circle")                         # its 1-D arrays as a structured array

A stored run is ``<results>/<sim>/<hash>/arrays.npz`` + ``meta.json`` (:mod:`sims._store`); the
arrays of a simulation with several runs are named ``<run>.<array>`` (the run's name may itself
contain dots, e.g. ``great_circle.equilibrium.0``: :meth:`Result.runs` splits at the last one).

JSON has no NaN or infinity, so the store writes a non-finite float as its text (``"nan"``,
``"inf"``, ``"-inf"``). :func:`decode` turns that text back into floats, once, for every reader:
:attr:`Result.summary` and :attr:`Result.config` are decoded; a study's report decodes its
summary with it too. :func:`number` reads one summary value as a float (``None``, a quantity
that was not measured, gives NaN).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from sims import registry
from sims._store import MissingResultsError, ResultStore, StoredRun

C = TypeVar("C")

NONFINITE: dict[str, float] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def decode(x: Any) -> Any:
    """A stored JSON value with the non-finite floats the store wrote as text (``"nan"``,
    ``"inf"``, ``"-inf"``) back as floats, through nested dicts and lists; anything else as is."""
    if isinstance(x, str):
        return NONFINITE.get(x, x)
    if isinstance(x, Mapping):
        return {k: decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [decode(v) for v in x]
    return x


def number(x: Any) -> float:
    """One stored summary value as a float: ``None`` (not measured) gives NaN, a non-finite
    float stored as text is decoded; anything else that is not a number is an error."""
    if x is None:
        return math.nan
    x = decode(x)
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"expected a stored number (or None), got {x!r}")
    return float(x)


def config_from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
    """Rebuild a frozen Config dataclass from its stored (JSON) form; lists become tuples."""

    def tup(x: Any) -> Any:
        return tuple(tup(v) for v in x) if isinstance(x, list) else x

    assert dataclasses.is_dataclass(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in decode(dict(values)).items():
        if k in names:
            kwargs[k] = float(v) if hints[k] is float and isinstance(v, int) else tup(v)
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class Result(Generic[C]):
    """A stored run of simulation ``sim``, read back with its typed ``config``."""

    sim: str
    path: Path
    config: C
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.meta.get("provenance", {}))

    def runs(self) -> dict[str, dict[str, np.ndarray]]:
        """The arrays grouped by run: ``{run: {array: values}}`` (ungrouped names under ``""``)."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for key, arr in self.arrays.items():
            run, _, name = key.rpartition(".")
            out.setdefault(run, {})[name] = arr
        return out

    def run(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of run ``name`` (``<name>.<array>``), keyed by ``<array>``."""
        pre = f"{name}."
        found = {k[len(pre) :]: v for k, v in self.arrays.items() if k.startswith(pre)}
        if not found:
            raise KeyError(f"{self.sim}: no run {name!r} in {self.path}")
        return {k: v for k, v in found.items() if "." not in k}

    def table(self, name: str) -> np.ndarray:
        """Run ``name``'s 1-D arrays of its most common length, as one structured array."""
        cols = {k: v for k, v in self.run(name).items() if v.ndim == 1}
        if not cols:
            raise KeyError(f"{self.sim}: run {name!r} has no 1-D arrays")
        lengths = [len(v) for v in cols.values()]
        n = max(set(lengths), key=lengths.count)
        cols = {k: v for k, v in cols.items() if len(v) == n}
        out = np.empty(n, dtype=[(k, v.dtype) for k, v in cols.items()])
        for k, v in cols.items():
            out[k] = v
        return out


def from_stored(sim: str, stored: StoredRun) -> Result[Any]:
    """The typed :class:`Result` of an already loaded :class:`StoredRun` of ``sim``."""
    cls = registry.module(sim).Config
    try:
        config = config_from_dict(cls, stored.meta["config"])
    except (TypeError, ValueError) as err:
        raise MissingResultsError(
            f"the run at {stored.path} was stored with a {sim} Config this code no longer "
            f"accepts ({err}); run `python -m sims {sim}` again"
        ) from err
    return Result(
        sim=sim,
        path=stored.path,
        config=config,
        summary=decode(stored.meta["summary"]),
        arrays=stored.arrays,
        meta=stored.meta,
    )


def load(
    sim: str, results_dir: str | Path = "results", *, path: str | Path | None = None
) -> Result[Any]:
    """The stored run of simulation ``sim``: the one ``LATEST`` names, or the one at ``path``.

    Raises :class:`sims._store.MissingResultsError` (saying what to run) if there is none.
    Returns a :class:`Result` whose ``config`` is the simulation's ``Config``.
    """
    store = ResultStore(results_dir)
    stored = store.load(path) if path is not None else store.latest(sim)
    return from_stored(sim, stored)
