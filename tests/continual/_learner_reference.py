"""Independent float64 NumPy references for the continual learners' tests (no JAX, no analytic core)."""

from __future__ import annotations

import numpy as np


def np_one_hot(labels: np.ndarray, width: int) -> np.ndarray:
    return np.eye(width)[np.asarray(labels)]


def np_ridge(x: np.ndarray, targets: np.ndarray, gamma: float, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """``(Xᵀ D X + γI)⁻¹ Xᵀ D Y`` in float64 with ``np.linalg.solve`` (``D = diag(sample_weight)``)."""
    x = np.asarray(x, np.float64)
    t = np.asarray(targets, np.float64)
    s = np.ones(x.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    return np.linalg.solve((x * s[:, None]).T @ x + gamma * np.eye(x.shape[1]), (x * s[:, None]).T @ t)


def rel_err(a: object, b: object) -> float:
    """``max|a − b| / max|b|``: scale-free, so one tolerance fits weights of any magnitude."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def class_stream(rng: np.random.Generator, n_per_class: int, classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: class ``c`` centred at a random mean; rows shuffled."""
    means = rng.normal(scale=2.0, size=(classes, dim))
    y = np.repeat(np.arange(classes), n_per_class)
    x = means[y] + rng.normal(size=(y.size, dim))
    order = rng.permutation(y.size)
    return x[order], y[order]
