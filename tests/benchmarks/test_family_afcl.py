"""The ``afcl`` family section on tiny synthetic features: AFCL equals joint ridge after every task, its accuracy
does not move with the partition, the gradient baselines run task after task, and the record renders."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import _family_afcl
from continual.data import Split


def _split(seed: int, classes: int, n: int, d: int) -> Split:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, d)) * 3.0

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.concatenate([np.arange(classes), rng.integers(0, classes, m - classes)])
        return (centers[y] + rng.standard_normal((m, d))).astype(np.float32), y.astype(np.int64)

    return Split(*draw(n), *draw(n // 2))


def test_afcl_section_on_tiny_features(tmp_path):
    data = {"fashion-mnist/effnet-lite0": {"split": _split(0, 10, 1500, 12), "source": "tiny"},
            "wordnet-45/minilm": {"split": _split(1, 15, 1500, 10), "source": "tiny"},
            "fashion-mosaic/effnet-lite0": {"split": None, "source": "ignored by this section"}}
    section = _family_afcl.run(data, True, tmp_path, "t", clients=10)
    json.dumps(section, allow_nan=False)
    methods = {(r["dataset"], r["method"]) for r in section["rows"]}
    assert len(methods) == 8 and len(section["rows"]) == 2 * (1 + 3 * 3)
    claims = {c["claim"]: c for c in section["claims"]}
    assert claims["global model = centralized joint ridge after every task, any split"]["holds"]
    assert claims["accuracy invariant to the non-IID degree (IID, Dir 1, Dir 0.1)"]["holds"]
    afcl = [r for r in section["rows"] if r["method"] == "AFCL"]
    assert max(r["max_rel_diff_vs_joint"] for r in afcl) < 1e-8 and {r["clients"] for r in afcl} == {10}
    joint = {r["dataset"]: r for r in section["rows"] if r["method"].startswith("joint")}
    assert all(r["A_avg"] == joint[r["dataset"]]["A_avg"] for r in afcl)
    assert all(c["published"] and c["source"] for c in section["claims"])
    assert all((tmp_path / p).exists() for p in section["plots"]) and len(section["plots"]) == 2
    text = _family_afcl.render(section)
    assert "| AFCL |" in text and "FedProx per task" in text
