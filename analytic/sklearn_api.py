"""The scikit-learn face of every classifier here: labels, input conversion, and the read-out verbs.

Every estimator class of the project (:class:`analytic.AnalyticLinear`, the continual learners, the baselines)
derives from :class:`LabelledClassifier`, a ``ClassifierMixin`` + ``BaseEstimator``: its constructor only stores
its arguments (validation happens in ``fit``/``partial_fit``), ``get_params``/``set_params``/``clone`` work, and
``classes_`` maps class columns back to the caller's labels.

Labels (:class:`ClassLabels`). The papers' code, and this library's functional core, index class columns by
*class id*: a label ``k >= 0`` is column ``k``, and a new id widens the head (ACIL's class-growth rule). That stays
the rule whenever the labels are non-negative integers, so ``classes_ = arange(width)`` and the columns agree with
the authors' logits. Any other labels (strings, negative integers, ``{-1, 1}``, ...) are encoded: the labels of
the first call take columns in sorted order, each later call appends its new labels (sorted) after them -- a
column, once given, never moves, which is what lets a continual learner keep its statistics. ``partial_fit``'s
``classes=`` (all labels up front, or a class count) fixes the columns instead.

Inputs. A floating NumPy or JAX matrix takes the fast path of :mod:`analytic.validation` (no copy). Anything else
-- lists, integer or boolean arrays, object arrays of numbers, data frames -- is converted by scikit-learn's
``check_array`` (sparse, complex and non-numeric input are refused with its messages). The functional core keeps
its stricter rule (floats only, cast explicitly).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning, NotFittedError
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array

from analytic.validation import (
    MAX_DECLARED_CLASSES,
    MAX_UNDECLARED_CLASSES,
    check_classes,
    check_feature_layout,
    check_finite_entries,
    check_labels,
)

__all__ = ["ClassLabels", "LabelledClassifier", "as_features", "as_label_vector"]


def _is_id_array(y: np.ndarray) -> bool:
    """Non-negative integer values (integer dtype, or integral floats as read from a CSV); booleans are labels."""
    if y.dtype == bool or y.dtype.kind not in "iuf":
        return False
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and np.all(y == np.round(y))):
        return False
    return bool(y.size == 0 or y.min() >= 0)


class ClassLabels(NamedTuple):
    """Map between a classifier's labels and its class columns.

    ``values is None``: class-id mode, label ``k`` is column ``k``. Otherwise ``values[j]`` is the label of column
    ``j`` (sorted within each call that introduced it, never reordered).
    """

    values: np.ndarray | None

    def classes(self, width: int) -> np.ndarray:
        """``classes_`` of a head with ``width`` columns."""
        return np.arange(width) if self.values is None else self.values

    def decode(self, columns: np.ndarray) -> np.ndarray:
        """Column indices -> labels."""
        return columns if self.values is None else self.values[columns]

    def to_json(self) -> dict[str, Any] | None:
        """JSON-storable form for checkpoint metadata (``None`` in class-id mode)."""
        if self.values is None:
            return None
        values = self.values.tolist()
        if self.values.dtype == object and not all(isinstance(v, str | int | float | bool) for v in values):
            raise TypeError("labels other than strings and numbers cannot be stored in a checkpoint")
        return {"dtype": self.values.dtype.str if self.values.dtype != object else "object", "values": values}

    @classmethod
    def from_json(cls, stored: Any, width: int) -> ClassLabels:
        """Inverse of :meth:`to_json`; ``ValueError`` unless it describes ``width`` distinct labels."""
        if stored is None:
            return cls(None)
        if not isinstance(stored, dict) or set(stored) != {"dtype", "values"} or not isinstance(stored["values"], list):
            raise ValueError(f"labels must be null or {{'dtype', 'values'}}, got {stored!r}")
        dtype = np.dtype(object) if stored["dtype"] == "object" else np.dtype(stored["dtype"])
        if dtype.kind not in "iufUSOb":
            raise ValueError(f"label dtype {dtype} is not one a classifier writes")
        values = np.asarray(stored["values"], dtype=dtype)
        if values.ndim != 1 or values.size != width or np.unique(values).size != width:
            raise ValueError(f"labels must be {width} distinct values (one per class column), got {values.size}")
        return cls(values)


def as_label_vector(y: Any, name: str = "y") -> np.ndarray:
    """``y`` as a 1-D NumPy array of class labels, by scikit-learn's rules: ``None`` is refused, an ``(n, 1)``
    column is flattened with a ``DataConversionWarning``, continuous or multi-label targets are refused."""
    if y is None:
        raise ValueError(f"this classifier requires y to be passed, but the target {name} is None")
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        warnings.warn(f"A column-vector {name} was passed when a 1d array was expected; it is flattened",
                      DataConversionWarning, stacklevel=3)
        arr = arr.ravel()
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D class labels (n,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if arr.dtype.kind in "iub":  # integers and booleans are always class labels: skip the costly type inference
        return arr
    try:
        check_classification_targets(arr)  # "Unknown label type: continuous" and friends, as every sklearn classifier
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err
    return arr


def encode_labels(
    labels: ClassLabels | None, y: np.ndarray, declared: Any, declared_before: int | None, name: str = "y"
) -> tuple[ClassLabels, np.ndarray, int | None]:
    """Labels ``y`` (from :func:`as_label_vector`) -> (label map, column ids ``int64``, declared class count).

    ``labels`` is the current map (``None``: nothing learned yet), ``declared`` what ``partial_fit`` got as
    ``classes=`` (a class count, all labels up front, or ``None``) and ``declared_before`` the count an earlier call
    declared. Nothing is changed on error; the caller commits the returned map once the batch has been learned.
    """
    declared_values = None
    if declared is not None and np.ndim(declared) > 0:
        declared_values = np.unique(np.asarray(declared))
        if declared_values.size == 0:
            raise ValueError("classes must list at least one label")
    id_input = _is_id_array(y) and (declared_values is None or _is_id_array(declared_values))
    if labels is None:
        labels = ClassLabels(None if id_input else np.zeros(0, y.dtype if declared_values is None
                                                            else np.result_type(y, declared_values)))
    if labels.values is None:
        if not id_input:
            shown = np.unique(y)[:3].tolist()
            raise ValueError(f"{name} holds labels such as {shown}, but this classifier was fitted on class ids "
                             "(non-negative integers, one column each); call fit to start over with these labels")
        count = None
        if declared_values is not None:
            count = int(check_labels(declared_values, name="classes", classes=MAX_DECLARED_CLASSES).max()) + 1
        elif declared is not None:
            count = check_classes(declared.item() if isinstance(declared, np.generic) else declared)
        if declared_before is not None:
            count = declared_before if count is None else max(count, declared_before)
        return labels, check_labels(y, name=name, classes=count), count
    if declared is not None and declared_values is None:
        raise TypeError("classes must list the labels (an array) for a classifier fitted on labels other than "
                        f"class ids, got the count {declared!r}")
    known, count = labels.values, declared_before
    try:
        if declared_values is not None:
            extra = np.setdiff1d(declared_values, known)
            if extra.size and declared_before is not None:
                raise ValueError(f"classes lists labels {extra[:3].tolist()} beyond the {declared_before} declared "
                                 "before; call fit to start over")
            known = np.concatenate([known, extra]) if extra.size else known
            count = int(known.size)
        new = np.setdiff1d(np.unique(y), known)
    except TypeError as err:  # e.g. strings against numbers
        raise TypeError(f"{name} mixes label types with those already learned ({known.dtype}): {err}") from err
    if new.size and count is not None:
        raise ValueError(f"{name} has labels {new[:3].tolist()} not among the {count} declared classes")
    values = np.concatenate([known, new]) if new.size else known
    if values.size > MAX_UNDECLARED_CLASSES:
        raise ValueError(f"{name} brings the classifier to {values.size} classes, above {MAX_UNDECLARED_CLASSES}")
    order = np.argsort(values, kind="stable")
    columns = order[np.searchsorted(values[order], y)].astype(np.int64)
    return ClassLabels(values), columns, count


def as_features(x: Any, name: str = "x", allow_nd: bool = False) -> Any:
    """``x`` as a floating host or device array: floating NumPy/JAX arrays as they are (checked later by
    :mod:`analytic.validation`), anything else through scikit-learn's ``check_array`` (lists, integers, booleans,
    object arrays of numbers; sparse, complex and strings are refused)."""
    if isinstance(x, np.ndarray | jax.Array) and jnp.issubdtype(x.dtype, jnp.floating):
        return x
    if hasattr(x, "dtype") and jnp.issubdtype(np.dtype(x.dtype), jnp.complexfloating):
        raise ValueError(f"Complex data not supported: {name} has dtype {x.dtype}")
    try:
        return check_array(x, dtype=[np.float64, np.float32], allow_nd=allow_nd, ensure_all_finite=True,
                           input_name=name, ensure_min_samples=1)
    except (TypeError, ValueError) as err:  # scikit-learn's message, prefixed with the argument it is about
        raise type(err)(f"{name}: {err}") from err


def same_value(a: Any, b: Any) -> bool:
    """Whether two argument values are equal (arrays and lists elementwise; incomparable values differ)."""
    if a is b:
        return True
    if isinstance(a, np.ndarray | jax.Array | list) or isinstance(b, np.ndarray | jax.Array | list):
        try:
            return bool(np.array_equal(np.asarray(a), np.asarray(b)))
        except Exception:  # noqa: BLE001 - incomparable values differ
            return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001
        return False


@functools.cache
def _param_names(cls: type) -> tuple[str, ...]:
    """``BaseEstimator._get_param_names`` of ``cls``, once per class."""
    return tuple(BaseEstimator._get_param_names.__func__(cls))


class LabelledClassifier(ClassifierMixin, BaseEstimator):
    """``ClassifierMixin`` + ``BaseEstimator`` read-out over class scores ``(n, c)``.

    A subclass implements ``_scores(x) -> (n, c)`` (validated scores of every class column), ``_fitted()`` and
    keeps its label map in ``self._labels`` (:class:`ClassLabels`, ``None`` before fitting).
    """

    _labels: ClassLabels | None = None
    _declared: int | None = None

    @classmethod
    def _get_param_names(cls) -> list[str]:
        # scikit-learn re-reads the constructor's signature with ``inspect`` on every get_params; a learner's
        # partial_fit validates its parameters per batch, and that read was ~0.2 ms of a 10-row step. The
        # signature of a class does not change, so it is read once per class.
        return list(_param_names(cls))

    @property
    def n_classes_declared_(self) -> int | None:
        """The class count fixed by ``classes=`` (``None``: the head grows with the labels)."""
        return self._declared

    def _scores(self, x: Any) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fitted(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __sklearn_is_fitted__(self) -> bool:
        return self._fitted()

    def _require_fitted(self) -> None:
        if not self._fitted():
            raise NotFittedError(f"this {type(self).__name__} has not been fitted yet; call fit or partial_fit first")

    def _check_input(self, x: Any, expected: int | None, name: str = "x") -> Any:
        """Features as every estimator takes them: converted by :func:`as_features`, 2-D and non-empty,
        ``expected`` wide (``None``: any width; scikit-learn's message otherwise) and finite. Host input stays on the
        host."""
        x = check_feature_layout(as_features(x, name), name, None, allow_empty=False)
        if expected is not None:
            self._check_dim(x.shape[1], expected, name)
        check_finite_entries(x, name)
        return x

    def _refuse_changed(self, params: dict[str, Any], fitted: dict[str, Any]) -> None:
        """Refuse to go on learning when ``set_params`` changed an argument the fitted state depends on."""
        changed = sorted(k for k, v in params.items() if not same_value(v, fitted[k]))
        if changed:
            raise ValueError(f"{', '.join(changed)} changed (set_params) since this {type(self).__name__}'s state "
                             "was built with other values; call fit to start over with the new ones")

    def fit(self, x: Any, y: Any, classes: Any = None) -> LabelledClassifier:
        """Forget everything and learn ``(x, y)`` with the current arguments (one phase, for a continual learner);
        on error the previous fit is kept. A fresh estimator learns, then its fitted (private) state is taken."""
        fresh = type(self)(**self.get_params(deep=False)).partial_fit(x, y, classes)
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k.startswith("_")})
        return self

    def _check_dim(self, d: int, expected: int, name: str = "x") -> None:
        if d != expected:  # scikit-learn's wording, after the argument's name
            raise ValueError(f"{name}: X has {d} features, but {type(self).__name__} is expecting {expected} "
                             "features as input")

    def class_scores(self, x: Any) -> jax.Array:
        """Scores of every class column, ``(n, c)`` whatever ``c`` (the continual-learning read-out)."""
        self._require_fitted()
        return self._scores(x)

    def decision_function(self, x: Any) -> np.ndarray:
        """scikit-learn's decision function: ``(n, c)`` scores, or for two classes the ``(n,)`` margin of
        ``classes_[1]`` over ``classes_[0]`` (positive -> ``classes_[1]``)."""
        scores = np.asarray(self.class_scores(x))
        return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores

    def predict(self, x: Any) -> np.ndarray:
        """Predicted labels ``(n,)`` (elements of ``classes_``)."""
        columns = np.asarray(jnp.argmax(self.class_scores(x), axis=1))
        return self._labels.decode(columns) if self._labels is not None else columns

    @property
    def classes_(self) -> np.ndarray:
        """Label of each class column (``arange(c)`` for class ids)."""
        self._require_fitted()
        return (self._labels or ClassLabels(None)).classes(self._width())

    def _width(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError
