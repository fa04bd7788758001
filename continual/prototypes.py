"""Closed-form continual peers on a frozen backbone: RanPAC, NCM (SimpleCIL) and FeCAM.

All three keep only additive statistics of the rows seen, so learning phase after phase equals learning all rows
at once (up to the per-session λ choice of RanPAC):

* **RanPAC** -- McDonnell et al., "RanPAC: Random Projections and Pre-trained Models for Continual Learning",
  NeurIPS 2023 (arXiv 2307.02251), Algorithm 1: ``h = relu(x W_rand)`` with a fixed Gaussian ``W_rand`` (entries
  ``N(0, 1)``, ``M = 10000`` outputs), ``G = Σ hhᵀ``, ``C = Σ h yᵀ`` (one-hot ``y``, 0/1), ``W = (G + λI)⁻¹ C``
  and un-normalised logits ``s = h W`` (the authors' head is a plain linear layer once the projection is on; no
  cosine normalisation). λ is chosen per session as the authors' ``optimise_ridge_parameter`` does: on the
  *current session's rows only*, the first 80% fit ``W(λ)`` and the last 20% score it by the MSE of the one-hot
  targets, for λ ∈ {10⁻⁸, ..., 10⁸} (17 values); the smallest λ of least MSE wins and the head is then solved from
  the accumulated ``G, C`` with it. The authors shuffle each session's rows first (a shuffled loader): the split
  here takes the rows in the order given. Only the frozen-backbone variant is implemented: the paper's Phase 1
  (first-session adaptation of the backbone with a PETL method) is NOT.
* **NCM** -- Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models", 2023 (SimpleCIL):
  class-mean prototypes ``μ_k`` from per-class sums and counts, score ``cos(x, μ_k)``.
* **FeCAM** -- Goswami et al., "FeCAM: Exploiting the Heterogeneity of Class Distributions in Exemplar-Free
  Continual Learning", NeurIPS 2023 (arXiv 2309.14062), §4: per-class covariance ``Σ_k`` (unbiased, ``n_k - 1``)
  from ``Σx, Σxxᵀ, n`` per class; shrinkage ``Σ_s = Σ + γ₁V₁I + γ₂V₂(1 - I)`` with ``V₁`` the mean diagonal and
  ``V₂`` the mean off-diagonal entry; correlation normalisation ``Σ_s / (σσᵀ)``, ``σ = sqrt(diag Σ_s)``; optional
  Tukey transform ``x^β`` of non-negative features (β = 0.5 in the paper; β = 1 is the identity, the default);
  score ``-(x - μ_k)ᵀ Σ_k⁻¹ (x - μ_k)``. Defaults γ₁ = γ₂ = 1 as in the authors' many-shot configuration (their
  ViT scripts use γ₂ = 0). A class with fewer than two rows has no covariance; it falls back to the identity.

Each learner is a functional ``*_init/*_update/*_predict`` triple over a checkpointable NamedTuple, wrapped by a
:class:`~continual._wrapper.ContinualClassifier` (``partial_fit`` = one session; ``save``/``load``).
"""

from __future__ import annotations

import math
import types
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analytic import GramStats, RandomBuffer, cholesky_ridge_solve, expand_classes, gram_accumulate_checked, ridge_solve
from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import HIGHEST, resolve_dtype, row_bucket
from analytic.health import check_committed
from analytic.selection import ridge_path
from analytic.validation import check_features, check_gamma
from continual._wrapper import ContinualClassifier, as_batch, mask_unseen, positive_int, real_rows

__all__ = [
    "RANPAC_RIDGES", "RanPACState", "ranpac_init", "ranpac_update", "ranpac_predict", "select_ridge", "RanPAC",
    "NCMState", "ncm_init", "ncm_update", "ncm_predict", "NCM",
    "FeCAMState", "fecam_init", "fecam_update", "fecam_predict", "fecam_covariances", "FeCAM",
]

#: the authors' λ grid: 10^-8 ... 10^8.
RANPAC_RIDGES: tuple[float, ...] = tuple(10.0 ** k for k in range(-8, 9))


def _grow(a: jax.Array, width: int, axis: int) -> jax.Array:
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, max(0, width - a.shape[axis]))
    return jnp.pad(a, pad)


def _check_fraction(value: Any, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number in (0, 1), got {value!r}") from err
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    return value


def _check_ridges(ridges: Any) -> tuple[float, ...]:
    if isinstance(ridges, str) or not hasattr(ridges, "__len__") or len(ridges) == 0:
        raise ValueError(f"ridges must be a non-empty sequence of positive numbers, got {ridges!r}")
    return tuple(check_gamma(r, "ridges") for r in ridges)


# -- RanPAC --------------------------------------------------------------------------------------------------------
@register_checkpoint_type
class RanPACState(NamedTuple):
    """buffer: ``relu(x W_rand)``, ``W_rand ~ N(0, 1)`` (in_dim, M); stats: ``G = HᵀH`` (M, M), ``C = HᵀY`` (M, c);
    counts: (c,) rows per class; weight: ``(G + λI)⁻¹ C`` (M, c); gamma: the λ of ``weight`` (scalar)."""

    buffer: RandomBuffer
    stats: GramStats
    counts: jax.Array
    weight: jax.Array
    gamma: jax.Array


def ranpac_init(in_dim: int, classes: int = 0, *, buffer_size: int = 10000, seed: int = 0,
                dtype: Any = None) -> RanPACState:
    """Projection and empty statistics. ``analytic.RandomBuffer``'s ``"normal"`` init draws ``N(0, 1/in_dim)``;
    the paper's ``W_rand`` has unit variance, so those weights are scaled by ``√in_dim`` (the same draw)."""
    dt = resolve_dtype(dtype)
    drawn = RandomBuffer(in_dim, positive_int(buffer_size, "buffer_size"), "relu", seed, "normal", dtype=dt)
    buffer = RandomBuffer.from_weights(drawn.weight * math.sqrt(in_dim), None, "relu", dt)
    m = buffer.out_dim
    stats = GramStats(jnp.zeros((m, m), dt), jnp.zeros((m, classes), dt), jnp.zeros((), jnp.int32))
    # λ = 1 until a session large enough to be split has chosen one.
    return RanPACState(buffer, stats, jnp.zeros((classes,), dt), jnp.zeros((m, classes), dt), jnp.asarray(1.0, dt))


def select_ridge(h: Any, targets: Any, ridges: Any = RANPAC_RIDGES, holdout: float = 0.2
                 ) -> tuple[float, np.ndarray] | None:
    """The authors' λ rule on one session: the first ``int((1 - holdout)·n)`` rows of ``h: (n, M)`` fit
    ``W(λ)``, the rest score it by ``mean((h W(λ) - Y)²)`` against one-hot ``targets: (n, c)``; returns
    ``(λ*, losses)`` with the first (smallest) λ of least loss, or ``None`` if a part would be empty.

    Every λ comes from one eigendecomposition (:func:`analytic.selection.ridge_path`): of ``HᵀH`` when the fitting
    part has at least ``M`` rows, else of the ``n × n`` kernel ``HHᵀ`` (push-through identity
    ``(HᵀH + λI)⁻¹Hᵀ = Hᵀ(HHᵀ + λI)⁻¹``, exact; the smaller system).
    """
    ridges = _check_ridges(ridges)
    h, targets = jnp.asarray(h), jnp.asarray(targets)
    fit = int(h.shape[0] * (1.0 - _check_fraction(holdout, "holdout")))
    if fit == 0 or fit == h.shape[0]:
        return None
    losses = np.asarray(_ridge_losses(h[:fit], targets[:fit], h[fit:], targets[fit:], ridges))
    return ridges[int(np.argmin(losses))], losses


def _ridge_losses(h_fit: jax.Array, y_fit: jax.Array, h_val: jax.Array, y_val: jax.Array,
                  ridges: tuple[float, ...]) -> jax.Array:
    if h_fit.shape[0] >= h_fit.shape[1]:
        weights = ridge_path(jnp.matmul(h_fit.T, h_fit, precision=HIGHEST),
                             jnp.matmul(h_fit.T, y_fit, precision=HIGHEST), ridges)
        predicted = jnp.einsum("nm,kmc->knc", h_val, weights, precision=HIGHEST)
    else:
        dual = ridge_path(jnp.matmul(h_fit, h_fit.T, precision=HIGHEST), y_fit, ridges)
        cross = jnp.matmul(h_val, h_fit.T, precision=HIGHEST)
        predicted = jnp.einsum("vn,knc->kvc", cross, dual, precision=HIGHEST)
    return jnp.mean(jnp.square(predicted - y_val[None]), axis=(1, 2))


@jax.jit
def _ranpac_stats(buffer: RandomBuffer, stats: GramStats, x: jax.Array, targets: jax.Array, rows: jax.Array
                  ) -> tuple[jax.Array, GramStats, jax.Array]:
    h = real_rows(buffer(x), targets)
    new, ok = gram_accumulate_checked(stats, h, targets, rows)
    return h, new, ok


def ranpac_update(state: RanPACState, x: Any, y: Any = None, *, ridge: float | None = None,
                  ridges: Any = RANPAC_RIDGES, holdout: float = 0.2) -> RanPACState:
    """One session: ``x: (n, in_dim)``, class ids ``y: (n,)`` (or a PreparedBatch as ``x``). ``ridge`` fixes λ;
    ``None`` selects it on this session's rows (:func:`select_ridge`; a session too small to split keeps the
    previous λ). The head is solved from all rows seen, so phases with a fixed λ equal joint training."""
    if ridge is not None:
        ridge = check_gamma(ridge, "ridge")
    ridges, holdout = _check_ridges(ridges), _check_fraction(holdout, "holdout")
    dt = state.buffer.weight.dtype
    batch = as_batch(x, y, dim=state.buffer.in_dim, classes=state.stats.classes, dtype=dt)
    grown = expand_classes(state.stats, batch.width)
    h, stats, ok = _ranpac_stats(state.buffer, grown, batch.x, batch.targets, jnp.int32(batch.n))
    check_committed(ok, lambda: state.buffer(jnp.asarray(batch.host_x)), dt, what="projected features")
    gamma = ridge
    if gamma is None:
        chosen = select_ridge(h[: batch.n], batch.targets[: batch.n], ridges, holdout)
        gamma = float(state.gamma) if chosen is None else chosen[0]
    counts = _grow(state.counts, batch.width, 0) + jnp.sum(batch.targets, axis=0)
    weight = ridge_solve(stats.xtx, stats.xty, gamma)
    return RanPACState(state.buffer, stats, counts, weight, jnp.asarray(gamma, dt))


def ranpac_predict(state: RanPACState, x: Any) -> jax.Array:
    """Logits ``relu(x W_rand) W``: (n, c); classes never seen score ``-inf``."""
    x = check_features(x, dim=state.buffer.in_dim)
    return mask_unseen(_ranpac_logits(state.buffer, state.weight, x), state.counts > 0)


@jax.jit
def _ranpac_logits(buffer: RandomBuffer, weight: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.matmul(buffer(x), weight, precision=HIGHEST)


# -- NCM (SimpleCIL) -------------------------------------------------------------------------------------------
@register_checkpoint_type
class NCMState(NamedTuple):
    """sums: per-class feature sums (d, c); counts: rows per class (c,)."""

    sums: jax.Array
    counts: jax.Array


def ncm_init(in_dim: int, classes: int = 0, *, dtype: Any = None) -> NCMState:
    dt = resolve_dtype(dtype)
    return NCMState(jnp.zeros((positive_int(in_dim, "in_dim"), classes), dt), jnp.zeros((classes,), dt))


@jax.jit
def _class_sums(sums: jax.Array, counts: jax.Array, x: jax.Array, targets: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    # First moments only: XᵀY of the one-hot targets (a GramStats would also form the unused XᵀX).
    new = sums + jnp.matmul(x.astype(sums.dtype).T, targets, precision=HIGHEST)
    return new, counts + jnp.sum(targets, axis=0), jnp.all(jnp.isfinite(new))


def ncm_update(state: NCMState, x: Any, y: Any = None) -> NCMState:
    """Add a batch to the per-class sums and counts (``x: (n, d)``, class ids ``y``, or a PreparedBatch)."""
    dt = state.sums.dtype
    batch = as_batch(x, y, dim=state.sums.shape[0], classes=state.counts.shape[0], dtype=dt)
    sums, counts, ok = _class_sums(_grow(state.sums, batch.width, 1), _grow(state.counts, batch.width, 0),
                                   batch.x, batch.targets)
    check_committed(ok, lambda: batch.host_x, dt)
    return NCMState(sums, counts)


def ncm_predict(state: NCMState, x: Any) -> jax.Array:
    """``cos(x, μ_k)``: (n, c); classes never seen score ``-inf``."""
    x = check_features(x, dim=state.sums.shape[0])
    return mask_unseen(_cosine(state.sums, state.counts, x), state.counts > 0)


@jax.jit
def _cosine(sums: jax.Array, counts: jax.Array, x: jax.Array) -> jax.Array:
    tiny = jnp.finfo(sums.dtype).tiny
    means = sums / jnp.maximum(counts, 1.0)
    means = means / jnp.maximum(jnp.linalg.norm(means, axis=0, keepdims=True), tiny)
    x = x.astype(sums.dtype)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), tiny)
    return jnp.matmul(x, means, precision=HIGHEST)


# -- FeCAM -------------------------------------------------------------------------------------------------------
@register_checkpoint_type
class FeCAMState(NamedTuple):
    """Per-class statistics of the (Tukey-transformed) features: ``sums`` (d, c), ``second = Σ xxᵀ`` (c, d, d),
    ``counts`` (c,) int32; and the options ``beta`` (Tukey power), ``gamma1``, ``gamma2`` (shrinkage), scalars."""

    sums: jax.Array
    second: jax.Array
    counts: jax.Array
    beta: jax.Array
    gamma1: jax.Array
    gamma2: jax.Array


def fecam_init(in_dim: int, classes: int = 0, *, beta: float = 1.0, gamma1: float = 1.0, gamma2: float = 1.0,
               dtype: Any = None) -> FeCAMState:
    dt = resolve_dtype(dtype)
    d = positive_int(in_dim, "in_dim")
    beta, gamma1 = check_gamma(beta, "beta"), check_gamma(gamma1, "gamma1")
    if not (isinstance(gamma2, int | float | np.number) and np.isfinite(gamma2) and gamma2 >= 0):
        raise ValueError(f"gamma2 must be a finite number >= 0, got {gamma2!r}")
    return FeCAMState(jnp.zeros((d, classes), dt), jnp.zeros((classes, d, d), dt), jnp.zeros((classes,), jnp.int32),
                      jnp.asarray(beta, dt), jnp.asarray(gamma1, dt), jnp.asarray(float(gamma2), dt))


def _tukey(x: jax.Array, beta: jax.Array) -> jax.Array:
    return jnp.where(beta == 1.0, x, jnp.power(jnp.maximum(x, 0.0), beta))


@jax.jit
def _class_step(sums: jax.Array, second: jax.Array, counts: jax.Array, k: jax.Array, xk: jax.Array,
                ones: jax.Array, rows: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    # One class's rows through the core's Gram accumulation (ones as the single target column gives Σx);
    # one compiled program per row bucket, the class index traced.
    stats = GramStats(second[k], sums[:, k][:, None], counts[k])
    new, ok = gram_accumulate_checked(stats, xk, ones, rows)
    return sums.at[:, k].set(new.xty[:, 0]), second.at[k].set(new.xtx), counts.at[k].set(new.count), ok


def fecam_update(state: FeCAMState, x: Any, y: Any = None) -> FeCAMState:
    """Add a batch to the per-class ``Σx, Σxxᵀ, n`` (``x: (n, d)``, class ids ``y``, or a PreparedBatch). With
    ``beta != 1`` the features must be non-negative (Tukey's ``x^β``)."""
    dt = state.sums.dtype
    batch = as_batch(x, y, dim=state.sums.shape[0], classes=state.counts.shape[0], dtype=dt)
    beta = float(state.beta)
    raw = batch.x[: batch.n].astype(dt)
    if beta != 1.0 and bool(jnp.any(raw < 0)):
        raise ValueError(f"x holds negative features (min {float(jnp.min(raw)):.3g}); FeCAM's Tukey transform "
                         f"x**beta (beta={beta:g}) needs non-negative features -- use beta=1")
    feats = np.asarray(_tukey(raw, state.beta))
    sums, second = _grow(state.sums, batch.width, 1), _grow(state.second, batch.width, 0)
    counts = _grow(state.counts, batch.width, 0)
    for k in np.unique(batch.labels):
        xk = feats[batch.labels == k]
        rows = row_bucket(xk.shape[0])
        padded = np.zeros((rows, xk.shape[1]), dt)
        padded[: xk.shape[0]] = xk
        ones = (np.arange(rows) < xk.shape[0]).astype(dt)[:, None]
        sums, second, counts, ok = _class_step(sums, second, counts, jnp.int32(k), jnp.asarray(padded),
                                               jnp.asarray(ones), jnp.int32(xk.shape[0]))
        check_committed(ok, lambda: feats, dt)
    return state._replace(sums=sums, second=second, counts=counts)


@jax.jit
def _normalised_covariance(sums: jax.Array, second: jax.Array, count: jax.Array, gamma1: jax.Array,
                           gamma2: jax.Array) -> tuple[jax.Array, jax.Array]:
    n = count.astype(sums.dtype)
    mean = sums / jnp.maximum(n, 1.0)
    cov = (second - n * jnp.outer(mean, mean)) / jnp.maximum(n - 1.0, 1.0)
    d = cov.shape[0]
    eye = jnp.eye(d, dtype=cov.dtype)
    v1 = jnp.trace(cov) / d
    v2 = (jnp.sum(cov) - jnp.trace(cov)) / max(d * (d - 1), 1)
    shrunk = cov + gamma1 * v1 * eye + gamma2 * v2 * (1.0 - eye)
    sd = jnp.sqrt(jnp.diagonal(shrunk))
    corr = shrunk / jnp.outer(sd, sd)
    # Fewer than two rows (or constant features): no covariance to estimate -- Euclidean distance instead.
    return mean, jnp.where((count >= 2) & (v1 > 0), corr, eye)


def fecam_covariances(state: FeCAMState) -> tuple[jax.Array, jax.Array]:
    """Class means ``(c, d)`` and the shrunk, correlation-normalised covariances ``(c, d, d)`` FeCAM scores with."""
    pairs = [_normalised_covariance(state.sums[:, k], state.second[k], state.counts[k], state.gamma1, state.gamma2)
             for k in range(state.counts.shape[0])]
    d = state.sums.shape[0]
    if not pairs:
        return jnp.zeros((0, d), state.sums.dtype), jnp.zeros((0, d, d), state.sums.dtype)
    return jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])


def fecam_predict(state: FeCAMState, x: Any) -> jax.Array:
    """``-(t(x) - μ_k)ᵀ Σ_k⁻¹ (t(x) - μ_k)``: (n, c) with ``t`` the Tukey transform; classes never seen score
    ``-inf``. Each ``Σ_k⁻¹ v`` is a Cholesky solve of the core (:func:`analytic.cholesky_ridge_solve`, γ = 0)."""
    x = check_features(x, dim=state.sums.shape[0])
    feats = _tukey(x.astype(state.sums.dtype), state.beta)
    columns = []
    counts = np.asarray(state.counts)
    for k in range(counts.shape[0]):
        if counts[k] == 0:
            columns.append(jnp.full((x.shape[0],), -jnp.inf, feats.dtype))
            continue
        mean, cov = _normalised_covariance(state.sums[:, k], state.second[k], state.counts[k], state.gamma1,
                                           state.gamma2)
        diff = feats - mean
        solved, kappa = cholesky_ridge_solve(cov, diff.T, 0.0)
        if not np.isfinite(float(kappa)):
            raise ValueError(f"FeCAM: the shrunk covariance of class column {k} is not positive definite; raise "
                             "gamma1")
        columns.append(-jnp.sum(diff.T * solved, axis=0))
    return jnp.stack(columns, axis=1) if columns else jnp.zeros((x.shape[0], 0), feats.dtype)


# -- class wrappers ----------------------------------------------------------------------------------------------
def _namespace(init: Any, update: Any, predict: Any, dim: Any, width: Any, dtype: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(init=init, update=update, predict=predict, input_dim=dim, num_classes=width,
                                 state_dtype=dtype)


class RanPAC(ContinualClassifier):
    """RanPAC (frozen backbone, no Phase 1) with scikit-learn verbs; ``partial_fit`` = one session.

    buffer_size: M (paper: 10000); seed: draws ``W_rand``; ridge: a fixed λ, or ``None`` to choose it per session
    by the authors' rule over ``ridges`` with the last ``holdout`` share of the session's rows held out."""

    _module = _namespace(ranpac_init, ranpac_update, ranpac_predict, lambda s: s.buffer.in_dim,
                         lambda s: s.stats.classes, lambda s: s.buffer.weight.dtype)
    _update_options = ("ridge", "ridges", "holdout")

    def __init__(self, buffer_size: int = 10000, *, ridge: float | None = None, ridges: Any = RANPAC_RIDGES,
                 holdout: float = 0.2, seed: int = 0, dtype: Any = None) -> None:
        super().__init__(buffer_size=buffer_size, ridge=ridge, ridges=ridges, holdout=holdout, seed=seed,
                         dtype=dtype)

    def _checked_params(self) -> dict[str, Any]:
        params = super()._checked_params()
        params["buffer_size"] = positive_int(params["buffer_size"], "buffer_size")
        params["seed"] = positive_int(params["seed"], "seed", minimum=0)
        params["ridge"] = None if params["ridge"] is None else check_gamma(params["ridge"], "ridge")
        params["ridges"] = list(_check_ridges(params["ridges"]))
        params["holdout"] = _check_fraction(params["holdout"], "holdout")
        return params

    @property
    def coef_(self) -> jax.Array:
        """Head weights ``(M, c)``."""
        self._require_fitted()
        return self._state.weight

    @property
    def ridge_(self) -> float:
        """The λ of the current head."""
        self._require_fitted()
        return float(self._state.gamma)


class NCM(ContinualClassifier):
    """Nearest class mean by cosine similarity (SimpleCIL's prototype classifier)."""

    _module = _namespace(ncm_init, ncm_update, ncm_predict, lambda s: s.sums.shape[0], lambda s: s.counts.shape[0],
                         lambda s: s.sums.dtype)

    def __init__(self, *, dtype: Any = None) -> None:
        super().__init__(dtype=dtype)


class FeCAM(ContinualClassifier):
    """FeCAM: per-class Mahalanobis distance with shrinkage and correlation normalisation.

    beta: Tukey power (1 = none; 0.5 in the paper, non-negative features only); gamma1 > 0, gamma2 >= 0: shrinkage.
    """

    _module = _namespace(fecam_init, fecam_update, fecam_predict, lambda s: s.sums.shape[0],
                         lambda s: s.counts.shape[0], lambda s: s.sums.dtype)

    def __init__(self, *, beta: float = 1.0, gamma1: float = 1.0, gamma2: float = 1.0, dtype: Any = None) -> None:
        super().__init__(beta=beta, gamma1=gamma1, gamma2=gamma2, dtype=dtype)

    def _checked_params(self) -> dict[str, Any]:
        params = super()._checked_params()
        params["beta"], params["gamma1"] = check_gamma(params["beta"], "beta"), check_gamma(params["gamma1"], "gamma1")
        g2 = params["gamma2"]
        if isinstance(g2, bool) or not isinstance(g2, int | float | np.number) or not (np.isfinite(g2) and g2 >= 0):
            raise ValueError(f"gamma2 must be a finite number >= 0, got {g2!r}")
        params["gamma2"] = float(g2)
        return params
