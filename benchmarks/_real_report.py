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
    rows = [[stream, f"{c['gamma']:g}", c["buffer"] or "none", c["train_rows"], c["validation_rows"],
             max(t["val_accuracy"] for t in c["table"]) * 100]
            for stream, c in {**figures.get("cil_gamma", {}), **figures.get("fl_gamma", {})}.items()]
    return _table(["rows it saw", "γ", "buffer", "fit rows", "validation rows", "validation accuracy"], rows)


def federated_table(figures: dict[str, Any]) -> str:
    methods = ["centralized", "AFL", "AFL (no RI)", "DeepAFL", "FedAvg", "FedProx"]
    rows = [[r["data"], r["clients"], str(r["alpha"]), *(100 * r[m] for m in methods)] for r in figures.get("fl", [])]
    return _table(["features", "K", "α", *methods], rows)


def claims_table(figures: dict[str, Any]) -> str:
    rows = [[c["claim"], c["published"], c["ours"], {True: "yes", False: "**no**", None: "–"}[c["holds"]]]
            for c in figures.get("claims", [])]
    return _table(["pattern", "published", "ours", "holds"], rows)


def flower_table(figures: dict[str, Any]) -> str:
    run = figures.get("flower")
    if not run:
        return ""
    return _table(["Flower clients", "α", "γ", "rows", "test accuracy", "pooled ridge", "vs in-process AFL",
                   "vs pooled ridge", "seconds"],
                  [[run["clients"], str(run["alpha"]), f"{run['gamma']:g}", run["rows"], 100 * run["test_accuracy"],
                    100 * run["pooled_test_accuracy"], f"{run['max_rel_diff_vs_in_process_afl']:.2g}",
                    f"{run['max_rel_diff_vs_pooled_ridge']:.2g}", run["seconds"]]])


def markdown(record: dict[str, Any]) -> str:
    figures = record.get("figures", record)
    parts = [continual_table(figures), gamma_table(figures), federated_table(figures), flower_table(figures),
             claims_table(figures)]
    return "\n\n".join(p for p in parts if p.count("\n") > 1)
