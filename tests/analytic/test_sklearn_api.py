"""Every estimator class is a scikit-learn estimator: sklearn's own checks, its tools, labels of any kind.

``parametrize_with_checks`` runs scikit-learn's full estimator suite (55 checks each: cloning, parameters left
as given, fitted attributes, input conversion and refusal messages, pickling, subset/order invariance,
accuracy on blobs, string/``{-1, 1}`` labels, ...) against each class with no expected failures: F-OAL is
checked on pre-fused features (``inputs="fused"``); its per-block token form ``(n, L, D)`` is 3-D input, which
no sklearn check can feed. pandas (the test extra) lets the data-frame checks run; the one check scikit-learn
skips is array-API input, which these estimators do not claim (it needs ``SCIPY_ARRAY_API=1``).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from analytic import AnalyticLinear
from continual import ACIL, AIR, DSAL, FOAL, GACL, NCM, FeCAM, RanPAC
from continual.baselines import SLDA, FineTune, JointRidge

ESTIMATORS = [
    AnalyticLinear(), JointRidge(buffer_size=64), ACIL(buffer_size=128), DSAL(buffer_size=128),
    GACL(1.0, buffer_size=128), AIR(), FOAL(1.0, projection_dim=128, inputs="fused"), SLDA(), FineTune(),
    RanPAC(buffer_size=128), NCM(), FeCAM(),
]


@parametrize_with_checks(ESTIMATORS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def _digits():
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y


def test_grid_search_over_gamma_and_a_pipeline():
    x, y = _digits()
    search = GridSearchCV(ACIL(buffer_size=512), {"gamma": [0.01, 1.0, 100.0]}, cv=3).fit(x, y)
    assert search.best_params_["gamma"] in (0.01, 1.0, 100.0) and search.best_score_ > 0.9
    # The refit estimator is the closed-form solution on all rows with the chosen gamma.
    direct = ACIL(buffer_size=512, gamma=search.best_params_["gamma"]).fit(x, y)
    np.testing.assert_array_equal(np.asarray(search.best_estimator_.coef_), np.asarray(direct.coef_))
    scores = cross_val_score(make_pipeline(StandardScaler(), AnalyticLinear(1.0)), x, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85


def test_string_labels_map_to_columns_in_arrival_order_and_give_the_id_learner_s_answers():
    x, y = _digits()
    names = np.array([f"digit-{k}" for k in range(10)])
    first, second = y < 5, y >= 5
    by_name = ACIL(buffer_size=256).partial_fit(x[first], names[y[first]])
    by_name.partial_fit(x[second], names[y[second]])
    by_id = ACIL(buffer_size=256).partial_fit(x[first], y[first]).partial_fit(x[second], y[second])
    # Columns were given in arrival order (sorted within a call), here the digit order: the same scores bit for
    # bit, and predictions are the names.
    np.testing.assert_array_equal(by_name.classes_, names)
    np.testing.assert_array_equal(np.asarray(by_name.class_scores(x)), np.asarray(by_id.class_scores(x)))
    np.testing.assert_array_equal(by_name.predict(x), names[by_id.predict(x)])
    assert by_name.score(x, names[y]) == by_id.score(x, y)


def test_labels_arriving_out_of_order_keep_their_columns():
    x, y = _digits()
    labels = np.where(y % 2 == 0, -(y + 1), y)            # negative labels: mapped, not class ids
    late = labels < -5
    model = AnalyticLinear(0.5).partial_fit(x[~late], labels[~late]).partial_fit(x[late], labels[late])
    early = np.unique(labels[~late])
    np.testing.assert_array_equal(model.classes_, np.concatenate([early, np.unique(labels[late])]))
    # The same ridge problem with the columns in that order, solved once in float64.
    onehot = (labels[:, None] == model.classes_[None, :]).astype(float)
    w = np.linalg.solve(x.T @ x + 0.5 * np.eye(x.shape[1]), x.T @ onehot)
    np.testing.assert_allclose(np.asarray(model.coef_), w, rtol=1e-9, atol=1e-11)  # float64 rounding only
    np.testing.assert_array_equal(model.predict(x), model.classes_[np.argmax(x @ w, axis=1)])


def test_declared_labels_fix_the_columns_and_refuse_others():
    x, y = _digits()
    names = np.array(list("abcdefghij"))[y]
    model = GACL(1.0, buffer_size=128).partial_fit(x[:50], names[:50], classes=np.array(list("jihgfedcba")))
    np.testing.assert_array_equal(model.classes_, np.array(list("abcdefghij")))
    with pytest.raises(ValueError, match="not among the 10 declared"):
        model.partial_fit(x[:5], np.array(["z"] * 5))
    with pytest.raises(ValueError, match="class ids"):
        ACIL(buffer_size=64).partial_fit(x, y).partial_fit(x[:5], names[:5])


def test_binary_decision_function_is_the_margin_of_the_second_class():
    x, y = _digits()
    rows = y < 2
    model = DSAL(buffer_size=128).fit(x[rows], np.where(y[rows] == 1, "one", "zero"))
    scores = np.asarray(model.class_scores(x[rows]))
    margin = model.decision_function(x[rows])
    assert margin.shape == (rows.sum(),)
    np.testing.assert_array_equal(margin, scores[:, 1] - scores[:, 0])
    np.testing.assert_array_equal(model.predict(x[rows]), model.classes_[(margin > 0).astype(int)])


def test_integer_features_are_converted_exactly():
    x, y = _digits()
    counts = (x * 16).astype(np.int64)                      # the digits' pixel counts, exact in float64
    a, b = AIR(0.5).fit(counts, y), AIR(0.5).fit(counts.astype(np.float64), y)
    np.testing.assert_array_equal(np.asarray(a.coef_), np.asarray(b.coef_))


def test_parameters_are_stored_as_given_and_checked_by_fit():
    x, y = _digits()
    model = ACIL(gamma=-1.0)                                 # stored, not refused: scikit-learn's rule
    assert model.get_params()["gamma"] == -1.0
    with pytest.raises(ValueError, match="gamma"):
        model.fit(x, y)
    with pytest.raises(NotFittedError):
        model.predict(x)
    model.set_params(gamma=0.1).fit(x, y)
    assert clone(model).get_params() == model.get_params()


def test_set_params_after_fit_refuses_partial_fit_but_fit_starts_over():
    x, y = _digits()
    model = ACIL(buffer_size=64).fit(x[:100], y[:100])
    before = np.asarray(model.coef_).copy()
    model.set_params(gamma=5.0)
    with pytest.raises(ValueError, match="gamma changed"):
        model.partial_fit(x[100:], y[100:])
    np.testing.assert_array_equal(np.asarray(model.coef_), before)  # the refused call changed nothing
    model.fit(x, y)
    np.testing.assert_array_equal(np.asarray(model.coef_),
                                  np.asarray(ACIL(5.0, buffer_size=64).fit(x, y).coef_))


def test_labels_survive_checkpoints_and_pickles(tmp_path):
    x, y = _digits()
    names = np.array(list("abcdefghij"))[y]
    model = FOAL(1.0, projection_dim=64, inputs="fused").fit(x, names)
    model.save(tmp_path / "foal")
    estimator = AnalyticLinear(0.5).fit(x, names)
    estimator.save(tmp_path / "linear")
    pairs = ((model, FOAL.load(tmp_path / "foal")), (estimator, AnalyticLinear.load(tmp_path / "linear")),
             (model, pickle.loads(pickle.dumps(model))))
    for original, restored in pairs:
        np.testing.assert_array_equal(restored.classes_, original.classes_)
        np.testing.assert_array_equal(restored.predict(x), original.predict(x))
