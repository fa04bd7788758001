"""Continual-learning metrics: accuracy matrix, A_avg, A_last, forgetting and A_auc.

Definitions (as used by ACIL, Zhuang et al. NeurIPS 2022, Sec. 4.1; GACL, NeurIPS 2024, Sec. 5.1):

- ``seen_accuracy[k]``: accuracy after phase ``k`` on the test samples of every class seen up to phase ``k``.
- ``A_avg = mean_k seen_accuracy[k]`` (:func:`average_accuracy`), ``A_last = seen_accuracy[-1]``
  (:func:`last_accuracy`).
- Forgetting (Chaudhry et al., ECCV 2018, Eq. 3): with ``R[i, j]`` the accuracy after phase ``i`` on the classes
  of phase ``j``, ``F = mean_{j < T-1} (max_{j <= i < T-1} R[i, j] - R[T-1, j])`` (:func:`forgetting`).
- ``A_auc`` (Koh et al., ICLR 2022, Eq. 1): the area under the anytime-accuracy curve, accuracy sampled every
  ``Δn`` stream samples, ``Σ_k acc_k Δn_k / Σ_k Δn_k``; the plain mean for a uniform grid (:func:`auc_accuracy`).

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "accuracy", "accuracy_matrix", "seen_accuracy", "average_accuracy", "last_accuracy", "forgetting",
    "auc_accuracy",
]


def _as_1d(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of accuracies, got shape {arr.shape}")
    return arr


def accuracy(y_true: object, y_pred: object) -> float:
    """Fraction of equal entries; ``nan`` for an empty selection (a group with no test samples)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true shape {y_true.shape} differs from y_pred shape {y_pred.shape}")
    return float(np.mean(y_true == y_pred)) if y_true.size else float("nan")


def accuracy_matrix(y_true: object, predictions: Sequence[object], groups: Sequence[object]) -> np.ndarray:
    """``R[i, j]`` = accuracy of ``predictions[i]`` on the test samples whose label is in ``groups[j]``.

    y_true: (n,) test labels. predictions: one (n,) prediction per phase, made after that phase.
    groups: per phase, the classes it introduced (``Phase.new_classes``). Entries with ``j > i`` (classes not yet
    learned) are ``nan``.
    """
    y_true = np.asarray(y_true)
    if len(predictions) != len(groups):
        raise ValueError(f"got {len(predictions)} predictions for {len(groups)} groups")
    masks = [np.isin(y_true, np.asarray(g)) for g in groups]
    out = np.full((len(predictions), len(groups)), np.nan)
    for i, pred in enumerate(predictions):
        pred = np.asarray(pred)
        for j in range(i + 1):
            out[i, j] = accuracy(y_true[masks[j]], pred[masks[j]])
    return out


def seen_accuracy(y_true: object, predictions: Sequence[object], seen: Sequence[object]) -> np.ndarray:
    """Accuracy of ``predictions[k]`` on the test samples of ``seen[k]`` (``Phase.seen_classes``), per phase."""
    y_true = np.asarray(y_true)
    if len(predictions) != len(seen):
        raise ValueError(f"got {len(predictions)} predictions for {len(seen)} seen-class sets")
    out = []
    for pred, classes in zip(predictions, seen):
        mask = np.isin(y_true, np.asarray(classes))
        out.append(accuracy(y_true[mask], np.asarray(pred)[mask]))
    return np.asarray(out)


def average_accuracy(seen_acc: object) -> float:
    """A_avg: the mean over phases of the accuracy on all classes seen so far."""
    return float(np.mean(_as_1d(seen_acc, "seen_acc")))


def last_accuracy(seen_acc: object) -> float:
    """A_last: the accuracy on all classes after the final phase."""
    return float(_as_1d(seen_acc, "seen_acc")[-1])


def forgetting(matrix: object) -> float:
    """Average forgetting over the groups learned before the last phase (Chaudhry et al. 2018, Eq. 3).

    matrix: (T, T) from :func:`accuracy_matrix`. Returns ``nan`` for ``T = 1`` (nothing can be forgotten yet).
    Groups without test samples (``nan`` columns) are skipped.
    """
    r = np.asarray(matrix, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.size == 0:
        raise ValueError(f"matrix must be a square (T, T) accuracy matrix, got shape {r.shape}")
    t = r.shape[0]
    if t == 1:
        return float("nan")
    drops = [np.max(r[j:t - 1, j]) - r[t - 1, j] for j in range(t - 1) if not np.isnan(r[t - 1, j])]
    return float(np.mean(drops)) if drops else float("nan")


def auc_accuracy(accuracies: object, samples_seen: object | None = None) -> float:
    """A_auc: area under the anytime-accuracy curve, normalised by the stream length.

    accuracies: (k,) accuracy measured every ``Δn`` samples. samples_seen: optional (k,) increasing counts of
    stream samples at each measurement; each accuracy is then weighted by the samples since the previous one
    (``Δn_k = n_k - n_{k-1}``, ``n_0 = 0``). Without it the grid is uniform and A_auc is the mean.
    """
    acc = _as_1d(accuracies, "accuracies")
    if samples_seen is None:
        return float(np.mean(acc))
    n = _as_1d(samples_seen, "samples_seen")
    if n.shape != acc.shape:
        raise ValueError(f"samples_seen shape {n.shape} differs from accuracies shape {acc.shape}")
    steps = np.diff(n, prepend=0.0)
    if np.any(steps <= 0):
        raise ValueError(f"samples_seen must be positive and strictly increasing, got {n.tolist()}")
    return float(np.sum(acc * steps) / n[-1])
