"""Input checks at the public boundary, before anything is traced or jitted.

Every public entry point of the project calls these so that bad input raises a ``TypeError``/``ValueError`` that
names the argument, its shape and the offending value, and so that a failed call never reaches (or changes) a
learner's state. Checks run on the host: they may force a device sync, which is the price of a clear error.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MAX_UNDECLARED_CLASSES", "MAX_DECLARED_CLASSES", "check_features", "check_labels", "check_targets",
    "check_gamma", "check_classes", "as_targets", "PreparedBatch", "prepare_batch", "check_feature_layout",
    "check_weights", "check_finite_entries",
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
    x = check_feature_layout(x, name, dim, allow_empty)
    check_finite_entries(x, name)
    return jnp.asarray(x)


def check_feature_layout(x: Any, name: str, dim: int | None, allow_empty: bool) -> Any:
    """Dtype, rank, width and emptiness checks of :func:`check_features`; returns ``x`` (host arrays stay host)."""
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
        raise ValueError(f"{name} must be 2-D (n, d), got shape {_shape_str(x)}; Reshape your data with "
                         f"{name}.reshape(-1, 1) for a single feature or {name}.reshape(1, -1) for one sample")
    n, d = np.shape(x)
    if d == 0:  # scikit-learn's wording
        raise ValueError(f"{name} has 0 feature(s) (shape=({n}, 0)) while a minimum of 1 is required.")
    if dim is not None and d != dim:
        raise ValueError(f"{name} has {d} features (shape {_shape_str(x)}) but {dim} were expected")
    if n == 0 and not allow_empty:
        raise ValueError(f"{name} is an empty batch (shape {_shape_str(x)})")
    return x


def check_weights(value: Any, name: str, ndim: int, dtype: Any) -> jax.Array:
    """A given weight array (a buffer's ``A`` or ``b``, a projection): an array of floats with ``ndim`` axes, none
    empty, all entries finite; returned as a JAX array of ``dtype``. ``TypeError``/``ValueError`` name it."""
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(value).__name__}")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating, got dtype {value.dtype}")
    if value.ndim != ndim or 0 in value.shape:
        raise ValueError(f"{name} must be a non-empty {ndim}-D array, got shape {tuple(value.shape)}")
    value = jnp.asarray(value, dtype)
    if not bool(jnp.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or inf entries")
    return value


def check_finite_entries(x: Any, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if ``x`` has NaN/inf entries (tracers are skipped).

    Host (NumPy) arrays are checked on the host: no transfer and no device round trip just to read one flag.
    """
    if _is_tracer(x) or not np.size(x):
        return
    finite = np.isfinite(x) if isinstance(x, np.ndarray) else jnp.isfinite(x)
    if not bool(finite.all()):
        bad = int(np.size(x) - int(finite.sum()))
        raise ValueError(f"{name} contains {bad} NaN/inf entries (shape {_shape_str(x)})")


def _host_features(x: Any, name: str, dim: int | None, validate: bool) -> np.ndarray | jax.Array:
    """``x`` validated like :func:`check_features` (any rank when ``validate`` is off), not yet transferred."""
    if not validate:
        return x if hasattr(x, "dtype") else np.asarray(x)
    x = check_feature_layout(x, name, dim, allow_empty=False)
    check_finite_entries(x, name)
    return x if isinstance(x, np.ndarray) else jnp.asarray(x)


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


class PreparedBatch(NamedTuple):
    """A validated batch, padded and encoded once, ready for any jitted step.

    Attributes:
      x: ``(rows, ...)`` features zero-padded to ``rows = row_bucket(n)`` (device array, the caller's dtype).
      targets: ``(rows, width)`` targets in the state's dtype: one-hot rows for class ids, zero rows for padding.
      labels: ``(n,)`` host ``int64`` class ids, or ``None`` for dense targets.
      n: number of real rows.
      width: class columns the state must have for this batch (``max(classes, max id + 1)`` or the target width).
      host_x: the unpadded features as given (host or device), for error messages on the failure path only.
    """

    x: jax.Array
    targets: jax.Array
    labels: np.ndarray | None
    n: int
    width: int
    host_x: Any


def prepare_batch(
    x: Any, y: Any, *, dim: int | None, classes: int | None, declared: int | None = None, dtype: Any = None,
    name: str = "x", validate: bool = True, rows: int | None = None,
) -> PreparedBatch:
    """Validate ``x``/``y`` once, pad the rows to :func:`analytic.dtypes.row_bucket` and one-hot the labels.

    The single batch path of every learner: ``x: (n, d)`` features (``validate=False``: any rank, already checked
    by the caller, e.g. F-OAL's ``(n, L, D)`` tokens), ``y``: class ids ``(n,)`` or dense targets ``(n, c')``.
    ``classes`` is the state's current width, ``declared`` a declared class count (ids ``>= declared`` are refused,
    :func:`as_targets`). For host (NumPy) input, every check, the padding and the one-hot encoding run in NumPy and
    each array crosses to the device once; device input is padded on the device. Zero padding is exact for every
    statistic of this library (module docstring of :mod:`analytic.dtypes`). ``rows`` overrides the padded size.
    """
    from analytic.dtypes import resolve_dtype, row_bucket

    dt = resolve_dtype(dtype)
    feats = _host_features(x, name, dim, validate)
    n = int(np.shape(feats)[0])
    rows = row_bucket(n) if rows is None else max(int(rows), n)
    declared = check_classes(declared)
    if np.ndim(y) == 1:
        labels = check_labels(y, name="y", n=n, classes=declared)
        width = max(classes or 0, int(labels.max()) + 1)
        targets = np.zeros((rows, width), dt)
        targets[np.arange(n), labels] = 1.0
    else:
        labels = None
        dense, width = as_targets(y, n, classes, dt, declared=declared)
        targets = jnp.pad(dense, ((0, rows - n), (0, 0))) if rows > n else dense
    if isinstance(feats, np.ndarray):
        padded = np.zeros((rows,) + feats.shape[1:], feats.dtype)
        padded[:n] = feats
    else:
        padded = jnp.pad(feats, ((0, rows - n),) + ((0, 0),) * (feats.ndim - 1)) if rows > n else feats
    # One device_put for both arrays: one dispatch, and host arrays cross to the device exactly once.
    device_x, targets = jax.device_put((padded, targets))
    return PreparedBatch(device_x, targets, labels, n, width, feats)


def check_gamma(gamma: Any, name: str = "gamma") -> float:
    """Ridge strength must be a finite real number > 0 (the ridge system is then positive definite). Booleans and
    strings are refused although ``float`` would take them (``True`` would silently mean γ = 1)."""
    if isinstance(gamma, bool | np.bool_ | str | bytes):
        raise TypeError(f"{name} must be a positive real number, got {type(gamma).__name__} {gamma!r}")
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
