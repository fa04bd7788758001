"""Explicit weights: a buffer built from given arrays (another run's, or the arrays a seed draws) reproduces the
seeded learner bit for bit; a buffer that does not fit is refused by name; checkpoints keep it."""

from __future__ import annotations

import numpy as np
import pytest

from analytic import RandomBuffer
from continual import ACIL, AIR, DSAL, GACL

D, WIDTH, C = 12, 40, 4


@pytest.fixture(scope="module")
def stream():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, D))
    return x, rng.integers(0, C, 90)


def test_from_weights_equals_the_seeded_buffer_exactly():
    seeded = RandomBuffer(D, WIDTH, "tanh", seed=3, init="torch_linear", bias=True)
    given = RandomBuffer.from_weights(np.asarray(seeded.weight), np.asarray(seeded.bias), "tanh")
    x = np.random.default_rng(1).standard_normal((7, D))
    assert np.array_equal(np.asarray(given(x)), np.asarray(seeded(x)))
    assert (given.in_dim, given.out_dim, given.activation) == (D, WIDTH, "tanh")


@pytest.mark.parametrize("kwargs,error,match", [
    ({"weight": [[1.0]]}, TypeError, "weight must be an array"),
    ({"weight": np.ones((3, 2), np.int32)}, TypeError, "floating"),
    ({"weight": np.ones(3)}, ValueError, "2-D"),
    ({"weight": np.ones((3, 0))}, ValueError, "non-empty"),
    ({"weight": np.full((3, 2), np.nan)}, ValueError, "NaN"),
    ({"weight": np.ones((3, 2)), "bias": np.ones(3)}, ValueError, r"bias must have shape \(2,\)"),
    ({"weight": np.ones((3, 2)), "activation": "softplus"}, ValueError, "activation"),
    ({"weight": None}, TypeError, "weight"),
])
def test_from_weights_refuses_bad_arrays_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        RandomBuffer.from_weights(**kwargs)


def _seeded_and_given(name):
    """(seeded learner, the same learner given the arrays its seed draws)."""
    if name == "DS-AL":
        buffer = RandomBuffer(D, WIDTH, "identity", seed=0)
        return DSAL(buffer_size=WIDTH), DSAL(projection=RandomBuffer.from_weights(np.asarray(buffer.weight),
                                                                                   activation="identity"))
    buffer = RandomBuffer(D, WIDTH, "relu", seed=0)
    given = RandomBuffer.from_weights(np.asarray(buffer.weight))
    cls = {"ACIL": ACIL, "GACL": GACL, "AIR": AIR}[name]
    return cls(buffer_size=WIDTH), cls(buffer=given)


@pytest.mark.parametrize("name", ["ACIL", "GACL", "AIR", "DS-AL"])
def test_injecting_the_seeded_weights_gives_the_seeded_learner_bit_for_bit(name, stream):
    x, y = stream
    seeded, given = _seeded_and_given(name)
    for sl in (slice(0, 30), slice(30, 60), slice(60, 90)):
        seeded.partial_fit(x[sl], y[sl], classes=C)
        given.partial_fit(x[sl], y[sl], classes=C)
    assert np.array_equal(np.asarray(given.decision_function(x)), np.asarray(seeded.decision_function(x)))


def test_a_buffer_that_does_not_fit_is_refused_naming_it(stream):
    x, y = stream
    cases = [
        (ACIL(buffer=RandomBuffer(D + 1, WIDTH)), "takes 13 inputs"),
        (ACIL(buffer=RandomBuffer(D, WIDTH), buffer_size=WIDTH + 1), "has 40 outputs but a size of 41"),
        (ACIL(buffer=RandomBuffer(D, WIDTH, "tanh")), "applies 'tanh'"),
        (ACIL(buffer=np.ones((D, WIDTH))), "must be an analytic.RandomBuffer"),
        (DSAL(projection=RandomBuffer(D, WIDTH, "relu")), "projection applies 'relu'"),
    ]
    for learner, match in cases:
        with pytest.raises((TypeError, ValueError), match=match):
            learner.partial_fit(x, y)
        assert learner.state is None  # nothing was learnt


def test_a_given_buffer_survives_a_checkpoint_and_a_refit(stream, tmp_path):
    x, y = stream
    _, learner = _seeded_and_given("ACIL")
    learner.partial_fit(x[:45], y[:45], classes=C)
    learner.save(str(tmp_path / "acil"))
    loaded = ACIL.load(str(tmp_path / "acil"))
    assert np.array_equal(np.asarray(loaded.state.buffer.weight), np.asarray(learner.state.buffer.weight))
    assert loaded.buffer is not None and loaded.buffer_size is None
    loaded.partial_fit(x[45:], y[45:], classes=C)
    learner.partial_fit(x[45:], y[45:], classes=C)
    assert np.array_equal(np.asarray(loaded.coef_), np.asarray(learner.coef_))
    # fit() starts afresh with the same given buffer, not a seeded one of the default width.
    assert loaded.fit(x, y, classes=C).coef_.shape == (WIDTH, C)
    # A seeded learner's checkpoint records no buffer and reloads as seeded.
    seeded = ACIL(buffer_size=WIDTH).partial_fit(x, y, classes=C)
    seeded.save(str(tmp_path / "seeded"))
    assert ACIL.load(str(tmp_path / "seeded")).buffer is None


def test_dsal_takes_the_repositorys_increase_size_and_needs_a_batch_size_for_it(stream):
    from continual import dsal

    x, y = stream
    # The class passes new_classes to every update: the same as the functional update given it.
    learner = DSAL(buffer_size=WIDTH, cleansing="authors", batch_size=16, new_classes=3)
    state = dsal.init(D, C, buffer_size=WIDTH, solver="rls")
    for sl in (slice(0, 45), slice(45, 90)):
        learner.partial_fit(x[sl], y[sl], classes=C)
        state = dsal.update(state, x[sl], y[sl], cleansing="authors", batch_size=16, new_classes=3)
    assert np.array_equal(np.asarray(learner.state.comp.weight), np.asarray(state.comp.weight))
    # ... and it matters: the default (classes new in the phase) cleanses differently here.
    default = DSAL(buffer_size=WIDTH, cleansing="authors", batch_size=16)
    for sl in (slice(0, 45), slice(45, 90)):
        default.partial_fit(x[sl], y[sl], classes=C)
    assert not np.allclose(np.asarray(default.state.comp.weight), np.asarray(state.comp.weight))
    for kwargs, match in (({"cleansing": "authors"}, "pass batch_size"),
                          ({"new_classes": 2}, "only with cleansing='authors'"),
                          ({"cleansing": "authors", "batch_size": 8, "new_classes": 0}, "new_classes must be"),
                          ({"batch_size": True}, "batch_size must be")):
        with pytest.raises(ValueError, match=match):
            DSAL(buffer_size=WIDTH, **kwargs).fit(x, y)
    with pytest.raises(ValueError, match="pass batch_size"):
        dsal.update(dsal.init(D, C, buffer_size=WIDTH, solver="rls"), x, y, cleansing="authors")


def test_foal_takes_a_given_projection_and_pre_fused_features():
    from analytic import feature_fusion
    from continual import FOAL

    rng = np.random.default_rng(5)
    tokens, y = rng.standard_normal((60, 3, D)), rng.integers(0, C, 60)
    seeded = FOAL(projection_dim=WIDTH, batch_size=10)
    seeded.partial_fit(tokens[:30], y[:30], classes=C)
    projection = np.asarray(seeded.state.projection)
    given = FOAL(projection=projection, batch_size=10)  # projection_dim comes from the matrix
    fused = FOAL(inputs="fused", batch_size=10)
    features = np.asarray(feature_fusion(tokens, projection))
    given.partial_fit(tokens[:30], y[:30], classes=C)
    fused.partial_fit(features[:30], y[:30], classes=C)
    for learner, x in ((seeded, tokens), (given, tokens), (fused, features)):
        learner.partial_fit(x[30:], y[30:], classes=C)
    assert np.array_equal(np.asarray(given.coef_), np.asarray(seeded.coef_))
    assert np.array_equal(np.asarray(given.decision_function(tokens)), np.asarray(seeded.decision_function(tokens)))
    # Fused features fed directly: the same head up to the fusion's rounding inside one compiled program.
    np.testing.assert_allclose(np.asarray(fused.coef_), np.asarray(seeded.coef_), rtol=0,
                               atol=1e-12 * np.abs(np.asarray(seeded.coef_)).max())
    assert np.array_equal(fused.predict(features), seeded.predict(tokens))
    with pytest.raises(ValueError, match=r"must be 2-D|\(n, d\)"):
        fused.partial_fit(tokens, y)
    with pytest.raises(ValueError, match=r"projection must be \(12, P\)"):
        FOAL(projection=projection.T).partial_fit(tokens, y)
    with pytest.raises(ValueError, match="do not apply"):
        FOAL(inputs="fused", projection=projection).partial_fit(features, y)
    with pytest.raises(ValueError, match="inputs must be"):
        FOAL(inputs="features").fit(features, y)
