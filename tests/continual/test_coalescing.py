"""ACIL/GACL hold small batches back and learn them together (ContinualClassifier.partial_fit).

Exactness: the held-back path and the batch-by-batch path accumulate the same sums in another grouping, so their
Grams differ by rounding (~1e-16 relative), which the solve amplifies by the condition number of ΦᵀΦ + γI (up to
~1e6 for these rank-deficient streams, fewer rows than buffer units): W agrees to 1e-9 relative, the project's
float64 exactness bar, and both equal float64 joint ridge to 1e-9. Bit-for-bit claims are made only for the same
calls and reads.
"""

import jax
import numpy as np
import pytest

from analytic import save_state
from analytic.checkpoint import CheckpointError, load_state
from continual import ACIL, GACL

CLASSES = 5
LEARNERS = {
    "ACIL": lambda: ACIL(0.1, buffer_size=96, seed=1, dtype=np.float64),
    "GACL": lambda: GACL(10.0, online_iter=2, buffer_size=96, dtype=np.float64),
}


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def _stream(seed=0, batches=30, rows=10, dim=16):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        y = rng.integers(0, CLASSES, rows)
        out.append((rng.normal(size=(rows, dim)) + y[:, None], y))
    return out


def _immediate(make):
    learner = make()
    learner._coalesce_below = 0  # the batch-by-batch path
    return learner


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_held_back_batches_equal_the_batch_by_batch_path_and_joint_ridge(name):
    stream = _stream()
    held, each = LEARNERS[name](), _immediate(LEARNERS[name])
    for x, y in stream:
        held.partial_fit(x, y, classes=CLASSES)
        each.partial_fit(x, y, classes=CLASSES)
    assert _rel(held.coef_, each.coef_) < 1e-9
    # Joint ridge on the learner's own features (GACL's online_iter = k scales XᵀX and XᵀY by k: ridge with γ/k).
    x = np.concatenate([s[0] for s in stream])
    labels = np.concatenate([s[1] for s in stream])
    phi = np.asarray(held.state.buffer(x), np.float64)
    gamma = 0.1 if name == "ACIL" else 10.0 / 2
    w = np.linalg.solve(phi.T @ phi + gamma * np.eye(phi.shape[1]), phi.T @ np.eye(CLASSES)[labels])
    assert _rel(held.coef_, w) < 1e-9


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_read_sees_every_batch_learned_so_far(name):
    held, each = LEARNERS[name](), _immediate(LEARNERS[name])
    for x, y in _stream(seed=1, batches=8):
        held.partial_fit(x, y, classes=CLASSES)
        each.partial_fit(x, y, classes=CLASSES)
        assert _rel(held.decision_function(x), each.decision_function(x)) < 1e-9
        assert int(held.state.head.stats.count) == int(each.state.head.stats.count)


def test_rows_are_learned_once_256_have_gathered_and_the_callers_array_is_copied():
    learner = LEARNERS["ACIL"]()
    stream = _stream(seed=2, batches=27)
    learner.partial_fit(*stream[0], classes=CLASSES)  # the first batch builds the state: learned at once
    for x, y in stream[1:26]:
        learner.partial_fit(x, y)
        x[...] = 1e6  # reusing the array after the call changes nothing learned
    assert learner._pending_rows == 250
    learner.partial_fit(*stream[26])
    assert learner.__dict__["_pending"] == []  # 260 rows: learned in one update
    reference = _immediate(LEARNERS["ACIL"])
    for x, y in _stream(seed=2, batches=27):
        reference.partial_fit(x, y, classes=CLASSES)
    assert _rel(learner.coef_, reference.coef_) < 1e-9


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_an_overflowing_batch_raises_from_its_own_call_and_keeps_the_held_back_rows(name):
    stream = _stream(seed=3, batches=6)
    learner = LEARNERS[name]()
    for x, y in stream:
        learner.partial_fit(x, y, classes=CLASSES)
    bad = stream[0][0].copy()
    bad[3] = 1e200  # squares overflow float64: the bound refuses to hold it back, the update refuses it
    with pytest.raises(ValueError, match="row 3"):
        learner.partial_fit(bad, stream[0][1])
    clean = _immediate(LEARNERS[name])
    for x, y in stream:
        clean.partial_fit(x, y, classes=CLASSES)
    assert _rel(learner.coef_, clean.coef_) < 1e-9


def test_the_rls_head_never_holds_rows_back():
    learner = ACIL(0.1, buffer_size=96, solver="rls", dtype=np.float64)
    for x, y in _stream(seed=4, batches=3):
        learner.partial_fit(x, y, classes=CLASSES)
        assert learner.__dict__["_pending"] == []


def test_a_checkpoint_keeps_held_back_rows_and_refuses_crafted_ones(tmp_path):
    stream = _stream(seed=5, batches=6)
    straight, first = LEARNERS["ACIL"](), LEARNERS["ACIL"]()
    for x, y in stream:
        straight.partial_fit(x, y, classes=CLASSES)
    for x, y in stream[:3]:
        first.partial_fit(x, y, classes=CLASSES)
    first.save(tmp_path / "ckpt")
    tree, meta = load_state(tmp_path / "ckpt")
    assert meta["held_back_rows"] == 20 and tree["held_back_x"].shape == (20, 16)
    resumed = ACIL.load(tmp_path / "ckpt")
    for x, y in stream[3:]:
        resumed.partial_fit(x, y, classes=CLASSES)
    np.testing.assert_array_equal(np.asarray(resumed.coef_), np.asarray(straight.coef_))  # same calls: bit for bit

    def crafted(name, **change):
        t = dict(tree, **{k: v for k, v in change.items() if k != "rows"})
        m = dict(meta, held_back_rows=change.get("rows", meta["held_back_rows"]))
        save_state(tmp_path / name, t, m)
        return tmp_path / name

    with pytest.raises(CheckpointError, match="held_back_rows"):
        ACIL.load(crafted("count", rows=19))
    nan_x = np.array(tree["held_back_x"])
    nan_x[4, 2] = np.nan
    with pytest.raises(CheckpointError, match="held_back_x"):
        ACIL.load(crafted("nan", held_back_x=nan_x))
    with pytest.raises(CheckpointError, match="held_back_ids"):
        ACIL.load(crafted("ids", held_back_ids=np.full(20, -1, np.int64)))
