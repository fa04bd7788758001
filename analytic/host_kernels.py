"""Host BLAS/LAPACK kernels for the CPU backend, called from jitted code through the XLA FFI without copies.

On the CPU backend XLA's own kernels for the three operations every analytic learner runs are measurably slower
than the host's BLAS/LAPACK (2-core EPYC, float64): a Gram block ``xᵀx`` runs as a full GEMM where BLAS offers
the half-flop SYRK; a ``d×d`` Cholesky and the triangular solves of ``(XᵀX + γI)⁻¹XᵀY`` run 2-20× below
LAPACK's ``potrf``/``potrs``; and a thin Woodbury step (a 10-row batch) is dominated by passes over ``R`` that
NumPy makes once. :func:`jax.pure_callback` can reach the host BLAS, but copies every operand and result
(64 MB of input for an 8192×1024 block cost more than the SYRK itself).

This module registers its kernels with the XLA FFI (:func:`jax.ffi.register_ffi_target`, typed API). Each is a
Python function behind a ``ctypes`` C callback (:mod:`analytic._xla_ffi`): XLA passes it pointers to its buffers,
the handler wraps them as NumPy arrays *in place* (no copy) and calls BLAS/LAPACK on them, writing into the result
buffers -- which may alias the accumulated state (``in_place=True``, ``input_output_aliases``) so a step on a
donated state, or inside a ``scan``, updates it where it lies. Every routine of every kernel comes from one library:
NumPy's own BLAS (``np.matmul`` and the bindings of :mod:`analytic._openblas`) where it binds, else SciPy's wrappers
throughout -- the NumPy and SciPy wheels bundle separate OpenBLAS builds whose idle threads spin against each other.

* :func:`matmul` -- large products (buffer maps, fusion, read-outs), differentiable through a custom JVP.
* :func:`gram_add` -- ``(G + xᵀx, H + xᵀy)``: SYRK into one triangle of ``G`` plus a mirror (OpenBLAS's
  transpose), so ``G`` stays exactly symmetric; :func:`gram_add_checked` adds only a sound batch, judged before
  anything is written, and :func:`class_gram_add` does it per class (AIR).
* :func:`cholesky_solve` -- ``(A + γI)⁻¹B`` by ``potrf``/``potrs`` and the pivot-ratio estimate κ̂ (NaN when the
  factorization failed or ``A``/``B`` were not finite), as :func:`analytic.cholesky_ridge_solve` returns.
* :func:`woodbury_step` -- one recursive-least-squares step (ACIL, Zhuang et al., NeurIPS 2022, §3):
  ``K = I + X R Xᵀ = LLᵀ``, ``V = R Xᵀ L⁻ᵀ``, ``R' = R − VVᵀ`` (a SYRK: exactly symmetric), ``W' = W + V L⁻¹ (Y − XW)``,
  judged (:func:`analytic.health.rls_health`'s verdict) before anything is written.

Every kernel has an XLA twin in the module that uses it; :func:`enabled` decides per call at trace time: the CPU
backend, float32/float64 operands, and the FFI registration having succeeded (set ``ANALYTIC_HOST_KERNELS=0``
in the environment before the first call to force the XLA twins: compiled programs keep their choice). Apart from
:func:`matmul` the kernels are not differentiable; under ``vmap`` they loop (``vmap_method="sequential"``). An
exception inside a kernel becomes an XLA runtime error carrying its message.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import blas, lapack

from analytic import _openblas, _xla_ffi
from analytic._openblas import NO_TRANS, NON_UNIT, RIGHT, ROW_MAJOR, TRANS, UPPER

__all__ = ["enabled", "matmul", "gram_add", "gram_add_checked", "class_gram_add", "cholesky_solve", "woodbury_step",
           "sum_of_squares", "eigh"]


# -- the kernels (NumPy views of XLA's buffers in, results written in place) --------------------------------------
_MIRROR_TILE = 128  # panel width of the mirror: 64-256 measured within 10% with omatcopy, 512 2-3× slower
_MIRROR_SPLIT_BYTES = 1 << 24  # from 16 MB (float64 d = 1448) up two threads transpose: 8.3 -> 5.9 ms at d = 2048
_MIRROR_POOL: Any = None


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _forget_mirror_pool() -> None:
    # A forked child inherits the pool object but not its thread: work submitted there would never run.
    global _MIRROR_POOL
    _MIRROR_POOL = None


os.register_at_fork(after_in_child=_forget_mirror_pool)


def _mirror_panels(g: np.ndarray, start: int, stop: int, transpose: Any) -> None:
    """The panels below the diagonal blocks ``start, start + t, ... < stop`` (see :func:`_mirror_upper`)."""
    d, t, base, item = g.shape[0], _MIRROR_TILE, g.ctypes.data, g.itemsize
    for i in range(start, stop, t):
        j = min(i + t, d)
        if j == d:
            continue
        if transpose is not None:
            # g[j:, i:j] = g[i:j, j:]ᵀ: a (j-i)×(d-j) source of leading dimension d into a (d-j)×(j-i) target.
            transpose(ROW_MAJOR, TRANS, j - i, d - j, 1.0, base + (i * d + j) * item, d, base + (j * d + i) * item, d)
        else:
            for k in range(j, d, t):
                g[k:k + t, i:j] = g[i:j, k:k + t].T


def _mirror_upper(g: np.ndarray) -> None:
    """Copy the upper triangle of the C-ordered square ``g`` onto its lower one, panel by panel: each panel below a
    diagonal block as the transpose of the panel to its right (OpenBLAS's ``omatcopy``, :mod:`analytic._openblas`;
    NumPy tiles where it is not bound), the diagonal blocks by one indexed NumPy copy (:func:`_diagonal_block_pairs`).

    A large ``g`` is split between this thread and one worker at the panel that halves the area (ctypes releases
    the GIL for the foreign call, so the two transposes run at once); the panels are disjoint."""
    global _MIRROR_POOL
    d, t = g.shape[0], _MIRROR_TILE
    transpose = None
    if g.flags.c_contiguous:
        fast = _openblas.routines(g.dtype)
        transpose = fast.omatcopy if fast is not None else _openblas.scipy_omatcopy(g.dtype)
    cut = 0
    if transpose is not None and g.nbytes >= _MIRROR_SPLIT_BYTES and cpu_count() > 1:
        cut = int(d * (1 - 2 ** -0.5)) // t * t  # panels [0, cut) hold about half the lower triangle
    if cut:
        if _MIRROR_POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            _MIRROR_POOL = ThreadPoolExecutor(1, thread_name_prefix="analytic-mirror")
        later = _MIRROR_POOL.submit(_mirror_panels, g, cut, d, transpose)
        _mirror_panels(g, 0, cut, transpose)
        later.result()
    else:
        _mirror_panels(g, 0, d, transpose)
    if g.flags.c_contiguous:
        lower, upper = _diagonal_block_pairs(d)
        flat = g.reshape(-1)  # a view of g's memory
        flat[lower] = flat[upper]
        return
    for i in range(0, d, t):
        block = g[i:i + t, i:i + t]
        block[...] = np.triu(block) + np.triu(block, 1).T


@functools.lru_cache(maxsize=8)
def _diagonal_block_pairs(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the strictly lower entries of the mirror's ``t×t`` diagonal blocks of a ``d×d`` matrix and
    of their upper twins: the diagonal blocks become one indexed copy (0.27 against 0.80 ms for ``np.triu`` per
    block at d = 1024, float64; the whole mirror went from 1.74 to 1.14 ms)."""
    t = _MIRROR_TILE
    rows, cols = np.tril_indices(t, -1)
    starts = np.arange(0, d, t)[:, None]
    r, c = (starts + rows).ravel(), (starts + cols).ravel()
    keep = r < d  # rows < d implies cols < d (cols < rows)
    r, c = r[keep].astype(np.intp), c[keep].astype(np.intp)
    return r * d + c, c * d + r


def _blas(name: str, dtype: np.dtype) -> Any:
    return getattr(blas, ("d" if dtype == np.float64 else "s") + name)


def _fortran(a: np.ndarray) -> tuple[np.ndarray, int]:
    """``(f, t)`` with ``f`` Fortran-ordered and ``op_t(f) == a``: a C-ordered array is its transpose's F view."""
    if a.flags.f_contiguous:
        return a, 0
    if a.flags.c_contiguous:
        return a.T, 1
    return np.asfortranarray(a), 0


def _gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, alpha: float = 1.0,
          beta: float = 0.0) -> np.ndarray:
    """``α a b (+ β out)``, C-ordered: NumPy's ``np.matmul`` where the other routines are NumPy's BLAS too
    (:mod:`analytic._openblas`), else SciPy's GEMM as ``(bᵀaᵀ)ᵀ`` on F views (no copies).

    Every product of a kernel runs in one BLAS library: the NumPy and SciPy wheels bundle separate OpenBLAS builds
    whose idle worker threads spin, and alternating between them measured 2-8× slower than either alone on a
    2-core machine (a 1024² SYRK followed by a 1024×10 GEMM: 8.0 ms mixed, 1.0 ms in one).
    """
    m, n = a.shape[0], b.shape[1]
    if out is None and (m == 0 or n == 0 or a.shape[1] == 0):
        return np.zeros((m, n), np.result_type(a, b))
    if out is not None and (out.size == 0 or a.shape[1] == 0):
        out *= beta
        return out
    if _openblas.routines(a.dtype) is not None:
        if out is not None and alpha == 1.0 and beta == 0.0:
            return np.matmul(a, b, out=out)
        prod = np.matmul(a, b)
        if alpha != 1.0:
            prod *= alpha
        if out is None:
            return prod
        if beta != 1.0:
            out *= beta
        out += prod
        return out
    bt, trans_b = _fortran(b.T)
    at, trans_a = _fortran(a.T)
    gemm = _blas("gemm", a.dtype)
    if out is None:
        return gemm(alpha, bt, at, trans_a=trans_b, trans_b=trans_a).T
    res = gemm(alpha, bt, at, beta=beta, c=out.T, trans_a=trans_b, trans_b=trans_a, overwrite_c=1)
    if res.ctypes.data != out.ctypes.data:  # the wrapper refused to work in place (it never should)
        out[...] = res.T
    return out


def _syrk_into(g: np.ndarray, a: np.ndarray, alpha: float) -> None:
    """``g ← g + α aᵀa`` in place for a C-ordered symmetric ``g`` and C-ordered ``a (n, d)``: one SYRK into the
    upper triangle of ``g`` (NumPy's BLAS row-major, else SciPy's on the column-major view ``gᵀ``, which is
    ``g``), then the mirror."""
    n, d = a.shape
    fast = _openblas.routines(g.dtype)
    if n and fast is not None:
        a = np.ascontiguousarray(a)
        fast.syrk(ROW_MAJOR, UPPER, TRANS, d, n, alpha, a.ctypes.data, d, 1.0, g.ctypes.data, d)
    elif n:
        out = _blas("syrk", g.dtype)(alpha, a.T, beta=1.0, c=g.T, trans=0, lower=1, overwrite_c=1)
        if out.ctypes.data != g.ctypes.data:  # the wrapper refused to work in place (it never should)
            g[...] = out.T
    _mirror_upper(g)


def _copy_unless_aliased(dst: np.ndarray, src: np.ndarray) -> None:
    if dst.size and dst.ctypes.data != src.ctypes.data:
        np.copyto(dst, src)


def _gram_add_kernel(ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    xtx, xty, x, y = ins
    new_xtx, new_xty = outs
    _copy_unless_aliased(new_xtx, xtx)
    _copy_unless_aliased(new_xty, xty)
    _syrk_into(new_xtx, x, 1.0)
    _gemm(x.T, y, out=new_xty, beta=1.0)


def _sound_diagonal(diag: np.ndarray) -> bool:
    """Whether a new Gram diagonal may be written: finite and at most half the dtype's range. A finite diagonal
    bounds every entry of the PSD sum (``|Gᵢⱼ| ≤ √(GᵢᵢGⱼⱼ)``); the half leaves room for the SYRK's rounding to
    differ from the sum that computed ``diag``. Tested before anything is written, so a refused batch leaves
    aliased (donated) statistics untouched."""
    return bool(np.isfinite(diag).all() and diag.max(initial=0.0) <= np.finfo(diag.dtype).max / 2)


def _gram_add_checked_kernel(ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    xtx, xty, x, y = ins
    new_xtx, new_xty, ok = outs
    cross = _gemm(x.T, y, out=xty.copy(), beta=1.0)
    good = _sound_diagonal(np.diagonal(xtx) + (x * x).sum(axis=0)) and bool(np.isfinite(cross).all())
    _copy_unless_aliased(new_xtx, xtx)
    if good:
        _syrk_into(new_xtx, x, 1.0)
        if new_xty.size:
            new_xty[...] = cross
    else:
        _copy_unless_aliased(new_xty, xty)
    ok[...] = good


def _class_gram_add_kernel(ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    grams, total_diag, x, labels = ins
    new_grams, ok = outs
    classes = [int(k) for k in np.unique(labels) if k >= 0]
    rows = {k: np.ascontiguousarray(x[labels == k]) for k in classes}
    # Every class's new diagonal and the total's (_sound_diagonal), before anything is written.
    good = _sound_diagonal(total_diag + (x * x).sum(axis=0)) and all(
        _sound_diagonal(np.diagonal(grams[k]) + (rows[k] * rows[k]).sum(axis=0)) for k in classes)
    _copy_unless_aliased(new_grams, grams)
    if good:
        for k in classes:
            _syrk_into(new_grams[k], rows[k], 1.0)
    ok[...] = good


def sum_of_squares(flat: np.ndarray) -> float:
    """``Σ aᵢ²`` of a contiguous 1-D float32/float64 array by the kernels' BLAS ``dot`` (NumPy's OpenBLAS where it
    binds, else SciPy's: the one library of this process, see the module docstring). Overflows to inf instead of
    warning, and leaves NumPy's floating-point error state alone."""
    fast = _openblas.routines(flat.dtype)
    if fast is not None:
        return float(fast.dot(flat.size, flat.ctypes.data, 1, flat.ctypes.data, 1))
    return float(_blas("dot", flat.dtype)(flat, flat))


def _all_finite(a: np.ndarray) -> bool:
    """Whether every entry of ``a`` is finite. A finite BLAS sum of squares proves it in one fast pass (≈ 0.8 against
    2.8 ms for ``np.isfinite`` over a 2048² float64 Gram); the exact scan decides only where that sum overflows."""
    if not a.size:
        return True
    if np.isfinite(sum_of_squares(np.ascontiguousarray(a).reshape(-1))):
        return True
    return bool(np.isfinite(a).all())


def _potrf_upper(m: np.ndarray) -> int:
    """Cholesky of the C-ordered symmetric ``m`` in place: afterwards its upper triangle holds ``U`` with
    ``m = UᵀU`` (LAPACK's lower factor of the column-major view, which is the same matrix); the strict lower triangle
    keeps its input. Returns LAPACK's ``info`` (0: definite)."""
    fast = _openblas.routines(m.dtype)
    if fast is not None:
        return _openblas.potrf_lower_of_row_major_upper(fast, m)
    out, info = lapack.get_lapack_funcs(("potrf",), (m,))[0](m.T, lower=1, clean=0, overwrite_a=1)
    if out.ctypes.data != m.ctypes.data:  # the wrapper refused to work in place (it never should)
        m[...] = out.T
    return int(info)


def _trsm_upper(u: np.ndarray, b: np.ndarray, right: bool, trans: bool) -> np.ndarray:
    """``b ← op(U)⁻¹ b`` (``right=False``) or ``b op(U)⁻¹`` (``right=True``) in place, ``op(U) = Uᵀ`` if ``trans``,
    for the upper triangle ``U`` of the C-ordered ``u`` (:func:`_potrf_upper`) and a C-ordered ``b``. SciPy's path
    solves the transposed system on the column-major views (``u``'s is ``Uᵀ``, lower)."""
    m, n = b.shape
    if not b.size:
        return b
    fast = _openblas.routines(u.dtype)
    if fast is not None:
        fast.trsm(ROW_MAJOR, RIGHT if right else _openblas.LEFT, UPPER, TRANS if trans else NO_TRANS, NON_UNIT,
                  m, n, 1.0, u.ctypes.data, u.shape[0], b.ctypes.data, n)
        return b
    out = _blas("trsm", u.dtype)(1.0, u.T, b.T, side=0 if right else 1, lower=1, trans_a=1 if trans else 0,
                                 overwrite_b=1)
    if out.ctypes.data != b.ctypes.data:
        b[...] = out.T
    return b


def _cholesky_solve_kernel(ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    a, b, gamma = ins
    w, kappa = outs
    kappa[...] = np.nan
    if not (_all_finite(a) and _all_finite(b)):
        w[...] = np.nan
        return
    m = a.copy()
    m.flat[:: m.shape[0] + 1] += gamma
    if _potrf_upper(m) != 0:
        w[...] = np.nan
        return
    w[...] = b  # (A + γI)⁻¹ B = U⁻¹ U⁻ᵀ B, solved where the result lies
    _trsm_upper(m, w, right=False, trans=True)
    _trsm_upper(m, w, right=False, trans=False)
    diag = np.abs(np.diagonal(m))
    if np.isfinite(w).all():
        kappa[...] = (diag.max() / diag.min()) ** 2


def _woodbury_kernel(ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    w, r, x, y = ins
    new_w, new_r, chol_out, ok, old_diag = outs
    ok[...] = 0
    old_diag[...] = np.diagonal(r)
    # A zero row of X is an exact no-op (its row and column of K are the identity's, its column of V is zero):
    # padding rows are dropped here rather than paid for in every O(d²) product. L gets the identity there.
    live = np.flatnonzero(x.any(axis=1))
    if live.size < x.shape[0]:
        chol_out[...] = np.eye(x.shape[0], dtype=r.dtype)
        if live.size == 0:
            _copy_unless_aliased(new_r, r)
            _copy_unless_aliased(new_w, w)
            ok[...] = 1
            return
        x, y = x[live], y[live]
    b = x.shape[0]
    rxt = _gemm(r, x.T)                                                # R Xᵀ (d, b)
    k = _gemm(x, rxt, out=np.eye(b, dtype=r.dtype), beta=1.0)          # K = I + X R Xᵀ
    k = 0.5 * (k + k.T)
    u = k                                                              # K = UᵀU, L = Uᵀ
    chol = np.triu(u).T if _potrf_upper(u) == 0 else np.full_like(k, np.nan)  # NaN: broken, not committed
    if b == chol_out.shape[0]:
        chol_out[...] = chol
    else:
        chol_out[np.ix_(live, live)] = chol
    _copy_unless_aliased(new_r, r)
    if not np.isfinite(chol).all():
        _copy_unless_aliased(new_w, w)
        return
    # V = R Xᵀ L⁻ᵀ solves V Lᵀ = V U = R Xᵀ; then R Xᵀ K⁻¹ = V L⁻¹ (the gain R' Xᵀ, solving gain Uᵀ = V) and
    # R Xᵀ K⁻¹ X R = V Vᵀ.
    v = _trsm_upper(u, rxt, right=True, trans=False)
    gain = _trsm_upper(u, v.copy(), right=True, trans=True)
    weight = _gemm(gain, _gemm(x, w, out=y.copy(), alpha=-1.0, beta=1.0), out=w.copy(), beta=1.0)  # W + gain(Y − XW)
    # The verdict of analytic.health.rls_health, decided before R is written (so aliased, donated R and W are left
    # as they were when it fails): finite pivots ≥ 1/2, diag(R') = diag(R) − rowsums(V∘V) finite and > 0, W' finite.
    diag = old_diag - (v * v).sum(axis=1)
    good = bool(np.diagonal(chol).min() ** 2 >= 0.5 and np.isfinite(diag).all() and (diag > 0).all()
                and np.isfinite(weight).all())
    if not good:
        _copy_unless_aliased(new_w, w)
        return
    _syrk_into(new_r, np.ascontiguousarray(v.T), -1.0)
    if new_w.size:
        new_w[...] = weight
    ok[...] = 1


def _eigh_kernel(ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    (a,) = ins
    w, v = outs
    if not _all_finite(a):  # LAPACK may return some finite eigenvalues of a NaN matrix: all NaN, as on XLA
        w[...], v[...] = np.nan, np.nan
        return
    m = 0.5 * (a + a.T)
    fast = _openblas.routines(m.dtype)
    if fast is not None:
        info, vectors = _openblas.syevd_rows(fast, m, w), m.T
    else:
        lam, vectors, info = lapack.get_lapack_funcs(("syevd",), (m,))[0](m, compute_v=1, lower=1)
        w[...] = lam
    if info != 0:
        w[...], v[...] = np.nan, np.nan
        return
    v[...] = vectors


def _matmul_kernel(ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
    a, b = ins
    (out,) = outs
    _gemm(a, b, out=out)


_KERNELS = {"matmul": _matmul_kernel, "gram_add": _gram_add_kernel, "gram_add_checked": _gram_add_checked_kernel,
            "class_gram_add": _class_gram_add_kernel, "cholesky_solve": _cholesky_solve_kernel,
            "woodbury_step": _woodbury_kernel, "eigh": _eigh_kernel}
_REGISTERED: dict[str, Any] = {}  # the C callbacks must outlive every compiled program that calls them
_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"ok": None, "error": None}


def _register() -> bool:
    with _LOCK:
        if _STATE["ok"] is None:
            try:
                for name, kernel in _KERNELS.items():
                    callback = _xla_ffi.handler(kernel)
                    jax.ffi.register_ffi_target(f"analytic_{name}", jax.ffi.pycapsule(callback), platform="cpu")
                    _REGISTERED[name] = callback
                _STATE["ok"] = True
            except Exception as exc:  # noqa: BLE001 - an FFI that does not take the handlers: XLA twins
                _STATE["ok"], _STATE["error"] = False, exc
        return bool(_STATE["ok"])


def enabled(*arrays: Any) -> bool:
    """Whether the host kernels serve these operands: CPU backend, float32/float64, registration succeeded and
    ``ANALYTIC_HOST_KERNELS`` is not ``0``. Decided at trace time."""
    if os.environ.get("ANALYTIC_HOST_KERNELS", "1") == "0" or jax.default_backend() != "cpu":
        return False
    if any(np.dtype(a.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)) for a in arrays):
        return False
    return _register()


def _call(name: str, results: Sequence[jax.ShapeDtypeStruct], *args: jax.Array,
          aliases: dict[int, int] | None = None) -> Any:
    if not _register():
        raise RuntimeError(f"host kernels unavailable: {_STATE['error']!r}")
    return jax.ffi.ffi_call(f"analytic_{name}", list(results), vmap_method="sequential",
                            input_output_aliases=aliases or {})(*args)


_MATMUL_MIN_FLOPS = 1 << 18  # below this a product is too small for the kernel call to pay off


@jax.custom_jvp
def _host_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    out = jax.ShapeDtypeStruct((a.shape[0], b.shape[1]), a.dtype)
    return _call("matmul", (out,), a, b)[0]


@_host_matmul.defjvp
def _host_matmul_jvp(primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]
                     ) -> tuple[jax.Array, jax.Array]:
    # The tangent map is linear and written with XLA dots, so reverse mode can transpose it.
    (a, b), (da, db) = primals, tangents
    prec = jax.lax.Precision.HIGHEST
    return _host_matmul(a, b), jnp.matmul(da, b, precision=prec) + jnp.matmul(a, db, precision=prec)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` at full precision (traceable, differentiable): by the host GEMM where :func:`enabled` and the
    product is large enough to pay for the call, else ``jnp.matmul`` at ``Precision.HIGHEST``.

    The host path keeps every large product of a learner's step in one BLAS library: XLA's own dot between two
    host-kernel calls measured 1.3× slower than either alone (their worker threads contend for the cores)."""
    if (a.ndim == b.ndim == 2 and a.dtype == b.dtype and enabled(a)
            and a.shape[0] * a.shape[1] * b.shape[1] >= _MATMUL_MIN_FLOPS):
        return _host_matmul(a, b)
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def eigh(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(λ, U)`` of the symmetric part of ``a``, eigenvalues ascending and eigenvectors in ``U``'s columns -- what
    ``jnp.linalg.eigh(½(a + aᵀ))`` returns (traceable; NaN where LAPACK's divide and conquer fails). On the host
    LAPACK (``?syevd``) where :func:`enabled`: JAX's own CPU LAPACK is SciPy's OpenBLAS, whose threads then spin
    against the kernels' library (DeepAFL's 1024² ``eigh`` before its products: 0.46 → 0.55 s per fit, float32).
    Not differentiable on the host path."""
    if a.ndim == 2 and a.shape[0] == a.shape[1] and a.shape[0] > 0 and enabled(a):
        n, dt = a.shape[0], a.dtype
        return tuple(_call("eigh", (jax.ShapeDtypeStruct((n,), dt), jax.ShapeDtypeStruct((n, n), dt)), a))
    return jnp.linalg.eigh(0.5 * (a + a.T))


def gram_add(xtx: jax.Array, xty: jax.Array, x: jax.Array, y: jax.Array, in_place: bool = False
             ) -> tuple[jax.Array, jax.Array]:
    """``(xtx + xᵀx, xty + xᵀy)`` on the host (traceable); all operands of one dtype, ``xtx`` symmetric.

    ``in_place=True`` aliases the results to ``xtx``/``xty``: use it where those buffers are dead after the call
    (a ``scan`` carry, a donated argument). On a live buffer XLA first copies it, which measured slower than the
    kernel's own copy into a fresh result (11 vs 4 ms at d = 1024, 10 rows).
    """
    dt = xtx.dtype
    x, y = x.astype(dt), y.astype(dt)
    out = (jax.ShapeDtypeStruct(xtx.shape, dt), jax.ShapeDtypeStruct(xty.shape, dt))
    new_xtx, new_xty = _call("gram_add", out, xtx, xty, x, y, aliases={0: 0, 1: 1} if in_place else None)
    return new_xtx, new_xty


def gram_add_checked(xtx: jax.Array, xty: jax.Array, x: jax.Array, y: jax.Array, in_place: bool = False
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`gram_add` that adds only a sound batch: ``(xtx', xty', ok)``. ``ok`` (int32 0/1) says the new
    diagonal and cross-moments are finite and the diagonal at most half the dtype's range (then every entry is);
    when it is 0, ``xtx'``/``xty'`` are ``xtx``/``xty`` -- also where ``in_place=True`` aliases them, since the
    test runs before anything is written."""
    dt = xtx.dtype
    x, y = x.astype(dt), y.astype(dt)
    out = (jax.ShapeDtypeStruct(xtx.shape, dt), jax.ShapeDtypeStruct(xty.shape, dt),
           jax.ShapeDtypeStruct((), jnp.int32))
    return tuple(_call("gram_add_checked", out, xtx, xty, x, y, aliases={0: 0, 1: 1} if in_place else None))


def class_gram_add(grams: jax.Array, total_diag: jax.Array, x: jax.Array, labels: jax.Array, in_place: bool = False
                   ) -> tuple[jax.Array, jax.Array]:
    """``(grams', ok)``: ``grams[k] + x_kᵀx_k`` for every class ``k`` of ``labels`` (``-1``: a padding row), one
    SYRK per class present on its own rows. ``ok`` (int32) as for :func:`gram_add_checked`, tested on every class's
    new diagonal and on the total ``total_diag + Σ x²`` before anything is written (when 0, ``grams'`` is
    ``grams``, also under ``in_place=True``)."""
    dt = grams.dtype
    out = (jax.ShapeDtypeStruct(grams.shape, dt), jax.ShapeDtypeStruct((), jnp.int32))
    return tuple(_call("class_gram_add", out, grams, total_diag.astype(dt), x.astype(dt), labels.astype(jnp.int32),
                       aliases={0: 0} if in_place else None))


def cholesky_solve(a: jax.Array, b: jax.Array, gamma: Any) -> tuple[jax.Array, jax.Array]:
    """``((A + γI)⁻¹B, κ̂)`` on the host (traceable); κ̂ is NaN when ``A``/``B`` were not finite or the
    factorization failed. ``A`` symmetric (its lower triangle is read)."""
    dt = a.dtype
    out = (jax.ShapeDtypeStruct(b.shape, dt), jax.ShapeDtypeStruct((), dt))
    return tuple(_call("cholesky_solve", out, a, b.astype(dt), jnp.asarray(gamma, dt)))


def woodbury_step(weight: jax.Array, inv_autocorr: jax.Array, x: jax.Array, y: jax.Array, in_place: bool = False
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(W', R', L, ok, diag R)`` of one Woodbury step on the host (traceable): ``L`` the Cholesky factor of
    ``K = I + X R Xᵀ`` (NaN when ``K`` was not positive definite), ``ok`` (int32 0/1) the verdict of
    :func:`analytic.health.rls_health` -- every pivot ``Lᵢᵢ² ≥ 1/2``, ``diag(R')`` finite and positive, ``W'``
    finite -- decided before anything is written: when it is 0, ``W'``, ``R'`` are ``W``, ``R`` (also where
    ``in_place=True`` aliases them to a donated state). ``diag R`` is the diagonal before the step, returned so
    that nothing else in the program reads an aliased ``R`` (XLA would copy it first). ``in_place`` as for
    :func:`gram_add`."""
    dt = inv_autocorr.dtype
    x, y = x.astype(dt), y.astype(dt)
    b = x.shape[0]
    out = (jax.ShapeDtypeStruct(weight.shape, dt), jax.ShapeDtypeStruct(inv_autocorr.shape, dt),
           jax.ShapeDtypeStruct((b, b), dt), jax.ShapeDtypeStruct((), jnp.int32),
           jax.ShapeDtypeStruct(inv_autocorr.shape[:1], dt))
    return tuple(_call("woodbury_step", out, weight, inv_autocorr, x, y, aliases={0: 0, 1: 1} if in_place else None))
