"""The tame regime (issue 13, part 2), from the stored ``tame`` results.

* ``tame_tracking``: per network, ``|GN(w_t) - theta(tau)|`` against ``tau`` for every
  ``eta * wd``, and at ``tau_end`` against ``eta * wd`` (log-log, slope-1 guide) with the
  projection's own error ``|GN(w_t) - Phi(w_t)|``;
* ``tame_collapse``: the midpoint sharpness against ``tau`` for every ``eta * wd`` with the
  flow's ``lambda_1``;
* ``tame_f0_f1``: the sharpness along GD started with the F1 and the F0 amplitudes, the F1
  flow and the F0 flow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from sims._store import ResultStore

from ._style import COLORS, CYCLE, save

NAME = "tame"


def tracking_figure(arr: dict[str, np.ndarray], summary: dict[str, Any], out: Path) -> Path:
    names = summary["datasets"]
    fig, ax = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.5), squeeze=False)
    for j, ds in enumerate(names):
        s = summary[ds]
        for i, ewd in enumerate(s["eta_wd"]):
            pre = f"{ds}.r{i}"
            ax[0, j].semilogy(
                arr[f"{pre}.tau"][1:],
                arr[f"{pre}.dist_phi"][1:],
                "o-",
                ms=3,
                color=CYCLE[i % len(CYCLE)],
                label=f"eta*wd={ewd:g}",
            )
        ax[0, j].set_xlabel(r"$\tau = 2\eta\,wd\,t$")
        ax[0, j].set_ylabel(r"$|GN(w_t) - \theta(\tau)|$")
        ax[0, j].set_title(f"{ds}: D={s['dim']}, n={s['n_train']}, LayerNorm-tanh", fontsize=9)
        ax[0, j].legend()
        ewd = np.asarray(s["eta_wd"])
        ax[1, j].loglog(ewd, s["dist_end"], "o-", color=COLORS["gd"], label="tracking error")
        ax[1, j].loglog(ewd, s["proj_error"], "s--", color=COLORS["flow"], label="|GN - Phi|")
        ref = s["dist_end"][-1] * ewd / ewd[-1]
        ax[1, j].loglog(ewd, ref, ":", color=COLORS["ref"], label="slope 1")
        ax[1, j].set_xlabel(r"$\eta\,wd$")
        ax[1, j].set_title(f"slope {s['slope']:.2f}", fontsize=9)
        ax[1, j].legend()
    return save(fig, out, "tame_tracking")


def collapse_figure(arr: dict[str, np.ndarray], summary: dict[str, Any], out: Path) -> Path:
    names = summary["datasets"]
    fig, ax = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for j, ds in enumerate(names):
        s = summary[ds]
        for i, ewd in enumerate(s["eta_wd"]):
            pre = f"{ds}.r{i}"
            ax[0, j].plot(
                arr[f"{pre}.tau"],
                arr[f"{pre}.sharpness_mid"],
                "o",
                ms=3,
                color=CYCLE[i % len(CYCLE)],
                label=f"midpoint, eta*wd={ewd:g}",
            )
        last = f"{ds}.r{len(s['eta_wd']) - 1}"
        ax[0, j].plot(
            arr[f"{last}.tau"],
            arr[f"{last}.sharpness_flow"],
            "-",
            color=COLORS["flow"],
            label="F1 flow",
        )
        ax[0, j].set_xlabel(r"$\tau$")
        ax[0, j].set_ylabel("sharpness")
        ax[0, j].set_title(f"{ds}: spread {s['collapse_spread']:.2g}", fontsize=9)
        ax[0, j].legend()
    return save(fig, out, "tame_collapse")


def f0_f1_figure(arr: dict[str, np.ndarray], summary: dict[str, Any], out: Path) -> Path:
    names = summary["datasets"]
    fig, ax = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for j, ds in enumerate(names):
        ff = summary[ds]["f0f1"]
        for start, mk in (("F1", "o"), ("F0", "x")):
            pre = f"{ds}.ff.{start}"
            ax[0, j].plot(
                arr[f"{pre}.tau"],
                arr[f"{pre}.sharpness_gd"],
                mk,
                ms=4,
                color=COLORS["gd"],
                label=f"GD, {start} amplitude",
            )
        pre = f"{ds}.ff.F1"
        ax[0, j].plot(
            arr[f"{pre}.tau"],
            arr[f"{pre}.sharpness_f1"],
            "-",
            color=COLORS["flow"],
            label="F1 flow",
        )
        ax[0, j].plot(
            arr[f"{pre}.tau_f0"],
            arr[f"{pre}.sharpness_f0"],
            "--",
            color=COLORS["flow_f0"],
            label="F0 flow",
        )
        ax[0, j].set_xlabel(r"$\tau$")
        ax[0, j].set_ylabel("sharpness")
        g = summary[ds]["g_norm_start"]
        ax[0, j].set_title(f"{ds}: eta*wd={ff['eta_wd']:g}, |g|={g:.3g}", fontsize=9)
        ax[0, j].legend()
    return save(fig, out, "tame_f0_f1")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    stored = ResultStore(results_dir).latest(NAME)
    summary, arr = stored.meta["summary"], stored.arrays
    out = Path(out_dir)
    return [
        tracking_figure(arr, summary, out),
        collapse_figure(arr, summary, out),
        f0_f1_figure(arr, summary, out),
    ]
