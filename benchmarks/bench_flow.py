"""Flow against GD: the cost of predicting the state at tau = 4 for eta*wd = 1e-4.

    python -m benchmarks.bench_flow [--quick]

GD+WD from the EoS equilibrium needs tau / (2 eta wd) = 20,000 steps (one gradient each) to
reach tau = 4; the sharpness-reduction flow (F1, adaptive, dense geometry) gets there in a few
dozen steps, each costing a Hessian (D HVPs), a third-order pass and a retraction. Printed side
by side: gradient/HVP evaluations, wall time (median of 3 warm runs), their ratios, and errors:
the flow's numerical error (against rtol 1e-11) and its distance to where GD actually is,
|Phi(w_hat_T) - theta(4)| (the model error, O(eta wd)).
"""

from __future__ import annotations

import argparse
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # a script, not library code

from benchmarks._timing import median_time  # noqa: E402
from theory.engine import NoTracking, SaveAt  # noqa: E402
from theory.engine.gd import gd_wd  # noqa: E402
from theory.flows.common import SaveTimes  # noqa: E402
from theory.flows.compare import eos_equilibrium_start  # noqa: E402
from theory.flows.manifold import project_to_manifold  # noqa: E402
from theory.flows.reduction import sharpness_flow  # noqa: E402
from theory.problems.analytic import curved_manifold  # noqa: E402


def measure(quick: bool = False) -> list[dict[str, Any]]:
    """Rows of the flow-vs-GD comparison (see the module docstring)."""
    ewd, tau, eta = (1e-3 if quick else 1e-4), 4.0, 0.1
    wd = ewd / eta
    steps = round(tau / (2 * ewd))
    rows = []
    for label, prob in (
        ("curved_manifold (m4,k2)", curved_manifold()),
        ("curved_manifold (m48,k16)", curved_manifold(m=48, k=16)),
    ):
        theta0 = project_to_manifold(prob.loss, jnp.asarray(prob.start))
        w0 = eos_equilibrium_start(prob.loss, theta0, eta=eta, wd=wd)
        t_gd, run = median_time(
            lambda w0=w0, prob=prob: gd_wd(
                prob.loss,
                w0,
                eta=eta,
                wd=wd,
                steps=steps,
                tracker=NoTracking(),
                saveat=SaveAt(every=steps),
                check_invariance=False,
            )
        )
        phi_t = np.asarray(project_to_manifold(prob.loss, jnp.asarray(run.w[-1])))
        phi_0 = project_to_manifold(prob.loss, jnp.asarray(run.w[0]))
        t_flow, flow = median_time(
            lambda prob=prob, phi_0=phi_0: sharpness_flow(
                prob.loss,
                phi_0,
                SaveTimes(tau, n=2),
                stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8),
            )
        )
        ref = sharpness_flow(
            prob.loss,
            phi_0,
            SaveTimes(tau, n=2),
            stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-13),
        )
        d = prob.dim
        # Per accepted step: 6 field evaluations (Hessian = D HVPs + one third-order pass ~ 3
        # HVPs), the gap event (one more Hessian) and two Newton retractions (Hessian + grad).
        hvp_eq = flow.num_steps * (6 * (d + 3) + d + 2 * (d + 1))
        rows.append(
            {
                "problem": label,
                "D": d,
                "eta_wd": ewd,
                "gd_grads": steps,
                "flow_hvp_eq": hvp_eq,
                "eval_ratio": steps / hvp_eq,
                "gd_seconds": t_gd,
                "flow_seconds": t_flow,
                "time_ratio": t_gd / t_flow,
                "flow_numerical_error": float(np.linalg.norm(flow.theta[-1] - ref.theta[-1])),
                "flow_vs_gd_distance": float(np.linalg.norm(phi_t - flow.theta[-1])),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="eta*wd = 1e-3 instead of 1e-4")
    ns = parser.parse_args()
    rows = measure(ns.quick)
    print(
        f"jax {jax.__version__}; eta*wd = {rows[0]['eta_wd']:g}, tau = 4: GD needs "
        f"{rows[0]['gd_grads']} steps"
    )
    head = (
        "problem",
        "D",
        "GD grads",
        "flow HVP-eq",
        "eval ratio",
        "GD s",
        "flow s",
        "time ratio",
        "flow num err",
        "|Phi(w_T)-theta|",
    )
    print(
        "{:26s} {:>4s} {:>9s} {:>12s} {:>10s} {:>8s} {:>8s} {:>10s} {:>13s} {:>16s}".format(*head)
    )
    for r in rows:
        print(
            f"{r['problem']:26s} {r['D']:4d} {r['gd_grads']:9d} {r['flow_hvp_eq']:12d} "
            f"{r['eval_ratio']:10.1f} {r['gd_seconds']:8.3f} {r['flow_seconds']:8.3f} "
            f"{r['time_ratio']:10.2f} {r['flow_numerical_error']:13.2e} "
            f"{r['flow_vs_gd_distance']:16.2e}"
        )


if __name__ == "__main__":
    main()
