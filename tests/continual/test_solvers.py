"""The learners' two head forms (``solver="gram"``: lazily solved statistics; ``"rls"``: Woodbury) agree, and the
Gram path keeps the input, health and checkpoint guarantees of the recursion."""

import numpy as np
import pytest

from analytic import RLSState, save_state
from continual import ACIL, AIR, DSAL
from continual import air as air_fn
from tests.continual._learner_reference import class_stream, np_one_hot, np_ridge, rel_err

CLASSES = 6


def _phases(seed, dim=24):
    rng = np.random.default_rng(seed)
    x, y = class_stream(rng, 12, CLASSES, dim)
    return x, y, np.split(rng.permutation(CLASSES), 3)


def test_acil_gram_equals_rls_and_joint_ridge_after_every_phase():
    x, y, phases = _phases(0)
    gram, rls = ACIL(0.1, buffer_size=96, seed=1), ACIL(0.1, buffer_size=96, seed=1, solver="rls")
    seen = np.zeros(y.size, bool)
    for phase in phases:
        rows = np.isin(y, phase)
        seen |= rows
        for part in np.array_split(np.flatnonzero(rows), 3):  # mini-batches within the phase
            gram.partial_fit(x[part], y[part])
            rls.partial_fit(x[part], y[part])
        feats = np.maximum(x[seen] @ np.asarray(gram.state.buffer.weight), 0.0)
        ridge = np_ridge(feats, np_one_hot(y[seen], gram.coef_.shape[1]), 0.1)
        assert rel_err(gram.coef_, ridge) <= 1e-9
        assert rel_err(gram.coef_, rls.coef_) <= 1e-9
        np.testing.assert_array_equal(gram.predict(x), rls.predict(x))


def test_dsal_paper_gram_equals_paper_rls():
    x, y, phases = _phases(1)
    gram = DSAL(0.1, 1.0, buffer_size=96, batch_size=16)
    rls = DSAL(0.1, 1.0, buffer_size=96, batch_size=16, solver="rls")
    # solver=None (stored as given) picks the Gram head for the paper's cleansing, Woodbury for the authors'
    authors = DSAL(cleansing="authors", batch_size=8).fit(x[:40], y[:40])
    assert gram.solver is None and isinstance(authors.state.main, RLSState)
    for phase in phases:
        rows = np.isin(y, phase)
        gram.partial_fit(x[rows], y[rows], classes=CLASSES)
        rls.partial_fit(x[rows], y[rows], classes=CLASSES)
        assert not isinstance(gram.state.main, RLSState)
        assert rel_err(gram.state.main.weight, rls.state.main.weight) <= 1e-9
        assert rel_err(gram.state.comp.weight, rls.state.comp.weight) <= 1e-9
    with pytest.raises(ValueError, match="solver='rls'"):
        DSAL(cleansing="authors", batch_size=8, solver="gram").fit(x, y)


def test_air_present_class_statistics_equal_all_class_statistics():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(60, 10)), rng.integers(0, 7, 60)
    state = air_fn.init(10, 7, 1.0)
    for part in np.array_split(np.arange(60), 4):
        state = air_fn.update(state, x[part], np.sort(y[part]) % 3 + 2 * (part[0] > 20))  # few classes per batch
    labels = np.concatenate([np.sort(y[p]) % 3 + 2 * (p[0] > 20) for p in np.array_split(np.arange(60), 4)])
    for c in range(7):
        rows = labels == c
        np.testing.assert_allclose(np.asarray(state.class_gram[c]), x[rows].T @ x[rows], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(state.counts), np.bincount(labels, minlength=7))
    assert rel_err(AIR(1.0).fit(x, labels, classes=7).coef_, air_fn.solve(state)) <= 1e-9


def test_a_failed_gram_update_leaves_the_cached_solve_valid():
    x, y, _ = _phases(3)
    learner = ACIL(0.1, buffer_size=48).partial_fit(x[:40], y[:40])
    before = np.asarray(learner.decision_function(x[:5]))
    bad = x[40:60].copy()
    bad[3, 2] = 1e200
    with pytest.raises(ValueError, match="x row 3"):
        learner.partial_fit(bad, y[40:60])
    np.testing.assert_array_equal(np.asarray(learner.decision_function(x[:5])), before)


def test_a_checkpoint_written_before_the_solver_option_loads_as_rls(tmp_path):
    x, y, _ = _phases(4)
    old = ACIL(0.1, buffer_size=48, solver="rls").partial_fit(x, y)
    params = {k: v for k, v in old.get_params().items() if k != "solver"}
    save_state(tmp_path / "ckpt", old.state, {"learner": "ACIL", "params": params, "n_classes_declared": None})
    loaded = ACIL.load(tmp_path / "ckpt")
    assert loaded.solver == "rls"
    np.testing.assert_array_equal(np.asarray(loaded.coef_), np.asarray(old.coef_))
