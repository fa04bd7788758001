"""``python -m benchmarks family``'s orchestration: sections dispatched by name, their claims gathered into one
record written with the command and machine, ``--render`` reproducing the section tables from the file, unknown
sections refused. Each section's own computation is tested in ``test_family_<section>.py``."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from benchmarks import family
from continual.data import Split


def _fake_section(name: str, calls: list) -> types.ModuleType:
    def run(data, quick, out_dir, stem):
        calls.append((name, sorted(data), quick, stem))
        rows = [{"method": name, "rows": int(np.asarray(data["tiny"]["split"][1]).size)}]
        claim = {"method": name, "claim": f"{name} works", "published": "paper", "ours": "1.0", "holds": True,
                 "source": "Tab. 1"}
        return {"rows": rows, "claims": [claim], "notes": [], "plots": []}

    return types.SimpleNamespace(run=run, render=lambda section: f"## {section['rows'][0]['method']}")


def test_sections_run_in_order_and_the_record_renders(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    split = Split(rng.standard_normal((12, 3)), np.arange(12) % 3, rng.standard_normal((6, 3)), np.arange(6) % 3)
    calls: list = []
    monkeypatch.setattr(family, "load_data", lambda args, sections: {"tiny": {"split": split, "source": "test"}})
    monkeypatch.setattr(family, "section_module", lambda name: _fake_section(name, calls))
    record = family.main(["--quick", "--sections", "afcl,prototypes", "--out", str(tmp_path)])
    assert [c[0] for c in calls] == ["afcl", "prototypes"] and all(c[2] and c[3] == "family_quick_afcl_prototypes"
                                                                   for c in calls)
    assert [c["method"] for c in record["claims"]] == ["afcl", "prototypes"]
    assert record["data"]["tiny"] == {"source": "test", "train": 12, "test": 6, "dim": 3, "classes": 3,
                                      "feature_seconds": None}
    path = tmp_path / "family_quick_afcl_prototypes.json"
    stored = json.loads(path.read_text())
    assert stored["benchmark"] == "family_quick_afcl_prototypes" and stored["figures"]["sections"]["afcl"]["rows"]
    capsys.readouterr()
    family.main(["--render", str(path)])
    assert capsys.readouterr().out.strip() == "## afcl\n\n## prototypes"


def test_unknown_sections_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        family.main(["--sections", "prototypes,bogus", "--out", str(tmp_path)])
