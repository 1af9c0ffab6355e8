"""Numerics policy for the whole test suite, set once (docs/conventions.md item 10).

x64 is enabled so that tests can run float64 where they need an oracle with ~1e-12 accuracy;
every test chooses its dtype explicitly (mostly parametrized over float32 and float64) and states
its tolerance for that dtype.
"""

import jax

jax.config.update("jax_enable_x64", True)
