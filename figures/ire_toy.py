"""The IRE paper's Figure 1 from the stored ``ire_toy`` results.

``ire_toy``: (left) trajectories in the ``(u, v)`` plane, ``v`` on a symlog axis (the
oscillation ``v -> -u^2 v`` changes sign every step); (middle) the sharpness ``1 + u^2`` of the
nearest minimizer against the step (log axis), with the top Hessian eigenvalue at the iterate
dashed and the GD stability limit ``2 / eta``; (right) ``|v|``, the oscillation amplitude that
drives the drift. Diverged runs end with a cross at their last finite iterate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, save
from sims import results
from sims.studies import ire_toy

_STYLES = {
    "gd": {"ls": "-", "lw": 2.0},
    "mask": {"ls": "-", "lw": 1.4},
    "exact_current": {"ls": ":", "lw": 1.4},
    "exact_midpoint": {"ls": "--", "lw": 1.4},
}


def _label(name: str, s: dict[str, Any]) -> str:
    if s["method"] == "gd":
        lab = f"GD eta={s['eta']:g}"
    elif s["method"] == "mask":
        lab = f"IRE mask kappa={s['kappa']:g}"
    else:
        lab = f"IRE exact ({s['point']}) kappa={s['kappa']:g}"
    if s["diverged_at"] is not None:
        lab += f" (diverges at step {s['diverged_at']})"
    return lab


def _color(name: str, s: dict[str, Any], kappas: list[float]) -> Any:
    if s["method"] == "gd":
        return COLORS["ref"] if s["name"] == "gd_eta1" else COLORS["flow"]
    cmap = plt.get_cmap("viridis")
    i = kappas.index(s["kappa"])
    return cmap(0.1 + 0.8 * i / max(len(kappas) - 1, 1))


def toy_figure(
    arr: dict[str, np.ndarray], summary: dict[str, Any], cfg: ire_toy.Config, out: Path
) -> Path:
    kappas = sorted({float(s["kappa"]) for s in summary.values() if s["method"] != "gd"})
    fig, ax = plt.subplots(1, 3, figsize=(15, 5.4))
    for name, s in summary.items():
        key = s["method"] if s["method"] != "exact" else f"exact_{s['point']}"
        style = {**_STYLES[key], "color": _color(name, s, kappas), "label": _label(name, s)}
        step, u, v = arr[f"{name}.step"], arr[f"{name}.u"], arr[f"{name}.v"]
        ok = np.isfinite(u) & np.isfinite(v) & (np.abs(u) < 10) & (np.abs(v) < 10)
        ax[0].plot(u[ok], v[ok], color=style["color"], lw=0.4, alpha=0.35)
        ax[0].plot(u[ok], v[ok], ls="none", marker="o", ms=2.5, color=style["color"])
        ax[1].plot(step + 1, arr[f"{name}.sharpness"], **style)
        ax[1].plot(step + 1, arr[f"{name}.lambda_max"], color=style["color"], lw=0.6, alpha=0.5)
        ax[2].plot(step + 1, np.abs(v), **style)
        if s["diverged_at"] is not None:
            last = np.flatnonzero(ok)[-1]
            ax[0].plot(u[last], v[last], "x", color=style["color"], ms=8)
            fin = np.flatnonzero(np.isfinite(u))[-1]
            y = float(np.clip(arr[f"{name}.sharpness"][fin], 0.95, 2.55))
            ax[1].plot(step[fin] + 1, y, "x", color=style["color"], ms=8)
    ax[0].set_yscale("symlog", linthresh=1e-6)
    ax[0].set_xlim(-0.1, 1.6)
    ax[0].set_ylim(-10, 10)
    ax[0].plot([0], [0], "*", color="k", ms=12, zorder=5)
    ax[0].set_xlabel("u")
    ax[0].set_ylabel("v (symlog, linear below 1e-6)")
    ax[0].set_title(f"trajectories from ({cfg.u0:g}, {cfg.v0:g}); * = flattest minimizer")
    ax[1].set_xscale("log")
    ax[1].axhline(2 / cfg.eta, color=COLORS["ref"], lw=0.8, ls="-.")
    ax[1].set_ylim(0.9, 2.6)
    ax[1].set_xlabel("step t + 1")
    ax[1].set_ylabel(r"sharpness $1 + u^2$ (thin: $\lambda_1$ at the iterate)")
    ax[1].set_title("sharpness (dash-dot: GD stability limit 2/eta)")
    ax[2].set_xscale("log")
    ax[2].set_yscale("log")
    ax[2].set_ylim(1e-12, 10)
    ax[2].set_xlabel("step t + 1")
    ax[2].set_ylabel("|v| (oscillation amplitude)")
    ax[2].set_title("below 2/eta, v dies and the drift stops")
    handles, labels = ax[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle(
        r"IRE on $L(u,v) = (1+u^2)v^2/2$ (Wang et al. 2024, Fig. 1): "
        f"{cfg.steps} steps; mask = exact Hessian diagonal, gamma = {cfg.gamma:g}"
    )
    return save(fig, out, "ire_toy")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("ire_toy", results_dir)
    return [toy_figure(res.arrays, res.summary, res.config, Path(out_dir))]
