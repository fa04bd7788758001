"""Independent reference computations (plain NumPy float64) for the analytic tests."""

from __future__ import annotations

import numpy as np


def joint_ridge(x: np.ndarray, y: np.ndarray, gamma: float, classes: int | None = None) -> np.ndarray:
    """``(XᵀX + γI)⁻¹ XᵀY`` in float64 with ``numpy.linalg.solve`` (LU, not Cholesky: an independent route)."""
    x = np.asarray(x, np.float64)
    if np.ndim(y) == 1:
        width = classes if classes is not None else int(np.max(y)) + 1
        y = np.eye(width)[np.asarray(y)]
    return np.linalg.solve(x.T @ x + gamma * np.eye(x.shape[1]), x.T @ np.asarray(y, np.float64))


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def stream(seed: int, n: int = 600, d: int = 24, classes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Class-clustered data whose classes appear in order (class k only after class k-1) -- new classes mid-stream."""
    rng = np.random.default_rng(seed)
    y = np.sort(rng.integers(0, classes, n))
    centers = rng.standard_normal((classes, d)) * 2
    x = centers[y] + rng.standard_normal((n, d))
    return x, y
