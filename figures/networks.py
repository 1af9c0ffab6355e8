"""LLA22's figures on real data, from the stored ``networks`` results.

* ``networks_eos``: the EoS quantity ``eta * lambda_1(hess L(w))`` rising to 2 and hovering
  (dots: at midpoints of consecutive iterates, the proxy of the manifold point ``Phi(w)``; at the
  iterates the oscillation inflates it) while the spherical sharpness falls (dots again at
  midpoints), with train/test accuracy (the middle ``eta * wd``);
* ``networks_ablations``: spherical sharpness and the EoS quantity (lines at the iterates, dots
  at midpoints) against ``t * eta * wd`` for every ``eta * wd`` (LLA22: the curves collapse; at the
  quick scale the EoS quantity does, the midpoint sharpness ends lower for larger ``eta * wd``), and
  the ablations without weight decay and without normalization; test accuracy along all runs;
* ``networks_accuracy_vs_sharpness``: final test accuracy against final spherical sharpness (at
  midpoints, mean over the last 10% of the run) across the scale-invariant runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, save
from figures.phases import running_mean
from sims import results
from sims.studies import networks


def _main_runs(summary: dict[str, Any]) -> list[str]:
    return [k for k, s in summary.items() if s["kind"] == "main"]


def _mid_dots(
    ax: Any, x: np.ndarray, mid: np.ndarray | None, color: Any, ms: float = 3.0, label: bool = True
) -> None:
    """Values at midpoints of consecutive iterates (NaN where not measured) as dots."""
    if mid is not None and np.any(np.isfinite(mid)):
        ok = np.isfinite(mid)
        lab = r"at $(w_t + w_{t+1})/2$" if label else None
        ax.plot(x[ok], mid[ok], "o", ms=ms, color=color, label=lab)


def _final_sharpness(s: dict[str, Any]) -> float:
    """The final spherical sharpness at midpoints where stored, else at the iterates."""
    return float(s.get("sharpness_end_mid", s["sharpness_end"]))


def eos_figure(
    arr: dict[str, np.ndarray], summary: dict[str, Any], cfg: networks.Config, out: Path
) -> Path:
    mains = [k for k in _main_runs(summary) if summary[k]["seed"] == cfg.seeds[0]]
    name = sorted(mains, key=lambda k: summary[k]["eta_wd"])[len(mains) // 2]
    s = summary[name]
    step = arr[f"{name}.step"]
    fig, ax = plt.subplots(3, 1, figsize=(7, 7.5), sharex=True)
    eos = arr[f"{name}.eos"]
    ax[0].plot(step, eos, lw=0.5, alpha=0.5, color=COLORS["gd"], label="GD")
    ax[0].plot(step, running_mean(eos, 21), color="k", lw=1.2, label="running mean")
    _mid_dots(ax[0], step, arr.get(f"{name}.eos_mid"), COLORS["ref"])
    ax[0].axhline(2.0, color=COLORS["flow"], ls="--", lw=1, label="2")
    if s["onset"] is not None:
        for a in ax:
            a.axvline(s["onset"], color=COLORS["ref"], ls=":", lw=1)
    ax[0].set_ylabel(r"$\eta\,\lambda_1(\nabla^2 L(w_t))$")
    ax[0].set_ylim(0, max(4.0, float(np.nanpercentile(eos, 99))))
    ax[0].legend(loc="lower right")
    ax[0].set_title(
        f"{cfg.dataset}, {cfg.model} {cfg.norm}norm, {cfg.loss}: "
        f"eta={cfg.eta}, eta*wd={s['eta_wd']:g} (onset at step {s['onset']})"
    )
    ax[1].semilogy(step, arr[f"{name}.sharpness"], color=COLORS["gd"], lw=0.8, label="at $w_t$")
    _mid_dots(ax[1], step, arr.get(f"{name}.sharpness_mid"), COLORS["ref"])
    ax[1].set_ylabel("spherical sharpness S")
    ax[1].legend(loc="upper right")
    for key, style in (("train_accuracy", "-"), ("test_accuracy", "--")):
        if f"{name}.{key}" in arr:
            ax[2].plot(step, arr[f"{name}.{key}"], style, label=key.replace("_", " "))
    ax[2].set_ylabel("accuracy")
    ax[2].set_xlabel("step t")
    ax[2].legend()
    return save(fig, out, "networks_eos")


def ablations_figure(arr: dict[str, np.ndarray], summary: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    cmap = plt.get_cmap("viridis")
    mains = sorted(_main_runs(summary), key=lambda k: summary[k]["eta_wd"])
    for i, name in enumerate(mains):
        s = summary[name]
        x = arr[f"{name}.t_eta_wd"]
        c = cmap(i / max(len(mains) - 1, 1))
        lab = f"eta*wd={s['eta_wd']:g} (seed {s['seed']})"
        ax[0].semilogy(x, arr[f"{name}.sharpness"], color=c, lw=0.6, alpha=0.6, label=lab)
        _mid_dots(ax[0], x, arr.get(f"{name}.sharpness_mid"), c, ms=2.5, label=False)
        ax[1].plot(x, running_mean(arr[f"{name}.eos"], 21), color=c, label=lab)
        _mid_dots(ax[1], x, arr.get(f"{name}.eos_mid"), c, ms=2.5, label=False)
        if f"{name}.test_accuracy" in arr:
            ax[2].plot(x, arr[f"{name}.test_accuracy"], color=c, label=lab)
    for name, s in summary.items():
        if s["kind"] == "main":
            continue
        x = arr[f"{name}.step"] * s["eta_wd"]
        style = {
            "no_wd": ("k", "--", "no weight decay"),
            "no_norm": (COLORS["flow"], ":", "no normalization (plain net, WD)"),
        }[s["kind"]]
        if s["kind"] == "no_wd":
            ax[0].semilogy(x, arr[f"{name}.sharpness"], color=style[0], ls=style[1], label=style[2])
        ax[1].plot(
            x, running_mean(arr[f"{name}.eos"], 21), color=style[0], ls=style[1], label=style[2]
        )
        if f"{name}.test_accuracy" in arr:
            ax[2].plot(x, arr[f"{name}.test_accuracy"], color=style[0], ls=style[1], label=style[2])
    ax[0].set_ylabel("spherical sharpness S")
    ax[1].axhline(2.0, color=COLORS["ref"], lw=0.8)
    ax[1].set_ylabel(r"$\eta\,\lambda_1$ (lines: running mean at $w_t$; dots: at midpoints)")
    ax[2].set_ylabel("test accuracy")
    ax[2].set_ylim(0.85, 1.0)
    for a in ax:
        a.set_xlabel(r"$t \cdot \eta\, wd$")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    fig.suptitle(
        "Against t * eta * wd (LLA22 predicts collapsed curves); without WD no EoS; "
        "without normalization there is no sphere"
    )
    return save(fig, out, "networks_ablations")


def accuracy_figure(summary: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, s in summary.items():
        if not s["scale_invariant"] or "test_accuracy" not in s:
            continue
        marker = "o" if s["kind"] == "main" else "s"
        ax.scatter(_final_sharpness(s), s["test_accuracy"], marker=marker, label=f"{name}")
    ax.set_xscale("log")
    ax.set_xlabel("final spherical sharpness S (at midpoints of consecutive iterates)")
    ax.set_ylabel("final test accuracy")
    ax.legend(fontsize=7)
    ax.set_title("Test accuracy against final spherical sharpness")
    return save(fig, out, "networks_accuracy_vs_sharpness")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("networks", results_dir)
    cfg, summary, arr = res.config, res.summary, res.arrays
    out = Path(out_dir)
    return [
        eos_figure(arr, summary, cfg, out),
        ablations_figure(arr, summary, out),
        accuracy_figure(summary, out),
        net_flow_figure(results_dir, out),
    ]


def net_flow_figure(results_dir: str | Path, out_dir: str | Path) -> Path:
    """GD on a small normalized network against the flow: sharpness and distance vs tau."""
    res = results.load("net_flow", results_dir)
    s, arr = res.summary, res.arrays
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("viridis")
    n = len(s["eta_wd"])
    for i, ewd in enumerate(s["eta_wd"]):
        c = cmap(i / max(n - 1, 1))
        tau = arr[f"r{i}.tau"]
        ax[0].plot(tau, arr[f"r{i}.sharpness_phi"], "o", ms=3, color=c, label=f"GD, eta*wd={ewd:g}")
        ax[1].semilogy(tau[1:], arr[f"r{i}.dist_phi"][1:], "o-", color=c, label=f"eta*wd={ewd:g}")
    ax[0].plot(
        arr[f"r{n - 1}.tau"],
        arr[f"r{n - 1}.sharpness_flow"],
        color=COLORS["flow"],
        lw=2,
        label="flow F1",
    )
    ax[0].set_xlabel(r"$\tau$")
    ax[0].set_ylabel(r"$\lambda_1$ at the projected iterate / on the flow")
    ax[0].legend(fontsize=7)
    ax[1].set_xlabel(r"$\tau$")
    ax[1].set_ylabel(r"$|P_\Gamma(\hat w_t) - \theta(\tau)|$ (Gauss-Newton projection)")
    ax[1].legend(fontsize=7)
    fig.suptitle(
        f"Normalized MLP on teacher-student least squares (D = {s['dim']}, "
        f"n = {s['n_train']}): GD against the flow; slope {float(s['slope']):.2f}"
    )
    return save(fig, out_dir, "net_flow")
