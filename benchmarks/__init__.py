"""Reproduction and performance scripts: ``python -m benchmarks <name> [--quick]``.

Each benchmark is a module ``benchmarks/<name>.py`` exposing ``main(argv: list[str]) -> dict``; it writes
``benchmarks/results/<name>.json`` (through :func:`benchmarks.common.write_results`) and, where a picture says
more, a PNG beside it.
"""
