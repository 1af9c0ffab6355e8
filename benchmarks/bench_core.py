"""Core benchmarks: Lanczos HVP counts (cold vs warm, against dense eigh) and the cost of
tracking sharpness every GD step. Prints ratios side by side in one run.

    python -m benchmarks.bench_core [--quick] [--json PATH]

Part A (float64): the fewest HVPs for which the Lanczos top Ritz value is within 1e-6 relative
of the reference (dense ``eigh`` where D is small; a Lanczos run converged to 1e-12 residual
otherwise), from a random start (cold) and from the top eigenvector of the previous GD iterate
(warm). Ritz values grow monotonically with the Krylov dimension, so the count is found by
bisection on ``max_iters`` with ``tol = 0``.

Part B (float32): wall time per GD+WD step with the spherical sharpness tracked every step
(Lanczos warm-started from the previous eigenvector, default tolerance) against untracked GD:
the difference of median times of runs of N and 2N steps, so fixed costs cancel; ratios are
what to read, not seconds.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # a script, not library code: float64 for Part A

from benchmarks._timing import median_time  # noqa: E402
from theory.core.curvature import linearize_grad  # noqa: E402
from theory.core.invariance import normalize  # noqa: E402
from theory.core.lanczos import lanczos  # noqa: E402
from theory.engine import LanczosTracker, NoTracking, SaveAt  # noqa: E402
from theory.engine.gd import gd_wd  # noqa: E402
from theory.problems.analytic import curved_manifold, random_regression  # noqa: E402


def _problems(quick: bool) -> list[tuple[str, Any]]:
    large = random_regression(dim=16384 if quick else 131072, n=256, hidden=128 if quick else 256)
    return [
        ("curved_manifold m=48 k=16 (D=64)", curved_manifold(m=48, k=16)),
        (f"random_regression (D={large.dim})", large),
    ]


def _top_ritz(hvp: Callable[[jax.Array], jax.Array], v0: jax.Array, iters: int) -> float:
    res = lanczos(hvp, v0, max_iters=iters, tol=0.0)
    return float(res.eigenvalues[0])


def _min_matvecs(hvp: Callable, v0: jax.Array, ref: float, rel: float, cap: int) -> int | None:
    """Smallest Krylov dimension whose top Ritz value is within ``rel`` of ``ref`` (bisection)."""
    if abs(_top_ritz(hvp, v0, cap) - ref) > rel * abs(ref):
        return None
    lo, hi = 0, cap  # lo fails (or is 0), hi succeeds
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if abs(_top_ritz(hvp, v0, mid) - ref) <= rel * abs(ref):
            hi = mid
        else:
            lo = mid
    return hi


def part_a(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for label, prob in _problems(quick):
        loss = prob.loss
        dim = prob.dim
        w_prev = jnp.asarray(prob.start, jnp.float64)
        # One GD step at eta_eff = 1 / S(w): the realistic change between tracked steps.
        _, hvp_prev = linearize_grad(loss, w_prev)
        v_prev = lanczos(hvp_prev, jnp.ones(dim), tol=1e-12, max_iters=min(dim, 200)).eigenvectors[
            :, 0
        ]
        s_prev = float(jnp.vdot(v_prev, hvp_prev(v_prev)))
        w = normalize(w_prev - jax.grad(loss)(w_prev) / s_prev)
        _, hvp_fn = linearize_grad(loss, w)
        hvp = jax.jit(hvp_fn)
        if dim <= 512:
            ref = float(np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(w)))[-1])
            ref_kind = "dense eigh"
        else:
            ref = float(lanczos(hvp, jnp.ones(dim), tol=1e-12, max_iters=200).eigenvalues[0])
            ref_kind = "Lanczos tol 1e-12"
        cold_v = jax.random.normal(jax.random.PRNGKey(1), (dim,), jnp.float64)
        cap = min(dim, 120)
        cold = _min_matvecs(hvp, cold_v, ref, 1e-6, cap)
        warm = _min_matvecs(hvp, v_prev, ref, 1e-6, cap)
        rows.append(
            {
                "problem": label,
                "reference": ref_kind,
                "lambda1": ref,
                "cold_hvps": cold,
                "warm_hvps": warm,
                "cold_over_warm": (cold / warm) if cold and warm else None,
            }
        )
    return rows


def _per_step(run: Callable[[int], Any], steps: int, repeats: int) -> float:
    """Seconds per step from runs of ``steps`` and ``2 steps``: fixed costs (dispatch, the
    cold eigen-solve before the run, the final row) cancel in the difference."""
    long = median_time(lambda: run(2 * steps), repeats)[0]
    short = median_time(lambda: run(steps), repeats)[0]
    return (long - short) / steps


def part_b(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for label, prob in _problems(quick):
        small = prob.dim <= 512
        steps = (2000 if quick else 5000) if small else (100 if quick else 200)
        w0 = jnp.asarray(prob.start, jnp.float32)
        # eta chosen so that eta_eff * S ~ 1 at the start: stable, realistic training.
        _, hvp_fn = linearize_grad(prob.loss, w0)
        s0 = float(lanczos(hvp_fn, jnp.ones(prob.dim, jnp.float32)).eigenvalues[0])
        kw = {
            "eta": 1.0 / s0,
            "wd": 1e-3 * s0,
            "saveat": SaveAt(iterates=False),
            "check_invariance": False,
        }

        def tracked(n: int, kw=kw, loss=prob.loss, w0=w0) -> Any:
            return gd_wd(loss, w0, steps=n, tracker=LanczosTracker(every=1), **kw)

        def bare(n: int, kw=kw, loss=prob.loss, w0=w0) -> Any:
            return gd_wd(loss, w0, steps=n, tracker=NoTracking(), **kw)

        repeats = 5 if small else 3
        t_track = _per_step(tracked, steps, repeats)
        t_bare = _per_step(bare, steps, repeats)
        mv = float(np.mean(tracked(steps).lanczos_matvecs))
        rows.append(
            {
                "problem": label,
                "steps": steps,
                "ms_per_step_untracked": 1e3 * t_bare,
                "ms_per_step_tracked": 1e3 * t_track,
                "tracked_over_untracked": t_track / t_bare,
                "mean_hvps_per_tracked_step": mv,
            }
        )
    return rows


def measure(quick: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Both parts' rows (see the module docstring)."""
    return {"lanczos": part_a(quick), "tracking": part_b(quick)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller large problem, fewer steps")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    ns = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()}")
    rows = measure(ns.quick)
    a = rows["lanczos"]
    print("\nA. Lanczos HVPs to reach 1e-6 relative error of lambda_1 (float64)")
    head = ("problem", "reference", "lambda_1", "cold", "warm", "cold/warm")
    print("{:40s} {:18s} {:>10s} {:>6s} {:>6s} {:>10s}".format(*head))
    for r in a:
        ratio = f"{r['cold_over_warm']:.1f}" if r["cold_over_warm"] else "n/a"
        print(
            f"{r['problem']:40s} {r['reference']:18s} {r['lambda1']:10.5g} {r['cold_hvps']!s:>6s} "
            f"{r['warm_hvps']!s:>6s} {ratio:>10s}"
        )
    b = rows["tracking"]
    print("\nB. GD+WD step with sharpness tracked every step vs untracked (float32, medians)")
    head = ("problem", "untracked ms", "tracked ms", "ratio", "HVPs/step")
    print("{:40s} {:>13s} {:>11s} {:>7s} {:>10s}".format(*head))
    for r in b:
        print(
            f"{r['problem']:40s} {r['ms_per_step_untracked']:13.4f} "
            f"{r['ms_per_step_tracked']:11.4f} {r['tracked_over_untracked']:7.2f} "
            f"{r['mean_hvps_per_tracked_step']:10.2f}"
        )
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"lanczos": a, "tracking": b, "jax": jax.__version__}, f, indent=2)


if __name__ == "__main__":
    main()
