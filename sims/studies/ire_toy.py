"""The IRE paper's Figure 1: GD and IRE on ``L(u, v) = (1 + u^2) v^2 / 2`` from ``(1, 0.01)``.

The minimizers are the line ``v = 0`` (the manifold ``Gamma``); on it the Hessian is
``diag(0, 1 + u^2)``, so the sharpness is ``1 + u^2`` and the flattest minimizer is ``(0, 0)``.
At ``(1, 0)`` the sharpness is 2, so GD with ``eta = 1`` starts exactly at the Edge of Stability
(``eta * lambda_1 = 2``) and GD with ``eta = 2`` is unstable (``v`` is multiplied by
``1 - eta (1 + u^2) = -3``) and diverges (Wang et al. 2024, Figure 1).

Runs (all full-batch, ``steps`` steps, one compiled ``lax.scan`` each, float64):

* ``gd_eta1``, ``gd_eta2``: plain GD with ``eta`` and ``eta_diverge``;
* ``mask_k<kappa>``: IRE on GD ``eta`` with the paper's diagonal mask (Algorithm 1) built from the
  exact Hessian diagonal ``(v^2, 1 + u^2)`` with ``gamma = 0.5``: the one coordinate selected is
  ``u``, i.e. the tangent of ``Gamma`` -- the ideal flat direction. The mask is refreshed every
  ``refresh_every`` steps; it is the same at every refresh here (``v^2 < 1 + u^2``);
* ``exact_current_k<kappa>``, ``exact_midpoint_k<kappa>``: IRE with the exact selector (the
  complement of the top Hessian eigenvector, ``k = 1``), refreshed every ``exact_refresh_every``
  steps, with the Hessian at the current iterate or at the midpoint of the last two. At the
  current iterate the top eigenvector is tilted by ``2 u v / (1 + u^2)`` and the projected
  gradient's ``u`` component is ``-u v^2`` instead of ``+u v^2``: the amplified drift is
  reversed, ``u`` grows and the run goes unstable; the midpoint cancels the tilt.

Stored per run ``<run>.``: ``step``, ``u``, ``v``, ``loss``, ``sharpness`` (``1 + u^2``, the
sharpness of the nearest point of ``Gamma``) and ``lambda_max`` (the top eigenvalue of the
Hessian at the iterate itself, ``(1 + u^2 + v^2)/2 + sqrt(((1 + u^2 - v^2)/2)^2 + 4 u^2 v^2)``).
Rows after a divergence (the runner freezes the parameters at the last finite iterate) are NaN.
The summary has the final ``u``, sharpness, the divergence step, the steps until the sharpness
falls below each threshold for good, and, for GD and the mask, the continuum prediction of the
final ``u`` [derived: :func:`theory.problems.analytic.ire_toy_stall`,
``u_inf = exp(-v_0 sqrt((1 + kappa)
/ 2))`` for ``eta = 1`` and ``u_0 = 1``]. The loss and its closed forms are
:func:`theory.problems.analytic.ire_toy_chart_loss` and
:func:`theory.problems.analytic.ire_toy_chart_lambda_max`
(the same toy as :func:`theory.problems.analytic.ire_toy`, read in its own coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, collect_runs
from theory.core import validate as check
from theory.engine import SaveAt
from theory.optim.ire import dense_hessian_diagonal, diagonal_mask, exact_flat, ire
from theory.optim.transforms import run_optimizer
from theory.problems.analytic import ire_toy_chart_lambda_max, ire_toy_chart_loss, ire_toy_stall

NAME = "ire_toy"


@dataclass(frozen=True)
class Config:
    """Settings of the toy (the paper's values by default)."""

    u0: float = field(default=1.0, metadata={"help": "initial u"})
    v0: float = field(default=0.01, metadata={"help": "initial v"})
    eta: float = field(default=1.0, metadata={"help": "learning rate of GD and IRE"})
    eta_diverge: float = field(default=2.0, metadata={"help": "the larger GD learning rate"})
    kappas: tuple[float, ...] = field(
        default=(90.0, 900.0, 9000.0), metadata={"help": "IRE amplifications (diagonal mask)"}
    )
    exact_kappas: tuple[float, ...] = field(
        default=(90.0, 900.0), metadata={"help": "amplifications of the exact selector runs"}
    )
    gamma: float = field(default=0.5, metadata={"help": "mask fraction (1 of 2 coordinates)"})
    refresh_every: int = field(default=10, metadata={"help": "mask refresh interval K"})
    exact_refresh_every: int = field(default=1, metadata={"help": "exact selector refresh"})
    steps: int = field(default=1000, metadata={"help": "steps per run"})
    record_every: int = field(default=1, metadata={"help": "record a row every N steps"})
    thresholds: tuple[float, ...] = field(
        default=(1.95, 1.9, 1.5, 1.1, 1.01),
        metadata={"help": "sharpness levels for the steps-to-threshold summary"},
    )
    dtype: Literal["float32", "float64"] = field(default="float64", metadata={"help": "precision"})

    def __post_init__(self) -> None:
        check.finite_fields(self, "u0", "v0")
        check.positive_fields(self, "eta", "eta_diverge")
        check.all_nonnegative(self.kappas, "kappas", empty=True)
        check.all_nonnegative(self.exact_kappas, "exact_kappas", empty=True)
        check.in_interval(self.gamma, "gamma", 0, 1)
        check.int_fields_at_least(
            self, 1, "refresh_every", "exact_refresh_every", "steps", "record_every"
        )
        if self.steps % self.record_every:
            raise ValueError(f"record_every ({self.record_every}) must divide steps ({self.steps})")
        if any(t <= 1 for t in self.thresholds):
            raise ValueError(
                f"thresholds must be > 1 (the minimum sharpness), got {self.thresholds}"
            )

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: the paper's runs, 1000 steps; ``full``: also ``kappa = 9``, 10000 steps."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(
                kappas=(9.0, 90.0, 900.0, 9000.0), exact_kappas=(9.0, 90.0, 900.0), steps=10000
            )
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def runs(cfg: Config) -> list[dict[str, Any]]:
    """The run list: name, method, learning rate, kappa, point."""
    out: list[dict[str, Any]] = [
        {"name": "gd_eta1", "method": "gd", "eta": cfg.eta, "kappa": 0.0, "point": None},
        {"name": "gd_eta2", "method": "gd", "eta": cfg.eta_diverge, "kappa": 0.0, "point": None},
    ]
    for kappa in cfg.kappas:
        out.append(
            {
                "name": f"mask_k{kappa:g}",
                "method": "mask",
                "eta": cfg.eta,
                "kappa": kappa,
                "point": None,
            }
        )
    for kappa in cfg.exact_kappas:
        for point in ("current", "midpoint"):
            out.append(
                {
                    "name": f"exact_{point}_k{kappa:g}",
                    "method": "exact",
                    "eta": cfg.eta,
                    "kappa": kappa,
                    "point": point,
                }
            )
    return out


def make_optimizer(cfg: Config, spec: dict[str, Any]) -> optax.GradientTransformation:
    """The optimizer of one run: GD, or IRE on GD with the mask or the exact selector."""
    base = optax.sgd(spec["eta"])
    if spec["method"] == "gd":
        return base
    if spec["method"] == "mask":
        selector = diagonal_mask(
            dense_hessian_diagonal(ire_toy_chart_loss), cfg.gamma, refresh_every=cfg.refresh_every
        )
    else:
        selector = exact_flat(
            ire_toy_chart_loss, 1, refresh_every=cfg.exact_refresh_every, point=spec["point"]
        )
    return ire(base, spec["kappa"], selector)


def _observe(w: jax.Array) -> dict[str, jax.Array]:
    return {"lambda_max": ire_toy_chart_lambda_max(w)}


def steps_below(step: np.ndarray, sharp: np.ndarray, level: float) -> int | None:
    """First recorded step from which ``sharp < level`` until the end (``None``: never)."""
    above = ~(sharp < level)  # NaN (diverged) counts as above
    if above[-1]:
        return None
    last_above = np.flatnonzero(above)
    i = 0 if last_above.size == 0 else int(last_above[-1]) + 1
    return int(step[i])


def _one(cfg: Config, spec: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    dtype = dtype_from_config(cfg.dtype)
    w0 = jnp.asarray([cfg.u0, cfg.v0], dtype)
    res = run_optimizer(
        make_optimizer(cfg, spec),
        ire_toy_chart_loss,
        w0,
        cfg.steps,
        saveat=SaveAt(every=cfg.record_every, observe=_observe),
    )
    # Rows from the first non-finite iterate on are dropped by the engine: shown as NaN here.
    step = np.arange(0, cfg.steps + 1, cfg.record_every)
    kept = len(res.step)

    def full(a: np.ndarray) -> np.ndarray:
        out = np.full(step.shape, np.nan)
        out[:kept] = a
        return out

    assert res.w is not None
    u, v = full(res.w[:, 0]), full(res.w[:, 1])
    loss, lam = full(res.loss), full(res.observed["lambda_max"])
    with np.errstate(over="ignore"):  # the iterates just before a divergence are ~1e268
        sharp = 1 + u**2
    arrays = {"step": step, "u": u, "v": v, "loss": loss, "sharpness": sharp}
    arrays["lambda_max"] = lam
    # The last real iterate within the first 10 steps (a run that blew up earlier: its last).
    bad = res.diverged_at
    early = min(10, cfg.steps, *([bad - 1] if bad is not None else []))
    i_early = int(np.searchsorted(step, early, side="right")) - 1
    info = {
        **spec,
        "diverged_at": bad,
        "u_end": float(u[-1]),
        "v_end": float(v[-1]),
        "sharpness_end": float(sharp[-1]),
        "lambda_max_end": float(lam[-1]),
        "sharpness_max": float(np.nanmax(sharp)),
        "u_change_early": float(u[i_early] - cfg.u0),
        "early_step": int(step[i_early]),
        "steps_below": {f"{t:g}": steps_below(step, sharp, t) for t in cfg.thresholds},
        "u_end_continuum": (
            ire_toy_stall(cfg.u0, cfg.v0, spec["eta"], spec["kappa"])
            if spec["method"] in ("gd", "mask")
            else float("nan")
        ),
    }
    return arrays, info


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    dtype_from_config(cfg.dtype)
    specs = {spec["name"]: spec for spec in runs(cfg)}

    def one(_: int, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return _one(cfg, specs[name])

    return collect_runs(list(specs), one, checkpoints, desc=NAME, progress=progress)


def _report(stored: StoredRun) -> list[str]:
    lines = []
    for name, s in stored.meta["summary"].items():
        below = {k: v for k, v in s["steps_below"].items() if v is not None}
        lines.append(
            f"{name:22s} diverged at {s['diverged_at']!s:>5s}  u_end {float(s['u_end']):9.4g}  "
            f"S_end {float(s['sharpness_end']):9.4g}  steps below {below}"
        )
    return lines


SIM = Simulation(NAME, Config, run, __doc__, report=_report, meta=lambda cfg: {"seed": 0})
run_and_store = SIM.run_and_store
main = SIM.main
