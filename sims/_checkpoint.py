"""Checkpoints of runs in progress: finished work survives a crash or ``kill -9``.

A simulation with config hash ``h`` keeps its in-progress state under
``<root>/<sim>/.inprogress-<h>/``: one GD snapshot per long run (``<name>.snap.npz`` +
``<name>.snap.json``, written after every chunk) and one file per finished sub-run
(``<name>.done.npz`` + ``.json``). Every file is written to a temporary name and moved into place
with ``os.replace``, so a checkpoint is either the previous one or the new one, never half of
each. Running the same config again resumes from there; the directory is removed once the
result is stored.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from sims._store import ResultStore, _jsonable, atomic_write, config_hash
from theory.engine.gd import GDSnapshot


def _atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    payload: dict[str, Any] = dict(arrays)
    atomic_write(path, lambda f: np.savez(f, **payload), binary=True)


def _atomic_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda f: json.dump(_jsonable(payload), f))


class Checkpoints:
    """The in-progress directory of one ``(sim, config)``."""

    def __init__(self, store: ResultStore, sim: str, config: Any):
        self.dir = store.root / sim / f".inprogress-{config_hash(sim, config)}"

    def _ready(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir

    # -- GD snapshots (one long run) --------------------------------------------------------

    def save_snapshot(self, name: str, snap: GDSnapshot) -> None:
        """Write a GD snapshot (arrays first, then the JSON that marks it complete)."""
        d = self._ready()
        arrays = {f"carry.{k}": v for k, v in snap.carry.items()}
        arrays.update({f"rows.{k}": v for k, v in snap.rows.items()})
        # The JSON names the npz generation it belongs to, so a crash between the two writes
        # leaves the previous pair consistent.
        gen = uuid.uuid4().hex[:8]
        _atomic_npz(d / f"{name}.snap.{gen}.npz", arrays)
        old = self._snapshot_meta(name)
        _atomic_json(
            d / f"{name}.snap.json",
            {"gen": gen, "done_blocks": snap.done_blocks, "config": snap.config},
        )
        if old is not None:
            with contextlib.suppress(FileNotFoundError):
                (d / f"{name}.snap.{old['gen']}.npz").unlink()

    def _snapshot_meta(self, name: str) -> dict[str, Any] | None:
        path = self.dir / f"{name}.snap.json"
        if not path.is_file():
            return None
        return dict(json.loads(path.read_text()))

    def load_snapshot(self, name: str) -> GDSnapshot | None:
        """The last complete snapshot of ``name``, or None."""
        meta = self._snapshot_meta(name)
        if meta is None:
            return None
        with np.load(self.dir / f"{name}.snap.{meta['gen']}.npz") as data:
            carry = {k[6:]: data[k] for k in data.files if k.startswith("carry.")}
            rows = {k[5:]: data[k] for k in data.files if k.startswith("rows.")}
        return GDSnapshot(carry, rows, int(meta["done_blocks"]), dict(meta["config"]))

    # -- finished sub-runs --------------------------------------------------------------------

    def save_done(self, name: str, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        d = self._ready()
        _atomic_npz(d / f"{name}.done.npz", arrays)
        _atomic_json(d / f"{name}.done.json", info)

    def load_done(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        meta = self.dir / f"{name}.done.json"
        if not meta.is_file():
            return None
        with np.load(self.dir / f"{name}.done.npz") as data:
            arrays = {k: data[k] for k in data.files}
        return arrays, dict(json.loads(meta.read_text()))

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
