"""L3A: label-augmented analytic adaptation for multi-label class-incremental learning.

Zhang et al., "L3A: Label-Augmented Analytic Adaptation for Multi-Label Class Incremental Learning", ICML 2025.
A frozen backbone's features pass through a fixed random buffer ``φ(x) = relu(x A)`` (the paper's expansion layer;
4096 units and no bias in the authors' code) and a multi-label ridge head is solved in closed form after every
task from two modules:

* **Pseudo-label (PL) module** (Algorithm 1). Task ``t``'s targets carry only its own classes (label absence,
  :mod:`continual.multilabel`). Before learning task ``t`` the previous head scores the task's rows on the old
  classes and every old class with ``sigmoid(φ(x) W_{t−1}) > τ`` is added as a target (τ = 0.7 in the authors'
  configs). The augmented targets are ``Ỹ = Y ∨ [σ(Φ W_{t−1}) > τ]`` on the old columns.
* **Weighted analytic classifier (WAC)** (Algorithm 1, its sample-specific weights). Each row gets one
  scalar weight ``ω_i = (1/|L_i|) Σ_{k∈L_i} n̄_k`` over its (augmented) label set ``L_i``, where
  ``n̄ = C · f / Σ f`` with ``f_k = N_k^{-1/2}`` (0 for a class never counted) and ``N_k`` the number of *annotated*
  positives of class ``k`` counted over all tasks up to ``t`` (the authors count the loader's targets before
  pseudo-labelling; ``C`` is the number of classes seen). The head is the weighted ridge solution

      ``W_t = (Σ_{j≤t} Φ_jᵀ Ω_j Φ_j + γI)⁻¹ Σ_{j≤t} Φ_jᵀ Ω_j Ỹ_j``,   ``Ω_j = diag(ω)``,

  each row weighted with the ``ω`` of the task it came in (weights are not revisited later: the statistics are
  additive). As ``Ω`` is per *row*, all target columns share one system, so ``W_t`` is one joint weighted
  solution. The authors' code accumulates the same ``ΦᵀΩΦ`` and ``ΦᵀΩỸ`` and inverts ``ΦᵀΩΦ + γI`` after each
  task; here they are additive statistics (:class:`analytic.GramStats`) solved once per task by Cholesky
  (:func:`analytic.ridge_solve`).

``update`` is one task (one phase): the class weights use the counts *including* that task, which needs the whole
task at once, as in the authors' code. ``weighted=False`` sets ``ω = 1`` and ``pseudo_label=False`` skips PL; both
off gives the plain multi-label analytic ridge (ACIL's recursion on multi-hot targets).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from analytic import GramStats, RandomBuffer, gram_accumulate, gram_init, load_state, ridge_solve, save_state
from analytic.buffers import learner_buffer
from analytic.checkpoint import CheckpointError, check_like, register_checkpoint_type
from analytic.classes import expand_classes
from analytic.dtypes import HIGHEST, resolve_dtype
from analytic.validation import check_features, check_gamma
from continual._wrapper import positive_int

__all__ = ["L3AState", "L3AInfo", "init", "update", "predict", "class_weights", "sample_weights", "L3A"]


@register_checkpoint_type
class L3AState(NamedTuple):
    """``buffer`` -- the fixed :class:`analytic.RandomBuffer`; ``stats`` -- weighted ``(ΦᵀΩΦ, ΦᵀΩỸ, rows)``;
    ``counts`` -- ``(c,)`` annotated positives per class so far; ``weight`` -- the solved head ``(buffer, c)``."""

    buffer: RandomBuffer
    stats: GramStats
    counts: jax.Array
    weight: jax.Array


class L3AInfo(NamedTuple):
    """What one :func:`update` used: ``targets`` -- the augmented ``Ỹ (n, c)``; ``weights`` -- ``ω (n,)``."""

    targets: np.ndarray
    weights: np.ndarray


def init(in_dim: int, classes: int = 0, *, buffer_size: int = 4096, activation: str = "relu",
         buffer_init: str = "normal", seed: int = 0, dtype: Any = None, buffer: RandomBuffer | None = None
         ) -> L3AState:
    """Buffer (given, or seeded with ``buffer_size`` units; 4096 as in the authors' configs) and empty statistics."""
    dt = resolve_dtype(dtype)
    buffer = learner_buffer(buffer, positive_int(in_dim, "in_dim"), None if buffer is not None else
                            positive_int(buffer_size, "buffer_size"), activation, seed, buffer_init, dt)
    classes = positive_int(classes, "classes", minimum=0)
    return L3AState(buffer, gram_init(buffer.out_dim, classes, dt), jnp.zeros((classes,), dt),
                    jnp.zeros((buffer.out_dim, classes), dt))


def num_classes(state: L3AState) -> int:
    return int(state.counts.shape[0])


def class_weights(counts: Any) -> np.ndarray:
    """``n̄ = C · f / Σ f`` with ``f_k = N_k^{-1/2}`` (0 where ``N_k = 0``): the authors' square-root rebalancing."""
    counts = np.asarray(counts, np.float64)
    f = np.where(counts > 0, 1.0 / np.sqrt(np.where(counts > 0, counts, 1.0)), 0.0)
    return counts.size * f / f.sum()


def sample_weights(targets: Any, counts: Any) -> np.ndarray:
    """``ω_i`` = mean of :func:`class_weights` over row ``i``'s labels in ``targets (n, c)`` (every row needs one)."""
    targets = np.asarray(targets, np.float64)
    return (targets @ class_weights(counts)) / targets.sum(axis=1)


def _check_targets(y: Any, n: int, old: int, name: str = "y") -> np.ndarray:
    if not hasattr(y, "dtype"):
        y = np.asarray(y)
    y = np.asarray(y)
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise TypeError(f"{name} must be a numeric (n, classes) multi-hot array, got dtype {y.dtype}")
    if y.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, classes) multi-hot, got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} rows but x has {n} rows")
    if y.shape[1] < old:
        raise ValueError(f"{name} has {y.shape[1]} class columns but the learner already has {old}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 entries")
    if not y.any(axis=1).all():
        raise ValueError(f"{name}: row {int(np.flatnonzero(~y.any(axis=1))[0])} has no label; every training row "
                         "needs at least one (the sample weight averages over its labels)")
    return y.astype(np.float64)


def update(state: L3AState, x: Any, y: Any, *, gamma: float = 1.0, threshold: float = 0.7,
           pseudo_label: bool = True, weighted: bool = True, return_info: bool = False
           ) -> L3AState | tuple[L3AState, L3AInfo]:
    """Learn one task: ``x (n, in_dim)``, multi-hot ``y (n, c')`` with ``c' ≥`` the current classes (new columns
    are new classes). Returns the new state (and :class:`L3AInfo` if ``return_info``); ``state`` is not changed."""
    gamma = check_gamma(gamma)
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1) (a sigmoid probability), got {threshold!r}")
    x = check_features(x, dim=state.buffer.in_dim)
    old = num_classes(state)
    y = _check_targets(y, x.shape[0], old)
    dt = state.stats.xtx.dtype
    phi = state.buffer(x.astype(dt))
    targets = y.copy()
    if pseudo_label and old and int(state.stats.count) > 0:
        prob = np.asarray(jax.nn.sigmoid(jnp.matmul(phi, state.weight, precision=HIGHEST)))
        targets[:, :old] = np.maximum(targets[:, :old], prob > threshold)
    width = y.shape[1]
    # Counts of annotated labels only (pseudo-labels are not counted, as in the authors' code).
    counts = np.pad(np.asarray(state.counts, np.float64), (0, width - old)) + y.sum(axis=0)
    omega = sample_weights(targets, counts) if weighted else np.ones(x.shape[0])
    # ΦᵀΩΦ and ΦᵀΩỸ are the plain Gram statistics of the rows scaled by √ω, so the weighted problem stays additive
    # over tasks (each row keeps the weight of the task it came in) and the core accumulates it.
    root = jnp.asarray(np.sqrt(omega), dt)[:, None]
    stats = expand_classes(state.stats, width)
    stats = gram_accumulate(stats, root * phi, root * jnp.asarray(targets, dt))
    if not bool(jnp.isfinite(stats.xtx).all() & jnp.isfinite(stats.xty).all()):
        raise ValueError("x: the buffered features overflow the statistics (NaN/inf); the task was not learned")
    weight = ridge_solve(stats.xtx, stats.xty, gamma)
    new = L3AState(state.buffer, stats, jnp.asarray(counts, dt), weight)
    return (new, L3AInfo(targets, omega)) if return_info else new


def predict(state: L3AState, x: Any) -> jax.Array:
    """Scores ``φ(x) W: (n, c)`` (regressed 0/1 targets; ``sigmoid`` of them is what PL thresholds)."""
    x = check_features(x, dim=state.buffer.in_dim)
    return _scores(state.buffer, state.weight, x.astype(state.weight.dtype))


@jax.jit
def _scores(buffer: RandomBuffer, weight: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.matmul(buffer(x), weight, precision=HIGHEST)


class L3A(ClassifierMixin, BaseEstimator):
    """L3A as a scikit-learn multi-label estimator: ``partial_fit(x, Y)`` = one task with multi-hot ``Y``; ``fit``
    starts over and learns ``(x, Y)`` as one task.

    ``decision_function`` gives the head's scores, ``predict`` the label sets ``score > decision_threshold``
    (``score`` is scikit-learn's subset accuracy for multi-label targets). A call that raises leaves the learner
    unchanged (the new state is assigned only after a successful update).
    """

    def __init__(self, gamma: float = 1.0, *, threshold: float = 0.7, pseudo_label: bool = True,
                 weighted: bool = True, buffer_size: int = 4096, activation: str = "relu",
                 buffer_init: str = "normal", seed: int = 0, dtype: Any = None, decision_threshold: float = 0.5
                 ) -> None:
        self.gamma, self.threshold, self.pseudo_label, self.weighted = gamma, threshold, pseudo_label, weighted
        self.buffer_size, self.activation, self.buffer_init, self.seed = buffer_size, activation, buffer_init, seed
        self.dtype, self.decision_threshold = dtype, decision_threshold
        self.state: L3AState | None = None
        self.last_info: L3AInfo | None = None

    def _stored_params(self) -> dict[str, Any]:
        """The constructor arguments in JSON-storable form (dtype by name)."""
        params = self.get_params(deep=False)
        if params["dtype"] is not None:
            params["dtype"] = np.dtype(params["dtype"]).name
        return params

    def __sklearn_is_fitted__(self) -> bool:
        return self.state is not None

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = False
        return tags

    def _checked(self) -> dict[str, Any]:
        check_gamma(self.gamma)
        for name in ("pseudo_label", "weighted"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
        positive_int(self.buffer_size, "buffer_size")
        return self._stored_params()

    def fit(self, x: Any, y: Any) -> L3A:
        """Start over and learn ``(x, Y)`` as one task (a refused call keeps the previous fit)."""
        previous, info = self.state, self.last_info
        self.state = None
        try:
            return self.partial_fit(x, y)
        except Exception:
            self.state, self.last_info = previous, info
            raise

    def partial_fit(self, x: Any, y: Any) -> L3A:
        """Learn one task (see :func:`update`)."""
        p = self._checked()
        state = self.state
        if state is None:
            xs = np.shape(x)
            if len(xs) != 2 or xs[1] < 1:
                raise ValueError(f"x must be 2-D (n, features), got shape {xs}")
            state = init(xs[1], 0, buffer_size=p["buffer_size"], activation=p["activation"],
                         buffer_init=p["buffer_init"], seed=p["seed"], dtype=p["dtype"])
        new, info = update(state, x, y, gamma=p["gamma"], threshold=p["threshold"], pseudo_label=p["pseudo_label"],
                           weighted=p["weighted"], return_info=True)
        self.state, self.last_info = new, info
        return self

    def _require(self) -> L3AState:
        if self.state is None:
            raise NotFittedError("this L3A has not been fitted yet; call fit or partial_fit first")
        return self.state

    def decision_function(self, x: Any) -> np.ndarray:
        return np.asarray(predict(self._require(), x))

    def predict_proba(self, x: Any) -> np.ndarray:
        return np.asarray(jax.nn.sigmoid(predict(self._require(), x)))

    def predict(self, x: Any) -> np.ndarray:
        return (self.decision_function(x) > float(self.decision_threshold)).astype(np.int8)

    @property
    def coef_(self) -> jax.Array:
        return self._require().weight

    def save(self, path: str, overwrite: bool = False) -> None:
        """State and constructor arguments through :func:`analytic.save_state`."""
        save_state(path, self._require(), {"learner": "L3A", "params": self._stored_params()}, overwrite=overwrite)

    @classmethod
    def load(cls, path: str) -> L3A:
        """Restore a learner written by :meth:`save` (arguments validated, state structure checked)."""
        state, meta = load_state(path)
        if meta.get("learner") != "L3A" or not isinstance(meta.get("params"), dict):
            raise CheckpointError(f"checkpoint {path} does not hold an L3A learner")
        try:
            learner = cls(**meta["params"])
            p = learner._checked()
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path}: invalid stored L3A arguments: {err}") from err
        if not isinstance(state, L3AState):
            raise CheckpointError(f"checkpoint {path} does not hold an L3AState")
        fresh = init(state.buffer.in_dim, num_classes(state), buffer_size=p["buffer_size"], activation=p["activation"],
                     buffer_init=p["buffer_init"], seed=p["seed"], dtype=p["dtype"])
        check_like(state, fresh, f"checkpoint {path}: state")
        learner.state = state
        return learner
