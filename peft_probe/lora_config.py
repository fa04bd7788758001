"""``LoraConfig``: where LoRA adapters go and with which rank and scale, by PEFT's rules, and PEFT's
``adapter_config.json`` written and read back.

The rules are PEFT's (``peft.tuners.tuners_utils.check_target_module_exists`` and ``peft.utils.other.
get_pattern_key``, PEFT 0.17+): a module named ``model.layers.3.mlp.down_proj`` is adapted when

* ``target_modules`` is a string: it full-matches the whole name (``"all-linear"``: every linear layer but the
  output head); such a config cannot also take ``layers_to_transform`` or ``layers_pattern`` (PEFT refuses both);
* ``target_modules`` is a list: the name equals one of them or ends with ``"." + one``; then, if
  ``layers_to_transform`` is given, the *first* numbered segment after a named one (``layers.3``, lazily, so an
  expert index deeper in the name is not taken for the layer) must be one of them -- with ``layers_pattern``,
  the segment must follow one of those names (``h.3`` for ``layers_pattern="h"``).

``rank_pattern`` / ``alpha_pattern`` map a regex to the rank / alpha of the modules whose name ends with a match
(``(.*\\.)?(key)$``; the first key in order that matches wins), everything else takes ``r`` / ``alpha``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ALL_LINEAR", "TASK_TYPES", "LoraConfig", "layer_index"]

ALL_LINEAR = "all-linear"
INITS = ("kaiming", "gaussian")
TASK_TYPES = ("CAUSAL_LM", "FEATURE_EXTRACTION", "SEQ_CLS", "SEQ_2_SEQ_LM", "TOKEN_CLS", "QUESTION_ANS")
# PEFT's layer index without layers_pattern: the first "<name>.<int>." segment (lazy, see the module docstring).
_LAYER_INDEX = re.compile(r".*?\.[^.]*\.(\d+)\.")


def _is_real(value: object) -> bool:
    """A real scalar (Python, NumPy or a 0-d JAX array), but not a bool or a string."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        return False
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything numpy cannot even wrap is not a number
        return False
    return arr.ndim == 0 and arr.dtype.kind in "iuf"


def layer_index(name: str, layers_pattern: Sequence[str] | None = None) -> int | None:
    """The decoder-layer index PEFT reads from the dotted module ``name`` (``None`` if it has none)."""
    if not layers_pattern:
        found = _LAYER_INDEX.match(name)
    else:
        found = None
        for pattern in layers_pattern:
            found = re.match(rf".*?\.{pattern}\.(\d+)\.", name)
            if found is not None:
                break
    return int(found.group(1)) if found else None


def _pattern_value(patterns: Mapping[str, Any], name: str, default: Any) -> Any:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _check_regex(value: str, what: str) -> None:
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"LoraConfig.{what}={value!r} is not a valid regex: {err}") from err


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Where and how to place LoRA adapters (field names and rules as in ``peft.LoraConfig``; module docstring).

    r: rank; alpha: scale numerator (``s = alpha / r``); target_modules: names/suffixes, a regex, or
    ``"all-linear"``; layers_to_transform: decoder-layer indices (only with a list of names); layers_pattern: the
    name(s) of the layer list (``"layers"``, ``"h"``; needs ``layers_to_transform``); rank_pattern /
    alpha_pattern: ``{regex: rank}`` / ``{regex: alpha}`` exceptions; dropout: on the adapter's input; init:
    ``"kaiming"`` (PEFT's default) or ``"gaussian"``; task_type: PEFT's task type for the exported config
    (``None``: from the model -- ``CAUSAL_LM`` with an ``lm_head``, else ``FEATURE_EXTRACTION``).
    """

    r: int = 8
    alpha: float = 16.0
    target_modules: Sequence[str] | str = ("q_proj", "v_proj")
    layers_to_transform: Sequence[int] | int | None = None
    dropout: float = 0.0
    init: str = "kaiming"
    layers_pattern: Sequence[str] | str | None = None
    rank_pattern: Mapping[str, int] = dataclasses.field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = dataclasses.field(default_factory=dict)
    task_type: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)) or self.r <= 0:
            raise ValueError(f"LoraConfig.r must be a positive integer, got {self.r!r}")
        if not _is_real(self.alpha) or not np.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"LoraConfig.alpha must be a positive finite number, got {self.alpha!r}")
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraConfig.dropout must be a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.init, str) or self.init not in INITS:
            raise ValueError(f"LoraConfig.init must be one of {INITS}, got {self.init!r}")
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            raise ValueError(f"LoraConfig.task_type must be None or one of {TASK_TYPES}, got {self.task_type!r}")
        self._check_targets()
        self._check_layers()
        for name, kind in (("rank_pattern", "rank"), ("alpha_pattern", "alpha")):
            self._check_pattern(name, kind)

    def _check_targets(self) -> None:
        targets = self.target_modules
        if isinstance(targets, str):
            if targets != ALL_LINEAR:
                _check_regex(targets, "target_modules")
            return
        # Only real sequences of names: a bare number, None, bytes or a mapping is a mistake, not a target list.
        if not isinstance(targets, (list, tuple, set, frozenset)):
            raise TypeError(f"LoraConfig.target_modules must be a string or a list/tuple/set of names, got "
                            f"{type(targets).__name__} {targets!r}")
        targets = tuple(sorted(targets)) if isinstance(targets, (set, frozenset)) else tuple(targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"LoraConfig.target_modules must be non-empty names, got {self.target_modules!r}")
        object.__setattr__(self, "target_modules", targets)

    def _check_layers(self) -> None:
        layers, pattern = self.layers_to_transform, self.layers_pattern
        if layers is not None:
            if isinstance(layers, (int, np.integer)) and not isinstance(layers, (bool, np.bool_)):
                layers = (layers,)
            elif isinstance(layers, (list, tuple, range)):
                layers = tuple(layers)
            else:
                raise TypeError(f"LoraConfig.layers_to_transform must be an int or a list/tuple of ints, got "
                                f"{type(layers).__name__} {layers!r}")
            if not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) and i >= 0
                       for i in layers):
                raise ValueError(f"LoraConfig.layers_to_transform must be non-negative ints, got {layers!r}")
            object.__setattr__(self, "layers_to_transform", tuple(int(i) for i in layers))
        if pattern is not None:
            pattern = (pattern,) if isinstance(pattern, str) else pattern
            if not isinstance(pattern, (list, tuple)) or not pattern or not all(
                    isinstance(p, str) and p for p in pattern):
                raise ValueError(f"LoraConfig.layers_pattern must be a name or a list of names, got "
                                 f"{self.layers_pattern!r}")
            for p in pattern:
                _check_regex(p, "layers_pattern")
            object.__setattr__(self, "layers_pattern", tuple(pattern))
        # PEFT's own refusals (LoraConfig.__post_init__): a string target ignores layers, so the pair is an error.
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError(f"LoraConfig: layers_to_transform cannot be used when target_modules is a string "
                             f"({self.target_modules!r}); list module names instead (as PEFT requires)")
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            raise ValueError("LoraConfig: layers_pattern cannot be used when target_modules is a string")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("LoraConfig: layers_pattern needs layers_to_transform as well (as in PEFT)")

    def _check_pattern(self, name: str, kind: str) -> None:
        patterns = getattr(self, name)
        if not isinstance(patterns, Mapping):
            raise TypeError(f"LoraConfig.{name} must be a mapping {{regex: {kind}}}, got {type(patterns).__name__}")
        clean = {}
        for key, value in patterns.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"LoraConfig.{name} keys must be non-empty regex strings, got {key!r}")
            _check_regex(key, f"{name} key")
            if kind == "rank" and (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
                                   or value <= 0):
                raise ValueError(f"LoraConfig.{name}[{key!r}] must be a positive integer, got {value!r}")
            if kind == "alpha" and (not _is_real(value) or not np.isfinite(value) or value <= 0):
                raise ValueError(f"LoraConfig.{name}[{key!r}] must be a positive finite number, got {value!r}")
            clean[key] = int(value) if kind == "rank" else float(value)
        object.__setattr__(self, name, clean)

    def __hash__(self) -> int:
        # The pattern mappings are dicts (as in PEFT's config); hash their items.
        return hash((self.r, self.alpha, self.target_modules, self.layers_to_transform, self.dropout, self.init,
                     self.layers_pattern, tuple(self.rank_pattern.items()), tuple(self.alpha_pattern.items()),
                     self.task_type))

    # -- the rules ---------------------------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """``alpha / r`` of a module no pattern names."""
        return float(self.alpha) / self.r

    def rank_of(self, name: str) -> int:
        return int(_pattern_value(self.rank_pattern, name, self.r))

    def scale_of(self, name: str) -> float:
        """``alpha / r`` of module ``name``, each from its pattern if one matches (PEFT's ``get_pattern_key``)."""
        return float(_pattern_value(self.alpha_pattern, name, self.alpha)) / self.rank_of(name)

    def matches(self, name: str, output_head: str | None = None) -> bool:
        """PEFT's ``check_target_module_exists`` for the dotted module name ``name``."""
        targets = self.target_modules
        if targets == ALL_LINEAR:
            return name != output_head
        if isinstance(targets, str):
            return re.fullmatch(targets, name) is not None
        if name in targets:
            return True
        if not any(name.endswith("." + t) for t in targets):
            return False
        if not self.layers_to_transform:
            return True
        index = layer_index(name, self.layers_pattern)
        return index is not None and index in self.layers_to_transform

    # -- adapter_config.json ---------------------------------------------------------------------------------
    def to_peft_dict(self, base_model_name_or_path: str | None = None, module_names: Sequence[str] = (),
                     task_type: str | None = None) -> dict:
        """``adapter_config.json`` contents as ``peft.LoraConfig.to_dict()`` writes them; ``"all-linear"`` is
        resolved to the adapted modules' short names (PEFT does the same on load). ``task_type`` is used when the
        config has none (default ``"CAUSAL_LM"``)."""
        targets = self.target_modules
        if targets == ALL_LINEAR:
            targets = sorted({n.rsplit(".", 1)[-1] for n in module_names})
        elif not isinstance(targets, str):
            targets = sorted(targets)
        pattern = self.layers_pattern
        return {
            "peft_type": "LORA", "task_type": self.task_type or task_type or "CAUSAL_LM",
            "base_model_name_or_path": base_model_name_or_path, "revision": None, "inference_mode": True,
            "r": self.r, "lora_alpha": _number(self.alpha), "target_modules": targets, "lora_dropout": self.dropout,
            "fan_in_fan_out": False, "bias": "none", "use_rslora": False, "use_dora": False, "modules_to_save": None,
            "init_lora_weights": True if self.init == "kaiming" else "gaussian",
            "layers_to_transform": list(self.layers_to_transform) if self.layers_to_transform else None,
            "layers_pattern": None if pattern is None else (pattern[0] if len(pattern) == 1 else list(pattern)),
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": {k: _number(v) for k, v in self.alpha_pattern.items()}, "auto_mapping": None,
        }

    @classmethod
    def from_peft_dict(cls, config: Mapping[str, Any]) -> LoraConfig:
        """The ``LoraConfig`` of an ``adapter_config.json`` (as PEFT writes it); ``ValueError`` for a LoRA variant
        this package does not implement (DoRA, rsLoRA, biases, ``fan_in_fan_out``, ``modules_to_save``...)."""
        peft_type = config.get("peft_type") if isinstance(config, Mapping) else None
        if peft_type != "LORA":
            raise ValueError(f"not a LoRA adapter config (peft_type={peft_type!r})")
        unsupported = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "bias": "none",
                       "modules_to_save": None}
        for key, plain in unsupported.items():
            if config.get(key, plain) not in (plain, [], {}):
                raise ValueError(f"adapter config has {key}={config[key]!r}; only plain LoRA ({key}={plain!r}) is "
                                 "supported")
        init = config.get("init_lora_weights", True)
        if init not in (True, "gaussian"):
            raise ValueError(f"adapter config has init_lora_weights={init!r}; True (kaiming) or 'gaussian' expected")
        targets = config.get("target_modules")
        return cls(
            r=config.get("r", 8), alpha=config.get("lora_alpha", 8),
            target_modules=targets if isinstance(targets, str) else tuple(targets or ()),
            layers_to_transform=config.get("layers_to_transform"), dropout=config.get("lora_dropout", 0.0),
            init="kaiming" if init is True else "gaussian", layers_pattern=config.get("layers_pattern") or None,
            rank_pattern=config.get("rank_pattern") or {}, alpha_pattern=config.get("alpha_pattern") or {},
            task_type=config.get("task_type"),
        )


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)
