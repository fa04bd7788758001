import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analytic import GramStats, gram_accumulate, gram_init, gram_merge, gram_solve, gram_update, row_bucket

from .helpers import joint_ridge, rel_err, stream


def _close(a: GramStats, b: GramStats, tol: float) -> None:
    assert a.xty.shape == b.xty.shape
    np.testing.assert_allclose(a.xtx, b.xtx, rtol=0, atol=tol * float(jnp.abs(b.xtx).max()))
    np.testing.assert_allclose(a.xty, b.xty, rtol=0, atol=tol * float(jnp.abs(b.xty).max()))
    assert int(a.count) == int(b.count)


def test_gram_equals_xtx_and_grows_classes_mid_stream():
    x, y = stream(0)
    stats = gram_init(x.shape[1])
    for part in np.array_split(np.arange(len(y)), 7):
        stats = gram_update(stats, x[part], y[part])
    np.testing.assert_allclose(stats.xtx, x.T @ x, rtol=1e-12)
    np.testing.assert_allclose(stats.xty, x.T @ np.eye(8)[y], rtol=1e-12, atol=1e-12)
    assert int(stats.count) == len(y) and stats.classes == 8


def test_gram_merge_is_associative_and_commutative():
    # Float64 sums in a different order differ only by rounding: 1e-13 relative to the largest entry.
    x, y = stream(1)
    parts = np.array_split(np.random.default_rng(1).permutation(len(y)), 3)
    a, b, c = (gram_update(gram_init(x.shape[1]), x[p], y[p]) for p in parts)
    _close(gram_merge(gram_merge(a, b), c), gram_merge(a, gram_merge(b, c)), 1e-13)
    _close(gram_merge(a, b), gram_merge(b, a), 1e-13)
    _close(gram_merge(a, gram_init(x.shape[1])), a, 0.0)          # identity element
    whole = gram_update(gram_init(x.shape[1]), x, y)
    _close(gram_merge(gram_merge(a, b), c), whole, 1e-13)


def test_zero_row_padding_is_exact():
    # The public update pads a short batch with zero rows; compare against the unpadded product bit for bit on
    # data whose products are exact in float64 (small integers), so any contribution of the padding would show.
    rng = np.random.default_rng(2)
    x = rng.integers(-3, 4, (13, 5)).astype(np.float64)
    y = rng.integers(0, 3, 13)
    padded = gram_update(gram_init(5), x, y)
    assert row_bucket(13) > 13
    exact = gram_accumulate(gram_init(5, 3), jnp.asarray(x), jax.nn.one_hot(y, 3, dtype=jnp.float64))
    assert np.array_equal(padded.xtx, exact.xtx) and np.array_equal(padded.xty, exact.xty)
    assert int(padded.count) == 13


def test_fixed_batch_shape_compiles_once_and_short_tail_once_more():
    x, y = stream(3, n=64 * 10 + 17, d=16, classes=4)
    stats = gram_update(gram_init(16, 4), x[:64], y[:64])       # warm the 64-row program
    before = gram_accumulate._cache_size()
    for i in range(64, 640, 64):
        stats = gram_update(stats, x[i:i + 64], y[i:i + 64])
    assert gram_accumulate._cache_size() == before             # no recompilation per batch
    stats = gram_update(stats, x[640:], y[640:])                # 17-row tail: padded to 24 rows, one program
    stats = gram_update(stats, x[600:619], y[600:619])          # 19 rows share the 24-row program
    assert gram_accumulate._cache_size() == before + 1
    assert int(stats.count) == len(y) + 19


def test_row_bucket_bounds_waste():
    for n in range(1, 5000):
        b = row_bucket(n)
        assert b >= n and (n <= 64 or b <= 1.26 * n)
    assert len({row_bucket(n) for n in range(1, 4097)}) < 60      # a bounded number of programs


def test_float32_blocks_into_float64_accumulators():
    # compute_dtype=float32 is the fast CPU path: each block product carries float32 rounding (~1e-7 relative),
    # the running sum does not grow it further because it is kept in float64.
    x, y = stream(4, n=2000, d=32)
    stats = gram_init(32)
    for part in np.array_split(np.arange(len(y)), 20):
        stats = gram_update(stats, x[part], y[part], compute_dtype=jnp.float32)
    assert stats.xtx.dtype == jnp.float64
    assert rel_err(stats.xtx, x.T @ x) < 1e-6
    assert rel_err(gram_solve(stats, 1.0), joint_ridge(x, y, 1.0)) < 1e-5


def test_gram_merge_refuses_mismatched_dims_and_dtypes():
    with pytest.raises(ValueError, match="dims differ"):
        gram_merge(gram_init(3), gram_init(4))
    with pytest.raises(TypeError, match="dtypes differ"):
        gram_merge(gram_init(3, dtype=jnp.float32), gram_init(3, dtype=jnp.float64))


@pytest.mark.parametrize("d", [1023, 1024, 1500, 4096])
def test_symmetric_panel_gram_equals_full_product(d):
    # The panel scheme changes only which GEMMs run, not the arithmetic of each entry: 1e-13 relative in float64.
    from analytic.gram import symmetric_gram

    x = np.random.default_rng(d).standard_normal((40, d))
    g = np.asarray(jax.jit(symmetric_gram)(jnp.asarray(x)))
    np.testing.assert_allclose(g, x.T @ x, rtol=0, atol=1e-13 * np.abs(x.T @ x).max())
    xtx = gram_accumulate(gram_init(d, 1), jnp.asarray(x), jnp.ones((40, 1))).xtx
    assert np.array_equal(xtx, xtx.T)                  # the accumulated Gram is exactly symmetric


# Float64 reference tolerance: the host SYRK, XLA's (panel) GEMMs and NumPy's reference sum each entry in different
# orders and blockings, so entries differ by rounding only, ~sqrt(n)·eps relative to the largest entry; float32
# blocks carry float32 rounding (eps 6e-8) of each product instead.
_TOL = {np.float64: 1e-13, np.float32: 1e-5}


@pytest.mark.parametrize("dt,acc", [(np.float64, np.float64), (np.float32, np.float32), (np.float32, np.float64)])
def test_host_and_xla_paths_equal_numpy_reference_and_stay_exactly_symmetric(dt, acc):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 96))
    y = rng.standard_normal((300, 7))
    ref_xtx, ref_xty = x.T @ x, x.T @ y
    start = gram_init(96, 7, acc)
    start = start._replace(xtx=jnp.asarray(ref_xtx, acc))                   # a non-zero accumulator, still symmetric
    cd = None if dt == acc else dt
    out = {impl: gram_accumulate(start, jnp.asarray(x, dt), jnp.asarray(y, dt), None, cd, impl)
           for impl in ("host", "xla")}
    for impl, s in out.items():
        assert s.xtx.dtype == acc and s.xty.dtype == acc, impl
        assert np.array_equal(s.xtx, s.xtx.T), impl                           # exactly symmetric, both paths
        np.testing.assert_allclose(s.xtx, 2 * ref_xtx, rtol=0, atol=_TOL[dt] * np.abs(2 * ref_xtx).max())
        np.testing.assert_allclose(s.xty, ref_xty, rtol=0, atol=_TOL[dt] * np.abs(ref_xty).max())
    np.testing.assert_allclose(out["host"].xtx, out["xla"].xtx, rtol=0, atol=_TOL[dt] * np.abs(ref_xtx).max())


def test_host_path_float32_block_is_cast_after_the_product():
    # float32 compute into float64 accumulators: the block equals the float32 product cast to float64 (not a
    # float64 product of float32-rounded inputs, which would be more accurate than float32 compute can be).
    rng = np.random.default_rng(6)
    x = rng.standard_normal((200, 64)).astype(np.float32)
    block = (x.T @ x).astype(np.float64)                                     # NumPy's own float32 SYRK, cast
    s = gram_accumulate(gram_init(64, 1, jnp.float64), jnp.asarray(x), jnp.ones((200, 1), jnp.float32), None,
                        jnp.float32, "host")
    assert s.xtx.dtype == jnp.float64
    exact = x.astype(np.float64).T @ x.astype(np.float64)
    scale = np.abs(exact).max()
    np.testing.assert_allclose(s.xtx, block, rtol=0, atol=1e-6 * scale)     # float32 rounding of one product
    assert np.abs(s.xtx - exact).max() > 1e-10 * scale                       # ... and it really ran in float32


def test_host_path_padding_rows_are_exact_and_rows_may_be_traced():
    rng = np.random.default_rng(7)
    x = rng.integers(-3, 4, (13, 5)).astype(np.float64)
    y = jax.nn.one_hot(rng.integers(0, 3, 13), 3, dtype=jnp.float64)
    padded_x, padded_y = jnp.pad(jnp.asarray(x), ((0, 11), (0, 0))), jnp.pad(y, ((0, 11), (0, 0)))

    @jax.jit
    def step(stats, xb, yb, rows):
        return gram_accumulate(stats, xb, yb, rows, None, "host")

    a = step(gram_init(5, 3), padded_x, padded_y, jnp.int32(13))
    b = gram_accumulate(gram_init(5, 3), jnp.asarray(x), y, None, None, "xla")
    # Small integers: every product and sum is exact in float64, so the paths must agree bit for bit.
    assert np.array_equal(a.xtx, b.xtx) and np.array_equal(a.xty, b.xty) and np.array_equal(a.xtx, x.T @ x)
    assert int(a.count) == 13


def test_host_path_under_vmap_equals_per_item_results():
    rng = np.random.default_rng(8)
    xs, ys = jnp.asarray(rng.standard_normal((3, 40, 16))), jnp.asarray(rng.standard_normal((3, 40, 2)))
    batched = jax.vmap(lambda x, y: gram_accumulate(gram_init(16, 2), x, y, None, None, "host"))(xs, ys)
    for i in range(3):
        one = gram_accumulate(gram_init(16, 2), xs[i], ys[i], None, None, "host")
        assert np.array_equal(batched.xtx[i], one.xtx) and np.array_equal(batched.xty[i], one.xty)


def test_auto_picks_host_kernel_for_cpu_blocks_and_xla_for_tiny_ones():
    def uses_host(n, d, dtype=jnp.float64):
        jaxpr = jax.make_jaxpr(lambda s, x, y: gram_accumulate(s, x, y))(
            gram_init(d, 1, dtype), jnp.zeros((n, d), dtype), jnp.zeros((n, 1), dtype))
        return "analytic_gram_add" in str(jaxpr)

    on_cpu = jax.default_backend() == "cpu"
    assert uses_host(256, 2048) == on_cpu and uses_host(10, 1024) == on_cpu
    assert not uses_host(64, 16)                                   # below 2**18 multiply-adds: XLA
    assert not uses_host(256, 2048, jnp.bfloat16)                  # no bfloat16 BLAS


@pytest.mark.parametrize("impl", ["host", "xla"])
def test_checked_accumulate_commits_sound_batches_and_returns_refused_ones_unchanged(impl):
    from analytic import gram_accumulate_checked, host_kernels

    if impl == "host" and not host_kernels.enabled(jnp.zeros(1)):
        pytest.skip("the host kernels serve the CPU backend")
    rng = np.random.default_rng(3)
    # Integer-valued rows: every product and sum is exact, so the checked step must equal the plain one bit for bit.
    x0, x = (rng.integers(-3, 4, (n, 40)).astype(np.float64) for n in (30, 12))
    y0, y = np.eye(3)[rng.integers(0, 3, 30)], np.eye(3)[rng.integers(0, 3, 12)]
    stats = gram_accumulate(gram_init(40, 3), jnp.asarray(x0), jnp.asarray(y0), impl=impl)
    new, ok = gram_accumulate_checked(stats, jnp.asarray(x), jnp.asarray(y), impl=impl)
    want = gram_accumulate(stats, jnp.asarray(x), jnp.asarray(y), impl=impl)
    assert bool(ok) and all(np.array_equal(a, b) for a, b in zip(new, want))
    # A row whose squares overflow: refused, the same values come back and the rows are not counted.
    huge = x.copy()
    huge[4, 7] = 1e200
    same, ok = gram_accumulate_checked(stats, jnp.asarray(huge), jnp.asarray(y), impl=impl)
    assert not bool(ok) and all(np.array_equal(a, b) for a, b in zip(same, stats))
    # Donated with in_place=True: a refused batch leaves the donated buffers holding the old statistics, a sound
    # one updates them (on the host path where they lie).
    step = jax.jit(lambda s, a, b: gram_accumulate_checked(s, a, b, impl=impl, in_place=True), donate_argnums=0)
    kept = step(jax.tree.map(jnp.copy, stats), jnp.asarray(huge), jnp.asarray(y))[0]
    assert all(np.array_equal(a, b) for a, b in zip(kept, stats))
    before = kept.xtx.unsafe_buffer_pointer()
    updated, ok = step(kept, jnp.asarray(x), jnp.asarray(y))
    assert bool(ok) and all(np.array_equal(a, b) for a, b in zip(updated, want))
    if impl == "host":
        assert updated.xtx.unsafe_buffer_pointer() == before


@pytest.mark.parametrize("solver", ["gram", "rls"])
def test_estimator_keeps_its_statistics_through_a_refused_batch_despite_donation(solver):
    from analytic import AnalyticLinear

    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((50, 16)), rng.integers(0, 3, 50)
    est = AnalyticLinear(0.5, solver=solver).partial_fit(x, y)
    consumed = est.state_[1]
    est.partial_fit(x[:10], y[:10])
    assert consumed.is_deleted()  # donated: updated in place
    snapshot = [np.array(a) for a in est.state_]
    bad = x[:5].copy()
    bad[2, 3] = 1e200
    with pytest.raises(ValueError, match="row 2"):
        est.partial_fit(bad, np.array([0, 1, 2, 3, 4]))  # new class ids: the refused step had widened the head
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(est.state_, snapshot))
    est.partial_fit(x[:10], y[:10])  # still usable, and equal to a fit that never saw the bad batch
    clean = AnalyticLinear(0.5, solver=solver).partial_fit(x, y).partial_fit(x[:10], y[:10]).partial_fit(x[:10],
                                                                                                      y[:10])
    np.testing.assert_array_equal(np.asarray(est.coef_), np.asarray(clean.coef_))
