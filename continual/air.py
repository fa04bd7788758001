"""AIR: analytic imbalance rectifier -- a class-balanced ridge head for long-tailed, continual streams.

Fang et al., "AIR: Analytic Imbalance Rectifier for Continual Learning", arXiv:2408.10349 (2024);
docs/methods.md §2. Each class's statistics are re-weighted by ``π_c`` before one ridge solve::

    W = (Σ_c π_c X_cᵀX_c + γI)⁻¹ Σ_c π_c X_cᵀY_c,        π_c = n_c^(-p)   (p = 1: inverse class frequency)

so a head class with 100× the samples of a tail class no longer dominates the solution. ``π`` depends on the
counts of *all* data seen, so the head cannot be updated recursively; AIR keeps additive per-class statistics
(exact under any batch split or class order) and solves at read-out time.

**Memory.** ``statistics="full"`` keeps one ``d×d`` Gram per class: ``O(c·d²)`` floats (100 classes × 2048² float64
is 3.4 GB). ``statistics="diagonal"`` keeps the total Gram ``XᵀX`` plus each class's diagonal ``diag(X_cᵀX_c)``:
``O(d² + c·d)``. It rebuilds each class's Gram from its mean (exact, ``s_c s_cᵀ / n_c``), its own per-feature
within-class variances ``v_c`` (exact) and the *pooled* within-class correlation ``K`` (approximate)::

    X_cᵀX_c ≈ n_c V_c^½ K V_c^½ + s_c s_cᵀ / n_c,    K = corr(S_w),  S_w = (XᵀX − Σ_c s_c s_cᵀ / n_c) / n

so ``Σ_c π_c X_cᵀX_c ≈ K ∘ (Σ_c π_c n_c √v_c √v_cᵀ) + Σ_c π_c s_c s_cᵀ / n_c``, positive semi-definite by the
Schur product theorem (a Hadamard product of PSD matrices). It is exact whenever the class covariances are scalar
multiples of one common matrix (in particular equal, the LDA assumption) and an approximation otherwise.
The authors' code normalizes ``π`` to mean 1 over the class columns (``normalize=True`` reproduces that).
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analytic import RandomBuffer, expand_classes, gram_accumulate, gram_init, host_kernels, ridge_solve
from analytic.buffers import learner_buffer
from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import HIGHEST, resolve_dtype
from analytic.health import gram_finite
from analytic.validation import check_features, check_gamma
from continual._donation import commit, head_step
from continual._wrapper import ContinualClassifier, as_batch, mask_unseen, real_rows

__all__ = ["AIRState", "init", "update", "solve", "predict", "AIR"]

STATISTICS = ("full", "diagonal")


@register_checkpoint_type
class AIRState(NamedTuple):
    """Per-class ridge statistics.

    Attributes:
      buffer: optional :class:`analytic.RandomBuffer` applied to inputs (``None`` = features used as given).
      stats: :class:`analytic.GramStats` of all rows: ``xtx (d, d)``, ``xty (d, c)``, ``count``.
      class_gram: ``(c, d, d)`` per-class Grams (``"full"``) or ``(c, d)`` their diagonals (``"diagonal"``).
      counts: ``(c,)`` rows seen per class.
      gamma: ridge strength (scalar array).
      power: ``p`` in ``π_c = n_c^(-p)`` (scalar array).
      normalize: scale ``π`` to mean 1 over the class columns, as the authors' code does (scalar bool array).
    """

    buffer: RandomBuffer | None
    stats: Any
    class_gram: jax.Array
    counts: jax.Array
    gamma: jax.Array
    power: jax.Array
    normalize: jax.Array


def check_options(gamma: float, power: float, statistics: str) -> float:
    """Validate AIR's options (constructor and :func:`init`); returns γ as a float."""
    if statistics not in STATISTICS:
        raise ValueError(f"statistics must be one of {STATISTICS}, got {statistics!r}")
    if not np.isfinite(power) or power < 0:
        raise ValueError(f"power must be finite and >= 0, got {power!r}")
    return check_gamma(gamma)


def init(
    in_dim: int, classes: int = 0, gamma: float = 1.0, *, power: float = 1.0, normalize: bool = False,
    statistics: str = "full", buffer_size: int | None = None, buffer_init: str = "normal", seed: int = 0,
    dtype: Any = None, buffer: RandomBuffer | None = None,
) -> AIRState:
    """Empty statistics for ``in_dim`` inputs, expanded by a ReLU buffer if one is given (``buffer``) or sized
    (``buffer_size``, drawn from ``seed``)."""
    gamma = check_options(gamma, power, statistics)
    dt = resolve_dtype(dtype)
    if buffer is not None or buffer_size is not None:
        buffer = learner_buffer(buffer, in_dim, buffer_size, "relu", seed, buffer_init, dt)
    d = in_dim if buffer is None else buffer.out_dim
    shape = (classes, d, d) if statistics == "full" else (classes, d)
    return AIRState(
        buffer, gram_init(d, classes, dt), jnp.zeros(shape, dt), jnp.zeros((classes,), jnp.int32),
        jnp.asarray(gamma, dt), jnp.asarray(power, dt), jnp.asarray(bool(normalize)),
    )


def input_dim(state: AIRState) -> int:
    return state.stats.dim if state.buffer is None else state.buffer.in_dim


def num_classes(state: AIRState) -> int:
    return state.counts.shape[0]


def state_dtype(state: AIRState) -> Any:
    return state.stats.xtx.dtype


def _features(state: AIRState, x: jax.Array) -> jax.Array:
    return x.astype(state.stats.xtx.dtype) if state.buffer is None else state.buffer(x)


@head_step()
def _accumulate(
    state: AIRState, class_gram: jax.Array, x: jax.Array, targets: jax.Array, rows: jax.Array, present: jax.Array,
    in_place: bool,
) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
    # ``state`` without its class statistics, which are passed (and may be donated, continual._donation) alone.
    feats = real_rows(_features(state, x), targets)
    stats = gram_accumulate(state.stats, feats, targets, rows)
    counts = state.counts + jnp.sum(targets, axis=0).astype(state.counts.dtype)
    if class_gram.ndim == 3 and host_kernels.enabled(feats):
        # CPU: one SYRK per class present on its own rows, into the class Grams where they lie.
        labels = jnp.where(jnp.any(targets != 0, axis=1), jnp.argmax(targets, axis=1), -1)
        class_gram, ok = host_kernels.class_gram_add(class_gram, jnp.diagonal(state.stats.xtx), feats, labels,
                                                     in_place)
        return stats, class_gram, counts, ok.astype(bool) & gram_finite(stats.xtx, stats.xty)
    old = class_gram
    if class_gram.ndim == 3:
        # X_cᵀX_c only for the classes present in the batch (`present`, padded with repeats of a present id whose
        # extra columns are zeroed): p·n·d² flops for p present classes instead of c·n·d² for all of them.
        first = jnp.concatenate([jnp.ones((1,), bool), present[1:] != present[0]])
        sel = targets[:, present] * first[None, :]                                    # (n, p) row indicators
        weighted = jnp.swapaxes(sel.T[:, :, None] * feats[None, :, :], 1, 2)           # (p, d, n)
        blocks = jnp.matmul(weighted, feats, precision=HIGHEST)                        # (p, d, d)
        class_gram = class_gram.at[present].add(blocks)
    else:
        class_gram = class_gram + jnp.matmul(targets.T, feats * feats, precision=HIGHEST)
    class_diag = jnp.diagonal(class_gram, axis1=1, axis2=2) if class_gram.ndim == 3 else class_gram
    finite = gram_finite(stats.xtx, stats.xty) & jnp.all(jnp.isfinite(class_diag))
    # A refused batch hands back the class statistics it was given (they may have been donated).
    return stats, jnp.where(finite, class_gram, old), counts, finite


def _present_classes(labels: np.ndarray) -> np.ndarray:
    """Sorted distinct ids of ``labels``, padded to a power of two by repeating the first (bounds recompiles)."""
    ids = np.unique(labels)
    size = 1 << (len(ids) - 1).bit_length()
    return np.concatenate([ids, np.full(size - len(ids), ids[0])]).astype(np.int32)


def update(state: AIRState, x: Any, y: Any = None) -> AIRState:
    """Add a batch ``x: (n, in_dim)`` with class ids ``y: (n,)`` (or a prepared batch as ``x``); exact for any split
    or order of the data."""
    batch = as_batch(x, y, dim=input_dim(state), classes=num_classes(state), dtype=state_dtype(state))
    original, width = state, batch.width
    grow = width - num_classes(state)
    if grow:
        state = state._replace(
            stats=expand_classes(state.stats, width), counts=jnp.pad(state.counts, (0, grow)),
            class_gram=jnp.pad(state.class_gram, ((0, grow),) + ((0, 0),) * (state.class_gram.ndim - 1)),
        )
    present = jnp.asarray(_present_classes(batch.labels))
    stats, class_gram, counts, finite = _accumulate(state._replace(class_gram=None), state.class_gram, batch.x,
                                                    batch.targets, np.int32(batch.n), present)
    # Committed only if the statistics stay finite; an overflowing row is named and `state` stays as it was (donated
    # class statistics come back unchanged).
    commit(finite, lambda: _features(state, jnp.asarray(batch.host_x)), stats.xtx.dtype,
           lambda: original._replace(class_gram=class_gram[: num_classes(original)]))
    return state._replace(stats=stats, class_gram=class_gram, counts=counts)


@jax.jit
def class_weights(state: AIRState) -> jax.Array:
    """``π: (c,)`` -- ``n_c^(-p)`` for seen classes, 0 for unseen ones, optionally scaled to mean 1."""
    n = state.counts.astype(state.gamma.dtype)
    pi = jnp.where(n > 0, jnp.where(n > 0, n, 1.0) ** -state.power, 0.0)
    scale = jnp.where(state.normalize, pi.shape[0] / jnp.maximum(jnp.sum(pi), jnp.finfo(pi.dtype).tiny), 1.0)
    return pi * scale


@jax.jit
def weighted_statistics(state: AIRState) -> tuple[jax.Array, jax.Array]:
    """``(Σ_c π_c X_cᵀX_c, Σ_c π_c X_cᵀY_c)`` -- exact (``"full"``) or pooled-correlation (``"diagonal"``)."""
    pi = class_weights(state)
    xty = state.stats.xty * pi[None, :]
    if state.class_gram.ndim == 3:
        return jnp.einsum("c,cde->de", pi, state.class_gram, precision=HIGHEST), xty
    n_c = state.counts.astype(pi.dtype)
    inv_n = jnp.where(n_c > 0, 1.0 / jnp.where(n_c > 0, n_c, 1.0), 0.0)
    sums = state.stats.xty                                              # s_c = X_cᵀ1 (one-hot targets)
    between = jnp.matmul(sums * inv_n[None, :], sums.T, precision=HIGHEST)     # Σ_c s_c s_cᵀ / n_c
    pooled = (state.stats.xtx - between) / jnp.maximum(jnp.sum(n_c), 1.0)
    sd = jnp.sqrt(jnp.maximum(jnp.diag(pooled), 0.0))
    inv_sd = jnp.where(sd > 0, 1.0 / jnp.where(sd > 0, sd, 1.0), 0.0)
    corr = pooled * inv_sd[:, None] * inv_sd[None, :]
    corr = corr.at[jnp.diag_indices(corr.shape[0])].set(1.0)
    class_sd = jnp.sqrt(jnp.maximum(state.class_gram - (sums.T**2) * inv_n[:, None], 0.0) * inv_n[:, None])
    scales = jnp.matmul(class_sd.T * (pi * n_c)[None, :], class_sd, precision=HIGHEST)  # Σ π_c n_c √v_c √v_cᵀ
    weighted = corr * scales + jnp.matmul(sums * (pi * inv_n)[None, :], sums.T, precision=HIGHEST)
    return weighted, xty


def solve(state: AIRState) -> jax.Array:
    """Class-balanced ridge weights ``W: (d, c)`` (one SPD solve through :func:`analytic.ridge_solve`)."""
    xtx, xty = weighted_statistics(state)
    return ridge_solve(xtx, xty, float(state.gamma))


def predict(state: AIRState, x: Any, weight: jax.Array | None = None) -> jax.Array:
    """Logits ``(n, c)``; never-seen classes get ``-inf``. Pass ``weight = solve(state)`` to reuse a solve."""
    x = check_features(x, dim=input_dim(state))
    w = solve(state) if weight is None else weight
    logits = jnp.matmul(_features(state, x), w, precision=HIGHEST)
    return mask_unseen(logits, state.counts > 0)


class AIR(ContinualClassifier):
    """Class wrapper (scikit-learn verbs) over :func:`init`/:func:`update`/:func:`predict`; caches the solve."""

    _module = sys.modules[__name__]
    _state_params = {"buffer": "buffer"}

    def __init__(
        self, gamma: float = 1.0, *, power: float = 1.0, normalize: bool = False, statistics: str = "full",
        buffer_size: int | None = None, buffer_init: str = "normal", seed: int = 0, dtype: Any = None,
        buffer: RandomBuffer | None = None,
    ) -> None:
        super().__init__(gamma=gamma, power=power, normalize=normalize, statistics=statistics,
                         buffer_size=buffer_size, buffer_init=buffer_init, seed=seed, dtype=dtype, buffer=buffer)
        # The solve of the current state, cached in a holder that a read-out updates in place (reading must not
        # change the estimator's attributes, scikit-learn's rule).
        self._weight_cache: list[Any] = [None, None]

    def _checked_params(self) -> dict[str, Any]:
        params = super()._checked_params()
        check_options(params["gamma"], params["power"], params["statistics"])
        return params

    def _decision(self, state: AIRState, x: jax.Array) -> jax.Array:
        if self._weight_cache[0] is not state:
            self._weight_cache[:] = [state, solve(state)]
        return predict(state, x, self._weight_cache[1])

    @property
    def coef_(self) -> jax.Array:
        """Class-balanced ridge weights ``(d, c)``."""
        self._require_fitted()
        return solve(self._state)
