"""Minibatch SGD with heavy-ball momentum and weight decay, and its spherical equilibrium.

The update (PyTorch's ``torch.optim.SGD`` convention: coupled weight decay, the decay term
enters the momentum buffer; the step size is ``eta`` and ``lr = eta`` in the engine's EoS
quantity ``lr lambda_1``):

    m_{t+1} = beta m_t + g_t + wd w_t,        w_{t+1} = w_t - eta m_{t+1},        m_0 = 0,

with ``g_t`` the gradient of step ``t``'s batch loss (:class:`theory.core.minibatch.Minibatch`).
It is computed as ``w_{t+1} = (1 - eta wd) w_t - eta (g_t + beta m_t)`` (the same numbers up to
rounding), so that ``beta = 0`` performs exactly GD+WD's arithmetic
(:class:`theory.engine.methods.GDWD`). Only the coupled form is offered.

The equilibrium (:func:`angular_equilibrium`, derived in ``docs/engine.md``, "Minibatch SGD"):
on a scale-invariant loss ``g_t`` is orthogonal to ``w_t``. Write ``Delta_t = w_{t+1} - w_t``,
``c_t = <w_t, Delta_t>`` and ``d_t = |Delta_t|^2``. Then exactly

    |w_{t+1}|^2 = |w_t|^2 + 2 c_t + d_t,        c_t = beta (c_{t-1} + d_{t-1}) - eta wd |w_t|^2,

(the second from ``Delta_t = beta Delta_{t-1} - eta (g_t + wd w_t)`` and
``<w_t, Delta_{t-1}> = c_{t-1} + d_{t-1}``). A stationary norm with stationary ``c`` and ``d``
needs ``2 c = -d`` and ``c = beta (c + d) - eta wd |w|^2``, so ``d / |w|^2 = 2 eta wd / (1 +
beta)`` and ``cos angle(w_t, w_{t+1}) = (|w|^2 + c) / |w|^2 = 1 - eta wd / (1 + beta)``: the
angular update per step is ``arccos(1 - eta wd / (1 + beta)) ~ sqrt(2 eta wd / (1 + beta))``
[derived; Li, Lyu & Arora 2020; Wan et al. 2021], whatever the gradients' size.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp

from theory.core import validate as check
from theory.core.edge import AboveEdgeWarning, above_edge_message, edge_at_init
from theory.core.invariance import check_scale_invariance
from theory.core.minibatch import Minibatch, Scheme
from theory.core.types import Array
from theory.engine.core import SaveAt
from theory.engine.driver import check_parts
from theory.engine.driver import run as engine_run
from theory.engine.methods import AbstractMethod
from theory.engine.results import GDResult, GDSnapshot
from theory.engine.trackers import AbstractTracker

__all__ = [
    "SGD",
    "angular_equilibrium",
    "check_sgd_rates",
    "sgd_edge",
    "sgd_wd",
    "warn_if_sgd_above_edge",
]


def check_sgd_rates(eta: Any, wd: Any, momentum: Any) -> tuple[float, float, float]:
    """Validated ``(eta > 0, wd >= 0, momentum in [0, 1))`` with ``eta * wd < 1``."""
    eta = check.positive(eta, "eta")
    wd = check.nonnegative(wd, "wd")
    momentum = check.finite(momentum, "momentum")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if eta * wd >= 1:
        raise ValueError(
            f"eta * wd must be < 1 (the decay factor 1 - eta*wd must stay positive), "
            f"got eta={eta}, wd={wd} (eta * wd = {eta * wd})"
        )
    return eta, wd, momentum


def angular_equilibrium(
    eta: float, wd: float, momentum: float = 0.0, *, exact: bool = True
) -> float:
    """The angle (radians) between consecutive iterates of SGD+WD at the norm's equilibrium.

    ``arccos(1 - eta wd / (1 + beta))`` (``exact=True``; the exact consequence of a stationary
    norm with stationary ``<w_t, Delta_t>`` and ``|Delta_t|^2``, module docstring), or its
    first-order form ``sqrt(2 eta wd / (1 + beta))`` (``exact=False``) [derived]. Independent
    of the gradients and of the loss (any scale-invariant loss; for several groups, every
    group and the whole vector).
    """
    eta, wd, momentum = check_sgd_rates(eta, wd, momentum)
    x = eta * wd / (1.0 + momentum)
    return math.acos(1.0 - x) if exact else math.sqrt(2.0 * x)


def sgd_edge(eta: float, wd: float = 0.0, momentum: float = 0.0) -> float:
    """The largest curvature ``lambda`` at which heavy-ball SGD+WD is stable on a quadratic.

    On ``L = lambda x^2 / 2`` the update is the linear recursion
    ``x_{t+1} = (1 + beta - eta (lambda + wd)) x_t - beta x_{t-1}``, stable (both roots inside
    the unit circle) iff ``eta (lambda + wd) < 2 (1 + beta)``, i.e.
    ``lambda < 2 (1 + beta) / eta - wd`` [theorem: the Jury conditions for a second-order
    recursion]. ``beta = wd = 0`` gives the GD edge ``2 / eta``. In the engine's units
    (``eta * lambda``) the edge is ``2 (1 + beta) - eta wd``.
    """
    eta, wd, momentum = check_sgd_rates(eta, wd, momentum)
    return 2.0 * (1.0 + momentum) / eta - wd


class SGD(AbstractMethod):
    """Heavy-ball SGD with coupled weight decay (module docstring); state: the buffer ``m``.

    ``m_{t+1} = beta m_t + g_t + wd w_t``, ``w_{t+1} = w_t - eta m_{t+1}`` (PyTorch), computed as
    ``(1 - eta wd) w_t - eta (g_t + beta m_t)``. ``lr = eta``.

    Attributes:
        eta, wd, momentum: scalars (arrays; batched in a sweep).
    """

    eta: Array
    wd: Array
    momentum: Array

    @property
    def lr(self) -> Array:
        return self.eta

    def weight_decay(self) -> Array:
        return self.wd

    def init(self, w: Array) -> Array:
        return jnp.zeros_like(w)

    def update(self, w: Array, grad: Array, state: Any, t: Array, key: Array) -> tuple[Array, Any]:
        del t, key
        w_new = (1 - self.eta * self.wd) * w - self.eta * (grad + self.momentum * state)
        m_new = self.momentum * state + grad + self.wd * w
        return w_new, m_new


def sgd_wd(
    loss_fn: Callable[..., Array] | Minibatch,
    data: Any,
    w0: Array,
    *,
    eta: float,
    wd: float,
    momentum: float = 0.0,
    batch_size: int,
    steps: int,
    scheme: Scheme = "epoch",
    replace: bool = False,
    groups: Sequence[int] | None = None,
    tracker: AbstractTracker | None = None,
    saveat: SaveAt | None = None,
    key: Array | None = None,
    chunk_steps: int = 20_000,
    callback: Callable[[int, int], None] | None = None,
    on_nonfinite: Literal["raise", "stop"] = "raise",
    check_invariance: bool = True,
    on_snapshot: Callable[[GDSnapshot], None] | None = None,
    resume: GDSnapshot | None = None,
    warn_above_edge: bool = True,
) -> GDResult:
    """Minibatch SGD with momentum and weight decay, compiled whole (modelled on ``gd_wd``).

    The update is :class:`SGD`'s; step ``t``'s gradient is that of the batch
    ``Minibatch(loss_fn, data, batch_size, replace=replace, scheme=scheme).at(t, key)``, so the
    batches are a pure function of ``key`` and the step.

    Args:
        loss_fn: ``(w, *batch) -> ()``, the mean loss over a batch (the per-example-mean
            contract of :class:`theory.core.minibatch.Minibatch`); or a ``Minibatch`` itself
            (then ``data``, ``batch_size``, ``scheme`` and ``replace`` must match it: pass
            ``data=None``).
        data: the training data, ``(N, ...)`` arrays (a tuple is passed positionally).
        w0: initial point ``(D,)``, finite, nonzero in every group.
        eta: learning rate ``> 0``; wd: weight decay ``>= 0``; ``eta * wd < 1``.
        momentum: ``beta`` in ``[0, 1)``.
        batch_size, scheme, replace: the batches (:class:`theory.core.minibatch.Minibatch`).
        steps: number of steps ``>= 1``.
        groups: contiguous block sizes for multi-group invariance (``None``: one group).
        tracker: default :class:`theory.engine.NoTracking` (bare SGD); the trackers of
            :mod:`theory.engine.stochastic` record the full-batch, batch and step sharpness.
        saveat: which steps become rows (default every step, with iterates).
        key: PRNG key of the batches and the trackers' random starts (default ``PRNGKey(0)``).
        chunk_steps, callback, on_nonfinite, on_snapshot, resume: as in
            :func:`theory.engine.gd.gd_wd` (a resumed run continues bitwise, batches included:
            they depend only on the key and the step counter, which the snapshot holds).
        check_invariance: reject a whole-data loss that is not scale-invariant around ``w0``.
        warn_above_edge: warn (:class:`theory.AboveEdgeWarning`, before the run) when the
            full-batch EoS quantity at the start, ``eta * lambda_1(hess L(w0))`` of the
            whole-data loss (:func:`theory.edge_at_init`: one Lanczos solve, two with several
            groups), is already at or above heavy-ball's edge ``2 (1 + momentum)``
            (:func:`sgd_edge` without the weight decay's ``eta wd``, as ``gd_wd``'s edge 2):
            the first steps are unstable along the top Hessian direction even without batch
            noise. Not measured on ``resume`` (the run's start was checked when it started).
            Choose ``eta`` with :func:`theory.edge_at_init`; pass ``False`` where the start
            above the edge is intended (and to skip the solve).

    Returns:
        :class:`theory.engine.GDResult` (``loss`` and ``grad_norm`` are the step's batch loss
        and gradient norm; ``final_state`` holds the momentum buffer).

    Raises:
        ValueError: ``momentum`` outside ``[0, 1)``, ``eta * wd >= 1``, a batch size larger
            than the data, or any invalid setting (each message names the value).
    """
    eta, wd, momentum = check_sgd_rates(eta, wd, momentum)
    if isinstance(loss_fn, Minibatch):
        if data is not None:
            raise ValueError("pass data=None with a Minibatch objective (it carries its data)")
        objective = loss_fn
    else:
        objective = Minibatch(loss_fn, data, batch_size, replace=replace, scheme=scheme)
    if objective.batch_size != batch_size:
        raise ValueError(
            f"batch_size = {batch_size} differs from the Minibatch's {objective.batch_size}"
        )
    w0, sizes = check.flat_vector(w0, "w0", groups)
    check.loss_output(objective, w0)
    method = SGD(
        jnp.asarray(eta, w0.dtype), jnp.asarray(wd, w0.dtype), jnp.asarray(momentum, w0.dtype)
    )
    tracker, saveat = check_parts(method, tracker, saveat)
    if check_invariance:
        check_scale_invariance(objective, w0, groups=sizes)
    if warn_above_edge and resume is None:
        warn_if_sgd_above_edge(objective, w0, eta=eta, momentum=momentum, groups=sizes)
    config = {
        "method": "sgd",
        "eta": eta,
        "wd": wd,
        "momentum": momentum,
        "batch_size": objective.batch_size,
        "scheme": objective.scheme,
        "replace": objective.replace,
        "num_examples": objective.num_examples,
        "groups": list(sizes),
    }
    return engine_run(
        objective,
        method,
        w0,
        steps=steps,
        groups=sizes,
        tracker=tracker,
        saveat=saveat,
        key=jax.random.PRNGKey(0) if key is None else key,
        chunk_steps=chunk_steps,
        progress=callback,
        on_snapshot=on_snapshot,
        resume=resume,
        on_nonfinite=on_nonfinite,
        config=config,
    )


def warn_if_sgd_above_edge(
    loss: Callable[[Array], Array],
    w0: Array,
    *,
    eta: float,
    momentum: float,
    groups: Sequence[int] | None = None,
    stacklevel: int = 3,
) -> float:
    """Warn (:class:`theory.AboveEdgeWarning`) when heavy-ball SGD starts above its edge.

    Measures the full-batch EoS quantity ``eta * lambda_1(hess L(w0))`` of ``loss`` (the
    whole-data loss; :func:`theory.edge_at_init`) and warns when it is ``>= 2 (1 + momentum)``,
    the stability threshold of heavy-ball GD on the top Hessian direction (:func:`sgd_edge`
    with ``wd = 0``; ``momentum = 0`` gives GD's edge 2, the threshold of ``gd_wd``'s warning).

    Returns:
        the measured EoS quantity at ``w0``.
    """
    info = edge_at_init(loss, w0, eta=eta, groups=groups, check_invariance=False)
    assert info.eos is not None
    edge = 2.0 * (1.0 + momentum)
    if info.eos >= edge:
        msg = above_edge_message(
            info.eos,
            eta,
            f" (sgd_wd, momentum {momentum:g}, the full-batch Hessian)",
            edge=edge,
            consequence=(
                f"above heavy-ball's edge 2 (1 + momentum) = {edge:.3g}, so the first steps are "
                "unstable along the top Hessian direction, batch noise aside"
            ),
        )
        warnings.warn(msg, AboveEdgeWarning, stacklevel=stacklevel)
    return info.eos
