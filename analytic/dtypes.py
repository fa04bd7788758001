"""Dtype policy and row padding shared by every accumulating function.

* Accumulators (Grams, inverse autocorrelations, weights) default to JAX's widest enabled float: float64 when
  ``jax_enable_x64`` is on, otherwise float32.
* Products use ``Precision.HIGHEST`` so that TPUs/GPUs do not silently drop to bf16/TF32 passes -- the exactness
  claims of this library (equality with joint ridge) would otherwise fail on accelerators.
* Batches are zero-padded to a small set of row counts (:func:`row_bucket`) so that a stream whose last batch is
  short, or whose batch size drifts, compiles a bounded number of programs. Zero rows add nothing to ``XᵀX`` or
  ``XᵀY`` and leave the Woodbury update unchanged (their rows of ``I + XRXᵀ`` are identity rows), so padding is
  exact, not approximate (tested in ``tests/analytic/test_gram.py``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST


def default_float() -> np.dtype:
    """float64 when x64 is enabled, else float32."""
    return np.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def resolve_dtype(dtype: Any | None) -> np.dtype:
    if dtype is None:
        return default_float()
    dt = np.dtype(dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"dtype must be a floating type, got {dt}")
    if dt != np.dtype(jax.dtypes.canonicalize_dtype(dt)):
        raise TypeError(f"dtype {dt} needs jax_enable_x64 (jax.config.update('jax_enable_x64', True))")
    return dt


def row_bucket(n: int) -> int:
    """Smallest allowed row count ``>= n``: multiples of 8 up to 64, then 4 sizes per octave.

    Padding waste is therefore at most ~19% of a batch, and a stream of equal batches plus one short tail compiles
    at most two programs.
    """
    if n <= 64:
        return max(8, -(-n // 8) * 8)
    octave = 1 << (int(n).bit_length() - 1)
    step = octave // 4
    return -(-n // step) * step


def pad_rows(a: jax.Array, rows: int) -> jax.Array:
    """Zero-pad ``a`` along axis 0 to ``rows`` rows."""
    extra = rows - a.shape[0]
    if extra == 0:
        return a
    return jnp.pad(a, ((0, extra),) + ((0, 0),) * (a.ndim - 1))
