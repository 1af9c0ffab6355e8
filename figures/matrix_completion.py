"""LLA22's appendix experiment (matrix completion with BatchNorm), from the stored results.

* ``matrix_completion_eos``: for the middle ``eta * wd`` (first seed), against ``t * eta * wd``:
  the two-group EoS quantity ``eta * lambda_1(hess L(w))`` rising to 2 and hovering, the
  spherical sharpness falling, the per-group norms ``|U|``, ``|V|``, and the train/test relative
  errors at the iterate and at the midpoint of the period-2 oscillation;
* ``matrix_completion_ablations``: spherical sharpness, the EoS quantity (running mean) and the
  held-out error against ``t * eta * wd`` for every run, with the ablations without weight
  decay and without normalization;
* ``matrix_completion_error_vs_sharpness``: final held-out error against final spherical
  sharpness (the plain factorization, which has no spherical sharpness, as a horizontal line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, save
from figures.phases import running_mean
from sims import results
from sims.studies import matrix_completion

NAME = "matrix_completion"
_ABLATION_STYLE = {
    "no_wd": ("k", "--", "no weight decay"),
    "no_norm": (COLORS["flow"], ":", "no normalization (plain U V^T, WD)"),
}


def _mains(summary: dict[str, Any]) -> list[str]:
    return sorted(
        (k for k, s in summary.items() if s["kind"] == "main"),
        key=lambda k: (summary[k]["seed"], summary[k]["eta_wd"]),
    )


def _title(cfg: matrix_completion.Config) -> str:
    return (
        f"{cfg.num_rows}x{cfg.num_cols}, rank {cfg.true_rank}, model rank "
        f"{cfg.rank}, {cfg.num_observed} observed, eta={cfg.eta}"
    )


def eos_figure(
    arr: dict[str, np.ndarray], summary: dict[str, Any], cfg: matrix_completion.Config, out: Path
) -> Path:
    mains = [k for k in _mains(summary) if summary[k]["seed"] == cfg.seeds[0]]
    name = mains[len(mains) // 2]
    s = summary[name]
    x = arr[f"{name}.t_eta_wd"]
    fig, ax = plt.subplots(4, 1, figsize=(7, 9), sharex=True)
    eos = arr[f"{name}.eos"]
    ax[0].plot(x, eos, lw=0.6, alpha=0.6, color=COLORS["gd"], label="GD+WD")
    ax[0].plot(x, running_mean(eos, 21), color="k", lw=1.2, label="running mean")
    ax[0].axhline(2.0, color=COLORS["flow"], ls="--", lw=1, label="2")
    if s["onset"] is not None:
        for a in ax:
            a.axvline(s["onset"] * s["eta_wd"], color=COLORS["ref"], ls=":", lw=1)
    ax[0].set_ylabel(r"$\eta\,\lambda_1(\nabla^2 L(w_t))$")
    ax[0].set_ylim(0, max(3.0, float(np.nanpercentile(eos, 99)) * 1.05))
    ax[0].legend(loc="lower right")
    ax[0].set_title(
        f"{_title(cfg)}, eta*wd={s['eta_wd']:g} (onset at step {s['onset']})", fontsize=9
    )
    ax[1].plot(x, arr[f"{name}.sharpness"], color=COLORS["gd"])
    ax[1].set_ylabel("spherical sharpness S")
    gn = arr[f"{name}.group_norms"]
    ax[2].plot(x, gn[:, 0], label="|U|")
    ax[2].plot(x, gn[:, 1], label="|V|")
    ax[2].set_ylabel("per-group norm")
    ax[2].legend()
    for key, style, lab in (
        ("train_rel_error", "-", "train (iterate)"),
        ("test_rel_error", "-", "held out (iterate)"),
        ("mid_train_rel_error", "--", "train (midpoint)"),
        ("mid_test_rel_error", "--", "held out (midpoint)"),
    ):
        ax[3].semilogy(x, arr[f"{name}.{key}"], style, label=lab)
    ax[3].set_ylabel(r"relative error $|f - y| / |y|$")
    ax[3].set_xlabel(r"$t \cdot \eta\, wd$")
    ax[3].legend(fontsize=7)
    return save(fig, out, "matrix_completion_eos")


def ablations_figure(
    arr: dict[str, np.ndarray], summary: dict[str, Any], cfg: matrix_completion.Config, out: Path
) -> Path:
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    cmap = plt.get_cmap("viridis")
    mains = _mains(summary)
    for i, name in enumerate(mains):
        s = summary[name]
        x = arr[f"{name}.t_eta_wd"]
        c = cmap(i / max(len(mains) - 1, 1))
        lab = f"eta*wd={s['eta_wd']:g} (seed {s['seed']})"
        ax[0].plot(x, arr[f"{name}.sharpness"], color=c, label=lab)
        ax[1].plot(x, running_mean(arr[f"{name}.eos"], 21), color=c, label=lab)
        ax[2].semilogy(x, arr[f"{name}.mid_test_rel_error"], color=c, label=lab)
    for name, s in summary.items():
        if s["kind"] == "main":
            continue
        color, ls, lab = _ABLATION_STYLE[s["kind"]]
        x = arr[f"{name}.t_eta_wd"]
        if s["scale_invariant"]:
            ax[0].plot(x, arr[f"{name}.sharpness"], color=color, ls=ls, label=lab)
        eos = running_mean(arr[f"{name}.eos"], 21)
        ax[1].plot(x, eos, color=color, ls=ls, label=lab)
        ax[2].semilogy(x, arr[f"{name}.mid_test_rel_error"], color=color, ls=ls, label=lab)
    ax[0].set_ylabel("spherical sharpness S")
    ax[1].axhline(2.0, color=COLORS["ref"], lw=0.8)
    ax[1].set_ylabel(r"$\eta\,\lambda_1$ (running mean)")
    ax[2].set_ylabel("held-out relative error (midpoint)")
    for a in ax:
        a.set_xlabel(r"$t \cdot \eta\, wd$")
    ax[0].legend(fontsize=7)
    ax[2].legend(fontsize=7)
    fig.suptitle(
        f"Matrix completion with BN ({_title(cfg)}): runs against t * eta * wd; "
        "ablations at the middle eta * wd (no WD: time axis is t * that eta * wd)"
    )
    return save(fig, out, "matrix_completion_ablations")


def error_figure(summary: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for s in summary.values():
        if s["kind"] == "no_norm":
            color, ls, lab = _ABLATION_STYLE["no_norm"]
            ax.axhline(s["mid_test_rel_error"], color=color, ls=ls, label=lab)
            continue
        main = s["kind"] == "main"
        marker = "o" if main else "s"
        lab = f"eta*wd={s['eta_wd']:g}, seed {s['seed']}" if main else _ABLATION_STYLE[s["kind"]][2]
        ax.scatter(s["sharpness_end"], s["mid_test_rel_error"], marker=marker, label=lab)
    ax.set_yscale("log")
    ax.set_xlabel("final spherical sharpness S")
    ax.set_ylabel("final held-out relative error (midpoint)")
    ax.legend(fontsize=7)
    ax.set_title("Held-out error against final spherical sharpness")
    return save(fig, out, "matrix_completion_error_vs_sharpness")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load(NAME, results_dir)
    cfg, summary, arr = res.config, res.summary, res.arrays
    out = Path(out_dir)
    return [
        eos_figure(arr, summary, cfg, out),
        ablations_figure(arr, summary, cfg, out),
        error_figure(summary, out),
    ]
