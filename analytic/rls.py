"""Recursive least squares by the Woodbury identity, with class-column growth.

ACIL's recursive update (Zhuang et al., "ACIL: Analytic Class-Incremental Learning with Absolute Memorization
and Privacy Protection", NeurIPS 2022, the recursive ``R`` and ``W`` updates of §3): with ``R₀ = I/γ`` and
``W₀ = 0``, for each batch ``X_k: (b, d)``, ``Y_k: (b, c)``::

    K   = I_b + X_k R Xᵀ_k                    (b×b, SPD)
    R'  = R − R Xᵀ_k K⁻¹ X_k R
    W'  = W̃ + R' Xᵀ_k (Y_k − X_k W̃)          W̃ = W zero-padded with columns for new classes

Because ``R' Xᵀ_k = R Xᵀ_k K⁻¹`` the weight step reuses the factor of ``K``; the whole update costs
``2 d² b + O(d b² + b³)`` flops and never inverts a ``d×d`` matrix. After any sequence of batches ``W`` equals the
joint ridge solution on all rows seen and ``R = (XᵀX + γI)⁻¹`` -- the "absolute memorization" property.

Every step also returns its numerical health (:mod:`analytic.health`): :func:`rls_update` commits a batch only if
the new ``W``/``R`` are finite and ``R`` kept positive definite, and warns when a step was below the dtype's
resolution, so a float32 stream beyond its precision raises instead of turning NaN.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from analytic import host_kernels
from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import HIGHEST, resolve_dtype
from analytic.health import RLSHealth, check_committed, rls_health
from analytic.validation import check_gamma, prepare_batch

__all__ = ["RLSState", "rls_init", "rls_update", "rls_step", "rls_step_checked", "rls_predict"]


@register_checkpoint_type
class RLSState(NamedTuple):
    """State of the recursion.

    Attributes:
      weight: ``(d, c)`` current ridge weights ``W``.
      inv_autocorr: ``(d, d)`` ``R = (XᵀX + γI)⁻¹`` over the rows seen.
    """

    weight: jax.Array
    inv_autocorr: jax.Array

    @property
    def dim(self) -> int:
        return self.weight.shape[0]

    @property
    def classes(self) -> int:
        return self.weight.shape[1]


def rls_init(dim: int, classes: int = 0, gamma: float = 1.0, dtype: Any = None) -> RLSState:
    """``W₀ = 0: (dim, classes)``, ``R₀ = I/γ``."""
    gamma = check_gamma(gamma)
    if int(dim) <= 0 or int(classes) < 0:
        raise ValueError(f"rls_init needs dim > 0 and classes >= 0, got dim={dim}, classes={classes}")
    dt = resolve_dtype(dtype)
    return RLSState(jnp.zeros((dim, classes), dt), jnp.eye(dim, dtype=dt) / jnp.asarray(gamma, dt))


def _woodbury(state: RLSState, x: jax.Array, y: jax.Array, in_place: bool = False) -> tuple[RLSState, RLSHealth]:
    w, r = state
    x = x.astype(r.dtype)
    y = y.astype(r.dtype)
    if host_kernels.enabled(r):
        # CPU: the same step with the host BLAS, R updated where it lies (analytic.host_kernels.woodbury_step);
        # R' = R − VVᵀ by a SYRK is exactly symmetric without the symmetrizing pass below.
        # The kernel decides the step's soundness before writing R (so a donated state survives a refused step);
        # its verdict is the flag, the rest of the health (precision, smallest pivot) is read as on the XLA path.
        w_new, r_new, chol, ok, r_old_diag = host_kernels.woodbury_step(w, r, x, y, in_place)
        health = rls_health(chol, r_old_diag, r_new, w_new, x)
        ok = ok.astype(bool)
        return RLSState(w_new, r_new), health._replace(ok=ok, precise=health.precise & ok)
    rxt = jnp.matmul(r, x.T, precision=HIGHEST)                       # R Xᵀ        (d, b)
    k = jnp.eye(x.shape[0], dtype=r.dtype) + jnp.matmul(x, rxt, precision=HIGHEST)
    chol = jnp.linalg.cholesky(0.5 * (k + k.T))
    gain = jax.scipy.linalg.cho_solve((chol, True), rxt.T).T          # R Xᵀ K⁻¹ = R' Xᵀ   (d, b)
    r_new = r - jnp.matmul(gain, rxt.T, precision=HIGHEST)
    # Keep R exactly symmetric: rounding would otherwise accumulate an antisymmetric part over long streams.
    r_new = 0.5 * (r_new + r_new.T)
    residual = y - jnp.matmul(x, w, precision=HIGHEST)
    w_new = w + jnp.matmul(gain, residual, precision=HIGHEST)
    return RLSState(w_new, r_new), rls_health(chol, r, r_new, w_new, x)


@partial(jax.jit, static_argnames="in_place")
def rls_step_checked(state: RLSState, x: jax.Array, y: jax.Array, in_place: bool = False
                     ) -> tuple[RLSState, RLSHealth]:
    """:func:`rls_step` plus its :class:`~analytic.health.RLSHealth` flags (computed from the step's own factors).

    ``in_place=True`` (inside a ``scan`` over steps, where the carried state is dead after each step) lets the
    CPU host kernel update ``R`` where it lies (:func:`analytic.host_kernels.woodbury_step`)."""
    return _woodbury(state, x, y, in_place)


@jax.jit
def rls_step(state: RLSState, x: jax.Array, y: jax.Array) -> RLSState:
    """Pure, jittable Woodbury step; ``x: (b, d)``, ``y: (b, c)`` already of the state's width and dtype.

    Zero rows (padding) leave the state unchanged exactly: they add identity rows/columns to ``K``. No health
    check: use :func:`rls_step_checked` (or :func:`rls_update`) where a broken step must not be committed.
    """
    return _woodbury(state, x, y)[0]


def rls_update(state: RLSState, x: Any, y: Any, classes: int | None = None) -> RLSState:
    """One recursive step on ``x: (b, d)`` with class ids ``(b,)`` or targets ``(b, c')``.

    New classes (ids ≥ the current width, or wider targets) zero-pad ``W`` first (``W̃`` above); ``classes``
    (a declared class count) bounds that growth. Input is validated before any work, and the step is committed
    only if it is numerically sound (:func:`analytic.health.check_committed`: ``ValueError`` for a row whose
    squares overflow, :class:`~analytic.health.NumericalBreakdownError` when ``R`` lost definiteness), so an
    error leaves ``state`` usable and unchanged. Rows are zero-padded to a :func:`~analytic.dtypes.row_bucket`
    size (exact) to bound recompilation.
    """
    batch = prepare_batch(x, y, dim=state.dim, classes=state.classes, declared=classes, dtype=state.weight.dtype)
    grown = state
    if batch.width > state.classes:
        grown = state._replace(weight=jnp.pad(state.weight, ((0, 0), (0, batch.width - state.classes))))
    new, health = rls_step_checked(grown, batch.x, batch.targets)
    check_committed(health.ok, lambda: batch.host_x, state.weight.dtype, health=health)
    return new


@jax.jit
def rls_predict(state: RLSState, x: jax.Array) -> jax.Array:
    """Logits ``x W``: ``(n, c)``."""
    return host_kernels.matmul(x.astype(state.weight.dtype), state.weight)
