"""IRE on the normalized networks, from the stored ``ire_networks`` results.

``ire_networks``: (a) spherical sharpness against the step for GD+WD (base), exact IRE and the
diagonal-mask IRE (one colour per selector, line style per ``kappa``, seed ``seeds[0]``); (b) the
EoS quantity ``eta * lambda_1`` (GD's stability number; 2 dashed); (c) per-layer weight norms;
(d) test accuracy (mean over the last third of the rows) against the final spherical sharpness
(geometric mean over the same rows), every run and seed, with each selector's measured cost per
step relative to the base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, CYCLE, save
from sims import results
from sims.studies import ire_networks

SELECTOR_COLORS = {"none": COLORS["ref"], "exact": CYCLE[0], "mask": CYCLE[1]}
SELECTOR_NAMES = {"none": "GD+WD (base)", "exact": "IRE exact", "mask": "IRE mask"}
KAPPA_STYLES = ["-", "--", ":", "-."]


def _style(s: dict[str, Any], kappas: list[float]) -> dict[str, Any]:
    ls = "-" if s["selector"] == "none" else KAPPA_STYLES[kappas.index(s["kappa"]) % 4]
    label = SELECTOR_NAMES[s["selector"]] + (
        "" if s["selector"] == "none" else f" kappa={s['kappa']:g}"
    )
    lw = 2.2 if s["selector"] == "none" else 1.3
    return {"color": SELECTOR_COLORS[s["selector"]], "ls": ls, "lw": lw, "label": label}


def ire_networks_figure(
    arr: dict[str, np.ndarray], summary: dict[str, Any], cfg: ire_networks.Config, out: Path
) -> Path:
    kappas = sorted({float(s["kappa"]) for s in summary.values() if s["selector"] != "none"})
    seed0 = cfg.seeds[0]
    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5))
    (a_s, a_e), (a_n, a_acc) = ax
    for name, s in summary.items():
        if s["seed"] != seed0:
            continue
        st = _style(s, kappas)
        step = arr[f"{name}.step"]
        a_s.semilogy(step, arr[f"{name}.sharpness"], marker="o", ms=2.5, **st)
        a_e.plot(step, arr[f"{name}.eos"], marker="o", ms=2.5, **st)
        norms = arr[f"{name}.group_norms"]
        for g in range(norms.shape[1]):
            a_n.semilogy(step, norms[:, g], **{**st, "label": st["label"] if g == 0 else None})
    n_tail = len(arr[f"s{seed0}_base.step"]) // 3
    t0 = arr[f"s{seed0}_base.step"][-max(1, n_tail)]
    for a in (a_s, a_e):
        a.axvspan(t0, arr[f"s{seed0}_base.step"][-1], color=COLORS["phase3"], zorder=0, lw=0)
    a_s.set_ylabel("spherical sharpness S (per-layer normalized)")
    a_s.set_title("spherical sharpness (shaded: the window of the final value)")
    a_e.axhline(2.0, color=COLORS["flow"], ls="--", lw=1)
    a_e.set_ylabel(r"EoS quantity $\eta\,\lambda_1(\nabla^2 L(w_t))$")
    a_e.set_title("GD's stability number at the iterate")
    a_n.set_ylabel("per-layer weight norm |W_g|")
    a_n.set_title("per-layer norms (both layers, same style)")
    for a in (a_s, a_e, a_n):
        a.set_xlabel("step t")
    a_s.legend(fontsize=7)
    markers = {"none": "s", "exact": "o", "mask": "^"}
    for s in summary.values():
        st = _style(s, kappas)
        size = 30 + 25 * (kappas.index(s["kappa"]) if s["selector"] != "none" else 0)
        over = s.get("overhead")
        lab = st["label"] + ("" if over is None else f" (cost x{over:.2f})")
        a_acc.scatter(
            s["sharpness_end"],
            s["test_accuracy_tail"],
            marker=markers[s["selector"]],
            s=size,
            color=st["color"],
            label=lab if s["seed"] == seed0 else None,
            alpha=1.0 if s["seed"] == seed0 else 0.5,
        )
    a_acc.set_xscale("log")
    a_acc.set_xlabel("final spherical sharpness (geometric mean, last third)")
    a_acc.set_ylabel("test accuracy (mean, last third)")
    a_acc.set_title(f"accuracy vs sharpness ({len(cfg.seeds)} seed(s); cost per step vs base)")
    a_acc.legend(fontsize=7)
    fig.suptitle(
        f"IRE on GD+WD, {cfg.dataset} MLP {tuple(cfg.widths)} {cfg.norm}norm "
        f"{cfg.loss}: eta={cfg.eta:g}, eta*wd={cfg.eta_wd:g}; "
        f"exact: k={cfg.k}, midpoint, K={cfg.refresh_every}; "
        f"mask: Fisher, gamma={cfg.gamma:g}"
    )
    return save(fig, out, "ire_networks")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("ire_networks", results_dir)
    return [ire_networks_figure(res.arrays, res.summary, res.config, Path(out_dir))]
