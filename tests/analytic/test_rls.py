import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analytic import expand_classes, rls_init, rls_step, rls_update

from .helpers import joint_ridge, rel_err, stream


def _random_split(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, n), size=rng.integers(3, 7), replace=False))
    return np.split(np.arange(n), cuts)


@pytest.mark.parametrize("seed", [0, 1])
def test_rls_equals_joint_ridge_for_any_batch_split_with_classes_appearing_mid_stream(seed):
    # Classes arrive in label order, so the head grows columns several times. Float64 tolerance 1e-9: the
    # recursion's rounding error is ~κ·eps·steps ≈ 1e-12 here; 1e-9 leaves room and still fails for any real bug.
    x, y = stream(seed)
    state = rls_init(x.shape[1], 0, gamma=0.7)
    seen_classes = []
    for part in _random_split(len(y), seed):
        state = rls_update(state, x[part], y[part])
        seen_classes.append(state.classes)
        assert rel_err(state.weight, joint_ridge(x[: part[-1] + 1], y[: part[-1] + 1], 0.7, state.classes)) < 1e-9
    assert len(set(seen_classes)) > 2
    np.testing.assert_allclose(state.inv_autocorr, np.linalg.inv(x.T @ x + 0.7 * np.eye(x.shape[1])), rtol=1e-8,
                               atol=1e-12)


def test_rls_batch_order_does_not_matter():
    x, y = stream(5)
    parts = _random_split(len(y), 5)
    a = rls_init(x.shape[1], 8, 1.0)
    b = rls_init(x.shape[1], 8, 1.0)
    for p in parts:
        a = rls_update(a, x[p], y[p])
    for p in reversed(parts):
        b = rls_update(b, x[p], y[p])
    assert rel_err(a.weight, b.weight) < 1e-10


def test_rls_accepts_dense_targets_and_expand_classes_is_exact():
    x, y = stream(6, classes=5)
    targets = np.eye(7)[y]                      # 7 columns, two never used
    state = expand_classes(rls_init(x.shape[1], 0, 2.0), 3)
    state = rls_update(state, x, targets)
    assert state.classes == 7
    assert rel_err(state.weight, joint_ridge(x, targets, 2.0)) < 1e-9
    assert np.all(np.asarray(state.weight[:, 5:]) == 0)
    with pytest.raises(ValueError, match="shrink"):
        expand_classes(state, 4)


def test_rls_zero_row_padding_is_exact_and_fixed_shape_compiles_once():
    x, y = stream(7, n=200, d=12, classes=3)
    t = jax.nn.one_hot(y, 3, dtype=jnp.float64)
    a = rls_step(rls_init(12, 3, 1.0), jnp.asarray(x[:13]), t[:13])
    pad = ((0, 3), (0, 0))
    b = rls_step(rls_init(12, 3, 1.0), jnp.pad(jnp.asarray(x[:13]), pad), jnp.pad(t[:13], pad))
    # Padded rows add identity rows to K = I + XRXᵀ; the factorization of a block-diagonal matrix is blockwise,
    # so the only difference is floating summation order over a few exact zeros: 1e-14.
    assert rel_err(b.weight, a.weight) < 1e-14 and rel_err(b.inv_autocorr, a.inv_autocorr) < 1e-14
    state = rls_update(rls_init(12, 3, 1.0), x[:20], y[:20])
    size = rls_step._cache_size()
    for i in range(20, 180, 20):
        state = rls_update(state, x[i:i + 20], y[i:i + 20])
    assert rls_step._cache_size() == size


def test_float32_stream_of_10000_updates_stays_within_documented_bound():
    # Documented bound (README, analytic section): a float32 recursion over 10k updates stays within 5e-5
    # relative (Frobenius) of the float64 joint ridge solution on well-scaled features; measured ≈3e-6 here.
    # rls_step is the same function rls_update calls; lax.scan only removes Python dispatch from the test.
    rng = np.random.default_rng(8)
    d, c, b, steps = 32, 10, 4, 10_000
    x = rng.standard_normal((steps * b, d))
    y = rng.integers(0, c, steps * b)
    xs = jnp.asarray(x, jnp.float32).reshape(steps, b, d)
    ys = jax.nn.one_hot(y, c, dtype=jnp.float32).reshape(steps, b, c)
    final, _ = jax.lax.scan(lambda s, xy: (rls_step(s, *xy), None), rls_init(d, c, 0.1, jnp.float32), (xs, ys))
    assert final.weight.dtype == jnp.float32
    err = rel_err(final.weight, joint_ridge(x, y, 0.1, c))
    assert err < 5e-5, err
