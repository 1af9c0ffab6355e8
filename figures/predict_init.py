"""The prediction from the initialization against GD, from the stored ``predict_init`` results.

Two figures:

* ``predict_init_runs``: per problem (columns), for the middle ``eta * wd``: GD's per-step
  ``|w_t|^2`` (with its relaxation cycles) and the predicted norm (top), and the sharpness at
  the projected GD iterate against the predicted one (bottom), with the predicted onset;
* ``predict_init_errors``: against ``eta * wd``, the onset error in steps, the whole-cycle
  averaged sharpness and ``log |w|^2`` errors (max over cycles; the MLP's instantaneous
  sharpness error, it has no cycles) and the compiled wall-clock ratio GD / prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, save
from sims import results


def runs(arr: dict[str, np.ndarray], summary: dict[str, Any], out_dir: Path) -> Path:
    names = list(summary)
    fig, axes = plt.subplots(2, len(names), figsize=(4.6 * len(names), 6.2), squeeze=False)
    for c, name in enumerate(names):
        rs = summary[name]["runs"]
        i = len(rs) // 2
        r, pre = rs[i], f"{name}.{i}"
        step = arr[f"{pre}.pred.step"]
        top, bottom = axes[0, c], axes[1, c]
        n_gd = arr[f"{pre}.gd.step_norm"] ** 2
        top.semilogy(np.arange(len(n_gd)), n_gd, color=COLORS["gd"], lw=0.6, label="GD $|w_t|^2$")
        top.semilogy(step, arr[f"{pre}.pred.norm"] ** 2, color=COLORS["flow"], lw=1.5,
                     label="predicted")  # fmt: skip
        bottom.plot(step, arr[f"{pre}.gd.sharpness"], "o", ms=2, color=COLORS["gd"],
                    label="GD: $S$ at the projected iterate")  # fmt: skip
        bottom.plot(step, arr[f"{pre}.pred.sharpness"], color=COLORS["flow"], lw=1.5,
                    label="predicted")  # fmt: skip
        for ax in (top, bottom):
            ax.axvline(r["onset_pred"], color=COLORS["ref"], lw=0.7, ls="--")
            ax.set_xlabel("step $t$")
        top.set_title(f"{name}: eta*wd = {r['eta_wd']:g}")
        top.set_ylabel("$|w_t|^2$")
        bottom.set_ylabel("spherical sharpness")
        top.legend(fontsize=7)
        bottom.legend(fontsize=7)
    fig.suptitle("Prediction from the initialization (dashed: predicted onset) against GD")
    return save(fig, out_dir, "predict_init_runs")


def errors(summary: dict[str, Any], out_dir: Path) -> Path:
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for name, s in summary.items():
        rs = s["runs"]
        x = np.asarray([r["eta_wd"] for r in rs])
        onset = [
            np.nan if r["onset_gd"] is None else r["onset_step_pred"] - r["onset_gd"] for r in rs
        ]
        key = "sharpness_err_max" if name == "mlp" else "sharpness_err_cycle_max"
        serr = [abs(r.get(key) or np.nan) for r in rs]
        nerr = [abs(r.get("norm_log_err_cycle_max") or np.nan) for r in rs]
        ratio = [r["seconds_gd"] / r["seconds_pred"] for r in rs]
        axes[0].semilogx(x, onset, "o-", label=name)
        axes[1].loglog(x, serr, "o-", label=name)
        axes[2].loglog(x, nerr, "o-", label=name)
        axes[3].loglog(x, ratio, "o-", label=name)
    axes[0].set_ylabel("predicted - GD onset step")
    axes[1].set_ylabel("max over cycles |<S_GD> / <S_pred> - 1|")
    axes[2].set_ylabel("max over cycles |<log N_GD - log(eta S_pred / 2)>|")
    axes[3].set_ylabel("GD / prediction wall-clock (compiled)")
    for ax in axes[1:3]:
        ax.plot(x, x**0.5 * (ax.get_ylim()[1] / x.max() ** 0.5), ":", color=COLORS["ref"],
                lw=0.8, label="slope 1/2")  # fmt: skip
    for ax in axes:
        ax.set_xlabel("$\\eta\\, wd$")
        ax.legend(fontsize=7)
    return save(fig, out_dir, "predict_init_errors")


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("predict_init", results_dir)
    summary, arr = res.summary, res.arrays
    out = Path(out_dir)
    return [runs(arr, summary, out), errors(summary, out)]
