"""Lazy package namespaces (PEP 562) shared by ``continual``, ``federated`` and ``peft_probe``.

Public names resolve to their defining module on first access, so importing one submodule never pulls in the
heavy dependencies of another (Flower, transformers, ...).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_namespace(package: str, exports: dict[str, str], namespace: dict[str, Any]) -> tuple[
        Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` whose public ``exports`` map name -> module."""
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.{name}":
                raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__, names
