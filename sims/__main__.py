"""``python -m sims``: run simulations, the theorem checks, or everything.

python -m sims list                      the simulations and checks
python -m sims NAME [--field value ...]  one simulation (flags from its Config; --help)
python -m sims check [NAMES]             the theorem checks -> <results>/checks/report.md
python -m sims all [--scale quick|full]  every simulation, then every check
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from collections.abc import Sequence

from sims.cache import enable_compilation_cache
from sims.registry import SIMS


def _all(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sims all", description="Every simulation at one scale, then the checks."
    )
    parser.add_argument("--scale", choices=("quick", "full"), default="quick")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--force", action="store_true", help="recompute stored results")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 on what `python -m sims check --strict` fails on (see its --help)",
    )
    ns = parser.parse_args(argv)
    # Results created before this moment were reused, not computed by this run: the report
    # records which (the README's known failures need a run from an empty results folder).
    since = time.time()
    common = ["--scale", ns.scale, "--results-dir", ns.results_dir]
    # One process per simulation. In one process the machine code of every compiled XLA
    # program stays mapped, and a whole run compiles thousands: `sims all` died in its 12th
    # simulation with "LLVM ERROR: Unable to allocate section memory" (mmap refused at the
    # kernel's vm.max_map_count, 65 530 by default; the full central_flow alone holds 11 594
    # mappings after 5 minutes). A simulation that fails no longer stops the others.
    failed = []
    for name in SIMS:
        print(f"== {name}", flush=True)
        cmd = [sys.executable, "-m", "sims", name, *common, *(["--force"] if ns.force else [])]
        code = subprocess.call(cmd)
        if code != 0:
            failed.append(f"{name} (exit {code})")
            print(f"== {name} FAILED with exit code {code}; going on", file=sys.stderr, flush=True)
    print("== check", flush=True)
    code = subprocess.call(
        [
            sys.executable,
            "-m",
            "sims",
            "check",
            *common,
            "--since",
            repr(since),
            *(["--strict"] if ns.strict else []),
        ]
    )
    if failed:
        print(f"simulations that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return code


def main(argv: Sequence[str] | None = None) -> int:
    # Every process of `sims all` (one per simulation) shares compiled programs through JAX's
    # persistent cache (sims/cache.py; SHARPSIM_COMPILE_CACHE=off turns it off).
    enable_compilation_cache()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "list":
        from sims import checks

        for name, module in SIMS.items():
            doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()[0]
            print(f"{name:16s} {doc}")
        print(f"{'check':16s} theorem checks: {', '.join(checks.REGISTRY)}")
        return 0
    if cmd == "check":
        from sims import checks

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
