"""``python -m sims``: run simulations, the theorem checks, or everything.

python -m sims list                      the simulations and checks
python -m sims NAME [--field value ...]  one simulation (flags from its Config; --help)
python -m sims check [NAMES]             the theorem checks -> <results>/checks/report.md
python -m sims all [--scale quick|full]  every simulation, then every check
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .registry import SIMS


def _all(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sims all", description="Every simulation at one scale, then the checks."
    )
    parser.add_argument("--scale", choices=("quick", "full"), default="quick")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--force", action="store_true", help="recompute stored results")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 on a check FAIL not declared expected"
    )
    ns = parser.parse_args(argv)
    common = ["--scale", ns.scale, "--results-dir", ns.results_dir]
    for name, module in SIMS.items():
        print(f"== {name}")
        importlib.import_module(module).main(common + (["--force"] if ns.force else []))
    print("== check")
    from . import checks

    return checks.main(common + (["--strict"] if ns.strict else []))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "list":
        from . import checks

        for name, module in SIMS.items():
            doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()[0]
            print(f"{name:16s} {doc}")
        print(f"{'check':16s} theorem checks: {', '.join(checks.REGISTRY)}")
        return 0
    if cmd == "check":
        from . import checks

        return checks.main(rest)
    if cmd == "all":
        return _all(rest)
    if cmd in SIMS:
        importlib.import_module(SIMS[cmd]).main(rest)
        return 0
    print(f"unknown command {cmd!r}; known: list, check, all, {', '.join(SIMS)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
