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
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from analytic import load_state, save_state
from analytic.checkpoint import CheckpointError, check_like
from analytic.sklearn_api import ClassLabels, LabelledClassifier, as_label_vector, encode_labels
from analytic.validation import PreparedBatch, check_gamma, check_labels, prepare_batch
from continual._donation import donating
from continual._held_back import HeldBackRows

#: Solvers of the learners' heads: additive statistics solved lazily on read, or the Woodbury recursion.
SOLVERS = ("gram", "rls")


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


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """An integer option ``>= minimum`` (integral floats such as ``10.0`` accepted, booleans refused)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer | float | np.floating):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if not np.isfinite(value) or value != int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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


def _json_value(value: Any) -> Any:
    """A validated constructor argument in its JSON-storable form (dtypes by name, arrays as lists)."""
    if isinstance(value, np.dtype | type):
        return np.dtype(value).name
    if isinstance(value, np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    return value


class ContinualClassifier(HeldBackRows, LabelledClassifier):
    """Base of the learners' class wrappers: a scikit-learn ``ClassifierMixin`` + ``BaseEstimator``.

    A subclass sets ``_module`` (the functional module: ``init``, ``update``, ``predict``, ``input_dim``,
    ``num_classes``), stores its constructor arguments unchanged (scikit-learn's rule; ``get_params``/``set_params``
    and ``clone`` read them) and validates them in :meth:`_checked_params`, which every ``fit``/``partial_fit`` calls
    first. Options named in ``_update_options`` go to ``update``, all others to ``init``. ``state`` is ``None``
    until the first :meth:`partial_fit`; the arguments it was built with are kept with it, and a ``partial_fit``
    after ``set_params`` changed one of them is refused (``fit`` starts over with the new ones).

    Labels follow :class:`analytic.sklearn_api.ClassLabels`: non-negative integer labels are class ids (column
    ``k`` is class ``k``, as in the papers' code), other labels are mapped to columns in order of arrival.

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

    def __init__(self, **params: Any) -> None:
        for key, value in params.items():
            setattr(self, key, value)
        self._state: Any = None
        self._labels = None
        self._declared: int | None = None
        self._fit_params: dict[str, Any] | None = None

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def state(self) -> Any:
        """The functional learner state (``None`` before the first :meth:`partial_fit`)."""
        return self._state

    @state.setter
    def state(self, value: Any) -> None:
        self._state = value

    def _fitted(self) -> bool:
        return self.__dict__.get("_stored") is not None

    def _width(self) -> int:
        return int(self._module.num_classes(self._state))

    # -- hooks ---------------------------------------------------------------------------------------------
    def _checked_params(self) -> dict[str, Any]:
        """The constructor arguments validated and normalized (``ValueError``/``TypeError`` naming the argument);
        subclasses extend it. ``gamma`` and ``solver`` are checked here for every learner that has them; the dtype is
        kept by name, so that the arguments are JSON-storable in checkpoints."""
        params = self.get_params(deep=False)
        if "gamma" in params:
            params["gamma"] = check_gamma(params["gamma"])
        if params.get("solver") is not None:
            check_solver(params["solver"])
        if params.get("dtype") is not None:
            try:
                params["dtype"] = np.dtype(params["dtype"]).name
            except TypeError as err:
                raise TypeError(f"dtype must be a NumPy dtype or None, got {params['dtype']!r}") from err
        return params

    def _params(self) -> dict[str, Any]:
        """The arguments the current state was built with (validated now if there is no state yet)."""
        return self._fit_params if self._fit_params is not None else self._checked_params()

    def _init_state(self, in_dim: int, classes: int, params: dict[str, Any] | None = None) -> Any:
        params = {k: v for k, v in (params or self._params()).items() if k not in self._update_options}
        return self._module.init(in_dim, classes, **params)

    def _update(self, state: Any, batch: PreparedBatch) -> Any:
        params = self._params()
        return self._module.update(state, batch, None, **{k: params[k] for k in self._update_options})

    def _check_x(self, x: Any, name: str = "x") -> jax.Array:
        return jnp.asarray(self._check_x_host(x, name))

    def _check_x_host(self, x: Any, name: str = "x") -> Any:
        """Validated features; host input stays on the host until :func:`prepare_batch`."""
        stored = self.__dict__.get("_stored")  # the input width: no need to learn held-back rows for it
        return self._check_input(x, None if stored is None else int(self._module.input_dim(stored)), name)

    def _input_width(self, x: jax.Array) -> int:
        return x.shape[1]

    def _padded_rows(self, n: int) -> int | None:
        """Rows to pad a batch of ``n`` to (``None``: :func:`analytic.row_bucket`)."""
        return None

    def _decision(self, state: Any, x: jax.Array) -> jax.Array:
        return self._module.predict(state, x)

    def _scores(self, x: Any) -> jax.Array:
        return self._decision(self._state, self._check_x(x))

    # -- scikit-learn verbs ----------------------------------------------------------------------------------
    @property
    def n_features_in_(self) -> int:
        self._require_fitted()
        return int(self._module.input_dim(self._state))

    def partial_fit(self, x: Any, y: Any, classes: Any = None) -> ContinualClassifier:
        """Learn one batch/phase. ``classes`` (all labels, or their count) fixes the label set and output width.

        Where the head is additive statistics (a ``"gram"`` ACIL/GACL head), a batch of fewer than
        ``_coalesce_below`` (64) rows may be held back and learned together with the next ones -- at the next read of
        the learner (a prediction, ``coef_``, ``state``) or once ``_coalesce_rows`` (256) rows have gathered
        (:meth:`save` writes them beside the state) -- which gives the same statistics up to rounding and spares
        a pass over the ``d×d`` Gram per small batch. Such a batch is validated in full now, and
        held back only if a bound on its features proves that learning it cannot overflow (:meth:`_coalesce`);
        otherwise it is learned at once, so a batch that would be refused still raises from its own call."""
        params = self._checked_params()
        stored = self.__dict__.get("_stored")
        if stored is not None:
            self._refuse_changed(params, self._fit_params)
        else:
            self._fit_params = params
        x = self._check_x_host(x)
        y = as_label_vector(y)
        labels, ids, declared = encode_labels(self._labels, y, classes, self._declared)
        width = 0 if stored is None else self._pending_width(stored)
        if declared is not None and declared < width:
            raise ValueError(f"classes declares {declared} classes but the learner already has {width} class columns")
        if ids.shape[0] != x.shape[0]:
            raise ValueError(f"y has {ids.shape[0]} labels but x has {x.shape[0]} rows")
        if stored is not None and self._coalesce(stored, x, ids):
            self._labels, self._declared = labels, declared
            if self._pending_rows >= self._coalesce_rows:
                self._flush()
            return self
        state = self._state if stored is not None else self._init_state(self._input_width(x), declared or 0)
        new_state = self._learn(state, x, ids)
        # Only now does the learner change: any exception above left it as it was.
        self._state, self._labels, self._declared = new_state, labels, declared
        return self

    def _learn(self, state: Any, x: Any, ids: np.ndarray) -> Any:
        """``update`` on one prepared batch. The learner owns its state, so its Gram head may be updated in place
        (continual._donation); a refused batch hands back the unchanged state, which is kept."""
        batch = prepare_batch(x, ids, dim=None, classes=self._module.num_classes(state),
                              dtype=self._module.state_dtype(state), validate=False, rows=self._padded_rows(x.shape[0]))
        with donating() as donation:
            try:
                return self._update(state, batch)
            except Exception:
                if donation.restored is not None and self.__dict__.get("_stored") is not None:
                    self.__dict__["_stored"] = donation.restored
                raise

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save(self, path: str, overwrite: bool = False) -> None:
        """Write the state, the constructor arguments (those the state was built with) and the label map with
        :func:`analytic.save_state` (digest-verified; an overwrite leaves the old or the new checkpoint loadable
        whenever it is interrupted). Rows held back by :meth:`partial_fit` are written as they are, beside the
        state, so that a loaded learner goes on exactly as this one would."""
        self._require_fitted()
        self._refuse_changed(self._checked_params(), self._fit_params)
        params = {k: (_FROM_STATE if k in self._state_params and v is not None else _json_value(v))
                  for k, v in self.get_params(deep=False).items()}
        metadata = {
            "learner": type(self).__name__,
            "params": json.loads(json.dumps(params)),
            "n_classes_declared": self._declared,
            "labels": (self._labels or ClassLabels(None)).to_json(),
        }
        tree, held_back = self._held_back_tree(self.__dict__["_stored"])
        if held_back:
            metadata["held_back_rows"] = held_back
        save_state(path, tree, metadata, overwrite=overwrite)

    @classmethod
    def load(cls, path: str) -> ContinualClassifier:
        """Restore a learner written by :meth:`save`; continuing it equals never having stopped, bit for bit.

        The stored constructor arguments pass the same validation as ``fit``'s, and the stored state must have
        exactly the structure, types, shapes and dtypes of a fresh state built from them; otherwise
        :class:`~analytic.checkpoint.CheckpointError` names the checkpoint and what differs.
        """
        loaded, metadata = load_state(path)
        where = f"checkpoint {Path(path).absolute()}"
        held_back = None
        if "held_back_rows" in metadata:
            rows = metadata.pop("held_back_rows")
            if not (isinstance(loaded, dict) and set(loaded) == {"state", "held_back_x", "held_back_ids"}):
                raise CheckpointError(f"{where}: held_back_rows is set but the rows are not stored beside the state")
            held_back, loaded = (loaded["held_back_x"], loaded["held_back_ids"]), loaded["state"]
            if isinstance(rows, bool) or not isinstance(rows, int) or held_back[1].shape != (rows,) \
                    or held_back[0].shape[:1] != (rows,):
                raise CheckpointError(f"{where}: held_back_rows={rows!r} does not match the stored rows")
        if metadata.get("learner") != cls.__name__:
            raise ValueError(f"{where} holds a {metadata.get('learner')!r} checkpoint, not {cls.__name__}")
        params, declared = metadata.get("params"), metadata.get("n_classes_declared")
        # Checkpoints written before labels were stored hold class ids ("labels" absent).
        if set(metadata) - {"labels"} != {"learner", "params", "n_classes_declared"} or not isinstance(params, dict):
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
            checked = learner._checked_params()
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: invalid stored {cls.__name__} arguments: {err}") from err
        try:
            width, classes = int(cls._module.input_dim(loaded)), int(cls._module.num_classes(loaded))
            fresh = learner._init_state(width, classes, checked)
        except Exception as err:  # noqa: BLE001 - a state of the wrong shape can fail anywhere in init
            raise CheckpointError(f"{where}: the stored state does not fit {cls.__name__}({params}): {err}") from err
        check_like(loaded, fresh, f"{where}: state")
        if declared is not None and declared < classes:
            raise CheckpointError(f"{where}: n_classes_declared={declared} but the state has {classes} class columns")
        try:
            labels = ClassLabels.from_json(metadata.get("labels"), classes)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: {err}") from err
        learner._state, learner._labels, learner._declared, learner._fit_params = loaded, labels, declared, checked
        if held_back is not None:
            learner._restore_held_back(*held_back, where)
        return learner
