"""L3A: the weighted analytic classifier equals its weighted joint solution; pseudo-labels; checkpoints; bad input."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score

from continual import l3a
from continual.l3a import L3A, class_weights, sample_weights
from continual.multilabel import multi_label_tasks

GAMMA, THRESHOLD = 0.05, 0.7


def _data(n=360, c=6, d=8, seed=0):
    rng = np.random.default_rng(seed)
    prior = np.array([0.5, 0.12, 0.3, 0.08, 0.25, 0.1])  # imbalanced, so the weights matter
    y = (rng.random((n, c)) < prior).astype(np.int8)
    y[np.arange(n), rng.integers(c, size=n)] = 1
    x = y @ rng.normal(size=(c, d)) * 2.0 + 0.3 * rng.normal(size=(n, d))
    return x, y


def _relu_features(state, x):
    return np.maximum(np.asarray(x, np.float64) @ np.asarray(state.buffer.weight, np.float64), 0.0)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_class_weights_formula():
    # f = N^-1/2 = (1, 1/2, 0); n̄ = C f / Σf = 3 (1, 1/2, 0) / 1.5
    np.testing.assert_allclose(class_weights([1, 4, 0]), [2.0, 1.0, 0.0], rtol=1e-15)
    np.testing.assert_allclose(sample_weights([[1, 1, 0], [0, 1, 0]], [1, 4, 0]), [1.5, 1.0], rtol=1e-15)


def test_weighted_joint_solution_after_every_task():
    """After every task W = (Σ ΦᵀΩΦ + γI)⁻¹ Σ ΦᵀΩỸ over all rows seen, each with the pseudo-labels and weight of its
    task, recomputed independently in NumPy float64. Both sides solve the same SPD system in float64 (condition
    ~1e4 here), so they agree to ~1e-12; 1e-8 leaves margin and still fails for any wrong weight or target."""
    x, y = _data()
    tasks = multi_label_tasks(x, y, 2)
    learner = L3A(GAMMA, threshold=THRESHOLD, buffer_size=64, seed=3)
    rows_phi, rows_y, rows_w = [], [], []
    counts = np.zeros(0)
    w_prev = None
    fired = 0
    for task in tasks:
        learner.partial_fit(task.x, task.y)
        info, state = learner.last_info, learner.state
        phi = _relu_features(state, task.x)
        width, old = task.y.shape[1], 0 if w_prev is None else w_prev.shape[1]
        # independent pseudo-labels from the previous head (no entry lies within 1e-6 of the threshold)
        expect = task.y.astype(np.float64).copy()
        if w_prev is not None:
            prob = _sigmoid(phi @ w_prev)
            assert np.abs(prob - THRESHOLD).min() > 1e-6
            expect[:, :old] = np.maximum(expect[:, :old], prob > THRESHOLD)
            fired += int(expect[:, :old].sum())
        np.testing.assert_array_equal(info.targets, expect)
        counts = np.pad(counts, (0, width - counts.size)) + task.y.sum(0)
        f = np.where(counts > 0, counts ** -0.5, 0.0)
        nbar = width * f / f.sum()
        omega = np.array([nbar[r > 0].mean() for r in expect])
        np.testing.assert_allclose(info.weights, omega, rtol=1e-13)
        rows_phi.append(phi)
        rows_y.append(expect)
        rows_w.append(omega)
        big_phi = np.concatenate(rows_phi)
        big_y = np.concatenate([np.pad(t, ((0, 0), (0, width - t.shape[1]))) for t in rows_y])
        big_w = np.concatenate(rows_w)
        ref = np.linalg.solve(big_phi.T @ (big_w[:, None] * big_phi) + GAMMA * np.eye(64),
                              big_phi.T @ (big_w[:, None] * big_y))
        got = np.asarray(state.weight)
        assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-8
        # the weights are not a no-op: the unweighted solution is far from W
        plain = np.linalg.solve(big_phi.T @ big_phi + GAMMA * np.eye(64), big_phi.T @ big_y)
        if len(rows_w) > 1:
            assert np.abs(plain - ref).max() / np.abs(ref).max() > 1e-3
        w_prev = got
    assert fired > 20  # the pseudo-label module did add absent past labels


def test_plain_variant_is_joint_ridge_on_absent_labels():
    x, y = _data(seed=1)
    tasks = multi_label_tasks(x, y, 3)
    learner = L3A(GAMMA, pseudo_label=False, weighted=False, buffer_size=32, seed=1)
    for task in tasks:
        learner.partial_fit(task.x, task.y)
        assert not learner.last_info.targets[:, :task.classes[0]].any()
    phi = np.concatenate([_relu_features(learner.state, t.x) for t in tasks])
    yy = np.concatenate([np.pad(t.y, ((0, 0), (0, 6 - t.y.shape[1]))) for t in tasks])
    ref = np.linalg.solve(phi.T @ phi + GAMMA * np.eye(32), phi.T @ yy)
    assert np.abs(np.asarray(learner.coef_) - ref).max() / np.abs(ref).max() <= 1e-8


def test_pseudo_labels_help_old_classes():
    """With label absence, the plain head learns that old classes are absent from new tasks' images; PL restores
    the old labels it is confident about."""
    x, y = _data(600, seed=2)
    tasks = multi_label_tasks(x, y, 2)
    scores = {}
    for pl in (False, True):
        m = L3A(GAMMA, pseudo_label=pl, weighted=False, buffer_size=64, seed=0)
        for task in tasks:
            m.partial_fit(task.x, task.y)
        scores[pl] = m.decision_function(x)[:, :2][y[:, :2] == 1].mean()
    assert scores[True] > scores[False]


def test_save_load_continues_exactly(tmp_path):
    x, y = _data(seed=4)
    tasks = multi_label_tasks(x, y, 2)
    a = L3A(GAMMA, buffer_size=32, seed=5)
    a.partial_fit(tasks[0].x, tasks[0].y)
    a.save(str(tmp_path / "ck"))
    b = L3A.load(str(tmp_path / "ck"))
    assert b.get_params() == a.get_params()
    for t in tasks[1:]:
        a.partial_fit(t.x, t.y)
        b.partial_fit(t.x, t.y)
    np.testing.assert_array_equal(np.asarray(a.coef_), np.asarray(b.coef_))
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    assert a.predict(x).dtype == np.int8 and a.predict_proba(x).max() < 1


def test_functional_update_does_not_change_state():
    x, y = _data(seed=5)
    t = multi_label_tasks(x, y, 3)[0]
    s0 = l3a.init(8, buffer_size=16)
    s1 = l3a.update(s0, t.x, t.y, gamma=GAMMA)
    assert l3a.num_classes(s0) == 0 and l3a.num_classes(s1) == 3
    assert l3a.predict(s1, x).shape == (x.shape[0], 3)


@pytest.mark.parametrize("bad, match, error", [
    (lambda x, y: (x[:, :3], y), "x", ValueError),
    (lambda x, y: (np.where(x > 1, np.nan, x), y), "x", ValueError),
    (lambda x, y: (x, y * 2), "y", ValueError),
    (lambda x, y: (x, y[:, :1]), "y", ValueError),
    (lambda x, y: (x, np.zeros_like(y)), "no label", ValueError),
    (lambda x, y: (x, y[:-1]), "rows", ValueError),
    (lambda x, y: (x, y[:, 0]), "2-D", ValueError),
    (lambda x, y: (x, y.astype(object)), "y", TypeError),
])
def test_bad_input_leaves_learner_unchanged(bad, match, error):
    x, y = _data(seed=6)
    tasks = multi_label_tasks(x, y, 3)
    m = L3A(GAMMA, buffer_size=16)
    m.partial_fit(tasks[0].x, tasks[0].y)
    state, w = m.state, np.array(m.coef_)
    bx, by = bad(tasks[1].x, tasks[1].y)
    with pytest.raises(error, match=match):
        m.partial_fit(bx, by)
    assert m.state is state
    np.testing.assert_array_equal(np.asarray(m.coef_), w)


@pytest.mark.parametrize("kwargs, match, error", [
    ({"gamma": 0.0}, "gamma", ValueError), ({"gamma": "a"}, "gamma", TypeError),
    ({"threshold": 1.5}, "threshold", ValueError), ({"pseudo_label": 1}, "pseudo_label", TypeError),
    ({"buffer_size": 0}, "buffer_size", ValueError),
])
def test_bad_arguments(kwargs, match, error):
    x, y = _data(seed=7)
    t = multi_label_tasks(x, y, 3)[0]
    with pytest.raises(error, match=match):
        L3A(**kwargs).partial_fit(t.x, t.y)
    with pytest.raises(NotFittedError, match="partial_fit"):
        L3A().predict(x)


def test_is_a_scikit_learn_multilabel_estimator():
    x, y = _data(seed=3)
    learner = L3A(10.0, buffer_size=32, seed=1)
    assert repr(learner) == "L3A(buffer_size=32, gamma=10.0, seed=1)"
    twin = clone(learner).set_params(gamma=1.0)
    assert twin.gamma == 1.0 and learner.gamma == 10.0 and twin.state is None
    learner.fit(x, y)
    pred = learner.predict(x)
    assert pred.shape == y.shape and learner.score(x, y) == accuracy_score(y, pred)  # subset accuracy
    first = np.asarray(learner.coef_).copy()
    with pytest.raises(ValueError):
        learner.fit(x[:, :-1] * np.nan, y)  # refused: the previous fit stays
    np.testing.assert_array_equal(np.asarray(learner.coef_), first)
    # fit starts over: a second fit equals a fresh one
    np.testing.assert_array_equal(np.asarray(learner.fit(x, y).coef_), first)
