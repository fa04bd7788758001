"""Family section ``apfl`` on tiny synthetic features: rows for every method, setting and data set, per-client
test sets that follow the training label shares, exactness claims that hold, a scatter plot written."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import _family_apfl
from continual.data import Split


def _split(seed: int, classes: int, n: int, d: int) -> Split:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, d)) * 2.0

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.concatenate([np.arange(classes), rng.integers(0, classes, m - classes)])
        return (centers[y] + rng.standard_normal((m, d))).astype(np.float32), y.astype(np.int64)

    return Split(*draw(n), *draw(n // 2))


def test_client_test_sets_follow_training_shares():
    y_train = np.repeat(np.arange(3), 100)
    parts = [np.arange(0, 100), np.arange(100, 250), np.arange(250, 300)]  # client 1 holds half of class 2
    y_test = np.repeat(np.arange(3), 40)
    tests = _family_apfl.client_test_sets(y_train, parts, y_test, 3)
    assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(120))  # disjoint and covering
    assert np.bincount(y_test[tests[0]], minlength=3).tolist() == [40, 0, 0]
    assert np.bincount(y_test[tests[1]], minlength=3).tolist() == [0, 40, 20]
    assert np.bincount(y_test[tests[2]], minlength=3).tolist() == [0, 0, 20]


def test_run_and_render(tmp_path):
    data = {"fashion-mnist/effnet-lite0": {"split": _split(0, 5, 600, 10), "source": "tiny"},
            "wordnet-45/minilm": {"split": _split(1, 6, 600, 8), "source": "tiny"}}
    section = _family_apfl.run(data, True, tmp_path, "t", rff_features=64)
    json.dumps(section)  # JSON-serializable
    assert len(section["rows"]) == 2 * 3 * len(_family_apfl.METHODS)
    assert {r["method"] for r in section["rows"]} == set(_family_apfl.METHODS)
    claims = {c["method"]: c for c in section["claims"]}
    assert claims["APFL primary stream"]["holds"] and claims["Fed3R"]["holds"]
    for r in section["rows"]:
        assert 0.0 <= r["mean_client_acc"] <= 100.0
    assert (tmp_path / section["plots"][0]).exists()
    md = _family_apfl.render(section)
    assert "APFL" in md and "| method | claim |" in md
