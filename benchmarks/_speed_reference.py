"""Plain NumPy implementations of the learners' math: the bars of ``python -m benchmarks speed``.

Every reference computes the same quantity as the learner it is compared with (docs/methods.md §1-2), in
NumPy only, in the dtype of the run:

* :class:`GramPath` -- accumulate ``XᵀX`` (NumPy's ``x.T @ x``, a SYRK) and ``XᵀY`` per batch, one
  ``np.linalg.solve(XᵀX + γI, XᵀY)`` per read-out (a phase end).
* :class:`WoodburyPath` -- the recursive least squares of ACIL (Zhuang et al., NeurIPS 2022, §3) with the
  cheapest association: ``K = I + X R Xᵀ`` from ``R Xᵀ``, ``R' = R − (R Xᵀ K⁻¹)(R Xᵀ)ᵀ``, and
  ``W' = W + R' Xᵀ (Y − X W)`` with ``R' Xᵀ = R Xᵀ K⁻¹`` (a ``b×b`` solve, no ``d×d`` product).
* :class:`AuthorsRecursion` -- the same recursion as the authors' PyTorch code writes it: ``K⁻¹`` by a matrix
  inverse, ``R ← R − R Xᵀ K⁻¹ X R`` evaluated left to right (its last product is ``d×d @ d×d``), then
  ``W ← W + R Xᵀ (Y − X W)`` with the new ``R``.

All three equal joint ridge ``(XᵀX + γI)⁻¹XᵀY`` on all rows seen (tests/analytic/test_speed_references.py).
The feature maps below reproduce the learners' own maps from their buffer weights, so feature extraction is
timed on both sides. :func:`air_solve` and :func:`dsal_phase` are the class-weighted (AIR, Fang et al. 2024)
and dual-stream (DS-AL, Zhuang et al., AAAI 2024) read-outs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["GramPath", "WoodburyPath", "AuthorsRecursion", "joint_ridge", "relu_features", "dsal_features",
           "fused_features", "air_solve", "AIRStats", "rel_diff", "one_hot"]


def one_hot(labels: np.ndarray, width: int, dtype: Any) -> np.ndarray:
    out = np.zeros((labels.size, width), dtype)
    out[np.arange(labels.size), labels] = 1.0
    return out


def rel_diff(a: Any, b: Any) -> float:
    """``max|a − b| / max|b|`` in float64 (scale-free, as the repository's tests measure W)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def joint_ridge(x: np.ndarray, targets: np.ndarray, gamma: float) -> np.ndarray:
    """Float64 ``np.linalg.solve(XᵀX + γI, XᵀY)`` -- the exactness reference of every row."""
    x, t = np.asarray(x, np.float64), np.asarray(targets, np.float64)
    return np.linalg.solve(x.T @ x + gamma * np.eye(x.shape[1]), x.T @ t)


class GramPath:
    """Additive statistics and one solve per read-out (the sum form every analytic learner reduces to)."""

    def __init__(self, dim: int, classes: int, gamma: float, dtype: Any) -> None:
        self.xtx = np.zeros((dim, dim), dtype)
        self.xty = np.zeros((dim, classes), dtype)
        self.gamma, self.dtype = gamma, np.dtype(dtype)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        self.xtx += x.T @ x  # NumPy recognises x.T @ x and calls SYRK (half the flops of a GEMM)
        self.xty += x.T @ y

    def read(self) -> np.ndarray:
        a = self.xtx + self.gamma * np.eye(self.xtx.shape[0], dtype=self.dtype)
        return np.linalg.solve(a, self.xty)


class WoodburyPath:
    """Recursive least squares, ``R₀ = I/γ``, ``W₀ = 0``, reusing ``R Xᵀ`` (``4d²b + O(db²)`` flops per batch)."""

    def __init__(self, dim: int, classes: int, gamma: float, dtype: Any) -> None:
        self.r = np.eye(dim, dtype=dtype) / np.asarray(gamma, dtype)
        self.w = np.zeros((dim, classes), dtype)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        rxt = self.r @ x.T                                      # R Xᵀ (d, b)
        k = np.eye(x.shape[0], dtype=self.r.dtype) + x @ rxt
        gain = np.linalg.solve(k, rxt.T).T                      # R Xᵀ K⁻¹ = R' Xᵀ (K symmetric)
        self.r -= gain @ rxt.T
        self.w += gain @ (y - x @ self.w)

    def read(self) -> np.ndarray:
        return self.w


class AuthorsRecursion(WoodburyPath):
    """The recursion as the ACIL authors' code writes it: ``inv`` of ``K``, products left to right (``2d³``/batch)."""

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        k_inv = np.linalg.inv(np.eye(x.shape[0], dtype=self.r.dtype) + x @ self.r @ x.T)
        self.r -= self.r @ x.T @ k_inv @ x @ self.r
        self.w += self.r @ x.T @ (y - x @ self.w)


# -- the learners' feature maps ----------------------------------------------------------------------------------
def relu_features(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """ACIL / GACL / AIR / AnalyticLinear's ReLU buffer ``φ(x) = relu(x A)`` (no bias)."""
    return np.maximum(x.astype(weight.dtype, copy=False) @ weight, 0)


def dsal_features(x: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DS-AL's two streams from one projection ``Z = x A``: ``(relu(Z), tanh(Z))``."""
    z = x.astype(weight.dtype, copy=False) @ weight
    return np.maximum(z, 0), np.tanh(z)


def fused_features(tokens: np.ndarray, projection: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """F-OAL's fusion ``sigmoid(LayerNorm(mean_l cls_l) P)`` without LayerNorm affine (Zhuang et al. 2024, §3.2)."""
    h = tokens.astype(projection.dtype, copy=False).mean(axis=1)
    h = h - h.mean(axis=-1, keepdims=True)
    h = h / np.sqrt((h * h).mean(axis=-1, keepdims=True) + np.asarray(eps, h.dtype))
    return 1 / (1 + np.exp(-(h @ projection)))


class AIRStats:
    """AIR's full per-class Grams ``X_cᵀX_c`` (one SYRK per class present in the batch: ``d²b`` flops in all)."""

    def __init__(self, dim: int, classes: int, gamma: float, dtype: Any) -> None:
        self.grams = np.zeros((classes, dim, dim), dtype)
        self.xty = np.zeros((dim, classes), dtype)
        self.counts = np.zeros(classes, np.int64)
        self.gamma, self.dtype = gamma, np.dtype(dtype)

    def add(self, x: np.ndarray, labels: np.ndarray) -> None:
        for c in np.unique(labels):
            xc = x[labels == c]
            self.grams[c] += xc.T @ xc
            self.xty[:, c] += xc.sum(axis=0)
        self.counts += np.bincount(labels, minlength=self.counts.size)

    def read(self) -> np.ndarray:
        return air_solve(self.grams, self.xty, self.counts, self.gamma)


def air_solve(grams: np.ndarray, xty: np.ndarray, counts: np.ndarray, gamma: float) -> np.ndarray:
    """``(Σ_c π_c X_cᵀX_c + γI)⁻¹ Σ_c π_c X_cᵀY_c`` with ``π_c = 1/n_c`` (0 for unseen classes), AIR's ``p = 1``."""
    seen = np.flatnonzero(counts)
    pi = np.zeros(counts.size, grams.dtype)
    pi[seen] = 1.0 / counts[seen]
    a = np.tensordot(pi[seen], grams[seen], axes=1) + gamma * np.eye(grams.shape[1], dtype=grams.dtype)
    return np.linalg.solve(a, xty * pi[None, :])
