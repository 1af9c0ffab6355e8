"""``python -m figures [NAMES] --results-dir results --out-dir out``: redraw from stored results."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

FIGURES = {
    "phases": "figures.phases",
    "gd_vs_flow": "figures.gd_vs_flow",
    "networks": "figures.networks",
    "matrix_completion": "figures.matrix_completion",
    "ire_flow": "figures.ire_flow",
    "ire_toy": "figures.ire_toy",
    "ire_networks": "figures.ire_networks",
    "tame": "figures.tame",
    "crossing": "figures.crossing",
    "regime_map": "figures.regime_map",
    "central_flow": "figures.central_flow",
    "predict_init": "figures.predict_init",
    "adamw": "figures.adamw",
    "sgd_equilibrium": "figures.sgd_equilibrium",
    "spectrum": "figures.spectrum",
    "admire": "figures.admire",
    "ire_practice": "figures.ire_practice",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m figures",
        description="Draw figures from stored results (never runs a simulation).",
    )
    parser.add_argument("names", nargs="*", help=f"figures to draw (default all: {list(FIGURES)})")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--out-dir", default="out")
    ns = parser.parse_args(argv)
    names = ns.names or list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; available: {list(FIGURES)}")
    for name in names:
        module = importlib.import_module(FIGURES[name])
        for path in module.main(ns.results_dir, ns.out_dir):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
