"""Experiment configs for ``python -m benchmarks run CONFIG.toml``: parsing and validation before anything runs.

A config (TOML, read with the standard library's ``tomllib``, or JSON with the same structure) names a dataset, a
feature extractor, a scenario, a list of learners with constructor options, a gamma grid and seeds; the full
format is documented in ``docs/experiments.md``. :func:`load_config` checks every key and option *name* here
(against the constructors' and loaders' signatures, :func:`inspect.signature`) and raises ``ValueError`` naming
the key. Option *values* are judged by the learners themselves at their first ``partial_fit`` (the learners
validate there, scikit-learn's rule); ``benchmarks.run`` makes that first call for every learner before the main
loop, so a bad value also fails before any run starts.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

__all__ = ["Config", "LearnerSpec", "RunSpec", "load_config", "parse_config", "learner_class", "LEARNER_CLASSES",
           "DATASETS", "SCENARIOS"]

#: Learner class names a config may use -> "module:attribute" (imported lazily: no JAX import to validate).
LEARNER_CLASSES: dict[str, str] = {
    "ACIL": "continual.acil:ACIL", "DSAL": "continual.dsal:DSAL", "GACL": "continual.gacl:GACL",
    "FOAL": "continual.foal:FOAL", "AIR": "continual.air:AIR", "JointRidge": "continual.baselines:JointRidge",
    "SLDA": "continual.baselines:SLDA", "FineTune": "continual.baselines:FineTune",
}
#: The constructor options a gamma value is written to, per class (DS-AL has a main and a compensation ridge, both
#: set to the grid value as ``benchmarks.continual`` does). SLDA and FineTune have no ridge term.
GAMMA_PARAMS: dict[str, tuple[str, ...]] = {
    "ACIL": ("gamma",), "DSAL": ("gamma_main", "gamma_comp"), "GACL": ("gamma",), "FOAL": ("gamma",),
    "AIR": ("gamma",), "JointRidge": ("gamma",), "SLDA": (), "FineTune": (),
}
#: Dataset name -> "module:loader" (all offline: digits ships with scikit-learn, mnist1d is generated locally).
DATASETS: dict[str, str] = {
    "digits": "continual.data.datasets:load_digits", "mnist1d": "continual.data.datasets:load_mnist1d",
    "synthetic": "continual.data.synthetic:synthetic_features",
    "feature_file": "continual.data.loaders:load_feature_file",
}
#: Scenario kind -> (splitting function in continual.scenarios, required settings).
SCENARIOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "class_incremental": ("class_incremental", ("base_classes", "phases")),
    "si_blurry": ("si_blurry", ()),
    # Online CIL: a class-incremental split streamed in mini-batches (continual.scenarios.online).
    "online": ("class_incremental", ("base_classes", "phases")),
}
#: Settings every scenario takes besides its splitting function's own (streaming and anytime accuracy).
STREAM_KEYS = ("batch_size", "eval_every")
BACKBONE_KEYS = ("arch", "feature_dim", "epochs", "base_classes")
TOP_KEYS = {"name", "seeds", "gammas", "keep_checkpoints", "data", "features", "scenario", "learners", "quick"}
LEARNER_KEYS = {"class", "name", "gammas", "gamma_params", "options"}
QUICK_KEYS = {"seeds", "gammas", "data", "features", "scenario", "learner_options"}


@dataclass(frozen=True)
class LearnerSpec:
    """One ``[[learners]]`` entry: ``cls`` (a key of :data:`LEARNER_CLASSES`), a unique ``name`` (folder and label),
    the constructor ``options``, the option names ``gamma_params`` that receive each grid value, and the ``gammas``
    grid (``(None,)`` for a learner without a gamma)."""

    name: str
    cls: str
    options: dict[str, Any]
    gamma_params: tuple[str, ...]
    gammas: tuple[float | None, ...]

    def kwargs(self, gamma: float | None, seed: int) -> dict[str, Any]:
        """Constructor keywords for one run: the options, the gamma written to ``gamma_params``, and the run seed as
        ``seed`` when the constructor takes one and the options do not fix it."""
        out = dict(self.options)
        for key in self.gamma_params:
            out[key] = gamma
        if "seed" in constructor_params(self.cls) and "seed" not in self.options:
            out["seed"] = seed
        return out

    @property
    def one_block(self) -> bool:
        """F-OAL reads per-block class tokens ``(n, L, D)``; 2-D features are fed as ``L = 1`` (as
        ``continual.runner.FeaturesAsOneBlock`` does) unless it is told they are already fused."""
        return self.cls == "FOAL" and self.options.get("inputs", "tokens") == "tokens"


@dataclass(frozen=True)
class RunSpec:
    """One (learner, gamma, seed) run and its folder below the run root."""

    learner: LearnerSpec
    gamma: float | None
    seed: int

    @property
    def folder(self) -> str:
        gamma = "none" if self.gamma is None else repr(float(self.gamma))
        return f"{self.learner.name}/gamma={gamma}/seed={self.seed}"


@dataclass(frozen=True)
class Config:
    """A validated experiment config. ``stem`` names the default run folder, ``title`` labels plots; ``raw`` is the
    parsed document (after ``[quick]`` was applied) and ``digest`` its SHA-256 over canonical JSON, which a run
    folder stores to refuse resuming under a different config."""

    stem: str
    title: str
    raw: dict[str, Any]
    digest: str
    seeds: tuple[int, ...]
    data: dict[str, Any]
    features: dict[str, Any]
    scenario: dict[str, Any]
    learners: tuple[LearnerSpec, ...]
    keep_checkpoints: bool
    quick: bool

    def runs(self) -> list[RunSpec]:
        """Every (learner, gamma, seed) in config order, seeds outermost (features are built once per seed)."""
        return [RunSpec(spec, gamma, seed) for seed in self.seeds for spec in self.learners for gamma in spec.gammas]


def _import(target: str) -> Any:
    import importlib

    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def learner_class(name: str) -> type:
    """The class a config's ``class = "..."`` names."""
    return _import(LEARNER_CLASSES[name])


def constructor_params(name: str) -> set[str]:
    """Keyword names the learner's constructor accepts (its signature, ``self`` and ``**kwargs`` excluded)."""
    sig = inspect.signature(learner_class(name).__init__)
    return {p.name for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)}


def _fail(key: str, message: str) -> None:
    raise ValueError(f"config key {key!r}: {message}")


def _unknown(table: dict[str, Any], allowed: set[str] | tuple[str, ...], where: str) -> None:
    extra = sorted(set(table) - set(allowed))
    if extra:
        _fail(f"{where}{extra[0]}", f"unknown key; {where.rstrip('.') or 'the top level'} takes {sorted(allowed)}")


def _table(raw: dict[str, Any], key: str, required: bool = True) -> dict[str, Any]:
    value = raw.get(key, None if required else {})
    if not isinstance(value, dict):
        _fail(key, "missing table" if value is None else f"must be a table, got {type(value).__name__}")
    return value


def _number_list(value: Any, key: str, kind: type) -> tuple[Any, ...]:
    if not isinstance(value, list) or not value:
        _fail(key, f"must be a non-empty list, got {value!r} (an empty grid runs nothing)")
    for v in value:
        ok = isinstance(v, int) if kind is int else isinstance(v, int | float) and math.isfinite(v) and v > 0
        if isinstance(v, bool) or not ok:
            _fail(key, f"entries must be {'integers' if kind is int else 'positive finite numbers'}, got {v!r}")
    if len(set(value)) != len(value):
        _fail(key, f"has repeated entries {value!r}")
    return tuple(kind(v) for v in value)


def _signature_keys(target: str, exclude: set[str] = frozenset()) -> set[str]:
    sig = inspect.signature(_import(target))
    return {p for p in sig.parameters if p not in exclude}


def _check_data(data: dict[str, Any]) -> dict[str, Any]:
    name = data.get("name")
    if name not in DATASETS:
        _fail("data.name", f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    options = {k: v for k, v in data.items() if k != "name"}
    _unknown(options, _signature_keys(DATASETS[name]), "data.")
    if name == "feature_file":
        if not isinstance(options.get("path"), str):
            _fail("data.path", "feature_file needs path = \"FILE.npz\"")
        if not Path(options["path"]).is_file():
            _fail("data.path", f"feature file {options['path']!r} not found (relative paths are from the "
                  "working directory)")
    return data


def _check_features(features: dict[str, Any]) -> dict[str, Any]:
    kind = features.get("kind", "raw")
    if kind not in ("raw", "backbone"):
        _fail("features.kind", f"must be 'raw' or 'backbone', got {kind!r}")
    _unknown(features, {"kind", *BACKBONE_KEYS} if kind == "backbone" else {"kind"}, "features.")
    if features.get("arch", "mlp") not in ("mlp", "conv1d"):
        _fail("features.arch", f"must be 'mlp' or 'conv1d', got {features['arch']!r}")
    for key in ("feature_dim", "epochs", "base_classes"):
        value = features.get(key, 2)
        if isinstance(value, bool) or not isinstance(value, int) or value < (2 if key == "base_classes" else 1):
            _fail(f"features.{key}", f"must be a positive integer, got {value!r}")
    return {"kind": kind, **features}


def _check_scenario(scenario: dict[str, Any]) -> dict[str, Any]:
    kind = scenario.get("kind")
    if kind not in SCENARIOS:
        _fail("scenario.kind", f"unknown scenario {kind!r}; choose one of {sorted(SCENARIOS)}")
    function, required = SCENARIOS[kind]
    own = _signature_keys(f"continual.scenarios:{function}", {"labels", "seed"})
    _unknown(scenario, {"kind", *own, *STREAM_KEYS}, "scenario.")
    for key in required:
        if key not in scenario:
            _fail(f"scenario.{key}", f"{kind} needs {key}")
    out = dict(scenario)
    if kind == "online":
        out.setdefault("batch_size", 10)  # F-OAL's online protocol: mini-batches of 10
    for key in STREAM_KEYS:
        value = out.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(f"scenario.{key}", f"must be a positive integer, got {value!r}")
    if "eval_every" in out and "batch_size" not in out:
        _fail("scenario.eval_every", "needs scenario.batch_size: the anytime accuracy is sampled between batches")
    return out


def _check_learner(entry: Any, index: int, default_gammas: tuple[float, ...] | None) -> LearnerSpec:
    where = f"learners[{index}]"
    if not isinstance(entry, dict):
        _fail(where, f"must be a table, got {type(entry).__name__}")
    _unknown(entry, LEARNER_KEYS, f"{where}.")
    cls = entry.get("class")
    if cls not in LEARNER_CLASSES:
        _fail(f"{where}.class", f"unknown learner {cls!r}; choose one of {sorted(LEARNER_CLASSES)}")
    name = entry.get("name", cls)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\=") or name.startswith("."):
        _fail(f"{where}.name", f"must be a non-empty folder-safe string, got {name!r}")
    options = entry.get("options", {})
    if not isinstance(options, dict):
        _fail(f"{where}.options", f"must be a table, got {type(options).__name__}")
    accepted = constructor_params(cls)
    for key in options:
        if key not in accepted:
            _fail(f"{where}.options.{key}", f"{cls} has no option {key!r}; it takes {sorted(accepted)}")
    gamma_params = entry.get("gamma_params", list(GAMMA_PARAMS[cls]))
    if not isinstance(gamma_params, list) or not all(isinstance(k, str) for k in gamma_params):
        _fail(f"{where}.gamma_params", f"must be a list of option names, got {gamma_params!r}")
    for key in gamma_params:
        if key not in accepted:
            _fail(f"{where}.gamma_params", f"{cls} has no option {key!r}; it takes {sorted(accepted)}")
        if key in options:
            _fail(f"{where}.options.{key}", "is set by the gamma grid (gamma_params); remove it from options")
    if not gamma_params:
        if "gammas" in entry:
            _fail(f"{where}.gammas", f"{cls} has no gamma option; drop gammas or name gamma_params")
        gammas: tuple[float | None, ...] = (None,)
    elif "gammas" in entry:
        gammas = _number_list(entry["gammas"], f"{where}.gammas", float)
    elif default_gammas is not None:
        gammas = default_gammas
    else:
        _fail(f"{where}.gammas", f"{cls} takes a gamma: give gammas here or at the top level")
    return LearnerSpec(name, cls, dict(options), tuple(gamma_params), gammas)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Tables merged key by key (recursively); any other value in ``override`` replaces the base's."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _apply_quick(raw: dict[str, Any]) -> dict[str, Any]:
    """The config with its ``[quick]`` table applied: tables merged, ``learner_options`` written into every
    learner's options that already name that key (e.g. a smaller ``buffer_size``)."""
    quick = raw.get("quick")
    if not isinstance(quick, dict):
        raise ValueError("--quick needs a [quick] table in the config (overrides such as fewer seeds or a smaller "
                         "buffer); this config has none, so run it without --quick")
    _unknown(quick, QUICK_KEYS, "quick.")
    shrink = quick.get("learner_options", {})
    if not isinstance(shrink, dict):
        _fail("quick.learner_options", "must be a table")
    out = _merge({k: v for k, v in raw.items() if k != "quick"}, {k: v for k, v in quick.items()
                                                                  if k != "learner_options"})
    for entry in out.get("learners", []):
        if isinstance(entry, dict) and isinstance(entry.get("options"), dict):
            entry["options"].update({k: v for k, v in shrink.items() if k in entry["options"]})
    return out


def parse_config(raw: dict[str, Any], stem: str, quick: bool = False) -> Config:
    """Validate a parsed config document (see ``docs/experiments.md``); ``ValueError`` names the first bad key."""
    if not isinstance(raw, dict):
        raise ValueError(f"a config is a table of keys, got {type(raw).__name__}")
    _unknown(raw, TOP_KEYS, "")
    doc = _apply_quick(raw) if quick else {k: v for k, v in raw.items() if k != "quick"}
    seeds = _number_list(doc.get("seeds", [0]), "seeds", int)
    default_gammas = _number_list(doc["gammas"], "gammas", float) if "gammas" in doc else None
    data = _check_data(_table(doc, "data"))
    features = _check_features(_table(doc, "features", required=False))
    scenario = _check_scenario(_table(doc, "scenario"))
    entries = doc.get("learners")
    if not isinstance(entries, list) or not entries:
        _fail("learners", "must be a non-empty list of [[learners]] tables")
    learners = tuple(_check_learner(e, i, default_gammas) for i, e in enumerate(entries))
    names = [spec.name for spec in learners]
    for name in names:
        if names.count(name) > 1:
            _fail("learners.name", f"{name!r} is used twice; give each entry a distinct name")
    keep = doc.get("keep_checkpoints", False)
    if not isinstance(keep, bool):
        _fail("keep_checkpoints", f"must be true or false, got {keep!r}")
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    title = doc.get("name", stem)
    if not isinstance(title, str):
        _fail("name", f"must be a string, got {title!r}")
    return Config(stem, title, doc, digest, seeds, data, features, scenario, learners, keep, quick)


def load_config(path: str | Path, quick: bool = False) -> Config:
    """Read and validate a ``.toml`` (``tomllib``) or ``.json`` config; the run folder defaults to its stem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.suffix == ".toml":
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    elif path.suffix == ".json":
        raw = json.loads(path.read_text())
    else:
        raise ValueError(f"config {path} must be a .toml or .json file")
    return parse_config(raw, path.stem + ("_quick" if quick else ""), quick)
