"""Client task streams: every task's rows are dealt exactly once, classes are grouped in the requested order,
seeds fix the draw, and bad arguments are refused before any partition is drawn."""

from __future__ import annotations

import numpy as np
import pytest

from federated import partition
from federated.streams import ClientStreams, client_streams, seen_rows, task_classes, task_rows

Y = np.random.default_rng(0).integers(0, 10, 2400)


@pytest.mark.parametrize("scheme,kw", [("iid", {}), ("dirichlet", {"alpha": 0.1}), ("dirichlet", {"alpha": 0.01}),
                                       ("shards", {"shards_per_client": 2})])
@pytest.mark.parametrize("clients", [1, 7, 100])
def test_each_task_row_is_held_by_exactly_one_client(scheme, kw, clients):
    s = client_streams(Y, 5, clients, scheme, seed=3, **kw)
    assert isinstance(s, ClientStreams) and s.tasks == 5 and s.clients == clients
    for t in range(5):
        rows = np.concatenate(s.streams[t])
        want = np.flatnonzero(np.isin(Y, s.classes[t]))
        np.testing.assert_array_equal(np.sort(rows), want)  # disjoint (no duplicates) and covering
        assert all(np.all(np.diff(p) > 0) for p in s.streams[t] if len(p) > 1)
        np.testing.assert_array_equal(task_rows(s, t), want)
    np.testing.assert_array_equal(seen_rows(s, 4), np.arange(Y.size))


def test_classes_are_grouped_in_order_and_task_order_permutes_the_groups():
    assert [g.tolist() for g in task_classes(Y, 5)] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    order = [9, 3, 1, 0, 7, 2, 8, 4, 6, 5]
    assert [g.tolist() for g in task_classes(Y, 5, class_order=order)] == [[3, 9], [0, 1], [2, 7], [4, 8], [5, 6]]
    assert [g.tolist() for g in task_classes(Y, 5, task_order=[4, 3, 2, 1, 0])][0] == [8, 9]
    assert [g.size for g in task_classes(Y, 3)] == [4, 3, 3]
    s = client_streams(Y, 5, 4, task_order=[1, 0, 2, 3, 4])
    assert s.classes[0].tolist() == [2, 3] and s.seen_classes(1).tolist() == [0, 1, 2, 3]


def test_task_partitions_use_the_library_partition_with_seed_plus_task():
    s = client_streams(Y, 2, 6, "dirichlet", alpha=0.5, seed=11)
    rows = np.flatnonzero(np.isin(Y, [5, 6, 7, 8, 9]))
    expected = partition.dirichlet(Y[rows], 6, 0.5, seed=12)
    for got, want in zip(s.streams[1], expected):
        np.testing.assert_array_equal(got, rows[want])
    again = client_streams(Y, 2, 6, "dirichlet", alpha=0.5, seed=11)
    assert all(np.array_equal(a, b) for ta, tb in zip(s.streams, again.streams) for a, b in zip(ta, tb))


def test_clients_may_have_empty_tasks():
    s = client_streams(Y[:40], 2, 30, "dirichlet", alpha=0.01, seed=0)
    assert any(len(p) == 0 for t in s.streams for p in t)
    s = client_streams(Y[:20], 2, 50, "iid")  # more clients than rows
    assert sum(len(p) == 0 for p in s.streams[0]) >= 40


@pytest.mark.parametrize("kwargs,error,match", [
    ({"tasks": 0}, ValueError, "tasks"),
    ({"tasks": 2.5}, ValueError, "tasks"),
    ({"tasks": True}, TypeError, "tasks"),
    ({"tasks": 11}, ValueError, "tasks=11"),
    ({"clients": 0}, ValueError, "clients"),
    ({"clients": "3"}, TypeError, "clients"),
    ({"scheme": "pathological"}, ValueError, "scheme"),
    ({"scheme": "dirichlet", "alpha": 0.0}, ValueError, "alpha"),
    ({"scheme": "dirichlet", "alpha": float("nan")}, ValueError, "alpha"),
    ({"scheme": "dirichlet", "alpha": "1"}, TypeError, "alpha"),
    ({"scheme": "shards", "shards_per_client": 0}, ValueError, "shards_per_client"),
    ({"scheme": "shards", "clients": 300}, ValueError, "shards"),
    ({"task_order": [0, 1, 2, 3, 3]}, ValueError, "task_order"),
    ({"task_order": [0, 1, 2]}, ValueError, "task_order"),
    ({"class_order": list(range(9))}, ValueError, "class_order"),
    ({"class_order": [0.0] * 10}, ValueError, "class_order"),
    ({"seed": -1}, ValueError, "seed"),
])
def test_bad_arguments_are_refused_naming_them(kwargs, error, match):
    args = {"tasks": 5, "clients": 4, **kwargs}
    with pytest.raises(error, match=match):
        client_streams(Y, **args)


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="labels"):
        client_streams(np.array([0, -1, 2]), 1, 2)
    with pytest.raises(ValueError, match="labels"):
        client_streams(np.array([0.5, 1.0]), 1, 2)
