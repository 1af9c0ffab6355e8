"""The one style module for every figure: backend, sizes, colours, saving."""

from __future__ import annotations

from pathlib import Path

import matplotlib
from cycler import cycler

matplotlib.use("Agg")  # files only: figures never call plt.show()

import matplotlib.pyplot as plt

COLORS = {
    "gd": "#1f77b4",
    "flow": "#d62728",
    "flow_f0": "#ff9896",
    "ref": "#444444",
    "phase1": "#e8f1fa",
    "phase2": "#fdf1e0",
    "phase3": "#eaf6ea",
}
CYCLE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]

plt.rcParams.update(
    {
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.labelsize": 9,
        "legend.fontsize": 8,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.prop_cycle": cycler(color=CYCLE),
        "figure.constrained_layout.use": True,
    }
)


def save(fig: plt.Figure, out_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as ``<out_dir>/<name>.png`` (atomically) and close it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    tmp = out / f".{name}.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def shade_phases(ax: plt.Axes, t_phase1_end: float, t_onset: float | None, t_end: float) -> None:
    """Background bands for phases I (to the manifold), II (norm decay) and III (EoS)."""
    ax.axvspan(0, t_phase1_end, color=COLORS["phase1"], zorder=0, lw=0)
    if t_onset is None:
        ax.axvspan(t_phase1_end, t_end, color=COLORS["phase2"], zorder=0, lw=0)
        return
    ax.axvspan(t_phase1_end, t_onset, color=COLORS["phase2"], zorder=0, lw=0)
    ax.axvspan(t_onset, t_end, color=COLORS["phase3"], zorder=0, lw=0)
