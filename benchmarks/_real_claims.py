"""The papers' published patterns beside what ``python -m benchmarks real`` measured on real pretrained features.

Each claim names its source, the published figure, our number and whether the pattern holds here. "Holds" is a
plain comparison stated in the claim's text (no tuning of thresholds after the fact: they are fixed in this file).
The published numbers are on other data (CIFAR-100 with ViT or ResNet features); what carries over is the
*pattern* (an equality, an ordering, a collapse), not the level.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _cil(rows: list[dict], dataset: str, scenario: str, learner: str, key: str) -> float | None:
    for row in rows:
        if (row["dataset"], row["scenario"], row["learner"]) == (dataset, scenario, learner):
            value = row.get(key)
            return None if value is None else float(value)
    return None


def _claim(claim: str, published: str, ours: str, holds: bool | None) -> dict[str, Any]:
    return {"claim": claim, "published": published, "ours": ours, "holds": holds}


def _continual_claims(rows: list[dict]) -> list[dict[str, Any]]:
    out = []
    streams = sorted({(r["dataset"], r["scenario"]) for r in rows if r["scenario"].startswith("CIL")})
    for dataset, scenario in streams:
        where = f"{dataset} {scenario}"
        acil, joint = (_cil(rows, dataset, scenario, n, "A_last") for n in ("ACIL", "joint ridge"))
        if acil is not None and joint is not None:
            out.append(_claim(f"ACIL equals joint training on all data seen ({where}; |ΔA_last| ≤ 0.1)",
                              "ACIL (NeurIPS 2022): identical to joint ridge, any phase order",
                              f"ACIL {acil:.2f} vs joint {joint:.2f}", abs(acil - joint) <= 0.1))
        f_acil, f_ft = (_cil(rows, dataset, scenario, n, "forgetting") for n in ("ACIL", "fine-tune"))
        if f_acil is not None and f_ft is not None:
            out.append(_claim(f"analytic learning barely forgets, fine-tuning forgets ({where}; gap ≥ 20 points)",
                              "ACIL/DS-AL papers: near-zero forgetting vs catastrophic for fine-tuning",
                              f"forgetting ACIL {f_acil:.2f}, fine-tune {f_ft:.2f}", f_ft - f_acil >= 20))
        dsal = _cil(rows, dataset, scenario, "DS-AL", "A_last")
        if dsal is not None and acil is not None:
            out.append(_claim(f"DS-AL's compensation stream does not hurt ACIL ({where}; A_last ≥ ACIL)",
                              "DS-AL (AAAI 2024), CIFAR-100 B50+25: A_last 64.04 vs ACIL 63.38",
                              f"DS-AL {dsal:.2f} vs ACIL {acil:.2f}", dsal >= acil))
        air, acil_b = (_cil(rows, dataset, scenario, n, "balanced_last") for n in ("AIR", "ACIL"))
        if dataset.startswith("wordnet") and air is not None and acil_b is not None:
            out.append(_claim(f"AIR raises class-balanced accuracy on an imbalanced stream ({where})",
                              "AIR: class-balanced ridge for long-tailed CIL improves over ACIL",
                              f"balanced accuracy AIR {air:.2f} vs ACIL {acil_b:.2f}", air > acil_b))
    for dataset in sorted({r["dataset"] for r in rows if r["scenario"] == "Si-Blurry"}):
        gacl, slda = (_cil(rows, dataset, "Si-Blurry", n, "A_auc") for n in ("GACL", "SLDA"))
        replay_name = next((r["learner"] for r in rows if r["dataset"] == dataset and r["learner"].startswith(
            "replay")), None)
        replay = _cil(rows, dataset, "Si-Blurry", replay_name, "A_auc") if replay_name else None
        if gacl is not None and slda is not None:
            out.append(_claim(f"GACL beats SLDA on Si-Blurry ({dataset}; A_auc)",
                              "GACL (NeurIPS 2024), CIFAR-100: A_auc 70.31 vs SLDA 61.79",
                              f"GACL {gacl:.2f} vs SLDA {slda:.2f}", gacl > slda))
        if gacl is not None and replay is not None:
            out.append(_claim(f"GACL (exemplar-free) beats replay on Si-Blurry ({dataset}; A_auc)",
                              "GACL, CIFAR-100: A_auc 70.31 vs MVP-R (2000 exemplars) 64.30",
                              f"GACL {gacl:.2f} vs {replay_name} {replay:.2f}", gacl > replay))
        foal, joint = (_cil(rows, dataset, "Si-Blurry", n, "A_last") for n in ("F-OAL", "joint ridge"))
        if foal is not None and joint is not None:
            out.append(_claim(f"forward-only online F-OAL ends near the joint model ({dataset}; within 5 points)",
                              "F-OAL (NeurIPS 2024): online, one pass, close to joint training",
                              f"F-OAL {foal:.2f} vs joint {joint:.2f} (A_last)", joint - foal <= 5))
    return out


def _federated_claims(rows: list[dict]) -> list[dict[str, Any]]:
    out = []
    for data in sorted({r["data"] for r in rows}):
        cells = [r for r in rows if r["data"] == data]
        afl = np.array([r["AFL"] for r in cells])
        spread = 100 * float(afl.max() - afl.min())
        out.append(_claim(f"AFL is invariant to the partition and the client count ({data}; spread ≤ 0.1 point)",
                          "AFL (2024): identical result for any α, shards and K",
                          f"AFL {100 * afl.min():.2f}–{100 * afl.max():.2f} over {len(cells)} cells", spread <= 0.1))
        gap = 100 * max(abs(r["AFL"] - r["centralized"]) for r in cells)
        out.append(_claim(f"AFL with RI equals the centralized ridge ({data}; ≤ 0.1 point)",
                          "AFL: regularization removal recovers the centralized solution",
                          f"max |AFL − centralized| {gap:.3f} points", gap <= 0.1))
        big = [r for r in cells if r["clients"] == max(c["clients"] for c in cells)]
        drop = 100 * float(np.mean([r["AFL"] - r["AFL (no RI)"] for r in big]))
        out.append(_claim(f"without RI, many clients ruin accuracy ({data}, K = {big[0]['clients']}; drop ≥ 10)",
                          "AFL: collapse at 1000 clients without regularization removal",
                          f"mean drop {drop:.2f} points", drop >= 10))
        skew = [r for r in cells if r["alpha"] == 0.1]
        if skew:
            lead = 100 * float(np.mean([r["AFL"] - r["FedAvg"] for r in skew]))
            out.append(_claim(f"AFL beats FedAvg under label skew ({data}, α = 0.1, mean over K)",
                              "AFL, ResNet-18 features α = 0.1: CIFAR-10 80.75 vs 64.02, CIFAR-100 58.56 vs 56.62",
                              f"AFL − FedAvg {lead:+.2f} points", lead > 0))
        deep = 100 * float(cells[0]["DeepAFL"] - cells[0]["AFL"])
        out.append(_claim(f"DeepAFL's residual layers beat the linear AFL head ({data})",
                          "DeepAFL (2026): +5.68 to +8.42 over the best baseline",
                          f"DeepAFL − AFL {deep:+.2f} points", deep > 0))
    return out


def evaluate(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Every claim that the sections present in ``figures`` can speak to."""
    out = _continual_claims(figures.get("cil", []))
    out += _federated_claims(figures.get("fl", []))
    flower = figures.get("flower")
    if flower:
        diff = flower["max_rel_diff_vs_in_process_afl"]
        out.append(_claim("a Flower run (10 clients, α = 0.1) equals in-process AFL (≤ 1e-5, float32 uploads)",
                          "AFL: one round, exact aggregation", f"max relative W difference {diff:.2g}",
                          diff <= 1e-5))
    return out
