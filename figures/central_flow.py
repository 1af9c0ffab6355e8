"""GD, the central flow, Edge Flow and the sharpness-reduction flow from a generic start (stored
``central_flow`` results; never runs a simulation).

One figure, ``central_flow``: one column per problem (the smallest stored ``eta * wd``), rows

1. ``|w|``: GD's moving average, the central flow, the SR flow's ``sqrt(eta S / 2)``;
2. ``eta_eff S`` at GD's time-averaged iterate (moving average; thin: at the midpoints
   ``(w_t + w_{t+1}) / 2``) and the central flow's (edge ``2 - eta wd``);
3. GD's moving-average loss, the central flow's ``L + 1/2 <Sigma, H>`` and the SR flow's
   ``eta wd S / (4 (1 + |g|^2/4))`` (log scale);
4. the direction error (angle to GD's moving-average direction) of both models;

Edge Flow (green, where stored) is drawn in rows 1-4 against the same axes: its center's
``|w|``, ``eta_eff S`` (which resolves the overshoot at the onset that the central flow
averages away), its predicted two-step average loss and its center's angle to GD's midpoints;

and a last column with the largest errors after the onset against ``eta * wd``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, CYCLE, save
from sims import results
from sims.results import number


def _runs(summary: dict[str, Any]) -> dict[str, list[str]]:
    by_problem: dict[str, list[str]] = {}
    for key, s in summary.items():
        by_problem.setdefault(s["problem"], []).append(key)
    return by_problem


EDGE = CYCLE[2]  # Edge Flow's color


def _edge_flow(axes: Any, c: int, arr: dict[str, np.ndarray], key: str) -> None:
    """Edge Flow's curves in column ``c`` (runs stored before it existed have none)."""
    if f"{key}.ef_eos" not in arr:
        return
    t = arr[f"{key}.t"]
    axes[0, c].plot(t, arr[f"{key}.ef_norm"], color=EDGE, lw=0.8, label="Edge Flow")
    axes[1, c].plot(t, arr[f"{key}.ef_eos"], color=EDGE, lw=0.8)
    axes[2, c].semilogy(t, np.maximum(arr[f"{key}.ef_avg_loss"], 1e-300), color=EDGE, lw=0.8)
    axes[3, c].semilogy(
        t, np.maximum(arr[f"{key}.err_ef_dir"], 1e-12), color=EDGE, label="Edge Flow (midpoints)"
    )


def draw(arr: dict[str, np.ndarray], summary: dict[str, Any], out_dir: Path) -> Path:
    groups = _runs(summary)
    problems = list(groups)
    fig, axes = plt.subplots(
        4, len(problems) + 1, figsize=(3.6 * (len(problems) + 1), 10.5), squeeze=False
    )
    for c, prob in enumerate(problems):
        key = min(groups[prob], key=lambda k: summary[k]["eta_wd"])
        s = summary[key]
        t, sr_t = arr[f"{key}.t"], arr[f"{key}.sr_t"]
        ax = axes[0, c]
        ax.plot(t, arr[f"{key}.gd_norm"], color=COLORS["gd"], label="GD (moving avg)")
        ax.plot(t, arr[f"{key}.cf_norm"], color=COLORS["flow"], ls="--", label="central flow")
        ax.plot(sr_t, arr[f"{key}.sr_norm"], color=COLORS["flow_f0"], ls=":", label="SR flow F1")
        ax.set_title(f"{prob}, eta*wd = {s['eta_wd']:g}")
        ax.set_ylabel("$|w|$")
        _edge_flow(axes, c, arr, key)
        if c == 0:
            ax.legend(fontsize=7)
        ax = axes[1, c]
        ax.plot(t, arr[f"{key}.gd_eos"], color=COLORS["gd"], lw=0.8)
        if f"{key}.gd_eos_mid" in arr:
            ax.plot(t, arr[f"{key}.gd_eos_mid"], color=COLORS["gd"], lw=0.4, alpha=0.5)
        ax.plot(t, arr[f"{key}.cf_eos"], color=COLORS["flow"], ls="--")
        ax.axhline(2.0 - s["eta_wd"], color=COLORS["ref"], lw=0.6)
        ax.set_ylabel("$\\eta_{eff} S$")
        ax = axes[2, c]
        ax.semilogy(t, np.maximum(arr[f"{key}.gd_loss_bar"], 1e-300), color=COLORS["gd"], lw=0.8)
        ax.semilogy(t, np.maximum(arr[f"{key}.cf_avg_loss"], 1e-300), color=COLORS["flow"], ls="--")
        ax.semilogy(sr_t, arr[f"{key}.sr_avg_loss"], color=COLORS["flow_f0"], ls=":")
        ax.set_ylim(bottom=max(1e-8, 1e-3 * s["loss_level"]))
        ax.set_ylabel("time-averaged loss")
        ax = axes[3, c]
        ax.semilogy(
            t,
            np.maximum(arr[f"{key}.err_cf_dir"], 1e-12),
            color=COLORS["flow"],
            label="central flow",
        )
        ax.semilogy(
            sr_t,
            np.maximum(arr[f"{key}.err_sr_dir"], 1e-12),
            color=COLORS["flow_f0"],
            label="SR flow",
        )
        ax.set_ylabel("angle to GD's direction")
        ax.set_xlabel("GD step $t$")
        for r in range(4):
            if np.isfinite(number(s["onset_central_flow"])):
                axes[r, c].axvline(
                    number(s["onset_central_flow"]), color=COLORS["ref"], lw=0.5, ls=":"
                )
    last = len(problems)
    for r, (what, label) in enumerate(
        (
            ("norm", "max rel. error $|w|$"),
            ("eos", "max error $\\eta_{eff}S$ / 2"),
            ("loss", "max loss error / EoS level"),
            ("dir", "max direction error"),
        )
    ):
        ax = axes[r, last]
        for prob in problems:
            keys = sorted(groups[prob], key=lambda k: summary[k]["eta_wd"])
            x = [summary[k]["eta_wd"] for k in keys]
            ax.loglog(
                x,
                [number(summary[k][f"max_cf_{what}_after"]) for k in keys],
                "o-",
                ms=3,
                label=f"{prob} CF",
            )
            ax.loglog(
                x,
                [number(summary[k][f"max_sr_{what}"]) for k in keys],
                "x:",
                ms=4,
                label=f"{prob} SR",
            )
        ax.set_ylabel(label + " (t >= onset)")
        ax.set_xlabel("$\\eta\\,wd$")
        if r == 0:
            ax.legend(fontsize=6)
    fig.suptitle(
        "GD+WD from a generic start: central flow (CF), Edge Flow and sharpness-reduction flow (SR)"
    )
    return save(fig, out_dir, "central_flow")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("central_flow", results_dir)
    return [draw(res.arrays, res.summary, Path(out_dir))]
