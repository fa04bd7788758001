"""GACL: the exposed/unexposed decomposition (ECLG form) equals padded RLS and joint ridge after every batch."""

import numpy as np
import pytest

from analytic import rls_init, rls_update
from continual import GACL
from continual import gacl as gacl_fn
from tests.continual._learner_reference import np_one_hot, np_ridge, rel_err

GAMMA = 100.0
CLASSES = 8


def blurry_stream(rng, batches=10, batch=8, dim=32):
    """Si-Blurry-like stream: tasks introduce classes mid-way, old classes reappear, batches mix both."""
    means = rng.normal(scale=2.0, size=(CLASSES, dim))
    arrival = rng.permutation(CLASSES)
    xs, ys = [], []
    for k in range(batches):
        available = arrival[: 2 + (k * (CLASSES - 2)) // (batches - 1)]  # classes arrive over the stream
        y = rng.choice(available, size=batch)
        xs.append(means[y] + rng.normal(size=(batch, dim)))
        ys.append(y)
    return xs, ys


def _features(state, x):
    return np.maximum(np.asarray(x) @ np.asarray(state.buffer.weight), 0.0)


@pytest.mark.parametrize("declared", [CLASSES, None])
def test_gacl_equals_padded_rls_and_joint_ridge_after_every_batch(declared):
    rng = np.random.default_rng(0)
    xs, ys = blurry_stream(rng, batches=10 if declared else 4)
    learner = GACL(GAMMA, buffer_size=128, seed=1)
    core = None
    for k, (x, y) in enumerate(zip(xs, ys)):
        learner.partial_fit(x, y, classes=declared)
        feats = _features(learner.state, np.concatenate(xs[: k + 1]))
        labels = np.concatenate(ys[: k + 1])
        core = rls_update(core or rls_init(128, declared or 0, GAMMA), _features(learner.state, x), y)
        w = np.asarray(learner.coef_)
        # float64; cond(XᵀX + γI) <= ~1e3 with γ = 100, so agreement to 1e-8 has orders of magnitude of margin.
        assert rel_err(w, np_ridge(feats, np_one_hot(labels, w.shape[1]), GAMMA)) <= 1e-8
        assert rel_err(w, core.weight) <= 1e-8
        np.testing.assert_array_equal(np.asarray(learner.state.exposed), np.isin(np.arange(w.shape[1]), labels))


def test_gacl_is_invariant_to_the_class_numbering():
    rng = np.random.default_rng(2)
    xs, ys = blurry_stream(rng, batches=6)
    perm = rng.permutation(CLASSES)
    a, b = GACL(GAMMA, buffer_size=128), GACL(GAMMA, buffer_size=128)
    for x, y in zip(xs, ys):
        a.partial_fit(x, y, classes=CLASSES)
        b.partial_fit(x, perm[y], classes=CLASSES)
    # Column perm[c] of b is column c of a: the decomposition does not depend on which ids arrive first.
    assert rel_err(np.asarray(b.coef_)[:, perm], a.coef_) <= 1e-8


def test_gacl_online_iter_equals_joint_ridge_with_gamma_divided():
    rng = np.random.default_rng(3)
    xs, ys = blurry_stream(rng, batches=4)
    learner = GACL(GAMMA, online_iter=3, buffer_size=128)
    for x, y in zip(xs, ys):
        learner.partial_fit(x, y, classes=CLASSES)
    feats = _features(learner.state, np.concatenate(xs))
    labels = np.concatenate(ys)
    # Fitting every batch 3 times triples XᵀX and XᵀY: the authors' online_iter=3 is ridge with γ/3 (METHODS 2b).
    assert rel_err(learner.coef_, np_ridge(feats, np_one_hot(labels, CLASSES), GAMMA / 3)) <= 1e-8
    assert rel_err(learner.coef_, np_ridge(feats, np_one_hot(labels, CLASSES), GAMMA)) > 1e-3


def test_gacl_eclg_step_decomposes_exposed_and_unexposed_columns():
    rng = np.random.default_rng(4)
    state = gacl_fn.init(16, 4, 1.0, solver="rls")  # the recursion: W and R after every batch
    x1, x2 = rng.normal(size=(8, 16)), rng.normal(size=(8, 16))
    state = gacl_fn.update(state, x1, np.array([0, 1] * 4))
    y2 = np.array([1, 2] * 4)  # class 1 is exposed, class 2 is not
    new = gacl_fn.update(state, x2, y2)
    r = np.asarray(new.head.inv_autocorr)
    w = np.asarray(state.head.weight)
    # The decomposition in NumPy: exposed columns get the label gain, unexposed ones start from R_k X_kᵀ Y_k^U.
    exposed_cols = w - r @ x2.T @ x2 @ w + r @ x2.T @ np_one_hot(y2, 4)
    np.testing.assert_allclose(np.asarray(new.head.weight)[:, :2], exposed_cols[:, :2], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(new.head.weight)[:, 2], (r @ x2.T @ np_one_hot(y2, 4))[:, 2], rtol=1e-10)
    assert np.all(np.asarray(new.head.weight)[:, 3] == 0)


@pytest.mark.parametrize("online_iter", [1, 3])
def test_gacl_gram_and_rls_solvers_agree_after_every_batch(online_iter):
    rng = np.random.default_rng(6)
    xs, ys = blurry_stream(rng, batches=5)
    gram = GACL(GAMMA, online_iter=online_iter, buffer_size=64)
    rls = GACL(GAMMA, online_iter=online_iter, buffer_size=64, solver="rls")
    for x, y in zip(xs, ys):
        gram.partial_fit(x, y)
        rls.partial_fit(x, y)
        assert rel_err(gram.coef_, rls.coef_) <= 1e-9
        np.testing.assert_array_equal(np.asarray(gram.state.exposed), np.asarray(rls.state.exposed))


def test_gacl_masks_never_exposed_classes():
    rng = np.random.default_rng(5)
    learner = GACL(1.0)
    x = rng.normal(size=(8, 16))
    learner.partial_fit(-np.abs(x), np.array([0, 2] * 4), classes=5)
    logits = np.asarray(learner.decision_function(x))
    assert np.all(np.isneginf(logits[:, [1, 3, 4]]))
    assert set(learner.predict(x)) <= {0, 2}
