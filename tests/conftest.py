"""Numerics policy for the whole test suite, set once (docs/conventions.md item 10).

x64 is enabled so that tests can run float64 where they need an oracle with ~1e-12 accuracy;
every test chooses its dtype explicitly (mostly parametrized over float32 and float64) and states
its tolerance for that dtype.
"""

import jax

from sims.cache import enable_compilation_cache

jax.config.update("jax_enable_x64", True)
# Compiled programs are shared between test runs (and with `make all`) through JAX's persistent
# cache (sims/cache.py): SHARPSIM_COMPILE_CACHE=off turns it off, a path moves it.
enable_compilation_cache()
