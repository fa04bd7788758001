"""Flax NNX transformers with real weights, LoRA, the PAGE gradient-energy probe and DomLoRA placement."""

from __future__ import annotations

import importlib
from typing import Any

# Public names -> defining module. Loaded on first access (PEP 562) so that importing one submodule never
# pulls in the heavy dependencies of another (e.g. Flower, transformers).
_EXPORTS: dict[str, str] = {
    "LoraConfig": "peft_probe.lora",
    "inject_lora": "peft_probe.lora",
    "merge_lora": "peft_probe.lora",
    "unmerge_lora": "peft_probe.lora",
    "export_peft": "peft_probe.lora",
    "finetune": "peft_probe.training",
    "page_scores": "peft_probe.page",
    "dominant_module": "peft_probe.domlora",
    "domlora_config": "peft_probe.domlora",
    "plot_page_heatmap": "peft_probe.page",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
