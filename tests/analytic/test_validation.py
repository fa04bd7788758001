"""Bad input raises a clear error naming the argument and leaves the state unchanged."""

import jax.numpy as jnp
import numpy as np
import pytest

from analytic import AnalyticLinear, RandomBuffer, gram_init, gram_update, one_hot, rls_init, rls_update
from analytic.validation import check_gamma

from .helpers import stream

X, Y = stream(0, n=60, d=6, classes=3)

BAD_BATCHES = [
    (np.where(np.arange(360).reshape(60, 6) == 7, np.nan, X), Y, ValueError, "NaN/inf"),
    (np.where(np.arange(360).reshape(60, 6) == 7, np.inf, X), Y, ValueError, "NaN/inf"),
    (X[:, :5], Y, ValueError, "5 features"),
    (X[0], Y[:1], ValueError, "2-D"),
    (X[:0], Y[:0], ValueError, "empty"),
    (X.astype(np.int32), Y, TypeError, "floating dtype"),
    (X > 0, Y, TypeError, "floating dtype"),
    (X, -Y - 1, ValueError, "negative"),
    (X, Y + 0.5, ValueError, "non-integer"),
    (X, Y[:-1], ValueError, "59 labels"),
    (X, Y.astype(bool), TypeError, "integer class ids"),
]


@pytest.mark.parametrize("x,y,err,msg", BAD_BATCHES)
def test_gram_and_rls_updates_refuse_bad_batches(x, y, err, msg):
    for update, state in ((gram_update, gram_init(6, 3)), (rls_update, rls_init(6, 3, 1.0))):
        with pytest.raises(err, match=msg):
            update(state, x, y)


# The estimator follows scikit-learn: integer/boolean features are converted, and once fitted on class ids it
# refuses other labels by saying so.
ESTIMATOR_BAD_BATCHES = [b for b in BAD_BATCHES if b[3] != "floating dtype"]
ESTIMATOR_BAD_BATCHES = [(x, y, ValueError, "Unknown label type") if msg == "non-integer" else
                         (x, y, ValueError, "class ids") if msg == "integer class ids" else (x, y, err, msg)
                         for x, y, err, msg in ESTIMATOR_BAD_BATCHES]


@pytest.mark.parametrize("x,y,err,msg", ESTIMATOR_BAD_BATCHES)
def test_estimator_that_raised_is_unchanged_and_usable(x, y, err, msg):
    for solver in ("gram", "rls"):
        est = AnalyticLinear(0.5, solver=solver).partial_fit(X[:30], Y[:30])
        before = np.asarray(est.coef_).copy()
        with pytest.raises(err, match=msg):
            est.partial_fit(x, y)
        assert np.array_equal(np.asarray(est.coef_), before)
        est.partial_fit(X[30:], Y[30:])                    # still usable
        fresh = AnalyticLinear(0.5, solver=solver).fit(X, Y)
        np.testing.assert_allclose(est.coef_, fresh.coef_, rtol=1e-9, atol=1e-12)


def test_declared_classes_refuse_labels_beyond_them():
    est = AnalyticLinear(1.0, classes=3).partial_fit(X, Y)
    with pytest.raises(ValueError, match="class id 5 but only 3 classes"):
        est.partial_fit(X[:4], np.array([0, 1, 2, 5]))
    assert est.n_classes_ == 3
    with pytest.raises(ValueError, match="class id 3"):
        one_hot([0, 3], 3)


@pytest.mark.parametrize("gamma", [0, -0.1, float("nan")])
def test_non_positive_gamma_is_refused(gamma):
    with pytest.raises(ValueError, match="gamma"):
        AnalyticLinear(gamma).fit(X, Y)
    with pytest.raises(ValueError, match="gamma"):
        rls_init(4, 2, gamma)


@pytest.mark.parametrize("gamma", [True, np.True_, "1.0", b"1"])
def test_boolean_or_string_gamma_is_refused_not_coerced(gamma):
    with pytest.raises(TypeError, match="gamma must be a positive real number"):
        AnalyticLinear(gamma).fit(X, Y)
    with pytest.raises(TypeError, match="gamma"):
        rls_init(4, 2, gamma)
    assert check_gamma(np.float32(0.5)) == 0.5 and check_gamma(2) == 2.0  # real numbers still pass


def test_buffer_width_mismatch_is_named():
    est = AnalyticLinear(1.0, buffer=RandomBuffer(6, 32, seed=1)).fit(X, Y)
    with pytest.raises(ValueError, match="X has 4 features, but AnalyticLinear is expecting 6"):
        est.predict(X[:, :4])
    with pytest.raises(ValueError, match="activation"):
        RandomBuffer(3, 4, activation="swish")


def test_float64_without_x64_is_refused_in_dtype_policy():
    # With x64 on (tests), float64 is allowed; an integer accumulator dtype never is.
    with pytest.raises(TypeError, match="floating"):
        gram_init(3, 2, dtype=jnp.int32)
