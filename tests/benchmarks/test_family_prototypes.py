"""The ``prototypes`` family section on tiny synthetic features: every method runs on every data set, the record
is JSON-serialisable, the plot is written and the claims come from the rows (and can fail)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import _family_prototypes as section
from continual.data import Split


def _split(seed: int, classes: int, n: int, d: int, positive: bool) -> Split:
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.standard_normal((classes, d))

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.concatenate([np.arange(classes), rng.choice(classes, m - classes)])
        x = centres[y] + rng.standard_normal((m, d))
        return (np.abs(x) if positive else x).astype(np.float32), y.astype(np.int64)

    return Split(*draw(n), *draw(n // 2))


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    data = {"fashion-mnist/effnet-lite0": {"split": _split(0, 4, 160, 8, True), "source": "tiny"},
            "wordnet-45/minilm": {"split": _split(1, 12, 240, 8, False), "source": "tiny"}}
    out = tmp_path_factory.mktemp("family")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(section.BUFFER, "quick", 32)   # a small M keeps the run to seconds
        result = section.run(data, True, out, "family_quick")
    return result, out


def test_every_method_runs_on_every_data_set_and_the_record_is_json(record) -> None:
    result, out = record
    json.dumps(result)
    assert {(r["data"], r["method"]) for r in result["rows"]} == {
        (k, m) for k in ("fashion-mnist/effnet-lite0", "wordnet-45/minilm") for m in section.METHODS}
    phases = {r["data"]: r["phases"] for r in result["rows"]}
    assert phases == {"fashion-mnist/effnet-lite0": 2, "wordnet-45/minilm": 2}
    assert all(0.0 <= r["A_last"] <= 100.0 for r in result["rows"])
    assert result["plots"] == ["family_quick_prototypes_phases.png"] and (out / result["plots"][0]).exists()
    markdown = section.render(result)
    assert markdown.count("| fashion-mnist/effnet-lite0 | RanPAC |") == 1 and "phased = joint" in markdown


def test_ranpac_phased_equals_joint_in_the_record(record) -> None:
    result, _ = record
    claim = next(c for c in result["claims"] if c["claim"].startswith("phased = joint"))
    assert claim["holds"] and float(claim["ours"]) <= section.EXACT


def test_claims_can_fail() -> None:
    rows = [{"data": "d", "method": m, "A_last": a} for m, a in
            (("RanPAC", 50.0), ("NCM", 60.0), ("FeCAM", 70.0))]
    claims = {c["claim"]: c["holds"] for c in section._claims(rows, {"d": 1e-3})}
    assert claims == {"phased = joint (fixed λ): max relative head difference": False,
                      "RanPAC ≥ NCM (final accuracy, %)": False, "FeCAM ≥ NCM (final accuracy, %)": True}
