"""Protocol runner: drive any learner with ``partial_fit``/``predict`` over a scenario and record its accuracy.

After every phase the learner predicts the whole test set; :mod:`continual.metrics` turns those predictions into
the accuracy matrix, the per-phase accuracy on seen classes, A_avg, A_last and forgetting. With ``eval_every``
the runner also samples the *anytime* accuracy every ``Δn`` stream samples on the test samples of the classes
exposed so far (GACL / Si-Blurry protocol), which gives A_auc.

The multi-label protocol (tasks with label absence, mAP / CF1 / OF1 after every task) is
:func:`continual.multilabel.run_multilabel_protocol`, re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
from tqdm.auto import tqdm

from continual import metrics
from continual.multilabel import run_multilabel_protocol
from continual.scenarios import Phase, online

__all__ = ["Learner", "RunResult", "run_protocol", "run_multilabel_protocol", "summarize", "FeaturesAsOneBlock",
           "state_bytes"]


class Learner(Protocol):
    def partial_fit(self, x: Any, y: Any, classes: Any = None) -> Any: ...

    def predict(self, x: Any) -> Any: ...


class FeaturesAsOneBlock:
    """Feed ``(n, D)`` features to a learner that reads per-block class tokens ``(n, L, D)`` (F-OAL) as ``L = 1``.

    With one block, F-OAL's fusion (mean over blocks -> LayerNorm -> projection -> sigmoid) acts on the features
    themselves, so any frozen backbone's output can drive it.
    """

    def __init__(self, learner: Any) -> None:
        self.learner = learner

    def partial_fit(self, x: Any, y: Any, classes: Any = None) -> FeaturesAsOneBlock:
        self.learner.partial_fit(np.asarray(x)[:, None, :], y, classes=classes)
        return self

    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(self.learner.predict(np.asarray(x)[:, None, :]))


def state_bytes(learner: Any) -> int:
    """Bytes of the arrays a learner keeps between calls (state pytree, parameters, replay memory)."""
    import jax

    learner = getattr(learner, "learner", learner)
    held = [getattr(learner, name, None) for name in ("state", "state_", "buffer_", "params_", "_opt_state",
                                                      "_memory_x", "_memory_y")]
    return int(sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(held) if hasattr(leaf, "nbytes")))


class RunResult(NamedTuple):
    """What one run of a learner over a scenario measured.

    matrix: (T, T) accuracy after phase i on the classes phase j introduced (nan above the diagonal).
    seen_accuracy: (T,) accuracy after each phase on all classes seen so far.
    anytime_accuracy, anytime_samples: (k,) accuracies sampled every ``eval_every`` stream samples and the stream
      position of each (empty without ``eval_every``).
    fit_seconds: wall time spent in ``partial_fit`` (prediction excluded).
    """

    matrix: np.ndarray
    seen_accuracy: np.ndarray
    anytime_accuracy: np.ndarray
    anytime_samples: np.ndarray
    fit_seconds: float


def _predict(learner: Learner, x: np.ndarray) -> np.ndarray:
    return np.asarray(learner.predict(x))


def run_protocol(
    learner: Learner,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    phases: Sequence[Phase],
    batch_size: int | None = None,
    eval_every: int | None = None,
    classes: int | None = None,
    progress: bool = False,
) -> RunResult:
    """Feed ``phases`` to ``learner`` in order and evaluate it; see :class:`RunResult`.

    batch_size: ``None`` hands each phase to ``partial_fit`` at once; an integer streams it in mini-batches of
    that size (:func:`continual.scenarios.online`). eval_every: sample the anytime accuracy whenever another
    ``eval_every`` stream samples have been learned (needs ``batch_size``; measured after the batch that crosses
    the mark, on the test samples of the classes seen so far). classes: forwarded to every ``partial_fit``
    (scikit-learn's convention: the total class count, declared up front). Learners then allocate all output
    columns at once -- one compiled program instead of one per width -- and must mask classes not seen yet.
    """
    x_train, y_train = np.asarray(x_train), np.asarray(y_train)
    x_test, y_test = np.asarray(x_test), np.asarray(y_test)
    if eval_every is not None and batch_size is None:
        raise ValueError("eval_every needs batch_size: the anytime accuracy is sampled between mini-batches")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
    batches = online(list(phases), batch_size) if batch_size else [None] * len(phases)
    predictions: list[np.ndarray] = []
    anytime, anytime_at = [], []
    seen: set[int] = set()
    fit_seconds, streamed, next_mark = 0.0, 0, eval_every or 0
    phase_ends = _phase_ends(phases, batches)
    for step, batch in enumerate(tqdm(batches, desc="stream", disable=not progress, leave=False)):
        phase = step if batch is None else batch.phase
        idx = phases[phase].indices if batch is None else batch.indices
        t0 = time.perf_counter()
        learner.partial_fit(x_train[idx], y_train[idx], classes=classes)
        fit_seconds += time.perf_counter() - t0
        streamed += idx.size
        seen |= set(np.unique(y_train[idx]).tolist())
        if eval_every is not None and streamed >= next_mark:
            # Predict the whole test set and select afterwards: a fixed input shape compiles once.
            mask = np.isin(y_test, list(seen))
            anytime.append(metrics.accuracy(y_test[mask], _predict(learner, x_test)[mask]))
            anytime_at.append(streamed)
            next_mark = (streamed // eval_every + 1) * eval_every
        if step in phase_ends:
            predictions.append(_predict(learner, x_test))
    matrix = metrics.accuracy_matrix(y_test, predictions, [p.new_classes for p in phases])
    seen_acc = metrics.seen_accuracy(y_test, predictions, [p.seen_classes for p in phases])
    return RunResult(matrix, seen_acc, np.asarray(anytime), np.asarray(anytime_at, dtype=np.int64), fit_seconds)


def _phase_ends(phases: Sequence[Phase], batches: Sequence[Any]) -> set[int]:
    """Step numbers after which a phase is complete (its last mini-batch, or the phase itself)."""
    if batches and batches[0] is None:
        return set(range(len(phases)))
    last: dict[int, int] = {}
    for step, batch in enumerate(batches):
        last[batch.phase] = step
    if len(last) != len(phases):
        raise ValueError("every phase must hold at least one sample")
    return set(last.values())


def summarize(result: RunResult) -> dict[str, float]:
    """A_avg, A_last and forgetting (and A_auc when anytime accuracy was sampled) of a run, in percent."""
    out = {
        "A_avg": 100 * metrics.average_accuracy(result.seen_accuracy),
        "A_last": 100 * metrics.last_accuracy(result.seen_accuracy),
        "forgetting": 100 * metrics.forgetting(result.matrix),
    }
    if result.anytime_accuracy.size:
        out["A_auc"] = 100 * metrics.auc_accuracy(result.anytime_accuracy, result.anytime_samples)
    return out
