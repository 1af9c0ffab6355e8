"""Where a run starts relative to the Edge of Stability, and the learning rate for a chosen start.

GD on a scale-invariant loss is linearly stable along the top Hessian direction while the EoS
quantity ``eta * lambda_1(hess L(w))`` is below 2 (docs/theory.md section 2). At the start
``w0`` it is known before training: with one group ``lambda_1(hess L(w0)) = S(w0) / |w0|^2``
(``S``: the spherical sharpness), so the EoS quantity is ``eta_eff * S(w0)`` with
``eta_eff = eta / |w0|^2``; with several groups ``lambda_1(hess L(w0))`` is the top eigenvalue of
``M^{-1} H(w0_hat) M^{-1}`` (``M = diag(|w0_g|)``), which lies between ``S(w0) / max_g |w0_g|^2``
and ``S(w0) / min_g |w0_g|^2``.

:func:`edge_at_init` measures these and solves for the ``eta`` that starts at a requested EoS
quantity (the stability number is linear in ``eta``). :class:`AboveEdgeWarning` is what
:func:`theory.gd_wd` and :func:`theory.gd_wd_sweep` warn with when their first tracked row (step 0)
is already at or above the edge, and :func:`theory.engine.sgd.sgd_wd` when the full-batch
``eta * lambda_1(hess L(w0))`` is at or above heavy-ball's edge ``2 (1 + beta)`` (measured before
the run).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from theory.core import validate as check
from theory.core.invariance import group_sq_norms, leaves_of
from theory.core.sharpness import eos_quantity, spherical_sharpness
from theory.core.types import Array, LossFn

EDGE = 2.0
"""GD's stability threshold of the EoS quantity ``eta * lambda_1(hess L(w))``."""

SUGGESTED_EOS0 = 0.3
"""The EoS quantity at step 0 that the warning's suggested ``eta`` starts at (well below 2)."""


class AboveEdgeWarning(UserWarning):
    """A run started with the EoS quantity ``eta * lambda_1(hess L(w0)) >= 2``: its first steps
    are unstable (a catapult), and the EoS onset is step 0 by construction. Choose ``eta`` with
    :func:`theory.edge_at_init`; silence it with ``warn_above_edge=False`` where the start above
    the edge is intended."""


class EdgeAtInit(NamedTuple):
    """Where GD+WD starts relative to the edge (:func:`edge_at_init`).

    Attributes:
        sharpness: spherical sharpness ``S(w0) = lambda_1(hess L(w0 / |w0|))`` (each group
            normalized with several groups).
        sq_norm: ``|w0|^2``.
        group_sq_norms: ``(|w0_g|^2 for each group)``.
        curvature: ``lambda_1(hess L(w0))``, so the EoS quantity is ``eta * curvature``; with one
            group it equals ``S(w0) / |w0|^2``.
        eta: the learning rate asked about (``None`` if none).
        eos: the EoS quantity at step 0, ``eta * lambda_1(hess L(w0))`` (GD's stability number:
            the run starts above the edge when it is ``>= 2``); ``None`` without ``eta``.
        eta_eff_sharpness: ``eta * S(w0) / |w0|^2`` with the whole ``|w0|^2``; equal to ``eos``
            with one group, only a one-group summary with several (use ``eos``); ``None``
            without ``eta``.
        eos0: the requested EoS quantity at step 0 (``None`` if none).
        eta_for_eos0: ``eos0 / lambda_1(hess L(w0))``, the ``eta`` whose EoS quantity at step 0
            is ``eos0`` (with one group ``eos0 |w0|^2 / S(w0)``); ``None`` without ``eos0``.
    """

    sharpness: float
    sq_norm: float
    group_sq_norms: tuple[float, ...]
    curvature: float
    eta: float | None
    eos: float | None
    eta_eff_sharpness: float | None
    eos0: float | None
    eta_for_eos0: float | None

    @property
    def above_edge(self) -> bool:
        """Whether ``eta`` starts at or above the edge (``eos >= 2``); False without ``eta``."""
        return self.eos is not None and self.eos >= EDGE


def edge_at_init(
    loss: LossFn,
    w0: Array,
    *,
    eta: float | None = None,
    eos0: float | None = None,
    groups: Sequence[int] | None = None,
    tol: float | None = None,
    max_iters: int | None = None,
    key: Array | None = None,
    check_invariance: bool = True,
) -> EdgeAtInit:
    """Sharpness, norms and the EoS quantity at ``w0``, and the ``eta`` for a chosen start.

    Two Lanczos solves (:func:`theory.spherical_sharpness` for ``S(w0)``,
    :func:`theory.eos_quantity` with ``eta = 1`` for ``lambda_1(hess L(w0))``; one group needs
    only the first, the second is then ``S / |w0|^2``).

    Args:
        loss: scale-invariant loss ``(D,) -> ()``.
        w0: the start ``(D,)``, nonzero in every group.
        eta: a learning rate to evaluate (``> 0``), e.g. the one you plan to run.
        eos0: a requested EoS quantity at step 0 in ``(0, 2)``, e.g. 0.3; the answer's
            ``eta_for_eos0`` starts there. GD+WD then reaches the edge after about
            ``log(2 / eos0) / (2 eta wd)`` steps (:func:`theory.predicted_eos_onset`).
        groups: contiguous block sizes for multi-group invariance (``None``: one group).
        tol, max_iters, key: Lanczos settings (as :func:`theory.spherical_sharpness`).
        check_invariance: reject a loss that is not scale-invariant around ``w0``.

    Returns:
        :class:`EdgeAtInit` (floats on the host).
    """
    if eta is not None:
        eta = check.positive(eta, "eta")
    if eos0 is not None:
        eos0 = check.in_interval(eos0, "eos0", 0.0, EDGE)
    w0, sizes = check.flat_vector(w0, "w0", groups, leaves=leaves_of(loss))
    check.loss_output(loss, w0)
    s_val, _ = spherical_sharpness(
        loss,
        w0,
        groups=sizes,
        check_invariance=check_invariance,
        tol=tol,
        max_iters=max_iters,
        key=key,
    )
    sharpness = float(s_val)
    gsq = tuple(float(x) for x in np.asarray(group_sq_norms(w0, sizes), np.float64))
    sq_norm = float(jnp.vdot(w0, w0))
    if len(sizes) == 1:
        curvature = sharpness / sq_norm
    else:
        lam, _ = eos_quantity(
            loss,
            w0,
            1.0,
            groups=sizes,
            tol=tol,
            max_iters=max_iters,
            key=key,
            check_invariance=False,
        )
        curvature = float(lam)
    if not (math.isfinite(curvature) and curvature > 0):
        raise ValueError(
            f"lambda_1(hess L(w0)) = {curvature:.3g} is not positive: the loss has no positive "
            "curvature at w0, so no learning rate is limited by the edge there"
        )
    return EdgeAtInit(
        sharpness=sharpness,
        sq_norm=sq_norm,
        group_sq_norms=gsq,
        curvature=curvature,
        eta=eta,
        eos=None if eta is None else eta * curvature,
        eta_eff_sharpness=None if eta is None else eta * sharpness / sq_norm,
        eos0=eos0,
        eta_for_eos0=None if eos0 is None else eos0 / curvature,
    )


def above_edge_message(
    eos_start: float,
    eta: float,
    where: str = "",
    *,
    edge: float = EDGE,
    consequence: str = "so the first steps are unstable (a catapult) and onset_step is 0",
) -> str:
    """The text of :class:`AboveEdgeWarning` for a measured EoS quantity at step 0.

    ``edge`` is the method's stability threshold of ``eta * lambda_1`` (GD's 2; heavy-ball
    momentum ``beta`` moves it to ``2 (1 + beta)``, :func:`theory.engine.sgd.sgd_edge`) and
    ``consequence`` what starting above it does to the run; the defaults give GD's text."""
    suggest = eta * SUGGESTED_EOS0 / eos_start
    return (
        f"the run{where} starts above the edge: the EoS quantity eta * lambda_1(hess L(w0)) = "
        f"{eos_start:.3g} >= {edge:.3g} at step 0 (eta = {eta:.3g}), {consequence}. "
        f"eta = {suggest:.3g} would start at "
        f"{SUGGESTED_EOS0:g}; theory.edge_at_init(loss, w0, eos0=...) gives the eta for any "
        "start. Pass warn_above_edge=False if the start above the edge is intended"
    )


def warn_if_above_edge(
    eos: np.ndarray,
    step: np.ndarray,
    eta: np.ndarray,
    labels: Sequence[str] | None = None,
    *,
    stacklevel: int = 3,
) -> None:
    """Warn (:class:`AboveEdgeWarning`) for each configuration whose step-0 row has a tracked
    EoS quantity ``>= 2``.

    Args:
        eos: ``(B, n)`` EoS quantity per configuration and row (NaN where not tracked).
        step: ``(n,)`` the rows' steps; nothing is said unless row 0 is step 0.
        eta: ``(B,)`` learning rates.
        labels: ``(B,)`` where each configuration is (e.g. ``" (configuration 3)"``); default
            none for one configuration, ``" (configuration i)"`` for several.
        stacklevel: as :func:`warnings.warn`, counted from this function.
    """
    if step.shape[0] == 0 or int(step[0]) != 0 or eos.shape[-1] == 0:
        return
    first = np.asarray(eos)[:, 0]
    above = [i for i, v in enumerate(first) if math.isfinite(float(v)) and float(v) >= EDGE]
    if not above:
        return
    i = above[0]
    if labels is None:
        several = first.shape[0] > 1
        labels = [f" (configuration {j})" if several else "" for j in range(first.shape[0])]
    more = (
        f" ({len(above)} of {first.shape[0]} configurations start above the edge: "
        f"{above[:10]}{'...' if len(above) > 10 else ''})"
        if first.shape[0] > 1
        else ""
    )
    msg = above_edge_message(float(first[i]), float(eta[i]), labels[i]) + more
    warnings.warn(msg, AboveEdgeWarning, stacklevel=stacklevel)
