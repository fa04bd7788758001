"""Server-side screening: each kind of malformed upload is excluded with its client named; the others are used."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from federated import _probing, afl, deepafl, messages, partition
from federated.validation import PROBES, RejectedUploadWarning, check_upload, screen

D, C, GAMMA = 6, 3, 1.0


@pytest.fixture(scope="module")
def clients():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, D))
    y = rng.integers(0, C, 400)
    parts = partition.iid(y, 6, seed=0)
    ups = [afl.client_stats(x[p], y[p], GAMMA, C, client_id=i) for i, p in enumerate(parts)]
    return x, y, parts, ups


def corrupt(upload, **fields):
    return dataclasses.replace(upload, **fields)


def _nan(u):
    g = u.xtx.copy()
    g[1, 2] = np.nan
    return corrupt(u, xtx=g)


def _asymmetric(u):
    g = u.xtx.copy()
    g[0, 1] += 1.0
    return corrupt(u, xtx=g)


def _not_psd(u):
    # Symmetric, finite, positive diagonal, but one eigenvalue pushed below zero.
    lam, vec = np.linalg.eigh(u.xtx)
    lam[0] = -0.05 * lam.sum()
    return corrupt(u, xtx=(vec * lam) @ vec.T)


def _cross_entry(value):
    def make(u):
        r = u.xty.copy()
        r[1, 0] = value
        return corrupt(u, xty=r)
    return make


def _negative_diagonal(u):
    g = u.xtx.copy()
    g[3, 3] = -1.0
    return corrupt(u, xtx=g)


MALFORMED = {
    "nan": (_nan, "NaN"),
    "nan_cross": (_cross_entry(np.nan), "xty has 1 NaN/inf"),
    "inf_cross": (_cross_entry(-np.inf), "xty has 1 NaN/inf"),
    "huge_cross": (_cross_entry(1e300), "xty has entries above"),
    "negative_diagonal": (_negative_diagonal, "diagonal entry -1"),
    "asymmetric": (_asymmetric, "not symmetric"),
    "wrong_shape": (lambda u: corrupt(u, xty=np.zeros((D + 1, C))), "shape"),
    "wrong_dtype": (lambda u: corrupt(u, xtx=u.xtx.astype(np.int64)), "dtype"),
    "not_psd": (_not_psd, "positive semi-definite"),
    "negative_count": (lambda u: corrupt(u, count=-3), "count"),
    "bad_gamma": (lambda u: corrupt(u, gamma=float("inf")), "gamma"),
    "too_many_classes": (lambda u: corrupt(u, xty=np.zeros((D, C + 2))), "columns"),
}


def test_large_finite_cross_moment_within_the_bound_is_accepted(clients):
    # 1e200 squares to inf, so the dot-product shortcut of the cross-moment check overflows: the exact scan
    # must then accept it (it is below MAX_ENTRY), and 1e299 above the bound must still be refused.
    ups = clients[3]
    big = _cross_entry(1e200)(ups[0])
    assert check_upload(big, kind=messages.AFLUpload, dim=D, classes=C).xty[1, 0] == 1e200
    with pytest.raises(ValueError, match="entries above"):
        check_upload(_cross_entry(-1e299)(ups[0]), kind=messages.AFLUpload, dim=D, classes=C)


@pytest.mark.parametrize("defect", sorted(MALFORMED))
def test_malformed_upload_is_excluded_with_client_named_and_others_used(clients, defect):
    x, y, parts, ups = clients
    make_bad, reason = MALFORMED[defect]
    sent = list(ups)
    sent[2] = make_bad(ups[2])
    with pytest.warns(RejectedUploadWarning, match="client 2"):
        result = afl.aggregate(sent, dim=D, classes=C)
    assert [(r.position, r.client_id) for r in result.excluded] == [(2, "2")]
    assert "client 2" in result.excluded[0].reason and reason in result.excluded[0].reason
    others = np.concatenate([p for i, p in enumerate(parts) if i != 2])
    t = np.eye(C)[y[others]]
    want = np.linalg.solve(x[others].T @ x[others], x[others].T @ t)
    np.testing.assert_allclose(np.asarray(result.weight), want, rtol=1e-9, atol=1e-12)
    assert 2 not in result.state.clients and len(result.state.clients) == 5


def test_psd_check_by_eigvalsh_agrees_with_cholesky(clients):
    *_, ups = clients
    bad = _not_psd(ups[0])
    for psd in ("cholesky", "eigvalsh"):
        check_upload(ups[0], kind=messages.AFLUpload, dim=D, psd=psd)
        with pytest.raises(ValueError, match="client 0.*positive semi-definite"):
            check_upload(bad, kind=messages.AFLUpload, dim=D, psd=psd)
    check_upload(bad, kind=messages.AFLUpload, dim=D, psd="none")


def test_rounding_level_asymmetry_and_negative_eigenvalues_are_accepted(clients):
    *_, ups = clients
    g = ups[0].xtx.copy()
    g[0, 1] *= 1 + 1e-15
    check_upload(corrupt(ups[0], xtx=g), kind=messages.AFLUpload, dim=D)
    # A rank-deficient Gram (fewer rows than features) has eigenvalues at ±rounding level: still valid.
    x = np.random.default_rng(1).standard_normal((2, D))
    rank2 = messages.AFLUpload(9, x.T @ x, np.zeros((D, C)), 2, GAMMA)
    check_upload(rank2, kind=messages.AFLUpload, dim=D)


def test_wrong_message_type_and_duplicates_are_excluded(clients):
    *_, ups = clients
    wrong = messages.DeepAFLClassifierUpload(7, 0, ups[0].xtx, ups[0].xty, ups[0].count)
    with pytest.warns(RejectedUploadWarning):
        ok, bad = screen([ups[0], wrong, ups[0]], kind=messages.AFLUpload, dim=D)
    assert len(ok) == 1 and ok[0].client_id == 0 and ok[0].xtx is ups[0].xtx
    assert [(r.position, r.client_id) for r in bad] == [(1, "7"), (2, "0")]
    assert "AFLUpload" in bad[0].reason and "second upload" in bad[1].reason


def test_count_zero_with_nonzero_statistics_is_rejected(clients):
    *_, ups = clients
    with pytest.raises(ValueError, match="count is 0"):
        check_upload(corrupt(ups[1], count=0), kind=messages.AFLUpload, dim=D)


def test_transport_round_trip_passes_validation(clients):
    *_, ups = clients
    for u in ups:
        check_upload(messages.from_arrays(u.to_arrays()), kind=messages.AFLUpload, dim=D, classes=C)


def test_deepafl_server_drops_a_corrupt_client_for_the_rest_of_the_run():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    # The sizes of tests/federated/test_deepafl.py, so the compiled programs are shared.
    parts = partition.iid(y, 8, seed=0)
    setup = deepafl.DeepAFL(phi_dim=48, block_dim=32, layers=3).setup(64, 10)

    def faulty_wire(m):
        # Client 3's first upload arrives with a NaN: it is dropped for this and every later round.
        if isinstance(m, messages.DeepAFLClassifierUpload) and m.client_id == 3 and m.layer == 0:
            g = m.phi_gram.copy()
            g[0, 0] = np.nan
            return dataclasses.replace(m, phi_gram=g)
        return m

    server = deepafl.DeepAFLServer(setup)
    clients = [deepafl.DeepAFLClient(i, x[p], y[p], setup) for i, p in enumerate(parts)]
    with pytest.warns(RejectedUploadWarning, match="client 3"):
        model = deepafl.run_federated(clients, server, transport=faulty_wire)
    assert list(server.excluded) == [3] and "NaN" in server.excluded[3]
    assert server.comm.summary()["rounds"] == 2 * setup.layers + 1
    # The run completed with the others and equals a run in which client 3 never took part (float64, 1e-12:
    # the same sums in the same order).
    others = [deepafl.DeepAFLClient(i, x[p], y[p], setup) for i, p in enumerate(parts) if i != 3]
    want = deepafl.run_federated(others, deepafl.DeepAFLServer(setup))
    got_logits = np.asarray(deepafl.forward(model, x))
    want_logits = np.asarray(deepafl.forward(want, x))
    assert np.abs(got_logits - want_logits).max() <= 1e-12 * np.abs(want_logits).max()


# ------------------------------------------------------------------------ psd="probe" above the probe count (d > P)
DP, KP, SEED = 40, 6, 7  # d = 40 > PROBES = 8: random probes, not the exact d ≤ P path of the tests above


@pytest.fixture(scope="module")
def wide():
    rng = np.random.default_rng(3)
    # float32 transport, 10 rows per client: rank-deficient Grams (eigenvalues 0 up to rounding) must pass.
    return [afl.client_stats(rng.standard_normal((10, DP)), rng.integers(0, C, 10), GAMMA, C, client_id=i,
                             dtype=np.float32) for i in range(KP)]


def _probe_z(seed: int = SEED) -> np.ndarray:
    """The server's first probe basis for ``probe_seed=seed`` (federated._probing.probe_basis, first draw)."""
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((DP, PROBES)))[0].astype(np.float32)


def _hidden_negative_direction(u, c: float):
    """``G + c·diag(v²) − c·vvᵀ`` with ``v`` orthogonal to the server's probes (for ``probe_seed=SEED``): the
    probes see ``Zᵀ(G + c·diag(v²))Z ⪰ 0`` and pass it; the diagonal is ``G``'s; ``vᵀ(·)v = vᵀGv − c(1 − Σvᵢ⁴)``."""
    z = _probe_z().astype(np.float64)
    v = np.ones(DP) - z @ (z.T @ np.ones(DP))
    v /= np.linalg.norm(v)
    g = (u.xtx.astype(np.float64) + c * np.diag(v**2) - c * np.outer(v, v)).astype(np.float32)
    assert np.diagonal(g).min() >= 0 and np.linalg.eigvalsh(g.astype(np.float64))[0] < -0.1 * c
    return corrupt(u, xtx=g)


def _honest_run(ups):
    return afl.aggregate(ups, dim=DP, classes=C, global_gamma=1.0)


def test_probe_mode_rejects_defects_above_the_probe_count_bit_for_bit(wide):
    want = _honest_run(wide)
    inf = wide[1].xtx.copy()
    inf[3, 7] = inf[7, 3] = np.inf
    nan = wide[1].xtx.copy()
    nan[5, 2] = np.nan
    big = float(np.abs(wide[1].xtx).max())
    asym = wide[1].xtx.copy()
    asym[0, 1] += 10 * big
    defects = {"nan off-diagonal": (corrupt(wide[1], xtx=nan), "NaN/inf"),
               "inf off-diagonal": (corrupt(wide[1], xtx=inf), "NaN/inf"),
               "asymmetric": (corrupt(wide[1], xtx=asym), "not symmetric"),
               "negative diagonal": (corrupt(wide[1], xtx=-wide[1].xtx), "positive semi-definite"),
               "hidden from the probes, sum indefinite": (_hidden_negative_direction(wide[1], 200.0), "Cholesky")}
    for what, (bad, reason) in defects.items():
        for position in (0, 3, KP):
            # Placed first it claims honest client 1's id: a forgery the probes pass then holds id 1 until the
            # sum certificate fails, and the exact re-screen must give the id back to the honest upload.
            claimed = 1 if position == 0 else 99
            sent = [*wide[:position], dataclasses.replace(bad, client_id=claimed), *wide[position:]]
            with pytest.warns(RejectedUploadWarning):
                got = afl.aggregate(sent, dim=DP, classes=C, global_gamma=1.0, probe_seed=SEED)
            assert np.array_equal(np.asarray(got.weight), np.asarray(want.weight)), (what, position)
            assert got.state.clients == tuple(range(KP)), (what, position)
            assert [r.position for r in got.excluded] == [position], (what, position)
            assert reason in got.excluded[0].reason, (what, got.excluded[0].reason)


def test_the_sum_certificate_is_what_catches_a_forgery_the_probes_miss(wide):
    bad = dataclasses.replace(_hidden_negative_direction(wide[1], 200.0), client_id=99)
    # The probes alone accept it (its negative direction is orthogonal to them) ...
    ok, excluded = screen([bad], kind=messages.AFLUpload, dim=DP, probe_seed=SEED)
    assert len(ok) == 1 and excluded == []
    # ... but the wave's sum is indefinite: the server's certificate fails and the exact re-screen rejects it.
    g = sum(u.xtx.astype(np.float64) for u in [*wide, bad])
    assert np.linalg.eigvalsh(g)[0] < 0
    with pytest.warns(RejectedUploadWarning, match="Cholesky"):
        got = afl.aggregate([*wide, bad], dim=DP, classes=C, global_gamma=1.0, probe_seed=SEED)
    assert [r.position for r in got.excluded] == [KP]


def test_an_indefinite_upload_outweighed_by_the_others_and_missed_by_the_probes_is_merged(wide):
    # The documented limit of psd="probe" for d > P: the wave's sum stays PSD, so only psd="cholesky" (exact per
    # upload) rejects it.
    bad = dataclasses.replace(_hidden_negative_direction(wide[1], 1.0), client_id=99)
    sent = [*wide, bad]
    assert np.linalg.eigvalsh(sum(u.xtx.astype(np.float64) for u in sent))[0] > 0
    assert afl.aggregate(sent, dim=DP, classes=C, global_gamma=1.0, probe_seed=SEED).excluded == []
    with pytest.warns(RejectedUploadWarning, match="positive semi-definite"):
        exact = afl.aggregate(sent, dim=DP, classes=C, global_gamma=1.0, psd="cholesky")
    assert [r.position for r in exact.excluded] == [KP]
    assert np.array_equal(np.asarray(exact.weight), np.asarray(_honest_run(wide).weight))


def test_probes_alone_reject_a_gross_forgery_and_never_an_honest_upload(wide):
    # αI − α·11ᵀ: zero diagonal (it passes the diagonal check), eigenvalue −α(d − 1) along 1, trace 0. Any
    # 8-dimensional random subspace holds a good part of 1, so every probe basis sees a negative Ritz value.
    alpha = float(np.mean(np.diagonal(wide[2].xtx)))
    bad = corrupt(wide[2], xtx=(alpha * (np.eye(DP) - np.ones((DP, DP)))).astype(np.float32))
    for seed in range(20):
        ok, excluded = screen([*wide, bad], kind=messages.AFLUpload, dim=DP, probe_seed=seed, warn=False)
        assert [u.client_id for u in ok] == list(range(KP)), seed
        assert [r.position for r in excluded] == [KP] and "Ritz value" in excluded[0].reason, seed


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_probe_product_reads_the_gram_once_for_product_diagonal_and_sum(dtype):
    # Blocks of rows (several per Gram at d = 200 with 128 KiB blocks in float64): the sink receives exactly
    # sink + G (the same elementwise additions), the diagonal is G's, and T equals ZᵀGZ up to summation order.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 200))
    g = (x.T @ x).astype(dtype)
    z = np.linalg.qr(rng.standard_normal((200, 8)))[0].astype(dtype)
    base = rng.standard_normal((200, 200))
    sink = base.copy()
    t, diag = _probing.probe_product(g, z, sink)
    assert np.array_equal(sink, base + g) and np.array_equal(diag, np.diagonal(g))
    ref = z.T.astype(np.float64) @ g.astype(np.float64) @ z.astype(np.float64)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(t, ref, rtol=0, atol=tol * np.abs(ref).max())
    t_alone, diag_alone = _probing.probe_product(g, z)
    assert np.array_equal(t_alone, t) and np.array_equal(diag_alone, diag)


def test_threaded_prober_sums_bit_for_bit_and_agrees_with_one_thread():
    # Two workers split every Gram's rows: the sink must equal the sequential in-order sum exactly (float32 and
    # float64 uploads of one shape interleaved, so both dtypes pass through the same rows), the diagonals must be
    # the Grams' own, and T may differ from the one-thread T only by summation order.
    rng = np.random.default_rng(7)
    grams = []
    for k in range(12):
        x = rng.standard_normal((40, 300))
        grams.append((x.T @ x).astype(np.float32 if k % 3 == 0 else np.float64))
    grams[5] = grams[5] - 50.0 * np.outer(np.ones(300), np.ones(300))  # indefinite: the probes must say so
    expected = np.zeros((300, 300))
    for g in grams:
        expected += g
    results = {}
    for workers in (1, 2, 3):
        prober = _probing.Prober(8, np.random.default_rng(1), workers=workers)
        sink = np.zeros((300, 300))
        for k, g in enumerate(grams):
            prober.add(k, g, sink)
        results[workers] = prober.verdicts(), [j.product for j in prober.jobs]
        assert np.array_equal(sink, expected), workers
        assert all(np.array_equal(j.diag, np.diagonal(g)) for j, g in zip(prober.jobs, grams))
    for workers in (2, 3):
        assert results[workers][0] == results[1][0]
        for t, t1 in zip(results[workers][1], results[1][1]):
            np.testing.assert_allclose(t, t1, rtol=0, atol=1e-5 * np.abs(t1).max())
    verdicts = results[1][0]
    assert verdicts[5] is not None and "positive semi-definite" in verdicts[5]
    assert all(verdicts[k] is None for k in range(12) if k != 5)
