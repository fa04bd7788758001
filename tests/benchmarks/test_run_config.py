"""``python -m benchmarks run``: CSV logs, summary statistics, exactness of A_last, resume after Ctrl-C, refusal of a
foreign run folder, and validation of bad and shipped configs (all on smoke-sized digits configs)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import run as runner
from benchmarks._run_config import load_config, parse_config
from benchmarks._run_report import TIMING_COLUMNS, read_csv

CONFIGS = Path(runner.__file__).resolve().parent / "configs"

# ACIL resumes from its own checkpoints; SLDA has no save/load, so it resumes by re-fitting ("replay").
SMOKE: dict[str, Any] = {
    "seeds": [0, 1],
    "gammas": [0.1, 1.0],
    "data": {"name": "digits"},
    "features": {"kind": "raw"},
    "scenario": {"kind": "class_incremental", "base_classes": 4, "phases": 2},
    "learners": [{"class": "ACIL", "options": {"buffer_size": 128}}, {"class": "SLDA"}],
}
RUN_FOLDERS = [f"{name}/gamma={g}/seed={s}" for s in (0, 1) for name, g in
               (("ACIL", "0.1"), ("ACIL", "1.0"), ("SLDA", "none"))]


def _run(doc: dict[str, Any], root: Path) -> dict[str, Any]:
    return runner.run_config(parse_config(copy.deepcopy(doc), "smoke"), root)


def _without_timing(path: Path) -> list[dict[str, str]]:
    """A CSV's rows without the columns that measure the machine (time, memory)."""
    return [{k: v for k, v in row.items() if not k.startswith(TIMING_COLUMNS)} for row in read_csv(path)]


def _csv_contents(root: Path) -> dict[str, list[dict[str, str]]]:
    files = sorted(p for p in root.rglob("*.csv"))
    return {str(p.relative_to(root)): _without_timing(p) for p in files}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("smoke")
    _run(SMOKE, root)
    return root


def test_csv_columns_and_row_counts(finished: Path) -> None:
    for folder in RUN_FOLDERS:
        phases = read_csv(finished / folder / "phases.csv")
        assert list(phases[0]) == runner.PHASE_COLUMNS
        assert [int(r["phase"]) for r in phases] == [0, 1, 2]          # base + 2 phases
        assert [len(r["seen_classes"].split()) for r in phases] == [4, 7, 10]
        result = read_csv(finished / folder / "result.csv")
        assert len(result) == 1
        assert list(result[0]) == runner.RESULT_COLUMNS + ["acc_0", "acc_1", "acc_2"]
        assert [float(result[0][f"acc_{k}"]) for k in range(3)] == [float(r["accuracy"]) for r in phases]
    assert len(read_csv(finished / "results.csv")) == 6
    assert len(read_csv(finished / "summary.csv")) == 3                # (ACIL, 0.1), (ACIL, 1.0), (SLDA, -)
    assert (finished / "accuracy.png").stat().st_size > 0
    modes = {r["learner"]: r["resume"] for r in read_csv(finished / "results.csv")}
    assert modes == {"ACIL": "checkpoint", "SLDA": "replay"}
    assert not any(finished.rglob("checkpoint"))                       # removed once a run is complete


def test_summary_is_numpy_mean_and_std_over_seed_csvs(finished: Path) -> None:
    summary = {(r["learner"], r["gamma"]): r for r in read_csv(finished / "summary.csv")}
    stored = json.loads((finished / "summary.json").read_text())["rows"]
    for name, gamma, key in (("ACIL", "0.1", "ACIL/gamma=0.1"), ("ACIL", "1.0", "ACIL/gamma=1.0"),
                             ("SLDA", "", "SLDA/gamma=none")):
        rows = [read_csv(finished / f"{key}/seed={s}/result.csv")[0] for s in (0, 1)]
        entry = next(r for r in stored if r["learner"] == name and r["gamma"] == gamma)
        for metric in ("A_avg", "A_last", "forgetting", "A_auc", "wall_s", "acc_1"):
            values = np.array([float(r[metric]) for r in rows])
            assert float(summary[(name, gamma)][f"{metric}_mean"]) == np.mean(values)
            assert float(summary[(name, gamma)][f"{metric}_std"]) == np.std(values)
            assert entry[f"{metric}_mean"] == np.mean(values)
    assert {int(r["n_seeds"]) for r in summary.values()} == {2}


def test_metrics_equal_an_independent_computation(finished: Path) -> None:
    from continual import ACIL, metrics
    from continual.data import load_digits
    from continual.runner import run_protocol
    from continual.scenarios import class_incremental

    split = load_digits()
    for seed in (0, 1):
        phases = class_incremental(split.y_train, 4, 2, seed=seed)
        learner = ACIL(1.0, buffer_size=128, seed=seed)
        for phase in phases:
            learner.partial_fit(split.x_train[phase.indices], split.y_train[phase.indices], classes=10)
        result = read_csv(finished / f"ACIL/gamma=1.0/seed={seed}/result.csv")[0]
        assert float(result["A_last"]) == pytest.approx(100 * learner.score(split.x_test, split.y_test), rel=1e-12)
        # The whole curve and forgetting against the library's own protocol runner.
        reference = run_protocol(ACIL(1.0, buffer_size=128, seed=seed), *split, phases, classes=10)
        assert [float(result[f"acc_{k}"]) for k in range(3)] == pytest.approx(100 * reference.seen_accuracy,
                                                                              rel=1e-12)
        assert float(result["forgetting"]) == pytest.approx(100 * metrics.forgetting(reference.matrix), rel=1e-12)


class _Interrupt:
    """Replaces ``runner._fit``: raises ``KeyboardInterrupt`` at the ``at``-th main-loop ``partial_fit``."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, learner: Any, x: Any, y: Any, classes: int) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        learner.partial_fit(x, y, classes=classes)


def test_interrupted_and_resumed_equals_uninterrupted(finished: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fit = runner._fit
    # 1st process: stopped during ACIL(0.1, seed 0)'s phase 1 -> resumes from its phase-0 checkpoint.
    monkeypatch.setattr(runner, "_fit", _Interrupt(2))
    with pytest.raises(KeyboardInterrupt):
        _run(SMOKE, tmp_path)
    progress = json.loads((tmp_path / "ACIL/gamma=0.1/seed=0/progress.json").read_text())
    assert progress["phases_done"] == 1 and not progress["done"]
    assert (tmp_path / "ACIL/gamma=0.1/seed=0" / progress["checkpoint"]).is_dir()
    # 2nd process: finishes ACIL(0.1) (2 calls) and ACIL(1.0) (3), stops in SLDA's phase 1 -> replay resume.
    monkeypatch.setattr(runner, "_fit", _Interrupt(7))
    with pytest.raises(KeyboardInterrupt):
        _run(SMOKE, tmp_path)
    assert json.loads((tmp_path / "SLDA/gamma=none/seed=0/progress.json").read_text())["phases_done"] == 1
    monkeypatch.setattr(runner, "_fit", fit)
    out = _run(SMOKE, tmp_path)
    assert {r["resume"] for r in out["results"]} == {"checkpoint", "replay"}
    resumed, clean = _csv_contents(tmp_path), _csv_contents(finished)
    assert sorted(resumed) == sorted(clean)
    for name in clean:
        assert resumed[name] == clean[name], name


def test_finished_runs_are_skipped(finished: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p: p.read_bytes() for p in finished.rglob("result.csv")}

    def never(*args: Any) -> None:
        raise AssertionError("a finished run was fitted again")

    monkeypatch.setattr(runner, "_fit", never)
    _run(SMOKE, finished)
    assert {p: p.read_bytes() for p in finished.rglob("result.csv")} == before


def test_a_different_config_is_refused(finished: Path) -> None:
    other = copy.deepcopy(SMOKE)
    other["gammas"] = [0.5]
    with pytest.raises(ValueError, match="different config"):
        _run(other, finished)


def _mutated(path: tuple, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SMOKE)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "key"), [
    (("learners", 0, "class"), "ACLI", "learners[0].class"),
    (("learners", 0, "options"), {"buffer_sise": 128}, "learners[0].options.buffer_sise"),
    (("learners", 0, "options"), {"gamma": 1.0}, "learners[0].options.gamma"),
    (("learners", 1, "gammas"), [1.0], "learners[1].gammas"),
    (("learners",), [], "learners"),
    (("gammas",), [], "gammas"),
    (("gammas",), [0.0], "gammas"),
    (("seeds",), [], "seeds"),
    (("data", "name"), "cifar10", "data.name"),
    (("data", "num_samples"), 100, "data.num_samples"),
    (("scenario", "kind"), "task_incremental", "scenario.kind"),
    (("scenario", "phases"), _DELETE, "scenario.phases"),
    (("scenario", "eval_every"), 50, "scenario.eval_every"),
    (("features", "kind"), "vit", "features.kind"),
    (("epochs",), 3, "epochs"),
])
def test_bad_configs_name_the_key(path: tuple, value: Any, key: str) -> None:
    with pytest.raises(ValueError, match=f"config key '{__import__('re').escape(key)}"):
        parse_config(_mutated(path, value), "bad")


def test_bad_option_values_fail_before_any_run(tmp_path: Path) -> None:
    doc = _mutated(("learners", 0, "options"), {"buffer_size": -3})
    with pytest.raises(ValueError, match=r"config key .learners\[0\].options.*first partial_fit"):
        _run(doc, tmp_path)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_quick_needs_a_quick_table_and_json_equals_toml(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--quick needs a \\[quick\\] table"):
        load_config(CONFIGS / "smoke.toml", quick=True)
    toml = load_config(CONFIGS / "smoke.toml")
    (tmp_path / "smoke.json").write_text(json.dumps(toml.raw))
    assert load_config(tmp_path / "smoke.json").digest == toml.digest


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_parse_and_validate(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ")
    assert path.name == "smoke.toml" or "README table" in lines[0]
    config = load_config(path)
    assert config.runs()
    variants = [config] + ([load_config(path, quick=True)] if "quick" in config.raw else [])
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((24, 16)).astype(np.float32), np.arange(24) % 4
    for variant in variants:
        # Option values checked by each learner's first partial_fit (on stand-in data of the right rank).
        modes = runner.preflight(variant, x, y, classes=4)
        assert set(modes) == {spec.name for spec in variant.learners}
