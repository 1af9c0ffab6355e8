"""The regime map from the stored ``regime_map`` results (docs/regimes.md).

* ``regime_map``: the phase diagram. One panel per network (dataset, model) and
  normalization-loss pair; in each, the runs at their initial EoS quantity ``eos0`` against
  ``eta * wd``, coloured by regime, one marker per width (offset vertically so that widths do
  not hide each other). The dashed curve is the phase-II boundary of the budget: below it a run
  with fixed sharpness would need more than ``steps`` steps to reach the edge
  (``eos0 = 2 (1 - eta wd)^(2 steps)``, docs/theory.md section 2); the dotted line is
  ``eos0 = 2``.
* ``regime_map_boundaries``: the measurements behind the boundaries: the measured onset against
  the phase-II prediction with the sharpness fixed and corrected by the measured progressive
  sharpening; the settled midpoint EoS quantity against ``eta * wd``; the progressive
  sharpening ``S(before the onset) / S(0)``; and the loss at the end.
* ``regime_map_series``: one run of each regime present: the EoS quantity (iterates, midpoints),
  the spherical sharpness at midpoints and the loss against the step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, save
from sims import results
from sims.results import number
from sims.studies.regime_map import Config, relabel

REGIME_COLORS = {
    "tame": "#2ca02c",
    "inflated": "#d62728",
    "catapult": "#9467bd",
    "below_edge": "#ff7f0e",
    "stalled": "#8c564b",
    "no_eos": "#7f7f7f",
    "unresolved": "#bcbd22",
    "diverged": "#000000",
}
WIDTH_MARKERS = ("o", "s", "^", "D", "v")


def _panel_key(s: dict[str, Any]) -> tuple[str, str]:
    return f"{s['dataset']} {s['model']}", f"{s['norm']}-{s['loss']}"


def phase_diagram(summary: dict[str, Any], cfg: Config, out: Path) -> Path:
    nets = sorted({_panel_key(s)[0] for s in summary.values()})
    pairs = sorted({_panel_key(s)[1] for s in summary.values()})
    fig, axes = plt.subplots(
        len(nets), len(pairs), figsize=(3.4 * len(pairs), 2.8 * len(nets)), squeeze=False
    )
    widths = sorted({(s["model"], s["width"]) for s in summary.values()})
    marker = {w: WIDTH_MARKERS[i % len(WIDTH_MARKERS)] for i, w in enumerate(widths)}
    ewd = np.geomspace(min(cfg.eta_wd) / 1.5, max(cfg.eta_wd) * 1.5, 100)
    boundary = 2 * (1 - ewd) ** (2 * cfg.steps)
    seen: set[str] = set()
    for s in summary.values():
        net, pair = _panel_key(s)
        ax = axes[nets.index(net), pairs.index(pair)]
        k = [w for w in widths if w[0] == s["model"]].index((s["model"], s["width"]))
        y = float(s["eos0_target"]) * 1.12**k
        ax.scatter(
            s["eta_wd"],
            y,
            color=REGIME_COLORS[s["regime"]],
            marker=marker[(s["model"], s["width"])],
            s=40,
            edgecolor="k",
            lw=0.4,
            zorder=3,
        )
        seen.add(s["regime"])
    for i, net in enumerate(nets):
        for j, pair in enumerate(pairs):
            ax = axes[i, j]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.plot(ewd, boundary, "--", color=COLORS["ref"], lw=0.8)
            ax.axhline(2.0, color=COLORS["ref"], ls=":", lw=0.8)
            lo = min(cfg.eos0) / 2
            ax.set_ylim(lo, max(cfg.eos0) * 2.5)
            ax.set_title(f"{net}, {pair}")
            if i == len(nets) - 1:
                ax.set_xlabel(r"$\eta\,\lambda$ (eta * wd)")
            if j == 0:
                ax.set_ylabel(r"$\eta\,\lambda_1(\nabla^2 L(w_0))$")
    handles = [
        plt.Line2D([], [], ls="", marker="o", color=REGIME_COLORS[r], mec="k", label=r)
        for r in REGIME_COLORS
        if r in seen
    ]
    handles += [
        plt.Line2D([], [], ls="", marker=marker[w], color="w", mec="k", label=f"{w[0]} {w[1]}")
        for w in widths
    ]
    handles.append(plt.Line2D([], [], ls="--", color=COLORS["ref"], label="phase-II budget"))
    fig.legend(handles=handles, loc="outside right center", fontsize=7)
    fig.suptitle(f"Regime map: GD+WD on normalized networks, {cfg.steps} steps per run")
    return save(fig, out, "regime_map")


def boundaries_figure(summary: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(1, 4, figsize=(16, 3.8))
    for s in summary.values():
        c = REGIME_COLORS[s["regime"]]
        onset, pred, sharpen = (
            number(s["onset_step"]),
            number(s["predicted_onset"]),
            number(s.get("sharpening")),
        )
        if onset > 0 and pred > 0:
            ax[0].scatter(pred, onset, color=c, s=14, edgecolor="k", lw=0.3)
            if sharpen > 0:
                eos_pre = number(s["eos0"]) * sharpen
                corr = math.log(2 / eos_pre) / (-2 * math.log1p(-s["eta_wd"])) if eos_pre < 2 else 0
                ax[0].scatter(max(corr, 1.0), onset, color=c, s=14, marker="x", lw=0.8)
        mid = number(s.get("eos_mid_mean"))
        if np.isfinite(mid):
            ax[1].scatter(s["eta_wd"], mid, color=c, s=14, edgecolor="k", lw=0.3)
        if np.isfinite(sharpen):
            ax[2].scatter(s["eta_wd"], sharpen, color=c, s=14, edgecolor="k", lw=0.3)
        ax[3].scatter(s["eta_wd"], number(s.get("loss_end")), color=c, s=14, edgecolor="k", lw=0.3)
    lim = ax[0].get_xlim()
    ax[0].plot(lim, lim, color=COLORS["ref"], lw=0.8)
    ax[0].set_xscale("log")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("predicted onset (o: S fixed, x: x measured sharpening)")
    ax[0].set_ylabel("measured onset step")
    ax[1].axhspan(1.9, 2.1, color=REGIME_COLORS["tame"], alpha=0.15, lw=0)
    ax[1].set_ylabel(r"settled $\eta\lambda_1$ at midpoints (mean)")
    ax[2].axhline(1.0, color=COLORS["ref"], lw=0.8)
    ax[2].set_ylabel(r"$S$ before the onset / $S(w_0)$")
    ax[3].set_yscale("log")
    ax[3].set_ylabel("training loss at the end")
    for a in ax[1:]:
        a.set_xscale("log")
        a.set_xlabel(r"$\eta\,\lambda$ (eta * wd)")
    handles = [
        plt.Line2D([], [], ls="", marker="o", color=c, mec="k", label=r)
        for r, c in REGIME_COLORS.items()
        if any(s["regime"] == r for s in summary.values())
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize=7)
    fig.suptitle("What sets the boundaries: onset, inflation, progressive sharpening, loss")
    return save(fig, out, "regime_map_boundaries")


def series_figure(arr: dict[str, np.ndarray], summary: dict[str, Any], out: Path) -> Path:
    examples: dict[str, str] = {}
    for name, s in summary.items():
        examples.setdefault(s["regime"], name)
    regimes = [r for r in REGIME_COLORS if r in examples]
    fig, ax = plt.subplots(3, len(regimes), figsize=(3.6 * len(regimes), 7), squeeze=False)
    for j, r in enumerate(regimes):
        name = examples[r]
        s = summary[name]
        step = arr[f"{s['arch']}.step"]
        eos, mid = arr[f"{name}.eos"], arr[f"{name}.eos_mid"]
        ok = np.isfinite(mid)
        solved = np.isfinite(eos)  # a map tracked on every track_stride-th row has NaN between
        ax[0, j].plot(step[solved], eos[solved], lw=0.6, color=COLORS["gd"], label="iterates")
        ax[0, j].plot(step[ok], mid[ok], "o", ms=3, color=COLORS["ref"], label="midpoints")
        ax[0, j].axhline(2.0, color=COLORS["flow"], ls="--", lw=0.8)
        ax[0, j].set_title(f"{r}\n{name}", fontsize=7)
        sm = arr[f"{name}.sharpness_mid"]
        ok_s = np.isfinite(sm)
        ax[1, j].semilogy(step[ok_s], sm[ok_s], "o-", ms=3, color=REGIME_COLORS[r])
        ax[2, j].semilogy(step, arr[f"{name}.loss"], color=COLORS["gd"], lw=0.8)
        ax[2, j].set_xlabel("step")
    ax[0, 0].set_ylabel(r"$\eta\,\lambda_1$")
    ax[0, 0].legend(fontsize=7)
    ax[1, 0].set_ylabel("spherical sharpness S (midpoints)")
    ax[2, 0].set_ylabel("training loss")
    return save(fig, out, "regime_map_series")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("regime_map", results_dir)
    cfg, summary, arr = res.config, res.summary, res.arrays
    summary = relabel(summary)  # results stored with the old label "chaotic"
    out = Path(out_dir)
    return [
        phase_diagram(summary, cfg, out),
        boundaries_figure(summary, out),
        series_figure(arr, summary, out),
    ]
