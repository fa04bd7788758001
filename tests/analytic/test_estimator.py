import numpy as np
import pytest
from sklearn.datasets import load_digits

from analytic import AnalyticLinear, GaussianKernelBuffer, RandomBuffer, feature_fusion

from .helpers import joint_ridge, rel_err


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y


@pytest.mark.parametrize("solver", ["gram", "rls"])
def test_partial_fit_in_pieces_equals_fit_and_joint_ridge(digits, solver):
    x, y = digits
    buf = RandomBuffer(64, 256, "relu", seed=0)
    parts = np.array_split(np.random.default_rng(0).permutation(len(y)), 5)
    est = AnalyticLinear(1e-1, buffer=buf, solver=solver)
    for p in parts:
        est.partial_fit(x[p], y[p])
    ref = joint_ridge(np.asarray(buf(x)), y, 1e-1)
    assert rel_err(est.coef_, ref) < 1e-8
    assert est.score(x, y) > 0.95                        # a 256-wide ReLU buffer separates digits (train acc)


def test_gram_and_rls_solvers_agree(digits):
    x, y = digits
    a = AnalyticLinear(0.5, solver="gram").fit(x, y)
    b = AnalyticLinear(0.5, solver="rls").fit(x, y)
    assert rel_err(a.coef_, b.coef_) < 1e-9
    assert np.array_equal(a.predict(x), b.predict(x))


def test_buffer_is_seeded_and_activations_behave():
    a, b, c = RandomBuffer(8, 16, seed=1), RandomBuffer(8, 16, seed=1), RandomBuffer(8, 16, seed=2)
    assert np.array_equal(a.weight, b.weight) and not np.array_equal(a.weight, c.weight)
    x = np.random.default_rng(0).standard_normal((5, 8))
    z = x @ np.asarray(a.weight)
    np.testing.assert_allclose(a(x), np.maximum(z, 0), rtol=1e-12)
    np.testing.assert_allclose(RandomBuffer(8, 16, "tanh", seed=1)(x), np.tanh(z), rtol=1e-12)
    np.testing.assert_allclose(RandomBuffer(8, 16, "sigmoid", seed=1)(x), 1 / (1 + np.exp(-z)), rtol=1e-12)
    np.testing.assert_allclose(RandomBuffer(8, 16, "identity", seed=1)(x), z, rtol=1e-12)
    tl = RandomBuffer(100, 50, init="torch_linear", bias=True, seed=0)
    assert float(np.abs(tl.weight).max()) <= 0.1 and tl.bias.shape == (50,)


def test_gaussian_kernel_buffer_matches_direct_formula():
    rng = np.random.default_rng(1)
    x, centers = rng.standard_normal((7, 3)), rng.standard_normal((4, 3))
    k = GaussianKernelBuffer(centers, 0.8)(x)
    ref = np.exp(-((x[:, None, :] - centers[None]) ** 2).sum(-1) / (2 * 0.64))
    np.testing.assert_allclose(k, ref, rtol=1e-12)


def test_feature_fusion_matches_numpy_reference():
    rng = np.random.default_rng(2)
    cls, proj = rng.standard_normal((5, 12, 16)), rng.standard_normal((16, 10))
    scale, bias = rng.standard_normal(16), rng.standard_normal(16)
    h = cls.mean(1)
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-6) * scale + bias
    np.testing.assert_allclose(feature_fusion(cls, proj, scale, bias), 1 / (1 + np.exp(-h @ proj)), rtol=1e-10)


def test_estimator_save_load_roundtrip(tmp_path, digits):
    x, y = digits
    est = AnalyticLinear(0.2, buffer=RandomBuffer(64, 32, seed=4), solver="rls").fit(x[:500], y[:500])
    est.save(tmp_path / "est")
    back = AnalyticLinear.load(tmp_path / "est")
    back.partial_fit(x[500:], y[500:])
    est.partial_fit(x[500:], y[500:])
    assert np.array_equal(np.asarray(back.coef_), np.asarray(est.coef_))
