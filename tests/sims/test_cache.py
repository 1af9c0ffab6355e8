"""The persistent compilation cache (sims/cache.py): where it goes, that it is used, and that a
cached program gives bitwise the result of a fresh compilation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sims.cache import ENV, cache_dir, enable_compilation_cache

ROOT = Path(__file__).resolve().parents[2]

# A tracked GD+WD run in a fresh process; prints its last eigenvalue and iterate bitwise (hex).
_SCRIPT = """
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
from sims.cache import enable_compilation_cache
enable_compilation_cache(min_compile_secs=0.0)
from tests._losses import random_loss
from theory.engine import LanczosTracker
from theory.engine.gd import gd_wd
loss, w0 = random_loss(10, None, 0)
r = gd_wd(loss, w0, eta=0.3, wd=0.01, steps=20, tracker=LanczosTracker(every=1))
print(np.asarray(r.w[-1]).tobytes().hex(), float(r.eos[-1]).hex())
"""


def _run(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return out.stdout.strip()


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV, "off")
    assert cache_dir() is None
    assert enable_compilation_cache() is None
    monkeypatch.setenv(ENV, str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here"
    monkeypatch.setenv(ENV, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "sharpsim" / "jax"
    with pytest.raises(ValueError, match="min_compile_secs must be >= 0, got -1"):
        enable_compilation_cache(tmp_path / "x", min_compile_secs=-1)


@pytest.mark.slow  # two fresh processes that compile a tracked run (~10 s idle, 60 s loaded)
def test_a_cached_program_gives_the_same_bits(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    cold = _run({ENV: str(folder)})
    entries = sorted(p.name for p in folder.iterdir())
    assert entries, "the first run stored no compiled program"
    warm = _run({ENV: str(folder)})
    assert sorted(p.name for p in folder.iterdir()) == entries  # every program was found
    assert cold == warm  # the cold run compiled its programs, the warm one loaded them
