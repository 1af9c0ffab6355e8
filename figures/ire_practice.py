"""IRE's practical claims, from the stored ``ire_practice`` results.

``ire_practice``: (a) full training loss against the step (mean over seeds, band: min to max)
for SGD, SGD-IRE, SAM and SAM-IRE; (b) held-out accuracy against the step, same style; (c)
final held-out accuracy per method, every seed (dots) and mean +- sample std (bar), with the
paired gain of each IRE method over its base beside the paper's CIFAR-10 gain; (d) final
spherical sharpness ``lambda_1`` and Hutchinson trace of ``hess L(w_hat)`` per method
(relative to the SGD mean of each), every seed and mean +- std.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from figures._style import CYCLE, save
from sims import results
from sims.studies import ire_practice

METHOD_COLORS = {"sgd": CYCLE[0], "sgd_ire": CYCLE[1], "sam": CYCLE[2], "sam_ire": CYCLE[3]}
METHOD_NAMES = {"sgd": "SGD", "sgd_ire": "SGD-IRE", "sam": "SAM", "sam_ire": "SAM-IRE"}
# The paper's test-accuracy gains (points) on CIFAR-10 WRN-28-10, drawn beside ours.
PAPER_GAIN = {"sgd_ire": 0.40, "sam_ire": 0.12}


def _curves(arr: dict[str, np.ndarray], seeds: list[int], method: str, key: str) -> np.ndarray:
    return np.stack([arr[f"s{s}_{method}.{key}"] for s in seeds])


def ire_practice_figure(
    arr: dict[str, np.ndarray], summary: dict[str, Any], cfg: ire_practice.Config, out: Path
) -> Path:
    seeds = list(cfg.seeds)
    methods = list(cfg.methods)
    agg = summary["methods"]
    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5))
    (a_loss, a_acc), (a_fin, a_sharp) = ax
    step = arr[f"s{seeds[0]}_{methods[0]}.step"]
    for m in methods:
        col = METHOD_COLORS[m]
        for a, key in ((a_loss, "train_loss"), (a_acc, "test_accuracy")):
            c = _curves(arr, seeds, m, key)
            a.plot(step, c.mean(0), color=col, lw=1.6, label=METHOD_NAMES[m])
            a.fill_between(step, c.min(0), c.max(0), color=col, alpha=0.15, lw=0)
    a_loss.set_yscale("log")
    a_loss.set_ylabel("full training loss (cross-entropy)")
    a_loss.set_title(f"training loss (mean over {len(seeds)} seeds, band min-max)")
    a_acc.set_ylabel("held-out accuracy")
    a_acc.set_title(f"held-out accuracy ({summary['n_test']} examples)")
    lo = min(float(_curves(arr, seeds, m, "test_accuracy")[:, -1].min()) for m in methods)
    a_acc.set_ylim(max(0.0, lo - 0.05), 1.0)
    if cfg.warmup:
        for a in (a_loss, a_acc):
            a.axvline(cfg.warmup, color="0.5", ls=":", lw=1)
    for a in (a_loss, a_acc):
        a.set_xlabel("step t")
        a.legend(fontsize=7)
    x = np.arange(len(methods))
    for i, m in enumerate(methods):
        col = METHOD_COLORS[m]
        vals = 100 * np.asarray(agg[m]["test_accuracy"]["values"])
        a_fin.scatter(
            np.full(vals.size, i) + np.linspace(-0.12, 0.12, vals.size),
            vals,
            s=14,
            color=col,
            alpha=0.7,
        )
        mean, std = 100 * agg[m]["test_accuracy"]["mean"], 100 * agg[m]["test_accuracy"]["std"]
        a_fin.errorbar(i + 0.25, mean, yerr=std, fmt="o", color=col, capsize=4, ms=6)
        if "diff_test_accuracy" in agg[m]:
            d = agg[m]["diff_test_accuracy"]
            a_fin.annotate(
                f"{100 * d['mean']:+.2f} +- {100 * d['std']:.2f}\n(paper {PAPER_GAIN[m]:+.2f})",
                (i, mean),
                xytext=(0, 28),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
    a_fin.set_xticks(x, [METHOD_NAMES[m] for m in methods])
    a_fin.set_ylabel("final held-out accuracy (%)")
    a_fin.set_title("final accuracy: seeds (dots), mean +- std; IRE - base per seed (text)")
    ref = {key: agg[methods[0]][key]["mean"] for key in ("sharpness_end", "trace_end")}
    for j, (key, marker, name) in enumerate(
        (("sharpness_end", "o", "lambda_1"), ("trace_end", "s", "trace"))
    ):
        for i, m in enumerate(methods):
            col = METHOD_COLORS[m]
            vals = np.asarray(agg[m][key]["values"]) / ref[key]
            xs = np.full(vals.size, i + (j - 0.5) * 0.3)
            a_sharp.scatter(xs, vals, s=14, marker=marker, color=col, alpha=0.6)
            a_sharp.errorbar(
                i + (j - 0.5) * 0.3 + 0.08,
                agg[m][key]["mean"] / ref[key],
                yerr=agg[m][key]["std"] / ref[key],
                fmt=marker,
                color=col,
                mfc="white" if j else col,
                capsize=3,
                label=f"{name}" if i == 0 else None,
            )
    a_sharp.axhline(1.0, color="0.5", ls="--", lw=1)
    a_sharp.set_xticks(x, [METHOD_NAMES[m] for m in methods])
    a_sharp.set_ylabel(f"final spherical curvature / {METHOD_NAMES[methods[0]]} mean")
    a_sharp.set_title("final lambda_1 (circles), trace (squares) of hess L(w_hat)")
    a_sharp.legend(fontsize=7)
    fig.suptitle(
        f"IRE on minibatch SGD / SAM: {cfg.dataset}, LayerNorm MLP {tuple(cfg.widths)}, CE, "
        f"batch {cfg.batch_size}, {cfg.steps} steps\neta={cfg.eta:g}, momentum={cfg.momentum:g}, "
        f"wd={cfg.wd:g}, rho={cfg.rho:g}; IRE kappa={cfg.kappa:g}, gamma={cfg.gamma:g}, "
        f"K={cfg.refresh_every}, warm-up {cfg.warmup}"
    )
    return save(fig, out, "ire_practice")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("ire_practice", results_dir)
    return [ire_practice_figure(res.arrays, res.summary, res.config, Path(out_dir))]
