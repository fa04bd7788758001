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

The server's shape comes from its own configuration -- ``server_init(dim, classes)`` or
``aggregate(messages, dim=..., classes=...)`` -- never from an upload, so no client can set the dimension, class
count or dtype the others are judged by. Every upload is screened by :mod:`federated.validation`; a rejected
message is reported (one :class:`~federated.validation.Rejection` per message), never merged, and never aborts
the round or displaces another client's valid upload. The server state changes only by merging accepted uploads.
With the default ``psd="probe"`` screening (``O(d²)`` per upload) the server also certifies the wave's summed
Gram by one Cholesky factorization and, if that fails, screens the wave again with the exact per-upload check
(:mod:`federated.validation` states the resulting guarantee). The merge is always the sum of the finally
accepted uploads in their input order, so a wave with rejected messages merges exactly as the same wave without
them, bit for bit.
As in the authors' code, clients may send float32 Grams (``client_stats(..., dtype=np.float32)``) with γ = 1.
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
from federated.validation import DEFAULT_PSD, Rejection, screen, sum_is_psd, tolerance, warn_rejections

__all__ = [
    "AFLServerState", "AFLResult", "client_stats", "server_init", "server_update", "server_solve", "aggregate",
    "aggregate_pairwise", "remove_regularization", "merge_uploads", "communication", "predict", "pad_client_data",
    "padded_rows",
]


@register_checkpoint_type
class AFLServerState(NamedTuple):
    """What the server keeps between waves: summed raw Grams, ``Σγₖ``, the ids merged so far, the exact total row
    count (a Python ``int``: ``stats.count`` is the core's int32 counter and saturates) and the declared class
    count (``None``: the target width grows to the widest accepted upload)."""

    stats: GramStats
    gamma_sum: float
    clients: tuple[int | str, ...]
    count: int = 0
    declared_classes: int | None = None


class AFLResult(NamedTuple):
    """``weight (d, c)``; ``state`` to merge later waves into; ``excluded``: one
    :class:`~federated.validation.Rejection` ``(position, client_id, reason)`` per rejected message."""

    weight: jax.Array
    state: AFLServerState
    excluded: list[Rejection]


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
    if n == 0 and np.size(y) != 0:
        # check_labels refuses empty labels, so the n = 0 case is checked here: 0 rows need 0 labels.
        raise ValueError(f"{name} y has {np.size(y)} labels but x has 0 rows")
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
    authors' code. A client with no rows (possible under a skewed Dirichlet split) uploads zeros with count 0;
    labels must number as many as ``x``'s rows. ``ValueError`` naming ``x`` if finite features overflow the
    statistics' dtype (e.g. an entry 1e200 in float64, 1e30 in float32: ``XᵀX`` would hold inf, and every server
    would rightly reject the upload).
    """
    gamma = check_gamma(gamma)
    dt = resolve_dtype(dtype)
    name = f"client {client_id}"
    features, targets, n = pad_client_data(x, y, classes, dt, name=name)
    cd = None if compute_dtype is None else resolve_dtype(compute_dtype)
    stats = gram_accumulate(gram_init(features.shape[1], classes, dt), features, targets, jnp.int32(n), cd)
    xtx, xty = np.asarray(stats.xtx), np.asarray(stats.xty)
    if not (np.isfinite(xtx).all() and np.isfinite(xty).all()):
        big = float(np.abs(np.asarray(x, np.float64)).max()) if n else 0.0
        raise ValueError(f"{name} x: its statistics XᵀX/XᵀY overflow {np.dtype(dt)} (max |x| = {big:.3g}); "
                         "rescale the features")
    return AFLUpload(int(client_id), xtx, xty, n, gamma)


def server_init(dim: int, classes: int | None = None, dtype: Any = None) -> AFLServerState:
    """An empty server for ``dim`` features (accumulators in float64 under x64 whatever the clients' transport
    dtype). With ``classes`` declared, an upload with more target columns is rejected and the accumulator is
    ``classes`` wide; without, the width grows to the widest accepted upload."""
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"server_init: dim must be an integer >= 1, got {dim!r}")
    if classes is not None and (isinstance(classes, (bool, np.bool_)) or not isinstance(classes, (int, np.integer))
                                or classes < 1):
        raise ValueError(f"server_init: classes must be an integer >= 1 or None, got {classes!r}")
    declared = None if classes is None else int(classes)
    return AFLServerState(gram_init(int(dim), declared or 0, dtype), 0.0, (), 0, declared)


def _accept(state: AFLServerState, messages: list[AFLUpload], validate: bool,
            **checks: Any) -> tuple[list[AFLUpload], list[Rejection]]:
    if not validate:
        return list(messages), []
    if "dim" in checks or "kind" in checks or "layer" in checks:
        raise TypeError("server_update: the dimension comes from the server state; pass psd/dtype/classes only")
    classes = checks.pop("classes", None)
    if classes is not None and state.declared_classes is not None and classes != state.declared_classes:
        raise ValueError(f"server_update: classes={classes!r} but the server declared {state.declared_classes}")
    if classes is None:
        classes = state.declared_classes
    return screen(messages, kind=AFLUpload, dim=state.stats.dim, classes=classes, seen=state.clients, warn=False,
                  **checks)


def _wave_sum(dim: int, width: int, dtype: Any, uploads: Sequence[Any], gram: str,
              cross: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``(ΣGₖ, ΣRₖ, Σnₖ)`` of ``uploads`` on the host, added one upload at a time in input order."""
    xtx = np.zeros((dim, dim), dtype)
    xty = np.zeros((dim, width), dtype)
    count = 0
    for m in uploads:
        g, r = getattr(m, gram), getattr(m, cross)
        # In place and in input order: the sum of an accepted list is the same bits whichever messages around
        # it were rejected (and ~3x faster than np.add(..., out=...) for a float32 -> float64 accumulate).
        xtx += g
        xty[:, : r.shape[1]] += r
        count += int(m.count)
    return xtx, xty, count


def _onto(stats: GramStats, xtx: np.ndarray, xty: np.ndarray, count: int) -> GramStats:
    """``stats ⊕ (xtx, xty, count)``; ``GramStats.count`` is the core's int32 counter and saturates here rather
    than wrap (a count up to 2**62 is valid; the exact total lives in :class:`AFLServerState`)."""
    limit = int(np.iinfo(np.dtype(stats.count.dtype)).max)
    merged = GramStats(jnp.asarray(xtx), jnp.asarray(xty), jnp.asarray(0, stats.count.dtype))
    merged = gram_merge(stats._replace(count=jnp.asarray(0, stats.count.dtype)), merged)
    return merged._replace(count=jnp.asarray(min(int(stats.count) + count, limit), stats.count.dtype))


def merge_uploads(stats: GramStats, uploads: Sequence[Any], gram: str = "xtx", cross: str = "xty") -> GramStats:
    """``stats ⊕ Σₖ (uploadₖ.gram, uploadₖ.cross, uploadₖ.count)`` -- the sum form of the AA law for any upload
    type (AFL uploads, DeepAFL's ``ΦᵀΦ, ΦᵀY`` and ``FᵀF, FᵀR``); narrower cross-moments are zero-padded."""
    if not uploads:
        return stats
    classes = max(stats.classes, *(np.shape(getattr(m, cross))[1] for m in uploads))
    # One device transfer per wave instead of one per client.
    return _onto(stats, *_wave_sum(stats.dim, classes, np.dtype(stats.xtx.dtype), uploads, gram, cross))


def screen_and_merge(stats: GramStats, run_screen: Any, psd: str, gram: str = "xtx",
                     cross: str = "xty") -> tuple[Any, GramStats]:
    """Screen a wave, certify and merge it: ``run_screen(psd, on_checked)`` screens (passing ``on_checked`` to
    :func:`federated.validation.screen`, or ignoring it) and returns a tuple whose first item is the accepted
    uploads; returns ``(that tuple, stats ⊕ their sum)``. An honest wave is summed during its screening.

    With ``psd="probe"`` the wave's summed Gram must pass :func:`federated.validation.sum_is_psd` (one
    Cholesky factorization, at the loosest tolerance of the uploads' dtypes); if it does not, some accepted
    upload is indefinite, and the wave is screened again by ``run_screen("cholesky", None)`` -- the exact per-upload
    check -- whose verdict is final. The accepted uploads are re-summed in their input order, so the merge equals
    that of the wave without the rejected messages, bit for bit.
    """
    dt = np.dtype(stats.xtx.dtype)
    speculative = _SpeculativeSum(stats.dim, stats.classes, dt, gram, cross)
    out = run_screen(psd, speculative)
    uploads = out[0]
    if not uploads:
        return out, stats
    wave = speculative.result(uploads)
    if wave is None:  # something was rejected after its checks: sum the accepted uploads afresh, in input order
        classes = max(stats.classes, *(np.shape(getattr(m, cross))[1] for m in uploads))
        wave = _wave_sum(stats.dim, classes, dt, uploads, gram, cross)
    if psd == "probe":
        tol = max(tolerance(getattr(m, gram).dtype, stats.dim) for m in uploads)
        if not sum_is_psd(wave[0], tol):
            out = run_screen("cholesky", None)
            uploads = out[0]
            if not uploads:
                return out, stats
            classes = max(stats.classes, *(np.shape(getattr(m, cross))[1] for m in uploads))
            wave = _wave_sum(stats.dim, classes, dt, uploads, gram, cross)
    return out, _onto(stats, *wave)


class _SpeculativeSum:
    """:func:`_wave_sum` built during screening (``on_checked`` of :func:`federated.validation.screen`): each
    upload that passed its own checks is added, its Gram during its probe product, so an honest wave's Grams are
    read from memory about once. Valid only if exactly the uploads it holds were accepted, in that order --
    then it is the same additions in the same order as :func:`_wave_sum`, bit for bit."""

    def __init__(self, dim: int, classes: int, dtype: np.dtype, gram: str, cross: str) -> None:
        self.xtx = np.zeros((dim, dim), dtype)
        self.xty = np.zeros((dim, classes), dtype)
        self.count, self.members, self.gram, self.cross = 0, [], gram, cross

    def __call__(self, upload: Any) -> np.ndarray | None:
        """Add the upload's cross-moments and count; return the array its Gram is to be added into."""
        g, r = getattr(upload, self.gram), getattr(upload, self.cross)
        if g.shape != self.xtx.shape or r.ndim != 2 or r.shape[0] != self.xtx.shape[0]:
            self.members.append(None)  # not the server's shape: it will be rejected, and this sum discarded
            return None
        if r.shape[1] > self.xty.shape[1]:
            self.xty = np.pad(self.xty, ((0, 0), (0, r.shape[1] - self.xty.shape[1])))
        self.xty[:, : r.shape[1]] += r
        self.count += int(upload.count)
        self.members.append(upload)
        return self.xtx

    def result(self, accepted: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, int] | None:
        same = len(accepted) == len(self.members) and all(a is b for a, b in zip(accepted, self.members))
        return (self.xtx, self.xty, self.count) if same else None


def server_update(
    state: AFLServerState, messages: Iterable[AFLUpload], *, validate: bool = True, **checks: Any
) -> tuple[AFLServerState, list[Rejection]]:
    """Merge a wave of uploads (sum form of the AA law); returns ``(state, excluded)``.

    Screening uses the state's dimension and declared classes and the ids merged so far (a second upload for
    an id is rejected); ``checks`` go to :func:`federated.validation.screen` (``psd`` -- default ``"probe"``,
    then the wave's sum is certified as in :func:`screen_and_merge` --, ``probes``, ``probe_seed``, ``dtype`` --
    the transport dtype --, ``classes`` if the state declared none). One
    :class:`~federated.validation.RejectedUploadWarning` per rejected message. ``state`` is returned unchanged
    when nothing was accepted. ``validate=False`` trusts the messages (benchmarks of the bare sum).
    """
    messages = list(messages)
    psd = checks.pop("psd", DEFAULT_PSD)
    (accepted, excluded), stats = screen_and_merge(
        state.stats, lambda mode, on_checked: _accept(state, messages, validate, psd=mode, on_checked=on_checked,
                                                     **checks), psd if validate else "none")
    warn_rejections(excluded)
    if not accepted:
        return state, excluded
    gamma_sum = state.gamma_sum + float(sum(m.gamma for m in accepted))
    count = state.count + sum(int(m.count) for m in accepted)
    clients = state.clients + tuple(m.client_id for m in accepted)
    return AFLServerState(stats, gamma_sum, clients, count, state.declared_classes), excluded


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
    global_gamma = _nonnegative(global_gamma, "global_gamma")
    gamma = global_gamma if remove_regularization else state.gamma_sum
    return _solve(state.stats.xtx, state.stats.xty, gamma)


def _nonnegative(value: Any, name: str) -> float:
    """``value`` as a float, or ``ValueError`` naming ``name`` unless it is a finite real number ≥ 0."""
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not real and not (isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0
                         and np.asarray(value).dtype.kind in "iuf"):
        raise ValueError(f"{name} must be a finite real number >= 0, got {type(value).__name__} {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"{name} must be a finite real number >= 0, got {value!r}") from err
    if not np.isfinite(out) or out < 0:
        raise ValueError(f"{name} must be a finite real number >= 0, got {value!r}")
    return out


def _initial_state(caller: str, state: AFLServerState | None, dim: int | None, classes: int | None,
                   dtype: Any) -> AFLServerState:
    """The server's configured state: ``state`` (then ``dim``/``classes`` must agree) or ``server_init``."""
    if state is None:
        if dim is None:
            raise ValueError(f"{caller}: pass dim= (the feature dimension this server expects, and optionally "
                             "classes=) or the state= of an earlier wave; the server never takes its shape from "
                             "an upload, which any client could forge")
        return server_init(dim, classes, dtype)
    if dim is not None and dim != state.stats.dim:
        raise ValueError(f"{caller}: dim={dim!r} but the state holds dim={state.stats.dim}")
    if classes is not None and state.declared_classes is not None and classes != state.declared_classes:
        raise ValueError(f"{caller}: classes={classes!r} but the state declared {state.declared_classes}")
    return state


def aggregate(
    messages: Iterable[AFLUpload],
    *,
    dim: int | None = None,
    classes: int | None = None,
    remove_regularization: bool = True,
    global_gamma: float = 0.0,
    state: AFLServerState | None = None,
    validate: bool = True,
    dtype: Any = None,
    transport_dtype: Any = None,
    psd: str = DEFAULT_PSD,
    probes: int | None = None,
    probe_seed: Any = None,
) -> AFLResult:
    """The AFL server, sum form: screen, merge (onto ``state`` for a later wave) and solve once.

    The server's shape is ``dim`` features and (if given) ``classes`` target columns -- or that of ``state``, and
    then ``classes`` caps this wave's uploads if the state declared none; it is never read from an upload.
    ``dtype`` is the accumulator dtype of a new state, ``transport_dtype`` pins the uploads' dtype (``None``:
    float32 or float64), ``psd`` / ``probes`` / ``probe_seed`` the symmetry and PSD screening of
    :mod:`federated.validation` (default: server-random probes per upload plus a certificate of the sum, see
    :func:`screen_and_merge`).
    """
    messages = list(messages)
    state = _initial_state("aggregate", state, dim, classes, dtype)
    checks: dict[str, Any] = {"psd": psd, "dtype": transport_dtype, "probe_seed": probe_seed}
    if probes is not None:
        checks["probes"] = probes
    if classes is not None and state.declared_classes is None:
        checks["classes"] = classes
    state, excluded = server_update(state, messages, validate=validate, **checks)
    weight = server_solve(state, remove_regularization=remove_regularization, global_gamma=global_gamma)
    return AFLResult(weight, state, excluded)


def remove_regularization(
    weight: Any, regularized_gram: Any, gamma_total: float, global_gamma: float = 0.0
) -> jax.Array:
    """RI, literally: ``W = (C_agg − KγI + γ_g I)⁻¹ C_agg W_agg`` for ``C_agg = XᵀX + KγI`` (``gamma_total = Kγ``).

    ``gamma_total`` and ``global_gamma`` must be finite and ≥ 0 (``ValueError`` naming the argument).
    """
    gamma_total = _nonnegative(gamma_total, "gamma_total")
    global_gamma = _nonnegative(global_gamma, "global_gamma")
    c = jnp.asarray(regularized_gram)
    rhs = jnp.matmul(c, jnp.asarray(weight), precision=jax.lax.Precision.HIGHEST)
    return _solve(c - gamma_total * jnp.eye(c.shape[0], dtype=c.dtype), rhs, global_gamma)


_regularization_removal = remove_regularization  # aggregate_pairwise's keyword argument shadows the name


def aggregate_pairwise(
    messages: Iterable[AFLUpload],
    *,
    dim: int | None = None,
    classes: int | None = None,
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
    ``dim`` (required) and ``classes`` are the server's shape, as for :func:`aggregate`.
    """
    messages = list(messages)
    if dim is None:
        raise ValueError("aggregate_pairwise: pass dim= (the feature dimension this server expects); the server "
                         "never takes its shape from an upload")
    if not messages:
        raise ValueError("aggregate_pairwise: no messages")
    dt = resolve_dtype(dtype)
    weights = dict(enumerate(local_weights)) if local_weights is not None else {}
    excluded: list[Rejection] = []
    if validate:
        psd = checks.pop("psd", DEFAULT_PSD)
        ok, excluded = screen(messages, kind=AFLUpload, dim=dim, classes=classes, warn=False, psd=psd, **checks)
        if psd == "probe" and ok:
            # The same certificate of the sum as the sum-form server's (screen_and_merge).
            tol = max(tolerance(m.xtx.dtype, dim) for m in ok)
            width = max(m.xty.shape[1] for m in ok)
            if not sum_is_psd(_wave_sum(dim, width, np.dtype(np.float64), ok, "xtx", "xty")[0], tol):
                ok, excluded = screen(messages, kind=AFLUpload, dim=dim, classes=classes, warn=False, psd="cholesky",
                                      **checks)
        warn_rejections(excluded)
        rejected = {r.position for r in excluded}
        indexed = list(zip([i for i in range(len(messages)) if i not in rejected], ok))
    else:
        indexed = list(enumerate(messages))
    if not indexed:
        raise ValueError(f"aggregate_pairwise: every message was rejected: {excluded}")
    width = max(m.xty.shape[1] for _, m in indexed) if classes is None else classes
    gram = w = None
    gamma_sum, count = 0.0, 0
    for i, m in indexed:
        g_k = jnp.asarray(m.xtx, dt)
        xty_k = jnp.pad(jnp.asarray(m.xty, dt), ((0, 0), (0, width - m.xty.shape[1])))
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
    stats = GramStats(gram, c_agg @ w, jnp.asarray(min(count, int(np.iinfo(np.int32).max)), jnp.int32))
    state = AFLServerState(stats, gamma_sum, tuple(m.client_id for _, m in indexed), count, classes)
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
