"""Partitions: every row goes to exactly one client; skew follows α; PFLlib's min-size rule; reproducible."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from federated import partition

LABELS = np.random.default_rng(0).integers(0, 10, 5000)


def assert_is_partition(parts, n):
    rows = np.concatenate(parts)
    assert rows.size == n and np.unique(rows).size == n and rows.min() == 0 and rows.max() == n - 1


@pytest.mark.parametrize("clients", [1, 7, 100, 1000])
def test_every_scheme_assigns_each_row_to_exactly_one_client(clients):
    assert_is_partition(partition.iid(LABELS, clients, seed=1), LABELS.size)
    assert_is_partition(partition.dirichlet(LABELS, clients, 0.1, seed=1), LABELS.size)
    assert_is_partition(partition.shards(LABELS, clients, 2, seed=1), LABELS.size)


def test_iid_sizes_differ_by_at_most_one_and_classes_are_mixed():
    parts = partition.iid(LABELS, 7, seed=2)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    table = partition.class_histogram(LABELS, parts)
    assert (table > 0).all()


def mean_classes_per_client(alpha, clients=50):
    table = partition.class_histogram(LABELS, partition.dirichlet(LABELS, clients, alpha, seed=3))
    return float((table > 0).sum(axis=1).mean())


def test_dirichlet_skew_grows_as_alpha_shrinks():
    seen = [mean_classes_per_client(a) for a in (100.0, 1.0, 0.1, 0.01)]
    assert all(a > b for a, b in zip(seen, seen[1:])), seen
    assert seen[0] > 9.5 and seen[-1] < 2.5


def test_dirichlet_min_size_is_enforced_by_redrawing():
    parts = partition.dirichlet(LABELS, 20, 0.1, min_size=50, seed=4)
    assert min(len(p) for p in parts) >= 50
    with pytest.raises(ValueError, match="min_size"):
        partition.dirichlet(LABELS, 1000, 0.01, min_size=5, seed=0, max_tries=3)


def test_shards_give_each_client_few_classes():
    parts = partition.shards(LABELS, 50, 2, seed=5)
    table = partition.class_histogram(LABELS, parts, classes=10)
    # 100 shards of 50 sorted rows: a shard spans at most 2 classes, so a client sees at most 4.
    assert (table > 0).sum(axis=1).max() <= 4
    assert {len(p) for p in parts} == {100}


def test_same_seed_same_split_other_seed_other_split():
    a = partition.dirichlet(LABELS, 10, 0.5, seed=6)
    b = partition.dirichlet(LABELS, 10, 0.5, seed=6)
    c = partition.dirichlet(LABELS, 10, 0.5, seed=7)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="clients"):
        partition.iid(LABELS, 0)
    with pytest.raises(ValueError, match="alpha"):
        partition.dirichlet(LABELS, 5, 0.0)
    with pytest.raises(ValueError, match="shards"):
        partition.shards(LABELS[:10], 10, 2)
    with pytest.raises(ValueError, match="negative"):
        partition.iid(np.array([0, -1, 2]), 2)
    with pytest.raises(TypeError, match="integer class ids"):
        partition.iid(np.array(["a", "b"]), 2)


def test_histogram_table_and_plot():
    parts = partition.dirichlet(LABELS, 12, 0.3, seed=8)
    table = partition.class_histogram(LABELS, parts, classes=10)
    assert table.shape == (12, 10) and table.sum() == LABELS.size
    np.testing.assert_array_equal(table.sum(axis=0), np.bincount(LABELS, minlength=10))
    ax = partition.plot_histogram(table, title="Dir(0.3)")
    assert len(ax.patches) == 12 * 10
