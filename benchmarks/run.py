"""``python -m benchmarks run CONFIG.toml [--out DIR] [--quick] [--validate]``: run an experiment config.

A config (``docs/experiments.md``; examples in ``benchmarks/configs/``) names a dataset, features (raw or a
backbone trained on the base classes and frozen: the ACIL protocol, Zhuang et al. NeurIPS 2022, Sec. 3.1), a
scenario from :mod:`continual.scenarios`, learners with constructor options, a gamma grid and seeds. Every
(learner, gamma, seed) is one run, fed phase by phase (or in online mini-batches) through ``partial_fit`` and
scored after each phase on the test samples of the classes seen so far. Per run it writes, below
``benchmarks/runs/<config stem>/`` (or ``--out``)::

    <learner>/gamma=<g>/seed=<s>/phases.csv    one row per phase: accuracy, samples seen, time, memory
    <learner>/gamma=<g>/seed=<s>/result.csv    A_avg, A_last, forgetting, A_auc (continual.metrics), time, memory
    <learner>/gamma=<g>/seed=<s>/anytime.csv   the anytime accuracy, when scenario.eval_every is set
    results.csv, summary.csv, summary.json     all runs; mean ± std over seeds per (learner, gamma)
    accuracy.png                               accuracy vs phase, mean ± std band

Resume: after every phase the learner is saved with its own ``save(path, overwrite=True)`` and a progress record
(``progress.json``: phases done, accuracies so far, elapsed time) is written atomically; a restart of the same
config skips finished runs and continues an interrupted one after its last completed phase, with the same
results (the learners are exact and deterministic). Learners without a working ``save``/``load`` are resumed by
re-fitting the completed phases instead ("replay"; the run's ``resume`` column says which). A folder written by
a different config is refused (the config's SHA-256 is stored in ``config.json``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._run_config import (
    DATASETS,
    SCENARIOS,
    Config,
    LearnerSpec,
    RunSpec,
    _import,
    learner_class,
    load_config,
)
from benchmarks._run_report import (
    MEMORY_NOTE,
    atomic_write,
    plot_summary,
    read_csv,
    summarize_results,
    write_csv,
    write_summary,
)

RUNS_DIR = Path(__file__).resolve().parent / "runs"
PHASE_COLUMNS = ["phase", "new_classes", "seen_classes", "samples_seen", "accuracy", "fit_s", "elapsed_s",
                 "max_rss_mb"]
RESULT_COLUMNS = ["learner", "class", "gamma", "seed", "phases", "A_avg", "A_last", "forgetting", "A_auc",
                  "auc_grid", "fit_s", "wall_s", "max_rss_mb", "state_mb", "resume"]


# -- data, features, stream ---------------------------------------------------------------------------------------
def load_data(config: Config) -> Any:
    """The dataset's :class:`continual.data.Split` (raw inputs)."""
    options = {k: v for k, v in config.data.items() if k != "name"}
    if "dtype" in options:
        options["dtype"] = np.dtype(options["dtype"]).type
    return _import(DATASETS[config.data["name"]])(**options)


def _base_classes(config: Config, split: Any, seed: int) -> np.ndarray:
    """The classes a backbone is trained on: the first ``base_classes`` of the run's seeded class order (the
    scenario's base phase for class-incremental runs; half the classes by default otherwise)."""
    from continual.scenarios import class_incremental

    base = config.features.get("base_classes", config.scenario.get("base_classes") or split.classes // 2)
    return class_incremental(split.y_train, base, 1, seed=seed)[0].seen_classes


def build_features(config: Config, split: Any, seed: int, root: Path) -> Any:
    """Features for one seed: the raw split, or frozen-backbone features cached in ``features/seed=<s>.npz`` (a
    resumed run then reads exactly the features the interrupted one used)."""
    from continual.data import frozen_backbone_features, load_feature_file, save_feature_file

    if config.features["kind"] == "raw":
        return split
    cache = root / "features" / f"seed={seed}.npz"
    if cache.is_file():
        return load_feature_file(cache)
    options = {k: config.features[k] for k in ("arch", "feature_dim", "epochs") if k in config.features}
    feats = frozen_backbone_features(split, _base_classes(config, split, seed), seed=seed, **options)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_feature_file(cache.with_suffix(".tmp.npz"), feats)
    cache.with_suffix(".tmp.npz").replace(cache)
    return feats


def build_stream(config: Config, labels: np.ndarray, seed: int) -> tuple[list[Any], list[Any], list[int]]:
    """``(phases, steps, phase_ends)``: the scenario's phases, the ``partial_fit`` calls in order (whole phases or
    :func:`continual.scenarios.online` mini-batches) and the step index that completes each phase."""
    from continual import scenarios

    kind = config.scenario["kind"]
    options = {k: v for k, v in config.scenario.items() if k not in ("kind", "batch_size", "eval_every")}
    phases = getattr(scenarios, SCENARIOS[kind][0])(labels, **options, seed=seed)
    batch = config.scenario.get("batch_size")
    steps = scenarios.online(phases, batch) if batch else [scenarios.Batch(p.indices, i) for i, p in enumerate(phases)]
    ends = [-1] * len(phases)
    for i, step in enumerate(steps):
        ends[step.phase] = i
    if min(ends) < 0:
        raise ValueError("scenario: a phase holds no training sample")
    return phases, steps, ends


# -- learners ------------------------------------------------------------------------------------------------------
def _inputs(spec: LearnerSpec, x: np.ndarray) -> np.ndarray:
    return x[:, None, :] if spec.one_block else x


def _fit(learner: Any, x: np.ndarray, y: np.ndarray, classes: int) -> None:
    """One ``partial_fit`` call of the main loop (a separate function so tests can interrupt a run here)."""
    learner.partial_fit(x, y, classes=classes)


def preflight(config: Config, x: np.ndarray, y: np.ndarray, classes: int) -> dict[str, str]:
    """Construct every (learner, gamma) and ``partial_fit`` it once on ``x, y`` (a few rows), so that option values
    the learners refuse fail now, as a ``ValueError`` naming the learner, not hours into a run. Returns each
    learner's resume mode: ``"checkpoint"`` if a ``save``/``load`` round trip predicts as the original did,
    ``"replay"`` (re-fit completed phases on restart) otherwise."""
    x = x.reshape(x.shape[0], -1)
    modes: dict[str, str] = {}
    for index, spec in enumerate(config.learners):
        cls = learner_class(spec.cls)
        for gamma in spec.gammas:
            where = f"learners[{index}] ({spec.name}, {spec.cls}, gamma={gamma})"
            try:
                learner = cls(**spec.kwargs(gamma, config.seeds[0]))
                learner.partial_fit(_inputs(spec, x), y, classes=classes)
            except (TypeError, ValueError) as err:
                raise ValueError(f"config key 'learners[{index}].options': {where} refused its options at the "
                                 f"first partial_fit: {err}") from err
            if spec.name not in modes:
                modes[spec.name] = _resume_mode(cls, learner, _inputs(spec, x))
    return modes


def _resume_mode(cls: type, learner: Any, x: np.ndarray) -> str:
    if not (callable(getattr(learner, "save", None)) and callable(getattr(cls, "load", None))):
        return "replay"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            learner.save(str(Path(tmp) / "ckpt"), overwrite=True)
            loaded = cls.load(str(Path(tmp) / "ckpt"))
            same = np.array_equal(np.asarray(loaded.predict(x)), np.asarray(learner.predict(x)))
        except Exception as err:  # noqa: BLE001 - any failure of the round trip means: resume by replaying
            print(f"  {cls.__name__}: save/load round trip failed ({type(err).__name__}: {err}); resuming by replay",
                  file=sys.stderr)
            return "replay"
    return "checkpoint" if same else "replay"


# -- one run ---------------------------------------------------------------------------------------------------------
def _max_rss_mb() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS).
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e6


def _fresh_progress(mode: str, eval_every: int | None) -> dict[str, Any]:
    return {"phases_done": 0, "seen_accuracy": [], "matrix": [], "anytime": [], "anytime_samples": [],
            "streamed": 0, "next_mark": eval_every or 0, "fit_s": 0.0, "elapsed_s": 0.0, "checkpoint": None,
            "phase_rows": [], "resume": mode, "done": False}


def run_one(run: RunSpec, config: Config, feats: Any, stream: tuple[list, list, list[int]], root: Path,
            mode: str) -> tuple[dict[str, str], str]:
    """Run (or resume, or skip) one (learner, gamma, seed); returns its ``result.csv`` row and what happened."""
    from continual import metrics
    from continual.runner import state_bytes

    folder = root / run.folder
    if (folder / "result.csv").is_file():
        return read_csv(folder / "result.csv")[0], "skipped (done)"
    spec, (phases, steps, ends) = run.learner, stream
    classes, eval_every = feats.classes, config.scenario.get("eval_every")
    cls = learner_class(spec.cls)
    learner = cls(**spec.kwargs(run.gamma, run.seed))
    progress_path = folder / "progress.json"
    prog = json.loads(progress_path.read_text()) if progress_path.is_file() else _fresh_progress(mode, eval_every)
    done = prog["phases_done"]
    status = "run"
    t0 = time.perf_counter()
    if done:
        status = f"resumed after phase {done - 1} ({prog['resume']})"
        if prog["resume"] == "checkpoint":
            learner = cls.load(str(folder / prog["checkpoint"]))
        else:
            for step in steps[:ends[done - 1] + 1]:
                _fit(learner, _inputs(spec, feats.x_train[step.indices]), feats.y_train[step.indices], classes)
    x_test = _inputs(spec, feats.x_test)
    y_test = feats.y_test
    groups = [np.isin(y_test, p.new_classes) for p in phases]
    seen = set(phases[done - 1].seen_classes.tolist()) if done else set()
    for index in range(ends[done - 1] + 1 if done else 0, len(steps)):
        step = steps[index]
        idx = step.indices
        t_fit = time.perf_counter()
        _fit(learner, _inputs(spec, feats.x_train[idx]), feats.y_train[idx], classes)
        prog["fit_s"] += time.perf_counter() - t_fit
        prog["streamed"] += int(idx.size)
        seen |= set(np.unique(feats.y_train[idx]).tolist())
        # The anytime accuracy as continual.runner.run_protocol samples it (Koh et al., ICLR 2022): after the batch
        # that crosses each eval_every mark, on the test samples of the classes seen so far.
        if eval_every and prog["streamed"] >= prog["next_mark"]:
            mask = np.isin(y_test, list(seen))
            prog["anytime"].append(metrics.accuracy(y_test[mask], np.asarray(learner.predict(x_test))[mask]))
            prog["anytime_samples"].append(prog["streamed"])
            prog["next_mark"] = (prog["streamed"] // eval_every + 1) * eval_every
        if index == ends[step.phase]:
            _finish_phase(learner, prog, phases[step.phase], step.phase, x_test, y_test, groups, folder,
                          time.perf_counter() - t0)
            t0 = time.perf_counter()
    return _finish_run(run, prog, folder, config, state_bytes(getattr(learner, "learner", learner)) / 1e6), status


def _finish_phase(learner: Any, prog: dict[str, Any], phase: Any, k: int, x_test: np.ndarray, y_test: np.ndarray,
                  groups: list[np.ndarray], folder: Path, elapsed: float) -> None:
    """Score after phase ``k``, then checkpoint and write the progress record (in that order, so the record only
    ever names a checkpoint that exists), then drop the previous checkpoint."""
    from continual import metrics

    pred = np.asarray(learner.predict(x_test))
    prog["matrix"].append([metrics.accuracy(y_test[g], pred[g]) for g in groups[:k + 1]])
    seen_mask = np.isin(y_test, phase.seen_classes)
    prog["seen_accuracy"].append(metrics.accuracy(y_test[seen_mask], pred[seen_mask]))
    prog["elapsed_s"] += elapsed
    prog["phase_rows"].append({"phase": k, "new_classes": phase.new_classes.tolist(),
                               "seen_classes": phase.seen_classes.tolist(), "samples_seen": prog["streamed"],
                               "accuracy": 100 * prog["seen_accuracy"][-1], "fit_s": prog["fit_s"],
                               "elapsed_s": prog["elapsed_s"], "max_rss_mb": _max_rss_mb()})
    old = prog["checkpoint"]
    if prog["resume"] == "checkpoint":
        prog["checkpoint"] = f"checkpoint/phase-{k}"
        learner.save(str(folder / prog["checkpoint"]), overwrite=True)
    prog["phases_done"] = k + 1
    atomic_write(folder / "progress.json", json.dumps(prog, indent=1) + "\n")
    if old and old != prog["checkpoint"]:
        shutil.rmtree(folder / old, ignore_errors=True)
    write_csv(folder / "phases.csv", prog["phase_rows"], PHASE_COLUMNS)


def _finish_run(run: RunSpec, prog: dict[str, Any], folder: Path, config: Config, state_mb: float) -> dict[str, str]:
    """Metrics of a completed run (:mod:`continual.metrics`, in percent) into ``result.csv``; checkpoints removed
    unless ``keep_checkpoints``."""
    from continual import metrics

    seen = np.asarray(prog["seen_accuracy"])
    t = seen.size
    matrix = np.full((t, t), np.nan)
    for i, row in enumerate(prog["matrix"]):
        matrix[i, :len(row)] = row
    if prog["anytime"]:
        auc = metrics.auc_accuracy(prog["anytime"], prog["anytime_samples"])
        grid = f"every {config.scenario['eval_every']} samples"
        write_csv(folder / "anytime.csv", [{"samples_seen": n, "accuracy": 100 * a} for n, a in
                                           zip(prog["anytime_samples"], prog["anytime"])], ["samples_seen", "accuracy"])
    else:
        # Without eval_every the anytime curve is sampled only at phase ends (weighted by phase size).
        auc = metrics.auc_accuracy(seen, [r["samples_seen"] for r in prog["phase_rows"]])
        grid = "phase ends"
    row: dict[str, Any] = {
        "learner": run.learner.name, "class": run.learner.cls, "gamma": None if run.gamma is None else run.gamma,
        "seed": run.seed, "phases": t, "A_avg": 100 * metrics.average_accuracy(seen),
        "A_last": 100 * metrics.last_accuracy(seen), "forgetting": 100 * metrics.forgetting(matrix),
        "A_auc": 100 * auc, "auc_grid": grid, "fit_s": prog["fit_s"], "wall_s": prog["elapsed_s"],
        "max_rss_mb": _max_rss_mb(), "state_mb": state_mb, "resume": prog["resume"],
        **{f"acc_{k}": 100 * a for k, a in enumerate(seen)},
    }
    write_csv(folder / "result.csv", [row], RESULT_COLUMNS + [f"acc_{k}" for k in range(t)])
    prog["done"] = True
    atomic_write(folder / "progress.json", json.dumps(prog, indent=1) + "\n")
    if not config.keep_checkpoints:
        shutil.rmtree(folder / "checkpoint", ignore_errors=True)
    return read_csv(folder / "result.csv")[0]


# -- the whole config ------------------------------------------------------------------------------------------------
def claim_folder(config: Config, root: Path) -> None:
    """Refuse a folder that holds another config's runs (or anything else); otherwise record this config there."""
    record = root / "config.json"
    if record.is_file():
        stored = json.loads(record.read_text()).get("sha256")
        if stored != config.digest:
            raise ValueError(f"run folder {root} was written by a different config (sha256 {stored[:12]}..., this "
                             f"one {config.digest[:12]}...); pass another --out or delete the folder")
        return
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"run folder {root} is not empty and holds no config.json; pass another --out")
    atomic_write(record, json.dumps({"sha256": config.digest, "config": config.raw}, indent=2) + "\n")


def run_config(config: Config, root: Path) -> dict[str, Any]:
    """Validate (preflight), run or resume every (learner, gamma, seed), then write the summary and the plot."""
    if (root / "config.json").is_file():
        claim_folder(config, root)  # a foreign folder is refused before anything else happens
    split = load_data(config)
    probe = np.arange(min(64, split.y_train.size))
    modes = preflight(config, split.x_train[probe], split.y_train[probe], split.classes)
    claim_folder(config, root)
    rows, current = [], None
    try:
        for seed in config.seeds:
            feats = build_features(config, split, seed, root)
            stream = build_stream(config, feats.y_train, seed)
            for run in (r for r in config.runs() if r.seed == seed):
                current = run
                row, status = run_one(run, config, feats, stream, root, modes[run.learner.name])
                rows.append(row)
                print(f"{run.folder}: A_avg {float(row['A_avg']):.2f}  A_last {float(row['A_last']):.2f}  "
                      f"forgetting {float(row['forgetting']):.2f}  [{status}]", flush=True)
    except KeyboardInterrupt:
        where = current.folder if current else "setup"
        print(f"\ninterrupted during {where}; completed phases are saved -- rerun the same command to resume",
              file=sys.stderr)
        raise
    write_csv(root / "results.csv", rows, list(rows[0]))
    summary = summarize_results(rows)
    meta = {"config": config.raw, "sha256": config.digest, "runs": len(rows), "resume_modes": modes}
    write_summary(root, summary, meta)
    plot = plot_summary(root, summary, config.title)
    from benchmarks.common import print_table

    print()
    print_table([{k: r[k] for k in ("learner", "gamma", "n_seeds", "A_avg_mean", "A_avg_std", "A_last_mean",
                                    "A_last_std", "forgetting_mean", "A_auc_mean", "wall_s_mean")} for r in summary],
                floatfmt="{:.2f}")
    print(f"\nwrote {root / 'summary.csv'}, {root / 'summary.json'} and {plot}\n({MEMORY_NOTE})")
    return {"summary": summary, "results": rows, "root": root, "modes": modes}


def main(argv: list[str]) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(prog="python -m benchmarks run", description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path, help="experiment config, .toml or .json (see docs/experiments.md)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default benchmarks/runs/<config stem>)")
    p.add_argument("--quick", action="store_true",
                   help="apply the config's [quick] overrides (run folder <stem>_quick); refused without [quick]")
    p.add_argument("--validate", action="store_true", help="only parse and validate the config's keys")
    args = p.parse_args(argv)
    config = load_config(args.config, quick=args.quick)
    if args.validate:
        print(f"{args.config}: valid, {len(config.runs())} runs (sha256 {config.digest[:12]})")
        return None
    import jax

    jax.config.update("jax_enable_x64", True)
    return run_config(config, args.out if args.out is not None else RUNS_DIR / config.stem)
