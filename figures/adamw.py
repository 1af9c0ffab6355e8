"""GD+WD against AdamW on a normalized network, from the stored ``adamw`` results.

(a) each optimizer's stability number over its edge: GD+WD's ``eta lambda_1 / 2`` and AdamW's
``lambda_1(P^{-1} H) / ((2 + 2 b1) / ((1 - b1) lr))`` (1 dashed), and AdamW's ``lr lambda_1 / 2``
(the plain column, not a stability number under Adam); (b) ``|w|^2`` with AdamW's rms-1
prediction ``lr D / (wd (2 - lr wd))``; (c) the angle between ``w_t`` and ``w_{t+1}`` with the
orthogonal-update prediction ``~ sqrt(2 lr wd)`` of each run (dashed); (d) the spherical
sharpness ``lambda_1(H) |w|^2``. The settled phase (the checks' window) is shaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, CYCLE, save
from sims import results
from sims.studies import adamw

STYLE = {
    "gdwd": {"color": CYCLE[0], "label": "GD+WD"},
    "adamw": {"color": CYCLE[1], "label": "AdamW"},
}


def adamw_figure(
    arr: dict[str, np.ndarray], summary: dict[str, Any], cfg: adamw.Config, out: Path
) -> Path:
    fig, ax = plt.subplots(2, 2, figsize=(12, 8.5))
    (a_e, a_n), (a_a, a_s) = ax
    g, a = summary["gdwd"], summary["adamw"]
    for name in adamw.RUNS:
        st, s = STYLE[name], summary[name]
        step = arr[f"{name}.step"]
        ok = np.isfinite(arr[f"{name}.eos"])
        if name == "gdwd":
            a_e.plot(
                step[ok],
                arr[f"{name}.eos"][ok] / 2,
                lw=1.2,
                **{**st, "label": "GD+WD: eta lambda_1 / 2"},
            )
        else:
            pe = arr[f"{name}.precond_eos"]
            a_e.plot(step[ok], pe[ok], lw=1.2, **{**st, "label": "AdamW: lambda_1(P^-1 H) / edge"})
            a_e.plot(
                step[ok],
                arr[f"{name}.eos"][ok] / 2,
                lw=0.8,
                ls=":",
                color=st["color"],
                label="AdamW: lr lambda_1 / 2 (plain)",
            )
            a_n.axhline(
                s["norm2_predicted_rms1"],
                color=st["color"],
                ls="--",
                lw=1,
                label="AdamW rms-1 prediction",
            )
        a_n.plot(step, arr[f"{name}.norm"] ** 2, **st)
        a_a.semilogy(step[:-1], arr[f"{name}.angle"][:-1], lw=1, **st)
        a_a.axhline(s["angle_predicted"], color=st["color"], ls="--", lw=1)
        a_s.semilogy(step[ok], arr[f"{name}.sharpness"][ok], lw=1, **st)
    t0 = cfg.settle * cfg.steps
    for x in (a_e, a_n, a_a, a_s):
        x.axvspan(t0, cfg.steps, color=COLORS["phase3"], zorder=0, lw=0)
        x.set_xlabel("step t")
    a_e.axhline(1.0, color=COLORS["ref"], ls="--", lw=1)
    a_e.set_yscale("log")
    a_e.set_ylabel("stability number / its edge")
    a_e.set_title("each optimizer's edge (1 dashed)")
    a_e.legend(fontsize=7)
    a_n.set_ylabel("|w|^2")
    a_n.set_title("squared norm")
    a_n.legend(fontsize=7)
    a_a.set_ylabel("angle(w_t, w_{t+1}) [rad]")
    a_a.set_title("step on the sphere (dashed: orthogonal-update equilibrium)")
    a_s.set_ylabel("spherical sharpness lambda_1(H) |w|^2")
    a_s.set_title("spherical sharpness")
    fig.suptitle(
        f"digits, LayerNorm MLP {tuple(cfg.widths)} {cfg.activation}, D={g['dim']}: GD+WD eta="
        f"{cfg.gd_eta:g} wd={cfg.gd_wd:g}; AdamW lr={cfg.adam_lr:g} wd={cfg.adam_wd:g} "
        f"b1={cfg.b1:g} b2={cfg.b2:g} (edge {a['precond_edge']:.4g})"
    )
    return save(fig, out, "adamw")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("adamw", results_dir)
    return [adamw_figure(res.arrays, res.summary, res.config, Path(out_dir))]
