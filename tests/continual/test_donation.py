"""Heads (Gram statistics, and ``R`` of a one-step recursion) updated in place by the class wrappers
(continual._donation): the previous buffers are consumed, yet a refused batch -- one whose squares overflow --
leaves the learner exactly as it was, class columns included, and the functional ``update`` never consumes its
argument."""

import jax
import numpy as np
import pytest

from continual import ACIL, AIR, FOAL, GACL
from continual import acil as acil_fn

LEARNERS = {
    "ACIL": (lambda: ACIL(1.0, buffer_size=96), 2),
    "ACIL(rls)": (lambda: ACIL(1.0, buffer_size=96, solver="rls"), 2),
    "GACL": (lambda: GACL(1.0, buffer_size=96), 2),
    "FOAL": (lambda: FOAL(1.0, projection_dim=96, solver="gram"), 3),
    "FOAL(rls)": (lambda: FOAL(1.0, projection_dim=96), 3),  # a chunk of one mini-batch: one donated step
    "AIR": (lambda: AIR(1.0, buffer_size=96), 2),
}


def _head_buffer(name, state):
    if name == "AIR":
        return state.class_gram
    return state.head.inv_autocorr if name.endswith("(rls)") else state.head.stats.xtx


def _batch(rng, n, rank):
    x = rng.standard_normal((n, 24) if rank == 2 else (n, 3, 24))
    return x, rng.integers(0, 4, n)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_donated_head_is_consumed_and_a_refused_batch_keeps_the_learner(name):
    make, rank = LEARNERS[name]
    rng = np.random.default_rng(0)
    x, y = _batch(rng, 60, rank)
    learner = make().partial_fit(x, y)
    consumed = _head_buffer(name, learner.state)
    learner.partial_fit(x[:8], y[:8])
    _ = learner.state  # ACIL/GACL hold a small batch back until the state is read (ContinualClassifier.partial_fit)
    assert consumed.is_deleted()  # updated in place, not copied
    snapshot = [np.array(leaf) for leaf in jax.tree.leaves(learner.state)]
    bad = x[:5].copy()
    # ACIL/GACL/AIR refuse this inside their (donating) step; F-OAL refuses overflowing tokens before its step, as
    # its sigmoid features cannot overflow.
    bad[1] = 1e200
    with pytest.raises(ValueError, match="row 1"):
        learner.partial_fit(bad, np.array([0, 1, 2, 5, 6]))  # new class ids: the step had widened the head
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(learner.state), snapshot))
    learner.partial_fit(x[:8], y[:8])
    clean = make().partial_fit(x, y).partial_fit(x[:8], y[:8])
    _ = clean.state  # the same reads, so that the held-back batches are learned in the same groups
    clean.partial_fit(x[:8], y[:8])
    np.testing.assert_array_equal(np.asarray(learner.coef_), np.asarray(clean.coef_))


def test_the_functional_update_does_not_consume_its_state():
    rng = np.random.default_rng(1)
    x, y = _batch(rng, 40, 2)
    state = acil_fn.update(acil_fn.init(24, 4, 1.0, buffer_size=96), x, y)
    acil_fn.update(state, x[:8], y[:8])
    assert not state.head.stats.xtx.is_deleted()
    np.asarray(acil_fn.predict(state, x))
