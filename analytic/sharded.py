"""Gram accumulation sharded over devices: per-device ``XᵀX`` blocks reduced with ``psum``.

Only Grams add (docs/methods.md §1: never average ``R`` or ``W`` across devices), so data parallelism for an
analytic head is: split the rows over a mesh axis, form each device's block Gram locally, ``psum`` the blocks,
add the reduced block to the (replicated) statistics. The same function runs on one host with several (virtual)
CPU devices, on a GPU/TPU slice, or across processes after ``jax.distributed.initialize``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from analytic.dtypes import pad_rows
from analytic.gram import GramStats, _block_products
from analytic.health import check_committed, gram_finite
from analytic.validation import as_targets, check_features

__all__ = ["sharded_gram_update", "data_mesh"]


def data_mesh(devices: Any = None, axis_name: str = "data") -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process) for row sharding."""
    import numpy as np

    devs = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devs.reshape(-1), (axis_name,))


@partial(jax.jit, static_argnames=("mesh", "axis"))
def _sharded_block(x: jax.Array, y: jax.Array, mesh: Mesh, axis: str) -> tuple[jax.Array, jax.Array]:
    def local(xs: jax.Array, ys: jax.Array) -> tuple[jax.Array, jax.Array]:
        # The block math of gram_accumulate, always on XLA: a host callback per shard is not wanted across processes
        # or on accelerators.
        xtx, xty = _block_products(xs, ys, xs.dtype, impl="xla")
        return jax.lax.psum(xtx, axis), jax.lax.psum(xty, axis)

    return jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec(axis), PartitionSpec(axis)),
        out_specs=(PartitionSpec(), PartitionSpec()),
    )(x, y)


def sharded_gram_update(
    stats: GramStats, x: Any, y: Any, mesh: Mesh, axis_name: str | None = None, classes: int | None = None
) -> GramStats:
    """``gram_update`` with the rows of ``x: (n, d)`` / ``y`` split over ``mesh``'s axis and Grams ``psum``-reduced.

    ``n`` need not divide the device count: rows are zero-padded to a multiple of it (exact for Grams). ``x`` may
    already be a globally sharded ``jax.Array`` (multi-process use); then it must be sharded along rows.
    Equals :func:`analytic.gram_update` on the same rows up to summation order (tested to 1e-12 in float64).
    """
    axis = axis_name or mesh.axis_names[0]
    ndev = mesh.shape[axis]
    x = check_features(x, dim=stats.dim)
    t, width = as_targets(y, x.shape[0], stats.classes, stats.xty.dtype, declared=classes)
    if width > stats.classes:
        stats = stats._replace(xty=jnp.pad(stats.xty, ((0, 0), (0, width - stats.classes))))
    n = x.shape[0]
    rows = -(-n // ndev) * ndev
    x, t = pad_rows(x.astype(stats.xtx.dtype), rows), pad_rows(t, rows)
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    x, t = jax.device_put(x, sharding), jax.device_put(t, sharding)
    xtx, xty = _sharded_block(x, t, mesh, axis)
    # Each device's block is exactly symmetric, but an all-reduce may sum entry (i, j) and (j, i) in different
    # device orders (e.g. a ring reduces each chunk starting elsewhere), so the reduced block is symmetrized again.
    xtx = 0.5 * (xtx + xtx.T)
    new = GramStats(stats.xtx + xtx, stats.xty + xty, stats.count + jnp.asarray(n, stats.count.dtype))
    # Committed only if finite (a row whose squares overflow is named), like gram_update.
    check_committed(gram_finite(new.xtx, new.xty), lambda: x, stats.xtx.dtype)
    return new
