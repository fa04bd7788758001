"""The host BLAS/LAPACK kernels (analytic.host_kernels) against independent float64 computations and their XLA twins.

Tolerances: the kernels and the references sum in different orders and blockings, so float64 results differ by
rounding only (≤ 1e-12 relative for these well-conditioned systems); integer-valued data makes every product
and sum exact, and there the paths must agree bit for bit.
"""

import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analytic import _openblas, _xla_ffi, host_kernels, rls_init
from analytic.rls import rls_step_checked
from analytic.solve import cholesky_ridge_solve, ridge_solve

pytestmark = pytest.mark.skipif(not host_kernels.enabled(jnp.zeros(1)), reason="host kernels serve the CPU backend")


@pytest.fixture(autouse=True, params=["numpy-blas", "scipy-blas"])
def blas_library(request, monkeypatch):
    # Every kernel test runs on both libraries the kernels can call: NumPy's BLAS through analytic._openblas (the
    # default where it binds) and SciPy's wrappers (the fallback everywhere else).
    if request.param == "scipy-blas":
        monkeypatch.setattr(_openblas, "routines", lambda dtype: None)
    elif _openblas.routines(np.float64) is None:
        pytest.skip("NumPy's BLAS does not bind here (the SciPy path is tested beside)")
    return request.param


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 1e-5)])
def test_gram_add_equals_numpy_and_is_exactly_symmetric(dtype, tol):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((37, 150)).astype(dtype), rng.standard_normal((37, 4)).astype(dtype)
    base = rng.standard_normal((60, 150)).astype(dtype)
    g0, h0 = base.T @ base, rng.standard_normal((150, 4)).astype(dtype)
    g, h = jax.jit(host_kernels.gram_add)(jnp.asarray(g0), jnp.asarray(h0), jnp.asarray(x), jnp.asarray(y))
    ref_g = g0.astype(np.float64) + x.astype(np.float64).T @ x
    ref_h = h0.astype(np.float64) + x.astype(np.float64).T @ y
    assert g.dtype == dtype and np.array_equal(g, np.asarray(g).T)
    np.testing.assert_allclose(g, ref_g, rtol=0, atol=tol * np.abs(ref_g).max())
    np.testing.assert_allclose(h, ref_h, rtol=0, atol=tol * np.abs(ref_h).max())


@pytest.mark.parametrize("transpose", ["omatcopy", "numpy"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", [1, 2, 127, 128, 129, 300, 2100])  # 2100: split between two threads
def test_mirror_copies_the_upper_triangle_exactly(d, dtype, transpose, monkeypatch):
    # Both transposes (OpenBLAS's omatcopy where a loaded BLAS has it, NumPy tiles otherwise), every panel edge.
    if transpose == "numpy":
        monkeypatch.setattr(_openblas, "routines", lambda dtype: None)
        monkeypatch.setattr(_openblas, "scipy_omatcopy", lambda dtype: None)
    elif _openblas.routines(dtype) is None and _openblas.scipy_omatcopy(dtype) is None:
        pytest.skip("no loaded OpenBLAS exports cblas_?omatcopy (the NumPy path is tested beside)")
    rng = np.random.default_rng(d)
    upper = np.triu(rng.standard_normal((d, d))).astype(dtype)
    g = upper + np.tril(np.full((d, d), np.nan, dtype), -1)     # the lower triangle must be overwritten entirely
    host_kernels._mirror_upper(g)
    assert np.array_equal(g, upper + np.triu(upper, 1).T)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gemm_helper_equals_numpy_for_every_layout_and_empty_shapes(dtype):
    # Integer-valued operands: every product and sum is exact, so layouts must agree bit for bit.
    rng = np.random.default_rng(7)
    a, b = rng.integers(-4, 5, (6, 9)).astype(dtype), rng.integers(-4, 5, (9, 5)).astype(dtype)
    for left in (a, np.asfortranarray(a), a.T.copy().T, np.ascontiguousarray(a[:, ::-1])[:, ::-1]):
        for right in (b, np.asfortranarray(b), b.T):
            right = right if right.shape == b.shape else right.T
            assert np.array_equal(host_kernels._gemm(left, right), a @ b)
    c = rng.integers(-4, 5, (6, 5)).astype(dtype)
    out = c.copy()
    host_kernels._gemm(a, b, out=out, alpha=-2.0, beta=3.0)
    assert np.array_equal(out, 3 * c - 2 * (a @ b))
    assert host_kernels._gemm(a[:, :0], b[:0]).shape == (6, 5) and not host_kernels._gemm(a[:, :0], b[:0]).any()
    assert host_kernels._gemm(a[:0], b).shape == (0, 5)
    out = c.copy()
    host_kernels._gemm(a[:, :0], b[:0], out=out, beta=2.0)
    assert np.array_equal(out, 2 * c)


def test_gram_add_leaves_its_inputs_intact_and_updates_in_place_when_donated():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.integers(-3, 4, (9, 70)).astype(np.float64))
    g0 = jnp.asarray(np.eye(70))
    h0 = jnp.zeros((70, 0))
    g, _ = jax.jit(host_kernels.gram_add)(g0, h0, x, jnp.zeros((9, 0)))
    assert np.array_equal(g0, np.eye(70))                                 # not donated: XLA copied before aliasing
    assert np.array_equal(g, np.eye(70) + np.asarray(x).T @ np.asarray(x))  # integers: exact
    donated = jax.jit(host_kernels.gram_add, donate_argnums=(0,))
    g1 = jnp.asarray(np.eye(70))
    pointer = g1.unsafe_buffer_pointer()
    g2, _ = donated(g1, h0, x, jnp.zeros((9, 0)))
    assert g2.unsafe_buffer_pointer() == pointer and g1.is_deleted()       # written where the Gram lay
    assert np.array_equal(g2, g)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-11), (np.float32, 2e-4)])
def test_cholesky_solve_equals_float64_solve_and_the_xla_twin(dtype, tol):
    rng = np.random.default_rng(2)
    f = rng.standard_normal((200, 120))
    a, b = (f.T @ f).astype(dtype), rng.standard_normal((120, 5)).astype(dtype)
    ref = np.linalg.solve(a.astype(np.float64) + 0.5 * np.eye(120), b.astype(np.float64))
    w, kappa = cholesky_ridge_solve(jnp.asarray(a), jnp.asarray(b), 0.5)
    w_xla, kappa_xla = cholesky_ridge_solve(jnp.asarray(a), jnp.asarray(b), 0.5, "xla")
    assert w.dtype == dtype
    np.testing.assert_allclose(w, ref, rtol=0, atol=tol * np.abs(ref).max())
    np.testing.assert_allclose(w, w_xla, rtol=0, atol=tol * np.abs(ref).max())
    np.testing.assert_allclose(float(kappa), float(kappa_xla), rtol=1e-4)


def test_cholesky_solve_flags_corrupt_and_indefinite_systems_with_nan():
    a = jnp.eye(4).at[0, 0].set(jnp.nan)
    assert np.isnan(float(cholesky_ridge_solve(a, jnp.ones((4, 1)), 1.0)[1]))
    indefinite = jnp.diag(jnp.array([1.0, -5.0, 1.0, 1.0]))
    assert np.isnan(float(cholesky_ridge_solve(indefinite, jnp.ones((4, 1)), 1.0)[1]))
    with pytest.raises(ValueError, match="NaN or inf"):
        ridge_solve(a, jnp.ones((4, 1)), 1.0)


def test_ridge_solve_takes_a_vector_right_hand_side():
    a = jnp.asarray(np.diag([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(ridge_solve(a, jnp.ones(3), 1.0), 1 / np.array([2.0, 3.0, 4.0]), rtol=1e-15)


def test_woodbury_step_equals_the_xla_twin_and_joint_ridge_after_a_stream():
    rng = np.random.default_rng(3)
    d, c, gamma = 48, 3, 0.7
    xs = rng.standard_normal((30, 10, d))
    ys = rng.standard_normal((30, 10, c))
    state = rls_init(d, c, gamma)
    for x, y in zip(xs, ys):
        state, health = rls_step_checked(state, jnp.asarray(x), jnp.asarray(y))
        assert bool(health.ok)
    x_all, y_all = xs.reshape(-1, d), ys.reshape(-1, c)
    joint = np.linalg.solve(x_all.T @ x_all + gamma * np.eye(d), x_all.T @ y_all)
    np.testing.assert_allclose(state.weight, joint, rtol=0, atol=1e-11 * np.abs(joint).max())
    r_ref = np.linalg.inv(x_all.T @ x_all + gamma * np.eye(d))
    np.testing.assert_allclose(state.inv_autocorr, r_ref, rtol=0, atol=1e-11 * np.abs(r_ref).max())
    assert np.array_equal(state.inv_autocorr, np.asarray(state.inv_autocorr).T)   # SYRK update: exactly symmetric


def test_woodbury_zero_rows_change_nothing_and_a_broken_k_is_flagged_unchanged():
    rng = np.random.default_rng(4)
    state = rls_init(20, 2, 1.0)
    x, y = rng.standard_normal((5, 20)), rng.standard_normal((5, 2))
    state, _ = rls_step_checked(state, jnp.asarray(x), jnp.asarray(y))
    same, health = rls_step_checked(state, jnp.zeros((6, 20)), jnp.zeros((6, 2)))
    assert bool(health.ok)
    assert np.array_equal(same.weight, state.weight) and np.array_equal(same.inv_autocorr, state.inv_autocorr)
    # An indefinite R makes K = I + X R Xᵀ indefinite for a suitable row: the step is flagged and not applied.
    bad = state._replace(inv_autocorr=-jnp.eye(20) * 10.0)
    out, health = rls_step_checked(bad, jnp.ones((1, 20)), jnp.ones((1, 2)))
    assert not bool(health.ok)


def test_a_failing_kernel_raises_an_xla_error_with_its_message():
    def exploding(ins, outs):
        raise RuntimeError("kernel exploded on purpose")

    callback = _xla_ffi.handler(exploding)
    jax.ffi.register_ffi_target("analytic_test_exploding", jax.ffi.pycapsule(callback), platform="cpu")
    call = jax.ffi.ffi_call("analytic_test_exploding", jax.ShapeDtypeStruct((2,), jnp.float64))
    with pytest.raises(Exception, match="kernel exploded on purpose"):
        jax.block_until_ready(jax.jit(call)(jnp.ones(2)))


def test_environment_switch_forces_the_xla_twins():
    code = ("import jax, jax.numpy as jnp; jax.config.update('jax_enable_x64', True);"
            "from analytic import gram_accumulate, gram_init;"
            "print('analytic_gram_add' in str(jax.make_jaxpr(gram_accumulate)(gram_init(512, 1),"
            " jnp.zeros((64, 512)), jnp.zeros((64, 1)))))")
    env = {**os.environ, "ANALYTIC_HOST_KERNELS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "ANALYTIC_HOST_KERNELS": "1"})
    assert out.stdout.strip() == "True"


def test_matmul_equals_numpy_and_differentiates_like_the_xla_dot():
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((70, 64)), rng.standard_normal((64, 90))  # 70·64·90 ≥ 2**18: the host path
    assert a.shape[0] * a.shape[1] * b.shape[1] >= host_kernels._MATMUL_MIN_FLOPS
    np.testing.assert_allclose(jax.jit(host_kernels.matmul)(a, b), a @ b, rtol=1e-13, atol=1e-13)

    def loss(mm):
        return lambda p, q: jnp.sum(jnp.tanh(mm(p, q)))

    xla = loss(lambda p, q: jnp.matmul(p, q, precision=jax.lax.Precision.HIGHEST))
    for got, want in zip(jax.grad(loss(host_kernels.matmul), (0, 1))(a, b), jax.grad(xla, (0, 1))(a, b)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    small = rng.standard_normal((3, 4))
    np.testing.assert_allclose(host_kernels.matmul(small, small.T), small @ small.T, rtol=1e-14)


def test_class_gram_add_equals_per_class_grams_and_refuses_without_writing():
    rng = np.random.default_rng(12)
    # Integer-valued rows: exact sums, so the per-class SYRKs must equal NumPy's products bit for bit.
    x = rng.integers(-3, 4, (40, 30)).astype(np.float64)
    labels = rng.integers(0, 3, 40).astype(np.int32)
    labels[-5:] = -1  # padding rows belong to no class
    grams = np.stack([np.eye(30) * (k + 1) for k in range(4)])
    got, ok = jax.jit(host_kernels.class_gram_add)(jnp.asarray(grams), jnp.zeros(30), jnp.asarray(x),
                                                   jnp.asarray(labels))
    want = grams.copy()
    for k in range(3):
        want[k] += x[labels == k].T @ x[labels == k]
    assert int(ok) == 1 and np.array_equal(np.asarray(got), want)
    huge = x.copy()
    huge[3] = 1e200
    donated = jax.jit(lambda g, d, a, b: host_kernels.class_gram_add(g, d, a, b, in_place=True), donate_argnums=0)
    kept, ok = donated(jnp.asarray(grams), jnp.zeros(30), jnp.asarray(huge), jnp.asarray(labels))
    assert int(ok) == 0 and np.array_equal(np.asarray(kept), grams)
    # The total's diagonal is tested too: each class fits, their sum would not.
    top = np.finfo(np.float64).max
    ones = np.full((40, 30), np.sqrt(0.2 * top / 35))  # 35 real rows: each column's squares sum to 0.2·max
    args = (jnp.asarray(grams), jnp.asarray(ones), jnp.asarray(labels))
    _, ok = jax.jit(host_kernels.class_gram_add)(args[0], jnp.full(30, 0.2 * top), *args[1:])
    assert int(ok) == 1  # every class and the total stay below max/2
    _, ok = jax.jit(host_kernels.class_gram_add)(args[0], jnp.full(30, 0.4 * top), *args[1:])
    assert int(ok) == 0  # the classes still would, the total (0.6·max) would not


def test_a_refused_woodbury_step_leaves_a_donated_state_as_it_was():
    rng = np.random.default_rng(13)
    state = rls_init(20, 2, 1.0)
    state, _ = rls_step_checked(state, jnp.asarray(rng.standard_normal((5, 20))), jnp.asarray(np.ones((5, 2))))
    want = [np.array(a) for a in state]
    step = jax.jit(lambda s, x, y: rls_step_checked(s, x, y, in_place=True), donate_argnums=0)
    # K fine, but W' overflows (a huge W, so Y − XW does): judged before anything is written, so the donated W
    # and R come back unchanged.
    huge = state._replace(weight=jnp.full((20, 2), 1e307))
    want = [np.array(a) for a in huge]
    kept, health = step(jax.tree.map(jnp.copy, huge), jnp.ones((1, 20)), jnp.full((1, 2), -1e308))
    assert not bool(health.ok) and all(np.array_equal(np.asarray(a), b) for a, b in zip(kept, want))
    # An indefinite R (K not positive definite): likewise.
    bad = jax.tree.map(jnp.copy, state)._replace(inv_autocorr=-jnp.eye(20) * 10.0)
    kept, health = step(bad, jnp.ones((1, 20)), jnp.ones((1, 2)))
    assert not bool(health.ok) and np.array_equal(np.asarray(kept.inv_autocorr), -np.eye(20) * 10.0)
    # A sound step on the donated state updates it in place.
    good = jax.tree.map(jnp.copy, state)
    pointer = good.inv_autocorr.unsafe_buffer_pointer()
    new, health = step(good, jnp.asarray(rng.standard_normal((3, 20))), jnp.ones((3, 2)))
    assert bool(health.ok) and new.inv_autocorr.unsafe_buffer_pointer() == pointer


def test_woodbury_drops_zero_rows_and_returns_the_identity_there():
    # Zero rows (padding, interleaved here) are exact no-ops: the step must equal the step on the other rows alone
    # (float64 rounding: both run the same kernel on the same live rows, so bit for bit), and L must be that
    # step's factor embedded in the identity; a zero X row with a non-zero target changes nothing either.
    rng = np.random.default_rng(8)
    d, c = 40, 3
    state, _ = rls_step_checked(rls_init(d, c, 0.5), jnp.asarray(rng.standard_normal((7, d))),
                                jnp.asarray(rng.standard_normal((7, c))))
    x, y = rng.standard_normal((5, d)), rng.standard_normal((5, c))
    live = np.array([0, 2, 3, 6, 7])
    xp, yp = np.zeros((9, d)), rng.standard_normal((9, c))  # targets of the zero rows are not zero on purpose
    xp[live], yp[live] = x, y
    w, r, chol, ok, _ = host_kernels.woodbury_step(state.weight, state.inv_autocorr, jnp.asarray(xp),
                                                   jnp.asarray(yp))
    w5, r5, chol5, ok5, _ = host_kernels.woodbury_step(state.weight, state.inv_autocorr, jnp.asarray(x),
                                                       jnp.asarray(y))
    assert int(ok) == int(ok5) == 1
    assert np.array_equal(w, w5) and np.array_equal(r, r5)
    expected = np.eye(9)
    expected[np.ix_(live, live)] = chol5
    assert np.array_equal(chol, expected)
    # And it is the Woodbury step: W' = W + R Xᵀ K⁻¹ (Y − X W) on the live rows, in float64 NumPy.
    r0, w0 = np.asarray(state.inv_autocorr), np.asarray(state.weight)
    gain = r0 @ x.T @ np.linalg.inv(np.eye(5) + x @ r0 @ x.T)
    np.testing.assert_allclose(w, w0 + gain @ (y - x @ w0), rtol=0, atol=1e-12 * np.abs(w5).max())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_split_mirror_works_in_a_forked_child():
    # The parent's mirror pool has a worker thread; a forked child must not submit to the dead copy of it.
    g = np.triu(np.random.default_rng(0).standard_normal((2100, 2100)))
    want = g + np.triu(g, 1).T
    host_kernels._mirror_upper(g.copy())                 # the parent's pool now exists
    pid = os.fork()
    if pid == 0:                                         # child: exit status 0 only if the mirror is right
        signal.alarm(60)                                 # a hang (the dead pool) ends as SIGALRM, not a stuck run
        ok = False
        try:
            h = g.copy()
            host_kernels._mirror_upper(h)
            ok = bool(np.array_equal(h, want))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite_agrees_with_isfinite_including_where_the_sum_of_squares_overflows(dtype):
    from analytic.host_kernels import _all_finite

    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 30)).astype(dtype)
    huge = a.copy()
    huge[3, 4] = np.finfo(dtype).max / 4  # finite, but its square overflows the BLAS sum: the exact scan decides
    cases = [a, huge, a[:, ::2], np.zeros((0, 3), dtype)]
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[7, 11] = bad
        cases.append(b)
    for c in cases:
        assert _all_finite(c) == bool(np.isfinite(c).all())


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
def test_cholesky_and_triangular_solves_of_both_libraries_equal_numpy(dtype, tol, blas_library):
    # The factor helpers behind the Cholesky and Woodbury kernels, on whichever library the fixture selected:
    # U with UᵀU = A in the upper triangle (the lower one keeps its input), solves with U and Uᵀ from either side,
    # and a non-definite matrix reported by LAPACK's info.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((80, 50))
    a = (x.T @ x + np.eye(50)).astype(dtype)
    m = a.copy()
    assert host_kernels._potrf_upper(m) == 0
    u = np.triu(m)
    np.testing.assert_allclose(u.T.astype(np.float64) @ u, a, rtol=0, atol=tol * np.abs(a).max())
    assert np.array_equal(np.tril(m, -1), np.tril(a, -1))
    b = rng.standard_normal((50, 7)).astype(dtype)
    u64 = u.astype(np.float64)
    for right, trans in ((False, False), (False, True), (True, False), (True, True)):
        rhs = b.T.copy() if right else b.copy()
        op = u64.T if trans else u64
        expect = rhs.astype(np.float64) @ np.linalg.inv(op) if right else np.linalg.solve(op, rhs.astype(np.float64))
        got = host_kernels._trsm_upper(m, rhs, right=right, trans=trans)
        np.testing.assert_allclose(got, expect, rtol=0, atol=tol * 10 * np.abs(expect).max())
    indefinite = a.copy()
    indefinite[10, 10] = -1.0
    assert host_kernels._potrf_upper(indefinite) > 0


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
def test_eigh_kernel_equals_numpy_and_its_xla_twin(dtype, tol):
    # Eigenvalues ascending as numpy's, orthonormal eigenvectors that rebuild the symmetric part, the same as
    # jnp.linalg.eigh; a NaN input gives NaN (not an exception) as the XLA path does.
    rng = np.random.default_rng(11)
    a = rng.standard_normal((70, 70)).astype(dtype)
    sym = 0.5 * (a.astype(np.float64) + a.astype(np.float64).T)
    lam, u = jax.jit(host_kernels.eigh)(jnp.asarray(a))
    lam, u = np.asarray(lam, np.float64), np.asarray(u, np.float64)
    scale = np.abs(sym).max()
    np.testing.assert_allclose(lam, np.linalg.eigvalsh(sym), rtol=0, atol=tol * scale)
    np.testing.assert_allclose(u.T @ u, np.eye(70), rtol=0, atol=tol * 10)
    np.testing.assert_allclose((u * lam) @ u.T, sym, rtol=0, atol=tol * 10 * scale)
    lam_xla = np.asarray(jnp.linalg.eigh(jnp.asarray(0.5 * (a + a.T)))[0], np.float64)
    np.testing.assert_allclose(lam, lam_xla, rtol=0, atol=tol * scale)
    bad = a.copy()
    bad[3, 5] = np.nan
    assert np.isnan(np.asarray(host_kernels.eigh(jnp.asarray(bad))[0])).all()
