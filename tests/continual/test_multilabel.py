"""MLCIL scenario (label absence) and metrics against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from continual.multilabel import (
    average_precision,
    f1_scores,
    mean_average_precision,
    multi_label_tasks,
    multilabel_metrics,
    run_multilabel_protocol,
    seen_test,
)


def _data(n=200, c=6, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.int8)
    y[np.arange(n), rng.integers(c, size=n)] = 1
    return rng.normal(size=(n, 5)), y


def test_tasks_carry_only_their_labels():
    x, y = _data()
    order = [5, 0, 3, 1, 4, 2]
    tasks = multi_label_tasks(x, y, 2, order=order)
    assert len(tasks) == 3
    yo = y[:, order]
    for t, task in enumerate(tasks):
        cols = np.arange(2 * t, 2 * t + 2)
        assert task.classes.tolist() == cols.tolist()
        assert task.y.shape == (task.rows.size, 2 * t + 2)
        # exactly the images with >= 1 of the task's classes
        assert task.rows.tolist() == np.flatnonzero(yo[:, cols].any(1)).tolist()
        np.testing.assert_array_equal(task.y[:, cols], yo[np.ix_(task.rows, cols)])
        # label absence: past classes present in the image are not annotated
        assert not task.y[:, :2 * t].any()
        np.testing.assert_array_equal(task.x, x[task.rows])
    # some image does carry a past class, so the absence above is a real removal
    assert yo[tasks[2].rows, :4].any()


def test_seen_test_rows_and_columns():
    x, y = _data()
    xs, ys = seen_test(x, y, 2)
    rows = np.flatnonzero(y[:, :2].any(1))
    np.testing.assert_array_equal(xs, x[rows])
    np.testing.assert_array_equal(ys, y[rows, :2])


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(ties):
    x, y = _data(300, 5, 1)
    rng = np.random.default_rng(2)
    s = rng.normal(size=y.shape) + y
    if ties:
        s = np.round(s, 1)  # many equal scores: thresholds must group them as sklearn does
    ap = average_precision(y, s)
    ref = [average_precision_score(y[:, k], s[:, k]) for k in range(y.shape[1])]
    np.testing.assert_allclose(ap, ref, rtol=1e-12)
    assert mean_average_precision(y, s) == pytest.approx(average_precision_score(y, s, average="macro"), rel=1e-12)


def test_class_without_positive_left_out():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.9, 0.1], [0.2, 0.5], [0.4, 0.3]])
    ap = average_precision(y, s)
    assert np.isnan(ap[1])
    assert mean_average_precision(y, s) == pytest.approx(ap[0])


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_f1_matches_sklearn(threshold):
    _, y = _data(150, 4, 3)
    s = np.random.default_rng(4).random(y.shape) * 0.6 + 0.4 * y
    s[:, 3] = 0.0  # a class never predicted: F1 0 as sklearn's zero_division=0
    pred = (s > threshold).astype(int)
    cf1, of1 = f1_scores(y, s, threshold)
    assert cf1 == pytest.approx(f1_score(y, pred, average="macro", zero_division=0), rel=1e-12)
    assert of1 == pytest.approx(f1_score(y, pred, average="micro", zero_division=0), rel=1e-12)
    m = multilabel_metrics(y, s, threshold)
    assert set(m) == {"mAP", "CF1", "OF1"} and m["CF1"] == cf1


def test_protocol_evaluates_seen_classes():
    x, y = _data()
    tasks = multi_label_tasks(x, y, 3)
    widths = []

    def learn(task):
        widths.append(task.y.shape[1])

    rows = run_multilabel_protocol(learn, lambda xs: np.tile(np.arange(6.0), (len(xs), 1)), tasks, x, y)
    assert widths == [3, 6] and [r["seen"] for r in rows] == [3, 6]


def test_bad_inputs():
    x, y = _data()
    with pytest.raises(ValueError, match="y"):
        multi_label_tasks(x, y * 2, 2)
    with pytest.raises(ValueError, match="classes_per_task"):
        multi_label_tasks(x, y, 0)
    with pytest.raises(ValueError, match="order"):
        multi_label_tasks(x, y, 2, order=[0, 0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="scores"):
        average_precision(y, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        f1_scores(y, np.full(y.shape, np.nan))
