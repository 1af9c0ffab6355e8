"""The one way a simulation's result is fetched: stored if present, else computed and stored."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sims._checkpoint import Checkpoints
from sims._store import ResultStore, StoredRun

Compute = Callable[[Checkpoints], tuple[Mapping[str, np.ndarray], Mapping[str, Any]]]


def stored_or_run(
    sim: str,
    config: Any,
    compute: Compute,
    *,
    results_dir: str | Path,
    force: bool,
    extra_meta: Mapping[str, Any] | None = None,
) -> StoredRun:
    """The stored result of ``(sim, config)``; otherwise ``compute(checkpoints)`` and store it.

    ``compute`` receives the config's in-progress :class:`Checkpoints` (resumed after a crash;
    discarded by ``force``) and returns ``(arrays, summary)``. The checkpoints are cleared once
    the result is stored atomically.
    """
    store = ResultStore(results_dir)
    found = store.find(sim, config)
    if found is not None and not force:
        # Reused: LATEST moves to it too, so that figures drawn after a quick `make all` that
        # follows a full-scale one show the quick runs the report was made from.
        store.mark_latest(sim, found)
        return store.load(found)
    ckpt = Checkpoints(store, sim, config)
    if force:
        ckpt.clear()
    arrays, summary = compute(ckpt)
    path = store.save(sim, config, arrays, summary, extra_meta=extra_meta)
    ckpt.clear()
    return store.load(path)
