"""γ selection: the one-eigh ridge path against independent per-γ solves, and the hold-out rule."""

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from analytic import RandomBuffer
from analytic.selection import ridge_path, select_gamma

from .helpers import joint_ridge, rel_err


def _clusters(seed: int, n: int = 400, d: int = 20, classes: int = 5, spread: float = 1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    return rng.standard_normal((classes, d))[y] * spread + rng.standard_normal((n, d)), y


def test_ridge_path_equals_a_separate_solve_for_every_gamma():
    # Columns scaled over three decades: Gram condition number ≈ 1e6, so 1e-9 relative leaves float64 rounding
    # (≈ κ·eps ≈ 2e-10) a margin while any wrong eigenvalue shift would miss it by orders of magnitude.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 40)) * np.logspace(0, -3, 40)
    y = np.eye(6)[rng.integers(0, 6, 300)]
    gammas = [1e-3, 0.1, 1.0, 50.0]
    path = np.asarray(ridge_path(x.T @ x, x.T @ y, gammas))
    assert path.shape == (4, 40, 6)
    for gamma, w in zip(gammas, path):
        assert rel_err(w, joint_ridge(x, y, gamma)) < 1e-9


@pytest.mark.parametrize("bad, message", [([], "at least one"), ([1.0, 0.0], "gammas"), ([-1.0], "gammas")])
def test_ridge_path_refuses_bad_gammas(bad, message):
    x = np.eye(3)
    with pytest.raises(ValueError, match=message):
        ridge_path(x, x, bad)


def test_ridge_path_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="xtx"):
        ridge_path(np.ones((3, 4)), np.ones((3, 2)), [1.0])
    with pytest.raises(ValueError, match="xty"):
        ridge_path(np.eye(3), np.ones((4, 2)), [1.0])


def test_select_gamma_scores_equal_an_independent_hold_out_evaluation():
    x, y = _clusters(1)
    gammas = [0.01, 1.0, 100.0, 1e4]
    result = select_gamma(x, y, gammas=gammas, buffer_sizes=(None, 64), seed=3)
    x_fit, x_val, y_fit, y_val = train_test_split(x, y, test_size=0.2, random_state=3, stratify=y)
    assert (result.train_rows, result.validation_rows) == (y_fit.size, y_val.size)
    buffer = np.asarray(RandomBuffer(20, 64, "relu", 0, "normal", dtype=np.float64).weight)
    expected = []
    for size in (None, 64):
        h_fit, h_val = (x_fit, x_val) if size is None else (np.maximum(x_fit @ buffer, 0),
                                                            np.maximum(x_val @ buffer, 0))
        for gamma in gammas:
            pred = np.argmax(h_val @ joint_ridge(h_fit, y_fit, gamma, classes=5), axis=1)
            expected.append((size, gamma, float(np.mean(pred == y_val))))
    assert [row[:2] for row in result.table] == [row[:2] for row in expected]
    np.testing.assert_allclose([row[2] for row in result.table], [row[2] for row in expected], atol=1e-12)
    best = max(row[2] for row in expected)
    assert max(row[2] for row in result.table) == best
    chosen = [row for row in result.table if (row[0], row[1]) == (result.buffer_size, result.gamma)]
    assert chosen[0][2] == best


def test_select_gamma_prefers_the_larger_gamma_on_ties_and_maps_arbitrary_labels():
    # Well separated clusters: every γ up to 100 classifies the hold-out perfectly, so the tie rule decides.
    x, y = _clusters(2, spread=20.0)
    result = select_gamma(x, np.asarray(["abcde"[k] for k in y]), gammas=[0.1, 1.0, 100.0])
    assert all(acc == 1.0 for _, _, acc in result.table)
    assert result.gamma == 100.0 and result.buffer_size is None


def test_select_gamma_refuses_bad_arguments():
    x, y = _clusters(3)
    with pytest.raises(ValueError, match="validation_fraction"):
        select_gamma(x, y, validation_fraction=1.0)
    with pytest.raises(ValueError, match="buffer_sizes"):
        select_gamma(x, y, buffer_sizes=())
    with pytest.raises(ValueError, match="x must be"):
        select_gamma(x, y[:-1])


def test_select_gamma_keeps_single_row_classes_on_the_fitting_side():
    x, y = _clusters(4, n=200)
    y = y.copy()
    y[0] = 7  # one row of a class seen once, as in the first task of a blurry online stream
    result = select_gamma(x, y, gammas=[1.0])
    assert result.train_rows + result.validation_rows == 200
    assert result.validation_rows == round(0.2 * 199)
