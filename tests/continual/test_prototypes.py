"""RanPAC, NCM and FeCAM against independent float64 NumPy computations; bad input raises, names the argument
and leaves the learner unchanged; checkpoints round-trip bit for bit."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from analytic import RandomBuffer
from continual.prototypes import NCM, FeCAM, RanPAC, fecam_covariances, select_ridge


def _blobs(classes: int, per_class: int, dim: int = 10, seed: int = 0, positive: bool = False):
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.standard_normal((classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    scales = rng.uniform(0.5, 2.0, (classes, dim))           # heterogeneous class covariances (FeCAM's premise)
    x = centres[y] + scales[y] * rng.standard_normal((y.size, dim))
    if positive:
        x = np.abs(x)
    order = rng.permutation(y.size)
    return x[order], y[order]


X, Y = _blobs(4, 30)
SESSIONS = [np.flatnonzero(np.isin(Y, c)) for c in ([0, 1], [2], [3])]   # class-incremental sessions


def _features(model: RanPAC, x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ np.asarray(model.state.buffer.weight), 0.0)


def _numpy_losses(h: np.ndarray, t: np.ndarray, ridges, holdout: float = 0.2, dual: bool = False) -> np.ndarray:
    fit = int(h.shape[0] * (1 - holdout))
    hf, tf, hv, tv = h[:fit], t[:fit], h[fit:], t[fit:]
    out = []
    for lam in ridges:
        if dual:
            w = hf.T @ np.linalg.solve(hf @ hf.T + lam * np.eye(fit), tf)
        else:
            w = np.linalg.solve(hf.T @ hf + lam * np.eye(h.shape[1]), hf.T @ tf)
        out.append(np.mean((hv @ w - tv) ** 2))
    return np.asarray(out)


def test_ranpac_projection_is_unit_gaussian_drawn_by_the_core_buffer() -> None:
    model = RanPAC(buffer_size=64, ridge=1.0, seed=4).partial_fit(X, Y)
    weight = np.asarray(model.state.buffer.weight)
    drawn = np.asarray(RandomBuffer(10, 64, "relu", 4, "normal").weight) * np.sqrt(10)
    np.testing.assert_array_equal(weight, drawn)
    # 640 N(0, 1) draws: the sample std is within 0.1 of 1 with overwhelming probability (N(0, 1/d) would be 0.32).
    assert abs(weight.std() - 1.0) < 0.1 and abs(weight.mean()) < 0.15


def test_ranpac_phased_equals_joint_with_a_fixed_ridge() -> None:
    # Float64 accumulation of G, C over sessions vs one NumPy solve on all buffered rows: only rounding differs,
    # κ(G + λI) ≈ 1e4 here, so 1e-8 relative is a wide margin that a missing or doubled row would still break.
    model = RanPAC(buffer_size=48, ridge=0.5, seed=1)
    for idx in SESSIONS:
        model.partial_fit(X[idx], Y[idx])
    h = _features(model, X)
    expected = np.linalg.solve(h.T @ h + 0.5 * np.eye(48), h.T @ np.eye(4)[Y])
    got = np.asarray(model.coef_)
    assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) <= 1e-8
    joint = RanPAC(buffer_size=48, ridge=0.5, seed=1).fit(X, Y)
    np.testing.assert_allclose(np.asarray(joint.coef_), got, rtol=1e-8, atol=1e-12)
    logits = h @ expected
    assert np.mean(model.predict(X) == np.argmax(logits, 1)) == 1.0


@pytest.mark.parametrize("buffer_size", [16, 64])   # primal (80% of 60 rows >= M) and dual (< M) selection paths
def test_ranpac_ridge_selection_is_the_authors_rule_recomputed_in_numpy(buffer_size: int) -> None:
    model = RanPAC(buffer_size=buffer_size, seed=2)
    first, second = SESSIONS[0], np.concatenate(SESSIONS[1:])
    model.partial_fit(X[first], Y[first])
    model.partial_fit(X[second], Y[second])
    ridges = [10.0 ** k for k in range(-8, 9)]
    h2, t2 = _features(model, X[second]), np.eye(4)[Y[second]]
    chosen, losses = select_ridge(h2, t2, ridges)
    # Eigen-path losses vs explicit solves in the well-conditioned form (kernel form when M exceeds the fitting
    # rows, primal otherwise): equal to 1e-6 relative for every λ; the other form loses digits for tiny λ (its
    # system is rank-deficient), so it is compared from λ = 1e-2 on.
    dual = buffer_size > int(0.8 * second.size)
    good, other = _numpy_losses(h2, t2, ridges, dual=dual), _numpy_losses(h2, t2, ridges, dual=not dual)
    np.testing.assert_allclose(losses, good, rtol=1e-6)
    np.testing.assert_allclose(losses[6:], other[6:], rtol=1e-6)
    # The losses are flat for tiny λ, so rounding may move the argmin between near-equal λs: the chosen λ must
    # reach NumPy's minimum loss.
    assert good[ridges.index(chosen)] <= good.min() * (1 + 1e-6)
    assert model.ridge_ == chosen                      # the second session's own rows chose the final λ
    h = _features(model, X[np.concatenate([first, second])])
    t = np.eye(4)[Y[np.concatenate([first, second])]]
    expected = np.linalg.solve(h.T @ h + chosen * np.eye(buffer_size), h.T @ t)
    np.testing.assert_allclose(np.asarray(model.coef_), expected, rtol=1e-7, atol=1e-9)


def test_ranpac_selection_skips_a_session_too_small_to_split() -> None:
    assert select_ridge(np.ones((1, 3)), np.ones((1, 2))) is None
    model = RanPAC(buffer_size=16).partial_fit(X[:1], Y[:1])
    assert model.ridge_ == 1.0


def test_ncm_is_cosine_to_class_means() -> None:
    model = NCM()
    for idx in SESSIONS:
        model.partial_fit(X[idx], Y[idx])
    means = np.stack([X[Y == k].mean(0) for k in range(4)])
    expected = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ (means / np.linalg.norm(means, axis=1,
                                                                                        keepdims=True)).T
    # Sums then one division vs NumPy's mean: a few ulps.
    np.testing.assert_allclose(np.asarray(model.class_scores(X)), expected, rtol=1e-12, atol=1e-13)


def _numpy_fecam(x, y, queries, beta, g1, g2):
    xt, qt = x ** beta, queries ** beta
    scores = []
    for k in np.unique(y):
        rows = xt[y == k]
        cov = np.cov(rows.T)
        d = cov.shape[0]
        v1 = np.mean(np.diag(cov))
        v2 = cov[~np.eye(d, dtype=bool)].mean()
        cov = cov + g1 * v1 * np.eye(d) + g2 * v2 * (1 - np.eye(d))
        sd = np.sqrt(np.diag(cov))
        cov = cov / np.outer(sd, sd)
        diff = qt - rows.mean(0)
        scores.append(-np.einsum("nd,nd->n", diff, np.linalg.solve(cov, diff.T).T))
    return np.stack(scores, 1)


def test_fecam_is_shrunk_normalised_mahalanobis_for_any_split() -> None:
    x, y = _blobs(4, 30, positive=True, seed=5)
    model = FeCAM(beta=0.5, gamma1=1.0, gamma2=0.5)
    for idx in np.array_split(np.arange(y.size), 3):        # class rows spread across several batches
        model.partial_fit(x[idx], y[idx])
    expected = _numpy_fecam(x, y, x[:40], 0.5, 1.0, 0.5)
    # Σxxᵀ - nμμᵀ vs explicit centring: cancellation ≈ κ·eps·|x|²/var ≈ 1e-13; 1e-9 leaves room for the solve.
    np.testing.assert_allclose(np.asarray(model.class_scores(x[:40])), expected, rtol=1e-9, atol=1e-9)
    means, covs = fecam_covariances(model.state)
    np.testing.assert_allclose(np.diagonal(np.asarray(covs), axis1=1, axis2=2), 1.0, rtol=1e-12)
    assert model.score(x, y) > 0.7


def test_fecam_beats_ncm_on_heterogeneous_classes() -> None:
    x, y = _blobs(4, 80, seed=6)
    assert FeCAM().fit(x, y).score(x, y) >= NCM().fit(x, y).score(x, y)


@pytest.mark.parametrize("make", [lambda: RanPAC(buffer_size=16, ridge=1.0), NCM, FeCAM])
def test_never_predicts_an_unseen_class(make) -> None:
    model = make().partial_fit(X[Y != 2], Y[Y != 2])
    scores = np.asarray(model.class_scores(X))
    assert np.all(np.isneginf(scores[:, 2])) and 2 not in model.predict(X)


def _state_leaves(model) -> list[np.ndarray]:
    return [np.array(leaf) for leaf in jax.tree_util.tree_leaves(model.state)]


@pytest.mark.parametrize("make", [lambda: RanPAC(buffer_size=16), NCM, lambda: FeCAM(beta=0.5)])
def test_bad_input_raises_naming_the_argument_and_changes_nothing(make) -> None:
    x, y = np.abs(X), Y
    model = make().partial_fit(x[:60], y[:60])
    before = _state_leaves(model)
    bad_nan = x[60:70].copy()
    bad_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="x"):
        model.partial_fit(x[60:70, :5], y[60:70])
    with pytest.raises(ValueError, match="x"):
        model.partial_fit(bad_nan, y[60:70])
    with pytest.raises(ValueError, match="y"):
        model.partial_fit(x[60:70], y[60:69])
    with pytest.raises(ValueError, match="x"):
        model.predict(x[:3, :4])
    for leaf, old in zip(_state_leaves(model), before):
        np.testing.assert_array_equal(leaf, old)


@pytest.mark.parametrize("make, name", [
    (lambda: RanPAC(buffer_size=0), "buffer_size"), (lambda: RanPAC(ridge=-1.0), "ridge"),
    (lambda: RanPAC(holdout=1.0), "holdout"), (lambda: RanPAC(ridges=[]), "ridges"),
    (lambda: RanPAC(seed=-1), "seed"), (lambda: FeCAM(gamma1=0.0), "gamma1"), (lambda: FeCAM(gamma2=-1.0), "gamma2"),
    (lambda: FeCAM(beta=float("nan")), "beta"), (lambda: NCM(dtype="banana"), "dtype"),
])
def test_bad_hyper_parameters_are_refused_by_name(make, name) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        make().partial_fit(X, Y)


def test_fecam_tukey_refuses_negative_features_and_stays_unchanged() -> None:
    model = FeCAM(beta=0.5).partial_fit(np.abs(X), Y)
    before = _state_leaves(model)
    with pytest.raises(ValueError, match="x holds negative features"):
        model.partial_fit(X, Y)
    for leaf, old in zip(_state_leaves(model), before):
        np.testing.assert_array_equal(leaf, old)


@pytest.mark.parametrize("cls, kwargs", [(RanPAC, {"buffer_size": 16}), (NCM, {}), (FeCAM, {"beta": 0.5})])
def test_save_load_round_trip_is_bit_exact(tmp_path, cls, kwargs) -> None:
    x = np.abs(X)
    model = cls(**kwargs).partial_fit(x[SESSIONS[0]], Y[SESSIONS[0]])
    path = str(tmp_path / "ckpt")
    model.save(path)
    loaded = cls.load(path)
    assert loaded.get_params() == model.get_params() or cls is RanPAC
    np.testing.assert_array_equal(np.asarray(loaded.class_scores(x)), np.asarray(model.class_scores(x)))
    for m in (model, loaded):
        m.partial_fit(x[SESSIONS[1]], Y[SESSIONS[1]])
    np.testing.assert_array_equal(np.asarray(loaded.class_scores(x)), np.asarray(model.class_scores(x)))
    for a, b in zip(_state_leaves(loaded), _state_leaves(model)):
        np.testing.assert_array_equal(a, b)
