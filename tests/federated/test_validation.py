"""Server-side screening: each kind of malformed upload is excluded with its client named; the others are used."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from federated import afl, deepafl, messages, partition
from federated.validation import RejectedUploadWarning, check_upload, screen

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


MALFORMED = {
    "nan": (_nan, "NaN"),
    "asymmetric": (_asymmetric, "not symmetric"),
    "wrong_shape": (lambda u: corrupt(u, xty=np.zeros((D + 1, C))), "shape"),
    "wrong_dtype": (lambda u: corrupt(u, xtx=u.xtx.astype(np.int64)), "dtype"),
    "not_psd": (_not_psd, "positive semi-definite"),
    "negative_count": (lambda u: corrupt(u, count=-3), "count"),
    "bad_gamma": (lambda u: corrupt(u, gamma=float("inf")), "gamma"),
    "too_many_classes": (lambda u: corrupt(u, xty=np.zeros((D, C + 2))), "columns"),
}


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
