"""Multi-label class-incremental learning (MLCIL): the scenario with label absence, and its metrics.

Protocol of Zhang et al., "L3A: Label-Augmented Analytic Adaptation for Multi-Label Class Incremental Learning",
ICML 2025 (following the MLCIL protocol of its references on MS-COCO / PASCAL VOC): the classes are split into
disjoint groups, one per task; task ``t`` trains on every image that contains at least one class of group ``t``, and
its targets carry *only* group ``t``'s labels -- classes of past or future groups present in the image are not
annotated ("label absence", the problem L3A's pseudo-label module addresses). After each task the model is evaluated
on the test images that contain at least one class seen so far, against all seen classes' labels.

Metrics (the paper's §4, computed as the authors' code does, on ``[0, 1]`` fractions):

* mAP: mean over classes of average precision ``AP = Σₙ (Rₙ − Rₙ₋₁) Pₙ`` over the distinct score thresholds --
  :func:`sklearn.metrics.average_precision_score`'s definition (ties counted together); classes without a positive
  test row are left out of the mean (their AP is undefined).
* CF1 / OF1: per-class (macro) and overall (micro) F1 of the predictions ``score > threshold``; F1 of a class with
  no true and no predicted positive is 0 (scikit-learn's ``zero_division=0``). The authors' code thresholds
  ``sigmoid(score) > 0.525``; the analytic heads here regress 0/1 targets, so the natural rule for them is
  ``score > 0.5`` -- the threshold is the caller's choice and is stated with every result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from continual._wrapper import positive_int

__all__ = ["MultiLabelTask", "multi_label_tasks", "seen_test", "average_precision", "mean_average_precision",
           "f1_scores", "multilabel_metrics", "run_multilabel_protocol"]


class MultiLabelTask(NamedTuple):
    """One task. ``x``: its training rows; ``y``: ``(n, seen)`` float targets over all classes seen up to and
    including this task, with only this task's columns annotated; ``classes``: this task's column ids; ``rows``:
    indices of the rows in the original training set."""

    x: np.ndarray
    y: np.ndarray
    classes: np.ndarray
    rows: np.ndarray


def _check_multi_hot(y: Any, name: str, n: int | None = None) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, classes) multi-hot array, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool) or not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 entries")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} rows but x has {n} rows")
    return y.astype(np.int8)


def _order(order: Any, classes: int) -> np.ndarray:
    if order is None:
        return np.arange(classes)
    order = np.asarray(order)
    if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer) or sorted(order.tolist()) != list(range(classes)):
        raise ValueError(f"order must be a permutation of 0..{classes - 1}, got {order.tolist()}")
    return order


def multi_label_tasks(x: Any, y: Any, classes_per_task: int, order: Sequence[int] | None = None
                      ) -> list[MultiLabelTask]:
    """Split a multi-label training set into MLCIL tasks (module docstring).

    ``y``: ``(n, C)`` multi-hot. Column ``k`` of every task's targets is original class ``order[k]`` (default:
    identity), so task ``t`` owns columns ``t·m .. (t+1)·m − 1`` (``m = classes_per_task``; the last task may be
    smaller). An image with classes of several groups appears in each of those tasks, each time with only that
    task's labels.
    """
    x = np.asarray(x)
    y = _check_multi_hot(y, "y", x.shape[0] if x.ndim else None)
    m = positive_int(classes_per_task, "classes_per_task")
    perm = _order(order, y.shape[1])
    y = y[:, perm]
    tasks = []
    for start in range(0, y.shape[1], m):
        cols = np.arange(start, min(start + m, y.shape[1]))
        rows = np.flatnonzero(y[:, cols].any(axis=1))
        target = np.zeros((rows.size, cols[-1] + 1), np.float64)
        target[:, cols] = y[np.ix_(rows, cols)]
        tasks.append(MultiLabelTask(x[rows], target, cols, rows))
    return tasks


def seen_test(x: Any, y: Any, seen: int, order: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation set after learning the first ``seen`` columns: test rows with ≥ 1 of them, and their
    ``(m, seen)`` labels (columns in ``order``, as :func:`multi_label_tasks` numbers them)."""
    x = np.asarray(x)
    y = _check_multi_hot(y, "y", x.shape[0] if x.ndim else None)[:, _order(order, np.shape(y)[1])]
    seen = positive_int(seen, "seen")
    rows = np.flatnonzero(y[:, :seen].any(axis=1))
    return x[rows], y[rows, :seen]


def _scores(scores: Any, y: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    if s.shape != y.shape:
        raise ValueError(f"scores must have the shape of y_true {y.shape}, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN/inf")
    return s


def average_precision(y_true: Any, scores: Any) -> np.ndarray:
    """Per-class average precision ``(C,)`` (NaN for a class without positives); equals
    ``sklearn.metrics.average_precision_score(y_true[:, k], scores[:, k])`` for every class with a positive."""
    y = _check_multi_hot(y_true, "y_true")
    s = _scores(scores, y)
    ap = np.full(y.shape[1], np.nan)
    for k in range(y.shape[1]):
        pos = y[:, k].sum()
        if pos == 0:
            continue
        order = np.argsort(-s[:, k], kind="stable")
        sk, yk = s[order, k], y[order, k]
        # Rows of equal score are one threshold: keep the last index of each run of ties.
        last = np.r_[np.flatnonzero(np.diff(sk) != 0), sk.size - 1]
        tp = np.cumsum(yk)[last]
        precision = tp / (last + 1)
        recall = tp / pos
        ap[k] = np.sum(np.diff(np.r_[0.0, recall]) * precision)
    return ap


def mean_average_precision(y_true: Any, scores: Any) -> float:
    """mAP: mean of :func:`average_precision` over the classes that have a positive."""
    ap = average_precision(y_true, scores)
    if np.isnan(ap).all():
        raise ValueError("y_true has no positive label in any class; mAP is undefined")
    return float(np.nanmean(ap))


def f1_scores(y_true: Any, scores: Any, threshold: float = 0.5) -> tuple[float, float]:
    """``(CF1, OF1)`` of the predictions ``scores > threshold``: macro and micro F1 (module docstring)."""
    y = _check_multi_hot(y_true, "y_true").astype(bool)
    pred = _scores(scores, y) > float(threshold)
    tp = (pred & y).sum(axis=0)
    fp = (pred & ~y).sum(axis=0)
    fn = (~pred & y).sum(axis=0)
    denom = 2 * tp + fp + fn
    per_class = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    overall = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    return float(per_class.mean()), float(overall)


def multilabel_metrics(y_true: Any, scores: Any, threshold: float = 0.5) -> dict[str, float]:
    """``{"mAP", "CF1", "OF1"}`` as fractions in ``[0, 1]``."""
    cf1, of1 = f1_scores(y_true, scores, threshold)
    return {"mAP": mean_average_precision(y_true, scores), "CF1": cf1, "OF1": of1}


def run_multilabel_protocol(
    learn: Callable[[MultiLabelTask], Any], score: Callable[[np.ndarray], np.ndarray], tasks: Sequence[MultiLabelTask],
    x_test: Any, y_test: Any, *, threshold: float = 0.5, order: Sequence[int] | None = None,
) -> list[dict[str, float]]:
    """Learn the tasks in turn (``learn(task)``) and after each evaluate ``score(x) -> (m, ≥ seen)`` on the seen
    classes (:func:`seen_test`): one :func:`multilabel_metrics` dict per task, with ``task`` and ``seen``."""
    out = []
    for t, task in enumerate(tasks):
        learn(task)
        seen = int(task.classes[-1]) + 1
        xs, ys = seen_test(x_test, y_test, seen, order)
        s = np.asarray(score(xs))[:, :seen]
        out.append({"task": t, "seen": seen, **multilabel_metrics(ys, s, threshold)})
    return out
