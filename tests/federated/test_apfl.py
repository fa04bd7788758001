"""APFL (federated/apfl.py): the primary stream is AFL is pooled ridge; each refinement stream is the ridge it
claims on its client's rows; heterogeneity invariance; forged uploads are screened.

Tolerance: 1e-8 relative (max-abs error / max-abs reference) in float64. Every system below is an 8- or 9-unknown
ridge with γ ≥ 1 on standard-normal rows (condition number < 10), so rounding alone is ~1e-14; 1e-8 leaves room for
summation order over 100 clients yet catches a wrong formula (a missing γ or a residual against the wrong weight
moves the weights by ≥ 1e-3).
"""

from __future__ import annotations

import numpy as np
import pytest

from analytic import RandomBuffer
from federated import afl, apfl, partition
from federated.messages import AFLUpload

N, D, C, GAMMA_G, GAMMA_P = 3000, 8, 4, 2.0, 3.0
TOL = 1e-8
PARTITIONS = {
    "iid": lambda y, k: partition.iid(y, k, seed=1),
    "dir0.1": lambda y, k: partition.dirichlet(y, k, 0.1, seed=1),
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((C, D))
    y = rng.integers(0, C, N)
    x = centers[y] + rng.standard_normal((N, D))
    t = np.eye(C)[y]
    pooled = np.linalg.solve(x.T @ x + GAMMA_G * np.eye(D), x.T @ t)  # independent float64 reference
    return x, y, pooled


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def uploads(x, y, parts):
    return [apfl.apfl_client_stats(x[p], y[p], C, client_id=i) for i, p in enumerate(parts)]


@pytest.mark.parametrize("clients", [1, 10, 100])
@pytest.mark.parametrize("scheme", sorted(PARTITIONS))
def test_global_stream_is_afl_is_pooled_ridge(data, scheme, clients):
    x, y, pooled = data
    parts = PARTITIONS[scheme](y, clients)
    ups = uploads(x, y, parts)
    got = apfl.apfl_server(ups, dim=D, classes=C, global_gamma=GAMMA_G)
    want = afl.aggregate(ups, dim=D, classes=C, global_gamma=GAMMA_G)
    assert got.excluded == []
    assert rel(got.weight, want.weight) <= TOL
    assert rel(got.weight, pooled) <= TOL


def numpy_personal(w_g, x, y, gamma, buffer=None, bias=True):
    """Eq. (2) in plain NumPy: ridge of the residual Y − X W_g on [ψ(x), 1]."""
    psi = x if buffer is None else np.maximum(x @ np.asarray(buffer.weight), 0.0)  # relu buffer without bias
    phi = np.hstack([psi, np.ones((len(x), 1))]) if bias else psi
    r = np.eye(C)[y] - x @ w_g
    return np.linalg.solve(phi.T @ phi + gamma * np.eye(phi.shape[1]), phi.T @ r), phi


@pytest.mark.parametrize("kind", ["linear+bias", "linear", "buffer+bias"])
def test_personal_stream_is_the_claimed_ridge(data, kind):
    x, y, pooled = data
    parts = partition.dirichlet(y, 10, 0.1, min_size=20, seed=2)
    buffer = RandomBuffer(D, 16, "relu", seed=3) if kind.startswith("buffer") else None
    bias = kind.endswith("bias")
    for k in (0, 4, 9):
        xk, yk = x[parts[k]], y[parts[k]]
        stream = apfl.personalize(pooled, xk, yk, gamma=GAMMA_P, alpha=0.5, buffer=buffer, bias=bias)
        want, phi = numpy_personal(pooled, xk, yk, GAMMA_P, buffer, bias)
        assert rel(stream.weight, want) <= TOL
        # Eq. (3) on held-in rows, against the same NumPy pieces.
        assert rel(apfl.logits(pooled, stream, xk), xk @ pooled + 0.5 * phi @ want) <= TOL


def test_linear_stream_is_ridge_shrunk_toward_global(data):
    """Docstring identity: W_g + V_k = (X_kᵀX_k + γI)⁻¹(X_kᵀY_k + γ W_g) without bias, α = 1."""
    x, y, pooled = data
    xk, yk = x[:200], y[:200]
    stream = apfl.personalize(pooled, xk, yk, gamma=GAMMA_P, bias=False)
    shrunk = np.linalg.solve(xk.T @ xk + GAMMA_P * np.eye(D), xk.T @ np.eye(C)[yk] + GAMMA_P * pooled)
    assert rel(pooled + np.asarray(stream.weight), shrunk) <= TOL


def test_heterogeneity_invariance(data):
    """Client 0's personalized model is the same whatever the split of everybody else's rows."""
    x, y, _ = data
    own = np.arange(150)
    rest = np.arange(150, N)
    streams, weights = [], []
    for split in (lambda r: partition.iid(y[r], 5, seed=0), lambda r: partition.dirichlet(y[r], 40, 0.1, seed=4)):
        parts = [own] + [rest[p] for p in split(rest)]
        result = apfl.apfl_server(uploads(x, y, parts), dim=D, classes=C, global_gamma=GAMMA_G)
        weights.append(result.weight)
        streams.append(apfl.personalize(result.weight, x[own], y[own], gamma=GAMMA_P))
    assert rel(weights[0], weights[1]) <= TOL
    assert rel(streams[0].weight, streams[1].weight) <= TOL


def test_forged_uploads_are_screened_and_state_unchanged(data):
    x, y, pooled = data
    parts = partition.iid(y, 4, seed=0)
    ups = uploads(x, y, parts)
    first = apfl.apfl_server(ups[:2], dim=D, classes=C, global_gamma=GAMMA_G)
    wrong_dim = AFLUpload(10, np.eye(D + 1), np.zeros((D + 1, C)), 5, 1.0)
    nan = AFLUpload(11, np.full((D, D), np.nan), np.zeros((D, C)), 5, 1.0)
    with pytest.warns(Warning):
        bad = apfl.apfl_server([wrong_dim, nan], state=first.state, global_gamma=GAMMA_G)
    assert sorted(str(r.client_id) for r in bad.excluded) == ["10", "11"]
    assert bad.state is first.state  # nothing accepted: the state object is returned untouched
    with pytest.warns(Warning):
        mixed = apfl.apfl_server([wrong_dim, *ups[2:], nan], state=first.state, global_gamma=GAMMA_G)
    assert len(mixed.excluded) == 2
    assert rel(mixed.weight, pooled) <= TOL  # the honest uploads merge exactly as without the forged ones


def test_bad_inputs_rejected(data):
    x, y, pooled = data
    with pytest.raises(ValueError, match="x"):
        apfl.personalize(pooled, x[:10, :5], y[:10])
    with pytest.raises(ValueError, match="x"):
        apfl.personalize(pooled, np.full((10, D), np.nan), y[:10])
    with pytest.raises(ValueError, match="y"):
        apfl.personalize(pooled, x[:10], np.full(10, C))
    with pytest.raises(ValueError, match="gamma"):
        apfl.personalize(pooled, x[:10], y[:10], gamma=0.0)
    with pytest.raises(ValueError, match="alpha"):
        apfl.personalize(pooled, x[:10], y[:10], alpha=-1.0)
    with pytest.raises(ValueError, match="global_weight"):
        apfl.personalize(np.full((D, C), np.nan), x[:10], y[:10])
    with pytest.raises(ValueError, match="buffer"):
        apfl.personalize(pooled, x[:10], y[:10], buffer=RandomBuffer(D + 1, 4))
    stream = apfl.personalize(pooled, x[:50], y[:50])
    with pytest.raises(ValueError, match="x"):
        apfl.predict(pooled, stream, x[:3, :5])
    with pytest.raises(TypeError, match="personal"):
        apfl.predict(pooled, "stream", x[:3])


def test_class_fit_failure_leaves_object_unchanged(data):
    x, y, _ = data
    model = apfl.APFL(C, global_gamma=GAMMA_G, gamma=GAMMA_P).fit([(x[:300], y[:300]), (x[300:600], y[300:600])])
    before = np.asarray(model.global_weight).copy()
    with pytest.raises(ValueError):
        model.fit([(x[:100], y[:100]), (np.full((10, D), np.inf), y[:10])])
    np.testing.assert_array_equal(np.asarray(model.global_weight), before)
    pred = np.asarray(model.predict(0, x[:300]))
    assert pred.shape == (300,) and (pred == y[:300]).mean() > 1.0 / C


def test_personal_stream_checkpoint_roundtrip(data, tmp_path):
    from analytic.checkpoint import load_state, save_state

    x, y, pooled = data
    stream = apfl.personalize(pooled, x[:80], y[:80], gamma=GAMMA_P, buffer=RandomBuffer(D, 8, seed=1))
    save_state(tmp_path / "s", stream)
    back, _ = load_state(tmp_path / "s", like=stream)
    assert isinstance(back, apfl.PersonalStream)
    np.testing.assert_array_equal(np.asarray(apfl.logits(pooled, back, x[:9])),
                                  np.asarray(apfl.logits(pooled, stream, x[:9])))
