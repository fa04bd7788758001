"""Adversarial inputs against every learning entry point: refused by name, state untouched, next call exact.

The matrix is generated: every entry point that learns from a batch (the ``AnalyticLinear`` estimator on both
solvers, the functional ``gram_update``/``rls_update``/``sharded_gram_update``, each continual learner's
``partial_fit`` and the baselines JointRidge, SLDA and FineTune) x float64/float32 state x a declared or
undeclared class count x every mutation of a good batch in :func:`mutations`. For each case the call must raise
``ValueError``/``TypeError`` whose message names the argument, the state must be bit-identical to before, and the
next good batch must give exactly (bit for bit) what a learner that never saw the bad call gives. A hypothesis
test then draws overflow positions/magnitudes and huge labels at random. The float32 recursion beyond its
precision is tested on a stream that went NaN before.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytic import (
    AnalyticLinear,
    NumericalBreakdownError,
    RidgeSolveWarning,
    data_mesh,
    gram_init,
    gram_update,
    rls_init,
    rls_update,
    sharded_gram_update,
)
from continual import ACIL, AIR, DSAL, FOAL, GACL
from continual.baselines import SLDA, FineTune, JointRidge

CLASSES, DIM, N = 5, 12, 16
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


# -- entry points ------------------------------------------------------------------------------------------------
class Entry:
    """A learner behind one entry point: ``fit(x, y, classes)`` learns and keeps the result, ``snapshot`` its
    state as NumPy leaves. Functional updates keep their state in ``self.state`` and never mutate it."""

    def __init__(self, name: str, dtype: np.dtype, make: Callable[[], Any], tokens: bool = False) -> None:
        self.name, self.dtype, self.tokens = name, dtype, tokens
        self.obj = make()

    def fit(self, x: Any, y: Any, classes: Any = None) -> None:
        raise NotImplementedError

    def snapshot(self) -> list[Any]:
        raise NotImplementedError


class Estimator(Entry):
    def fit(self, x, y, classes=None):
        self.obj.partial_fit(x, y, classes=classes)

    def snapshot(self):
        obj = self.obj
        if isinstance(obj, FineTune):
            state = (obj.params_, obj._opt_state, obj._key, obj._memory_x, obj._memory_y)
            extra = (obj._stream_seen, str(obj._rng.bit_generator.state), obj.n_classes_declared_)
        else:
            state = getattr(obj, "state_", None) if hasattr(obj, "state_") else obj.state
            extra = (getattr(obj, "classes", None), getattr(obj, "n_classes_declared_", None))
        return [np.asarray(leaf) for leaf in jax.tree.leaves(state)] + [extra, jax.tree.structure(state)]


class Functional(Entry):
    """The functional updates keep no memory of a declaration: like a caller would, pass it on every call."""

    def __init__(self, name, dtype, make, update):
        super().__init__(name, dtype, make)
        self.update, self.declared, self.calls = update, None, 0

    def fit(self, x, y, classes=None):
        if self.calls == 0:
            self.declared = classes
        self.calls += 1
        self.obj = self.update(self.obj, x, y, classes=self.declared if classes is None else classes)

    def snapshot(self):
        return [np.asarray(leaf) for leaf in jax.tree.leaves(self.obj)] + [jax.tree.structure(self.obj)]


def _sharded(stats, x, y, classes=None):
    return sharded_gram_update(stats, x, y, data_mesh(jax.devices()[:1]), classes=classes)


ENTRIES: dict[str, Callable[[np.dtype], Entry]] = {
    "AnalyticLinear-gram": lambda dt: Estimator("AnalyticLinear-gram", dt, lambda: AnalyticLinear(0.5, dtype=dt)),
    "AnalyticLinear-rls": lambda dt: Estimator(
        "AnalyticLinear-rls", dt, lambda: AnalyticLinear(0.5, solver="rls", dtype=dt)),
    "gram_update": lambda dt: Functional("gram_update", dt, lambda: gram_init(DIM, 0, dt), gram_update),
    "rls_update": lambda dt: Functional("rls_update", dt, lambda: rls_init(DIM, 0, 0.5, dt), rls_update),
    "sharded_gram_update": lambda dt: Functional("sharded_gram_update", dt, lambda: gram_init(DIM, 0, dt), _sharded),
    "ACIL": lambda dt: Estimator("ACIL", dt, lambda: ACIL(0.5, buffer_size=48, dtype=dt)),
    "DSAL": lambda dt: Estimator("DSAL", dt, lambda: DSAL(0.5, 0.5, buffer_size=48, dtype=dt)),
    "GACL": lambda dt: Estimator("GACL", dt, lambda: GACL(0.5, buffer_size=48, dtype=dt)),
    "AIR": lambda dt: Estimator("AIR", dt, lambda: AIR(0.5, dtype=dt)),
    "FOAL": lambda dt: Estimator("FOAL", dt, lambda: FOAL(0.5, projection_dim=48, batch_size=4, dtype=dt),
                                 tokens=True),
    # the baselines the benchmarks compare against take the same inputs and promise the same
    "JointRidge": lambda dt: Estimator("JointRidge", dt, lambda: JointRidge(0.5, buffer_size=48, dtype=dt)),
    "SLDA": lambda dt: Estimator("SLDA", dt, lambda: SLDA(dtype=dt)),
}
# FineTune trains in float32 whatever the input dtype: one row, not two.
FLOAT32_ONLY = {"FineTune": lambda dt: Estimator("FineTune", dt, lambda: FineTune(epochs=1, replay=8, batch_size=8))}
DENSE_TARGETS = {"AnalyticLinear-gram", "AnalyticLinear-rls", "gram_update", "rls_update", "sharded_gram_update",
                 "JointRidge"}


def good_batch(seed: int, entry: Entry) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (N, 3, DIM) if entry.tokens else (N, DIM)
    return rng.normal(size=shape).astype(entry.dtype), rng.integers(0, CLASSES - 1, N)


# -- mutations of a good batch -------------------------------------------------------------------------------------
def _with(x: np.ndarray, value: float, index: int = 37, dtype: Any = None) -> np.ndarray:
    out = np.array(x, dtype=dtype or x.dtype)
    out.flat[index % out.size] = value
    return out


def mutations(entry: Entry, x: np.ndarray, y: np.ndarray, declared: int | None) -> list[tuple]:
    """``(what, x, y, classes, error types, argument named in the message)`` for one entry point."""
    xname = "block_cls" if entry.tokens else "x"
    huge = 1e200 if entry.dtype == F64 else 1e30
    # The estimator classes follow scikit-learn: integer and object arrays of numbers are converted (tested in
    # tests/analytic/test_sklearn_api.py), and labels other than class ids are refused only once the estimator
    # has learned class ids (it then says so with a ValueError).
    estimator = isinstance(entry, Estimator)
    label_error = (TypeError, ValueError) if estimator else TypeError
    cases = [
        ("overflowing entry", _with(x, huge), y, None, ValueError, xname),
        ("overflowing entry, negative", _with(x, -huge, index=5), y, None, ValueError, xname),
        ("NaN", _with(x, np.nan), y, None, ValueError, xname),
        ("inf", _with(x, np.inf), y, None, ValueError, xname),
        ("wrong width", x[..., :-1], y, None, ValueError, xname),
        ("string features", np.full(x.shape, "a"), y, None, (TypeError, ValueError), xname),
        ("None features", None, y, None, (TypeError, ValueError), xname),
        ("empty batch", x[:0], y[:0], None, ValueError, xname),
        ("label 2**62", x, np.where(np.arange(N) == 3, 2**62, y), None, ValueError, "y"),
        ("label 2**40", x, np.where(np.arange(N) == 3, 2**40, y), None, ValueError, "y"),
        ("label 2**31", x, np.where(np.arange(N) == 3, 2**31, y), None, ValueError, "y"),
        ("label uint64 max", x, np.where(np.arange(N) == 3, np.iinfo(np.uint64).max, y.astype(np.uint64)), None,
         ValueError, "y"),
        ("label 1e300", x, np.where(np.arange(N) == 3, 1e300, y.astype(float)), None, ValueError, "y"),
        ("negative label", x, -y - 1, None, ValueError, "y"),
        ("boolean labels", x, y > 1, None, label_error, "y"),
        ("string labels", x, y.astype(str), None, label_error, "y"),
        ("labels/rows mismatch", x, y[:-1], None, ValueError, "y"),
        ("classes 2.5", x, y, 2.5, TypeError, "classes"),
        ("classes '5'", x, y, "5", TypeError, "classes"),
        ("classes inf", x, y, float("inf"), TypeError, "classes"),
        ("classes nan", x, y, float("nan"), TypeError, "classes"),
        ("classes True", x, y, True, TypeError, "classes"),
        ("classes 0", x, y, 0, ValueError, "classes"),
        ("classes -3", x, y, -3, ValueError, "classes"),
        ("classes 2**40", x, y, 2**40, ValueError, "classes"),
    ]
    if not estimator:
        cases += [("integer features", x.astype(np.int64), y, None, TypeError, xname),
                  ("object features", x.astype(object), y, None, TypeError, xname)]
    if entry.dtype == F32:
        # finite in float64, infinite once cast to the learner's float32
        cases.append(("float64 entry beyond float32", _with(x, 1e39, dtype=np.float64), y, None, ValueError, xname))
    if declared is not None:
        cases.append(("label at declared count", x, np.where(np.arange(N) == 2, declared, y), None, ValueError, "y"))
        if entry.name in DENSE_TARGETS:
            wide = np.eye(declared + 2)[np.minimum(y + 2, declared + 1)].astype(entry.dtype)
            cases.append(("dense targets wider than declared", x, wide, None, ValueError, "y"))
    return cases


def _assert_same(before: list[Any], after: list[Any], what: str) -> None:
    assert len(before) == len(after), what
    for a, b in zip(before, after):
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True), what
        else:
            assert a == b, what


def _run_matrix(name: str, dtype: np.dtype, declared: int | None) -> int:
    make = ENTRIES.get(name) or FLOAT32_ONLY[name]
    probe = make(dtype)
    x1, y1 = good_batch(1, probe)
    x2, y2 = good_batch(2, probe)
    reference = make(dtype)
    reference.fit(x1, y1, classes=declared)
    reference.fit(x2, y2)
    expected = reference.snapshot()
    count = 0
    for what, bad_x, bad_y, bad_classes, error, argument in mutations(probe, x1, y1, declared):
        entry = make(dtype)
        entry.fit(x1, y1, classes=declared)
        before = entry.snapshot()
        with pytest.raises(error) as info:
            entry.fit(bad_x, bad_y, classes=bad_classes)
        assert not isinstance(info.value, NumericalBreakdownError), what
        message = str(info.value)
        # F-OAL's class wrapper calls its tokens `x`, the functional update `block_cls`: either names the argument
        names = ("x", "block_cls") if argument == "block_cls" else (argument,)
        assert any(message.startswith(a) or f" {a} " in f" {message} " or f"{a}:" in message for a in names), (
            f"{name} {dtype} {what}: message does not name {argument!r}: {message}")
        _assert_same(before, entry.snapshot(), f"{name} {dtype} {what}: state changed")
        entry.fit(x2, y2)
        _assert_same(expected, entry.snapshot(), f"{name} {dtype} {what}: next good call differs")
        count += 1
    return count


@pytest.mark.parametrize("declared", [None, CLASSES], ids=["undeclared", "declared"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_adversarial_matrix(name, dtype, declared):
    assert _run_matrix(name, dtype, declared) >= 25


@pytest.mark.parametrize("declared", [None, CLASSES], ids=["undeclared", "declared"])
def test_adversarial_matrix_fine_tune(declared):
    assert _run_matrix("FineTune", F32, declared) >= 25


# -- random overflow and label attacks ---------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(ENTRIES)),
    float32=st.booleans(),
    index=st.integers(0, N * DIM - 1),
    exponent=st.floats(0.51, 1.0),
    label=st.integers(1 << 16, (1 << 63) - 1),
)
def test_random_overflow_and_labels_are_refused_without_trace(name, float32, index, exponent, label):
    dtype = F32 if float32 else F64
    entry = ENTRIES[name](dtype)
    x1, y1 = good_batch(1, entry)
    entry.fit(x1, y1)
    before = entry.snapshot()
    # |v| ≥ sqrt(max) so that v² overflows the learner's dtype (or its buffer/fusion output for the buffered ones)
    value = float(np.finfo(dtype).max) ** exponent * (1e3 if entry.name in ("ACIL", "DSAL", "GACL", "FOAL") else 1)
    value = min(value, float(np.finfo(dtype).max))
    with pytest.raises(ValueError):
        entry.fit(_with(x1, value, index), y1)
    with pytest.raises(ValueError, match="y"):
        entry.fit(x1, np.where(np.arange(N) == index % N, label, y1))
    _assert_same(before, entry.snapshot(), f"{name}: state changed")


# -- the recursion beyond its dtype's precision --------------------------------------------------------------------
def near_duplicate_stream(n: int = 2000, d: int = 32, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Half the columns repeat the other half up to 1e-4 noise: cond(XᵀX) ≈ 4e8, beyond float32's 1/eps ≈ 8e6.
    Without health checks, float32 Woodbury on this stream (γ = 1e-4, one row per step) was NaN by step 1000."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[:, d // 2:] = x[:, : d // 2] + 1e-4 * rng.normal(size=(n, d // 2))
    return x, rng.integers(0, 5, n)


def test_float32_recursion_beyond_precision_warns_then_refuses_and_never_holds_nan():
    x, y = near_duplicate_stream()
    x32 = x.astype(np.float32)
    state = rls_init(x.shape[1], 5, 1e-4, jnp.float32)
    first_warning = breakdown = None
    refused = 0
    for i in range(len(y)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                new = rls_update(state, x32[i:i + 1], y[i:i + 1])
            except NumericalBreakdownError:
                refused += 1
                breakdown = i if breakdown is None else breakdown
                continue  # the stream goes on from the last sound state
        if first_warning is None and any(issubclass(w.category, RidgeSolveWarning) for w in caught):
            first_warning = i
        state = new
    assert first_warning is not None and breakdown is not None and first_warning < breakdown
    assert refused > 0
    assert bool(jnp.isfinite(state.weight).all()) and bool(jnp.isfinite(state.inv_autocorr).all())
    # what it kept is usable: finite predictions on the whole stream
    assert np.isfinite(np.asarray(x32 @ np.asarray(state.weight))).all()


def test_float32_estimator_on_duplicated_columns_raises_instead_of_nan():
    rng = np.random.default_rng(0)
    half = rng.normal(size=(200, 16))
    x = np.hstack([half, half]).astype(np.float32)
    y = rng.integers(0, 3, 200)
    est = AnalyticLinear(1e-12, solver="rls", dtype=jnp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RidgeSolveWarning)
        with pytest.raises(NumericalBreakdownError, match="float32"):
            est.partial_fit(x, y)
    assert est.state_ is None  # the failed first call left nothing behind


def test_float64_recursion_on_duplicated_columns_warns():
    rng = np.random.default_rng(0)
    half = rng.normal(size=(200, 16))
    x, y = np.hstack([half, half]), rng.integers(0, 3, 200)
    est = AnalyticLinear(1e-12, solver="rls")
    with pytest.warns(RidgeSolveWarning, match="float64"):
        est.partial_fit(x[:100], y[:100]).partial_fit(x[100:], y[100:])
    assert bool(jnp.isfinite(est.coef_).all())


def test_a_healthy_float32_stream_neither_warns_nor_refuses():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    y = rng.integers(0, 4, 3000)
    state = rls_init(32, 4, 1.0, jnp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(0, 3000, 10):
            state = rls_update(state, x[i:i + 10], y[i:i + 10])
    w64 = np.linalg.solve(x.T.astype(np.float64) @ x + np.eye(32), x.T.astype(np.float64) @ np.eye(4)[y])
    # float32 recursion vs float64 joint ridge: 300 steps of relative rounding ~1e-7 each, so 1e-4 is generous
    assert np.abs(np.asarray(state.weight) - w64).max() <= 1e-4 * np.abs(w64).max()
