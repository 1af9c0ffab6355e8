"""The three phases of GD+WD on the analytic problems, from the stored ``phases`` results.

One column per problem, log-scaled steps; rows: ``eta_eff * S`` (rising to 2, then hovering),
the norm ``|w|``, the spherical sharpness ``S`` (falling during the EoS) and the running means of
the loss and of the squared distance of the direction to ``Gamma`` (the oscillation amplitude,
predicted ``sqrt(eta wd / 2)``). Bands: phase I (to the manifold), II (norm decay), III (EoS).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from figures._style import COLORS, save, shade_phases
from sims import results


def running_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average; the window shrinks at the ends (no edge artefacts)."""
    if window <= 1 or len(x) < window:
        return x
    csum = np.concatenate([[0.0], np.cumsum(x)])
    half = window // 2
    idx = np.arange(len(x))
    lo = np.clip(idx - half, 0, len(x))
    hi = np.clip(idx + half + 1, 0, len(x))
    return (csum[hi] - csum[lo]) / (hi - lo)


def main(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    res = results.load("phases", results_dir)
    cfg, summary, arr = res.config, res.summary, res.arrays
    problems = list(cfg.problems)
    fig, axes = plt.subplots(4, len(problems), figsize=(3.6 * len(problems), 8.5), squeeze=False)
    for j, name in enumerate(problems):
        s = summary[name]
        t = arr[f"{name}.step"] + 1.0  # log axis: phases I, II and III each get room
        onset = s.get("onset")
        ax = axes[:, j]
        for a in ax:
            shade_phases(a, s["phase1_end"] + 1, None if onset is None else onset + 1, t[-1])
            a.set_xscale("log")
            a.set_xlim(1, t[-1])
        eos = arr[f"{name}.eos"]
        ax[0].plot(t, eos, lw=0.4, alpha=0.5, color=COLORS["gd"], label="GD")
        ax[0].plot(t, running_mean(eos, 21), lw=1.2, color="k", label="running mean")
        ax[0].axhline(2.0, color=COLORS["flow"], ls="--", lw=1, label="2")
        if onset is not None:
            pred = s["predicted_onset"]
            ax[0].axvline(
                pred + 1, color=COLORS["flow"], ls=":", lw=1, label=f"predicted {pred:.0f}"
            )
        ax[0].set_ylim(0, 3.2)
        ax[0].set_title(f"{name}\nEoS onset at step {onset}")
        ax[0].set_ylabel(r"$\eta_{\rm eff}\, S$")
        ax[0].legend(loc="upper left")
        ax[1].semilogy(t, arr[f"{name}.norm"], color=COLORS["gd"])
        ax[1].set_ylabel(r"$|w_t|$")
        ax[2].plot(t, arr[f"{name}.sharpness"], color=COLORS["gd"])
        ax[2].set_ylabel(r"spherical sharpness $S$")
        loss, dist = arr[f"{name}.loss"], arr[f"{name}.distance"]
        # Raw before the onset; running means over the oscillation after it.
        eos_phase = t > (np.inf if onset is None else onset + 1)
        amp = np.where(eos_phase, np.sqrt(running_mean(dist**2, 21)), dist)
        mean_loss = np.where(eos_phase, running_mean(loss, 21), loss)
        ax[3].semilogy(t, np.maximum(dist, 1e-300), color=COLORS["ref"], lw=0.3, alpha=0.3)
        ax[3].semilogy(t, amp, color="k", lw=1.2, label=r"rms dist($\hat w,\Gamma$)")
        ax[3].semilogy(t, mean_loss, color=COLORS["gd"], lw=1.2, label="mean loss")
        ax[3].axhline(
            np.sqrt(cfg.eta * cfg.wd / 2),
            color=COLORS["flow"],
            ls="--",
            lw=1,
            label=r"$\sqrt{\eta\, wd/2}$",
        )
        ax[3].set_ylim(1e-12, 1)
        ax[3].set_ylabel("loss, distance")
        ax[3].set_xlabel("step t + 1")
        ax[3].legend(loc="lower left")
    fig.suptitle(
        f"GD+WD on scale-invariant problems: eta={cfg.eta}, wd={cfg.wd}, "
        f"eta*wd={cfg.eta * cfg.wd:.1e} ({cfg.dtype}); bands: phase I / II / III (EoS)"
    )
    return [save(fig, out_dir, "phases")]
