"""Fixed feature maps in front of an analytic head: random buffers, Gaussian kernels and F-OAL feature fusion.

A buffer is never trained: it is a seeded random (or data-anchored) nonlinear expansion that makes a linear ridge
head expressive enough (ACIL's "buffer layer", Zhuang et al. 2022, §3.2; DS-AL's shared projection, Zhuang et al.
2024, eq. 5). Buffers are pytrees: they pass through ``jit``/``vmap`` and checkpoint with the learner's state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from analytic import host_kernels
from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import HIGHEST, resolve_dtype
from analytic.validation import check_weights

__all__ = ["ACTIVATIONS", "RandomBuffer", "GaussianKernelBuffer", "feature_fusion", "learner_buffer"]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": lambda z: jax.nn.gelu(z, approximate=False),
    "identity": lambda z: z,
}

_INITS = ("normal", "uniform", "torch_linear")


@register_checkpoint_type
@jax.tree_util.register_pytree_node_class
class RandomBuffer:
    """``φ(x) = σ(x A + b)``: a fixed random expansion ``in_dim -> out_dim``.

    Args:
      in_dim, out_dim: sizes of the map.
      activation: one of :data:`ACTIVATIONS` (relu, tanh, sigmoid, gelu, identity).
      seed: integer seed or ``jax.random`` key; the same seed gives the same buffer on every host (federated
        random layers are shared this way).
      init: ``"normal"`` -- ``A ~ N(0, 1/in_dim)``; ``"uniform"`` -- ``U(-1, 1)``; ``"torch_linear"`` -- PyTorch's
        ``nn.Linear`` default ``U(±1/√in_dim)`` as in the ACIL/DS-AL repositories (docs/methods.md §2b).
      bias: add a bias ``b`` drawn like ``A``'s row scale (zero-mean); ``False`` as in ACIL.
      dtype: parameter and output dtype.
    """

    def __init__(
        self, in_dim: int, out_dim: int, activation: str = "relu", seed: Any = 0, init: str = "normal",
        bias: bool = False, dtype: Any = None,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if int(in_dim) <= 0 or int(out_dim) <= 0:
            raise ValueError(f"in_dim and out_dim must be > 0, got {in_dim}, {out_dim}")
        dt = resolve_dtype(dtype)
        key = jax.random.PRNGKey(seed) if isinstance(seed, int) else seed
        kw, kb = jax.random.split(key)
        if init == "normal":
            weight = jax.random.normal(kw, (in_dim, out_dim), dt) / jnp.sqrt(jnp.asarray(in_dim, dt))
            b = jax.random.normal(kb, (out_dim,), dt) if bias else None
        else:
            bound = 1.0 if init == "uniform" else 1.0 / float(in_dim) ** 0.5
            weight = jax.random.uniform(kw, (in_dim, out_dim), dt, -bound, bound)
            b = jax.random.uniform(kb, (out_dim,), dt, -bound, bound) if bias else None
        self.weight, self.bias, self.activation = weight, b, activation

    @classmethod
    def from_weights(cls, weight: Any, bias: Any = None, activation: str = "relu", dtype: Any = None) -> RandomBuffer:
        """The buffer ``σ(x A + b)`` with given ``A = weight: (in_dim, out_dim)`` and ``b = bias: (out_dim,)``
        (e.g. another implementation's buffer, to reproduce its run; PyTorch's ``nn.Linear`` stores ``Aᵀ``).
        ``dtype`` defaults to the policy's (not the arrays'); a buffer built from the arrays a seed draws equals
        the seeded buffer exactly."""
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        dt = resolve_dtype(dtype)
        weight = check_weights(weight, "weight", 2, dt)
        bias = None if bias is None else check_weights(bias, "bias", 1, dt)
        if bias is not None and bias.shape != (weight.shape[1],):
            raise ValueError(f"bias must have shape ({weight.shape[1]},) for weight {tuple(weight.shape)}, got "
                             f"{tuple(bias.shape)}")
        return cls.tree_unflatten(activation, (weight, bias))

    @property
    def in_dim(self) -> int:
        return self.weight.shape[0]

    @property
    def out_dim(self) -> int:
        return self.weight.shape[1]

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x: (n, in_dim) -> (n, out_dim)`` in the buffer's dtype."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"buffer expects x of shape (n, {self.in_dim}), got {tuple(x.shape)}")
        return _apply_buffer(self, x)

    def entry_bound(self) -> tuple[float, float]:
        """``(M, β)`` with ``|φ(x)ⱼ| ≤ M ‖x‖₂ + β`` for every input row ``x`` and unit ``j``: ``M`` the largest
        column norm of ``A``, ``β = max |b| + 1`` (every activation of :data:`ACTIVATIONS` has ``|σ(z)| ≤ |z| + 1``;
        Cauchy-Schwarz bounds ``|(xA)ⱼ|``). Host floats, in float64."""
        a = np.asarray(self.weight, np.float64)
        m = float(np.sqrt(np.max(np.einsum("ij,ij->j", a, a)))) if a.size else 0.0
        b = 0.0 if self.bias is None else float(np.max(np.abs(np.asarray(self.bias, np.float64)), initial=0.0))
        return m, b + 1.0

    def tree_flatten(self) -> tuple[tuple[Any, ...], str]:
        return (self.weight, self.bias), self.activation

    @classmethod
    def tree_unflatten(cls, activation: str, children: tuple[Any, ...]) -> RandomBuffer:
        obj = object.__new__(cls)
        obj.weight, obj.bias = children
        obj.activation = activation
        return obj

    def __repr__(self) -> str:
        return (f"RandomBuffer({self.in_dim}->{self.out_dim}, {self.activation}, bias={self.bias is not None},"
                f" {self.weight.dtype})")


def learner_buffer(
    buffer: RandomBuffer | None, in_dim: int, size: int | None, activation: str, seed: Any, init: str, dtype: Any,
    name: str = "buffer",
) -> RandomBuffer:
    """A learner's buffer: the given ``buffer`` -- checked to take ``in_dim`` inputs, to have ``size`` outputs
    (if ``size`` is given) and ``activation``, and cast to ``dtype`` -- or, if ``None``, the seeded
    ``RandomBuffer(in_dim, size, activation, seed, init)``. Passing the buffer a seed draws gives the seeded learner
    exactly."""
    dt = resolve_dtype(dtype)
    if buffer is None:
        if size is None:
            raise ValueError(f"pass either a {name} or its size")
        return RandomBuffer(in_dim, size, activation, seed, init, dtype=dt)
    if not isinstance(buffer, RandomBuffer):
        raise TypeError(f"{name} must be an analytic.RandomBuffer (see RandomBuffer.from_weights), got "
                        f"{type(buffer).__name__}")
    if buffer.in_dim != in_dim:
        raise ValueError(f"{name} takes {buffer.in_dim} inputs but the data have {in_dim} features")
    if size is not None and size != buffer.out_dim:
        raise ValueError(f"{name} has {buffer.out_dim} outputs but a size of {size} was given")
    if buffer.activation != activation:
        raise ValueError(f"{name} applies {buffer.activation!r} but this learner's activation is {activation!r}")
    if buffer.weight.dtype == dt:
        return buffer
    return RandomBuffer.from_weights(buffer.weight, buffer.bias, buffer.activation, dt)


@jax.jit
def _apply_buffer(buf: RandomBuffer, x: jax.Array) -> jax.Array:
    z = host_kernels.matmul(x.astype(buf.weight.dtype), buf.weight)
    if buf.bias is not None:
        z = z + buf.bias
    return ACTIVATIONS[buf.activation](z)


@register_checkpoint_type
@jax.tree_util.register_pytree_node_class
class GaussianKernelBuffer:
    """``φ(x)_j = exp(-‖x − c_j‖² / (2σ²))`` against fixed centers ``c: (m, d)`` (an RBF / Nyström-style buffer)."""

    def __init__(self, centers: Any, sigma: float) -> None:
        centers = jnp.asarray(centers)
        if centers.ndim != 2:
            raise ValueError(f"centers must be (m, d), got shape {tuple(centers.shape)}")
        if not float(sigma) > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.centers, self.sigma = centers, jnp.asarray(sigma, centers.dtype)

    @classmethod
    def from_data(cls, x: Any, m: int, sigma: float | None = None, seed: int = 0) -> GaussianKernelBuffer:
        """Centers = ``m`` rows of ``x`` drawn without replacement; ``sigma`` defaults to the median-distance rule."""
        x = jnp.asarray(x)
        idx = jax.random.choice(jax.random.PRNGKey(seed), x.shape[0], (min(m, x.shape[0]),), replace=False)
        centers = x[idx]
        if sigma is None:
            d2 = _sq_dists(centers, centers)
            sigma = float(jnp.sqrt(0.5 * jnp.median(d2[d2 > 0])))
        return cls(centers, sigma)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 2 or x.shape[1] != self.centers.shape[1]:
            raise ValueError(f"kernel buffer expects x of shape (n, {self.centers.shape[1]}), got {tuple(x.shape)}")
        return _apply_kernel(self, x)

    def tree_flatten(self) -> tuple[tuple[Any, ...], None]:
        return (self.centers, self.sigma), None

    @classmethod
    def tree_unflatten(cls, _: None, children: tuple[Any, ...]) -> GaussianKernelBuffer:
        obj = object.__new__(cls)
        obj.centers, obj.sigma = children
        return obj


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
    aa = jnp.sum(a * a, axis=1)[:, None]
    bb = jnp.sum(b * b, axis=1)[None, :]
    return jnp.maximum(aa + bb - 2.0 * jnp.matmul(a, b.T, precision=HIGHEST), 0.0)


@jax.jit
def _apply_kernel(buf: GaussianKernelBuffer, x: jax.Array) -> jax.Array:
    return jnp.exp(-_sq_dists(x.astype(buf.centers.dtype), buf.centers) / (2.0 * buf.sigma**2))


@jax.jit
def feature_fusion(
    block_cls: jax.Array, projection: jax.Array, ln_scale: jax.Array | None = None,
    ln_bias: jax.Array | None = None, eps: float = 1e-6,
) -> jax.Array:
    """F-OAL feature fusion (Zhuang et al., NeurIPS 2024, §3.2; docs/methods.md §2).

    ``sigmoid(LayerNorm(mean_l cls_l) @ P)``: the class token of every transformer block is averaged, normalized by
    a LayerNorm (the backbone's final LayerNorm: pass its ``ln_scale``/``ln_bias``; ``None`` = no affine) and
    projected by the fixed random ``P``.

    Args:
      block_cls: ``(n, L, D)`` class tokens of the ``L`` blocks.
      projection: ``(D, P)`` fixed random projection (e.g. ``RandomBuffer(D, P, "identity").weight``).
    Returns:
      ``(n, P)`` fused features in ``(0, 1)``.
    """
    h = jnp.mean(block_cls, axis=1)
    mu = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(h - mu), axis=-1, keepdims=True)
    h = (h - mu) / jnp.sqrt(var + eps)
    if ln_scale is not None:
        h = h * ln_scale
    if ln_bias is not None:
        h = h + ln_bias
    return jax.nn.sigmoid(host_kernels.matmul(h, projection.astype(h.dtype)))
