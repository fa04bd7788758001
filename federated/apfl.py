"""APFL: analytic personalized federated learning via dual-stream least squares (Fan, Tang, Yang, ..., Liu &
Zhuang, 2025, "APFL: Analytic Personalized Federated Learning via Dual-Stream Least Squares", arXiv 2508.10732).

The paper (abstract, the only part of its text reachable from this environment) puts two analytic streams behind a
frozen foundation-model backbone: a **shared primary stream** for global generalization, trained over all clients in
closed form, and a **dedicated refinement stream** per client for personalization, also closed form; its
"heterogeneity invariance" says each personalized model is the same however the data are spread over the *other*
clients. The equations of the paper's method section were not reachable, so the construction below is **ours**,
built to have exactly those properties, and the equation labels refer to this docstring:

- (1) **Primary stream** = AFL (:mod:`federated.afl`): ``W_g = (XᵀX + γ_g I)⁻¹XᵀY`` over the pooled rows of all
  clients, i.e. pooled ridge, by the sum of uploaded Grams (partition- and order-invariant).
- (2) **Refinement stream** of client ``k``: a ridge on the client's own rows fitted to the *residual* of the
  primary stream, on features ``φ(x) = [ψ(x), 1]`` (``ψ`` = identity or a fixed random expansion
  :class:`analytic.RandomBuffer`; the constant column lets the stream absorb the client's label prior):
  ``R_k = Y_k − X_k W_g``, ``V_k = (Φ_kᵀΦ_k + γ_p I)⁻¹ Φ_kᵀ R_k``.
- (3) **Personalized logits** ``z_k(x) = x W_g + α·φ(x) V_k`` and class ``argmax z_k``.

With ``ψ`` = identity, no bias column and ``α = 1``, (2)-(3) reduce to ``W_k = (X_kᵀX_k + γ_p I)⁻¹(X_kᵀY_k + γ_p W_g)``:
the client's own ridge shrunk toward the global weight instead of toward zero (γ_p → ∞ gives the global model,
γ_p → 0 the local least squares). (1) depends on the union of the data only and (2) on (1) and the client's own
rows, hence heterogeneity invariance holds exactly. The refinement stream never leaves the client; only the
primary stream's AFL upload does, so every upload is screened by :mod:`federated.validation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analytic import GramStats, RandomBuffer, gram_accumulate, gram_init, ridge_solve
from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import resolve_dtype
from analytic.validation import check_feature_layout, check_features, check_gamma
from continual._wrapper import positive_int
from federated import afl
from federated.messages import AFLUpload

__all__ = ["PersonalStream", "apfl_client_stats", "apfl_server", "personal_features", "personalize", "logits",
           "predict", "APFL"]


@register_checkpoint_type
class PersonalStream(NamedTuple):
    """Client ``k``'s refinement stream: ``weight`` ``V_k`` of eq. (2), its statistics ``(Φ_kᵀΦ_k, Φ_kᵀR_k, n_k)``,
    ``gamma`` ``γ_p``, mixing weight ``alpha`` ``α`` of eq. (3), the fixed expansion ``buffer`` (``None``:
    identity) and whether ``φ`` carries a constant column (``bias``)."""

    weight: jax.Array
    stats: GramStats
    gamma: float
    alpha: float
    buffer: RandomBuffer | None
    bias: bool


def apfl_client_stats(x: Any, y: Any, classes: int, client_id: int | str = 0, gamma: float = 1.0,
                      dtype: Any = None) -> AFLUpload:
    """The primary stream's upload: exactly :func:`federated.afl.client_stats` (``γ`` is removed by the server)."""
    return afl.client_stats(x, y, gamma, classes, client_id=client_id, dtype=dtype)


def apfl_server(uploads: Iterable[AFLUpload], *, dim: int | None = None, classes: int | None = None,
                global_gamma: float = 1.0, state: afl.AFLServerState | None = None, **checks: Any) -> afl.AFLResult:
    """Eq. (1): the AFL server (sum form, regularization removed, ``γ_g = global_gamma`` re-added), with
    :func:`federated.afl.aggregate`'s screening; ``checks`` (``psd``, ``transport_dtype``...) are passed on."""
    return afl.aggregate(uploads, dim=dim, classes=classes, state=state, remove_regularization=True,
                         global_gamma=global_gamma, **checks)


def personal_features(x: Any, buffer: RandomBuffer | None = None, bias: bool = True) -> jax.Array:
    """``φ(x) = [ψ(x), 1]`` of eq. (2) for validated features ``x``."""
    psi = x if buffer is None else buffer(x)
    if not bias:
        return psi
    return jnp.concatenate([psi, jnp.ones((psi.shape[0], 1), psi.dtype)], axis=1)


@partial(jax.jit, static_argnames="bias")
def _residual_stats(x: jax.Array, targets: jax.Array, mask: jax.Array, w_g: jax.Array, buffer: RandomBuffer | None,
                    bias: bool) -> GramStats:
    """``(ΦᵀΦ, ΦᵀR, n)`` of eq. (2) on a padded block; ``mask`` marks the real rows."""
    residual = targets - jnp.matmul(x, w_g, precision=jax.lax.Precision.HIGHEST)
    phi = personal_features(x, buffer, bias).astype(x.dtype) * mask[:, None].astype(x.dtype)
    return gram_accumulate(gram_init(phi.shape[1], w_g.shape[1], x.dtype), phi, residual,
                           jnp.sum(mask).astype(jnp.int32))


def _check_weight(weight: Any, name: str) -> jax.Array:
    w = jnp.asarray(weight)
    if w.ndim != 2 or not jnp.issubdtype(w.dtype, jnp.floating):
        raise ValueError(f"{name} must be a 2-D float array (features, classes), got {w.dtype} {tuple(w.shape)}")
    if not bool(jnp.all(jnp.isfinite(w))):
        raise ValueError(f"{name} holds NaN or inf")
    return w


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"alpha must be a real number >= 0, got {type(alpha).__name__} {alpha!r}")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite real number >= 0, got {alpha!r}")
    return float(alpha)


def personalize(global_weight: Any, x: Any, y: Any, *, gamma: float = 1.0, alpha: float = 1.0,
                buffer: RandomBuffer | None = None, bias: bool = True, dtype: Any = None) -> PersonalStream:
    """Eq. (2) on one client's rows ``x: (n, d)``, ``y: (n,)``: the ridge of the primary stream's residual.

    Runs on the client; nothing here is uploaded. ``buffer`` (optional) must take ``d`` inputs.
    """
    w_g = _check_weight(global_weight, "global_weight")
    dt = resolve_dtype(dtype)
    d, c = w_g.shape
    check_feature_layout(x, "x", d, allow_empty=False)
    gamma = check_gamma(gamma, "gamma")
    alpha = _check_alpha(alpha)
    if buffer is not None and (not isinstance(buffer, RandomBuffer) or buffer.in_dim != d):
        raise ValueError(f"buffer must be an analytic.RandomBuffer taking {d} inputs, got {buffer!r}")
    # Zero-padded to a power-of-two bucket (as AFL's clients are), so clients of many sizes share a few compiled
    # programs; padding rows are masked out of Φ (its constant column would otherwise count them).
    xp, targets, n = afl.pad_client_data(x, y, c, dt, name="client")
    stats = _residual_stats(xp, targets, jnp.arange(xp.shape[0]) < n, w_g.astype(dt), buffer, bool(bias))
    weight = ridge_solve(stats.xtx, stats.xty, gamma)
    return PersonalStream(weight, stats, gamma, alpha, buffer, bool(bias))


def logits(global_weight: Any, personal: PersonalStream | None, x: Any) -> jax.Array:
    """Eq. (3): ``x W_g + α φ(x) V_k`` (``personal=None``: the primary stream alone)."""
    w_g = _check_weight(global_weight, "global_weight")
    x = check_features(x, "x", dim=w_g.shape[0])
    z = jnp.matmul(x.astype(w_g.dtype), w_g, precision=jax.lax.Precision.HIGHEST)
    if personal is None:
        return z
    if not isinstance(personal, PersonalStream):
        raise TypeError(f"personal must be a PersonalStream (see personalize), got {type(personal).__name__}")
    if personal.weight.shape[1] != w_g.shape[1]:
        raise ValueError(f"personal stream has {personal.weight.shape[1]} classes, global_weight {w_g.shape[1]}")
    phi = personal_features(x.astype(personal.weight.dtype), personal.buffer, personal.bias)
    return z + personal.alpha * jnp.matmul(phi, personal.weight, precision=jax.lax.Precision.HIGHEST)


def predict(global_weight: Any, personal: PersonalStream | None, x: Any) -> jax.Array:
    """Class ids ``argmax`` of :func:`logits`."""
    return jnp.argmax(logits(global_weight, personal, x), axis=1)


class APFL:
    """Both streams over in-process clients: ``fit([(x_k, y_k), ...])`` runs one AFL round for the primary stream
    and every client's refinement stream; ``predict(k, x)`` is client ``k``'s personalized prediction.

    ``buffer_size`` (optional) gives every refinement stream a seeded ``RandomBuffer(d, buffer_size, activation)``
    expansion. A ``fit`` that raised leaves the object unchanged.
    """

    def __init__(self, classes: int, global_gamma: float = 1.0, gamma: float = 1.0, alpha: float = 1.0,
                 buffer_size: int | None = None, activation: str = "relu", seed: int = 0, bias: bool = True,
                 dtype: Any = None) -> None:
        self.classes = positive_int(classes, "classes")
        self.global_gamma = check_gamma(global_gamma, "global_gamma")
        self.gamma = check_gamma(gamma, "gamma")
        self.alpha = _check_alpha(alpha)
        self.buffer_size = None if buffer_size is None else positive_int(buffer_size, "buffer_size")
        self.activation, self.seed, self.bias, self.dtype = activation, seed, bool(bias), dtype
        self.global_weight: jax.Array | None = None
        self.personal: list[PersonalStream] = []
        self.excluded: list[Any] = []

    def fit(self, clients: Sequence[tuple[Any, Any]]) -> APFL:
        clients = list(clients)
        if not clients:
            raise ValueError("clients: at least one (x, y) pair is needed")
        dim = int(np.shape(clients[0][0])[1])
        uploads = [apfl_client_stats(x, y, self.classes, i, dtype=self.dtype) for i, (x, y) in enumerate(clients)]
        result = apfl_server(uploads, dim=dim, classes=self.classes, global_gamma=self.global_gamma)
        buffer = None if self.buffer_size is None else RandomBuffer(dim, self.buffer_size, self.activation,
                                                                    self.seed, dtype=self.dtype)
        personal = [personalize(result.weight, x, y, gamma=self.gamma, alpha=self.alpha, buffer=buffer,
                                bias=self.bias, dtype=self.dtype) if np.shape(x)[0] else None for x, y in clients]
        self.global_weight, self.personal, self.excluded = result.weight, personal, result.excluded
        return self

    def predict(self, client: int, x: Any) -> jax.Array:
        if self.global_weight is None:
            raise ValueError("APFL: call fit first")
        return predict(self.global_weight, self.personal[client], x)
