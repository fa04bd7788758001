"""Numerical health of an update: a batch is committed only if the state it produces is sound.

Validation at the boundary (:mod:`analytic.validation`) refuses NaN/inf *inputs*, but two failures start from
finite ones and would otherwise corrupt a learner for good, since every later batch adds to the broken state:

* **Overflow.** A finite entry whose square exceeds the dtype's range (``1e200`` in float64, ``1e30`` in float32,
  or a float64 batch cast into a float32 learner) makes ``XᵀX`` -- or ``K = I + X R Xᵀ`` of the Woodbury step --
  infinite. The Gram path then holds inf/NaN statistics and the recursion silently drops the row (an infinite
  pivot gives a zero gain). Checked after the step from the diagonal of the updated Gram: for a Gram,
  ``|Gᵢⱼ| ≤ √(GᵢᵢGⱼⱼ)``, so a finite diagonal bounds every entry (``O(d)`` work, not ``O(d²)``).
* **Breakdown of the recursion.** ``R = (XᵀX + γI)⁻¹`` is updated by a subtraction; when the system is beyond the
  dtype's precision (float32 with ``cond(XᵀX + γI) ≳ 1/eps``) rounding makes ``R`` indefinite and a few hundred
  steps later ``W`` and ``R`` are NaN. In exact arithmetic ``K = I + X R Xᵀ ⪰ I``, so every Cholesky pivot of
  ``K`` is ``≥ 1`` (a pivot is ``vᵀKv`` for a vector with ``‖v‖ ≥ 1``). :func:`rls_health` reads the pivots,
  which the step computes anyway, and the updated diagonal of ``R``: a pivot below 1/2 (far outside rounding of a
  healthy step, which moves pivots by ``O(d·eps·‖x‖²·max Rᵢᵢ)``), a non-positive ``Rᵢᵢ`` or any non-finite value
  marks the step as broken. Before it breaks, the same rounding bound exceeding a tenth of the smallest pivot
  marks the step as *imprecise*: the batch's information is below the dtype's resolution.

Policy (the same for every learner): an overflowing batch raises ``ValueError`` naming the argument and the first
overflowing row; a broken recursion raises :class:`NumericalBreakdownError` (use float64, a larger γ, or the
Gram path, which solves from exact statistics); an imprecise step warns with
:class:`analytic.RidgeSolveWarning`. In every case that raises, the caller's state is the one before the call.
The flags are computed inside the jitted steps; reading them costs one scalar transfer per call.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "NumericalBreakdownError", "RLSHealth", "rls_health", "merge_health", "healthy", "gram_finite",
    "check_committed", "overflowing_rows",
]


class NumericalBreakdownError(FloatingPointError):
    """The Woodbury recursion lost positive definiteness in this dtype; the batch was not committed."""


class RLSHealth(NamedTuple):
    """Flags of one or more Woodbury steps (scalar arrays, so they pass through ``jit``/``scan``).

    Attributes:
      ok: every step kept ``W``, ``R`` and the pivots finite, ``diag(R) > 0`` and every pivot of ``K`` ``≥ 1/2``.
      precise: every step's rounding bound stayed below a tenth of its smallest pivot.
      min_pivot: smallest Cholesky pivot ``Lᵢᵢ²`` of ``K`` seen (``≥ 1`` in exact arithmetic).
    """

    ok: jax.Array
    precise: jax.Array
    min_pivot: jax.Array


def healthy(dtype: Any = jnp.float32) -> RLSHealth:
    """The neutral element of :func:`merge_health` (no step taken yet)."""
    return RLSHealth(jnp.asarray(True), jnp.asarray(True), jnp.asarray(jnp.inf, dtype))


def merge_health(a: RLSHealth, b: RLSHealth) -> RLSHealth:
    """Flags of two consecutive sequences of steps."""
    low = jnp.minimum(a.min_pivot.astype(b.min_pivot.dtype), b.min_pivot)
    return RLSHealth(a.ok & b.ok, a.precise & b.precise, low)


def rls_health(chol: jax.Array, r_old: jax.Array, r_new: jax.Array, w_new: jax.Array, x: jax.Array) -> RLSHealth:
    """Flags of one Woodbury step from what the step already holds (traceable; ``O(d·(b + c))`` extra work).

    ``chol`` is the Cholesky factor of ``K = I + X R Xᵀ``, ``x`` the batch (zero padding rows are harmless: their
    pivots are exactly 1); ``r_old`` is ``R`` before the step or just its diagonal.
    """
    pivots = jnp.diagonal(chol) ** 2
    diag_new = jnp.diagonal(r_new)
    norms = jnp.sum(x * x, axis=1)
    # Padding rows have pivot exactly 1 and carry no information: leave them out of the precision test.
    low = jnp.min(jnp.where(norms > 0, pivots, jnp.inf))
    finite = jnp.all(jnp.isfinite(pivots)) & jnp.all(jnp.isfinite(diag_new)) & jnp.all(jnp.isfinite(w_new))
    ok = finite & jnp.all(diag_new > 0) & (jnp.min(pivots) >= 0.5)
    eps = jnp.finfo(r_new.dtype).eps
    old_diag = r_old if r_old.ndim == 1 else jnp.diagonal(r_old)
    rounding = r_new.shape[0] * eps * jnp.max(norms) * jnp.max(old_diag)
    return RLSHealth(ok, ok & (rounding <= 0.1 * low), jnp.where(finite, low, jnp.nan))


def gram_finite(xtx: jax.Array, xty: jax.Array) -> jax.Array:
    """``True`` iff a Gram's diagonal and its cross-moments are finite (then every Gram entry is; traceable)."""
    return jnp.all(jnp.isfinite(jnp.diagonal(xtx))) & jnp.all(jnp.isfinite(xty))


def overflowing_rows(features: Any, dtype: Any) -> np.ndarray:
    """Indices of the rows of ``features`` whose squared norm is not finite in ``dtype`` (host-side, error path)."""
    with np.errstate(over="ignore", invalid="ignore"):
        f = np.asarray(features).astype(np.dtype(dtype))
        norms = np.sum(f**2, axis=1, dtype=np.dtype(dtype))
    return np.flatnonzero(~np.isfinite(norms))


def _overflow_error(rows: np.ndarray, features: np.ndarray, dtype: np.dtype, name: str, what: str) -> ValueError:
    row = int(rows[0])
    peak = float(np.max(np.abs(np.asarray(features[row], np.float64))))
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    return ValueError(
        f"{name} row {row}{more}: its {what} reach {peak:.3g}, whose squares overflow {dtype.name} "
        f"(max {float(np.finfo(dtype).max):.3g}); the batch was not learned and the state is unchanged -- "
        f"rescale the inputs"
    )


def check_committed(
    ok: Any,
    features: Callable[[], Any],
    dtype: Any,
    *,
    name: str = "x",
    what: str = "features",
    health: RLSHealth | None = None,
    stacklevel: int = 3,
) -> None:
    """Raise unless an update may be committed; warn when its Woodbury steps were imprecise.

    Args:
      ok: scalar flag (for Gram statistics: :func:`gram_finite` of the updated state; for RLS: ``health.ok``).
      features: called only on failure, returns the rows that entered the statistics (after any buffer), to name
        the overflowing one.
      dtype: the state's dtype.
      name, what: the argument and what of it overflowed ("features", "buffered features", ...).
      health: the RLS flags, if the update ran Woodbury steps.

    Raises:
      ValueError: a row's squares overflow ``dtype``, or the accumulated statistics do.
      NumericalBreakdownError: no row overflows, but the recursion lost positive definiteness.
    """
    dtype = np.dtype(dtype)
    if not bool(ok):
        feats = np.asarray(features())
        rows = overflowing_rows(feats, dtype)
        if rows.size:
            raise _overflow_error(rows, feats, dtype, name, what)
        if health is None:
            raise ValueError(
                f"{name}: adding this batch makes the accumulated statistics overflow {dtype.name}; the batch was "
                "not learned and the state is unchanged -- rescale the inputs or use float64"
            )
        pivot = float(health.min_pivot)
        raise NumericalBreakdownError(
            f"{name}: the recursive least-squares update lost positive definiteness in {dtype.name} (smallest pivot "
            f"of I + X R Xᵀ = {pivot:.3g}, must be >= 1); the batch was not learned and the state is unchanged. The "
            "system is beyond this dtype's precision: use float64, a larger gamma, or the Gram path "
            "(solver='gram'), which solves from exact statistics"
        )
    if health is not None and not bool(health.precise):
        from analytic.solve import RidgeSolveWarning

        warnings.warn(
            f"{name}: a recursive least-squares step could not resolve this batch in {dtype.name} (rounding of "
            f"X R Xᵀ exceeds a tenth of its smallest pivot {float(health.min_pivot):.3g}); W may have lost accuracy "
            "-- use float64 or a larger gamma",
            RidgeSolveWarning, stacklevel=stacklevel,
        )
