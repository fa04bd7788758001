"""Scenarios: every index exactly once, seeded determinism, the stated class splits and blurry ratio."""

from __future__ import annotations

import numpy as np
import pytest

from continual.scenarios import Batch, Phase, class_incremental, online, si_blurry

LABELS = np.random.default_rng(7).integers(0, 20, size=2000)


def _all_indices(phases: list[Phase]) -> np.ndarray:
    return np.concatenate([p.indices for p in phases])


def test_class_incremental_covers_every_index_once_with_disjoint_classes() -> None:
    phases = class_incremental(LABELS, base_classes=10, phases=5, seed=3)
    assert len(phases) == 6
    np.testing.assert_array_equal(np.sort(_all_indices(phases)), np.arange(LABELS.size))
    sizes = [p.new_classes.size for p in phases]
    assert sizes == [10, 2, 2, 2, 2, 2]
    for p in phases:
        # A phase holds exactly the classes it introduces, and all of their samples.
        np.testing.assert_array_equal(np.unique(LABELS[p.indices]), np.sort(p.new_classes))
        assert p.indices.size == np.isin(LABELS, p.new_classes).sum()
    np.testing.assert_array_equal(phases[-1].seen_classes, np.arange(20))
    assert all(np.array_equal(np.union1d(a.seen_classes, b.new_classes), b.seen_classes)
               for a, b in zip(phases, phases[1:]))


def test_class_incremental_is_seeded_and_shuffles_class_order() -> None:
    a = class_incremental(LABELS, 10, 5, seed=1)
    b = class_incremental(LABELS, 10, 5, seed=1)
    c = class_incremental(LABELS, 10, 5, seed=2)
    assert all(np.array_equal(p.indices, q.indices) for p, q in zip(a, b))
    assert not np.array_equal(a[0].new_classes, c[0].new_classes)
    # The order is a permutation, not the identity 0..9 (which a seed could only hit with probability ~1e-13).
    assert not np.array_equal(np.sort(a[0].new_classes), np.arange(10))


def test_class_incremental_without_base_phase_and_uneven_split() -> None:
    phases = class_incremental(LABELS, base_classes=0, phases=3, seed=0)
    assert [p.new_classes.size for p in phases] == [7, 7, 6]


@pytest.mark.parametrize("kwargs, match", [
    ({"base_classes": 15, "phases": 6}, "exceeds"),
    ({"base_classes": -1, "phases": 2}, "base_classes"),
    ({"base_classes": 2, "phases": 0}, "phases"),
])
def test_class_incremental_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        class_incremental(LABELS, seed=0, **kwargs)


@pytest.mark.parametrize("labels, error", [
    (np.zeros((3, 2), int), ValueError), (np.array([], int), ValueError), (np.array([0.5, 1.0]), TypeError),
    (np.array([-1, 2]), ValueError),
])
def test_scenarios_reject_bad_labels(labels: np.ndarray, error: type) -> None:
    with pytest.raises(error, match="labels"):
        class_incremental(labels, 1, 1)


def test_si_blurry_covers_every_index_once_and_is_seeded() -> None:
    a = si_blurry(LABELS, tasks=5, disjoint_ratio=0.5, blurry_ratio=0.1, seed=4)
    b = si_blurry(LABELS, tasks=5, disjoint_ratio=0.5, blurry_ratio=0.1, seed=4)
    assert len(a) == 5
    np.testing.assert_array_equal(np.sort(_all_indices(a)), np.arange(LABELS.size))
    assert all(np.array_equal(p.indices, q.indices) for p, q in zip(a, b))
    assert any(not np.array_equal(p.indices, q.indices) for p, q in zip(a, si_blurry(LABELS, seed=5)))


def test_si_blurry_has_the_stated_disjoint_and_blurry_ratios() -> None:
    tasks, phases = 5, si_blurry(LABELS, tasks=5, disjoint_ratio=0.5, blurry_ratio=0.1, seed=0)
    where = np.empty(LABELS.size, dtype=int)
    for t, p in enumerate(phases):
        where[p.indices] = t
    tasks_of = {c: np.unique(where[LABELS == c]) for c in range(20)}
    disjoint = [c for c, ts in tasks_of.items() if ts.size == 1]
    # 10 disjoint classes, each entirely inside one task; the other 10 leak (with 100 samples each and 10% of
    # all blurry samples leaking at random, every blurry class leaks at least one sample here).
    assert len(disjoint) == 10
    blurry_mask = ~np.isin(LABELS, disjoint)
    home = {c: np.bincount(where[LABELS == c], minlength=tasks).argmax() for c in tasks_of if c not in disjoint}
    leaked = sum(int(np.sum(where[LABELS == c] != h)) for c, h in home.items())
    assert leaked == int(np.floor(0.1 * blurry_mask.sum()))
    # Task sizes (in disjoint classes) vary, and every task introduces at least one class.
    per_task = [sum(1 for c in disjoint if tasks_of[c][0] == t) for t in range(tasks)]
    assert sum(per_task) == 10 and min(per_task) >= 1 and len(set(per_task)) > 1
    # Blurry classes reappear: some class is present in a task after the one that introduced it.
    assert any(np.setdiff1d(np.unique(LABELS[p.indices]), p.new_classes).size for p in phases[1:])


def test_si_blurry_even_split_and_no_blur() -> None:
    phases = si_blurry(LABELS, tasks=4, disjoint_ratio=1.0, blurry_ratio=0.0, seed=0, stochastic=False)
    assert [p.new_classes.size for p in phases] == [5, 5, 5, 5]
    assert all(np.array_equal(np.sort(p.new_classes), np.unique(LABELS[p.indices])) for p in phases)


@pytest.mark.parametrize("kwargs, match", [
    ({"tasks": 0}, "tasks"), ({"tasks": 21}, "exceeds"), ({"disjoint_ratio": 1.5}, "disjoint_ratio"),
    ({"blurry_ratio": -0.1}, "blurry_ratio"),
])
def test_si_blurry_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        si_blurry(LABELS, **kwargs)


def test_online_batches_respect_phase_order_and_size() -> None:
    phases = class_incremental(LABELS, 10, 5, seed=0)
    batches = online(phases, batch_size=10)
    assert all(isinstance(b, Batch) and b.indices.size <= 10 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.indices for b in batches]), _all_indices(phases))
    assert [b.phase for b in batches] == sorted(b.phase for b in batches)
    for t, p in enumerate(phases):
        assert sum(b.indices.size for b in batches if b.phase == t) == p.indices.size
    dropped = online(phases, batch_size=64, drop_last=True)
    assert all(b.indices.size == 64 for b in dropped)


def test_online_over_a_label_array_is_one_seeded_stream() -> None:
    plain = online(LABELS, batch_size=100)
    np.testing.assert_array_equal(np.concatenate([b.indices for b in plain]), np.arange(LABELS.size))
    a, b = online(LABELS, 100, seed=1), online(LABELS, 100, seed=1)
    np.testing.assert_array_equal(a[0].indices, b[0].indices)
    assert not np.array_equal(a[0].indices, plain[0].indices)
    with pytest.raises(ValueError, match="batch_size"):
        online(LABELS, batch_size=0)
