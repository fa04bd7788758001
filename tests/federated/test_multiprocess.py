"""Ridge over rows sharded across real ``jax.distributed`` processes (gloo CPU collectives on 127.0.0.1).

Claim: every process ends with ``W = (XᵀX + γI)⁻¹XᵀY`` of the pooled rows. Checked in float64 against NumPy's
solve on the concatenated data (≤ 1e-10 relative: a d = 24 SPD solve with condition ~10 loses nothing near that),
and the processes agree bit for bit (one replicated ``psum`` result, then the same deterministic solve).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from analytic import GramStats, gram_init, gram_solve, gram_update
from federated import multiprocess as mp

GAMMA = 0.5
ARGS = ["--data", "synthetic", "--rows", "2001", "--dim", "24", "--classes", "5", "--seed", "3",
        "--gamma", str(GAMMA), "--dtype", "float64"]


def _numpy_ridge(x: np.ndarray, labels: np.ndarray, gamma: float) -> np.ndarray:
    y = np.eye(int(labels.max()) + 1)[labels]
    return np.linalg.solve(x.T @ x + gamma * np.eye(x.shape[1]), x.T @ y)


# With 2 local devices per process the local accumulation goes through analytic.sharded_gram_update (the
# multi-GPU-host path) before the cross-process psum; with 1 it is plain analytic.gram_update.
@pytest.mark.parametrize("processes, local_devices", [(2, 2), (4, 1)])
def test_every_process_gets_the_pooled_ridge_solution(processes, local_devices, tmp_path):
    results = mp.launch(processes, [*ARGS, "--out", str(tmp_path)], timeout=240,
                        env={"JAX_PLATFORMS": "cpu", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                             "XLA_FLAGS": f"--xla_force_host_platform_device_count={local_devices}"})
    assert len(results) == processes
    weights = [np.load(tmp_path / f"weights_{i}.npy") for i in range(processes)]
    summaries = [json.loads((tmp_path / f"summary_{i}.json").read_text()) for i in range(processes)]
    x, labels = mp.load_shard("synthetic", 2001, 24, 5, 3)
    # Shards are uneven (2001 rows) and cover every row once.
    assert sum(s["local_rows"] for s in summaries) == 2001 and all(s["total_rows"] == 2001 for s in summaries)
    assert all(s["num_processes"] == processes for s in summaries)
    assert all(len(s["devices"]) == processes * local_devices for s in summaries)
    reference = _numpy_ridge(x, labels, GAMMA)
    single_process = np.asarray(gram_solve(gram_update(gram_init(24, 5, jnp.float64), x, labels), GAMMA))
    for w in weights:
        assert w.dtype == np.float64
        assert np.abs(w - reference).max() <= 1e-10 * np.abs(reference).max()
        assert np.abs(w - single_process).max() <= 1e-10 * np.abs(single_process).max()
        assert np.array_equal(w, weights[0])


def test_one_process_path_equals_numpy_ridge_and_handles_an_empty_shard():
    x, labels = mp.load_shard("synthetic", 300, 8, 3, 1)
    weight, total = mp.distributed_ridge(x, labels, GAMMA, classes=3, batch_size=64)
    assert int(total.count) == 300
    np.testing.assert_allclose(np.asarray(weight), _numpy_ridge(x, labels, GAMMA), rtol=0, atol=1e-12)
    empty = mp.local_stats(np.zeros((0, 8)), np.zeros(0, np.int64), classes=3)
    assert int(empty.count) == 0 and empty.xty.shape == (8, 3) and not np.any(np.asarray(empty.xtx))


def test_shards_cover_all_rows_once():
    for processes in (1, 3, 7):
        covered = np.concatenate([np.arange(2001)[mp.shard_rows(2001, processes, i)] for i in range(processes)])
        np.testing.assert_array_equal(covered, np.arange(2001))


def test_bad_input_is_rejected_before_any_collective():
    x, labels = mp.load_shard("synthetic", 50, 4, 3, 0)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mp.local_stats(bad, labels)
    with pytest.raises(ValueError, match="row count"):
        mp.local_stats(x, labels[:-1])
    with pytest.raises(ValueError, match="class id 2"):
        mp.local_stats(x, labels, classes=2)
    with pytest.raises(TypeError, match="floating"):
        mp.local_stats(x.astype(np.int64), labels)
    with pytest.raises(ValueError, match="batch_size"):
        mp.local_stats(x, labels, batch_size=0)
    with pytest.raises(ValueError, match="gamma"):
        mp.distributed_ridge(x, labels, 0.0)
    with pytest.raises(TypeError, match="GramStats"):
        mp.allreduce_stats((x.T @ x, x.T, 50))
    with pytest.raises(ValueError, match="process_id"):
        mp.initialize("127.0.0.1:1", 2, 2)
    with pytest.raises(ValueError, match="host:port"):
        mp.initialize("localhost", 2, 0)
    assert isinstance(mp.local_stats(x, labels), GramStats)


def test_launcher_reports_a_failing_process_with_its_stderr():
    with pytest.raises(RuntimeError, match="invalid choice"):
        mp.launch(1, ["--data", "imagenet"], timeout=120, env={"JAX_PLATFORMS": "cpu"})


def test_synthetic_shards_concatenate_to_the_same_data_for_any_process_count():
    whole_x, whole_y = mp.load_shard("synthetic", 9000, 6, 4, 5)
    for processes in (2, 3):
        parts = [mp.load_shard("synthetic", 9000, 6, 4, 5, processes, i) for i in range(processes)]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole_x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole_y)
