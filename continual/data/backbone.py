"""Backbones trained on the base phase only, then frozen: the ACIL protocol (Zhuang et al., NeurIPS 2022, Sec. 3.1).

A small Flax NNX network (an MLP for ``digits``, a 1-D CNN for MNIST-1D) is trained with optax (Adam, softmax
cross-entropy) on the samples of the base-phase classes, its classification head is dropped, and the penultimate
activations of *all* samples become the features every continual learner sees. The backbone never sees a
sample of a later phase, so the incremental classes are learned purely by the analytic head.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from continual.data.datasets import Split

__all__ = ["MLPBackbone", "Conv1DBackbone", "train_backbone", "extract_features", "frozen_backbone_features"]


class MLPBackbone(nnx.Module):
    """``x (n, d) -> relu(relu(x W1) W2)`` features ``(n, feature_dim)``, plus a linear head for base training."""

    def __init__(self, in_dim: int, feature_dim: int, classes: int, hidden: int = 256, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(in_dim, hidden, rngs=rngs)
        self.features = nnx.Linear(hidden, feature_dim, rngs=rngs)
        self.head = nnx.Linear(feature_dim, classes, rngs=rngs)

    def embed(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.features(nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.embed(x))


class Conv1DBackbone(nnx.Module):
    """MNIST-1D CNN: two strided 1-D convolutions then a dense layer; ``x (n, L) -> (n, feature_dim)``."""

    def __init__(self, length: int, feature_dim: int, classes: int, channels: int = 32, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, channels, kernel_size=5, strides=2, rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, kernel_size=3, strides=2, rngs=rngs)
        # Two stride-2 'SAME' convolutions leave ceil(ceil(L / 2) / 2) positions.
        self.features = nnx.Linear(channels * math.ceil(math.ceil(length / 2) / 2), feature_dim, rngs=rngs)
        self.head = nnx.Linear(feature_dim, classes, rngs=rngs)

    def embed(self, x: jax.Array) -> jax.Array:
        h = nnx.relu(self.conv2(nnx.relu(self.conv1(x[..., None]))))
        return nnx.relu(self.features(h.reshape(h.shape[0], -1)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.embed(x))


@nnx.jit
def _train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    def loss_fn(m: nnx.Module) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def train_backbone(
    model: nnx.Module, x: np.ndarray, y: np.ndarray, epochs: int = 30, batch_size: int = 64,
    learning_rate: float = 3e-3, seed: int = 0, progress: bool = False,
) -> nnx.Module:
    """Train ``model`` in place on ``(x, y)`` with Adam and cross-entropy; returns it. ``y`` must be 0..k-1."""
    optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    for _ in tqdm(range(epochs), desc="backbone", disable=not progress, leave=False):
        order = rng.permutation(len(y))
        # Whole batches only, so the jitted step compiles once per shape.
        for start in range(0, len(y) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            _train_step(model, optimizer, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
    return model


@nnx.jit
def _embed(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model.embed(x)


def extract_features(model: nnx.Module, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Frozen penultimate features ``(n, feature_dim)`` float32 of ``x`` (no gradient, no parameter change)."""
    x = np.asarray(x, np.float32)
    return np.concatenate([np.asarray(_embed(model, jnp.asarray(x[i:i + batch_size])))
                           for i in range(0, len(x), batch_size)])


def frozen_backbone_features(
    split: Split, base_classes: np.ndarray, arch: str = "mlp", feature_dim: int = 64, epochs: int = 30,
    seed: int = 0, progress: bool = False,
) -> Split:
    """Train a backbone on the train samples of ``base_classes`` only, freeze it, and featurize everything.

    arch: ``"mlp"`` (any input, flattened) or ``"conv1d"`` (``(n, L)`` signals such as MNIST-1D). Returns a
    :class:`Split` with the same labels and ``(n, feature_dim)`` float32 features.
    """
    base_classes = np.asarray(base_classes, dtype=np.int64)
    if base_classes.ndim != 1 or base_classes.size < 2:
        raise ValueError(f"base_classes must list at least two classes, got {base_classes.tolist()}")
    mask = np.isin(split.y_train, base_classes)
    if not mask.any():
        raise ValueError(f"no training sample belongs to base_classes {base_classes.tolist()}")
    # The head only ever sees base classes; renumber them 0..k-1 for the cross-entropy.
    local = np.searchsorted(np.sort(base_classes), split.y_train[mask])
    rngs = nnx.Rngs(seed)
    if arch == "mlp":
        model: nnx.Module = MLPBackbone(int(np.prod(split.x_train.shape[1:])), feature_dim, base_classes.size,
                                        rngs=rngs)
    elif arch == "conv1d":
        if split.x_train.ndim != 2:
            raise ValueError(f"arch='conv1d' needs (n, L) signals, got x_train shape {split.x_train.shape}")
        model = Conv1DBackbone(split.x_train.shape[1], feature_dim, base_classes.size, rngs=rngs)
    else:
        raise ValueError(f"arch must be 'mlp' or 'conv1d', got {arch!r}")
    train_backbone(model, split.x_train[mask], local, epochs=epochs, seed=seed, progress=progress)
    return Split(extract_features(model, split.x_train), split.y_train,
                 extract_features(model, split.x_test), split.y_test)
