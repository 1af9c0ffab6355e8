"""Derivatives of a loss on a flat vector: gradients, Hessian-vector products, third derivatives.

All by automatic differentiation; no finite differences (tests use those as the oracle).

* ``hvp``: forward-over-reverse, ``H(w) v = d/de grad L(w + e v)`` at ``e = 0`` -- one ``jvp`` of
  ``grad L``, about the cost of two gradients (Pearlmutter 1994).
* ``grad_and_hvp``: the same pass also returns ``grad L(w)`` as its primal output, so a GD step
  that needs the gradient anyway gets one HVP for the price of a tangent.
* ``linearize_grad``: ``jax.linearize`` of ``grad L`` at ``w``; the primal pass is done once and
  each further HVP only evaluates the linear (tangent) program. This is what Lanczos uses.
* ``grad_lambda1``: ``grad_x (v^T H(x) v)`` at ``x = w`` with ``v`` held fixed, i.e.
  ``D^3 L(w)[v, v, .]``. For the top eigenpair ``(lambda_1, v_1)`` with ``lambda_1`` simple this
  is ``grad lambda_1`` (Hellmann-Feynman; docs/theory.md section 3, "useful facts").
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from theory.core.types import Array, LossFn


def hvp(loss: LossFn, w: Array, v: Array) -> Array:
    """Hessian-vector product ``hess L(w) v``, shape ``(D,)`` (forward-over-reverse)."""
    return jax.jvp(jax.grad(loss), (w,), (v,))[1]


def grad_and_hvp(loss: LossFn, w: Array, v: Array) -> tuple[Array, Array]:
    """``(grad L(w), hess L(w) v)`` in one forward-over-reverse pass."""
    return jax.jvp(jax.grad(loss), (w,), (v,))


def linearize_grad(loss: LossFn, w: Array) -> tuple[Array, Callable[[Array], Array]]:
    """``(grad L(w), v -> hess L(w) v)``: the primal pass once, then cheap tangent evaluations."""
    return jax.linearize(jax.grad(loss), w)


def second_directional(loss: LossFn, w: Array, v: Array) -> Array:
    """``v^T hess L(w) v`` by two forward passes (no reverse pass)."""

    def first(x: Array) -> Array:
        return jax.jvp(loss, (x,), (v,))[1]

    return jax.jvp(first, (w,), (v,))[1]


def grad_lambda1(loss: LossFn, w: Array, v1: Array) -> Array:
    """``D^3 L(w)[v1, v1, .] = grad_x (v1^T hess L(x) v1)|_{x=w}``, shape ``(D,)``.

    With ``v1`` the unit top eigenvector of ``hess L(w)`` and ``lambda_1`` simple, this is the
    gradient of ``lambda_1(hess L(w))`` (Hellmann-Feynman). One reverse pass over two forward
    passes: about the cost of a few gradients, and no ``D x D`` matrix.

    ``v1`` must be normalized; it is held fixed (no derivative flows through it).
    """
    v1 = jax.lax.stop_gradient(v1)
    return jax.grad(second_directional, argnums=1)(loss, w, v1)


def mixed_third(loss: LossFn, w: Array, a: Array, b: Array) -> Array:
    """``D^3 L(w)[a, b, .] = grad_x (a^T hess L(x) b)|_{x=w}``, shape ``(D,)``.

    The gradient of one entry ``u_a^T hess L u_b`` of the Hessian restricted to a block of
    eigenvectors held fixed: what the multi-eigenvalue flows (the central flow's ``Sigma``,
    the cluster flow through an eigenvalue crossing) need. ``mixed_third(loss, w, v, v)`` is
    :func:`grad_lambda1`.
    """
    a, b = jax.lax.stop_gradient(a), jax.lax.stop_gradient(b)

    def along_a(x: Array) -> Array:
        return jax.jvp(loss, (x,), (a,))[1]

    def bilinear(x: Array) -> Array:
        return jax.jvp(along_a, (x,), (b,))[1]

    return jax.grad(bilinear)(w)


def grad_log_lambda1(loss: LossFn, w: Array, v1: Array, lam1: Array) -> Array:
    """``grad log lambda_1 = D^3 L(w)[v1, v1, .] / lambda_1``."""
    return grad_lambda1(loss, w, v1) / jnp.asarray(lam1, w.dtype)
