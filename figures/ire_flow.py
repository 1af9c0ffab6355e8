"""Exact IRE on scale-invariant GD+WD, from the stored ``ire_flow`` results (docs/ire.md).

``ire_flow.png``: (a) measured speed-up of the sharpness-reduction flow against ``kappa`` for the
tangent and radial modes, with ``1 + kappa`` and the derived prediction (IRE-S); (b) the flow time
reached, ``tau_eff``, against ``tau = 2 eta wd t`` for a few ``kappa`` (markers: measured, lines:
predicted); (c) the projector's position: current iterate vs midpoint, refreshed every ``K``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, CYCLE, save
from sims import results

MARKERS = {"tangent": "o", "radial": "s"}


def _speedups(ax: plt.Axes, table: list[dict[str, Any]]) -> None:
    main = [r for r in table if r["projector"] == "midpoint:1" and r["kappa"] > 0]
    problems = sorted({r["problem"] for r in main})
    kappas = np.array(sorted({r["kappa"] for r in main}))
    ax.plot(kappas, 1 + kappas, color=COLORS["ref"], ls=":", label="$1+\\kappa$")
    for j, problem in enumerate(problems):
        for mode in ("tangent", "radial"):
            rows = [r for r in main if r["problem"] == problem and r["mode"] == mode]
            if not rows:
                continue
            k = np.array([r["kappa"] for r in rows])
            ax.plot(
                k,
                [r["speedup"] for r in rows],
                MARKERS[mode],
                color=CYCLE[j],
                mfc="none" if mode == "radial" else CYCLE[j],
                label=f"{problem} {mode}",
            )
            ax.plot(k, [r["predicted"] for r in rows], "-", color=CYCLE[j], lw=0.8, alpha=0.7)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="$\\kappa$",
        ylabel="speed-up of the flow",
        title="(a) measured (markers) vs (IRE-S) (lines)",
    )
    ax.legend()


def _paths(ax: plt.Axes, arr: dict[str, np.ndarray], table: list[dict[str, Any]]) -> None:
    problem = table[0]["problem"]
    shown = [
        r
        for r in table
        if r["problem"] == problem
        and r["projector"] == "midpoint:1"
        and r["eta_wd"] == table[0]["eta_wd"]
        and r["kappa"] in (0.0, 1.0, 3.0, 10.0)
    ]
    order = sorted({r["kappa"] for r in shown})
    for r in shown:
        key = r["key"]
        color = CYCLE[order.index(r["kappa"]) % len(CYCLE)]
        ls = "-" if r["mode"] == "tangent" else "--"
        ax.plot(arr[f"{key}.tau"], arr[f"{key}.tau_pred"], ls, color=color, lw=0.9)
        ax.plot(
            arr[f"{key}.tau"],
            arr[f"{key}.tau_eff"],
            MARKERS[r["mode"]],
            ms=2.5,
            color=color,
            label=f"{r['mode']} $\\kappa$={r['kappa']:g}",
        )
    ax.set(
        xlabel="$\\tau = 2\\eta\\,wd\\,t$",
        ylabel="flow time reached $\\tau_{eff}$",
        title=f"(b) {problem}: measured vs predicted",
    )
    ax.legend(ncol=2)


def _projectors(ax: plt.Axes, arr: dict[str, np.ndarray], table: list[dict[str, Any]]) -> None:
    problem = table[0]["problem"]
    variants = [r["kappa"] for r in table if r["projector"] != "midpoint:1"]
    if not variants:
        ax.text(0.5, 0.5, "(c) no projector variants in this run", ha="center", va="center")
        ax.set_axis_off()
        return
    kap = max(variants)
    rows = [
        r
        for r in table
        if r["problem"] == problem
        and r["mode"] == "tangent"
        and r["kappa"] == kap
        and r["eta_wd"] == table[0]["eta_wd"]
    ]
    for j, r in enumerate(rows):
        key = r["key"]
        ax.plot(
            arr[f"{key}.tau"],
            arr[f"{key}.tau_eff"],
            ".-",
            ms=3,
            lw=0.8,
            color=CYCLE[j % len(CYCLE)],
            label=f"{r['projector']} (x{r['speedup']:.3g})",
        )
    ax.axhline(0, color=COLORS["ref"], lw=0.6)
    ax.set(
        xlabel="$\\tau = 2\\eta\\,wd\\,t$",
        ylabel="$\\tau_{eff}$",
        title=f"(c) {problem}, tangent, $\\kappa$={kap:g}: point:K of the projector",
    )
    ax.legend()


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("ire_flow", results_dir)
    table, arr = res.summary["table"], res.arrays
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    _speedups(axes[0], table)
    _paths(axes[1], arr, table)
    _projectors(axes[2], arr, table)
    return [save(fig, out_dir, "ire_flow")]
