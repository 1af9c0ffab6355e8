"""Results on disk: one directory per run, keyed by a hash of its configuration.

Layout: ``<root>/<sim>/<hash>/`` holds ``arrays.npz`` and ``meta.json`` (config, seed, dtype,
package versions, git revision, platform, wall time, summary). A run is written to a temporary
directory next to its destination and moved into place with one ``os.replace``, so a crash never
leaves a half-written result; ``<root>/<sim>/LATEST`` (also replaced atomically) names the newest
complete run, which is what figures read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np

PACKAGES = ("jax", "jaxlib", "numpy", "optax", "flax", "equinox", "matplotlib", "sharpsim")


class MissingResultsError(FileNotFoundError):
    """A figure or check needs results that have not been computed."""


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    return x


def config_hash(sim: str, config: Any) -> str:
    """12 hex digits identifying ``(sim, config)``."""
    blob = json.dumps({"sim": sim, "config": _jsonable(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def git_revision() -> str:
    """``git rev-parse HEAD`` of the source tree (``+dirty`` if modified), or ``unknown``."""
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict[str, Any]:
    """Versions, git revision, platform and devices: what produced a result."""
    versions: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    import jax

    return {
        "versions": versions,
        "python": sys.version.split()[0],
        "git": git_revision(),
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.read("jax_enable_x64")),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@dataclasses.dataclass(frozen=True)
class StoredRun:
    """A run read back from disk."""

    path: Path
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


class ResultStore:
    """The results directory: save, find and load runs atomically."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def run_dir(self, sim: str, config: Any) -> Path:
        return self.root / sim / config_hash(sim, config)

    def find(self, sim: str, config: Any) -> Path | None:
        """The stored run of exactly this config, if complete."""
        path = self.run_dir(sim, config)
        return path if (path / "meta.json").is_file() else None

    def save(
        self,
        sim: str,
        config: Any,
        arrays: Mapping[str, np.ndarray],
        summary: Mapping[str, Any],
        *,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``arrays`` and metadata for ``(sim, config)``; replaces an existing run."""
        dest = self.run_dir(sim, config)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            with open(tmp / "arrays.npz", "wb") as f:
                payload: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
                np.savez(f, **payload)
                f.flush()
                os.fsync(f.fileno())
            meta = {
                "sim": sim,
                "hash": dest.name,
                "config": _jsonable(config),
                "summary": _jsonable(summary),
                "provenance": provenance(),
                **_jsonable(dict(extra_meta or {})),
            }
            _write_text(tmp / "meta.json", json.dumps(meta, indent=2, sort_keys=True))
            if dest.exists():
                old = dest.parent / f".old-{dest.name}-{uuid.uuid4().hex[:8]}"
                os.replace(dest, old)
                os.replace(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.mark_latest(sim, dest)
        return dest

    def mark_latest(self, sim: str, path: Path) -> None:
        """Point ``<root>/<sim>/LATEST`` at the run directory ``path`` (atomically): the run a
        simulation just returned, whether computed or reused, is the one figures then read."""
        _write_text(self.root / sim / "LATEST", Path(path).name + "\n")

    def load(self, path: str | os.PathLike[str]) -> StoredRun:
        """Read a run directory; a clear error if it is missing or damaged."""
        path = Path(path)
        meta_path, arr_path = path / "meta.json", path / "arrays.npz"
        if not meta_path.is_file() or not arr_path.is_file():
            raise MissingResultsError(
                f"no complete run at {path} (expected meta.json and arrays.npz)"
            )
        try:
            meta = json.loads(meta_path.read_text())
            with np.load(arr_path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, json.JSONDecodeError) as err:
            raise MissingResultsError(
                f"the run at {path} is damaged ({err}); delete it and run the simulation again"
            ) from err
        return StoredRun(path, arrays, meta)

    def latest(self, sim: str) -> StoredRun:
        """The newest complete run of ``sim``."""
        pointer = self.root / sim / "LATEST"
        if not pointer.is_file():
            raise MissingResultsError(
                f"no results for simulation {sim!r} under {self.root}: run "
                f"`python -m sims {sim}` (or `make all`) first"
            )
        return self.load(self.root / sim / pointer.read_text().strip())


def atomic_write(path: Path, write: Callable[[IO[Any]], object], *, binary: bool = False) -> None:
    """Write ``path`` atomically: ``write(file)`` into a temporary sibling, fsync, ``os.replace``.

    A crash leaves either the old file or the new one, never part of either.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _write_text(path: Path, text: str) -> None:
    """Write a small text file atomically."""
    atomic_write(path, lambda f: f.write(text))
