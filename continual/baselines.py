"""Baselines for the continual protocols, with the learners' verbs (``partial_fit``, ``predict``, ``score``).

- :class:`JointRidge` -- the upper bound: ridge on everything seen so far (the core's Gram statistics, solved at
  read-out). Equal to ACIL by construction; listed separately as the reference the analytic learners must match.
- :class:`SLDA` -- deep streaming LDA (Hayes & Kanan, CVPR-W 2020, Eqs. 1-4): class means and one shared
  covariance, prediction ``W = Λ μ``, ``b = -½ μᵀ Λ μ`` with ``Λ = ((1-ε)Σ + εI)⁻¹``. Here ``Σ`` is the *exact*
  pooled within-class covariance, computed from additive statistics (``XᵀX``, per-class sums, counts), so any
  split of the stream gives the batch answer; the paper's one-sample update approximates the same quantity.
- :class:`FineTune` -- a linear or MLP head trained with optax on each incoming batch only: the gradient
  baseline that forgets. With ``replay`` > 0 it keeps a reservoir buffer of past samples and trains on
  ``batch ∪ buffer`` (experience replay, Chaudhry et al. 2019; reservoir sampling, Vitter 1985).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from analytic import AnalyticLinear, GramStats, RandomBuffer, gram_init, gram_update, ridge_solve
from analytic.checkpoint import register_checkpoint_type
from analytic.health import check_committed, overflowing_rows
from analytic.sklearn_api import ClassLabels, LabelledClassifier, as_label_vector, encode_labels
from analytic.validation import check_features, check_gamma, check_labels
from continual._wrapper import positive_int

__all__ = ["JointRidge", "SLDAState", "slda_init", "slda_update", "slda_predict", "SLDA", "FineTune"]


class JointRidge(AnalyticLinear):
    """Ridge on all rows seen (the joint-training upper bound), optionally behind a ReLU random buffer.

    buffer_size: width of a ``RandomBuffer(in_dim, buffer_size, "relu", seed)`` built on the first batch
    (``None``: the raw features). Everything else is :class:`analytic.AnalyticLinear` with ``solver="gram"``.
    """

    def __init__(self, gamma: float = 1.0, buffer_size: int | None = None, seed: int = 0, dtype: Any = None):
        super().__init__(gamma=gamma, solver="gram", dtype=dtype)
        self.buffer_size, self.seed = buffer_size, seed

    def _make_buffer(self, in_dim: int) -> RandomBuffer | None:
        if self.buffer_size is None:
            return None
        return RandomBuffer(in_dim, positive_int(self.buffer_size, "buffer_size"), "relu", seed=self.seed,
                            dtype=self.dtype)


# -- SLDA ---------------------------------------------------------------------------------------------------------
@register_checkpoint_type
class SLDAState(NamedTuple):
    """stats: ``XᵀX`` (d, d) and per-class sums ``XᵀY`` (d, c) of the raw features; counts: (c,) rows per class."""

    stats: GramStats
    counts: jax.Array


def slda_init(dim: int, dtype: Any = None) -> SLDAState:
    stats = gram_init(dim, 0, dtype)
    return SLDAState(stats, jnp.zeros((0,), stats.xtx.dtype))


def slda_update(state: SLDAState, x: Any, y: Any) -> SLDAState:
    """Add a batch ``x: (n, d)``, ``y: (n,)`` class ids; validated first, so an error changes nothing."""
    x = check_features(x, dim=state.stats.dim)
    ids = check_labels(y, n=x.shape[0])
    stats = gram_update(state.stats, x, ids)
    # Counted on the host: a device bincount compiles anew for every batch length.
    added = np.bincount(np.asarray(ids), minlength=stats.classes)
    counts = jnp.pad(state.counts, (0, stats.classes - state.counts.shape[0]))
    counts = counts + jnp.asarray(added, counts.dtype)
    return SLDAState(stats, counts)


def slda_predict(state: SLDAState, x: jax.Array, shrinkage: float = 1e-4) -> jax.Array:
    """Scores ``x Λμ - ½ μᵀΛμ``: (n, c); classes never seen score ``-inf``.

    ``((1-ε)Σ + εI)⁻¹ M = (Σ + ε/(1-ε) I)⁻¹ M / (1-ε)``, so the solve is the core's ridge solve with
    ``γ = ε/(1-ε)``.
    """
    xtx, sums, counts = state.stats.xtx, state.stats.xty, state.counts
    seen = counts > 0
    means = sums / jnp.where(seen, counts, 1.0)                               # (d, c)
    scatter = xtx - (means * counts) @ means.T                                # Σ_x xxᵀ - Σ_c n_c μ_c μ_cᵀ
    cov = scatter / jnp.maximum(jnp.sum(counts), 1.0)
    precision_means = ridge_solve(cov, means, shrinkage / (1.0 - shrinkage)) / (1.0 - shrinkage)
    bias = -0.5 * jnp.sum(means * precision_means, axis=0)
    logits = x.astype(xtx.dtype) @ precision_means + bias
    return jnp.where(seen, logits, -jnp.inf)


class SLDA(LabelledClassifier):
    """Streaming LDA with shrinkage ``ε`` (default 1e-4, the paper's); a scikit-learn estimator (``fit``,
    ``partial_fit``, ``predict``, ``score``). Arguments are validated by ``fit``/``partial_fit``."""

    def __init__(self, shrinkage: float = 1e-4, dtype: Any = None) -> None:
        self.shrinkage, self.dtype = shrinkage, dtype
        self._state: SLDAState | None = None
        self._labels: ClassLabels | None = None
        self._declared: int | None = None
        self._fit_shrinkage: float | None = None

    def _checked_shrinkage(self) -> float:
        try:
            shrinkage = float(self.shrinkage)
        except (TypeError, ValueError) as err:
            raise TypeError(f"shrinkage must be a number in (0, 1), got {self.shrinkage!r}") from err
        if not 0.0 < shrinkage < 1.0:
            raise ValueError(f"shrinkage must lie in (0, 1), got {shrinkage!r}")
        return shrinkage

    @property
    def state_(self) -> SLDAState | None:
        """Additive statistics of everything learned (``None`` before fitting)."""
        return self._state

    @property
    def n_features_in_(self) -> int:
        self._require_fitted()
        return self._state.stats.dim

    def _fitted(self) -> bool:
        return self._state is not None

    def _width(self) -> int:
        return int(self._state.stats.classes)

    def partial_fit(self, x: Any, y: Any, classes: Any = None) -> SLDA:
        shrinkage = self._checked_shrinkage()
        if self._state is not None:
            self._refuse_changed({"shrinkage": shrinkage}, {"shrinkage": self._fit_shrinkage})
        x = self._check_input(x, self._state.stats.dim if self._state is not None else None)
        labels, ids, declared = encode_labels(self._labels, as_label_vector(y), classes, self._declared)
        state = self._state if self._state is not None else slda_init(x.shape[1], self.dtype)
        new_state = slda_update(state, x, ids)  # validated first: an error changes nothing
        self._state, self._labels, self._declared, self._fit_shrinkage = new_state, labels, declared, shrinkage
        return self

    def _scores(self, x: Any) -> jax.Array:
        x = self._check_input(x, self._state.stats.dim)
        return slda_predict(self._state, jnp.asarray(x), self._fit_shrinkage)


# -- fine-tuning with optional replay --------------------------------------------------------------------------------
def _init_head(key: jax.Array, dim: int, hidden: int, classes: int) -> dict[str, jax.Array]:
    if hidden == 0:
        return {"w_out": jnp.zeros((dim, classes), jnp.float32), "b_out": jnp.zeros((classes,), jnp.float32)}
    w = jax.random.normal(key, (dim, hidden), jnp.float32) * jnp.sqrt(2.0 / dim)
    return {"w_hidden": w, "b_hidden": jnp.zeros((hidden,), jnp.float32),
            "w_out": jnp.zeros((hidden, classes), jnp.float32), "b_out": jnp.zeros((classes,), jnp.float32)}


def _head_logits(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    h = jax.nn.relu(x @ params["w_hidden"] + params["b_hidden"]) if "w_hidden" in params else x
    return h @ params["w_out"] + params["b_out"]


@functools.lru_cache(maxsize=8)
def _adam_step(learning_rate: float) -> Any:
    """Jitted Adam step on the weighted cross-entropy, one per learning rate, shared by all instances (so a new
    ``FineTune`` does not recompile)."""
    tx = optax.adam(learning_rate)

    def step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array, weight: jax.Array) -> tuple[Any, Any]:
        def loss_fn(p: Any) -> jax.Array:
            losses = optax.softmax_cross_entropy_with_integer_labels(_head_logits(p, x), y)
            return jnp.sum(losses * weight) / jnp.maximum(jnp.sum(weight), 1.0)

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step)


class FineTune(LabelledClassifier):
    """Gradient-trained head (softmax cross-entropy, optax Adam) updated only on what ``partial_fit`` receives.

    Args:
      hidden: 0 for a linear head, else the width of one ReLU hidden layer.
      epochs: passes over each incoming batch (plus the replay sample).
      replay: capacity of the reservoir buffer of past ``(x, y)``; 0 = plain fine-tuning.
      batch_size, learning_rate, seed: SGD settings; the seed fixes init, shuffling and reservoir choices.

    New classes add zero-initialised output columns; the optimizer state is reset when the head grows. A
    scikit-learn estimator: the arguments are validated by ``fit``/``partial_fit``.
    """

    def __init__(self, hidden: int = 0, epochs: int = 5, replay: int = 0, batch_size: int = 32,
                 learning_rate: float = 1e-2, seed: int = 0) -> None:
        self.hidden, self.epochs, self.replay, self.batch_size = hidden, epochs, replay, batch_size
        self.learning_rate, self.seed = learning_rate, seed
        self._head: dict[str, jax.Array] | None = None
        self._labels: ClassLabels | None = None
        self._declared: int | None = None
        self._fit_params: dict[str, Any] | None = None

    def _checked(self) -> dict[str, Any]:
        """The arguments validated (``ValueError``/``TypeError`` naming the argument)."""
        checked: dict[str, Any] = {name: positive_int(getattr(self, name), name, minimum=low) for name, low in
                                   (("hidden", 0), ("epochs", 1), ("replay", 0), ("batch_size", 1), ("seed", 0))}
        checked["learning_rate"] = check_gamma(self.learning_rate, "learning_rate")
        return checked

    def _start(self, params: dict[str, Any]) -> None:
        """Fresh training state for ``params`` (first ``partial_fit``)."""
        self._fit_params = params
        self._tx = optax.adam(params["learning_rate"])
        self._step = _adam_step(params["learning_rate"])
        self._rng = np.random.default_rng(params["seed"])
        self._key = jax.random.PRNGKey(params["seed"])
        self._opt_state: Any = None
        self._memory_x: np.ndarray | None = None
        self._memory_y = np.zeros((0,), np.int64)
        self._stream_seen = 0

    def __getstate__(self) -> dict[str, Any]:
        # optax's transformation holds closures, which do not pickle; it is rebuilt from the arguments.
        return {k: v for k, v in self.__dict__.items() if k not in ("_tx", "_step")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._fit_params is not None:
            self._tx = optax.adam(self._fit_params["learning_rate"])
            self._step = _adam_step(self._fit_params["learning_rate"])

    @property
    def params_(self) -> dict[str, jax.Array] | None:
        """The head's parameters (``None`` before fitting)."""
        return self._head

    @property
    def n_features_in_(self) -> int:
        self._require_fitted()
        return self._head["w_hidden" if "w_hidden" in self._head else "w_out"].shape[0]

    def _fitted(self) -> bool:
        return self._head is not None

    def _width(self) -> int:
        return 0 if self._head is None else int(self._head["b_out"].shape[0])

    def partial_fit(self, x: Any, y: Any, classes: Any = None) -> FineTune:
        """Train on ``x: (n, d)``, ``y: (n,)`` (and the replay buffer); inputs are checked before any change."""
        params = self._checked()
        if self._head is not None:
            self._refuse_changed(params, self._fit_params)
        x = self._check_input(x, self.n_features_in_ if self._head is not None else None)
        with np.errstate(over="ignore"):
            x32 = np.asarray(x, np.float32)
        # The head trains in float32: refuse rows that overflow the cast or their squares, as every learner does.
        check_committed(not overflowing_rows(x32, np.float32).size, lambda: x32, np.float32)
        x = x32
        labels, ids, declared = encode_labels(self._labels, as_label_vector(y), classes, self._declared)
        if ids.shape[0] != x.shape[0]:
            raise ValueError(f"y has {ids.shape[0]} labels but x has {x.shape[0]} rows")
        if self._head is None:
            self._start(params)
        width = max(self._width(), int(ids.max()) + 1, int(declared or 0))
        head, opt_state, next_key = self._head, self._opt_state, self._key
        if head is None:
            next_key, key = jax.random.split(self._key)
            head = _init_head(key, x.shape[1], params["hidden"], width)
        if width > head["b_out"].shape[0] or opt_state is None:
            grow = width - head["b_out"].shape[0]
            head = {**head, "w_out": jnp.pad(head["w_out"], ((0, 0), (0, grow))),
                    "b_out": jnp.pad(head["b_out"], (0, grow))}
            opt_state = self._tx.init(head)
        train_x, train_y = x, ids
        rng_state = self._rng.bit_generator.state
        if params["replay"] and self._memory_y.size:
            train_x = np.concatenate([x, self._memory_x])
            train_y = np.concatenate([ids, self._memory_y])
        size = params["batch_size"]
        for _ in range(params["epochs"]):
            order = self._rng.permutation(train_y.size)
            for start in range(0, order.size, size):
                idx = order[start:start + size]
                pad = size - idx.size  # fixed shapes: one compiled step; padded rows get weight 0
                bx = np.pad(train_x[idx], ((0, pad), (0, 0)))
                by = np.pad(train_y[idx], (0, pad))
                weight = np.pad(np.ones(idx.size, np.float32), (0, pad))
                head, opt_state = self._step(head, opt_state, bx, by, weight)
        if not all(bool(jnp.isfinite(p).all()) for p in jax.tree.leaves(head)):
            self._rng.bit_generator.state = rng_state  # nothing of this call may remain
            raise ValueError("x: training on this batch made the head's parameters non-finite (inputs too large for "
                             "float32 SGD); the batch was not learned and the model is unchanged -- rescale the inputs")
        self._head, self._opt_state, self._key = head, opt_state, next_key
        self._labels, self._declared = labels, declared
        if params["replay"]:
            self._reservoir_add(x, ids)
        return self

    def _reservoir_add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Reservoir sampling: after ``t`` stream samples each one is in the buffer with probability ``cap/t``."""
        if self._memory_x is None:
            self._memory_x = np.zeros((0, x.shape[1]), np.float32)
        mem_x, mem_y = list(self._memory_x), list(self._memory_y)
        for xi, yi in zip(x, y):
            self._stream_seen += 1
            if len(mem_y) < self._fit_params["replay"]:
                mem_x.append(xi)
                mem_y.append(yi)
            else:
                slot = self._rng.integers(0, self._stream_seen)
                if slot < self._fit_params["replay"]:
                    mem_x[slot], mem_y[slot] = xi, yi
        self._memory_x = np.asarray(mem_x, np.float32).reshape(-1, x.shape[1])
        self._memory_y = np.asarray(mem_y, np.int64)

    @property
    def memory_size(self) -> int:
        return int(self._memory_y.size)

    def _scores(self, x: Any) -> jax.Array:
        return _head_logits(self._head, jnp.asarray(self._check_input(x, self.n_features_in_), jnp.float32))
