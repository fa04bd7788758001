"""Fed3R (federated/fed3r.py): any partition gives the centralized ridge on the mapped features; the RFF map
approximates the Gaussian kernel and is deterministic for a seed; forged uploads are screened.

Exactness tolerance: 1e-8 relative (max-abs error / max-abs reference) in float64; the mapped systems have ≤ 65
unknowns, λ = 1 and condition numbers < 1e3, so rounding is ≤ 1e-12 and 1e-8 still catches a missing λ or bias
column (≥ 1e-4). Kernel tolerance: with D = 20000 cosines each kernel estimate has standard deviation
≤ 1/√D ≈ 0.007, so 0.03 over 45 pairs is a > 4σ bound; a wrong bandwidth (σ vs √2σ) errs by > 0.1 on these pairs.
"""

from __future__ import annotations

import numpy as np
import pytest

from federated import fed3r, partition
from federated.messages import AFLUpload

N, D, C, LAM = 2000, 6, 5, 1.0
TOL = 1e-8


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, C, N)
    x = rng.standard_normal((C, D))[y] + rng.standard_normal((N, D))
    return x, y


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def centralized(phi, y):
    """Independent float64 reference: (ΦᵀΦ + λI)⁻¹ΦᵀY on the pooled mapped rows."""
    return np.linalg.solve(phi.T @ phi + LAM * np.eye(phi.shape[1]), phi.T @ np.eye(C)[y])


def numpy_rff(rff, x):
    omega, beta = np.asarray(rff.buffer.weight), np.asarray(rff.buffer.bias)
    return np.sqrt(2.0 / omega.shape[1]) * np.cos(x @ omega + beta)


PARTS = {
    "iid": lambda y, k: partition.iid(y, k, seed=1),
    "dir0.1": lambda y, k: partition.dirichlet(y, k, 0.1, seed=1),
    "shards": lambda y, k: partition.shards(y, k, 2, seed=1),
}


@pytest.mark.parametrize("rff_d", [None, 64])
@pytest.mark.parametrize("scheme,clients", [("iid", 1), ("iid", 10), ("dir0.1", 50), ("shards", 20)])
def test_any_partition_equals_centralized_ridge(data, scheme, clients, rff_d):
    x, y = data
    rff = None if rff_d is None else fed3r.rff_init(D, rff_d, sigma=2.0, seed=3)
    psi = x if rff is None else numpy_rff(rff, x)
    want = centralized(np.hstack([psi, np.ones((N, 1))]), y)
    parts = PARTS[scheme](y, clients)
    ups = [fed3r.fed3r_client_stats(x[p], y[p], C, client_id=i, rff=rff) for i, p in enumerate(parts)]
    got = fed3r.fed3r_server(ups, dim=fed3r.mapped_dim(D, rff), classes=C, lam=LAM)
    assert got.excluded == []
    assert rel(got.weight, want) <= TOL
    # Order invariance: the reversed client order gives the same classifier.
    again = fed3r.fed3r_server(ups[::-1], dim=fed3r.mapped_dim(D, rff), classes=C, lam=LAM)
    assert rel(again.weight, want) <= TOL


def test_class_equals_functional_and_normalization(data):
    x, y = data
    parts = partition.dirichlet(y, 8, 0.5, seed=0)
    model = fed3r.Fed3R(C, lam=LAM, rff_features=32, sigma=2.0, seed=5).fit([(x[p], y[p]) for p in parts])
    rff = fed3r.rff_init(D, 32, 2.0, seed=5)
    want = centralized(np.hstack([numpy_rff(rff, x), np.ones((N, 1))]), y)
    want = want / np.linalg.norm(want[:-1], axis=0, keepdims=True)  # per-class norm of the feature rows
    assert rel(model.weight, want) <= TOL
    np.testing.assert_allclose(np.linalg.norm(np.asarray(model.weight)[:-1], axis=0), 1.0, rtol=1e-12)
    scores = np.hstack([numpy_rff(rff, x[:50]), np.ones((50, 1))]) @ want
    np.testing.assert_array_equal(np.asarray(model.predict(x[:50])), scores.argmax(1))


def test_rff_approximates_gaussian_kernel():
    rng = np.random.default_rng(7)
    sigma = 1.5
    pts = rng.standard_normal((10, 5)) * 0.8
    rff = fed3r.rff_init(5, 20000, sigma=sigma, seed=0)
    phi = np.asarray(fed3r.rff_features(rff, pts))
    approx = phi @ phi.T
    sq = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    exact = np.exp(-sq / (2 * sigma**2))
    iu = np.triu_indices(10, 1)
    assert np.abs(approx - exact)[iu].max() < 0.03
    assert np.abs(np.diag(approx) - 1.0).max() < 0.03
    wrong = np.exp(-sq / (4 * sigma**2))  # the bandwidth off by √2: must be distinguishable
    assert np.abs(approx - wrong)[iu].max() > 0.05


def test_rff_deterministic_for_seed():
    a, b, c = (fed3r.rff_init(4, 128, 1.0, seed=s) for s in (11, 11, 12))
    np.testing.assert_array_equal(np.asarray(a.buffer.weight), np.asarray(b.buffer.weight))
    np.testing.assert_array_equal(np.asarray(a.buffer.bias), np.asarray(b.buffer.bias))
    assert not np.allclose(np.asarray(a.buffer.weight), np.asarray(c.buffer.weight))


def test_forged_uploads_screened_state_unchanged(data):
    x, y = data
    dim = fed3r.mapped_dim(D)
    ups = [fed3r.fed3r_client_stats(x[p], y[p], C, client_id=i) for i, p in enumerate(partition.iid(y, 3, seed=0))]
    first = fed3r.fed3r_server(ups[:2], dim=dim, classes=C, lam=LAM)
    forged = [AFLUpload(20, np.eye(dim + 3), np.zeros((dim + 3, C)), 4, 1.0),
              AFLUpload(21, np.full((dim, dim), np.nan), np.zeros((dim, C)), 4, 1.0)]
    with pytest.warns(Warning):
        bad = fed3r.fed3r_server(forged, dim=dim, classes=C, lam=LAM, state=first.state)
    assert len(bad.excluded) == 2 and bad.state is first.state
    with pytest.warns(Warning):
        done = fed3r.fed3r_server([forged[0], ups[2], forged[1]], dim=dim, classes=C, lam=LAM, state=first.state)
    assert rel(done.weight, centralized(np.hstack([x, np.ones((N, 1))]), y)) <= TOL


def test_bad_inputs_rejected(data):
    x, y = data
    with pytest.raises(ValueError, match="sigma"):
        fed3r.rff_init(D, 10, sigma=0.0)
    with pytest.raises(ValueError, match="features"):
        fed3r.rff_init(D, 0, sigma=1.0)
    rff = fed3r.rff_init(D, 16, 1.0)
    with pytest.raises(ValueError, match="x"):
        fed3r.rff_features(rff, x[:, :3])
    with pytest.raises(ValueError, match="x"):
        fed3r.fed3r_client_stats(np.full((4, D), np.nan), y[:4], C)
    with pytest.raises(ValueError, match="y"):
        fed3r.fed3r_client_stats(x[:4], np.full(4, C), C)
    with pytest.raises(ValueError, match="lam"):
        fed3r.fed3r_server([], dim=D + 1, classes=C, lam=-1.0)
    model = fed3r.Fed3R(C).fit([(x[:100], y[:100])])
    before = np.asarray(model.weight).copy()
    with pytest.raises(ValueError):
        model.fit([(x[:100], y[:100]), (np.full((5, D), np.inf), y[:5])])
    np.testing.assert_array_equal(np.asarray(model.weight), before)


def test_rff_map_checkpoint_roundtrip(tmp_path):
    from analytic.checkpoint import load_state, save_state

    rff = fed3r.rff_init(D, 16, 1.0, seed=2)
    save_state(tmp_path / "r", rff)
    back, _ = load_state(tmp_path / "r", like=rff)
    x = np.random.default_rng(0).standard_normal((4, D))
    np.testing.assert_array_equal(np.asarray(fed3r.rff_features(back, x)), np.asarray(fed3r.rff_features(rff, x)))
