"""The skeleton every simulation shares: run spec, checkpointed sub-runs, store, command line.

A simulation module defines ``NAME``, a frozen ``Config`` dataclass (the typed run spec, with
``preset(scale)`` and validation in ``__post_init__``) and a function
``compute(cfg, *, progress, checkpoints) -> (arrays, summary)``; then::

    SIM = Simulation(NAME, Config, compute, __doc__, report=_report)
    run_and_store = SIM.run_and_store   # stored result of a config (computed first if absent)
    main = SIM.main                     # python -m sims NAME [--field value ...]

:meth:`Simulation.load` (or :func:`sims.results.load`) reads the stored result back with its
typed ``Config``. Sub-runs that are worth keeping after a crash go through :func:`cached_runs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from sims import _cli
from sims._checkpoint import Checkpoints
from sims._runner import stored_or_run
from sims._runtime import Progress
from sims._store import ResultStore, StoredRun
from sims.results import Result, decode, from_stored
from theory.engine import NoTracking, SaveAt
from theory.engine.gd import GDResult, GDSnapshot, gd_wd
from theory.flows.common import GaussNewton
from theory.flows.compare import eos_equilibrium_start

C = TypeVar("C")
Arrays = dict[str, np.ndarray]
Info = dict[str, Any]


# compute(cfg, *, progress: bool, checkpoints: Checkpoints | None) -> (arrays, summary)
Compute = Callable[..., tuple[Mapping[str, np.ndarray], Mapping[str, Any]]]


def _seed_meta(cfg: Any) -> dict[str, Any]:
    return {"seed": getattr(cfg, "seed", 0)}


@dataclass(frozen=True)
class Simulation(Generic[C]):
    """One simulation: its name, typed Config, computation, extra metadata and printed report.

    Attributes:
        name: the results folder and the command (``python -m sims <name>``).
        config: the frozen Config dataclass (command-line flags are generated from it).
        compute: ``compute(cfg, *, progress, checkpoints) -> (arrays, summary)``.
        doc: the command's description (the module docstring).
        report: lines printed by :meth:`main` under the result's path, from the stored run with its
            summary decoded (:func:`sims.results.decode`: stored non-finite numbers as floats).
        meta: extra top-level metadata stored with the result (default ``{"seed": cfg.seed}``).
    """

    name: str
    config: type[C]
    compute: Compute
    doc: str | None
    report: Callable[[StoredRun], Iterable[str]] | None = None
    meta: Callable[[C], Mapping[str, Any]] = _seed_meta

    def run_and_store(
        self,
        cfg: C,
        *,
        results_dir: str | Path = "results",
        force: bool = False,
        progress: bool = True,
    ) -> StoredRun:
        """The stored result of ``cfg``, computing and saving it first unless already there.

        Finished sub-runs and GD snapshots are checkpointed under
        ``<results>/<name>/.inprogress-<hash>/`` and resumed by running the same config again;
        ``force`` discards them and recomputes.
        """
        return stored_or_run(
            self.name,
            cfg,
            lambda ck: self.compute(cfg, progress=progress, checkpoints=ck),
            results_dir=results_dir,
            force=force,
            extra_meta=self.meta(cfg),
        )

    def main(self, argv: Sequence[str] | None = None) -> StoredRun:
        """``python -m sims <name>``: flags from the Config, run or reuse, print the report."""
        prog = f"python -m sims {self.name}"
        stored = _cli.simple_main(self.config, self.run_and_store, prog, self.doc or "", argv)
        print(f"{self.name}: results in {stored.path}")
        # The report reads the summary as every reader does: non-finite numbers decoded once.
        shown = replace(stored, meta={**stored.meta, "summary": decode(stored.meta["summary"])})
        for line in self.report(shown) if self.report is not None else ():
            print(f"  {line}")
        return stored

    def load(self, results_dir: str | Path = "results") -> Result[C]:
        """The stored result ``LATEST`` names, with its typed Config."""
        return from_stored(self.name, ResultStore(results_dir).latest(self.name))


def cached_runs(
    names: Sequence[str],
    one: Callable[[int, str], tuple[Arrays, Info]],
    checkpoints: Checkpoints | None,
    *,
    desc: str | None = None,
    progress: bool = True,
) -> Iterator[tuple[str, Arrays, Info]]:
    """``(name, arrays, info)`` of each sub-run: from ``checkpoints`` if it finished before,
    else ``one(index, name)``, saved to ``checkpoints`` at once. With ``desc``, a progress bar
    over the sub-runs."""
    with Progress(desc or "", len(names), progress and desc is not None, unit="run") as bar:
        for i, name in enumerate(names):
            cached = checkpoints.load_done(name) if checkpoints is not None else None
            if cached is None:
                cached = one(i, name)
                if checkpoints is not None:
                    checkpoints.save_done(name, *cached)
            yield name, *cached
            bar(i + 1, len(names))


def prefixed(name: str, arrays: Mapping[str, np.ndarray]) -> Arrays:
    """``{f"{name}.{key}": value}``: the stored names of one sub-run's arrays."""
    return {f"{name}.{k}": v for k, v in arrays.items()}


def collect_runs(
    names: Sequence[str],
    one: Callable[[int, str], tuple[Arrays, Info]],
    checkpoints: Checkpoints | None,
    *,
    desc: str | None = None,
    progress: bool = True,
) -> tuple[Arrays, dict[str, Info]]:
    """Every sub-run of :func:`cached_runs`: the arrays (named ``<run>.<array>``) and the
    summary ``{run: info}``."""
    arrays: Arrays = {}
    summary: dict[str, Info] = {}
    for name, sub, info in cached_runs(names, one, checkpoints, desc=desc, progress=progress):
        arrays.update(prefixed(name, sub))
        summary[name] = info
    return arrays, summary


def resumable_gd_wd(
    loss: Any,
    w0: Any,
    *,
    name: str,
    steps: int,
    checkpoints: Checkpoints | None,
    desc: str,
    progress: bool = True,
    snapshots: bool = True,
    **gd_kwargs: Any,
) -> GDResult:
    """:func:`theory.engine.gd.gd_wd` for the long run ``name``, with a progress bar: resumed from
    its
    last snapshot in ``checkpoints`` and, with ``snapshots``, saving one after every chunk
    (``chunk_steps`` in ``gd_kwargs``); bitwise equal to an uninterrupted run."""
    resume = checkpoints.load_snapshot(name) if checkpoints is not None else None
    save = None
    if checkpoints is not None and snapshots:
        ckpt = checkpoints

        def save(snap: GDSnapshot) -> None:
            ckpt.save_snapshot(name, snap)

    with Progress(desc, steps, progress) as bar:
        return gd_wd(
            loss, w0, steps=steps, callback=bar, on_snapshot=save, resume=resume, **gd_kwargs
        )


def gd_from_equilibrium(
    prob: Any,
    theta0: Any,
    *,
    eta: float,
    wd: float,
    every: int,
    rows: int,
    form: Literal["F0", "F1"] = "F1",
) -> GDResult:
    """Untracked GD+WD from the EoS equilibrium of ``theta0`` (:func:`theory.eos_equilibrium_start`
    with ``form``'s amplitude, ``theta0`` put on ``Gamma`` by Gauss-Newton on
    ``prob.residuals``): ``rows`` rows ``every`` steps apart, iterates stored. The shared run of
    the studies that compare GD with a flow on a least-squares network (tame, crossing,
    net_flow)."""
    assert prob.residuals is not None, "needs a least-squares problem (prob.residuals)"
    w0 = eos_equilibrium_start(
        prob.loss, theta0, eta=eta, wd=wd, form=form, geometry=GaussNewton(prob.residuals)
    )
    gd = gd_wd(
        prob.loss,
        w0,
        eta=eta,
        wd=wd,
        steps=every * rows,
        tracker=NoTracking(),
        saveat=SaveAt(every=every),
        check_invariance=False,
    )
    assert gd.w is not None
    return gd
