"""Input checks at the public boundary, before anything is traced or jitted.

Every public entry point of the project calls these so that bad input raises a ``TypeError``/``ValueError`` that
names the argument, its shape and the offending value, and so that a failed call never reaches (or changes) a
learner's state. Checks run on the host: they may force a device sync, which is the price of a clear error.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MAX_UNDECLARED_CLASSES", "MAX_DECLARED_CLASSES", "check_features", "check_labels", "check_targets",
    "check_gamma", "check_classes", "as_targets",
]

#: Largest class count a model may grow to from its labels alone. Labels are one-hot encoded, so a single id of
#: ``2**62`` would otherwise ask XLA for an ``(n, 2**62)`` array and abort the process; a stream with more classes
#: than this must declare them (``classes=...``), which makes the memory it will need an explicit decision.
MAX_UNDECLARED_CLASSES = 1 << 16
#: Upper bound on a declared class count (``classes=``): beyond it no head of any width fits in memory.
MAX_DECLARED_CLASSES = 1 << 24


def _shape_str(a: Any) -> str:
    return str(tuple(np.shape(a)))


def _is_tracer(a: Any) -> bool:
    return isinstance(a, jax.core.Tracer)


def check_features(x: Any, name: str = "x", dim: int | None = None, allow_empty: bool = False) -> jax.Array:
    """Validate a feature matrix ``x: (n, d)`` and return it as a JAX array (dtype unchanged).

    Raises ``TypeError`` for non-floating dtypes (integer, boolean, complex, object) and ``ValueError`` for a rank
    other than 2, a width other than ``dim``, an empty batch (unless ``allow_empty``) or NaN/inf entries.
    """
    if not hasattr(x, "dtype"):
        try:
            x = np.asarray(x)
        except Exception as err:  # noqa: BLE001 - re-raised with the argument's name
            raise TypeError(f"{name} must be an array of floats, got {type(x).__name__}") from err
    dtype = np.dtype(x.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating dtype, got {dtype} with shape {_shape_str(x)}; "
            f"cast explicitly (e.g. {name}.astype(np.float32)) so that no precision is lost silently"
        )
    if np.ndim(x) != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {_shape_str(x)}")
    n, d = np.shape(x)
    if dim is not None and d != dim:
        raise ValueError(f"{name} has {d} features (shape {_shape_str(x)}) but {dim} were expected")
    if n == 0 and not allow_empty:
        raise ValueError(f"{name} is an empty batch (shape {_shape_str(x)})")
    x = jnp.asarray(x)
    if not _is_tracer(x) and n and not bool(jnp.isfinite(x).all()):
        bad = int(jnp.size(x) - jnp.isfinite(x).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf entries (shape {_shape_str(x)})")
    return x


def check_labels(labels: Any, name: str = "y", classes: int | None = None, n: int | None = None) -> np.ndarray:
    """Validate integer class ids ``labels: (n,)`` and return them as a NumPy ``int64`` array.

    Float arrays are accepted only if every entry is integral (e.g. labels read from a CSV); booleans are refused.
    ``classes`` (if given) is the declared number of classes: ids must lie in ``[0, classes)``; otherwise ids must
    lie below :data:`MAX_UNDECLARED_CLASSES`, the largest width a model may grow to without a declaration.
    """
    arr = np.asarray(labels)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must hold integer class ids, got dtype {arr.dtype} with shape {_shape_str(arr)}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D class ids (n,), got shape {_shape_str(arr)}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} labels but x has {n} rows")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {_shape_str(arr)})")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            bad = arr[~(np.isfinite(arr) & (arr == np.round(np.nan_to_num(arr))))][:3]
            raise ValueError(f"{name} must hold integer class ids, found non-integer values such as {bad.tolist()}")
    # Compare before casting: a float 1e300 or a uint64 above 2**63 would wrap around in int64.
    low, high = arr.min(), arr.max()
    if low < 0:
        raise ValueError(f"{name} has negative class ids (min {int(low)})")
    limit = MAX_UNDECLARED_CLASSES if classes is None else classes
    if high >= limit:
        if classes is not None:
            raise ValueError(
                f"{name} has class id {int(high)} but only {classes} classes were declared (ids 0..{classes - 1})"
            )
        raise ValueError(
            f"{name} has class id {int(high)}, at or above the {MAX_UNDECLARED_CLASSES} classes a model may grow to "
            f"from its labels; declare the class count explicitly (classes=...) if it is really that large"
        )
    return arr.astype(np.int64)


def check_targets(y: Any, name: str = "y", n: int | None = None) -> jax.Array:
    """Validate dense targets ``y: (n, c)`` (one-hot or real-valued) and return them as a JAX array."""
    if not hasattr(y, "dtype"):
        y = np.asarray(y)
    if not jnp.issubdtype(np.dtype(y.dtype), jnp.floating):
        raise TypeError(f"{name} as dense targets (n, c) must be floating, got {np.dtype(y.dtype)}")
    if np.ndim(y) != 2:
        raise ValueError(f"{name} as dense targets must be 2-D (n, c), got shape {_shape_str(y)}")
    if n is not None and np.shape(y)[0] != n:
        raise ValueError(f"{name} has {np.shape(y)[0]} rows but x has {n} rows")
    y = jnp.asarray(y)
    if not _is_tracer(y) and y.size and not bool(jnp.isfinite(y).all()):
        raise ValueError(f"{name} contains NaN/inf entries (shape {_shape_str(y)})")
    return y


def as_targets(
    y: Any, n: int, classes: int | None, dtype: Any, name: str = "y", declared: int | None = None
) -> tuple[jax.Array, int]:
    """Labels ``(n,)`` or dense targets ``(n, c)`` -> (targets ``(n, width)``, width).

    ``classes`` is the current width of the model (``None`` = no model yet). Integer labels are one-hot encoded with
    width ``max(classes, max_label + 1)`` -- the class-growth rule of recursive least squares (``W̃``, ``W``
    zero-padded with columns for new classes; Zhuang et al., ACIL, NeurIPS 2022); dense targets narrower than
    ``classes`` are zero-padded, wider ones grow the model.
    ``declared`` (a declared class count, validated by :func:`check_classes`) bounds both: ids ``>= declared`` and
    targets wider than it are refused.
    """
    declared = check_classes(declared)
    if np.ndim(y) == 1:
        ids = check_labels(y, name=name, n=n, classes=declared)
        width = max(classes or 0, int(ids.max()) + 1)
        return jax.nn.one_hot(jnp.asarray(ids), width, dtype=dtype), width
    t = check_targets(y, name=name, n=n)
    limit = MAX_UNDECLARED_CLASSES if declared is None else declared
    if t.shape[1] > limit:
        raise ValueError(
            f"{name} has {t.shape[1]} target columns but "
            + (f"only {declared} classes were declared" if declared is not None
               else f"at most {MAX_UNDECLARED_CLASSES} are allowed without declaring classes=")
        )
    t = t.astype(dtype)
    width = max(classes or 0, t.shape[1])
    if t.shape[1] < width:
        t = jnp.pad(t, ((0, 0), (0, width - t.shape[1])))
    return t, width


def check_gamma(gamma: Any, name: str = "gamma") -> float:
    """Ridge strength must be a finite real number > 0 (the ridge system is then positive definite)."""
    try:
        value = float(gamma)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a positive real number, got {gamma!r}") from err
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return value


def check_classes(classes: Any, name: str = "classes") -> int | None:
    """A declared class count: ``None`` (grow from the labels) or an integer in ``[1, MAX_DECLARED_CLASSES]``.

    Floats are refused even when integral (``2.5`` would otherwise truncate to 2), and so are strings and booleans.
    """
    if classes is None:
        return None
    if isinstance(classes, bool | np.bool_) or not isinstance(classes, int | np.integer):
        raise TypeError(f"{name} must be an integer class count or None, got {type(classes).__name__} {classes!r}")
    count = int(classes)
    if not 1 <= count <= MAX_DECLARED_CLASSES:
        raise ValueError(f"{name} must be between 1 and {MAX_DECLARED_CLASSES}, got {count}")
    return count
