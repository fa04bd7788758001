"""Lazily solved ridge heads and the single batch path: exact, cached per state, never stale."""

import jax.numpy as jnp
import numpy as np
import pytest

from analytic import expand_classes, ridge_solve, row_bucket
from analytic.lazy_solve import RidgeHead, head_accumulate, head_init, head_weights
from analytic.validation import prepare_batch


def _ridge(x, t, gamma):
    return np.linalg.solve(x.T @ x + gamma * np.eye(x.shape[1]), x.T @ t)


def _add(head, x, labels, classes):
    batch = prepare_batch(x, labels, dim=head.dim, classes=head.classes, dtype=head.dtype)
    head = expand_classes(head, batch.width)
    new, ok = head_accumulate(head, batch.x, batch.targets, jnp.int32(batch.n))
    assert bool(ok)
    return new


def test_head_weights_equal_joint_ridge_and_cache_is_per_state():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 12)), rng.integers(0, 4, 50)
    head = head_init(12, 0, 0.5)
    head = _add(head, x[:20], y[:20], 4)
    w1 = head_weights(head)
    assert head_weights(head) is w1  # the same state: the cached solve
    assert head.weight is w1
    head2 = _add(head, x[20:], y[20:], 4)
    w2 = head_weights(head2)
    assert w2 is not w1  # an update is a new state: solved afresh, never the stale weights
    np.testing.assert_allclose(w2, _ridge(x, np.eye(4)[y], 0.5), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(head_weights(head), w1)  # the old state still reads its own weights
    # A copy with equal values but new arrays is solved again and agrees.
    copy = RidgeHead(type(head2.stats)(*(jnp.array(a) for a in head2.stats)), jnp.array(head2.gamma))
    np.testing.assert_array_equal(head_weights(copy), w2)
    np.testing.assert_allclose(w2, ridge_solve(head2.stats.xtx, head2.stats.xty, 0.5))


def test_head_accumulate_repeats_k_times_the_statistics():
    rng = np.random.default_rng(1)
    x, t = rng.normal(size=(16, 6)), np.eye(3)[rng.integers(0, 3, 16)]
    head = head_init(6, 3, 2.0)
    three, _ = head_accumulate(head, jnp.asarray(x), jnp.asarray(t), jnp.int32(16), repeats=3)
    np.testing.assert_allclose(three.stats.xtx, 3 * x.T @ x, rtol=1e-13)
    np.testing.assert_allclose(three.stats.xty, 3 * x.T @ t, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(head_weights(three), _ridge(x, t, 2.0 / 3), rtol=1e-10)


def test_head_accumulate_flags_overflow():
    head = head_init(4, 2, 1.0)
    x = np.ones((8, 4)) * 1e200
    _, ok = head_accumulate(head, jnp.asarray(x), jnp.asarray(np.eye(2)[np.zeros(8, int)]), jnp.int32(8))
    assert not bool(ok)


def test_expand_classes_of_equal_width_is_the_same_state():
    head = head_init(4, 3)
    assert expand_classes(head, 3) is head
    assert expand_classes(head, 5).classes == 5


def test_prepare_batch_pads_one_hots_and_validates_once():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(13, 5)).astype(np.float32)
    b = prepare_batch(x, np.array([0, 2] * 6 + [4]), dim=5, classes=3, dtype=np.float64)
    assert b.x.shape == (row_bucket(13), 5) and b.x.dtype == np.float32 and b.n == 13 and b.width == 5
    np.testing.assert_array_equal(np.asarray(b.x)[:13], x)
    assert not np.asarray(b.x)[13:].any() and not np.asarray(b.targets)[13:].any()
    np.testing.assert_array_equal(np.asarray(b.targets)[:13], np.eye(5)[b.labels])
    dense = prepare_batch(x, np.ones((13, 2)), dim=5, classes=3, dtype=np.float64)
    assert dense.width == 3 and dense.labels is None and dense.targets.shape == (row_bucket(13), 3)
    device = prepare_batch(jnp.asarray(x), np.zeros(13, int), dim=5, classes=0, dtype=np.float64)
    np.testing.assert_array_equal(device.x, b.x)
    for bad, kind, match in [(x[:, :4], ValueError, "features"), (x.astype(int), TypeError, "floating"),
                             (np.where(x > 1, np.nan, x), ValueError, "NaN"), (x[:0], ValueError, "empty")]:
        with pytest.raises(kind, match=match):
            prepare_batch(bad, np.zeros(len(bad), int), dim=5, classes=0)
    with pytest.raises(ValueError, match="declared"):
        prepare_batch(x, np.full(13, 3), dim=5, classes=0, declared=3)
