"""Convolutions inside loops: ``nn.Conv`` against :class:`theory.problems.nets.PatchConv`.

    python -m benchmarks.bench_conv [--quick]

On CPU, XLA runs a convolution and its gradient's transposes several times slower inside a
loop body (``lax.scan``, ``while_loop``) than at the top level of a program; products of
matrices do not slow down. The simulator runs every chunk of GD and every Lanczos solve in such
loops, so the project's VGG and ResNet compute their convolutions as patches times a matrix
(``PatchConv``: the same function and parameters). This prints, for a VGG 16-32 on 1024 digits
images (quick: 256; the full regime map's VGG until it became 8-16 on 256 images) and a
ResNet 4-8-16 with one block per stage on 256 (quick: 64), both convolution kinds side by side
in one run:

- ``grad``: one jitted gradient at the top level of a program;
- ``scan``: a GD step inside ``lax.scan`` (``steps`` steps per call);
- ``scan x R``: ``R`` runs vmapped inside ``lax.scan`` (the regime map's sweep: 15 runs; quick 4).

Times are medians of warm calls (wall) with the CPU seconds of the same calls
(``time.process_time``), per step, and the ratio ``nn.Conv / PatchConv``. ``nn.Conv`` is put
in place of ``PatchConv`` for the comparison by patching the module's name in
``theory.problems.nets`` (the benchmark's own swap; the library has no switch for it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sims import data as datasets
from theory.problems import nets


def _flax_conv(
    features: int, kernel_size: tuple[int, ...], strides: Any = None, *, name: str | None = None
) -> nn.Module:
    return nn.Conv(features, kernel_size, strides or 1, padding="SAME", use_bias=False, name=name)


@contextmanager
def _conv(kind: str) -> Iterator[None]:
    if kind == "PatchConv":
        yield
        return
    with mock.patch.object(nets, "PatchConv", _flax_conv):
        yield


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeats`` warm calls (one untimed call first)."""
    jax.block_until_ready(fn())
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def _problem(model: nn.Module, n: int) -> nets.NetProblem:
    ds = datasets.digits(n_train=n, images=True, dtype=np.float32, seed=0)
    return nets.make_problem(
        model, ds.x_train, ds.y_train, ds.x_test, ds.y_test, loss="ce", num_outputs=10, seed=0
    )


def _times(
    kind: str, model: nn.Module, n: int, runs: int, steps: int, repeats: int
) -> dict[str, tuple[float, float]]:
    """Wall and CPU seconds of one gradient, and per step of ``lax.scan`` (one run, ``runs``
    vmapped), with the convolution ``kind``."""
    with _conv(kind):
        prob = _problem(model, n)
    loss, w0 = prob.loss, prob.w0

    def step(w: jax.Array, _: Any) -> tuple[jax.Array, jax.Array]:
        value, g = jax.value_and_grad(loss)(w)
        return w - 1e-3 * g - 1e-5 * w, value

    def scan(w: jax.Array) -> jax.Array:
        return jax.lax.scan(step, w, None, length=steps)[0]

    grad, scan_1, scan_b = jax.jit(jax.grad(loss)), jax.jit(scan), jax.jit(jax.vmap(scan))
    ws = jnp.broadcast_to(w0, (runs, *w0.shape))
    g_w, g_c = _timed(lambda: grad(w0), repeats)
    s_w, s_c = _timed(lambda: scan_1(w0), repeats)
    v_w, v_c = _timed(lambda: scan_b(ws), repeats)
    return {
        "grad": (g_w, g_c),
        "scan": (s_w / steps, s_c / steps),
        f"scan x {runs}": (v_w / steps, v_c / steps),
    }


def _rows(label: str, model: nn.Module, n: int, runs: int, steps: int, repeats: int) -> list[dict]:
    out = {kind: _times(kind, model, n, runs, steps, repeats) for kind in ("nn.Conv", "PatchConv")}
    rows = []
    for setting in out["PatchConv"]:
        (fw, fc), (pw, pc) = out["nn.Conv"][setting], out["PatchConv"][setting]
        rows.append(
            {
                "network": label,
                "setting": setting,
                "nn.Conv ms (wall)": 1e3 * fw,
                "PatchConv ms (wall)": 1e3 * pw,
                "nn.Conv ms (CPU)": 1e3 * fc,
                "PatchConv ms (CPU)": 1e3 * pc,
                "ratio (wall)": fw / pw,
                "ratio (CPU)": fc / pc,
            }
        )
    return rows


def measure(quick: bool = False) -> list[dict[str, Any]]:
    runs, steps, repeats = (4, 3, 3) if quick else (15, 5, 3)
    rows = _rows("VGG 16-32", nets.vgg((16, 32)), 256 if quick else 1024, runs, steps, repeats)
    rows += _rows(
        "ResNet 4-8-16 x1",
        nets.resnet((4, 8, 16), blocks=1),
        64 if quick else 256,
        runs,
        steps,
        repeats,
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    rows = measure(parser.parse_args().quick)
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()))
    print(json.dumps({"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}))


if __name__ == "__main__":
    main()
