"""Markdown tables of a ``real`` record (``python -m benchmarks real --render benchmarks/results/real.json``)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")  # a literal bar would end the Markdown cell


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def continual_table(figures: dict[str, Any]) -> str:
    rows = [[r["dataset"], r["scenario"], r["learner"], r["A_avg"], r["A_last"], r["forgetting"], r.get("A_auc"),
             r["balanced_last"]] for r in figures.get("cil", [])]
    return _table(["features", "stream", "learner", "A_avg", "A_last", "forgetting", "A_auc", "balanced A_last"],
                  rows)


def gamma_table(figures: dict[str, Any]) -> str:
    rows = [[stream, c["gamma"], c["buffer"] or "none", c["train_rows"], c["validation_rows"],
             max(t["val_accuracy"] for t in c["table"]) * 100]
            for stream, c in {**figures.get("cil_gamma", {}), **figures.get("fl_gamma", {})}.items()]
    return _table(["rows it saw", "γ", "buffer", "fit rows", "validation rows", "validation accuracy"], rows)


def federated_table(figures: dict[str, Any]) -> str:
    methods = ["centralized", "AFL", "AFL (no RI)", "DeepAFL", "FedAvg", "FedProx"]
    rows = [[r["data"], r["clients"], r["alpha"], *(100 * r[m] for m in methods)] for r in figures.get("fl", [])]
    return _table(["features", "K", "α", *methods], rows)


def claims_table(figures: dict[str, Any]) -> str:
    rows = [[c["claim"], c["published"], c["ours"], {True: "yes", False: "**no**", None: "–"}[c["holds"]]]
            for c in figures.get("claims", [])]
    return _table(["pattern", "published", "ours", "holds"], rows)


def markdown(record: dict[str, Any]) -> str:
    figures = record.get("figures", record)
    parts = [continual_table(figures), gamma_table(figures), federated_table(figures), claims_table(figures)]
    return "\n\n".join(p for p in parts if p.count("\n") > 1)
