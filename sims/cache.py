"""JAX's persistent compilation cache for the simulations, the figures and the tests.

Compilation dominates many runs here (a central-flow run spends most of its 15-57 s compiling),
and ``make all`` runs every simulation in its own process, so without a cache each process
compiles its programs again. :func:`enable_compilation_cache` points JAX at a folder on disk
where every compiled XLA program that took at least ``min_compile_secs`` to build is stored and
reused by later processes with the same program, JAX version, backend and flags.

The folder is chosen by the environment variable ``SHARPSIM_COMPILE_CACHE``:

* unset or empty: ``$XDG_CACHE_HOME/sharpsim/jax`` (``~/.cache/sharpsim/jax``);
* ``off`` (or ``0``, ``false``, ``no``): no persistent cache;
* anything else: that folder.

The test suite uses the cache only when ``SHARPSIM_COMPILE_CACHE`` names a folder
(``tests/conftest.py``): a pytest worker once died of a segmentation fault inside JAX's cache
write (jaxlib 0.10.2) while another process was writing the same folder; ``make all`` runs its
simulations one process at a time.

The cache is safe to delete at any time (``rm -rf ~/.cache/sharpsim/jax``, or ``make
clean-cache``): it only ever saves compile time. Results do not depend on it: a cached program
is the same machine code the compiler would emit again, so a run with the cache is bitwise the
run without it (``tests/sims/test_cache.py`` checks this).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "SHARPSIM_COMPILE_CACHE"
_OFF = ("off", "0", "false", "no")


def cache_dir() -> Path | None:
    """The folder ``SHARPSIM_COMPILE_CACHE`` selects (module docstring), ``None`` when off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "sharpsim" / "jax"


def enable_compilation_cache(
    path: str | os.PathLike[str] | None = None, *, min_compile_secs: float = 0.3
) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``path`` (default :func:`cache_dir`).

    Programs whose compilation took at least ``min_compile_secs`` are stored (JAX's default of
    1 s would leave out most of this project's programs, which compile in 0.3-1 s each but
    number in the hundreds per ``make all``). Returns the folder, or ``None`` when the cache is
    off. Call it before the first compilation; calling it again with the same folder is a no-op.
    """
    folder = cache_dir() if path is None else Path(path).expanduser()
    if folder is None:
        return None
    if min_compile_secs < 0:
        raise ValueError(f"min_compile_secs must be >= 0, got {min_compile_secs!r}")
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
