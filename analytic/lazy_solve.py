"""Ridge heads kept as additive statistics and solved lazily, once per state, on read.

A learner that reads its weights once per phase (ACIL, DS-AL, GACL, AIR predicting after a phase) does not need
``W`` after every batch. Accumulating ``(XᵀX, XᵀY)`` with :func:`analytic.gram_accumulate` costs ``b d²`` flops
per batch of ``b`` rows (half of it with a symmetric product), the Woodbury recursion about ``2 b d²``
(:mod:`analytic.rls`); and by absolute memorization (Zhuang et al., "ACIL", NeurIPS 2022, §3: the recursive
``W`` equals the joint ridge solution ``W = (XᵀX + γI)⁻¹ XᵀY`` on all rows seen) both give the same head. So
:class:`RidgeHead` keeps the statistics and the ridge strength, and :func:`head_weights` solves
``(XᵀX + γI) W = XᵀY`` through :func:`analytic.ridge_solve` (one Cholesky factorization, ``d³/3`` flops, with its
conditioning warning and ``eigh`` fallback) the first time a given head is read.

**Cache.** The solved ``W`` is remembered per head by the *identity* of its arrays. JAX arrays are immutable and
every update builds new ones, so an entry can only be hit by the very statistics it was solved from -- a cached
read is never stale, whatever path produced the head (update, checkpoint load, a copy). Entries die with their
arrays (weak references), so the cache never keeps a state alive.
"""

from __future__ import annotations

import threading
import weakref
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import resolve_dtype
from analytic.gram import GramStats, gram_accumulate_checked, gram_init
from analytic.health import gram_finite
from analytic.validation import check_gamma

__all__ = ["RidgeHead", "head_init", "head_accumulate", "head_finite", "head_weights"]


@register_checkpoint_type
class RidgeHead(NamedTuple):
    """A ridge head as sufficient statistics: ``W = (XᵀX + γI)⁻¹ XᵀY`` is read with :func:`head_weights`.

    Attributes:
      stats: :class:`analytic.GramStats` -- ``xtx (d, d)``, ``xty (d, c)``, ``count``.
      gamma: ridge strength γ (scalar array of the statistics' dtype).
    """

    stats: GramStats
    gamma: jax.Array

    @property
    def dim(self) -> int:
        return self.stats.dim

    @property
    def classes(self) -> int:
        return self.stats.classes

    @property
    def dtype(self) -> Any:
        return self.stats.xtx.dtype

    @property
    def weight(self) -> jax.Array:
        """``W: (d, c)``, solved on first read of this head (:func:`head_weights`)."""
        return head_weights(self)


def head_init(dim: int, classes: int = 0, gamma: float = 1.0, dtype: Any = None) -> RidgeHead:
    """Empty statistics (``W₀ = 0``) for ``dim`` features, ``classes`` columns and ridge strength ``gamma``."""
    gamma = check_gamma(gamma)
    dt = resolve_dtype(dtype)
    return RidgeHead(gram_init(dim, classes, dt), jnp.asarray(gamma, dt))


@partial(jax.jit, static_argnames=("repeats", "in_place"))
def head_accumulate(
    head: RidgeHead, x: jax.Array, targets: jax.Array, rows: Any = None, repeats: int = 1, in_place: bool = False
) -> tuple[RidgeHead, jax.Array]:
    """Add a padded batch (traceable): returns the new head and its health flag -- :func:`head_finite` of the sum;
    when it is ``False`` the returned head holds the values of ``head`` (:func:`analytic.gram_accumulate_checked`,
    whose ``in_place`` this passes on, for a donated ``head``).

    ``repeats = k`` adds the batch ``k`` times, i.e. ``k XᵀX`` and ``k XᵀY`` (rows scaled by ``√k``; ``k = 1``
    is exact), which is what fitting the same batch ``k`` times by the recursion amounts to.
    """
    if repeats != 1:
        scale = jnp.sqrt(jnp.asarray(repeats, head.dtype))
        x, targets = x.astype(head.dtype) * scale, targets.astype(head.dtype) * scale
    # Checked: a refused batch gives back the same statistics, so a caller may donate the head (``in_place``,
    # :func:`analytic.gram.gram_accumulate_checked`).
    stats, ok = gram_accumulate_checked(head.stats, x, targets, rows, in_place=in_place)
    return head._replace(stats=stats), ok


def head_finite(head: RidgeHead) -> jax.Array:
    """``True`` iff the statistics are finite: diagonal of ``XᵀX`` plus ``XᵀY`` (:func:`analytic.health.gram_finite`,
    ``O(d·c)`` work: a finite Gram diagonal bounds every entry by Cauchy-Schwarz)."""
    return gram_finite(head.stats.xtx, head.stats.xty)


_CACHE: dict[int, tuple[Any, Any, Any, jax.Array]] = {}
_LOCK = threading.Lock()


def head_weights(head: RidgeHead, **kwargs: Any) -> jax.Array:
    """``W = (XᵀX + γI)⁻¹ XᵀY: (d, c)`` through :func:`analytic.ridge_solve`, cached per head (module docstring).

    ``kwargs`` go to :func:`analytic.ridge_solve` (``warn_cond``); a call with any bypasses the cache.
    """
    from analytic.solve import ridge_solve

    xtx, xty, gamma = head.stats.xtx, head.stats.xty, head.gamma
    if isinstance(xtx, jax.core.Tracer):
        return ridge_solve(xtx, xty, gamma, check=False)
    key = id(xtx)
    with _LOCK:
        hit = _CACHE.get(key)
    if not kwargs and hit is not None and hit[0]() is xtx and hit[1]() is xty and hit[2]() is gamma:
        return hit[3]
    if xty.shape[1] == 0:
        w = jnp.zeros(xty.shape, xty.dtype)
    else:
        w = ridge_solve(xtx, xty, float(gamma), **kwargs)
    if not kwargs:
        def forget(_: Any, key: int = key) -> None:
            with _LOCK:
                entry = _CACHE.get(key)
                if entry is not None and entry[0]() is None:
                    del _CACHE[key]

        try:
            entry = (weakref.ref(xtx, forget), weakref.ref(xty), weakref.ref(gamma), w)
        except TypeError:  # a leaf that cannot be weakly referenced (a Python float γ): solve, do not cache
            return w
        with _LOCK:
            _CACHE[key] = entry
    return w
