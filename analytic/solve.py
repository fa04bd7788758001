"""Ridge solves: ``W = (A + γI)⁻¹ B`` for symmetric positive semi-definite ``A``.

The primal system of ridge regression, ``(XᵀX + γI) W = XᵀY`` (docs/methods.md §1), is symmetric positive
definite for γ > 0, so it is factorized once by Cholesky (``d³/3`` flops) and every right-hand side reuses the
factor -- ``scipy.linalg.cho_solve(cho_factor(A + γI), B)`` is the SciPy equivalent.

**Fallback.** In floating point a badly conditioned Gram (or one built by subtraction, as regularization removal
does) can lose definiteness, and Cholesky then produces NaN. ``ridge_solve`` detects that on the host and
re-solves with ``eigh``: eigenvalues of ``A + γI`` below ``eps·λ_max·d`` are clipped to that floor, i.e. the
answer is the ridge solution of the nearest well-posed SPD system. Both that fallback and a merely
ill-conditioned system (condition estimate ``κ̂`` above ``warn_cond``) raise a :class:`RidgeSolveWarning`, never
silently.

**Condition estimate.** The Cholesky pivot ratio ``(max Lᵢᵢ / min Lᵢᵢ)²`` is a lower bound of ``κ(A + γI)`` that
can miss by orders of magnitude: on a rank-deficient Gram (fewer rows than buffer units, the usual continual
setting) it read 1.2e3 where ``κ = 1.7e6``, and the float32 ACIL head it let pass silently agreed with float64 on
9% of the predictions. ``ridge_solve`` therefore also solves for :data:`PROBES` fixed random right-hand sides ``Z``
in the same factorization and takes ``κ̂ = max(pivot ratio, λ̂_max / λ̂_min)`` with ``λ̂_max`` from a few block power
steps on ``A + γI`` and ``λ̂_min = (‖Z‖_F / ‖(A + γI)⁻¹Z‖_F)`` -- the RMS of ``1/λᵢ`` over random directions, which
never undershoots ``λ_min`` (so ``κ̂ ≤ κ``: no false alarm) and is within ``√d`` of it, exact in the common case
where many eigenvalues sit at ``γ``. Cost: ``O(d²)`` per probe, nothing next to the ``d³/3`` factorization.
"""

from __future__ import annotations

import functools
import warnings
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from analytic import host_kernels
from analytic.dtypes import HIGHEST
from analytic.gram import _block_products
from analytic.validation import as_targets, check_features, check_gamma

__all__ = ["RidgeSolveWarning", "ridge_solve", "ridge_fit", "cholesky_ridge_solve", "eigh_ridge_solve"]

#: default κ̂ above which a solve warns, by dtype: about half the significant digits are at risk beyond it.
WARN_COND = {np.dtype(np.float64): 1e10, np.dtype(np.float32): 1e5}
#: random right-hand sides solved beside ``B`` for the condition estimate (module docstring), and power steps.
PROBES, POWER_STEPS = 4, 8


class RidgeSolveWarning(RuntimeWarning):
    """The ridge system was ill-conditioned or not numerically positive definite."""


@partial(jax.jit, static_argnames="impl")
def cholesky_ridge_solve(a: jax.Array, b: jax.Array, gamma: Any, impl: str = "auto") -> tuple[jax.Array, jax.Array]:
    """Pure, jittable ``(A + γI)⁻¹ B`` by Cholesky; returns ``(W, κ̂)`` (κ̂ is NaN when the factorization failed
    or ``A``/``B`` held NaN/inf).

    ``impl="auto"`` factorizes with the host LAPACK (``potrf``/``potrs`` through the XLA FFI,
    :func:`analytic.host_kernels.cholesky_solve`) on the CPU backend, where XLA's Cholesky and triangular solves
    measured 2-20× slower, and with XLA elsewhere; ``impl="xla"`` always uses XLA (differentiable).
    """
    if impl not in ("auto", "xla"):
        raise ValueError(f"impl must be 'auto' or 'xla', got {impl!r}")
    if impl == "auto" and host_kernels.enabled(a) and a.shape[0] > 0 and b.ndim == 2:
        return host_kernels.cholesky_solve(a, b.astype(a.dtype), gamma)  # potrf reads one triangle
    d = a.shape[0]
    m = 0.5 * (a + a.T) + jnp.asarray(gamma, a.dtype) * jnp.eye(d, dtype=a.dtype)
    chol = jnp.linalg.cholesky(m)
    w = jax.scipy.linalg.cho_solve((chol, True), b)
    diag = jnp.abs(jnp.diagonal(chol))
    kappa = (jnp.max(diag) / jnp.min(diag)) ** 2
    ok = jnp.all(jnp.isfinite(chol)) & jnp.all(jnp.isfinite(w)) & jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(b))
    return w, jnp.where(ok, kappa, jnp.nan)


@jax.jit
def eigh_ridge_solve(a: jax.Array, b: jax.Array, gamma: Any) -> jax.Array:
    """Pure ``(A + γI)⁻¹ B`` through ``eigh`` with eigenvalues clipped at ``eps·λ_max·d`` (the documented fallback)."""
    d = a.shape[0]
    m = 0.5 * (a + a.T) + jnp.asarray(gamma, a.dtype) * jnp.eye(d, dtype=a.dtype)
    lam, u = jnp.linalg.eigh(m)
    floor = jnp.finfo(a.dtype).eps * d * jnp.maximum(jnp.max(jnp.abs(lam)), jnp.finfo(a.dtype).tiny)
    lam = jnp.maximum(lam, floor)
    return u @ ((u.T @ b) / lam[:, None])


def ridge_solve(
    xtx: Any, xty: Any, gamma: float, *, warn_cond: float | None = None, check: bool = True
) -> jax.Array:
    """Solve ``(XᵀX + γI) W = XᵀY``.

    Args:
      xtx: ``(d, d)`` symmetric positive semi-definite matrix (a Gram).
      xty: ``(d, c)`` (or ``(d,)``) right-hand side.
      gamma: ridge strength, > 0.
      warn_cond: κ̂ above which to warn (default by dtype, :data:`WARN_COND`).
      check: validate inputs and run the fallback logic on the host (set ``False`` inside your own ``jit``; then
        the pure :func:`cholesky_ridge_solve` result is returned with no fallback).

    Returns:
      ``W``: same shape as ``xty``.
    """
    if not check:
        return cholesky_ridge_solve(xtx, xty, gamma)[0]
    gamma = check_gamma(gamma)
    xtx = jnp.asarray(xtx)
    xty = jnp.asarray(xty)
    if xtx.ndim != 2 or xtx.shape[0] != xtx.shape[1]:
        raise ValueError(f"xtx must be a square (d, d) matrix, got shape {tuple(xtx.shape)}")
    if xty.ndim not in (1, 2) or xty.shape[0] != xtx.shape[0]:
        raise ValueError(f"xty must be (d,) or (d, c) with d = {xtx.shape[0]}, got shape {tuple(xty.shape)}")
    if not jnp.issubdtype(xtx.dtype, jnp.floating) or not jnp.issubdtype(xty.dtype, jnp.floating):
        raise TypeError(f"xtx and xty must be floating, got {xtx.dtype} and {xty.dtype}")
    if xty.dtype != xtx.dtype:
        xty = xty.astype(xtx.dtype)
    vector = xty.ndim == 1
    rhs = xty[:, None] if vector else xty
    limit = WARN_COND.get(np.dtype(xtx.dtype), 1e5) if warn_cond is None else warn_cond
    probes = _probes(xtx.shape[0], xtx.dtype)
    w, kappa = cholesky_ridge_solve(xtx, jnp.concatenate([rhs, probes], axis=1), gamma)
    w, kappa = _condition_estimate(xtx, w, probes, gamma, kappa, limit)
    w = w[:, 0] if vector else w
    # One scalar read: κ̂ is NaN both for corrupt statistics and for a failed factorization; tell them apart.
    kappa = float(kappa)
    if not np.isfinite(kappa) and not (bool(jnp.isfinite(xtx).all()) and bool(jnp.isfinite(xty).all())):
        raise ValueError("xtx/xty contain NaN or inf; the statistics are corrupt")
    if not np.isfinite(kappa):
        warnings.warn(
            f"ridge_solve: Cholesky of XᵀX + γI (d={xtx.shape[0]}, γ={gamma:g}, {xtx.dtype}) failed -- the system is"
            " not numerically positive definite; fell back to eigh with eigenvalues clipped at eps·λmax·d",
            RidgeSolveWarning, stacklevel=2,
        )
        return eigh_ridge_solve(xtx, xty, gamma)
    if kappa > limit:
        warnings.warn(
            f"ridge_solve: XᵀX + γI is ill-conditioned (condition estimate κ̂ ≈ {kappa:.2e} > {limit:.0e},"
            f" {xtx.dtype}); the solution may have lost accuracy -- raise γ or use float64",
            RidgeSolveWarning, stacklevel=2,
        )
    return w


@functools.lru_cache(maxsize=16)
def _probes(d: int, dtype: Any) -> jax.Array:
    # Fixed (seeded) directions: the same system always gets the same estimate and the same warning.
    return jnp.asarray(np.random.default_rng(0).standard_normal((d, PROBES)), dtype)


@jax.jit
def _condition_estimate(a: jax.Array, solved: jax.Array, probes: jax.Array, gamma: Any, pivot_kappa: jax.Array,
                        limit: Any = -np.inf) -> tuple[jax.Array, jax.Array]:
    """``(W, κ̂)`` from the solve of ``[B, Z]``: ``W`` its first columns, ``κ̂ = max(pivot ratio, λ̂max / λ̂min)``
    (module docstring); NaN stays NaN.

    ``limit`` is the caller's warning threshold. The power steps (``8 d²·PROBES`` flops, passes over ``A`` that
    cost about an eighth of the factorization at d = 2048) are skipped when ``trace(A + γI) / λ̂min ≤ limit``:
    ``A + γI`` factored, so it is positive definite and ``λ̂max ≤ λmax ≤ trace``, hence the power estimate could not
    exceed ``limit`` either and the warning decision is the same. ``κ̂`` is then ``max(pivot ratio,
    max diag / λ̂min)``, still a lower bound of ``κ`` (``λmax`` is at least every diagonal entry)."""
    k = probes.shape[1]
    w, inverse_z = solved[:, :-k], solved[:, -k:]
    lam_min = jnp.linalg.norm(probes) / jnp.linalg.norm(inverse_z)
    diag = jnp.diagonal(a) + gamma
    # (1 + d·eps) covers the rounding of a numerically definite system's tiny negative eigenvalues in the trace.
    trace_bound = jnp.sum(diag) * (1 + a.shape[0] * jnp.finfo(a.dtype).eps)

    def power_estimate() -> jax.Array:
        m = lambda v: jnp.matmul(a, v, precision=HIGHEST) + gamma * v  # noqa: E731 - (A + γI) v, A + γI not formed
        v = probes
        for _ in range(POWER_STEPS):
            v = m(v / jnp.linalg.norm(v, axis=0, keepdims=True))
        return jnp.max(jnp.linalg.norm(v, axis=0))

    lam_max = jax.lax.cond(trace_bound / lam_min <= limit, lambda: jnp.max(diag), power_estimate)
    kappa = jnp.maximum(pivot_kappa, lam_max / lam_min)
    return w, jnp.where(jnp.isfinite(pivot_kappa), kappa, pivot_kappa)


@jax.jit
def _primal_stats(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The core's block products: the host SYRK on CPU for large blocks (half the flops of XLA's full GEMM).
    return _block_products(x, y, x.dtype, impl="auto")


@jax.jit
def _dual_gram(x: jax.Array) -> jax.Array:
    return jnp.matmul(x, x.T, precision=HIGHEST)


def ridge_fit(x: Any, y: Any, gamma: float, *, form: str = "auto", **kwargs: Any) -> jax.Array:
    """Ridge weights ``W: (d, c)`` from data ``x: (n, d)`` and labels ``(n,)`` or targets ``(n, c)``.

    ``form="primal"`` solves ``(XᵀX + γI) W = XᵀY`` (a ``d×d`` system); ``form="dual"`` solves the kernel form
    ``W = Xᵀ(XXᵀ + γI)⁻¹Y`` (an ``n×n`` system; push-through identity, docs/methods.md §1). ``"auto"`` picks the
    smaller system. Both forms call :func:`ridge_solve`.
    """
    x = check_features(x)
    t, _ = as_targets(y, x.shape[0], None, x.dtype)
    if form == "auto":
        form = "dual" if x.shape[0] < x.shape[1] else "primal"
    if form == "primal":
        xtx, xty = _primal_stats(x, t)
        return ridge_solve(xtx, xty, gamma, **kwargs)
    if form == "dual":
        alpha = ridge_solve(_dual_gram(x), t, gamma, **kwargs)
        return jnp.matmul(x.T, alpha, precision=HIGHEST)
    raise ValueError(f"form must be 'auto', 'primal' or 'dual', got {form!r}")
