"""The BLAS/LAPACK routines of the library NumPy itself links, reached through ``ctypes`` (CPU host kernels).

NumPy and SciPy wheels bundle separate OpenBLAS builds (NumPy 2.4: 0.3.31, SciPy 1.17: 0.3.30). Two things make
the host kernels (:mod:`analytic.host_kernels`) call NumPy's rather than SciPy's wrappers:

* **One thread pool.** Each build keeps its own worker threads, which spin after a call; alternating between the
  two measured 2-8× slower than either alone on a 2-core machine (an 8192×1024 float32 SYRK right after a SciPy
  GEMM: 126-137 against 61 ms). NumPy's own ``@`` -- in a user's script, in this project's validation and
  benchmarks -- already runs on NumPy's build, so the kernels share its pool.
* **The newer SYRK.** On this project's shapes (2-core EPYC, separate processes) NumPy's SYRK measured float32
  8192×1024 rows 59 against 74 ms, float64 123 against 138 ms; 256 rows into a 2048² Gram, float32 6.4 against
  7.6 ms. GEMM and ``potrf`` measured within noise of SciPy's.

GEMM needs no binding (``np.matmul`` is NumPy's GEMM). This module binds the rest: ``cblas_?syrk``,
``cblas_?trsm``, ``cblas_?omatcopy`` (OpenBLAS's blocked transpose; the mirror of a Gram, where NumPy's strided
copies run 3-20× slower), ``cblas_?dot`` and LAPACK's ``?potrf_`` and ``?syevd_``. The library is the one
:mod:`threadpoolctl` reports inside NumPy's installation; its symbols may carry SciPy-OpenBLAS's ``scipy_``
prefix and a 64-bit-integer build's ``64_`` suffix. :func:`routines` is ``None`` where any routine is missing
(NumPy on MKL or Accelerate under other names, a source build): the kernels then use SciPy's wrappers throughout,
one library again.

JAX's own CPU LAPACK (``jnp.linalg``) is SciPy's OpenBLAS; code that runs such an op between host kernels meets the
other pool's spinning threads, so the kernels cover the decompositions the learners need (``eigh`` too).
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Routines", "routines", "scipy_omatcopy", "potrf_lower_of_row_major_upper", "syevd_rows", "ROW_MAJOR",
           "UPPER", "LOWER", "NO_TRANS", "TRANS", "LEFT", "RIGHT", "NON_UNIT"]

# CBLAS enumerations.
ROW_MAJOR, UPPER, LOWER, NO_TRANS, TRANS, LEFT, RIGHT, NON_UNIT = 101, 121, 122, 111, 112, 141, 142, 131


class Routines(NamedTuple):
    """Typed entry points for one dtype (row-major CBLAS argument order; ``potrf`` is LAPACK's, by reference)."""

    syrk: Any      # (order, uplo, trans, n, k, alpha, a, lda, beta, c, ldc)
    trsm: Any      # (order, side, uplo, trans, diag, m, n, alpha, a, lda, b, ldb)
    omatcopy: Any  # (order, trans, rows, cols, alpha, a, lda, b, ldb)
    dot: Any       # (n, x, incx, y, incy) -> real
    potrf: Any     # (uplo*, n*, a, lda*, info*)
    syevd: Any     # (jobz*, uplo*, n*, a, lda*, w, work, lwork*, iwork, liwork*, info*)
    integer: Any   # the build's integer type (c_int or c_int64)


def _blas_path(package: str) -> str | None:
    """Path of the BLAS library a wheel of ``package`` ("numpy", "scipy") bundles and has loaded, if
    :mod:`threadpoolctl` sees one (``<site-packages>/<package>.libs/`` or ``<package>/.libs/``)."""
    from threadpoolctl import threadpool_info

    module = __import__(package)
    root = os.path.dirname(os.path.dirname(os.path.abspath(module.__file__)))
    homes = (os.path.join(root, f"{package}.libs"), os.path.join(root, package, ".libs"))
    for info in threadpool_info():
        path = os.path.abspath(str(info.get("filepath", "")))
        if info.get("user_api") == "blas" and os.path.dirname(path) in homes:
            return path
    return None


def _find(lib: Any, base: str) -> tuple[Any, bool] | None:
    """``(function, 64-bit integers)`` for ``base`` under the prefixes and suffixes builds use, or ``None``."""
    for prefix in ("scipy_", ""):
        for suffix, wide in (("64_", True), ("", False)):
            fun = getattr(lib, f"{prefix}{base}{suffix}", None)
            if fun is not None:
                return fun, wide
    return None


@functools.lru_cache(maxsize=2)
def _library(package: str) -> Any:
    path = _blas_path(package)
    if path is None:
        return None
    try:
        return ctypes.CDLL(path)
    except OSError:
        return None


_OMATCOPY_TYPES = lambda real, i: ([ctypes.c_int, ctypes.c_int, i, i, real, ctypes.c_void_p, i,  # noqa: E731
                                    ctypes.c_void_p, i], None)


@functools.lru_cache(maxsize=4)
def scipy_omatcopy(dtype: Any) -> Any:
    """SciPy's bundled OpenBLAS's ``cblas_?omatcopy`` for ``dtype`` (the mirror's transpose where :func:`routines`
    is ``None`` and the kernels run on SciPy's library), or ``None``."""
    lib = _library("scipy")
    dt = np.dtype(dtype)
    found = None if lib is None else _find(lib, f"cblas_{'d' if dt == np.float64 else 's'}omatcopy")
    if found is None:
        return None
    fun, wide = found
    fun.argtypes, fun.restype = _OMATCOPY_TYPES(ctypes.c_double if dt == np.float64 else ctypes.c_float,
                                                ctypes.c_int64 if wide else ctypes.c_int)
    return fun


@functools.lru_cache(maxsize=4)
def routines(dtype: Any) -> Routines | None:
    """The bound routines of NumPy's BLAS for float32/float64 ``dtype``, or ``None`` (module docstring)."""
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        return None
    lib = _library("numpy")
    if lib is None:
        return None
    letter, real = ("d", ctypes.c_double) if dt == np.float64 else ("s", ctypes.c_float)
    found = {name: _find(lib, base) for name, base in (
        ("syrk", f"cblas_{letter}syrk"), ("trsm", f"cblas_{letter}trsm"), ("omatcopy", f"cblas_{letter}omatcopy"),
        ("dot", f"cblas_{letter}dot"), ("potrf", f"{letter}potrf_"), ("syevd", f"{letter}syevd_"))}
    if any(v is None for v in found.values()) or len({wide for _, wide in found.values()}) != 1:
        return None
    i = ctypes.c_int64 if found["syrk"][1] else ctypes.c_int
    e, p = ctypes.c_int, ctypes.c_void_p
    types = {"syrk": ([e, e, e, i, i, real, p, i, real, p, i], None),
             "trsm": ([e, e, e, e, e, i, i, real, p, i, p, i], None),
             "omatcopy": _OMATCOPY_TYPES(real, i),
             "dot": ([i, p, i, p, i], real),
             # LAPACK's Fortran ABI: character arguments by pointer, their lengths appended (gfortran's hidden
             # size_t arguments; passed explicitly, as omitting them is undefined behaviour).
             "potrf": ([ctypes.c_char_p, ctypes.POINTER(i), p, ctypes.POINTER(i), ctypes.POINTER(i),
                        ctypes.c_size_t], None),
             "syevd": ([ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(i), p, ctypes.POINTER(i), p, p,
                        ctypes.POINTER(i), p, ctypes.POINTER(i), ctypes.POINTER(i), ctypes.c_size_t, ctypes.c_size_t],
                       None)}
    bound = {}
    for name, (fun, _) in found.items():
        fun.argtypes, fun.restype = types[name]
        bound[name] = fun
    return Routines(integer=i, **bound)


def potrf_lower_of_row_major_upper(r: Routines, a: np.ndarray) -> int:
    """Factor the C-ordered symmetric ``a`` in place: LAPACK's lower Cholesky of its column-major view (``aᵀ``,
    the same matrix), so on return the *upper* triangle of ``a`` (C order) holds ``Lᵀ``. Returns LAPACK's info."""
    n = r.integer(a.shape[0])
    info = r.integer(0)
    r.potrf(b"L", ctypes.byref(n), a.ctypes.data, ctypes.byref(n), ctypes.byref(info), 1)
    return int(info.value)


def syevd_rows(r: Routines, m: np.ndarray, w: np.ndarray) -> int:
    """Eigen-decompose the C-ordered symmetric ``m`` in place (LAPACK's divide and conquer on its column-major view,
    the same matrix): ``w`` receives the eigenvalues in ascending order and the *rows* of ``m`` the eigenvectors.
    Returns LAPACK's info."""
    i, n = r.integer, m.shape[0]
    size, info = i(n), i(0)
    work_size, iwork_size = np.zeros(1, m.dtype), np.zeros(1, np.int64 if i is ctypes.c_int64 else np.int32)
    query = i(-1)
    r.syevd(b"V", b"L", ctypes.byref(size), m.ctypes.data, ctypes.byref(size), w.ctypes.data, work_size.ctypes.data,
            ctypes.byref(query), iwork_size.ctypes.data, ctypes.byref(query), ctypes.byref(info), 1, 1)
    if info.value != 0:
        return int(info.value)
    lwork, liwork = int(work_size[0]), int(iwork_size[0])
    work, iwork = np.empty(max(lwork, 1), m.dtype), np.empty(max(liwork, 1), iwork_size.dtype)
    r.syevd(b"V", b"L", ctypes.byref(size), m.ctypes.data, ctypes.byref(size), w.ctypes.data, work.ctypes.data,
            ctypes.byref(i(lwork)), iwork.ctypes.data, ctypes.byref(i(liwork)), ctypes.byref(info), 1, 1)
    return int(info.value)
