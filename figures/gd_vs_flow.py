"""GD+WD against the sharpness-reduction flow, from the stored ``gd_vs_flow`` results.

Three figures:

* ``gd_vs_flow_trajectory``: for the problems whose ``Gamma`` is a curve, the GD directions
  (oscillating across ``Gamma``) and the position along ``Gamma`` against ``tau`` of
  ``Phi(w_hat_t)`` and of the F1 and F0 flows;
* ``gd_vs_flow_sharpness``: ``lambda_1(Phi(w_hat_t))`` against ``tau`` for every ``eta * wd``,
  collapsing onto the flow's curve;
* ``gd_vs_flow_distance``: ``|Phi(w_hat_t) - theta(tau)|`` at ``tau = 2`` against ``eta * wd`` on
  log-log axes, with the fitted slopes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, save
from sims import results
from sims.studies import gd_vs_flow
from theory.problems.analytic import PROBLEMS


def _chart(problem: str, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position along Gamma, signed offset across it): the problem's chart
    (theory.problems.analytic)."""
    chart = PROBLEMS[problem]().chart
    assert chart is not None, f"{problem}: Gamma is not a curve"
    x, y = chart(jnp.asarray(u))
    return np.asarray(x), np.asarray(y)


def _labels(problem: str) -> tuple[str, str]:
    if problem == "great_circle":
        return "longitude $\\varphi$", "latitude"
    return "$u = w_1/w_3$", "$v = w_2/w_3$"


def _middle(values: Sequence[float]) -> int:
    """Index of the geometric middle of the eta*wd values."""
    logs = np.log(np.asarray(values))
    return int(np.argmin(np.abs(logs - logs.mean())))


def trajectory(arr: dict[str, np.ndarray], cfg: gd_vs_flow.Config, out_dir: Path) -> Path | None:
    problems = [p for p in cfg.problems if PROBLEMS[p]().chart is not None]
    if not problems:
        return None
    i = _middle(cfg.eta_wd)
    fig, axes = plt.subplots(2, len(problems), figsize=(5.2 * len(problems), 6.5), squeeze=False)
    for j, prob in enumerate(problems):
        pre = f"{prob}.equilibrium.{i}" if "equilibrium" in cfg.starts else f"{prob}.generic.{i}"
        tau = arr[f"{pre}.tau"]
        x_gd, y_gd = _chart(prob, arr[f"{pre}.w_hat"])
        x_phi, _ = _chart(prob, arr[f"{pre}.phi"])
        x_f1, y_f1 = _chart(prob, arr[f"{pre}.flow_F1"])
        x_f0, _ = _chart(prob, arr[f"{pre}.flow_F0"])
        xl, yl = _labels(prob)
        top, bottom = axes[0, j], axes[1, j]
        sc = top.scatter(x_gd, y_gd, c=tau, s=6, cmap="viridis", label="GD direction $\\hat w_t$")
        top.plot(x_f1, y_f1, color=COLORS["flow"], lw=2, label="flow F1 (on $\\Gamma$)")
        top.axhline(0, color=COLORS["ref"], lw=0.5)
        top.set_xlabel(xl)
        top.set_ylabel(yl)
        top.set_title(f"{prob}: eta*wd = {cfg.eta_wd[i]:g} ({pre.split('.')[1]} start)")
        top.legend(loc="center")
        fig.colorbar(sc, ax=top, label="$\\tau$")
        bottom.plot(tau, x_phi, "o", ms=3, color=COLORS["gd"], label="$\\Phi(\\hat w_t)$ (GD)")
        bottom.plot(tau, x_f1, color=COLORS["flow"], lw=1.5, label="flow F1")
        bottom.plot(tau, x_f0, color=COLORS["flow_f0"], lw=1.5, ls="--", label="flow F0")
        bottom.set_xlabel("$\\tau = 2\\,\\eta\\,wd\\,(t - t_0)$")
        bottom.set_ylabel(f"position along $\\Gamma$ ({xl})")
        bottom.legend()
    return save(fig, out_dir, "gd_vs_flow_trajectory")


def sharpness(arr: dict[str, np.ndarray], cfg: gd_vs_flow.Config, out_dir: Path) -> Path:
    problems, starts = cfg.problems, cfg.starts
    fig, axes = plt.subplots(
        len(starts),
        len(problems),
        figsize=(4.4 * len(problems), 3.4 * len(starts)),
        squeeze=False,
    )
    cmap = plt.get_cmap("viridis")
    n = len(cfg.eta_wd)
    for r, start in enumerate(starts):
        for c, prob in enumerate(problems):
            ax = axes[r, c]
            for i, ewd in enumerate(cfg.eta_wd):
                pre = f"{prob}.{start}.{i}"
                ax.plot(
                    arr[f"{pre}.tau"],
                    arr[f"{pre}.sharpness_phi"],
                    "o",
                    ms=2.5,
                    color=cmap(i / max(n - 1, 1)),
                    label=f"GD, eta*wd={ewd:g}",
                )
            last = f"{prob}.{start}.{n - 1}"
            ax.plot(
                arr[f"{last}.tau"],
                arr[f"{last}.sharpness_flow_F1"],
                color=COLORS["flow"],
                lw=1.5,
                label="flow F1",
            )
            ax.plot(
                arr[f"{last}.tau"],
                arr[f"{last}.sharpness_flow_F0"],
                color=COLORS["flow_f0"],
                lw=1.5,
                ls="--",
                label="flow F0",
            )
            ax.set_title(f"{prob}, {start} start")
            ax.set_xlabel("$\\tau$")
            ax.set_ylabel("$\\lambda_1(\\Phi(\\hat w_t))$")
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    fig.suptitle("Spherical sharpness on matched time: GD for several eta*wd against the flow")
    return save(fig, out_dir, "gd_vs_flow_sharpness")


def distance(summary: dict[str, Any], cfg: gd_vs_flow.Config, out_dir: Path) -> Path:
    problems = cfg.problems
    fig, axes = plt.subplots(1, len(problems), figsize=(4.6 * len(problems), 3.8), squeeze=False)
    x = np.asarray(cfg.eta_wd)
    styles = {"equilibrium": "-", "equilibrium_F0": "--", "generic": ":"}
    for c, prob in enumerate(problems):
        ax = axes[0, c]
        for start in cfg.starts:
            s = summary[f"{prob}.{start}"]
            for form, color in (("F1", COLORS["flow"]), ("F0", COLORS["flow_f0"])):
                y = np.asarray(s[f"dist_tau2_{form}"])
                ax.loglog(
                    x,
                    y,
                    "o" + styles[start],
                    color=color,
                    label=f"{start}, {form}: slope {s[f'slope_tau2_{form}']:.2f}",
                )
        ax.loglog(x, 0.1 * x, color=COLORS["ref"], lw=0.5, ls="--", label="slope 1 (guide)")
        ax.set_xlabel("$\\eta\\, wd$")
        ax.set_ylabel("$|\\Phi(\\hat w_t) - \\theta(\\tau)|$ at $\\tau = 2$")
        ax.set_title(prob)
        ax.legend(fontsize=7)
    fig.suptitle("GD tracks the flow: distance at tau = 2 against the intrinsic learning rate")
    return save(fig, out_dir, "gd_vs_flow_distance")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("gd_vs_flow", results_dir)
    cfg, summary, arr = res.config, res.summary, res.arrays
    out = Path(out_dir)
    paths = [sharpness(arr, cfg, out), distance(summary, cfg, out)]
    traj = trajectory(arr, cfg, out)
    return ([traj] if traj else []) + paths
