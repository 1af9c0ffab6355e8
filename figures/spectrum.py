"""The spherical Hessian's spectral density through phases I-III, from stored ``spectrum`` results.

Left: the kernel-smoothed SLQ density (the probes' Gauss rules pooled, Gaussian kernel of width
1% of the plotted range; log density) at each SLQ row, colored by step, with the edge
``2 / eta_eff = 2 |w|^2 / eta`` of the same row as a dashed line. Right: the top SLQ node, the
Lanczos sharpness, the absolute median of the spectral measure and ``2 / eta_eff`` against the
step, the EoS onset marked.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, save
from sims import results


def smoothed(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, width: float) -> np.ndarray:
    """The probes' mean of ``sum_i tau_i phi_width(x - theta_i)`` (the density of
    :func:`theory.core.slq.density`, in NumPy on stored rules)."""
    z = (grid[:, None, None] - nodes[None]) / width
    phi = np.exp(-0.5 * z * z) / (width * np.sqrt(2.0 * np.pi))
    return np.mean(np.sum(weights[None] * phi, axis=-1), axis=-1)


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("spectrum", results_dir)
    cfg, s, gd = res.config, res.summary, res.run("gd")
    nodes, weights, steps = gd["slq_nodes"], gd["slq_weights"], gd["slq_step"]
    edge = np.asarray(s["edge"], float)
    hi = 1.3 * float(np.max(nodes))  # edges beyond the spectrum (early phase I) are off-axis
    lo = min(float(np.min(nodes)), -0.05 * hi)
    grid = np.linspace(lo, hi, 1200)
    width = 0.01 * (hi - lo)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("viridis")
    for k in range(len(steps)):
        c = cmap(k / max(1, len(steps) - 1))
        dens = smoothed(nodes[k], weights[k], grid, width)
        ax.semilogy(grid, np.maximum(dens, 1e-8), color=c, lw=1, label=f"step {int(steps[k])}")
        ax.axvline(edge[k], color=c, ls="--", lw=0.8)
    ax.set_ylim(1e-6, None)
    ax.set_xlabel(r"eigenvalue of $H(\hat w)$")
    ax.set_ylabel("smoothed density")
    ax.set_title(f"SLQ ({cfg.probes} probes, m = {cfg.m}); dashed: $2/\\eta_{{\\rm eff}}$")
    ax.legend(fontsize=6, ncol=2, loc="upper right")
    t = gd["step"]
    bx.plot(t, gd["sharpness"], ".", ms=2, color=COLORS["gd"], label="Lanczos sharpness")
    edge_t = 2.0 * gd["norm_sq"] / cfg.eta
    bx.plot(t, edge_t, color=COLORS["flow"], ls="--", label=r"$2/\eta_{\rm eff}$")
    bx.plot(steps, s["slq_top"], "o", mfc="none", color="k", label="top SLQ node")
    med = np.abs(np.asarray(s["slq_median"], float))
    bx.plot(steps, med, "s", ms=4, color="0.5", label="|median| (bulk)")
    if s["onset"] is not None:
        bx.axvline(s["onset"], color="r", lw=0.8, label=f"EoS onset {s['onset']}")
    bx.set_yscale("log")
    bx.set_xlabel("step")
    bx.legend(fontsize=7)
    bx.set_title(f"GD+WD, eta = {cfg.eta:g}, eta wd = {cfg.eta_wd:g}")
    return [save(fig, out_dir, "spectrum")]
