"""Names of the simulations and the modules that run them (one place for the CLI and the checks).

Each module defines ``NAME``, a ``Config`` dataclass with ``preset(scale)``, ``run_and_store`` and
``main(argv)``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SIMS: dict[str, str] = {
    "phases": "sims.phases",
    "gd_vs_flow": "sims.gd_vs_flow",
    "networks": "sims.networks",
    "net_flow": "sims.net_flow",
    "tame": "sims.tame",
    "crossing": "sims.crossing",
    "matrix_completion": "sims.matrix_completion",
    "ire_flow": "sims.ire_flow",
    "ire_toy": "sims.ire_toy",
    "ire_networks": "sims.ire_networks",
    "regime_map": "sims.regime_map",
    "central_flow": "sims.central_flow",
    "predict_init": "sims.predict_init",
}


def module(name: str) -> ModuleType:
    """The module that runs simulation ``name``."""
    if name not in SIMS:
        raise KeyError(f"no simulation named {name!r}; known: {list(SIMS)}")
    return importlib.import_module(SIMS[name])
