"""Metrics against small cases worked out by hand (the expected numbers are derived in the comments)."""

from __future__ import annotations

import numpy as np
import pytest

from continual import metrics
from continual.runner import run_protocol, summarize
from continual.scenarios import Phase

# Three phases over classes {0,1} | {2} | {3}; 2 test samples per class.
Y_TEST = np.array([0, 0, 1, 1, 2, 2, 3, 3])
PREDICTIONS = [
    np.array([0, 0, 1, 0, 0, 0, 0, 0]),   # after phase 0: classes 0,1 -> 3/4 right
    np.array([0, 1, 1, 1, 2, 2, 2, 2]),   # after phase 1: {0,1} 3/4, {2} 2/2
    np.array([1, 1, 1, 0, 2, 3, 3, 3]),   # after phase 2: {0,1} 1/4, {2} 1/2, {3} 2/2
]
GROUPS = [np.array([0, 1]), np.array([2]), np.array([3])]
SEEN = [np.array([0, 1]), np.array([0, 1, 2]), np.array([0, 1, 2, 3])]


def test_accuracy_matrix_by_hand() -> None:
    r = metrics.accuracy_matrix(Y_TEST, PREDICTIONS, GROUPS)
    expected = np.array([[0.75, np.nan, np.nan], [0.75, 1.0, np.nan], [0.25, 0.5, 1.0]])
    np.testing.assert_array_equal(r, expected)


def test_seen_accuracy_average_and_last_by_hand() -> None:
    seen = metrics.seen_accuracy(Y_TEST, PREDICTIONS, SEEN)
    # phase 0: 3/4; phase 1: (3 + 2)/6; phase 2: (1 + 1 + 2)/8.
    np.testing.assert_allclose(seen, [3 / 4, 5 / 6, 4 / 8])
    assert metrics.average_accuracy(seen) == pytest.approx((3 / 4 + 5 / 6 + 1 / 2) / 3)
    assert metrics.last_accuracy(seen) == pytest.approx(0.5)


def test_forgetting_by_hand() -> None:
    r = metrics.accuracy_matrix(Y_TEST, PREDICTIONS, GROUPS)
    # group 0: max(0.75, 0.75) - 0.25 = 0.5; group 1: 1.0 - 0.5 = 0.5; the last group is not counted.
    assert metrics.forgetting(r) == pytest.approx(0.5)
    # A learner that only improves forgets nothing; a negative drop (backward transfer) counts as negative.
    assert metrics.forgetting(np.array([[0.5, np.nan], [0.7, 0.9]])) == pytest.approx(-0.2)
    assert np.isnan(metrics.forgetting(np.array([[0.9]])))


def test_auc_accuracy_uniform_and_weighted_by_hand() -> None:
    assert metrics.auc_accuracy([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    # Steps of 10, 10 and 30 samples: (0.2*10 + 0.4*10 + 0.9*30) / 50.
    assert metrics.auc_accuracy([0.2, 0.4, 0.9], [10, 20, 50]) == pytest.approx(33 / 50)
    with pytest.raises(ValueError, match="increasing"):
        metrics.auc_accuracy([0.2, 0.4], [10, 10])
    with pytest.raises(ValueError, match="shape"):
        metrics.auc_accuracy([0.2, 0.4], [10])


def test_metrics_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="square"):
        metrics.forgetting(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="seen_acc"):
        metrics.average_accuracy([])
    with pytest.raises(ValueError, match="groups"):
        metrics.accuracy_matrix(Y_TEST, PREDICTIONS, GROUPS[:2])


class _Scripted:
    """A learner that replays fixed predictions: isolates the runner's bookkeeping from any model."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def partial_fit(self, x: np.ndarray, y: np.ndarray, classes: object = None) -> None:
        self.calls.append(len(y))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return PREDICTIONS[min(len(self.calls), len(PREDICTIONS)) - 1][x[:, 0].astype(int)]


def test_runner_reproduces_the_hand_worked_matrix() -> None:
    y_train = np.array([0, 1, 0, 1, 2, 2, 3])
    phases = [Phase(np.array([0, 1, 2, 3]), GROUPS[0], SEEN[0]), Phase(np.array([4, 5]), GROUPS[1], SEEN[1]),
              Phase(np.array([6]), GROUPS[2], SEEN[2])]
    x_test = np.arange(Y_TEST.size, dtype=float)[:, None]   # column 0 = the test row, read by _Scripted
    learner = _Scripted()
    result = run_protocol(learner, np.zeros((7, 1)), y_train, x_test, Y_TEST, phases)
    assert learner.calls == [4, 2, 1]
    np.testing.assert_array_equal(result.matrix, metrics.accuracy_matrix(Y_TEST, PREDICTIONS, GROUPS))
    summary = summarize(result)
    assert summary["A_last"] == pytest.approx(50.0) and summary["forgetting"] == pytest.approx(50.0)
    assert "A_auc" not in summary


def test_runner_samples_anytime_accuracy_every_delta_n() -> None:
    y_train = np.array([0, 1, 0, 1, 2, 2, 3])
    phases = [Phase(np.array([0, 1, 2, 3]), GROUPS[0], SEEN[0]), Phase(np.array([4, 5, 6]), np.array([2, 3]),
                                                                          np.arange(4))]
    learner = _Scripted()
    x_test = np.arange(Y_TEST.size, dtype=float)[:, None]
    result = run_protocol(learner, np.zeros((7, 1)), y_train, x_test, Y_TEST, phases, batch_size=2, eval_every=3)
    # Batches of 2, 2 | 2, 1 -> stream positions 2, 4, 6, 7; marks at 3 and 6 are crossed after 4 and 6 samples.
    assert learner.calls == [2, 2, 2, 1]
    np.testing.assert_array_equal(result.anytime_samples, [4, 6])
    # After 4 samples (2nd call) PREDICTIONS[1] on classes {0,1}: 3/4; after 6 (3rd call) PREDICTIONS[2] on {0,1,2}.
    np.testing.assert_allclose(result.anytime_accuracy, [3 / 4, 2 / 6])
    assert summarize(result)["A_auc"] == pytest.approx(100 * (0.75 * 4 + (2 / 6) * 2) / 6)
    with pytest.raises(ValueError, match="batch_size"):
        run_protocol(learner, np.zeros((7, 1)), y_train, x_test, Y_TEST, phases, eval_every=3)
