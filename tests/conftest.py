"""Numerics policy for the whole test suite, set once (docs/conventions.md item 10).

x64 is enabled so that tests can run float64 where they need an oracle with ~1e-12 accuracy;
every test chooses its dtype explicitly (mostly parametrized over float32 and float64) and states
its tolerance for that dtype.
"""

import gc
import os
from collections.abc import Iterator

import jax
import pytest

from sims.cache import ENV, enable_compilation_cache
from tests._markers import heavy_cover_problems

jax.config.update("jax_enable_x64", True)
# JAX's persistent compilation cache (sims/cache.py) only when SHARPSIM_COMPILE_CACHE names a
# folder (`make test COMPILE_CACHE=~/.cache/sharpsim/jax`): off by default for the tests,
# because one pytest worker died of a segmentation fault inside JAX's cache write
# (compilation_cache.put_executable_and_time) while another process wrote the same folder.
if os.environ.get(ENV, "").strip().lower() not in ("", "off", "0", "false", "no"):
    enable_compilation_cache()


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs() -> Iterator[None]:
    """Drop every compiled program after each test module. A pytest worker keeps the machine
    code of everything it compiled mapped, and one that ran a few hundred tests died of a
    segmentation fault inside XLA's compiler (the kernel's vm.max_map_count, 65 530 here, is
    what `python -m sims all` runs one process per simulation for, docs/conventions.md)."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Before ``-m`` deselects: every heavy case names a collected, CI-run test (item 14)."""
    covers = {}
    for item in items:
        mark = item.get_closest_marker("heavy")
        covers[item.nodeid] = None if mark is None else str(mark.kwargs.get("covered_by"))
    problems = heavy_cover_problems(covers)
    if problems:
        raise pytest.UsageError("heavy tests with a bad covered_by:\n" + "\n".join(problems))
