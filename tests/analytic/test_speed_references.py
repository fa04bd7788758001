"""The NumPy bars of ``python -m benchmarks speed`` compute the learners' math exactly, and the harness runs.

The speed goals are ratios against :mod:`benchmarks._speed_reference`, so a reference that computed something
cheaper than the learners would make every goal meaningless: each path must equal a float64 joint ridge
``np.linalg.solve(XᵀX + γI, XᵀY)`` (Zhuang et al., NeurIPS 2022: the recursion's absolute memorization) within
1e-9 relative, and the NumPy feature maps must equal the learners' own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from analytic import RandomBuffer, feature_fusion
from benchmarks import _speed_reference as ref

REPO = Path(__file__).resolve().parents[2]


def _data(seed: int = 0, n: int = 300, d: int = 40, c: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d))
    labels = rng.permutation(np.arange(n) % c)
    return centers[labels] + rng.standard_normal((n, d)), labels


@pytest.mark.parametrize("path", [ref.GramPath, ref.WoodburyPath, ref.AuthorsRecursion])
@pytest.mark.parametrize("batch", [1, 10, 32, 300])
def test_paths_equal_joint_ridge(path: type, batch: int) -> None:
    x, labels = _data()
    y = ref.one_hot(labels, 5, np.float64)
    head = path(x.shape[1], 5, 1.0, np.float64)
    for s in range(0, x.shape[0], batch):
        head.add(x[s:s + batch], y[s:s + batch])
    assert ref.rel_diff(head.read(), ref.joint_ridge(x, y, 1.0)) <= 1e-9


def test_paths_equal_joint_ridge_after_every_read() -> None:
    # A read-out per phase (the Gram path's solve) must not disturb the statistics that follow.
    x, labels = _data(1)
    y = ref.one_hot(labels, 5, np.float64)
    heads = [p(x.shape[1], 5, 0.5, np.float64) for p in (ref.GramPath, ref.WoodburyPath, ref.AuthorsRecursion)]
    for end in range(50, 301, 50):
        for head in heads:
            head.add(x[end - 50:end], y[end - 50:end])
            assert ref.rel_diff(head.read(), ref.joint_ridge(x[:end], y[:end], 0.5)) <= 1e-9


def test_air_solve_is_class_weighted_ridge() -> None:
    x, labels = _data(2, c=4)
    labels = np.where(np.arange(labels.size) < 200, labels, 0)  # imbalanced: class 0 dominates
    stats = ref.AIRStats(x.shape[1], 6, 1.0, np.float64)  # classes 4 and 5 never seen: π = 0, zero columns
    for s in range(0, x.shape[0], 64):
        stats.add(x[s:s + 64], labels[s:s + 64])
    pi = 1.0 / np.bincount(labels)[labels]
    y = ref.one_hot(labels, 6, np.float64)
    direct = np.linalg.solve((x * pi[:, None]).T @ x + np.eye(x.shape[1]), (x * pi[:, None]).T @ y)
    assert ref.rel_diff(stats.read(), direct) <= 1e-9


def test_feature_maps_match_the_learners() -> None:
    x, _ = _data(3)
    buf = RandomBuffer(x.shape[1], 64, "relu", seed=0, dtype=jnp.float64)
    assert ref.rel_diff(ref.relu_features(x, np.asarray(buf.weight)), buf(jnp.asarray(x))) <= 1e-12
    proj = RandomBuffer(x.shape[1], 64, "identity", seed=1, dtype=jnp.float64)
    main, comp = ref.dsal_features(x, np.asarray(proj.weight))
    z = np.asarray(proj(jnp.asarray(x)))
    assert ref.rel_diff(main, np.maximum(z, 0)) <= 1e-12 and ref.rel_diff(comp, np.tanh(z)) <= 1e-12
    tokens = np.stack([x, 0.5 * x + 1.0, -x], axis=1)
    fused = feature_fusion(jnp.asarray(tokens), proj.weight)
    assert ref.rel_diff(ref.fused_features(tokens, np.asarray(proj.weight)), fused) <= 1e-12


def test_speed_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "speed", "--tiny", "--sections", "learners", "--learners", "ACIL",
         "--dtypes", "float64", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "speed_tiny.json").read_text())
    rows = record["figures"]["rows"]
    assert [(r["learner"], r["dtype"]) for r in rows] == [("ACIL", "float64")]
    for r in rows:
        assert r["ours_s"] > 0 and r["numpy_gram_s"] > 0 and r["numpy_woodbury_s"] > 0
        assert r["rel_diff"] <= r["tol"]
    assert "| learners | ACIL |" in proc.stdout
    assert wall < 60, f"the tiny speed run took {wall:.0f} s"
