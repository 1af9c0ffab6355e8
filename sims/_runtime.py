"""Run-time helpers shared by the simulations: precision from the config, progress bars."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

DTYPES = ("float32", "float64")


def dtype_from_config(name: str) -> Any:
    """The JAX dtype named by a config; enables x64 when float64 is asked for.

    Precision is chosen by configuration at run time, never by importing a module.
    """
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    if name == "float64" and not jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", True)
    return jnp.float64 if name == "float64" else jnp.float32


class Progress:
    """A tqdm bar (steps/s, time left) fed by the runners' ``callback(done, total)``."""

    def __init__(self, desc: str, total: int, enabled: bool = True, unit: str = "step"):
        self._bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Callable[[int, int], None]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
