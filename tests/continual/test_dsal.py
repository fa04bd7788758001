"""DS-AL: main stream = joint ridge; compensation stream = joint ridge on cleansed residuals (paper or authors)."""

import numpy as np

from continual import DSAL
from continual import dsal as dsal_fn
from tests.continual._learner_reference import class_stream, np_one_hot, np_ridge, rel_err

G_MAIN, G_COMP, CLASSES = 0.1, 1.0, 6


def _streams(state, x):
    z = np.asarray(x) @ np.asarray(state.projection.weight)
    return np.maximum(z, 0.0), np.tanh(z)


def _data(seed):
    rng = np.random.default_rng(seed)
    x, y = class_stream(rng, 12, CLASSES, 32)
    return rng, x, y


def _pad(a, width):
    return np.pad(a, ((0, 0), (0, width - a.shape[1])))


def test_dsal_paper_streams_equal_joint_ridges_after_every_phase():
    rng, x, y = _data(0)
    learner = DSAL(G_MAIN, G_COMP, buffer_size=128)
    seen_rows = np.zeros(y.size, bool)
    comp_x, comp_t, old_classes = [], [], []
    for phase in np.split(rng.permutation(CLASSES), 3):
        rows = np.isin(y, phase)
        learner.partial_fit(x[rows], y[rows], classes=CLASSES)  # a fixed width compiles one program per step
        seen_rows |= rows
        width = CLASSES
        x_main, x_comp = _streams(learner.state, x)
        w_main = np_ridge(x_main[seen_rows], np_one_hot(y[seen_rows], width), G_MAIN)
        # Paper, eq. 11: residual with the end-of-phase main weights; columns of earlier phases' classes zeroed.
        residual = np_one_hot(y[rows], width) - x_main[rows] @ w_main
        residual[:, old_classes] = 0.0
        comp_x.append(x_comp[rows])
        comp_t.append(residual)
        old_classes.extend(phase.tolist())
        w_comp = np_ridge(np.concatenate(comp_x), np.concatenate([_pad(t, width) for t in comp_t]), G_COMP)
        # float64 recursions vs direct solves; cond(XᵀX + γI) ~ 1e5, so 1e-8 is a wide margin over rounding.
        assert rel_err(learner.state.main.weight, w_main) <= 1e-8
        assert rel_err(learner.state.comp.weight, w_comp) <= 1e-8


def test_dsal_compensation_targets_have_old_class_columns_at_zero():
    rng, x, y = _data(2)
    state = dsal_fn.init(32, CLASSES, G_MAIN, G_COMP, buffer_size=128)
    first, second = np.isin(y, [4, 1]), np.isin(y, [0, 5])
    state = dsal_fn.update(state, x[first], y[first])
    state = dsal_fn.update(state, x[second], y[second])
    x_main, _ = dsal_fn.stream_features(state, x[second])
    keep = ~np.isin(np.arange(CLASSES), [4, 1])
    targets = np.asarray(dsal_fn.cleansed_residual(state.main, x_main, np_one_hot(y[second], CLASSES), keep))
    assert np.all(targets[:, [1, 4]] == 0.0)
    raw = np_one_hot(y[second], CLASSES) - np.asarray(x_main) @ np.asarray(state.main.weight)
    assert np.abs(raw[:, [1, 4]]).max() > 1e-3  # the cleansing removed something real
    np.testing.assert_allclose(targets[:, keep], raw[:, keep], rtol=1e-12, atol=1e-12)


def test_dsal_authors_cleansing_is_per_mini_batch_and_keeps_the_last_columns():
    rng, x, y = _data(3)
    learner = DSAL(G_MAIN, G_COMP, buffer_size=128, cleansing="authors", batch_size=8)
    seen_rows, comp_x, comp_t, highest = [], [], [], -1
    for phase in np.split(rng.permutation(CLASSES), 3):
        idx = np.flatnonzero(np.isin(y, phase))
        learner.partial_fit(x[idx], y[idx], classes=CLASSES)
        x_main, x_comp = _streams(learner.state, x)
        for batch in np.array_split(idx, np.arange(8, idx.size, 8)):
            seen_rows.extend(batch.tolist())
            highest = max(highest, int(y[batch].max()))
            width = highest + 1
            # The repository: main weights right after this batch, keep the last `increase_size` columns.
            w_main = np_ridge(x_main[seen_rows], np_one_hot(y[seen_rows], width), G_MAIN)
            residual = np_one_hot(y[batch], width) - x_main[batch] @ w_main
            residual[:, : width - len(phase)] = 0.0
            comp_x.append(x_comp[batch])
            comp_t.append(residual)
    w_comp = np_ridge(np.concatenate(comp_x), np.concatenate([_pad(t, CLASSES) for t in comp_t]), G_COMP)
    assert rel_err(learner.state.comp.weight, w_comp) <= 1e-8


def test_dsal_authors_equals_paper_only_for_contiguous_whole_phases():
    _, x, y = _data(4)
    contiguous = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5])]
    shuffled = [np.array([3, 0]), np.array([5, 1]), np.array([2, 4])]
    for phases, same in ((contiguous, True), (shuffled, False)):
        # batch_size above every phase's size: each phase is one mini-batch.
        paper, authors = DSAL(buffer_size=128), DSAL(buffer_size=128, cleansing="authors", batch_size=10_000)
        for phase in phases:
            rows = np.isin(y, phase)
            paper.partial_fit(x[rows], y[rows], classes=CLASSES)
            authors.partial_fit(x[rows], y[rows], classes=CLASSES)
        err = rel_err(authors.state.comp.weight, paper.state.comp.weight)
        assert (err <= 1e-10) if same else (err > 1e-2)


def test_dsal_prediction_is_main_plus_ratio_times_compensation():
    _, x, y = _data(5)
    learner = DSAL(buffer_size=128, compensation_ratio=1.5, activation_comp="sigmoid").fit(x, y, classes=CLASSES)
    z = x @ np.asarray(learner.state.projection.weight)
    expected = np.maximum(z, 0) @ np.asarray(learner.state.main.weight) + 1.5 * (
        1 / (1 + np.exp(-z))) @ np.asarray(learner.state.comp.weight)
    np.testing.assert_allclose(np.asarray(learner.decision_function(x)), expected, rtol=1e-10, atol=1e-10)
    assert learner.score(x, y) > 0.9
