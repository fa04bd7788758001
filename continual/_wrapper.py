"""Scikit-learn verbs over a functional continual learner.

Each learner module defines pure ``init/update/predict`` functions over a NamedTuple state; its class subclasses
:class:`ContinualClassifier`, which validates input at the boundary, calls those functions and replaces
``self.state`` only after an update has succeeded -- so a call that raises leaves the learner exactly as it was.

One batch path: ``partial_fit`` validates the batch once and hands the learner's ``update`` an
:class:`analytic.validation.PreparedBatch` (rows padded to :func:`analytic.row_bucket`, labels one-hot, one
host-to-device transfer per array); ``update`` validates only raw arrays from direct functional calls.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from analytic import load_state, save_state
from analytic.checkpoint import CheckpointError, check_like
from analytic.validation import (
    MAX_DECLARED_CLASSES,
    PreparedBatch,
    check_classes,
    check_feature_layout,
    check_features,
    check_finite_entries,
    check_labels,
    prepare_batch,
)
from continual._donation import donating

#: Solvers of the learners' heads: additive statistics solved lazily on read, or the Woodbury recursion.
SOLVERS = ("gram", "rls")


def declared_classes(classes: int | Sequence[int] | np.ndarray | None, name: str = "classes") -> int | None:
    """``classes`` as sklearn's ``partial_fit`` accepts it (all class ids, or their count) -> number of columns."""
    if classes is None:
        return None
    if np.ndim(classes) == 0:
        return check_classes(classes.item() if isinstance(classes, np.ndarray) else classes, name=name)
    ids = check_labels(np.asarray(classes), name=name, classes=MAX_DECLARED_CLASSES)
    return int(ids.max()) + 1


def seen_mask(labels: np.ndarray, width: int) -> np.ndarray:
    """Boolean ``(width,)`` mask of the class ids present in ``labels``."""
    mask = np.zeros(width, dtype=bool)
    mask[labels] = True
    return mask


def check_solver(solver: str) -> str:
    """``solver`` must be one of :data:`SOLVERS`."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    return solver


def as_batch(
    x: Any, y: Any, *, dim: int, classes: int, dtype: Any, name: str = "x", validate: bool = True
) -> PreparedBatch:
    """``x`` itself if it is already a :class:`~analytic.validation.PreparedBatch`, else ``(x, y)`` validated and
    prepared by :func:`analytic.validation.prepare_batch` (class ids only: the learners take no dense targets)."""
    if isinstance(x, PreparedBatch):
        return x
    if np.ndim(y) != 1:
        check_labels(y, n=np.shape(x)[0] if np.ndim(x) else None)  # raises the 1-D class-id error
    return prepare_batch(x, y, dim=dim, classes=classes, dtype=dtype, name=name, validate=validate)


def real_rows(features: jax.Array, targets: jax.Array) -> jax.Array:
    """Zero the feature rows whose one-hot target row is empty (padding), so they add nothing to any statistic."""
    return jnp.where(jnp.any(targets != 0, axis=1)[:, None], features, 0.0)


def grow_mask(mask: jax.Array, width: int) -> jax.Array:
    """Pad a boolean class mask with ``False`` up to ``width`` columns."""
    return jnp.pad(mask, (0, max(0, width - mask.shape[0])))


def mask_unseen(logits: jax.Array, seen: jax.Array) -> jax.Array:
    """Logits of never-seen classes set to ``-inf`` so that an all-zero column can never win the argmax."""
    seen = grow_mask(seen, logits.shape[1])[: logits.shape[1]]
    return jnp.where(seen[None, :], logits, -jnp.inf)


_FROM_STATE = "<given: stored in the state>"


class ContinualClassifier:
    """Base of the learners' class wrappers.

    A subclass sets ``_module`` (the functional module: ``init``, ``update``, ``predict``, ``input_dim``,
    ``num_classes``), validates its options and passes them as keywords to ``__init__``; they become attributes
    and :meth:`get_params`. Options named in ``_update_options`` go to ``update``, all others to ``init``.
    ``state`` is ``None`` until the first :meth:`partial_fit`.

    A Gram head (``solver="gram"``) is updated in place by :meth:`partial_fit` (its buffers are donated to the
    compiled step, :mod:`continual._donation`): arrays taken from ``state`` before a call are invalid after it --
    copy them (``np.array(...)``) to keep them; a NumPy view (``np.asarray``) keeps them valid instead, at the cost
    of one copy in the next call. The functional ``update`` never consumes its argument.
    """

    _module: ClassVar[Any]
    _update_options: ClassVar[tuple[str, ...]] = ()
    #: Constructor arguments a checkpoint written before they existed implicitly used.
    _legacy_params: ClassVar[dict[str, Any]] = {}
    #: Array-valued constructor arguments (given weights) -> the state field that holds them. A checkpoint's
    #: metadata records only that they were given (the state holds them); load takes them back from the state.
    _state_params: ClassVar[dict[str, str]] = {}
    state: Any

    def __init__(self, **params: Any) -> None:
        if params.get("dtype") is not None:
            params["dtype"] = np.dtype(params["dtype"]).name  # a JSON-storable name, for checkpoints
        self._param_names = tuple(params)
        for key, value in params.items():
            setattr(self, key, value)
        self.state = None
        self.n_classes_declared_: int | None = None

    # -- hooks ---------------------------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (all JSON-serializable but the given weights of ``_state_params``)."""
        return {key: getattr(self, key) for key in self._param_names}

    def _init_state(self, in_dim: int, classes: int) -> Any:
        params = {k: v for k, v in self.get_params().items() if k not in self._update_options}
        return self._module.init(in_dim, classes, **params)

    def _update(self, state: Any, batch: PreparedBatch) -> Any:
        return self._module.update(state, batch, None, **{k: getattr(self, k) for k in self._update_options})

    def _check_x(self, x: Any, name: str = "x") -> jax.Array:
        return check_features(x, name=name, dim=None if self.state is None else self.n_features_in_)

    def _check_x_host(self, x: Any, name: str = "x") -> Any:
        """:meth:`_check_x` without the transfer: host input stays on the host until :func:`prepare_batch`."""
        x = check_feature_layout(x, name, None if self.state is None else self.n_features_in_, allow_empty=False)
        check_finite_entries(x, name)
        return x

    def _input_width(self, x: jax.Array) -> int:
        return x.shape[1]

    def _padded_rows(self, n: int) -> int | None:
        """Rows to pad a batch of ``n`` to (``None``: :func:`analytic.row_bucket`)."""
        return None

    def _decision(self, state: Any, x: jax.Array) -> jax.Array:
        return self._module.predict(state, x)

    # -- scikit-learn verbs ----------------------------------------------------------------------------------
    @property
    def n_features_in_(self) -> int:
        self._require_fitted()
        return int(self._module.input_dim(self.state))

    def partial_fit(self, x: Any, y: Any, classes: int | Sequence[int] | None = None) -> ContinualClassifier:
        """Learn one batch/phase. ``classes`` (all ids, or their count) fixes the label range and output width."""
        declared = declared_classes(classes)
        if declared is not None and self.n_classes_declared_ is not None:
            declared = max(declared, self.n_classes_declared_)
        declared = self.n_classes_declared_ if declared is None else declared
        if declared is not None and self.state is not None and declared < self._module.num_classes(self.state):
            raise ValueError(f"classes declares {declared} classes but the learner already has "
                             f"{self._module.num_classes(self.state)} class columns")
        x = self._check_x_host(x)
        labels = check_labels(y, classes=declared, n=x.shape[0])
        state = self.state if self.state is not None else self._init_state(self._input_width(x), declared or 0)
        batch = prepare_batch(x, labels, dim=None, classes=self._module.num_classes(state),
                              dtype=self._module.state_dtype(state), validate=False, rows=self._padded_rows(x.shape[0]))
        # The learner owns its state, so its Gram head may be updated in place (continual._donation); a refused
        # batch hands back the unchanged state, which is kept.
        with donating() as donation:
            try:
                new_state = self._update(state, batch)
            except Exception:
                if donation.restored is not None and self.state is not None:
                    self.state = donation.restored
                raise
        # Only now does the learner change: any exception above left it as it was.
        self.state, self.n_classes_declared_ = new_state, declared
        return self

    def fit(self, x: Any, y: Any, classes: int | Sequence[int] | None = None) -> ContinualClassifier:
        """Forget everything and learn ``(x, y)`` as a single phase."""
        fresh = type(self)(**self.get_params())
        fresh.partial_fit(x, y, classes=classes)
        self.state, self.n_classes_declared_ = fresh.state, fresh.n_classes_declared_
        return self

    def decision_function(self, x: Any) -> jax.Array:
        """Class scores ``(n, c)``."""
        self._require_fitted()
        return self._decision(self.state, self._check_x(x))

    def predict(self, x: Any) -> np.ndarray:
        """Predicted class ids ``(n,)``."""
        return np.asarray(jnp.argmax(self.decision_function(x), axis=1))

    def score(self, x: Any, y: Any) -> float:
        """Mean accuracy on ``(x, y)``."""
        x = self._check_x(x)
        labels = check_labels(y, n=x.shape[0])
        return float(np.mean(self.predict(x) == labels))

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save(self, path: str, overwrite: bool = False) -> None:
        """Write the state and constructor arguments with :func:`analytic.save_state` (digest-verified; an
        overwrite leaves the old or the new checkpoint loadable whenever it is interrupted)."""
        self._require_fitted()
        metadata = {
            "learner": type(self).__name__,
            "params": json.loads(json.dumps({k: (_FROM_STATE if k in self._state_params and v is not None else v)
                                             for k, v in self.get_params().items()})),
            "n_classes_declared": self.n_classes_declared_,
        }
        save_state(path, self.state, metadata, overwrite=overwrite)

    @classmethod
    def load(cls, path: str) -> ContinualClassifier:
        """Restore a learner written by :meth:`save`; continuing it equals never having stopped, bit for bit.

        The stored constructor arguments are passed through the constructor's validation, and the stored state must
        have exactly the structure, types, shapes and dtypes of a fresh state built from them; otherwise
        :class:`~analytic.checkpoint.CheckpointError` names the checkpoint and what differs.
        """
        loaded, metadata = load_state(path)
        where = f"checkpoint {Path(path).absolute()}"
        if metadata.get("learner") != cls.__name__:
            raise ValueError(f"{where} holds a {metadata.get('learner')!r} checkpoint, not {cls.__name__}")
        params, declared = metadata.get("params"), metadata.get("n_classes_declared")
        if set(metadata) != {"learner", "params", "n_classes_declared"} or not isinstance(params, dict):
            raise CheckpointError(f"{where}: metadata keys {sorted(metadata)} are not those {cls.__name__}.save writes")
        # Checkpoints written before an option existed were written with its legacy value (e.g. the Woodbury
        # head before `solver` was added); the state structure check below still verifies that.
        params = {**cls._legacy_params, **params}
        if declared is not None and (isinstance(declared, bool) or not isinstance(declared, int) or declared <= 0):
            raise CheckpointError(f"{where}: n_classes_declared={declared!r} is not a positive integer or null")
        try:
            # Given weights live in the state; they are passed back so that `fit` after `load` keeps using them.
            for key, field in cls._state_params.items():
                if params.get(key) == _FROM_STATE:
                    params[key] = getattr(loaded, field)
                elif params.get(key) is not None:
                    raise ValueError(f"{key} must be null or {_FROM_STATE!r} in a checkpoint, got {params[key]!r}")
            learner = cls(**params)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: invalid stored {cls.__name__} arguments: {err}") from err
        try:
            width, classes = int(cls._module.input_dim(loaded)), int(cls._module.num_classes(loaded))
            fresh = learner._init_state(width, classes)
        except Exception as err:  # noqa: BLE001 - a state of the wrong shape can fail anywhere in init
            raise CheckpointError(f"{where}: the stored state does not fit {cls.__name__}({params}): {err}") from err
        check_like(loaded, fresh, f"{where}: state")
        if declared is not None and declared < classes:
            raise CheckpointError(f"{where}: n_classes_declared={declared} but the state has {classes} class columns")
        learner.state = loaded
        learner.n_classes_declared_ = declared
        return learner

    def _require_fitted(self) -> None:
        if self.state is None:
            raise ValueError(f"this {type(self).__name__} has not been fitted yet; call partial_fit first")
