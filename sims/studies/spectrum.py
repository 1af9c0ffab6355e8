"""The Hessian's spectral density through phases I-III of GD+WD on a normalized network.

A BatchNorm MLP on the bundled digits (cross-entropy, the whole weight vector one
scale-invariance group, ``groups="all"``) is trained by GD+WD. Every ``record_every`` steps the
engine's :class:`theory.engine.LanczosTracker` gives the top eigenvalue; every ``slq_every``
steps :class:`theory.engine.spectral.SLQTracker` (stochastic Lanczos quadrature, ``probes``
Rademacher probes of depth ``m``) gives the quadrature rules of the spherical Hessian
``H(w_hat) = |w|^2 H(w)``, from which the figure draws the smoothed density. The edge of
stability of this operator is ``2 / eta_eff`` with ``eta_eff = eta / |w|^2``: phase I (the norm
shrinks, ``eta_eff`` grows, ``2 / eta_eff`` falls towards the spectrum), the onset (the top
outliers meet it), phase III (they stay at it while the bulk stays where it was).

At the EoS GD oscillates with period 2 along the top eigenvector, so the top eigenvalue at the
iterates ``w_t`` is spread by the oscillation; the theory describes the midpoint
``(w_t + w_{t+1}) / 2`` (``theory.analysis.midpoint``). After the run, the spherical sharpness
and ``|.|^2`` are measured at the midpoint of every SLQ row (``w_{t+1}`` recomputed by one GD+WD
step from the row's iterate: the run has no kicks; a Lanczos solve of ``MID_ITERS`` vectors per
row, warm-started along the rows), and the checks compare the top of the spectrum with the edge
there: the period-2 orbit is neutral where ``eta lambda_1 = 2 - eta wd``, i.e. the midpoint's
``S / (2 |w|^2 / eta) = 1 - eta wd / 2``.

Arrays (run ``gd``): ``step``, ``sharpness`` (Lanczos, NaN off tracked rows), ``norm_sq``
(``|w|^2``), ``loss``; ``slq_step`` ``(K,)``, ``slq_nodes``/``slq_weights`` ``(K, probes, m)``;
``mid_sharpness``, ``mid_norm_sq`` ``(K,)`` at the SLQ rows' midpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from sims import data as datasets
from sims._checkpoint import Checkpoints
from sims._runtime import dtype_from_config
from sims._store import StoredRun
from sims.simulation import Simulation, resumable_gd_wd
from theory.analysis.midpoint import curvature_along, gd_midpoint
from theory.core import validate as check
from theory.engine import LanczosTracker, SaveAt
from theory.engine.spectral import SLQTracker, with_extras
from theory.problems import nets

NAME = "spectrum"
MID_ITERS = 64  # Krylov dimension of each midpoint Lanczos solve


@dataclass(frozen=True)
class Config:
    """Settings of the spectral-density study (``wd = eta_wd / eta``)."""

    n_train: int = field(default=1024, metadata={"help": "digits training samples"})
    widths: tuple[int, ...] = field(default=(64, 64), metadata={"help": "MLP hidden widths"})
    eta: float = field(default=0.5, metadata={"help": "learning rate"})
    eta_wd: float = field(default=4e-3, metadata={"help": "intrinsic learning rate eta*wd"})
    steps: int = field(default=600, metadata={"help": "GD steps"})
    record_every: int = field(default=10, metadata={"help": "a row (and Lanczos) every N steps"})
    slq_every: int = field(default=60, metadata={"help": "SLQ every N steps (multiple of rows)"})
    probes: int = field(default=8, metadata={"help": "SLQ probe vectors"})
    m: int = field(default=40, metadata={"help": "SLQ Lanczos depth"})
    seed: int = field(default=0, metadata={"help": "initialization and probe seed"})
    dtype: Literal["float32", "float64"] = field(default="float32", metadata={"help": "precision"})

    def __post_init__(self) -> None:
        check.positive_fields(self, "eta")
        check.all_in_interval((self.eta_wd,), "eta_wd", 0, 0.1)
        check.int_fields_at_least(self, 1, "steps", "record_every", "slq_every", "probes", "m")
        check.int_fields_at_least(self, 8, "n_train")
        if self.slq_every % self.record_every:
            raise ValueError(
                f"slq_every ({self.slq_every}) must be a multiple of record_every "
                f"({self.record_every}): the densities are taken on recorded rows"
            )

    @classmethod
    def preset(cls, scale: str) -> Config:
        """``quick``: MLP 64-64, 600 steps (``t eta wd`` up to 2.4; the onset near 0.8), 8
        probes of depth 40 every 60 steps; ``full``: 1200 steps, 16 probes of depth 80 every
        40 steps."""
        if scale == "quick":
            return cls()
        if scale == "full":
            return cls(steps=1200, slq_every=40, probes=16, m=80)
        raise ValueError(f"scale must be 'quick' or 'full', got {scale!r}")


def make_network(cfg: Config) -> nets.NetProblem:
    """The BatchNorm MLP on digits, one scale-invariance group."""
    dtype = np.float64 if cfg.dtype == "float64" else np.float32
    ds = datasets.digits(n_train=cfg.n_train, dtype=dtype)
    return nets.make_problem(
        nets.mlp(cfg.widths, norm="batch"),
        ds.x_train,
        ds.y_train,
        ds.x_test,
        ds.y_test,
        loss="ce",
        num_outputs=10,
        seed=cfg.seed,
        groups="all",
        dtype=dtype,
    )


def run(
    cfg: Config, *, progress: bool = True, checkpoints: Checkpoints | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One GD+WD run with the Lanczos and SLQ trackers (resumable)."""
    import jax

    dtype_from_config(cfg.dtype)
    prob = make_network(cfg)
    tracker = with_extras(
        LanczosTracker(every=cfg.record_every),
        SLQTracker(every=cfg.slq_every, probes=cfg.probes, m=cfg.m),
    )
    res = resumable_gd_wd(
        prob.loss,
        prob.w0,
        name="gd",
        steps=cfg.steps,
        checkpoints=checkpoints,
        desc=NAME,
        progress=progress,
        eta=cfg.eta,
        wd=cfg.eta_wd / cfg.eta,
        groups=prob.groups,
        tracker=tracker,
        saveat=SaveAt(every=cfg.record_every, iterates=True),
        key=jax.random.PRNGKey(cfg.seed),
    )
    assert res.w is not None
    norm_sq = np.sum(np.asarray(res.group_norms, np.float64) ** 2, axis=-1)
    nodes = np.asarray(res.observed["slq.nodes"])
    solved = np.all(np.isfinite(nodes.reshape(len(nodes), -1)), axis=1)
    arrays = {
        "gd.step": np.asarray(res.step),
        "gd.sharpness": np.asarray(res.sharpness),
        "gd.eos": np.asarray(res.eos),
        "gd.norm_sq": norm_sq,
        "gd.loss": np.asarray(res.loss),
        "gd.slq_step": np.asarray(res.step)[solved],
        "gd.slq_nodes": nodes[solved],
        "gd.slq_weights": np.asarray(res.observed["slq.weights"])[solved],
        **midpoint_rows(prob, cfg, np.asarray(res.w)[solved]),
    }
    onset = res.onset_step
    summary: dict[str, Any] = {
        "dim": int(prob.w0.shape[0]),
        "wd": cfg.eta_wd / cfg.eta,
        "onset": None if onset is None else int(onset),
        "slq_rows": int(solved.sum()),
        **bulk_and_top(arrays, cfg.eta, onset),
    }
    return arrays, summary


def midpoint_rows(prob: nets.NetProblem, cfg: Config, w: np.ndarray) -> dict[str, np.ndarray]:
    """The spherical sharpness ``S`` and ``|.|^2`` at the GD+WD midpoint of each row ``w_t`` of
    ``w`` ``(K, D)`` (``theory.analysis.midpoint``: ``w_{t+1}`` recomputed, the run has no kicks;
    one ``MID_ITERS``-vector Lanczos per row, warm-started along the rows)."""
    import jax
    import jax.numpy as jnp

    if not len(w):
        return {"gd.mid_sharpness": np.zeros(0), "gd.mid_norm_sq": np.zeros(0)}
    eta, wd = cfg.eta, cfg.eta_wd / cfg.eta
    mids = jax.vmap(lambda x: gd_midpoint(prob.loss, x, eta, wd))(jnp.asarray(w))
    curv = curvature_along(
        prob.loss,
        mids,
        groups=prob.groups,
        lanczos_iters=min(MID_ITERS, int(w.shape[1])),
        hessian=False,
        spherical=True,
    )
    assert curv.spherical is not None
    norm_sq = np.sum(np.asarray(mids, np.float64) ** 2, axis=1)
    return {"gd.mid_sharpness": np.asarray(curv.spherical[:, 0]), "gd.mid_norm_sq": norm_sq}


def weighted_median(nodes: np.ndarray, weights: np.ndarray) -> float:
    """The median of the SLQ estimate of the spectral measure (all probes' rules pooled)."""
    x, w = nodes.ravel(), weights.ravel()
    order = np.argsort(x)
    cdf = np.cumsum(w[order]) / np.sum(w)
    return float(x[order][np.searchsorted(cdf, 0.5)])


def bulk_and_top(arrays: dict[str, np.ndarray], eta: float, onset: int | None) -> dict[str, Any]:
    """Per SLQ row: the top node (over probes), the median of the pooled rule, ``2 / eta_eff``
    and the Lanczos sharpness of the same row, and at the row's midpoint the sharpness and its
    edge ``2 |w_mid|^2 / eta``; across the onset (the last SLQ row before it against the last
    row), the relative changes of the median, of the top node and of the midpoint sharpness,
    and after the onset the ratios to the edge (top node at the iterate; sharpness at the
    midpoint)."""
    steps = arrays["gd.step"]
    rows = [int(np.flatnonzero(steps == s)[0]) for s in arrays["gd.slq_step"]]
    top = [float(np.max(n)) for n in arrays["gd.slq_nodes"]]
    med = [
        weighted_median(n, w)
        for n, w in zip(arrays["gd.slq_nodes"], arrays["gd.slq_weights"], strict=True)
    ]
    edge = [2.0 * float(arrays["gd.norm_sq"][r]) / eta for r in rows]
    lanczos = [float(arrays["gd.sharpness"][r]) for r in rows]
    mid = [float(x) for x in arrays["gd.mid_sharpness"]]
    mid_edge = [2.0 * float(x) / eta for x in arrays["gd.mid_norm_sq"]]
    out: dict[str, Any] = {
        "slq_top": top,
        "slq_median": med,
        "edge": edge,
        "lanczos_at_slq": lanczos,
        "mid_sharpness": mid,
        "mid_edge": mid_edge,
    }
    slq_steps = arrays["gd.slq_step"]
    before = np.flatnonzero(slq_steps < onset) if onset is not None else np.zeros(0, int)
    after = np.flatnonzero(slq_steps > onset) if onset is not None else np.zeros(0, int)
    if len(before) and len(after):
        i, j = int(before[-1]), int(after[-1])
        out["median_change"] = abs(med[j] - med[i]) / abs(med[i])
        out["top_change"] = abs(top[j] - top[i]) / abs(top[i])
        out["mid_top_change"] = abs(mid[j] - mid[i]) / abs(mid[i])
        out["top_over_edge_after"] = [top[k] / edge[k] for k in after]
        out["mid_over_edge_after"] = [mid[k] / mid_edge[k] for k in after]
    return out


def _report(stored: StoredRun) -> list[str]:
    s = stored.meta["summary"]
    lines = [f"D = {s['dim']}, onset step {s['onset']}, {s['slq_rows']} SLQ rows"]
    for t, top, med, edge, mid, mid_edge in zip(
        stored.arrays["gd.slq_step"],
        s["slq_top"],
        s["slq_median"],
        s["edge"],
        s["mid_sharpness"],
        s["mid_edge"],
        strict=True,
    ):
        lines.append(
            f"step {int(t)}: top node {top:.4g}, median {med:.3g}, 2/eta_eff {edge:.4g}; "
            f"midpoint: sharpness {mid:.4g}, 2/eta_eff {mid_edge:.4g}"
        )
    return lines


SIM = Simulation(NAME, Config, run, __doc__, report=_report)
run_and_store = SIM.run_and_store
main = SIM.main
