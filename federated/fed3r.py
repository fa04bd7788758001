"""Fed3R: federated recursive ridge regression on frozen features (Fanì, Camoriano, Caputo & Ciccone, ICML 2024,
"Accelerating Heterogeneous Federated Learning with Closed-form Classifiers", arXiv 2406.01116).

Each client maps its frozen backbone features ``x`` once -- raw (Fed3R) or through random Fourier features
(Fed3R-RF: random features approximating a Gaussian-kernel ridge regression) -- appends a constant
1 (the classifier's bias) and uploads ``(ΦₖᵀΦₖ, ΦₖᵀYₖ)``. The server keeps ``A = λI + ΣΦₖᵀΦₖ`` and
``b = ΣΦₖᵀYₖ`` and solves ``W = A⁻¹b`` (the recursive ridge update that names the method); the sum
makes the result independent of the clients' order and of how the data are split -- "immune to statistical
heterogeneity". Here those statistics *are* AFL uploads (:func:`federated.afl.client_stats` on ``Φ``) and the server
is :func:`federated.afl.aggregate` with regularization removal and ``global_gamma = λ``, so every upload is screened
by :mod:`federated.validation` and the sum and solve live in one place.

**Classifier details** (read in the authors' public code; the paper's method section was not reachable here): the
bias is a constant feature regularized by the same ``λ``; before use the weight of each class is divided by the L2
norm of its feature part (the bias by the same norm), and prediction is the softmax-free ``argmax`` of ``Φ W``.
:func:`normalize_weight` is that step (``normalize=False`` keeps the plain ridge weight; the normalization exists
because the weights also initialize a softmax head, Fed3R+FT, which is not implemented here).

**Random Fourier features** (Rahimi & Recht, 2007): ``φ(x) = √(2/D) cos(xΩ + β)`` with ``Ω ~ N(0, σ⁻²)^{d×D}``
and ``β ~ U[0, 2π)^D`` gives ``φ(x)·φ(y) → exp(−‖x−y‖²/2σ²)`` as ``D → ∞`` (error ``O(1/√D)``). The affine part
``xΩ + β`` is an :class:`analytic.RandomBuffer` built from the drawn weights (its own seeded initializers have no
Gaussian-kernel scale and it has no ``cos`` activation, so the cosine is applied here). Every client must use the
same ``(Ω, β)``: pass the same seed (the draw is deterministic for a seed) or ship the :class:`RFFMap`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analytic import RandomBuffer
from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import resolve_dtype
from analytic.validation import check_features, check_gamma
from continual._wrapper import positive_int
from federated import afl
from federated.messages import AFLUpload

__all__ = ["RFFMap", "rff_init", "rff_features", "feature_map", "mapped_dim", "fed3r_client_stats", "fed3r_server",
           "normalize_weight", "fed3r_scores", "fed3r_predict", "Fed3R"]


@register_checkpoint_type
class RFFMap(NamedTuple):
    """``φ(x) = √(2/D) cos(xΩ + β)``: ``buffer`` holds ``Ω: (d, D)`` and ``β: (D,)`` (identity activation)."""

    buffer: RandomBuffer
    sigma: float

    @property
    def in_dim(self) -> int:
        return self.buffer.in_dim

    @property
    def features(self) -> int:
        return self.buffer.out_dim


def rff_init(dim: int, features: int, sigma: float, seed: int = 0, dtype: Any = None) -> RFFMap:
    """Draw the RFF map of a Gaussian kernel of bandwidth ``sigma`` (``exp(−‖x−y‖²/2σ²)``) with ``features`` = D
    cosines; the same ``seed`` gives the same map on every host."""
    dim = positive_int(dim, "dim")
    features = positive_int(features, "features")
    sigma = check_gamma(sigma, "sigma")
    seed = positive_int(seed, "seed", minimum=0)
    dt = resolve_dtype(dtype)
    k_omega, k_phase = jax.random.split(jax.random.PRNGKey(seed))
    omega = jax.random.normal(k_omega, (dim, features), dt) / sigma
    phase = jax.random.uniform(k_phase, (features,), dt, 0.0, 2.0 * np.pi)
    return RFFMap(RandomBuffer.from_weights(omega, phase, "identity", dtype=dt), sigma)


@jax.jit
def _cosines(buffer: RandomBuffer, x: jax.Array) -> jax.Array:
    return jnp.sqrt(2.0 / buffer.out_dim) * jnp.cos(buffer(x))


def rff_features(rff: RFFMap, x: Any) -> jax.Array:
    """``√(2/D) cos(xΩ + β)`` for ``x: (n, d)`` (validated: floats, finite, ``d`` columns)."""
    if not isinstance(rff, RFFMap):
        raise TypeError(f"rff must be an RFFMap (see rff_init), got {type(rff).__name__}")
    x = check_features(x, "x", dim=rff.in_dim)
    return _cosines(rff.buffer, x)


def feature_map(x: Any, rff: RFFMap | None = None, bias: bool = True) -> jax.Array:
    """Fed3R's client-side map: ``[φ(x), 1]`` (``φ`` = identity without ``rff``; no 1-column if ``bias=False``)."""
    phi = rff_features(rff, x) if rff is not None else check_features(x, "x")
    if not bias:
        return phi
    return jnp.concatenate([phi, jnp.ones((phi.shape[0], 1), phi.dtype)], axis=1)


def mapped_dim(dim: int, rff: RFFMap | None = None, bias: bool = True) -> int:
    """Width of :func:`feature_map`'s output for ``dim`` input features: the server's ``dim``."""
    return (rff.features if rff is not None else int(dim)) + int(bool(bias))


def fed3r_client_stats(
    x: Any, y: Any, classes: int, client_id: int | str = 0, rff: RFFMap | None = None, bias: bool = True,
    dtype: Any = None,
) -> AFLUpload:
    """One client's single upload: the AFL statistics ``(ΦₖᵀΦₖ, ΦₖᵀYₖ, nₖ)`` of ``Φₖ = feature_map(xₖ)``.

    A client with no rows uploads zeros. ``ValueError``/``TypeError`` naming the argument for bad ``x``/``y``.
    """
    xa = np.asarray(x) if not hasattr(x, "dtype") else x
    if np.ndim(xa) == 2 and np.shape(xa)[0] == 0:
        phi = np.zeros((0, mapped_dim(np.shape(xa)[1], rff, bias)), resolve_dtype(dtype))
    else:
        n = int(np.shape(xa)[0]) if np.ndim(xa) == 2 else 0
        if n and hasattr(xa, "dtype") and np.issubdtype(np.asarray(xa).dtype, np.floating):
            # Map a zero-padded block (afl.padded_rows) so that clients of many sizes share a few compiled maps;
            # the padding rows are dropped again before the statistics.
            xa = np.pad(np.asarray(xa), ((0, afl.padded_rows(n) - n), (0, 0)))
        phi = np.asarray(feature_map(xa, rff, bias))[: n or None]
    # The client's own γ is removed by the server (AFL's RI); λ is the server's global_gamma.
    return afl.client_stats(phi, y, 1.0, classes, client_id=client_id, dtype=dtype)


def fed3r_server(
    uploads: Iterable[AFLUpload], *, dim: int, classes: int, lam: float = 1.0,
    state: afl.AFLServerState | None = None, **checks: Any,
) -> afl.AFLResult:
    """``W = (λI + ΣΦₖᵀΦₖ)⁻¹ ΣΦₖᵀYₖ`` over the accepted uploads (merged onto ``state`` for a later wave).

    ``dim`` is the mapped width (:func:`mapped_dim`); ``checks`` go to :func:`federated.afl.aggregate`
    (``psd``, ``transport_dtype``, ...). Rejected uploads are reported in ``excluded`` and never merged.
    """
    lam = check_gamma(lam, "lam")
    return afl.aggregate(uploads, dim=None if state is not None else dim, classes=classes, state=state,
                         remove_regularization=True, global_gamma=lam, **checks)


@jax.jit
def _normalize(weight: jax.Array) -> jax.Array:
    norm = jnp.linalg.norm(weight[:-1], axis=0, keepdims=True)
    # A class never seen has an all-zero column: keep it zero instead of dividing by 0.
    return weight / jnp.where(norm > 0, norm, 1.0)


def normalize_weight(weight: Any, bias: bool = True) -> jax.Array:
    """Each class's column divided by the L2 norm of its feature rows (all rows but the last if ``bias``)."""
    w = jnp.asarray(weight)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (features, classes), got shape {tuple(w.shape)}")
    if not bias:
        norm = jnp.linalg.norm(w, axis=0, keepdims=True)
        return w / jnp.where(norm > 0, norm, 1.0)
    return _normalize(w)


def fed3r_scores(weight: Any, x: Any, rff: RFFMap | None = None, bias: bool = True) -> jax.Array:
    """Class scores ``[φ(x), 1] W`` for raw features ``x: (n, d)``."""
    w = jnp.asarray(weight)
    phi = feature_map(x, rff, bias)
    if phi.shape[1] != w.shape[0]:
        raise ValueError(f"x maps to {phi.shape[1]} features but weight has {w.shape[0]} rows")
    return phi.astype(w.dtype) @ w


def fed3r_predict(weight: Any, x: Any, rff: RFFMap | None = None, bias: bool = True) -> jax.Array:
    """Class ids ``argmax([φ(x), 1] W)`` (softmax-free, as in the paper)."""
    return jnp.argmax(fed3r_scores(weight, x, rff, bias), axis=1)


class Fed3R:
    """One-round Fed3R / Fed3R-RF over in-process clients: ``fit(clients)`` with ``clients = [(x, y), ...]``.

    ``rff_features=None`` is plain Fed3R; an integer ``D`` with ``sigma`` is Fed3R-RF. ``normalize`` applies the
    per-class weight normalization of the authors' classifier. A call that raised leaves the object unchanged.
    """

    def __init__(self, classes: int, lam: float = 1.0, rff_features: int | None = None, sigma: float = 1.0,
                 seed: int = 0, bias: bool = True, normalize: bool = True, dtype: Any = None) -> None:
        self.classes = positive_int(classes, "classes")
        self.lam = check_gamma(lam, "lam")
        self.rff_features = None if rff_features is None else positive_int(rff_features, "rff_features")
        self.sigma = check_gamma(sigma, "sigma")
        self.seed, self.bias, self.normalize, self.dtype = seed, bool(bias), bool(normalize), dtype
        self.rff: RFFMap | None = None
        self.result: afl.AFLResult | None = None
        self.weight: jax.Array | None = None

    def fit(self, clients: Iterable[tuple[Any, Any]]) -> Fed3R:
        clients = list(clients)
        if not clients:
            raise ValueError("clients: at least one (x, y) pair is needed")
        dim = int(np.shape(clients[0][0])[1])
        rff = None if self.rff_features is None else rff_init(dim, self.rff_features, self.sigma, self.seed,
                                                              self.dtype)
        uploads = [fed3r_client_stats(x, y, self.classes, i, rff, self.bias, self.dtype)
                   for i, (x, y) in enumerate(clients)]
        result = fed3r_server(uploads, dim=mapped_dim(dim, rff, self.bias), classes=self.classes, lam=self.lam)
        weight = normalize_weight(result.weight, self.bias) if self.normalize else result.weight
        self.rff, self.result, self.weight = rff, result, weight
        return self

    def predict(self, x: Any) -> jax.Array:
        if self.weight is None:
            raise ValueError("Fed3R: call fit first")
        return fed3r_predict(self.weight, x, self.rff, self.bias)
