"""Update rules for the engine: GD with weight decay, and any optax optimizer.

A method subclasses :class:`AbstractMethod` (an ``equinox.Module``, in the style of lineax's
``AbstractLinearSolver``) and provides

* ``lr``: the step size that defines the EoS quantity ``lr * lambda_1(hess L(w))`` (GD's
  stability number; ``eta`` for GD+WD);
* ``init(w) -> state`` and ``update(w, grad, state, t, key) -> (w_next, state)``: pure, jit-,
  scan- and vmap-compatible (the style of optax's ``GradientTransformation`` and JAX MD's
  ``(init_fn, apply_fn)``);
* ``weight_decay()``: its weight-decay coefficient as recorded in the result (``nan`` when it
  has none of its own).

Hyperparameters that are arrays (``eta``, ``wd``, ``perturbation``) are leaves: a sweep vmaps
over them and one compiled program serves every value. Settings that change the program
(``groups``, ``perturb_every``, whether kicks happen at all) are static fields.
"""

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from equinox import AbstractVar
from jax.flatten_util import ravel_pytree

from theory.core.invariance import expand_groups, group_norms, normalize
from theory.core.types import Array, Groups


def tangent_kick(w: Array, key: Array, scale: Array, groups: Groups) -> Array:
    """``w`` plus a random kick orthogonal to each group's radial direction.

    The kick has relative size ``scale`` per group (per coordinate ``scale |w_g| / sqrt(D_g)``),
    so the norm changes only to second order. It seeds the EoS oscillation when exact
    arithmetic sits exactly on the minimizer manifold, as Arora, Li and Panigrahi (2022) do
    (``docs/ire.md`` and the README describe where it is used).
    """
    xi = jax.random.normal(key, w.shape, w.dtype)
    w_hat = normalize(w, groups)
    ids = jnp.asarray(np.repeat(np.arange(len(groups)), groups))
    radial = jax.ops.segment_sum(xi * w_hat, ids, len(groups))
    xi = xi - expand_groups(radial, groups) * w_hat
    per_coord = group_norms(w, groups) / jnp.sqrt(jnp.asarray(groups, w.dtype))
    return w + scale * expand_groups(per_coord, groups) * xi


class AbstractMethod(eqx.Module):
    """An update rule ``w_t -> w_{t+1}`` of the engine (module docstring).

    The driver (:func:`theory.engine.run`) refuses anything that is not an instance of this
    class. Array leaves are traced (a sweep batches them); settings that change the program are
    static fields (``equinox.field(static=True)``).
    """

    if TYPE_CHECKING:  # type checkers see the abstract field as a read-only property

        @property
        def lr(self) -> Array:
            """The step size of the EoS quantity ``lr * lambda_1``."""
            ...

    else:
        lr: AbstractVar[Array]

    @abc.abstractmethod
    def init(self, w: Array) -> Any:
        """The method's state at the start ``w`` (a pytree of arrays, or ``()``)."""

    @abc.abstractmethod
    def update(self, w: Array, grad: Array, state: Any, t: Array, key: Array) -> tuple[Array, Any]:
        """``(w_next, state_next)`` from ``w``, ``grad L(w)``, the state, step ``t`` and the
        run's PRNG key."""

    @abc.abstractmethod
    def weight_decay(self) -> Array:
        """The weight-decay coefficient recorded as the result's ``wd`` (``nan`` if none)."""


class GDWD(AbstractMethod):
    """GD with weight decay: ``w_{t+1} = (1 - eta wd) w_t - eta grad L(w_t)``.

    ``wd`` is the weight-decay coefficient (LLA22's lambda), never an eigenvalue. With
    ``perturbation > 0`` a :func:`tangent_kick` of that relative size is added after the update
    on every step ``t`` with ``t % perturb_every == 0``.

    Attributes:
        eta, wd, perturbation: scalars (arrays; batched in a sweep).
        groups: contiguous group sizes (per-group kicks).
        perturb_every: kick period (static).
        kicks: whether kicks are compiled in at all (static; ``False`` when every
            configuration of a run or sweep has ``perturbation == 0``).
    """

    eta: Array
    wd: Array
    perturbation: Array
    groups: Groups = eqx.field(static=True)
    perturb_every: int = eqx.field(static=True, default=1)
    kicks: bool = eqx.field(static=True, default=False)

    @property
    def lr(self) -> Array:
        return self.eta

    def weight_decay(self) -> Array:
        return self.wd

    def init(self, w: Array) -> tuple[()]:
        del w
        return ()

    def update(self, w: Array, grad: Array, state: Any, t: Array, key: Array) -> tuple[Array, Any]:
        w_new = (1 - self.eta * self.wd) * w - self.eta * grad
        if self.kicks:
            # The predicate depends on the shared step counter only, so under vmap it stays a
            # branch (a configuration with perturbation 0 gets a kick of size 0).
            w_new = jax.lax.cond(
                (t % self.perturb_every) == 0,
                lambda x: tangent_kick(
                    x, jax.random.fold_in(key, -1 - t), self.perturbation, self.groups
                ),
                lambda x: x,
                w_new,
            )
        return w_new, state


class Optax(AbstractMethod):
    """Any optax optimizer on a parameter pytree, as an engine method on the flat vector.

    ``update`` unravels ``w`` and ``grad`` to the parameter pytree, calls
    ``opt.update(grads, state, params, loss_args=loss_args)`` (``optax.with_extra_args_support``,
    so IRE and SAM get the data) and adds the update.

    Attributes:
        opt: the optimizer (static).
        unravel: flat vector -> parameter pytree (static).
        loss_args: data handed to the optimizer's update (leaves).
        lr: the step size of the EoS quantity (``nan`` when unknown: the EoS column is then
            ``nan`` and no onset is detected).
    """

    opt: optax.GradientTransformationExtraArgs = eqx.field(static=True)
    unravel: Callable[[Array], Any] = eqx.field(static=True)
    loss_args: tuple
    lr: Array

    def init(self, w: Array) -> Any:
        return self.opt.init(self.unravel(w))

    def weight_decay(self) -> Array:
        return jnp.full_like(self.lr, jnp.nan)

    def update(self, w: Array, grad: Array, state: Any, t: Array, key: Array) -> tuple[Array, Any]:
        del t, key
        params = self.unravel(w)
        u, state = self.opt.update(self.unravel(grad), state, params, loss_args=self.loss_args)
        return w + ravel_pytree(u)[0].astype(w.dtype), state


def optax_method(
    opt: optax.GradientTransformation, params: Any, *, loss_args: tuple = (), lr: float | None
) -> tuple[Optax, Array]:
    """``(Optax method, flat start)`` for ``opt`` on the parameter pytree ``params``."""
    flat, unravel = ravel_pytree(params)
    rate = jnp.asarray(np.nan if lr is None else lr, flat.dtype)
    return Optax(optax.with_extra_args_support(opt), unravel, tuple(loss_args), rate), flat
