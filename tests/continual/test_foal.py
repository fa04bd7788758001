"""F-OAL: one online pass in mini-batches of 10 equals joint ridge on the fused features."""

import numpy as np
import pytest

from analytic import RLSState
from analytic.lazy_solve import RidgeHead
from continual import FOAL
from continual import foal as foal_fn
from tests.continual._learner_reference import np_one_hot, np_ridge, rel_err

BLOCKS, TOKEN, PROJ, CLASSES = 4, 24, 64, 5


def _tokens(rng, n):
    y = rng.integers(0, CLASSES, n)
    means = np.random.default_rng(99).normal(size=(CLASSES, 1, TOKEN))
    return means[y] + rng.normal(size=(n, BLOCKS, TOKEN)), y


def _np_fusion(block_cls, projection, scale=None, bias=None, eps=1e-6):
    """F-OAL §3.2 in NumPy: mean class token over blocks -> LayerNorm -> projection -> sigmoid."""
    h = block_cls.mean(axis=1)
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + eps)
    if scale is not None:
        h = h * scale + bias
    return 1 / (1 + np.exp(-(h @ projection)))


@pytest.mark.parametrize("solver,head", [("rls", RLSState), ("gram", RidgeHead)])
def test_foal_online_pass_equals_joint_ridge_on_fused_features(solver, head):
    rng = np.random.default_rng(0)
    x, y = _tokens(rng, 73)  # not a multiple of 10: the last mini-batch is zero-padded
    scale, bias = rng.uniform(0.5, 1.5, TOKEN), rng.normal(scale=0.1, size=TOKEN)
    learner = FOAL(projection_dim=PROJ, ln_scale=scale, ln_bias=bias, seed=3, solver=solver)
    for chunk in np.array_split(np.arange(73), 3):
        learner.partial_fit(x[chunk], y[chunk], classes=CLASSES)
    assert isinstance(learner.state.head, head)
    fused = _np_fusion(x, np.asarray(learner.state.projection), scale, bias)
    # float64, γ = 1 on sigmoid features in (0, 1): cond ~1e4, so 1e-8 has a wide margin over rounding.
    assert rel_err(learner.state.head.weight, np_ridge(fused, np_one_hot(y, CLASSES), 1.0)) <= 1e-8


def test_foal_projection_is_the_untrained_torch_linear_init():
    state = foal_fn.init(768, 10, projection_dim=1000, seed=0)
    p = np.asarray(state.projection)
    assert p.shape == (768, 1000)
    assert np.abs(p).max() <= 1 / np.sqrt(768)
    assert abs(p.var() * 3 * 768 - 1) < 0.02  # U(±1/√D) has variance 1/(3D)


def test_foal_masks_classes_never_seen_in_the_stream():
    rng = np.random.default_rng(1)
    x, y = _tokens(rng, 40)
    learner = FOAL(projection_dim=PROJ)
    rows = y < 3
    learner.partial_fit(x[rows], y[rows], classes=CLASSES)  # W holds all 5 columns from the start, as the authors
    logits = np.asarray(learner.decision_function(x))
    assert np.all(np.isneginf(logits[:, 3:])) and np.all(np.isfinite(logits[:, :3]))
    # Without the mask a sample whose seen logits are all negative would be assigned an unseen class (score 0).
    raw = np.asarray(foal_fn.fused_features(learner.state, x)) @ np.asarray(learner.state.head.weight)
    assert set(learner.predict(x)) <= {0, 1, 2}
    assert np.all(raw[:, 3:] == 0.0)


def test_foal_mini_batch_size_does_not_change_the_result():
    rng = np.random.default_rng(2)
    x, y = _tokens(rng, 40)
    a = FOAL(projection_dim=PROJ, batch_size=10, solver="rls").fit(x, y)
    b = FOAL(projection_dim=PROJ, batch_size=40, solver="rls").fit(x, y)
    assert rel_err(a.state.head.weight, b.state.head.weight) <= 1e-8
    gram = FOAL(projection_dim=PROJ, solver="gram").fit(x, y)
    assert rel_err(gram.state.head.weight, a.state.head.weight) <= 1e-8


def test_foal_rls_pass_skips_padding_mini_batches_bit_for_bit():
    # 16 rows (a 10-row chunk's row bucket) in mini-batches of 10: the second holds padding only and is skipped
    # (it would be an exact no-op anyway); the result must equal one step on exactly the 10 real rows.
    rng = np.random.default_rng(4)
    x, y = _tokens(rng, 10)
    a = FOAL(projection_dim=PROJ, batch_size=10, solver="rls").partial_fit(x, y, classes=CLASSES)
    state = foal_fn.init(TOKEN, CLASSES, projection_dim=PROJ, solver="rls")
    fused = foal_fn.fused_features(state, x)
    ref = foal_fn.rls_step_checked(state.head, fused, np_one_hot(y, CLASSES))[0]
    assert np.array_equal(np.asarray(a.state.head.weight), np.asarray(ref.weight))
