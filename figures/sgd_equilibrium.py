"""SGD+WD on a normalized network from the stored ``sgd_equilibrium`` results.

Per momentum (one column each): (top) the angle between consecutive iterates against the step:
at the recorded steps (grey) and ``arccos(1 - mean(1 - cos))`` over every step of each row's
block (the statistic of the prediction), with the predicted equilibrium
``arccos(1 - eta wd / (1 + beta))`` dashed; (middle) each group's
norm with its predicted equilibrium from the measured spherical gradient norms (dotted); (bottom)
the curvature in the engine's units: ``eta`` times the batch sharpness, the step sharpness and
the full-batch ``lambda_1``, with the stochastic edge ``2 (1 + beta) - eta wd`` (dash-dot).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, save
from sims import results
from sims.studies import sgd_equilibrium


def equilibrium_figure(res: results.Result[sgd_equilibrium.Config], out: Path) -> Path:
    cfg, summary, arr = res.config, res.summary, res.arrays
    names = list(summary)
    fig, ax = plt.subplots(3, len(names), figsize=(6 * len(names), 11), squeeze=False)
    for j, name in enumerate(names):
        s = summary[name]
        step = arr[f"{name}.step"]
        a = ax[0, j]
        a.plot(step, arr[f"{name}.angle"], lw=0.4, color="0.7", label="angle at the recorded steps")
        block = np.arccos(1 - arr[f"{name}.block_one_minus_cos"])
        a.plot(step, block, lw=0.8, color=COLORS["gd"], label="arccos(1 - mean(1 - cos)), block")
        a.axhline(float(s["angle_predicted"]), color=COLORS["ref"], ls="--", label="predicted")
        a.set_ylabel("angular update per step (rad)")
        a.set_title(
            f"beta = {float(s['momentum']):g}: eta = {cfg.eta:g}, wd = {cfg.wd:g}, "
            f"B = {cfg.batch_size}"
        )
        a.legend(fontsize=8)
        a = ax[1, j]
        norms = arr[f"{name}.group_norms"]
        cmap = plt.get_cmap("viridis")
        for g in range(norms.shape[1]):
            c = cmap(0.1 + 0.8 * g / max(norms.shape[1] - 1, 1))
            a.plot(step, norms[:, g], color=c, lw=1.0, label=f"group {g}")
            a.axhline(float(s["group_norm_predicted"][g]), color=c, ls=":", lw=1.0)
        a.set_ylabel("|w_g| (dotted: predicted equilibrium)")
        a.legend(fontsize=8)
        a = ax[2, j]
        for key, label, color in (
            ("batch_eos", "eta * batch sharpness", COLORS["gd"]),
            ("step_eos", "eta * step sharpness (full H along g_B)", COLORS["flow"]),
            ("full_eos", "eta * lambda_1 (full batch)", COLORS["ref"]),
        ):
            a.plot(step, arr[f"{name}.{key}"], lw=0.6, color=color, label=label)
        a.axhline(float(s["edge"]), color="k", ls="-.", lw=0.8, label="edge 2(1+beta) - eta wd")
        if float(s["momentum"]) > 0:
            a.axhline(float(s["edge_low"]), color="k", ls=":", lw=0.8, label="2(1-beta) - eta wd")
        top = np.nanpercentile(arr[f"{name}.batch_eos"], 99)
        a.set_ylim(0, 1.2 * max(top, float(s["edge"])))
        a.set_xlabel("step")
        a.set_ylabel("eta x curvature")
        a.legend(fontsize=8)
    fig.suptitle(
        "Minibatch SGD + WD on a LayerNorm MLP (digits): angular equilibrium and the "
        "stochastic edge"
    )
    return save(fig, out, "sgd_equilibrium")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("sgd_equilibrium", results_dir)
    return [equilibrium_figure(res, Path(out_dir))]
