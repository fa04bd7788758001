"""Label encoding and class-column growth shared by statistics and recursive states."""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from analytic.dtypes import resolve_dtype
from analytic.gram import GramStats
from analytic.lazy_solve import RidgeHead
from analytic.rls import RLSState
from analytic.validation import check_classes, check_labels

__all__ = ["one_hot", "expand_classes", "trim_classes"]

S = TypeVar("S", GramStats, RLSState, RidgeHead)


def one_hot(labels: Any, classes: int, dtype: Any = None) -> jax.Array:
    """``(n,)`` class ids -> ``(n, classes)`` one-hot targets; ids must lie in ``[0, classes)``."""
    classes = check_classes(classes)
    if classes is None:
        raise TypeError("one_hot needs a class count, got classes=None")
    ids = check_labels(labels, name="labels", classes=classes)
    return jax.nn.one_hot(jnp.asarray(ids), classes, dtype=resolve_dtype(dtype))


def expand_classes(state: S, classes: int) -> S:
    """Zero-pad the class columns of ``GramStats.xty``, ``RidgeHead.stats.xty`` or ``RLSState.weight`` to ``classes``.

    Padding is exact: a class with no rows yet has a zero column in ``XᵀY`` and hence in ``W`` (``W̃`` of the
    recursive update, Zhuang et al., "ACIL", NeurIPS 2022, §3). Shrinking is refused; equal width returns
    ``state`` itself (no device work, and a cached solve of it stays valid).
    """
    if isinstance(state, RidgeHead):
        stats = expand_classes(state.stats, classes)
        return state if stats is state.stats else state._replace(stats=stats)
    if isinstance(state, GramStats):
        field, current = "xty", state.xty
    elif isinstance(state, RLSState):
        field, current = "weight", state.weight
    else:
        raise TypeError(f"expand_classes takes GramStats, RidgeHead or RLSState, got {type(state).__name__}")
    if classes < current.shape[1]:
        raise ValueError(f"expand_classes cannot shrink {current.shape[1]} class columns to {classes}")
    if classes == current.shape[1]:
        return state
    return state._replace(**{field: jnp.pad(current, ((0, 0), (0, classes - current.shape[1])))})


def trim_classes(state: S, classes: int) -> S:
    """``state`` with its class columns cut back to the first ``classes``: undoes :func:`expand_classes` (a refused
    batch that had widened a donated state hands it back wider; see :mod:`continual._donation`)."""
    if isinstance(state, RidgeHead):
        return state._replace(stats=trim_classes(state.stats, classes))
    if isinstance(state, GramStats):
        return state._replace(xty=state.xty[:, :classes])
    if isinstance(state, RLSState):
        return state._replace(weight=state.weight[:, :classes])
    raise TypeError(f"trim_classes takes GramStats, RidgeHead or RLSState, got {type(state).__name__}")
