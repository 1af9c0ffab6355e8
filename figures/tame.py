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

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, CYCLE, save
from sims import results

NAME = "tame"


def _per_eta_wd(
    plot: Callable[..., Any],
    arr: dict[str, np.ndarray],
    ds: str,
    eta_wd: list[float],
    key: str,
    fmt: str,
    label: str = "",
    start: int = 0,
) -> None:
    """One curve per ``eta * wd`` of ``ds`` with ``plot`` (an axis' ``plot`` or ``semilogy``):
    ``key`` against ``tau`` from row ``start``, labelled ``label`` + ``eta*wd=...``."""
    for i, ewd in enumerate(eta_wd):
        pre = f"{ds}.r{i}"
        plot(
            arr[f"{pre}.tau"][start:],
            arr[f"{pre}.{key}"][start:],
            fmt,
            ms=3,
            color=CYCLE[i % len(CYCLE)],
            label=f"{label}eta*wd={ewd:g}",
        )


def _curve(
    ax: plt.Axes,
    arr: dict[str, np.ndarray],
    pre: str,
    key: str,
    fmt: str,
    label: str,
    color: str,
    tau: str = "tau",
    **kw: Any,
) -> None:
    """``<pre>.<key>`` against ``<pre>.<tau>``."""
    ax.plot(arr[f"{pre}.{tau}"], arr[f"{pre}.{key}"], fmt, color=color, label=label, **kw)


def _columns(
    summary: dict[str, Any], rows: int, height: float
) -> tuple[list[str], plt.Figure, np.ndarray]:
    """The networks of ``summary``, a figure and its ``rows x networks`` axes (one column each)."""
    names = summary["datasets"]
    fig, ax = plt.subplots(rows, len(names), figsize=(4.2 * len(names), height), squeeze=False)
    return names, fig, ax


def _finish(ax: plt.Axes, title: str, xlabel: str = r"$\tau$", ylabel: str = "sharpness") -> None:
    """Labels (no y label if ``ylabel`` is empty), the title and the legend of one panel."""
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend()


def tracking_figure(arr: dict[str, np.ndarray], summary: dict[str, Any], out: Path) -> Path:
    names, fig, ax = _columns(summary, 2, 6.5)
    for j, ds in enumerate(names):
        s = summary[ds]
        _per_eta_wd(ax[0, j].semilogy, arr, ds, s["eta_wd"], "dist_phi", "o-", start=1)
        _finish(
            ax[0, j],
            f"{ds}: D={s['dim']}, n={s['n_train']}, LayerNorm-tanh",
            r"$\tau = 2\eta\,wd\,t$",
            r"$|GN(w_t) - \theta(\tau)|$",
        )
        ewd = np.asarray(s["eta_wd"])
        ax[1, j].loglog(ewd, s["dist_end"], "o-", color=COLORS["gd"], label="tracking error")
        ax[1, j].loglog(ewd, s["proj_error"], "s--", color=COLORS["flow"], label="|GN - Phi|")
        ref = s["dist_end"][-1] * ewd / ewd[-1]
        ax[1, j].loglog(ewd, ref, ":", color=COLORS["ref"], label="slope 1")
        _finish(ax[1, j], f"slope {s['slope']:.2f}", r"$\eta\,wd$", "")
    return save(fig, out, "tame_tracking")


def collapse_figure(arr: dict[str, np.ndarray], summary: dict[str, Any], out: Path) -> Path:
    names, fig, ax = _columns(summary, 1, 3.4)
    for j, ds in enumerate(names):
        s = summary[ds]
        _per_eta_wd(ax[0, j].plot, arr, ds, s["eta_wd"], "sharpness_mid", "o", "midpoint, ")
        last = f"{ds}.r{len(s['eta_wd']) - 1}"
        _curve(ax[0, j], arr, last, "sharpness_flow", "-", "F1 flow", COLORS["flow"])
        _finish(ax[0, j], f"{ds}: spread {s['collapse_spread']:.2g}")
    return save(fig, out, "tame_collapse")


def f0_f1_figure(arr: dict[str, np.ndarray], summary: dict[str, Any], out: Path) -> Path:
    names, fig, ax = _columns(summary, 1, 3.4)
    for j, ds in enumerate(names):
        ff = summary[ds]["f0f1"]
        for start, mk in (("F1", "o"), ("F0", "x")):
            label = f"GD, {start} amplitude"
            _curve(ax[0, j], arr, f"{ds}.ff.{start}", "sharpness_gd", mk, label, COLORS["gd"], ms=4)
        pre = f"{ds}.ff.F1"
        _curve(ax[0, j], arr, pre, "sharpness_f1", "-", "F1 flow", COLORS["flow"])
        _curve(ax[0, j], arr, pre, "sharpness_f0", "--", "F0 flow", COLORS["flow_f0"], "tau_f0")
        g = summary[ds]["g_norm_start"]
        _finish(ax[0, j], f"{ds}: eta*wd={ff['eta_wd']:g}, |g|={g:.3g}")
    return save(fig, out, "tame_f0_f1")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load(NAME, results_dir)
    summary, arr = res.summary, res.arrays
    out = Path(out_dir)
    return [
        tracking_figure(arr, summary, out),
        collapse_figure(arr, summary, out),
        f0_f1_figure(arr, summary, out),
    ]
