"""Analytic federated learning (AFL, DeepAFL), partitions, gradient baselines, Flower and multi-process runs."""

from __future__ import annotations

import importlib
from typing import Any

# Public names -> defining module. Loaded on first access (PEP 562) so that importing one submodule never
# pulls in the heavy dependencies of another (e.g. Flower, transformers).
_EXPORTS: dict[str, str] = {
    "DeepAFL": "federated.deepafl",
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
