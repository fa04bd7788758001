"""Choosing the ridge γ (and a buffer width) on held-out data, with one eigendecomposition per feature map.

The ridge solution for every γ on a grid comes from one factorization of the Gram: with
``XᵀX = U Λ Uᵀ`` (symmetric, so ``eigh``), ``W(γ) = U diag(1/(λᵢ + γ)) Uᵀ XᵀY`` — exactly
``(XᵀX + γI)⁻¹ XᵀY`` for each γ (Hoerl & Kennard, 1970; the same identity as the closed form of the analytic
learners, e.g. ACIL, Zhuang et al. 2022, eq. 4). A grid of k values then costs one ``d³`` decomposition plus
``k·d²·c`` instead of k factorizations.

:func:`select_gamma` is the rule the real-data benchmarks use: a stratified hold-out split of the data it is
given (the base phase of a continual stream, or the pooled training rows), the buffer the learners would use,
and the γ with the highest held-out accuracy (ties go to the larger γ: the more regularized model). The caller
decides which rows it may look at; it never sees test data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analytic import host_kernels
from analytic.buffers import RandomBuffer
from analytic.dtypes import HIGHEST, resolve_dtype
from analytic.gram import gram_init, gram_update
from analytic.validation import check_gamma

__all__ = ["DEFAULT_GAMMAS", "GammaSelection", "ridge_path", "select_gamma"]

#: the default grid: every decade from 1e-2 to 1e4.
DEFAULT_GAMMAS: tuple[float, ...] = tuple(10.0 ** k for k in range(-2, 5))


@jax.jit
def _ridge_path(xtx: jax.Array, xty: jax.Array, gammas: jax.Array) -> jax.Array:
    lam, u = host_kernels.eigh(xtx)  # the kernels' LAPACK on CPU (one BLAS library, analytic._openblas)
    # A PSD Gram can carry tiny negative eigenvalues from rounding; they are zero in exact arithmetic.
    lam = jnp.maximum(lam, 0.0)
    projected = jnp.matmul(u.T, xty, precision=HIGHEST)
    scaled = projected[None] / (lam[None, :, None] + gammas[:, None, None])
    return jnp.einsum("ij,kjc->kic", u, scaled, precision=HIGHEST)


def ridge_path(xtx: Any, xty: Any, gammas: Sequence[float]) -> jax.Array:
    """``W(γ) = (XᵀX + γI)⁻¹ XᵀY`` for every γ in ``gammas``: ``(k, d, c)``, from one ``eigh`` of ``xtx``.

    ``xtx: (d, d)`` symmetric positive semi-definite, ``xty: (d, c)``; every γ must be > 0. The result equals
    :func:`analytic.ridge_solve` per γ up to rounding (tests/analytic/test_selection.py: 1e-9 relative in float64
    on a Gram with condition number ≈ 1e6).
    """
    xtx, xty = jnp.asarray(xtx), jnp.asarray(xty)
    if xtx.ndim != 2 or xtx.shape[0] != xtx.shape[1]:
        raise ValueError(f"xtx must be a square (d, d) matrix, got shape {tuple(xtx.shape)}")
    if xty.ndim != 2 or xty.shape[0] != xtx.shape[0]:
        raise ValueError(f"xty must have shape ({xtx.shape[0]}, c), got {tuple(xty.shape)}")
    values = [check_gamma(g, "gammas") for g in gammas]
    if not values:
        raise ValueError("gammas must hold at least one value")
    dtype = jnp.result_type(xtx.dtype, xty.dtype)
    return _ridge_path(xtx.astype(dtype), xty.astype(dtype), jnp.asarray(values, dtype))


class GammaSelection(NamedTuple):
    """The result of :func:`select_gamma`.

    gamma, buffer_size: the chosen values (``buffer_size`` is ``None`` without a buffer).
    table: one ``(buffer_size, gamma, held-out accuracy)`` row per candidate, in grid order.
    train_rows, validation_rows: sizes of the two parts of the split.
    """

    gamma: float
    buffer_size: int | None
    table: list[tuple[int | None, float, float]]
    train_rows: int
    validation_rows: int


def select_gamma(
    x: Any, y: Any, *, gammas: Sequence[float] = DEFAULT_GAMMAS, buffer_sizes: Sequence[int | None] = (None,),
    activation: str = "relu", buffer_seed: int = 0, buffer_init: str = "normal",
    validation_fraction: float = 0.2, seed: int = 0, dtype: Any = None,
) -> GammaSelection:
    """Pick γ (and a buffer width) by held-out accuracy of the ridge head on ``(x, y)``.

    ``(x, y)`` is split once, stratified by label (the rows of a class seen once stay on the fitting side), into
    ``1 - validation_fraction`` for fitting and the rest for scoring (``sklearn.model_selection.train_test_split``
    with ``seed``). For each entry of ``buffer_sizes`` the features go through
    ``RandomBuffer(d, size, activation, buffer_seed, buffer_init)`` -- the buffer a learner built with the same
    arguments draws, so the choice is made on the features it will see -- or are used as given
    for ``None``. Every γ of the grid is then solved from one decomposition (:func:`ridge_path`). The best held-out
    accuracy wins; ties go to the larger γ, then the smaller buffer. ``dtype`` defaults to the dtype policy's
    (float64 when x64 is enabled).
    """
    from sklearn.model_selection import train_test_split

    dtype = resolve_dtype(dtype)
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be (n, d) and y (n,), got {x.shape} and {y.shape}")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction!r}")
    if not buffer_sizes:
        raise ValueError("buffer_sizes must hold at least one entry (None = no buffer)")
    labels, y_ids = np.unique(y, return_inverse=True)
    # A class with a single row cannot be stratified (an online stream's first task can hold such blurry
    # leftovers): its rows stay on the fitting side.
    single = np.bincount(y_ids)[y_ids] < 2
    x_fit, x_val, y_fit, y_val = train_test_split(x[~single], y_ids[~single], test_size=validation_fraction,
                                                  random_state=seed, stratify=y_ids[~single])
    x_fit, y_fit = np.concatenate([x_fit, x[single]]), np.concatenate([y_fit, y_ids[single]])
    table: list[tuple[int | None, float, float]] = []
    for size in buffer_sizes:
        if size is None:
            h_fit, h_val = jnp.asarray(x_fit, dtype), jnp.asarray(x_val, dtype)
        else:
            buffer = RandomBuffer(x.shape[1], int(size), activation, buffer_seed, buffer_init, dtype=dtype)
            h_fit, h_val = buffer(jnp.asarray(x_fit, dtype)), buffer(jnp.asarray(x_val, dtype))
        stats = gram_update(gram_init(h_fit.shape[1], labels.size, dtype), h_fit, y_fit)
        weights = ridge_path(stats.xtx, stats.xty, gammas)
        predicted = np.asarray(jnp.argmax(jnp.einsum("nd,kdc->knc", h_val, weights, precision=HIGHEST), -1))
        for gamma, pred in zip(gammas, predicted):
            table.append((size, float(gamma), float(np.mean(pred == y_val))))
    best = max(table, key=lambda row: (row[2], row[1], -(row[0] or 0)))
    return GammaSelection(best[1], best[0], table, int(y_fit.size), int(y_val.size))
