"""``python -m benchmarks real`` on tiny stand-in features: the γ rule sees only base-phase training rows, every
learner runs on every stream, the federated grid and the claims are computed from the rows (the real encoders and
files are tested in tests/peft_probe/test_efficientnet.py and tests/continual/test_features.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analytic.selection import select_gamma
from benchmarks import _real_claims, real
from continual.data import Split
from continual.scenarios import class_incremental


def _split(seed: int, classes: int, n: int, d: int, imbalanced: bool = False) -> Split:
    rng = np.random.default_rng(seed)
    p = np.linspace(3, 1, classes) if imbalanced else np.ones(classes)
    centers = rng.standard_normal((classes, d)) * 2.0

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.concatenate([np.arange(classes), rng.choice(classes, m - classes, p=p / p.sum())])
        return (centers[y] + rng.standard_normal((m, d))).astype(np.float32), y.astype(np.int64)

    return Split(*draw(n), *draw(n // 2))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data = {
        "fashion-mnist/effnet-lite0": {"split": _split(0, 6, 360, 12), "class_names": None, "seconds": 0.0,
                                       "protocols": [("CIL B3+3", 3, 3), ("CIL 6x1", 1, 5)], "source": "tiny"},
        "wordnet-45/minilm": {"split": _split(1, 8, 400, 10, imbalanced=True), "class_names": list("abcdefgh"),
                              "seconds": 0.0, "protocols": [("CIL B4+4", 4, 4)], "source": "tiny"},
    }
    out = tmp_path_factory.mktemp("real")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(real, "load_features", lambda args: data)
        patch.setitem(real.BUFFERS, "quick", (32, 64))
        # A subset of the learners keeps this under a minute (each stream shape compiles anew); the claims below
        # need exactly these.
        figures = real.main(["--quick", "--sections", "cil,fl", "--clients", "3,6", "--out", str(out),
                             "--learners", "ACIL,joint ridge,fine-tune,AIR,GACL,SLDA"])
    return data, figures, out


def test_gamma_is_chosen_on_base_phase_training_rows_only(tiny):
    data, figures, _ = tiny
    split = data["wordnet-45/minilm"]["split"]
    base = class_incremental(split.y_train, 4, 4, seed=0)[0].indices
    expected = select_gamma(split.x_train[base], split.y_train[base], buffer_sizes=(32, 64), seed=0,
                            dtype=np.float64)
    chosen = figures["cil_gamma"]["wordnet-45/minilm CIL B4+4"]
    assert (chosen["gamma"], chosen["buffer"], chosen["train_rows"] + chosen["validation_rows"]) == (
        expected.gamma, expected.buffer_size, base.size)
    # The one-class-per-phase stream reuses the choice made on the first streams' base phase.
    reused = figures["cil_gamma"]["fashion-mnist/effnet-lite0 CIL 6x1"]
    first = figures["cil_gamma"]["fashion-mnist/effnet-lite0 CIL B3+3"]
    assert (reused["gamma"], reused["buffer"]) == (first["gamma"], first["buffer"]) and "reused" in reused["rule"]


def test_every_learner_runs_on_every_stream_and_the_record_is_written(tiny):
    data, figures, out = tiny
    learners = {r["learner"] for r in figures["cil"]}
    assert learners == {"ACIL", "GACL", "AIR", "joint ridge", "SLDA", "fine-tune"}
    streams = {(r["dataset"], r["scenario"]) for r in figures["cil"]}
    assert len(streams) == 5 and len(figures["cil"]) == 5 * len(learners)
    blurry = [r for r in figures["cil"] if r["scenario"] == "Si-Blurry"]
    assert all(0 <= r["A_auc"] <= 100 for r in blurry)
    record = json.loads((out / "real_quick_cil_fl.json").read_text())
    assert record["figures"]["cil"][0]["learner"] == figures["cil"][0]["learner"]
    assert (out / "real_quick_cil_fl_continual.png").is_file() and (out / "real_quick_cil_fl_federated.png").is_file()


def test_federated_grid_and_claims_come_from_the_rows(tiny):
    _, figures, _ = tiny
    assert {(r["data"], r["clients"], r["alpha"]) for r in figures["fl"]} == {
        (d, k, a) for d in ("fashion-mnist/effnet-lite0", "wordnet-45/minilm") for k in (3, 6)
        for a in (0.01, 0.1, 1.0, "iid")}
    claims = {c["claim"]: c for c in figures["claims"]}
    invariance = [c for name, c in claims.items() if name.startswith("AFL is invariant")]
    assert len(invariance) == 2 and all(c["holds"] for c in invariance)
    memorization = [c for name, c in claims.items() if name.startswith("ACIL equals joint")]
    assert len(memorization) == 3 and all(c["holds"] for c in memorization)
    assert all(isinstance(c["holds"], bool) for c in figures["claims"])


def test_claims_can_fail():
    rows = [{"dataset": "d", "scenario": "CIL B1+1", "learner": name, "A_last": a, "forgetting": f}
            for name, a, f in (("ACIL", 50.0, 1.0), ("joint ridge", 60.0, 0.0), ("fine-tune", 40.0, 5.0))]
    claims = _real_claims.evaluate({"cil": rows})
    assert [c["holds"] for c in claims] == [False, False]
    fl = [{"data": "d", "clients": k, "alpha": 0.1, "AFL": acc, "centralized": 0.9, "AFL (no RI)": 0.89,
           "FedAvg": 0.95, "DeepAFL": 0.5} for k, acc in ((10, 0.9), (100, 0.8))]
    assert not any(c["holds"] for c in _real_claims.evaluate({"fl": fl}))


def test_render_prints_every_row_of_the_record(tiny, capsys):
    import re

    _, figures, out = tiny
    capsys.readouterr()  # whatever the fixture's run printed
    real.main(["--render", str(out / "real_quick_cil_fl.json")])
    tables = [t.splitlines() for t in capsys.readouterr().out.strip().split("\n\n")]
    gammas = len(figures["cil_gamma"]) + len(figures["fl_gamma"])
    assert [len(t) - 2 for t in tables] == [len(figures["cil"]), gammas, len(figures["fl"]), len(figures["claims"])]
    for table in tables:
        cells = {len(re.split(r"(?<!\\)\|", line)) for line in table}
        assert len(cells) == 1  # every row has its header's cell count: bars inside cells are escaped


def test_replay_claim_finds_each_data_sets_own_replay_size():
    rows = [{"dataset": d, "scenario": "Si-Blurry", "learner": name, "A_auc": a, "A_last": a}
            for d, size in (("a", 30), ("b", 20)) for name, a in (("GACL", 60.0), (f"replay {size}", 50.0))]
    claims = [c for c in _real_claims.evaluate({"cil": rows}) if "replay" in c["claim"]]
    assert [c["ours"] for c in claims] == ["GACL 60.00 vs replay 30 50.00", "GACL 60.00 vs replay 20 50.00"]
