"""Your own model as the engine's flat scale-invariant loss: adapters from linen, NNX and Equinox.

Each adapter takes a model written in its framework, a loss written the way that framework's
users write it, and the data, and returns one :class:`ModelLoss`: the flat loss ``w -> L(w)``
``(D,) -> ()`` that :func:`theory.gd_wd`, :func:`theory.gd_wd_sweep`, the trackers and the flows
take, the start ``w0``, the scale-invariance ``groups`` derived from the model with the leaf names
of each group, ``unravel`` (flat vector -> parameter pytree), and the same loss on the parameter
pytree (``pytree_loss``, ``params``) for :func:`theory.run_optimizer`, which accepts the
:class:`ModelLoss` itself (docs/models.md).

The loss at ``w`` is a pure function of ``w`` and the data:

* the model runs in training mode, its normalization layers use the statistics of the batch they
  are applied to, computed inside the loss;
* the running averages a framework updates in training mode (linen's ``batch_stats``, NNX's
  ``BatchStat``, Equinox's ``eqx.nn.State``) are carried as constants and every update of them
  is discarded: a loss that read its own past running averages would depend on the history of
  evaluations (not reproducible), and running averages do not scale with the weights (not
  scale-invariant);
* the data, the non-trainable collections and the frozen leaves are array leaves of the loss
  (an ``equinox.Module``), so the compiled runners take them as arguments, never as constants
  (docs/conventions.md rule 9).

Flat order: ``jax.flatten_util.ravel_pytree`` of the trainable parameter pytree (the order of
``jax.tree.leaves``). Leaf names are ``jax.tree_util.keystr`` of each leaf's path in that pytree
(NNX's trailing ``.value`` dropped), e.g. ``['Dense_0']['kernel']`` (linen),
``['conv']['kernel']`` (NNX), ``.layers[0].weight`` (Equinox).

Groups (``groups=``):

* ``"layer"`` (default): consecutive leaves with the same parent path form one group -- the
  weights of one layer, jointly scale-invariant when the layer is followed by a normalization
  (a kernel with the bias it adds before the normalization is one such group);
* ``"leaf"``: one group per leaf; ``"all"``: one group; or explicit contiguous block sizes.

With ``check_invariance=True`` (default) every group is measured on its own
(:func:`group_violations`: ``L`` with that group scaled by ``c in {0.5, 2, 7}``, and Euler's
identity ``<grad_g L, w_g> = 0``, at ``w0`` and at random nearby points), and a group outside
every normalized layer -- a bias after the last normalization, a trainable last layer, a
normalization with ``epsilon > 0`` -- raises :class:`theory.ScaleInvarianceError` naming its
leaves and what to do: freeze them (``frozen=``: kept in the loss as constants, out of ``w``),
remove or normalize them, or ``check_invariance=False`` when the invariance is not needed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from theory.core.invariance import (
    FlatLoss,
    ScaleInvarianceError,
    as_groups,
    default_invariance_rtol,
    expand_groups,
    flatten_loss,
    group_ids,
    group_norms,
)
from theory.core.minibatch import Minibatch, Scheme
from theory.core.types import Array, Groups, LossFn

GroupsSpec = Literal["layer", "leaf", "all"] | Sequence[int]

_SCALES = (0.5, 2.0, 7.0)


class ModelLoss(NamedTuple):
    """A model's loss flattened for :mod:`theory`; the same type from every adapter.

    Attributes:
        loss: the flat loss ``(D,) -> ()`` (an ``equinox.Module`` whose array leaves are the data
            and the model's non-trainable arrays); ``loss(w0)`` equals the framework's own loss.
        w0: the trainable parameters at the start, flattened, ``(D,)``.
        groups: contiguous scale-invariance block sizes, adding up to ``D``.
        unravel: flat vector ``(D,)`` -> trainable parameter pytree.
        names: the leaf names of each group (``names[g]``: the leaves that group ``g`` covers).
        params: the trainable parameter pytree at ``w0`` (``unravel(w0)``).
        pytree_loss: the same loss on the parameter pytree, ``params -> ()``, with the data
            inside (for :func:`theory.run_optimizer` and optax).
    """

    loss: LossFn
    w0: Array
    groups: Groups
    unravel: Callable[[Array], Any]
    names: tuple[tuple[str, ...], ...]
    params: Any
    pytree_loss: Callable[[Any], Array]

    @property
    def flat(self) -> FlatLoss:
        """The :class:`theory.core.invariance.FlatLoss` view (``loss, w0, groups, unravel``)."""
        return FlatLoss(self.loss, self.w0, self.groups, self.unravel)

    @property
    def leaf_names(self) -> tuple[str, ...]:
        """All trainable leaf names in flat order (a leaf split over groups appears once)."""
        out: list[str] = []
        for names in self.names:
            out.extend(n for n in names if not out or out[-1] != n)
        return tuple(out)

    def minibatch(
        self, batch_size: int, *, scheme: Scheme = "epoch", replace: bool = False
    ) -> Minibatch:
        """The model's loss as a :class:`theory.Minibatch` over its own data (for
        :func:`theory.sgd_wd`, or any engine method, with minibatches).

        Step ``t``'s batch is ``batch_size`` examples of the data given to the adapter (every
        data leaf is indexed along its leading axis, which must be the example axis of all of
        them), and the batch loss is the model's loss with the data replaced by the batch: the
        same ``loss_fn``, the same training mode, normalization statistics computed over the
        batch (with BatchNorm the batch loss is that batch's ghost-batch loss, not an unbiased
        estimate of the whole-data loss). The whole-data loss is ``self.loss``.

        Raises:
            ValueError: ``batch_size`` not in ``[1, N]`` (both named), or data leaves whose
                leading axes differ (the shapes named).
        """
        adapter = _adapter_of(self.loss)
        return Minibatch(
            _OnBatch(self.loss), (adapter.data,), batch_size, scheme=scheme, replace=replace
        )

    def group_of(self, name: str) -> int:
        """Index of the (first) group that covers the leaf ``name``."""
        for g, names in enumerate(self.names):
            if name in names:
                return g
        raise KeyError(f"no trainable leaf named {name!r}; the leaves are {self.leaf_names}")


def _adapter_of(loss: Any) -> Any:
    """The adapter module (``LinenLoss`` / ``NNXLoss`` / ``EquinoxLoss``) inside a flat loss
    (through ``flatten_loss``'s wrapper, a ``ScaleInvariant`` wrapper and frozen leaves)."""
    node = loss
    for _ in range(8):
        if isinstance(node, LinenLoss | NNXLoss | EquinoxLoss):
            return node
        inner = next(
            (getattr(node, a) for a in ("loss_fn", "inner", "fn") if hasattr(node, a)), None
        )
        if inner is None:
            break
        node = inner
    raise TypeError(
        f"{type(loss).__name__} is not a loss made by theory.from_linen, from_nnx or "
        "from_equinox (no adapter inside it)"
    )


class _OnBatch(eqx.Module):
    """``(w, batch) -> loss(w)`` with the adapter's data replaced by ``batch``."""

    loss: Any

    def __call__(self, w: Array, batch: Any) -> Array:
        return eqx.tree_at(lambda f: _adapter_of(f).data, self.loss, batch)(w)


# --------------------------------------------------------------------------------------------
# Per-group invariance
# --------------------------------------------------------------------------------------------


@eqx.filter_jit
def _violations(loss: LossFn, points: Array, groups: Groups) -> tuple[Array, Array, Array]:
    num = len(groups)
    ids = jnp.asarray(group_ids(groups))
    dtype = points.dtype
    # (G * C, D): group g scaled by c, the others untouched.
    onehot = jnp.eye(num, dtype=dtype)[:, ids]  # (G, D)
    cs = jnp.asarray(_SCALES, dtype)
    scales = (1.0 + (cs[None, :, None] - 1.0) * onehot[:, None, :]).reshape(-1, ids.shape[0])
    vals = jax.vmap(loss)(points)  # (P,)
    scaled = jax.vmap(lambda s: jax.vmap(loss)(points * s))(scales)  # (G * C, P)
    tiny = jnp.finfo(dtype).tiny
    homog = jnp.abs(scaled - vals[None, :]).reshape(num, len(_SCALES), -1)
    homog = jnp.max(homog, axis=(1, 2)) / (jnp.max(jnp.abs(vals)) + tiny)
    grads = jax.vmap(jax.grad(loss))(points)  # (P, D)
    dots = jax.vmap(lambda g, p: jax.ops.segment_sum(g * p, ids, num_segments=num))(grads, points)
    pnorms = jax.vmap(lambda p: group_norms(p, groups))(points)  # (P, G)
    grad_scale = jnp.max(jnp.linalg.norm(grads, axis=1)) + tiny
    euler = jnp.max(jnp.abs(dots) / (pnorms * grad_scale + tiny), axis=0)
    return homog, euler, vals


def group_violations(
    loss: LossFn,
    w: Array,
    groups: Sequence[int] | None = None,
    *,
    key: Array | None = None,
    num_points: int = 3,
) -> np.ndarray:
    """Scale-invariance violation of each group on its own, shape ``(G, 2)``.

    At ``w`` and ``num_points - 1`` random points near it (each group perturbed by 0.3 of its
    norm), column 0 is the homogeneity violation ``max |L(p with group g scaled by c) - L(p)| /
    max_p |L(p)|`` over ``c in {0.5, 2, 7}``, column 1 the Euler violation
    ``max_p |<grad_g L(p), p_g>| / (|p_g| max_p |grad L(p)|)`` (the measures of
    :func:`theory.check_scale_invariance`, per group instead of the worst over all groups).
    """
    w = jnp.asarray(w)
    if w.ndim != 1:
        raise ValueError(f"w must be a flat vector of shape (D,), got shape {w.shape}")
    if int(num_points) < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    return _group_violations(loss, w, groups, key, num_points)[0]


def _group_violations(
    loss: LossFn, w: Array, groups: Sequence[int] | None, key: Array | None, num_points: int
) -> tuple[np.ndarray, float]:
    """``(violations (G, 2), L(w))``."""
    sizes = as_groups(groups, w.shape[0])
    key = jax.random.PRNGKey(0) if key is None else key
    noise = jax.random.normal(key, (int(num_points) - 1, w.shape[0]), w.dtype)
    gn = expand_groups(group_norms(w, sizes), sizes)
    per_dim = gn / jnp.sqrt(expand_groups(jnp.asarray(sizes, w.dtype), sizes))
    points = jnp.concatenate([w[None], w[None] + 0.3 * per_dim[None] * noise], axis=0)
    homog, euler, vals = _violations(loss, points, sizes)
    return np.stack([np.asarray(homog), np.asarray(euler)], axis=1), float(vals[0])


# --------------------------------------------------------------------------------------------
# Shared construction
# --------------------------------------------------------------------------------------------


def _leaf_paths(tree: Any) -> list[tuple[tuple[Any, ...], Array]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = []
    for path, leaf in leaves:
        path = tuple(path)
        if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
            path = path[:-1]  # NNX: a Variable's array sits at `.value`
        out.append((path, leaf))
    return out


class _WithFrozen(eqx.Module):
    """``params -> inner(combine(params, fixed))``: frozen leaves kept as constants (leaves)."""

    inner: Callable[[Any], Array]
    fixed: Any

    def __call__(self, params: Any) -> Array:
        return self.inner(eqx.combine(params, self.fixed))


def _layer_sizes(paths: list[tuple[Any, ...]], sizes: list[int]) -> Groups:
    out: list[int] = []
    parent: tuple[Any, ...] | None = None
    for path, size in zip(paths, sizes, strict=True):
        if out and path[:-1] == parent:
            out[-1] += size
        else:
            out.append(size)
        parent = path[:-1]
    return tuple(out)


def _names_per_group(names: list[str], sizes: list[int], groups: Groups) -> tuple[tuple[str, ...]]:
    starts = np.cumsum([0, *sizes])
    bounds = np.cumsum([0, *groups])
    out = []
    for lo, hi in itertools.pairwise(bounds):
        out.append(
            tuple(
                n
                for n, a, b in zip(names, starts[:-1], starts[1:], strict=True)
                if a < hi and b > lo
            )
        )
    return tuple(out)  # type: ignore[return-value]


def _build(
    pytree_loss: Callable[[Any], Array],
    params: Any,
    *,
    groups: GroupsSpec,
    frozen: Sequence[str],
    check_invariance: bool,
    framework: str,
) -> ModelLoss:
    if isinstance(frozen, str):
        raise TypeError(f"frozen must be a sequence of leaf names, got the string {frozen!r}")
    leaves = _leaf_paths(params)
    if not leaves:
        raise ValueError(f"the {framework} model has no trainable parameters")
    all_names = [jax.tree_util.keystr(p) for p, _ in leaves]
    unknown = [n for n in frozen if n not in all_names]
    if unknown:
        raise ValueError(
            f"frozen names {unknown} are not leaves of the trainable parameters; the leaves are "
            f"{all_names}"
        )
    if frozen:
        keep = set(all_names) - set(frozen)
        if not keep:
            raise ValueError("frozen covers every trainable leaf: nothing left to train")
        mask_leaves = [n in keep for n in all_names]
        mask = jax.tree.unflatten(jax.tree.structure(params), mask_leaves)
        params, fixed = eqx.partition(params, mask)
        pytree_loss = _WithFrozen(pytree_loss, fixed)
        leaves = _leaf_paths(params)
    paths = [p for p, _ in leaves]
    names = [jax.tree_util.keystr(p) for p in paths]
    sizes = [int(np.size(x)) for _, x in leaves]
    empty = [n for n, s in zip(names, sizes, strict=True) if s == 0]
    if empty:
        raise ValueError(f"trainable leaves {empty} have no entries; freeze them (frozen=...)")
    if isinstance(groups, str):
        if groups == "layer":
            blocks = _layer_sizes(paths, sizes)
        elif groups == "leaf":
            blocks = tuple(sizes)
        elif groups == "all":
            blocks = (sum(sizes),)
        else:
            raise ValueError(
                f"groups must be 'layer', 'leaf', 'all' or a sequence of sizes, got {groups!r}"
            )
    else:
        blocks = as_groups(groups, sum(sizes))
    flat = flatten_loss(pytree_loss, params, groups=blocks)
    result = ModelLoss(
        flat.loss,
        flat.w0,
        flat.groups,
        flat.unravel,
        _names_per_group(names, sizes, flat.groups),
        flat.unravel(flat.w0),
        pytree_loss,
    )
    if check_invariance:
        _raise_if_not_invariant(result, framework)
    return result


def _raise_if_not_invariant(ml: ModelLoss, framework: str) -> None:
    viol, value = _group_violations(ml.loss, ml.w0, ml.groups, None, 3)
    if not np.isfinite(value):
        raise ValueError(
            f"the {framework} loss at w0 is {value}; a normalization with epsilon=0 is "
            "undefined on a batch of one or a dead channel"
        )
    tol = default_invariance_rtol(ml.w0.dtype)
    bad = [g for g in range(len(ml.groups)) if not np.all(viol[g] <= tol)]
    if not bad:
        return
    lines = [
        f"group {g} {list(ml.names[g])}: |L(c w_g) - L(w)| reaches {viol[g, 0]:.3g} of the loss, "
        f"|<grad_g L, w_g>| {viol[g, 1]:.3g} of |grad L| |w_g|"
        for g in bad
    ]
    raise ScaleInvarianceError(
        f"the {framework} loss is not scale-invariant in {len(bad)} of {len(ml.groups)} groups "
        f"(tolerance {tol:.1g} for {jnp.dtype(ml.w0.dtype).name}):\n  "
        + "\n  ".join(lines)
        + "\nThese parameters sit outside every normalized layer (a bias after the last "
        "normalization, a trainable last layer, a normalization with epsilon > 0 or a trainable "
        "scale, running statistics used in training). Where the theory assumes invariance: "
        "freeze them (frozen=[...names]: kept in the loss as constants, out of w), remove them, "
        "or put a normalization (epsilon=0, no affine) after them; give groups that keep "
        "jointly invariant leaves together (groups='layer': one group per layer); or pass "
        "check_invariance=False to use this loss without the invariance (then also "
        "gd_wd(..., check_invariance=False))."
    )


# --------------------------------------------------------------------------------------------
# linen
# --------------------------------------------------------------------------------------------


class LinenLoss(eqx.Module):
    """``params -> loss_fn(apply, data)`` for a linen model, with ``apply`` in training mode.

    ``apply(*args, **kwargs)`` is ``model.apply({"params": params, **collections}, *args,
    **apply_kwargs, **kwargs, mutable=mutable)`` with only the output kept: the updated
    collections (batch statistics) are discarded.
    """

    model: Any = eqx.field(static=True)
    loss_fn: Callable[..., Array]
    collections: dict[str, Any]
    data: Any
    mutable: tuple[str, ...] = eqx.field(static=True)
    apply_kwargs: tuple[tuple[str, Hashable], ...] = eqx.field(static=True)

    def __call__(self, params: Any) -> Array:
        variables = {"params": params, **self.collections}

        def apply(*args: Any, **kwargs: Any) -> Any:
            kw = {**dict(self.apply_kwargs), **kwargs}
            if self.mutable:
                out, _ = self.model.apply(variables, *args, mutable=list(self.mutable), **kw)
                return out
            return self.model.apply(variables, *args, **kw)

        return self.loss_fn(apply, self.data)


def _static_kwargs(kwargs: Mapping[str, Any] | None) -> tuple[tuple[str, Hashable], ...]:
    if kwargs is None:
        return ()
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"apply_kwargs must be a dict, got {type(kwargs).__name__}")
    items = tuple(sorted(kwargs.items()))
    for k, v in items:
        try:
            hash(v)
        except TypeError as err:
            raise TypeError(
                f"apply_kwargs[{k!r}] must be hashable (a static setting such as train=True), got "
                f"{type(v).__name__}; pass arrays through `data`"
            ) from err
    return items


def from_linen(
    model: Any,
    variables: Mapping[str, Any],
    loss_fn: Callable[[Callable[..., Any], Any], Array],
    data: Any,
    *,
    apply_kwargs: Mapping[str, Any] | None = None,
    groups: GroupsSpec = "layer",
    frozen: Sequence[str] = (),
    check_invariance: bool = True,
) -> ModelLoss:
    """A linen model's training loss as a :class:`ModelLoss`.

    Args:
        model: the ``flax.linen.Module``.
        variables: its variables (``model.init(...)``): ``"params"`` is trained; every other
            collection (``"batch_stats"``, ...) is carried as a constant and made ``mutable`` in
            ``apply``, its updates discarded.
        loss_fn: ``loss_fn(apply, data) -> scalar``, where ``apply(*args, **kwargs)`` returns
            ``model.apply(variables, *args, **apply_kwargs, **kwargs)``'s output.
        data: the data, a pytree of arrays (e.g. ``{"x": x, "y": y}``), leaves of the loss.
        apply_kwargs: static keyword arguments of every ``apply``, e.g. ``{"train": True}`` for
            a model whose BatchNorm takes ``use_running_average=not train``. The model must run
            in training mode (batch statistics), which the invariance check verifies.
        groups, frozen, check_invariance: see the module docstring.
    """
    import flax.linen as nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a flax.linen.Module, got {type(model).__name__}")
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError(
            "variables must be the dict of model.init(...) with a 'params' collection, got "
            f"{type(variables).__name__} with keys {list(variables) if isinstance(variables, Mapping) else None}"  # noqa: E501
        )
    _check_callable(loss_fn)
    # The other collections (batch statistics, recomputed in training mode) in the parameters'
    # dtype: flax keeps them in float32 whatever the parameters' dtype.
    dtypes = {jnp.result_type(x) for x in jax.tree.leaves(variables["params"])}
    dtype = next(iter(dtypes)) if len(dtypes) == 1 else None
    collections = {
        k: v
        if dtype is None
        else jax.tree.map(
            lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, v
        )
        for k, v in variables.items()
        if k != "params"
    }
    pytree_loss = LinenLoss(
        model,
        loss_fn,
        collections,
        data,
        tuple(sorted(collections)),
        _static_kwargs(apply_kwargs),
    )
    return _build(
        pytree_loss,
        variables["params"],
        groups=groups,
        frozen=frozen,
        check_invariance=check_invariance,
        framework="linen",
    )


def _check_callable(loss_fn: Any) -> None:
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")


# --------------------------------------------------------------------------------------------
# NNX
# --------------------------------------------------------------------------------------------


def _promote_floats(rest: Any, params: Any) -> Any:
    """Cast ``rest``'s floating arrays up to the parameters' floating dtype.

    ``nnx.BatchNorm`` keeps its running statistics in float32 whatever the parameters' dtype; a
    float64 model would then write float64 statistics into float32 arrays on every training
    call (a JAX FutureWarning). The cast is exact, and in training mode the statistics are not
    read.
    """
    kinds = {jnp.dtype(x.dtype) for x in jax.tree.leaves(params) if eqx.is_inexact_array(x)}
    if len(kinds) != 1:
        return rest
    (dtype,) = kinds

    def cast(x: Any) -> Any:
        if eqx.is_inexact_array(x) and jnp.dtype(x.dtype).itemsize < dtype.itemsize:
            return x.astype(dtype)
        return x

    return jax.tree.map(cast, rest)


class NNXLoss(eqx.Module):
    """``params -> loss_fn(nnx.merge(graphdef, params, rest), data)``, in training mode.

    The module is rebuilt inside the loss from the pure state, so the engine's ``jit``/``vmap``/
    ``scan`` see only arrays (no Variable of an outer trace is mutated). Every sub-module with a
    ``use_running_average`` attribute (``nnx.BatchNorm``) gets ``False`` (batch statistics); the
    ``BatchStat`` updates happen on the local copy and are discarded. Floating arrays of the
    rest are cast up to the parameters' dtype (``nnx.BatchNorm`` keeps float32 statistics).
    """

    graphdef: Any = eqx.field(static=True)
    rest: Any
    loss_fn: Callable[..., Array]
    data: Any
    train: bool = eqx.field(static=True)

    def __call__(self, params: Any) -> Array:
        from flax import nnx

        # copy=True: fresh Variables of the current trace (a Variable of an outer trace, e.g.
        # the jit around a vmap, cannot be written by the BatchNorm update: TraceContextError).
        module = nnx.merge(self.graphdef, params, self.rest, copy=True)
        if self.train:
            for _, sub in nnx.iter_modules(module):
                if hasattr(sub, "use_running_average"):
                    sub.use_running_average = False
        return self.loss_fn(module, self.data)


def from_nnx(
    module: Any,
    loss_fn: Callable[[Any, Any], Array],
    data: Any,
    *,
    wrt: Any = None,
    train: bool = True,
    groups: GroupsSpec = "layer",
    frozen: Sequence[str] = (),
    check_invariance: bool = True,
) -> ModelLoss:
    """A Flax NNX module's training loss as a :class:`ModelLoss`.

    ``nnx.split(module, wrt, ...)`` gives the graph definition, the trained state (``nnx.Param``
    by default) and the rest (``BatchStat``, RNG state, ...); the loss merges them afresh on
    every call.

    Args:
        module: the ``flax.nnx.Module`` (left untouched).
        loss_fn: ``loss_fn(model, data) -> scalar``, the usual NNX loss.
        data: the data, a pytree of arrays, leaves of the loss.
        wrt: the NNX filter of the trained variables (default ``nnx.Param``).
        train: set ``use_running_average=False`` on every sub-module that has it (batch
            statistics); ``False`` leaves the module's own settings.
        groups, frozen, check_invariance: see the module docstring.
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"module must be a flax.nnx.Module, got {type(module).__name__}")
    _check_callable(loss_fn)
    graphdef, params, *others = nnx.split(module, nnx.Param if wrt is None else wrt, ...)
    rest = _promote_floats(others[0], params)
    pytree_loss = NNXLoss(graphdef, rest, loss_fn, data, bool(train))
    return _build(
        pytree_loss,
        params,
        groups=groups,
        frozen=frozen,
        check_invariance=check_invariance,
        framework="NNX",
    )


# --------------------------------------------------------------------------------------------
# Equinox
# --------------------------------------------------------------------------------------------


class EquinoxLoss(eqx.Module):
    """``params -> loss_fn(combine(params, rest), [state,] data)`` for an Equinox model.

    The ``eqx.nn.State`` is copied before each call (``State.set`` invalidates its argument) and
    the state the loss returns, if any, is discarded: every evaluation starts from the same
    state.
    """

    rest: Any
    state: Any
    loss_fn: Callable[..., Any]
    data: Any

    def __call__(self, params: Any) -> Array:
        model = eqx.combine(params, self.rest)
        if self.state is None:
            out = self.loss_fn(model, self.data)
        else:
            state = jax.tree.map(lambda x: x, self.state)
            out = self.loss_fn(model, state, self.data)
        return out[0] if isinstance(out, tuple) else out


def _check_equinox_batchnorm(model: Any, state: Any) -> None:
    is_bn = lambda x: isinstance(x, eqx.nn.BatchNorm)  # noqa: E731
    paths = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_bn)[0]
    for path, bn in paths:
        if not is_bn(bn):
            continue
        if state is None:
            raise ValueError(
                f"the model has an eqx.nn.BatchNorm at {jax.tree_util.keystr(path)} but no state: "
                "pass state= (the eqx.nn.State of eqx.nn.make_with_state)"
            )
        if bn.mode == "ema" and not bool(state.get(bn.ema_first_time_index)):
            raise ValueError(
                f"eqx.nn.BatchNorm at {jax.tree_util.keystr(path)} has mode='ema' and a state "
                "that has already seen a batch: in training it then normalizes by momentum * "
                "running + (1 - momentum) * batch statistics, so the loss depends on the "
                "history and is not scale-invariant. Use mode='batch' (batch statistics in "
                "training) or the fresh state of eqx.nn.make_with_state."
            )


def from_equinox(
    model: Any,
    loss_fn: Callable[..., Any],
    data: Any,
    state: Any = None,
    *,
    filter_spec: Any = eqx.is_inexact_array,
    train: bool = True,
    groups: GroupsSpec = "layer",
    frozen: Sequence[str] = (),
    check_invariance: bool = True,
) -> ModelLoss:
    """An Equinox model's training loss as a :class:`ModelLoss`.

    The trained parameters are ``eqx.partition(model, filter_spec)``'s first part (default: every
    inexact array); the rest (non-trainable arrays, activations, settings) is combined back inside
    the loss.

    Stateful ``eqx.nn.BatchNorm`` (``model(x, state) -> (y, state)``, inside
    ``jax.vmap(..., axis_name=...)``): in training mode, ``mode="batch"`` normalizes by the batch
    mean and (biased) variance, which is scale-invariant with ``eps=0`` and
    ``channelwise_affine=False``; ``mode="ema"`` (the default, ``"legacy"``) normalizes by
    ``momentum * running + (1 - momentum) * batch`` statistics, except on the first batch a fresh
    state sees, where it uses the batch statistics alone. The loss starts every evaluation from
    ``state``, so ``mode="ema"`` with a fresh state is also the batch statistics; ``mode="ema"``
    with a state that has seen a batch is rejected (docs/models.md).

    Args:
        model: the Equinox model (a pytree).
        loss_fn: ``loss_fn(model, data)`` (no state) or ``loss_fn(model, state, data)``,
            returning the loss or ``(loss, anything)`` (e.g. the new state, discarded).
        data: the data, a pytree of arrays, leaves of the loss.
        state: the ``eqx.nn.State`` of a stateful model (``eqx.nn.make_with_state``), or None.
        filter_spec: the ``eqx.partition`` filter of the trained leaves.
        train: put the model in training mode (``eqx.nn.inference_mode(model, False)``).
        groups, frozen, check_invariance: see the module docstring.
    """
    _check_callable(loss_fn)
    if state is not None and not isinstance(state, eqx.nn.State):
        raise TypeError(f"state must be an eqx.nn.State or None, got {type(state).__name__}")
    if train:
        model = eqx.nn.inference_mode(model, False)
    _check_equinox_batchnorm(model, state)
    params, rest = eqx.partition(model, filter_spec)
    pytree_loss = EquinoxLoss(rest, state, loss_fn, data)
    return _build(
        pytree_loss,
        params,
        groups=groups,
        frozen=frozen,
        check_invariance=check_invariance,
        framework="Equinox",
    )
