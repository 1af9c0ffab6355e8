"""AdamW against AdmIRE on a small causal transformer, from the stored ``admire`` results.

(a) training loss per seed (AdamW solid, AdmIRE dashed) with each seed's target (dotted);
(b) the plain sharpness ``lambda_1(H)``; (c) ``lambda_1(P^{-1} H)`` over AdamW's adaptive edge
``(2 + 2 b1) / ((1 - b1) lr)`` (1 dashed); (d) the speed-up (AdamW steps / AdmIRE steps) to the
lowest loss AdamW has reached by each fraction of the budget, per seed and the median, with the
paper's ~2 dashed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, CYCLE, save
from sims import results
from sims.studies import admire

STYLE = {"adamw": {"ls": "-", "label": "AdamW"}, "admire": {"ls": "--", "label": "AdmIRE"}}


def admire_figure(
    arr: dict[str, np.ndarray], summary: dict[str, Any], cfg: admire.Config, out: Path
) -> Path:
    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5))
    (a_l, a_s), (a_p, a_f) = ax
    for i, seed in enumerate(cfg.seeds):
        color = CYCLE[i % len(CYCLE)]
        for m in admire.METHODS:
            name, st = f"s{seed}_{m}", STYLE[m]
            label = f"{st['label']} seed {seed}"
            step = arr[f"{name}.step"]
            a_l.semilogy(step, arr[f"{name}.loss"], color=color, ls=st["ls"], lw=1.2, label=label)
            ok = np.isfinite(arr[f"{name}.sharpness"])
            a_s.semilogy(step[ok], arr[f"{name}.sharpness"][ok], color=color, ls=st["ls"], lw=1)
            a_p.semilogy(step[ok], arr[f"{name}.precond_eos"][ok], color=color, ls=st["ls"], lw=1)
        a_l.axhline(summary[f"s{seed}_adamw"]["target"], color=color, ls=":", lw=0.8)
    o = summary["overall"]
    a_l.axvline(o["target_step"], color=COLORS["ref"], ls=":", lw=1)
    a_l.set_ylabel("training loss")
    a_l.set_title(f"training loss (dotted: AdamW's best by step {o['target_step']})")
    a_l.legend(fontsize=7, ncol=2)
    a_s.set_ylabel("lambda_1(H)")
    a_s.set_title("sharpness (solid AdamW, dashed AdmIRE)")
    a_p.axhline(1.0, color=COLORS["ref"], ls="--", lw=1)
    a_p.set_ylabel("lambda_1(P^-1 H) / adaptive edge")
    a_p.set_title("lambda_1(P^-1 H), P AdamW's preconditioner, over the adaptive edge (1 dashed)")
    for x in (a_l, a_s, a_p):
        x.set_xlabel("step t")
    fracs = [f["fraction"] for f in o["by_fraction"]]
    for i, seed in enumerate(cfg.seeds):
        sp = [f["speedups"][i] for f in o["by_fraction"]]
        a_f.plot(fracs, sp, "o", color=CYCLE[i % len(CYCLE)], ms=5, label=f"seed {seed}")
    a_f.plot(fracs, [f["speedup_median"] for f in o["by_fraction"]], "k-", lw=1.5, label="median")
    a_f.axhline(o["paper_speedup"], color=COLORS["ref"], ls="--", lw=1, label="paper (~2)")
    a_f.axhline(1.0, color=COLORS["ref"], ls=":", lw=1)
    a_f.set_xlabel("target: AdamW's best loss by this fraction of the budget")
    a_f.set_ylabel("AdamW steps / AdmIRE steps")
    a_f.set_title(f"speed-up (headline at {o['target_fraction']:.0%}: {o['speedup_geomean']:.2f})")
    a_f.legend(fontsize=7)
    dim = summary[f"s{cfg.seeds[0]}_adamw"]["dim"]
    fig.suptitle(
        f"a + b mod {cfg.p}, transformer d={cfg.d_model} heads={cfg.n_heads} layers="
        f"{cfg.n_layers} (D={dim}); AdamW lr={cfg.lr:g} wd={cfg.wd:g} b1={cfg.b1:g} "
        f"b2={cfg.b2:g}; AdmIRE kappa={cfg.kappa:g} gamma={cfg.gamma:g} K={cfg.refresh_every}"
    )
    return save(fig, out, "admire")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("admire", results_dir)
    return [admire_figure(res.arrays, res.summary, res.config, Path(out_dir))]
