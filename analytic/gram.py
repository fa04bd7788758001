"""Additive ridge statistics: the ``GramStats`` monoid.

A ridge solution ``W = (XᵀX + γI)⁻¹ XᵀY`` depends on the data only through ``(XᵀX, XᵀY, n)``, which add over any
split of the rows -- batches, phases, clients or devices (AFL's absolute aggregation law is this sum, Zhuang et
al., "Analytic Federated Learning", 2024). ``gram_merge`` is the monoid operation (associative, commutative,
identity ``gram_init``); ``gram_solve`` reads the solution out with one SPD solve.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analytic import host_kernels
from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import HIGHEST, resolve_dtype
from analytic.health import check_committed, gram_finite
from analytic.validation import prepare_batch

__all__ = [
    "GramStats", "gram_init", "gram_update", "gram_merge", "gram_solve", "gram_accumulate", "gram_accumulate_checked",
    "symmetric_gram",
]


@register_checkpoint_type
class GramStats(NamedTuple):
    """Sufficient statistics of a ridge problem.

    Attributes:
      xtx: ``(d, d)`` symmetric ``XᵀX``.
      xty: ``(d, c)`` ``XᵀY`` (``c`` grows as classes appear).
      count: scalar integer, rows seen.
    """

    xtx: jax.Array
    xty: jax.Array
    count: jax.Array

    @property
    def dim(self) -> int:
        return self.xtx.shape[0]

    @property
    def classes(self) -> int:
        return self.xty.shape[1]


def gram_init(dim: int, classes: int = 0, dtype: Any = None) -> GramStats:
    """Empty statistics for ``dim`` features and ``classes`` target columns (the monoid identity)."""
    if int(dim) <= 0 or int(classes) < 0:
        raise ValueError(f"gram_init needs dim > 0 and classes >= 0, got dim={dim}, classes={classes}")
    dt = resolve_dtype(dtype)
    return GramStats(jnp.zeros((dim, dim), dt), jnp.zeros((dim, classes), dt), jnp.zeros((), jnp.int32))


def symmetric_gram(x: jax.Array) -> jax.Array:
    """``XᵀX`` in XLA, computing only the upper block triangle: ``(k+1)/(2k)`` of a GEMM's flops for ``k`` panels.

    XLA has no SYRK on CPU, so the symmetry is exploited by hand: panel ``i`` is multiplied with panels ``i..k``
    in one GEMM, and the lower triangle is the transpose of the upper one. ``k`` grows with ``d`` (1 below
    1024 columns, where smaller GEMMs would lose more to efficiency than symmetry saves). Traceable; static shapes.
    The diagonal blocks are plain GEMMs, so the result is symmetric only up to rounding; :func:`gram_accumulate`
    symmetrizes it.
    """
    d = x.shape[1]
    k = 1 if d < 1024 else (2 if d < 4096 else 4)
    if k == 1:
        return jnp.matmul(x.T, x, precision=HIGHEST)
    edges = [round(i * d / k) for i in range(k + 1)]
    panels = [x[:, edges[i]:edges[i + 1]] for i in range(k)]
    upper = [[None] * k for _ in range(k)]
    for i in range(k):
        row = jnp.matmul(panels[i].T, x[:, edges[i]:], precision=HIGHEST)
        for j in range(i, k):
            upper[i][j] = row[:, edges[j] - edges[i]:edges[j + 1] - edges[i]]
    return jnp.block([[upper[i][j] if j >= i else upper[j][i].T for j in range(k)] for i in range(k)])


_GramImpl = Literal["auto", "host", "xla"]

# Smallest block "auto" sends to the host kernel (:func:`analytic.host_kernels.gram_add`): below it a compiled XLA
# GEMM's few microseconds beat the FFI handler's fixed Python cost (≈ 50 µs). Measured on a 2-core CPU.
_HOST_MIN_WORK = 1 << 18  # n·d² multiply-adds


def _use_host(impl: _GramImpl, x: jax.Array) -> bool:
    if impl not in ("auto", "host", "xla"):
        raise ValueError(f"impl must be 'auto', 'host' or 'xla', got {impl!r}")
    if impl == "xla" or not host_kernels.enabled(x):
        return False
    n, d = x.shape
    return impl == "host" or n * d * d >= _HOST_MIN_WORK


def _block_products(
    x: jax.Array, y: jax.Array, acc_dtype: Any, compute_dtype: Any = None, impl: _GramImpl = "xla"
) -> tuple[jax.Array, jax.Array]:
    """One block's ``(xᵀx, xᵀy)`` in ``acc_dtype``; ``xᵀx`` exactly symmetric. Traceable; the one place the
    block products are formed (:func:`gram_accumulate`, :func:`analytic.sharded_gram_update`).

    The products run in ``compute_dtype`` (default ``acc_dtype``) and are cast after the product, so a float32
    block into float64 accumulators costs float32 flops and carries float32 rounding of each block only.
    ``impl="xla"`` uses :func:`symmetric_gram` and symmetrizes (valid everywhere: accelerators, ``vmap``,
    ``shard_map``, autodiff). ``impl="host"`` runs the host BLAS's SYRK through the XLA FFI
    (:func:`analytic.host_kernels.gram_add`: CPU backend only in effect, no copies; not differentiable; under
    ``vmap`` it loops over the batch). ``impl="auto"`` is "host" on the CPU backend for float32/float64 blocks of
    at least ``2**18`` multiply-adds (``n·d²``), where it measured faster than XLA's GEMMs, else "xla". Decided
    at trace time.
    """
    cd = np.dtype(acc_dtype if compute_dtype is None else compute_dtype)
    xc, yc = x.astype(cd), y.astype(cd)
    if _use_host(impl, xc):
        d, c = xc.shape[1], yc.shape[1]
        xtx, xty = host_kernels.gram_add(jnp.zeros((d, d), cd), jnp.zeros((d, c), cd), xc, yc)
        return xtx.astype(acc_dtype), xty.astype(acc_dtype)
    xtx = symmetric_gram(xc).astype(acc_dtype)
    xty = jnp.matmul(xc.T, yc, precision=HIGHEST, preferred_element_type=cd).astype(acc_dtype)
    # Symmetrize the block, not the sum: keeps XᵀX exactly symmetric whatever the matmul's summation order.
    return 0.5 * (xtx + xtx.T), xty


@partial(jax.jit, static_argnames=("compute_dtype", "impl"))
def gram_accumulate(
    stats: GramStats, x: jax.Array, y: jax.Array, rows: Any = None, compute_dtype: Any = None,
    impl: _GramImpl = "auto",
) -> GramStats:
    """Pure, jittable update ``(XᵀX + xᵀx, XᵀY + xᵀy, n + rows)``; no validation, ``y`` already ``(n, c)``.

    ``compute_dtype`` (default: the accumulator's) is the dtype of the block product; a float32 block added into
    float64 accumulators costs float32 flops. ``rows`` is the number of real
    rows when ``x`` carries zero padding (default: all of them). ``impl`` chooses how the block products are
    formed (see :func:`_block_products`): the default "auto" runs the host BLAS's SYRK on the CPU backend,
    onto the accumulated ``XᵀX`` (no separate ``d×d`` block), and XLA otherwise; pass ``impl="xla"`` to
    differentiate through the update or to keep it free
    of host callbacks. The accumulated ``XᵀX`` stays exactly symmetric on every path.
    """
    acc = stats.xtx.dtype
    if (compute_dtype is None or np.dtype(compute_dtype) == acc) and _use_host(impl, x.astype(acc)):
        # One SYRK onto (a copy of) the accumulated XᵀX: no separate d×d block to add (analytic.host_kernels).
        xtx, xty = host_kernels.gram_add(stats.xtx, stats.xty, x, y)
    else:
        block_xtx, block_xty = _block_products(x, y, acc, compute_dtype, impl)
        xtx, xty = stats.xtx + block_xtx, stats.xty + block_xty
    n = x.shape[0] if rows is None else rows
    return GramStats(xtx, xty, stats.count + jnp.asarray(n, stats.count.dtype))


@partial(jax.jit, static_argnames=("compute_dtype", "impl", "in_place"))
def gram_accumulate_checked(
    stats: GramStats, x: jax.Array, y: jax.Array, rows: Any = None, compute_dtype: Any = None,
    impl: _GramImpl = "auto", in_place: bool = False,
) -> tuple[GramStats, jax.Array]:
    """:func:`gram_accumulate` that commits only sound statistics: ``(stats', ok)``.

    ``ok`` is :func:`analytic.health.gram_finite` of the sum (on the CPU host path: that, decided before anything
    is written, with the diagonal at most half the dtype's range); when it is ``False``, ``stats'`` holds exactly
    the values of ``stats`` (the batch is not counted either). So a caller may *donate* ``stats`` to the jitted
    step that calls this with ``in_place=True`` -- the statistics are then updated where they lie, without a fresh
    ``d×d`` buffer per batch -- and still keep the previous statistics when the batch is refused. Without donation
    ``in_place=True`` is still correct (XLA copies the aliased input first), only slower.
    """
    acc = stats.xtx.dtype
    n = jnp.asarray(x.shape[0] if rows is None else rows, stats.count.dtype)
    if (compute_dtype is None or np.dtype(compute_dtype) == acc) and _use_host(impl, x.astype(acc)):
        xtx, xty, flag = host_kernels.gram_add_checked(stats.xtx, stats.xty, x, y, in_place)
        ok = flag.astype(bool)
    else:
        new = gram_accumulate(stats, x, y, rows, compute_dtype, impl)
        ok = gram_finite(new.xtx, new.xty)
        xtx, xty = jnp.where(ok, new.xtx, stats.xtx), jnp.where(ok, new.xty, stats.xty)
    return GramStats(xtx, xty, stats.count + jnp.where(ok, n, jnp.zeros_like(n))), ok


def gram_update(stats: GramStats, x: Any, y: Any, compute_dtype: Any = None, classes: int | None = None) -> GramStats:
    """Add a batch to the statistics: ``x: (n, d)``; ``y``: class ids ``(n,)`` or targets ``(n, c')``.

    Integer labels beyond the current width grow the class columns (zero-padded, exact); ``classes`` (a declared
    class count) bounds that growth. The batch is validated first (see :mod:`analytic.validation`) and the result
    is committed only if its statistics are finite (a row whose squares overflow raises ``ValueError`` naming it,
    :func:`analytic.health.check_committed`), so an error leaves ``stats`` as it was. Rows are zero-padded to a
    :func:`~analytic.dtypes.row_bucket` size so a short last batch does not compile a new program per size.
    """
    batch = prepare_batch(x, y, dim=stats.dim, classes=stats.classes, declared=classes, dtype=stats.xty.dtype)
    grown = stats
    if batch.width > stats.classes:
        grown = stats._replace(xty=jnp.pad(stats.xty, ((0, 0), (0, batch.width - stats.classes))))
    cd = None if compute_dtype is None else resolve_dtype(compute_dtype)
    new = gram_accumulate(grown, batch.x, batch.targets, jnp.int32(batch.n), cd)
    check_committed(_finite(new), lambda: batch.host_x, cd or stats.xtx.dtype)
    return new


@jax.jit
def _finite(stats: GramStats) -> jax.Array:
    return gram_finite(stats.xtx, stats.xty)


@jax.jit
def _merge_same(a: GramStats, b: GramStats) -> GramStats:
    return GramStats(a.xtx + b.xtx, a.xty + b.xty, a.count + b.count)


def gram_merge(a: GramStats, b: GramStats) -> GramStats:
    """``a ⊕ b``: statistics of the union of both row sets (class columns padded to the wider one)."""
    if a.dim != b.dim:
        raise ValueError(f"gram_merge: feature dims differ ({a.dim} vs {b.dim})")
    if a.xtx.dtype != b.xtx.dtype:
        raise TypeError(f"gram_merge: dtypes differ ({a.xtx.dtype} vs {b.xtx.dtype}); cast one explicitly")
    c = max(a.classes, b.classes)
    a = a._replace(xty=jnp.pad(a.xty, ((0, 0), (0, c - a.classes))))
    b = b._replace(xty=jnp.pad(b.xty, ((0, 0), (0, c - b.classes))))
    return _merge_same(a, b)


def gram_solve(stats: GramStats, gamma: float, **kwargs: Any) -> jax.Array:
    """Ridge weights ``W = (XᵀX + γI)⁻¹ XᵀY`` from the statistics: ``(d, c)``. See :func:`analytic.ridge_solve`."""
    from analytic.solve import ridge_solve

    return ridge_solve(stats.xtx, stats.xty, gamma, **kwargs)
