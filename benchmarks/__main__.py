"""Dispatcher: ``python -m benchmarks <name> [args...]`` runs ``benchmarks.<name>.main(args)``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_") and m.name != "common"
    )


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: python -m benchmarks <name> [--quick] [options]\n"
              "       python -m benchmarks run CONFIG.toml [--out DIR] [--quick] [--validate]  (docs/experiments.md)\n"
              "\nbenchmarks: " + ", ".join(names))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"unknown benchmark {name!r}; choose one of: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{name}")
    module.main(rest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
