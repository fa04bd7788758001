"""The ``l3a`` family section on tiny synthetic multi-label features (no encoder, no files)."""

import json

import numpy as np

from benchmarks import _family_l3a
from continual.data import Split


def _split(n=300, m=150, c=10, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * 2.0
    prior = np.linspace(0.5, 0.08, c)

    def draw(k):
        y = (rng.random((k, c)) < prior).astype(np.int8)
        y[np.arange(k), rng.integers(c, size=k)] = 1
        return (y @ centers + rng.normal(size=(k, d))).astype(np.float32), y

    return Split(*draw(n), *draw(m))


def test_section_runs_and_reports(tmp_path):
    data = {_family_l3a.KEY: {"split": _split(), "source": "tiny"}}
    out = _family_l3a.run(data, True, tmp_path, "t")
    json.dumps(out)  # JSON-serializable
    methods = {r["method"] for r in out["rows"]}
    assert methods == {"L3A", "L3A PL only", "L3A WAC only", "plain analytic", "fine-tune", "joint ridge"}
    assert len(out["rows"]) == 6 * 5
    assert [r["seen"] for r in out["rows"] if r["method"] == "L3A"] == [2, 4, 6, 8, 10]
    assert all(0.0 <= r[k] <= 1.0 for r in out["rows"] for k in ("mAP", "CF1", "OF1"))
    exact = out["claims"][0]
    assert exact["holds"] and out["exact"] <= 1e-8
    assert {c["method"] for c in out["claims"]} == {"L3A"} and all(isinstance(c["holds"], bool) for c in out["claims"])
    assert out["plots"] == ["t_l3a_map.png"] and (tmp_path / "t_l3a_map.png").is_file()
    # the joint bound sees every label: it is the best analytic head after the last task
    final = {r["method"]: r["mAP"] for r in out["rows"] if r["task"] == 4}
    assert final["joint ridge"] >= final["plain analytic"] - 1e-9
    text = _family_l3a.render(out)
    assert "| L3A | 5 | 10 |" in text and "| method | claim |" in text
