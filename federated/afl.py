"""AFL: analytic federated learning in one round (Zhuang et al., 2024, "Analytic Federated Learning").

Client ``k`` holds ``Xₖ: (nₖ, d)`` and labels; its local ridge problem has the regularized Gram
``Cₖ = XₖᵀXₖ + γI`` and weight ``Wₖ = Cₖ⁻¹XₖᵀYₖ``. The server's **absolute aggregation (AA) law** merges two
clients as ``W_uv = (C_u + C_v)⁻¹(C_u W_u + C_v W_v)``, ``C_uv = C_u + C_v``; folded over K clients it gives
``W_agg = (ΣCₖ)⁻¹ΣCₖWₖ = (XᵀX + KγI)⁻¹XᵀY``. **Regularization removal (RI)** then recovers the centralized
solution, ``W = (C_agg − KγI)⁻¹ C_agg W_agg = (XᵀX)⁻¹XᵀY``, optionally with one global ``γ_g`` re-added:
``(XᵀX + γ_g I)⁻¹XᵀY``. The result is the same for every partition and every client count.

Two server implementations:

- :func:`aggregate` -- the **sum form**: ``ΣCₖWₖ = ΣXₖᵀYₖ``, so the server only adds the uploaded Grams
  (``analytic.gram_merge``) and solves once (``analytic.ridge_solve``). Clients may report in any order and in
  several waves (pass the previous result's ``state``); a late wave merges exactly.
- :func:`aggregate_pairwise` -- the **literal** pairwise AA law above, one solve per client and per merge, kept
  for fidelity to the paper and as the speed baseline.

Every upload is screened by :mod:`federated.validation`; rejected clients are reported, never merged.
Authors' code (METHODS.md 2b): client Grams in float32 (``client_stats(..., dtype=np.float32)``), γ = 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analytic import GramStats, gram_accumulate, gram_init, gram_merge, ridge_solve
from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import resolve_dtype
from analytic.solve import cholesky_ridge_solve
from analytic.validation import check_features, check_gamma, check_labels
from federated.comm import CommLog
from federated.messages import AFLBroadcast, AFLUpload
from federated.validation import screen

__all__ = [
    "AFLServerState", "AFLResult", "client_stats", "server_init", "server_update", "server_solve", "aggregate",
    "aggregate_pairwise", "remove_regularization", "merge_uploads", "communication", "predict", "pad_client_data",
    "padded_rows",
]


@register_checkpoint_type
class AFLServerState(NamedTuple):
    """What the server keeps between waves: summed raw Grams, ``Σγₖ`` and the ids merged so far."""

    stats: GramStats
    gamma_sum: float
    clients: tuple[Any, ...]


class AFLResult(NamedTuple):
    """``weight (d, c)``; ``state`` to merge later waves into; ``excluded``: ``{client_id: reason}``."""

    weight: jax.Array
    state: AFLServerState
    excluded: dict[Any, str]


def padded_rows(n: int) -> int:
    """Rows a client batch is zero-padded to: a power of two (≥ 8). Zero rows add nothing to a Gram, and a
    simulation of 1000 clients of different sizes then compiles a handful of programs instead of one per size."""
    return max(8, 1 << max(0, int(n) - 1).bit_length())


def pad_client_data(
    x: Any, y: Any, classes: int, dtype: Any, name: str = "client"
) -> tuple[jax.Array, jax.Array, int]:
    """Validate a client's ``x: (n, d)`` and labels ``y: (n,)`` and return ``(x, one-hot Y, n)`` zero-padded to
    :func:`padded_rows` rows (padding rows have zero features and zero targets). ``n = 0`` is allowed."""
    x = np.asarray(x) if not hasattr(x, "dtype") else x
    n = int(np.shape(x)[0]) if np.ndim(x) == 2 else -1
    labels = check_labels(y, name=f"{name} y", classes=classes, n=n) if n > 0 else np.zeros(0, np.int64)
    rows = padded_rows(max(n, 0))
    padded = np.zeros((rows, *np.shape(x)[1:]), np.asarray(x).dtype) if n >= 0 else x
    if n > 0:
        padded[:n] = np.asarray(x)
    # Validation runs on the padded array so that its (jitted) finiteness check compiles once per bucket.
    features = check_features(padded, name=f"{name} x (zero-padded from {n} to {rows} rows)").astype(dtype)
    targets = np.zeros((rows, classes), dtype)
    targets[np.arange(labels.size), labels] = 1.0
    return features, jnp.asarray(targets), max(n, 0)


def client_stats(
    x: Any, y: Any, gamma: float, classes: int, client_id: int = 0, dtype: Any = None, compute_dtype: Any = None
) -> AFLUpload:
    """The client stage: ``AFLUpload(XₖᵀXₖ, XₖᵀYₖ, nₖ, γ)`` for features ``x: (n, d)`` and labels ``y: (n,)``.

    ``dtype`` is the statistics' (and transport) dtype -- float64 by default under x64, ``np.float32`` as in the
    authors' code. A client with no rows (possible under a skewed Dirichlet split) uploads zeros with count 0.
    """
    gamma = check_gamma(gamma)
    dt = resolve_dtype(dtype)
    features, targets, n = pad_client_data(x, y, classes, dt, name=f"client {client_id}")
    cd = None if compute_dtype is None else resolve_dtype(compute_dtype)
    stats = gram_accumulate(gram_init(features.shape[1], classes, dt), features, targets, jnp.int32(n), cd)
    return AFLUpload(int(client_id), np.asarray(stats.xtx), np.asarray(stats.xty), int(stats.count), gamma)


def server_init(dim: int, classes: int, dtype: Any = None) -> AFLServerState:
    """An empty server (accumulators in float64 under x64 whatever the clients' transport dtype)."""
    return AFLServerState(gram_init(dim, classes, dtype), 0.0, ())


def _accept(state: AFLServerState, messages: Iterable[AFLUpload], validate: bool, **checks: Any):
    if not validate:
        return list(messages), {}
    return screen(messages, kind=AFLUpload, dim=state.stats.dim, seen=state.clients, **checks)


def merge_uploads(stats: GramStats, uploads: Sequence[Any], gram: str = "xtx", cross: str = "xty") -> GramStats:
    """``stats ⊕ Σₖ (uploadₖ.gram, uploadₖ.cross, uploadₖ.count)`` -- the sum form of the AA law for any upload
    type (AFL uploads, DeepAFL's ``ΦᵀΦ, ΦᵀY`` and ``FᵀF, FᵀR``); narrower cross-moments are zero-padded."""
    if not uploads:
        return stats
    dt = np.dtype(stats.xtx.dtype)
    classes = max(stats.classes, *(np.shape(getattr(m, cross))[1] for m in uploads))
    # The sum runs in place on the host: one device transfer per wave instead of one per client.
    xtx = np.zeros((stats.dim, stats.dim), dt)
    xty = np.zeros((stats.dim, classes), dt)
    count = 0
    for m in uploads:
        g, r = getattr(m, gram), getattr(m, cross)
        xtx += g  # (measured ~3x faster than np.add(..., out=...) for a float32 -> float64 accumulate)
        xty[:, : r.shape[1]] += r
        count += m.count
    return gram_merge(stats, GramStats(jnp.asarray(xtx), jnp.asarray(xty), jnp.asarray(count, jnp.int32)))


def server_update(
    state: AFLServerState, messages: Iterable[AFLUpload], *, validate: bool = True, **checks: Any
) -> tuple[AFLServerState, dict[Any, str]]:
    """Merge a wave of uploads (sum form of the AA law); returns ``(state, excluded)``.

    ``checks`` go to :func:`federated.validation.check_upload` (``psd``, ``dtype``, ``classes``).
    """
    accepted, excluded = _accept(state, messages, validate, **checks)
    if not accepted:
        return state, excluded
    stats = merge_uploads(state.stats, accepted)
    gamma_sum = state.gamma_sum + float(sum(m.gamma for m in accepted))
    return AFLServerState(stats, gamma_sum, state.clients + tuple(m.client_id for m in accepted)), excluded


def _solve(xtx: jax.Array, rhs: jax.Array, gamma: float) -> jax.Array:
    """``(xtx + γI)⁻¹ rhs``; γ = 0 (plain least squares after RI) needs a non-singular ``xtx``."""
    if gamma > 0:
        return ridge_solve(xtx, rhs, gamma)
    w, kappa = cholesky_ridge_solve(xtx, rhs, 0.0)
    if not np.isfinite(float(kappa)):
        raise ValueError(
            f"the pooled Gram XᵀX (d={xtx.shape[0]}) is singular, so the unregularized solution does not exist; "
            "pass global_gamma > 0 to re-add one ridge term"
        )
    return w


def server_solve(state: AFLServerState, *, remove_regularization: bool = True, global_gamma: float = 0.0) -> jax.Array:
    """Global weight: with RI ``(XᵀX + γ_g I)⁻¹XᵀY``; without RI ``(XᵀX + ΣγₖI)⁻¹XᵀY`` (the raw AA law)."""
    if not state.clients:
        raise ValueError("no client statistics have been merged yet")
    if global_gamma < 0 or not np.isfinite(global_gamma):
        raise ValueError(f"global_gamma must be finite and >= 0, got {global_gamma!r}")
    gamma = global_gamma if remove_regularization else state.gamma_sum
    return _solve(state.stats.xtx, state.stats.xty, gamma)


def aggregate(
    messages: Iterable[AFLUpload],
    *,
    remove_regularization: bool = True,
    global_gamma: float = 0.0,
    state: AFLServerState | None = None,
    validate: bool = True,
    dtype: Any = None,
    **checks: Any,
) -> AFLResult:
    """The AFL server, sum form: screen, merge (onto ``state`` for a later wave) and solve once."""
    messages = list(messages)
    if state is None:
        first = next((m for m in messages if isinstance(m, AFLUpload) and np.ndim(m.xtx) == 2), None)
        if first is None:
            raise ValueError("aggregate: no AFLUpload with a 2-D Gram among the messages")
        state = server_init(np.shape(first.xtx)[0], 0, dtype)
    state, excluded = server_update(state, messages, validate=validate, **checks)
    weight = server_solve(state, remove_regularization=remove_regularization, global_gamma=global_gamma)
    return AFLResult(weight, state, excluded)


def remove_regularization(
    weight: Any, regularized_gram: Any, gamma_total: float, global_gamma: float = 0.0
) -> jax.Array:
    """RI, literally: ``W = (C_agg − KγI + γ_g I)⁻¹ C_agg W_agg`` for ``C_agg = XᵀX + KγI`` (``gamma_total = Kγ``)."""
    c = jnp.asarray(regularized_gram)
    rhs = jnp.matmul(c, jnp.asarray(weight), precision=jax.lax.Precision.HIGHEST)
    return _solve(c - gamma_total * jnp.eye(c.shape[0], dtype=c.dtype), rhs, global_gamma)


_regularization_removal = remove_regularization  # aggregate_pairwise's keyword argument shadows the name


def aggregate_pairwise(
    messages: Iterable[AFLUpload],
    *,
    remove_regularization: bool = True,
    global_gamma: float = 0.0,
    validate: bool = True,
    dtype: Any = None,
    local_weights: list[Any] | None = None,
    **checks: Any,
) -> AFLResult:
    """The literal AA law folded over the clients: ``W_uv = (C_u + C_v)⁻¹(C_u W_u + C_v W_v)``, then RI.

    Each client's ``Wₖ = Cₖ⁻¹XₖᵀYₖ`` is solved here unless ``local_weights`` (one per message, as an AFL client
    would upload) are given. ``Cₖ`` is kept as ``(XₖᵀXₖ, γₖ)`` so every solve goes through ``ridge_solve``.
    """
    messages = list(messages)
    if not messages:
        raise ValueError("aggregate_pairwise: no messages")
    dt = resolve_dtype(dtype)
    weights = dict(enumerate(local_weights)) if local_weights is not None else {}
    indexed = list(enumerate(messages))
    if validate:
        dim = np.shape(messages[0].xtx)[0] if isinstance(messages[0], AFLUpload) else None
        ok, excluded = screen([m for _, m in indexed], kind=AFLUpload, dim=dim, **checks)
        keep = {id(m) for m in ok}
        indexed = [(i, m) for i, m in indexed if id(m) in keep]
    else:
        excluded = {}
    if not indexed:
        raise ValueError(f"aggregate_pairwise: every message was rejected: {excluded}")
    classes = max(m.xty.shape[1] for _, m in indexed)
    gram = w = None
    gamma_sum, count = 0.0, 0
    for i, m in indexed:
        g_k = jnp.asarray(m.xtx, dt)
        xty_k = jnp.pad(jnp.asarray(m.xty, dt), ((0, 0), (0, classes - m.xty.shape[1])))
        w_k = jnp.asarray(weights[i], dt) if i in weights else ridge_solve(g_k, xty_k, m.gamma)
        if gram is None:
            gram, w, gamma_sum = g_k, w_k, m.gamma
        else:
            # C_u W_u + C_v W_v with C = G + γI.
            rhs = gram @ w + gamma_sum * w + g_k @ w_k + m.gamma * w_k
            gram, gamma_sum = gram + g_k, gamma_sum + m.gamma
            w = ridge_solve(gram, rhs, gamma_sum)
        count += m.count
    c_agg = gram + gamma_sum * jnp.eye(gram.shape[0], dtype=dt)
    # C_agg W_agg = ΣXₖᵀYₖ: the state carries the same statistics as the sum form's.
    stats = GramStats(gram, c_agg @ w, jnp.asarray(count, jnp.int32))
    state = AFLServerState(stats, gamma_sum, tuple(m.client_id for _, m in indexed))
    if remove_regularization:
        w = _regularization_removal(w, c_agg, gamma_sum, global_gamma)
    return AFLResult(w, state, excluded)


def communication(messages: Iterable[AFLUpload], weight: Any) -> dict[str, float]:
    """Bytes up/down per client for one AFL round (one upload each, one :class:`AFLBroadcast` each)."""
    messages = list(messages)
    log = CommLog()
    broadcast = AFLBroadcast(np.asarray(weight), sum(m.count for m in messages), 0.0)
    log.record_messages(messages, broadcast, [m.client_id for m in messages])
    return log.summary()


def predict(weight: Any, x: Any) -> jax.Array:
    """Class ids ``argmax(x W)`` for ``x: (n, d)``."""
    x = check_features(x, dim=np.shape(weight)[0])
    return jnp.argmax(x.astype(jnp.asarray(weight).dtype) @ jnp.asarray(weight), axis=1)
