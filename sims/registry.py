"""Names of the simulations and the modules that run them (one place for the CLI and the checks).

Each module defines ``NAME``, a ``Config`` dataclass with ``preset(scale)``, ``run_and_store`` and
``main(argv)``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SIMS: dict[str, str] = {
    "phases": "sims.studies.phases",
    "gd_vs_flow": "sims.studies.gd_vs_flow",
    "networks": "sims.studies.networks",
    "net_flow": "sims.studies.net_flow",
    "tame": "sims.studies.tame",
    "crossing": "sims.studies.crossing",
    "matrix_completion": "sims.studies.matrix_completion",
    "ire_flow": "sims.studies.ire_flow",
    "ire_toy": "sims.studies.ire_toy",
    "ire_networks": "sims.studies.ire_networks",
    "regime_map": "sims.studies.regime_map",
    "central_flow": "sims.studies.central_flow",
    "predict_init": "sims.studies.predict_init",
    "adamw": "sims.studies.adamw",
    "sgd_equilibrium": "sims.studies.sgd_equilibrium",
    "spectrum": "sims.studies.spectrum",
    "admire": "sims.studies.admire",
    "ire_practice": "sims.studies.ire_practice",
}


def module(name: str) -> ModuleType:
    """The module that runs simulation ``name``."""
    if name not in SIMS:
        raise KeyError(f"no simulation named {name!r}; known: {list(SIMS)}")
    return importlib.import_module(SIMS[name])
