"""AFCL against joint ridge on the pooled rows of tasks 1..t (float64 NumPy), after every task.

Tolerance: 1e-8 relative (max-abs error / max-abs reference). Both sides solve the same small SPD system
(d = 8 or 16, standard-normal rows, γ = 1, condition number ≲ 10), so float64 rounding alone is ~1e-14; 1e-8 leaves
room for the summation order over 1000 clients × tasks while a wrong formula (a missing/extra γ, a client or
task merged twice or dropped, a column in the wrong place) moves W by ≳ 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

from federated import afcl
from federated.messages import AFLUpload
from federated.streams import client_streams, seen_rows

N, D, C, T, GAMMA = 2000, 8, 10, 5, 1.0
SCHEMES = {"iid": ("iid", {}), "dir0.01": ("dirichlet", {"alpha": 0.01}), "dir0.1": ("dirichlet", {"alpha": 0.1}),
           "dir1": ("dirichlet", {"alpha": 1.0}), "shards": ("shards", {"shards_per_client": 2})}
ORDERS = {"ascending": {}, "permuted": {"class_order": [7, 2, 9, 0, 4, 1, 8, 3, 6, 5], "task_order": [3, 0, 4, 1, 2]}}


def make(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, C, n)


@pytest.fixture(scope="module")
def data():
    return make(N, D, 0)


def joint(x, y, rows, d=D):
    """Independent reference: ridge on the pooled rows by np.linalg.solve (LU), not the Cholesky path tested."""
    xs, ts = x[rows], np.eye(C)[y[rows]]
    return np.linalg.solve(xs.T @ xs + GAMMA * np.eye(d), xs.T @ ts)


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def numpy_uploads(x, y, parts):
    """Uploads built with plain NumPy (client_stats is checked against NumPy in test_afl.py and end to end in
    test_run_afcl_with_client_stats_equals_joint_ridge), so the grid exercises the server at 1000 clients cheaply."""
    t = np.eye(C)[y]
    return [AFLUpload(k, x[p].T @ x[p], x[p].T @ t[p], len(p), GAMMA) for k, p in enumerate(parts)]


def check_every_task(x, y, streams, d=D):
    state = afcl.afcl_init(d, C, GAMMA)
    for t, parts in enumerate(streams.streams):
        state, excluded = afcl.server_task_update(state, numpy_uploads(x, y, parts))
        assert excluded == [] and state.tasks == t + 1
        assert rel(state.weight, joint(x, y, seen_rows(streams, t), d)) < 1e-8, t
    assert state.server.count == sum(len(p) for task in streams.streams for p in task)


@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_weight_after_every_task_equals_joint_ridge_on_all_rows_seen(data, scheme, order):
    x, y = data
    name, kw = SCHEMES[scheme]
    for clients in (1, 7, 100):
        streams = client_streams(y, T, clients, name, seed=clients, **kw, **ORDERS[order])
        check_every_task(x, y, streams)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_a_thousand_clients_with_a_few_rows_each(scheme):
    x, y = make(10000, 16, 1)  # 2 tasks x 1000 clients x ~5 rows
    name, kw = SCHEMES[scheme]
    streams = client_streams(y, 2, 1000, name, seed=5, **kw)
    check_every_task(x, y, streams, d=16)


def test_run_afcl_with_client_stats_equals_joint_ridge_and_the_recursive_form(data):
    x, y = data
    streams = client_streams(y, T, 7, "dirichlet", alpha=0.1, seed=2, **ORDERS["permuted"])
    run = afcl.run_afcl(x, y, streams, GAMMA, classes=C, x_test=x, y_test=y)
    recursive = afcl.recursive_weights(x, y, streams, GAMMA, classes=C)
    for t in range(T):
        reference = joint(x, y, seen_rows(streams, t))
        assert rel(run.weights[t], reference) < 1e-8, t
        # The paper's recursive (Woodbury) aggregation reaches the same weight as the sum form.
        assert rel(recursive[t], reference) < 1e-8, t
        assert rel(recursive[t], run.weights[t]) < 1e-8, t
    assert all(e == [] for e in run.excluded)
    assert len(run.seen_accuracy) == T and np.isfinite(run.average) and np.isfinite(run.forgetting)
    # Plain index lists work too (classes then read from the labels).
    plain = afcl.run_afcl(x, y, streams.streams, GAMMA, classes=C)
    assert all(rel(a, b) == 0.0 for a, b in zip(plain.weights, run.weights))


def test_float32_transport_is_close_and_buffer_expands_client_side(data):
    from analytic.buffers import RandomBuffer

    x, y = data
    streams = client_streams(y, 3, 7, "iid", seed=0)
    run = afcl.run_afcl(x, y, streams, GAMMA, classes=C, transport_dtype=np.float32)
    # float32 Grams of ~700 rows: entries carry ~1e-7 relative rounding, amplified by κ ≲ 10.
    assert rel(run.weights[-1], joint(x, y, seen_rows(streams, 2))) < 1e-5
    buf = RandomBuffer(D, 24, seed=3)
    phi = np.asarray(buf(x))
    run = afcl.run_afcl(x, y, streams, GAMMA, classes=C, buffer=buf)
    assert run.weights[-1].shape == (24, C)
    assert rel(run.weights[-1], joint(phi, y, seen_rows(streams, 2), 24)) < 1e-8


def test_forged_uploads_are_rejected_and_change_nothing(data):
    x, y = data
    streams = client_streams(y, 2, 5, "iid", seed=0)
    honest = [numpy_uploads(x, y, parts) for parts in streams.streams]
    state0, _ = afcl.server_task_update(afcl.afcl_init(D, C, GAMMA), honest[0])
    good, excluded = afcl.server_task_update(state0, honest[1])
    assert excluded == []
    u = honest[1][0]
    nan = u.xtx.copy()
    nan[0, 0] = np.nan
    forged = [
        AFLUpload(9, np.eye(D + 1), np.zeros((D + 1, C)), 3, GAMMA),        # wrong dimension
        AFLUpload(8, nan, u.xty, u.count, GAMMA),                           # NaN
        AFLUpload(7, u.xtx, np.zeros((D, C + 1)), u.count, GAMMA),          # wider than the declared classes
        AFLUpload(u.client_id, u.xtx, u.xty, u.count, GAMMA),               # second upload, same client and task
    ]
    mixed, excluded = afcl.server_task_update(state0, honest[1] + forged)
    assert len(excluded) == 4
    # Reported under the server's namespaced ids, at their positions in the wave.
    assert [r.position for r in excluded] == [5, 6, 7, 8] and "t1/0" in excluded[-1].client_id
    # The accepted set is the honest wave: same sums, same weight, bit for bit.
    np.testing.assert_array_equal(np.asarray(mixed.server.stats.xtx), np.asarray(good.server.stats.xtx))
    np.testing.assert_array_equal(np.asarray(mixed.weight), np.asarray(good.weight))
    assert mixed.server.clients == good.server.clients
    # A wave of forgeries only returns the very same state.
    same, excluded = afcl.server_task_update(good, forged[:3], task=1)
    assert same is good and len(excluded) == 3
    # A client re-sending its task-1 statistics later for task 1 is refused; for task 2 it is a new upload.
    again, excluded = afcl.server_task_update(good, [u], task=1)
    assert again is good and len(excluded) == 1
    later, excluded = afcl.server_task_update(good, [u])
    assert excluded == [] and later.tasks == 3 and "t2/0" in later.server.clients


def test_ids_are_namespaced_by_the_server_and_int_and_str_ids_stay_apart(data):
    x, y = data
    u = numpy_uploads(x, y, [np.arange(50)])[0]
    v = AFLUpload("0", u.xtx, u.xty, u.count, GAMMA)
    state, excluded = afcl.server_task_update(afcl.afcl_init(D, C, GAMMA), [u, v], task=4)
    assert excluded == [] and state.server.clients == ("t4/0", "t4/'0'") and state.tasks == 5
    assert afcl.task_client_id(4, 0) == "t4/0"


def test_bad_server_arguments(data):
    state = afcl.afcl_init(D, C, GAMMA)
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="task"):
            afcl.server_task_update(state, [], task=bad)
    with pytest.raises(ValueError, match="classes"):
        afcl.afcl_init(D, None, GAMMA)
    with pytest.raises(ValueError, match="gamma"):
        afcl.afcl_init(D, C, -1.0)
    with pytest.raises(ValueError, match="dim"):
        afcl.afcl_init(0, C, GAMMA)
    x, y = data
    with pytest.raises(ValueError, match="row"):
        afcl.run_afcl(x[:10], y[:10], [[np.array([0, 50])]], GAMMA, classes=C)
    server = afcl.AFCLServer(D, C, GAMMA)
    before = server.state
    with pytest.raises(ValueError):
        server.update([], task=-2)
    assert server.state is before


def test_checkpoint_round_trip(tmp_path, data):
    from analytic.checkpoint import load_state, save_state

    x, y = data
    streams = client_streams(y, 2, 3, "iid", seed=0)
    state = afcl.run_afcl(x, y, streams, GAMMA, classes=C).state
    loaded, _ = load_state(save_state(tmp_path / "afcl", state))
    np.testing.assert_array_equal(np.asarray(loaded.weight), np.asarray(state.weight))
    assert loaded.server.clients == state.server.clients and loaded.tasks == 2


def test_gradient_baseline_per_task_forgets_where_afcl_does_not():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((C, D)) * 3.0
    y = rng.integers(0, C, 1500)
    x = (centers[y] + rng.standard_normal((1500, D))).astype(np.float32)
    streams = client_streams(y, T, 10, "iid", seed=0)
    ours = afcl.run_afcl(x.astype(np.float64), y, streams, GAMMA, classes=C, x_test=x, y_test=y)
    grad = afcl.fedavg_per_task(x, y, streams, classes=C, x_test=x, y_test=y, rounds=5, client_fraction=0.5,
                                local_epochs=2, lr=0.1)
    assert len(grad.params) == T and len(grad.seen_accuracy) == T
    assert grad.matrix[0][0] > 0.9  # it learns each task...
    # ...and loses task 1 as later tasks overwrite the head; AFCL's task-1 accuracy is that of joint ridge.
    assert grad.matrix[-1][0] < ours.matrix[-1][0] - 0.15
    assert grad.forgetting > ours.forgetting + 0.05
    with pytest.raises(ValueError, match="client_fraction"):
        afcl.fedavg_per_task(x, y, streams, classes=C, client_fraction=0.0)
    with pytest.raises(ValueError, match="rounds"):
        afcl.fedavg_per_task(x, y, streams, classes=C, rounds=0)
