"""Through an eigenvalue crossing (issue 13, part 4), from the stored ``crossing`` results.

* ``crossing_eigenvalues``: ``lambda_1, lambda_2, lambda_3`` along the continued flow, the
  smooth flow (which stops at the crossing) and GD's Gauss-Newton feet (smallest ``eta * wd``);
* ``crossing_tracking``: ``|GN(w_t) - theta(tau)|`` against the continued flow for every
  ``eta * wd`` (and against the smooth flow while it exists), with the crossing marked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, CYCLE, save
from sims import results

NAME = "crossing"


def eigenvalue_figure(arr: dict[str, np.ndarray], summary: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(1, 1, figsize=(6, 4))
    lam = arr["flow.eigenvalues"]
    for k, ls in enumerate(("-", "--", ":")):
        ax.plot(
            arr["flow.tau"],
            lam[:, k],
            ls,
            color=COLORS["flow"],
            label=f"continued flow lambda_{k + 1}",
        )
    ax.plot(
        arr["smooth.tau"],
        arr["smooth.sharpness"],
        "-",
        lw=3,
        alpha=0.4,
        color="k",
        label="smooth flow lambda_1 (stops)",
    )
    last = len(summary["runs"]) - 1
    g = arr[f"r{last}.eigenvalues"]
    for k, mk in enumerate(("o", "s")):
        ax.plot(
            arr[f"r{last}.tau"],
            g[:, k],
            mk,
            ms=3,
            mfc="none",
            color=COLORS["gd"],
            label=f"GD lambda_{k + 1} (eta*wd={summary['runs'][last]['eta_wd']:g})",
        )
    if np.isfinite(summary["tau_cluster"]):
        ax.axvline(summary["tau_cluster"], color=COLORS["ref"], ls=":", lw=1)
    ax.set_xlabel(r"$\tau$")
    ax.set_ylabel("Hessian eigenvalues on Gamma")
    ax.set_title(
        f"BatchNorm-tanh MLP on digits, D={summary['dim']}, n={summary['n_train']}", fontsize=9
    )
    ax.legend(fontsize=7)
    return save(fig, out, "crossing_eigenvalues")


def tracking_figure(arr: dict[str, np.ndarray], summary: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(1, 1, figsize=(6, 4))
    for i, r in enumerate(summary["runs"]):
        c = CYCLE[i % len(CYCLE)]
        t = arr[f"r{i}.tau"]
        ax.semilogy(
            t[1:],
            arr[f"r{i}.dist_cluster"][1:],
            "o-",
            ms=3,
            color=c,
            label=f"vs continued flow, eta*wd={r['eta_wd']:g}",
        )
        ds = arr[f"r{i}.dist_smooth"]
        ax.semilogy(t[1 : len(ds)], ds[1:], "x", ms=4, color=c)
    if np.isfinite(summary["tau_cluster"]):
        ax.axvline(summary["tau_cluster"], color=COLORS["ref"], ls=":", lw=1, label="pair forms")
    ax.set_xlabel(r"$\tau$")
    ax.set_ylabel(r"$|GN(w_t) - \theta(\tau)|$ (x: smooth flow)")
    ax.set_title(f"slope at tau_end {summary['slope_end']:.2f}", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, out, "crossing_tracking")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load(NAME, results_dir)
    summary, arr = res.summary, res.arrays
    out = Path(out_dir)
    return [eigenvalue_figure(arr, summary, out), tracking_figure(arr, summary, out)]
