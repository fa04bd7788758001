"""Bad input raises a clear error at the public boundary and leaves every learner unchanged and usable."""

import jax
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from continual import ACIL, AIR, DSAL, FOAL, GACL
from continual import dsal as dsal_fn
from continual import gacl as gacl_fn

CLASSES, DIM = 6, 32
LEARNERS = {
    "ACIL": lambda **kw: ACIL(buffer_size=128, **kw),
    "DSAL": lambda **kw: DSAL(buffer_size=128, **kw),
    "GACL": lambda **kw: GACL(buffer_size=128, **kw),
    "AIR": lambda **kw: AIR(**kw),
    "FOAL": lambda **kw: FOAL(projection_dim=64, **kw),
}


def _batch(name, rng, n=8):
    shape = (n, 3, DIM) if name == "FOAL" else (n, DIM)
    return rng.normal(size=shape), rng.choice(CLASSES, n)


def _bad_inputs(x, y):
    """(description, x, y, error type, message fragment naming the argument)."""
    nan, inf, narrow = x.copy(), x.copy(), x[..., :-1]
    nan.flat[3] = np.nan
    inf.flat[5] = np.inf
    return [
        ("wrong width", narrow, y, ValueError, "expecting"),
        ("NaN", nan, y, ValueError, "NaN"),
        ("inf", inf, y, ValueError, "inf"),
        ("empty batch", x[:0], y[:0], ValueError, "empty"),
        ("label out of declared range", x, np.where(y == y[0], CLASSES, y), ValueError, "declared"),
        # fitted on class ids, the learner refuses other labels (a fresh one would map them to columns)
        ("negative label", x, -np.abs(y) - 1, ValueError, "class ids"),
        ("non-integer label", x, y + 0.5, ValueError, "Unknown label type"),
        ("labels/rows mismatch", x, y[:-1], ValueError, "rows"),
        ("2-D labels", x, np.stack([y, y], axis=1), ValueError, "1-D"),
    ]


def _leaves(state):
    return [np.array(leaf) for leaf in jax.tree.leaves(state)]


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_bad_input_raises_and_leaves_the_learner_unchanged_and_usable(name):
    rng = np.random.default_rng(0)
    (x1, y1), (x2, y2) = _batch(name, rng), _batch(name, rng)
    learner = LEARNERS[name]().partial_fit(x1, y1, classes=CLASSES)
    state, before = learner.state, _leaves(learner.state)
    for what, bad_x, bad_y, error, fragment in _bad_inputs(x1, y1):
        with pytest.raises(error, match=fragment):
            learner.partial_fit(bad_x, bad_y)
        assert learner.state is state, what
    with pytest.raises(ValueError, match="expecting"):
        learner.predict(x1[..., :-1])
    with pytest.raises(ValueError, match="classes"):
        learner.partial_fit(x1, y1, classes=-2)
    for leaf, kept in zip(jax.tree.leaves(learner.state), before):
        np.testing.assert_array_equal(np.asarray(leaf), kept)
    # Still usable: continuing equals a learner that never saw the bad input.
    learner.partial_fit(x2, y2)
    clean = LEARNERS[name]().partial_fit(x1, y1, classes=CLASSES).partial_fit(x2, y2)
    for a, b in zip(jax.tree.leaves(learner.state), jax.tree.leaves(clean.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", sorted(LEARNERS))
@pytest.mark.parametrize("gamma", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_or_non_finite_gamma_is_refused(name, gamma):
    kwargs = {"gamma_main": gamma} if name == "DSAL" else {"gamma": gamma}
    learner = LEARNERS[name](**kwargs)  # scikit-learn's rule: the constructor stores, fit validates
    assert learner.get_params()[next(iter(kwargs))] is gamma
    x, y = np.random.default_rng(0).normal(size=(8, DIM)), np.arange(8) % CLASSES
    with pytest.raises(ValueError, match="gamma"):
        learner.fit(x[:, None, :] if name == "FOAL" else x, y)
    assert learner.state is None


def test_unfitted_learner_and_bad_options_raise_clear_errors():
    x, y = np.random.default_rng(0).normal(size=(8, DIM)), np.arange(8) % CLASSES
    with pytest.raises(NotFittedError, match="not been fitted"):
        ACIL().predict(np.zeros((2, DIM)))
    with pytest.raises(ValueError, match="cleansing"):
        DSAL(cleansing="phase").fit(x, y)
    with pytest.raises(ValueError, match="activation"):
        DSAL(activation_comp="swish").fit(x, y)
    with pytest.raises(ValueError, match="online_iter"):
        GACL(online_iter=0).fit(x, y)
    with pytest.raises(ValueError, match="statistics"):
        AIR(statistics="lowrank").fit(x, y)
    with pytest.raises(ValueError, match="power"):
        AIR(power=-1.0).fit(x, y)
    with pytest.raises(ValueError, match="compensation_ratio"):
        DSAL(compensation_ratio=float("nan")).fit(x, y)
    with pytest.raises(ValueError, match="batch_size"):
        FOAL(batch_size=0).fit(x[:, None, :], y)
    with pytest.raises(ValueError, match=r"\(n, L, D\)"):
        FOAL().partial_fit(np.zeros((4, DIM)), np.zeros(4, int))  # F-OAL needs per-block tokens (n, L, D)


def test_functional_update_validates_before_touching_the_state():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, DIM)), rng.choice(CLASSES, 8)
    state = gacl_fn.init(DIM, CLASSES, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        gacl_fn.update(state, np.full((8, DIM), np.nan), y)
    with pytest.raises(ValueError, match="online_iter"):
        gacl_fn.update(state, x, y, online_iter=1.5)
    dstate = dsal_fn.init(DIM, CLASSES, buffer_size=64)
    with pytest.raises(ValueError, match="batch_size"):
        dsal_fn.update(dstate, x, y, batch_size=0)
    assert not bool(np.asarray(state.exposed).any())
