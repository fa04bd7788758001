"""AFL: the sum-form and literal pairwise servers against pooled least squares (float64).

Tolerance: 1e-8 relative (max-abs error / max-abs reference). Both sides solve the same 8x8 well-conditioned
system (condition number ~2, n=3000 standard-normal rows), so float64 rounding alone is ~1e-14; 1e-8 leaves room
for the summation order over 1000 clients without hiding a wrong formula (a missing or extra γ moves W by ~1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest

from federated import afl, partition
from federated.messages import AFLUpload

N, D, C, GAMMA = 3000, 8, 4, 1.0
PARTITIONS = {
    "iid": lambda y, k: partition.iid(y, k, seed=1),
    "dir0.01": lambda y, k: partition.dirichlet(y, k, 0.01, seed=1),
    "dir0.1": lambda y, k: partition.dirichlet(y, k, 0.1, seed=1),
    "dir1": lambda y, k: partition.dirichlet(y, k, 1.0, seed=1),
    "shards": lambda y, k: partition.shards(y, k, 2, seed=1),
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D))
    y = rng.integers(0, C, N)
    # Pooled least squares by numpy's SVD-based lstsq: independent of the Cholesky path under test.
    reference = np.linalg.lstsq(x, np.eye(C)[y], rcond=None)[0]
    return x, y, reference


def uploads(x, y, parts, dtype=None):
    return [afl.client_stats(x[p], y[p], GAMMA, C, client_id=i, dtype=dtype) for i, p in enumerate(parts)]


def numpy_uploads(x, y, parts):
    """Client uploads computed with plain numpy (cheap for 1000 clients; ``client_stats`` is checked against this
    in ``test_client_stats_equals_numpy_gram``), so the grid tests exercise the server alone."""
    t = np.eye(C)[y]
    return [AFLUpload(i, x[p].T @ x[p], x[p].T @ t[p], len(p), GAMMA) for i, p in enumerate(parts)]


def test_client_stats_equals_numpy_gram(data):
    x, y, _ = data
    parts = partition.iid(y, 12, seed=9)  # equal sizes: one compiled program
    for got, want in zip(uploads(x, y, parts), numpy_uploads(x, y, parts)):
        assert (got.client_id, got.count, got.gamma) == (want.client_id, want.count, want.gamma)
        np.testing.assert_allclose(got.xtx, want.xtx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got.xty, want.xty, rtol=1e-12, atol=1e-12)


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.mark.parametrize("scheme", sorted(PARTITIONS))
def test_afl_with_ri_equals_pooled_least_squares_for_any_partition_and_client_count(data, scheme):
    x, y, reference = data
    for clients in (1, 10, 100, 1000):
        parts = PARTITIONS[scheme](y, clients)
        result = afl.aggregate(numpy_uploads(x, y, parts), dim=D, classes=C)
        assert result.excluded == []
        assert int(result.state.stats.count) == N and result.state.count == N
        assert rel(result.weight, reference) < 1e-8, (scheme, clients)


def test_sum_form_equals_literal_pairwise_law_with_and_without_ri(data):
    x, y, _ = data
    messages = uploads(x, y, partition.dirichlet(y, 30, 0.1, seed=2))
    for ri in (True, False):
        fast = afl.aggregate(messages, dim=D, classes=C, remove_regularization=ri)
        literal = afl.aggregate_pairwise(messages, dim=D, classes=C, remove_regularization=ri)
        assert rel(literal.weight, fast.weight) < 1e-10, ri
    # The pairwise state carries the same statistics (C_agg W_agg = ΣXᵀY).
    assert rel(literal.state.stats.xty, fast.state.stats.xty) < 1e-10
    assert literal.state.gamma_sum == pytest.approx(30 * GAMMA)


def test_without_ri_the_error_grows_with_the_number_of_clients(data):
    x, y, reference = data
    errors = [rel(afl.aggregate(numpy_uploads(x, y, partition.iid(y, k, seed=3)), dim=D, remove_regularization=False)
                  .weight, reference) for k in (1, 10, 100, 1000)]
    assert all(a < b for a, b in zip(errors, errors[1:])), errors
    # Kγ = 1000 against XᵀX ≈ 3000·I shrinks W by ~25%: the collapse the paper reports.
    assert errors[-1] > 0.1


def test_without_ri_the_raw_aa_law_is_ridge_with_k_gamma(data):
    x, y, _ = data
    parts = partition.iid(y, 7, seed=4)
    got = afl.aggregate(uploads(x, y, parts), dim=D, remove_regularization=False).weight
    want = np.linalg.solve(x.T @ x + 7 * GAMMA * np.eye(D), x.T @ np.eye(C)[y])
    assert rel(got, want) < 1e-10


def test_global_gamma_is_readded_after_ri(data):
    x, y, _ = data
    got = afl.aggregate(uploads(x, y, partition.iid(y, 5, seed=5)), dim=D, global_gamma=3.0).weight
    want = np.linalg.solve(x.T @ x + 3.0 * np.eye(D), x.T @ np.eye(C)[y])
    assert rel(got, want) < 1e-10


def test_late_waves_in_any_order_merge_exactly(data):
    x, y, reference = data
    messages = uploads(x, y, partition.dirichlet(y, 40, 0.1, seed=6))
    order = np.random.default_rng(0).permutation(len(messages))
    waves = np.array_split(order, 3)
    result = afl.aggregate([messages[i] for i in waves[0]], dim=D, classes=C)
    for wave in waves[1:]:
        result = afl.aggregate([messages[i] for i in wave], state=result.state)
    assert len(result.state.clients) == 40
    assert rel(result.weight, reference) < 1e-10
    # A client reporting again in a later wave is refused: its rows would count twice.
    with pytest.warns(UserWarning, match="second upload"):
        again = afl.aggregate([messages[order[0]]], state=result.state)
    assert [r.client_id for r in again.excluded] == [repr(messages[order[0]].client_id)]
    assert again.state == result.state
    np.testing.assert_array_equal(np.asarray(again.weight), np.asarray(result.weight))


def test_remove_regularization_literal_formula(data):
    x, y, reference = data
    c_agg = x.T @ x + 12.5 * np.eye(D)
    w_agg = np.linalg.solve(c_agg, x.T @ np.eye(C)[y])
    assert rel(afl.remove_regularization(w_agg, c_agg, 12.5), reference) < 1e-10


def test_float32_client_statistics_stay_close_to_float64(data):
    x, y, reference = data
    messages = uploads(x, y, partition.iid(y, 10, seed=7), dtype=np.float32)
    assert messages[0].xtx.dtype == np.float32
    # float32 Grams carry ~1e-7 relative error per entry; the authors report 6e-7 for their setting.
    assert rel(afl.aggregate(messages, dim=D).weight, reference) < 1e-4


def test_empty_client_uploads_zeros_and_is_merged(data):
    x, y, reference = data
    parts = [np.arange(N), np.zeros(0, np.int64)]
    messages = uploads(x, y, parts)
    assert messages[1].count == 0 and not messages[1].xtx.any()
    assert rel(afl.aggregate(messages, dim=D).weight, reference) < 1e-10


def test_client_stats_rejects_bad_input_by_name(data):
    x, y, _ = data
    with pytest.raises(ValueError, match="gamma"):
        afl.client_stats(x, y, 0.0, C)
    with pytest.raises(ValueError, match="class id 4"):
        afl.client_stats(x, y + 1, GAMMA, C)
    bad = x[:10].copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        afl.client_stats(bad, y[:10], GAMMA, C, client_id=3)
    with pytest.raises(TypeError, match="floating"):
        afl.client_stats(x[:10].astype(np.int32), y[:10], GAMMA, C)
    with pytest.raises(ValueError, match="labels but x has"):
        afl.client_stats(x[:10], y[:9], GAMMA, C)


def test_singular_pooled_gram_without_global_gamma_is_a_clear_error():
    x = np.zeros((20, 3))
    x[:, 0] = 1.0
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match="global_gamma"):
        afl.aggregate([afl.client_stats(x, y, GAMMA, 2)], dim=3)
    weight = afl.aggregate([afl.client_stats(x, y, GAMMA, 2)], dim=3, global_gamma=1.0).weight
    assert np.isfinite(np.asarray(weight)).all()


def test_communication_counts_one_round_of_gram_up_and_weight_down(data):
    x, y, _ = data
    messages = uploads(x, y, partition.iid(y, 4, seed=8))
    comm = afl.communication(messages, np.zeros((D, C)))
    assert comm["rounds"] == 1 and comm["clients"] == 4
    assert comm["up_bytes_per_client"] == 8 * (D * D + D * C) + 3 * 8
    assert comm["down_bytes_per_client"] == 8 * D * C + 2 * 8
    assert isinstance(messages[0], AFLUpload)
