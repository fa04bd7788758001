import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from analytic import RidgeSolveWarning, ridge_fit, ridge_solve
from analytic.solve import cholesky_ridge_solve

from .helpers import joint_ridge, rel_err


@pytest.mark.parametrize("shape", [(40, 10), (10, 40)])
def test_dual_and_primal_ridge_fit_agree_with_joint_ridge(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    y = rng.integers(0, 4, shape[0])
    primal = ridge_fit(x, y, 0.3, form="primal")
    dual = ridge_fit(x, y, 0.3, form="dual")
    auto = ridge_fit(x, y, 0.3)
    ref = joint_ridge(x, y, 0.3)
    assert rel_err(primal, ref) < 1e-10 and rel_err(dual, ref) < 1e-10 and rel_err(auto, ref) < 1e-10


def test_ill_conditioned_gram_gives_finite_answer_and_warns():
    # Gram with eigenvalues spanning 12 decades (condition number 1e12 with γ = 1e-12).
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    gram = (q * np.logspace(0, -12, 30)) @ q.T
    gram = 0.5 * (gram + gram.T)
    rhs = rng.standard_normal((30, 3))
    with pytest.warns(RidgeSolveWarning, match="ill-conditioned"):
        w = ridge_solve(gram, rhs, 1e-12)
    assert np.isfinite(np.asarray(w)).all()
    # The answer is still the solution of the system it was given, to the accuracy the conditioning allows.
    residual = (gram + 1e-12 * np.eye(30)) @ np.asarray(w) - rhs
    assert np.linalg.norm(residual) / np.linalg.norm(rhs) < 1e-3


def test_indefinite_system_falls_back_to_eigh_and_warns():
    # A "Gram" with a negative eigenvalue (what a careless subtraction produces): Cholesky fails.
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    gram = (q * np.array([5, 4, 3, 2, 1, 0.5, 0.1, -2.0])) @ q.T
    with pytest.warns(RidgeSolveWarning, match="fell back to eigh"):
        w = ridge_solve(gram, np.ones((8, 2)), 0.1)
    assert np.isfinite(np.asarray(w)).all()


def test_well_conditioned_solve_is_silent_and_exact():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = ridge_solve(x.T @ x, x.T @ x[:, :3], 1.0)
    assert rel_err(w, joint_ridge(x, x[:, :3], 1.0)) < 1e-12


@pytest.mark.parametrize("gamma", [0.0, -1.0, float("nan"), float("inf")])
def test_ridge_solve_refuses_bad_gamma(gamma):
    with pytest.raises(ValueError, match="gamma"):
        ridge_solve(jnp.eye(3), jnp.ones((3, 1)), gamma)


def test_ridge_solve_refuses_bad_shapes():
    with pytest.raises(ValueError, match="square"):
        ridge_solve(jnp.ones((3, 4)), jnp.ones((3, 1)), 1.0)
    with pytest.raises(ValueError, match="xty"):
        ridge_solve(jnp.eye(3), jnp.ones((4, 1)), 1.0)


def _spd(d: int, spectrum: np.ndarray, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return 0.5 * ((q * spectrum) @ q.T + ((q * spectrum) @ q.T).T)


@pytest.mark.parametrize("seed", range(4))
def test_condition_estimate_brackets_the_true_condition_number(seed):
    # κ̂ never exceeds κ (both the pivot ratio and λ̂max/λ̂min are one-sided) and undershoots by at most √d.
    from analytic.solve import _condition_estimate, _probes

    d, gamma = 60, 1e-3
    rng = np.random.default_rng(seed)
    spectrum = np.concatenate([10 ** rng.uniform(-2, 4, d - 20), np.zeros(20)])  # rank-deficient, like n < d
    a = _spd(d, spectrum, seed)
    kappa = (spectrum.max() + gamma) / (spectrum.min() + gamma)
    probes = _probes(d, np.float64)
    solved, pivot = cholesky_ridge_solve(a, jnp.concatenate([jnp.ones((d, 2)), probes], axis=1), gamma)
    _, estimate = _condition_estimate(jnp.asarray(a), solved, probes, gamma, pivot)
    assert kappa / np.sqrt(d) <= float(estimate) <= kappa * (1 + 1e-6)
    assert float(estimate) >= float(pivot)


@pytest.mark.parametrize("seed", range(3))
def test_condition_estimate_skips_power_steps_only_where_the_warning_decision_is_already_known(seed):
    # With a warning limit, the power steps are skipped when trace(A + γI)/λ̂min ≤ limit. Then both the skipped and
    # the full estimate are ≤ limit (same decision), the skipped one still never exceeds κ; above it, they are equal.
    from analytic.solve import _condition_estimate, _probes

    d, gamma = 60, 1e-3
    rng = np.random.default_rng(seed)
    spectrum = np.concatenate([10 ** rng.uniform(-2, 4, d - 20), np.zeros(20)])
    a = jnp.asarray(_spd(d, spectrum, seed))
    kappa = (spectrum.max() + gamma) / (spectrum.min() + gamma)
    probes = _probes(d, np.float64)
    solved, pivot = cholesky_ridge_solve(a, jnp.concatenate([jnp.ones((d, 2)), probes], axis=1), gamma)
    full = float(_condition_estimate(a, solved, probes, gamma, pivot)[1])
    lam_min = float(jnp.linalg.norm(probes) / jnp.linalg.norm(solved[:, 2:]))
    trace_ratio = (float(jnp.trace(a)) + d * gamma) / lam_min
    assert trace_ratio >= full  # the bound the skip relies on
    for limit in (trace_ratio * 1.01, trace_ratio * 0.99, full * 0.5):
        estimate = float(_condition_estimate(a, solved, probes, gamma, pivot, limit)[1])
        assert (estimate > limit) == (full > limit)
        assert estimate <= kappa * (1 + 1e-6)
        if limit < trace_ratio:  # not skipped: the power estimate itself
            assert estimate == full


def test_float32_rank_deficient_gram_warns_where_the_pivot_ratio_alone_is_silent():
    # Fewer rows than features (the continual setting: a wide buffer): the Cholesky pivots stay within 1e3 of each
    # other although κ(A + γI) = 1e6, where float32 keeps about one significant digit.
    d, gamma = 200, 1e-2
    spectrum = np.concatenate([np.logspace(4, 2, 80), np.zeros(d - 80)])
    a = _spd(d, spectrum, 7).astype(np.float32)
    _, pivot = cholesky_ridge_solve(jnp.asarray(a), jnp.ones((d, 1), jnp.float32), gamma)
    assert float(pivot) < 1e5  # the old estimate would not have warned
    with pytest.warns(RidgeSolveWarning, match="ill-conditioned"):
        ridge_solve(a, np.ones((d, 3), np.float32), gamma)
