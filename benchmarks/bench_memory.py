"""Peak memory of the objective passes with and without chunking, on CIFAR-sized inputs.

    python -m benchmarks.bench_memory [--quick] [--rss]

Synthetic data (nothing downloaded): ``N`` images ``32 x 32 x 3`` float32, 10 classes, CE loss.
Two LayerNorm networks from :mod:`theory.problems.nets` (per-example normalization, so the chunked
objective IS the full-batch loss): an MLP 3072-512-512 on the flattened images and the VGG-style
CNN with channels (16, 32, 64). For each, the full-batch objective (:class:`FullBatch`, chunk
``N``) against :func:`theory.problems.nets.chunked_objective` with smaller chunks, for four passes:

* ``grad``: ``value_and_grad(w)``;
* ``lin+hvp``: ``linearize(w)`` then one ``hvp(v)`` (what a tracked step pays: FullBatch keeps
  the residuals of the whole forward and backward pass for the HVP; Chunked recomputes per chunk);
* ``lin+8hvp``: ``linearize(w)`` then 8 HVPs in a ``fori_loop`` (the way Lanczos reuses
  ``hvp``: FullBatch's residuals stay alive across the loop);
* ``fused``: ``value_grad_hvp(w, v)``.

Memory is XLA's compiled memory analysis of ``jax.jit(pass).lower(...).compile()`` on the CPU
backend, with the data given as abstract shapes (``jax.ShapeDtypeStruct``: nothing is
allocated, nothing runs; deterministic): ``peak = argument + output + temp`` bytes (``temp`` =
XLA's buffer assignment for intermediates; ``argument`` = the data, ``w`` and, where a pass
uses it, ``v``: identical with and without chunking). ``ratio`` = full-batch peak / this row's
peak, ``temp ratio`` the same on temps. ``--rss`` also runs the MLP passes at a smaller ``N``
in a fresh subprocess each and compares the growth of the process's max RSS over one run with
the analysis' ``temp + output``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from theory.core.objective import FullBatch
from theory.problems import nets

MB = 2.0**20
IMAGE = (32, 32, 3)
CLASSES = 10


def _grad(obj: Any, w: Any, v: Any) -> Any:
    return obj.value_and_grad(w)


def _lin_hvp(obj: Any, w: Any, v: Any) -> Any:
    primal, hvp = obj.linearize(w)
    return primal, hvp(v)


def _lin_hvps(obj: Any, w: Any, v: Any) -> Any:
    primal, hvp = obj.linearize(w)
    return primal, jax.lax.fori_loop(0, 8, lambda i, u: 1e-3 * hvp(u), v)


def _fused(obj: Any, w: Any, v: Any) -> Any:
    return obj.value_grad_hvp(w, v)


PASSES: dict[str, Callable[[Any, Any, Any], Any]] = {
    "grad": _grad,
    "lin+hvp": _lin_hvp,
    "lin+8hvp": _lin_hvps,
    "fused": _fused,
}


def _model(name: str) -> Any:
    if name == "mlp":
        return nets.mlp((512, 512), norm="layer")
    return nets.vgg((16, 32, 64), norm="layer")


def _network(name: str) -> nets.NetLoss:
    """The network (init and fixed head) from a tiny real problem; data are swapped in later."""
    shape = (3072,) if name == "mlp" else IMAGE
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, *shape)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=4)
    prob = nets.make_problem(
        _model(name), x, y, x, y, loss="ce", num_outputs=CLASSES, dtype=np.float32
    )
    return prob.loss  # type: ignore[return-value]


def _objective(net: nets.NetLoss, n: int, chunk: int | None) -> tuple[Any, Any]:
    """``(objective, w)`` with ABSTRACT data ``(N, ...)`` (ShapeDtypeStruct leaves) and ``w``."""
    x = jax.ShapeDtypeStruct((n, *net.x.shape[1:]), jnp.float32)
    y = jax.ShapeDtypeStruct((n,), jnp.int32)

    def build(x: Any, y: Any) -> Any:
        loss = nets.NetLoss(net.network, x, y, net.kind)
        return FullBatch(loss) if chunk is None else nets.chunked_objective(loss, chunk_size=chunk)

    obj = jax.eval_shape(build, x, y)
    dim = sum(net.network.unravel.sizes)
    return obj, jax.ShapeDtypeStruct((dim,), jnp.float32)


def analyze(net: nets.NetLoss, n: int, chunk: int | None, pass_name: str) -> dict[str, float]:
    """XLA's memory analysis of one pass (bytes)."""
    obj, w = _objective(net, n, chunk)
    fn = PASSES[pass_name]
    compiled = jax.jit(fn).lower(obj, w, w).compile()
    mem = compiled.memory_analysis()
    if mem is None:
        raise RuntimeError(f"no memory analysis from the {jax.default_backend()} backend")
    arg, out, temp = (
        float(mem.argument_size_in_bytes),
        float(mem.output_size_in_bytes),
        float(mem.temp_size_in_bytes),
    )
    return {"argument": arg, "output": out, "temp": temp, "peak": arg + out + temp}


def measure(quick: bool = False) -> list[dict[str, Any]]:
    configs = (
        [("mlp", 10_000, (None, 1000, 100)), ("vgg", 2_000, (None, 200, 50))]
        if quick
        else [("mlp", 50_000, (None, 5000, 500)), ("vgg", 10_000, (None, 1000, 100))]
    )
    rows = []
    for name, n, chunks in configs:
        net = _network(name)
        full: dict[str, dict[str, float]] = {}
        for chunk in chunks:
            for pass_name in PASSES:
                mem = analyze(net, n, chunk, pass_name)
                if chunk is None:
                    full[pass_name] = mem
                ref = full[pass_name]
                rows.append(
                    {
                        "network": f"{name} LN",
                        "N": n,
                        "chunk": n if chunk is None else chunk,
                        "objective": "FullBatch" if chunk is None else "Chunked",
                        "pass": pass_name,
                        "argument_MB": mem["argument"] / MB,
                        "temp_MB": mem["temp"] / MB,
                        "peak_MB": mem["peak"] / MB,
                        "ratio": ref["peak"] / mem["peak"],
                        "temp_ratio": ref["temp"] / max(mem["temp"], 1.0),
                    }
                )
    return rows


# --------------------------------------------------------------------------------------------
# Optional check against the process's max RSS (a subprocess per measurement)
# --------------------------------------------------------------------------------------------


def rss_check(n: int = 10_000, chunks: tuple[int | None, ...] = (None, 500)) -> list[dict]:
    """Max-RSS growth of a fresh process over its first run of a pass, against the analysis.

    Each measurement is a child process: it builds real data, compiles, resets the peak RSS to
    the current RSS (Linux ``/proc/self/clear_refs``; without it the compiler's own peak can
    hide the run's), runs the pass once and reads the peak again. The growth estimates the
    memory the run needed beyond what the process held (data, compiled code): rough by nature
    (allocator pools and caching, thread stacks, pages freed before they are touched).
    """
    rows = []
    for chunk in chunks:
        for pass_name in PASSES:
            code = (
                "import json, sys; from benchmarks.bench_memory import _rss_first_run as f; "
                f"print(json.dumps(f({n}, {chunk!r}, {pass_name!r})))"
            )
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "N": n,
                    "chunk": n if chunk is None else chunk,
                    "pass": pass_name,
                    "analysis_temp+out_MB": r["analysis"] / MB,
                    "rss_growth_MB": (r["after"] - r["before"]) / MB,
                    "peak_reset": bool(r["reset"]),
                }
            )
    return rows


def _peak_rss() -> float:
    """The process's peak RSS in bytes (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def _reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: ``clear_refs`` 5); ``False`` if not."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_first_run(n: int, chunk: int | None, pass_name: str) -> dict[str, float]:
    """In a fresh process: real data, compile, reset the peak RSS, one run; peak growth (bytes)."""
    net = _network("mlp")
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((n, 3072), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, CLASSES, size=n).astype(np.int32))
    loss = nets.NetLoss(net.network, x, y, net.kind)
    obj = FullBatch(loss) if chunk is None else nets.chunked_objective(loss, chunk_size=chunk)
    w = jnp.asarray(rng.standard_normal(sum(net.network.unravel.sizes), dtype=np.float32))
    compiled = jax.jit(PASSES[pass_name]).lower(obj, w, w).compile()
    mem = compiled.memory_analysis()
    assert mem is not None, "no memory analysis on this backend"
    jax.block_until_ready((x, y, w))
    reset = _reset_peak_rss()
    before = _peak_rss()
    jax.block_until_ready(compiled(obj, w, w))
    after = _peak_rss()
    return {
        "analysis": float(mem.temp_size_in_bytes + mem.output_size_in_bytes),
        "before": before,
        "after": after,
        "reset": float(reset),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rss", action="store_true", help="also check against max RSS")
    ns = parser.parse_args()
    print(
        f"{'network':8s} {'N':>6s} {'chunk':>6s} {'pass':9s} {'arg MB':>8s} {'temp MB':>9s} "
        f"{'peak MB':>9s} {'ratio':>7s} {'temp ratio':>10s}"
    )
    for r in measure(ns.quick):
        print(
            f"{r['network']:8s} {r['N']:6d} {r['chunk']:6d} {r['pass']:9s} "
            f"{r['argument_MB']:8.1f} {r['temp_MB']:9.1f} {r['peak_MB']:9.1f} "
            f"{r['ratio']:7.2f} {r['temp_ratio']:10.1f}"
        )
    if ns.rss:
        print("\nmax-RSS growth over one run (fresh process) vs analysis temp + output, MLP:")
        for r in rss_check(2_000 if ns.quick else 10_000):
            print(
                f"N {r['N']:6d} chunk {r['chunk']:6d} {r['pass']:9s} analysis "
                f"{r['analysis_temp+out_MB']:8.1f} MB  rss growth {r['rss_growth_MB']:8.1f} MB"
            )


if __name__ == "__main__":
    main()
