"""Family section ``prototypes``: the closed-form continual peers RanPAC, NCM (SimpleCIL) and FeCAM next to SLDA
and ACIL, class-incremental on frozen real features (Fashion-MNIST/EfficientNet-Lite0 in phases of 2 classes,
WordNet supersenses/MiniLM in phases of 5).

Claims: RanPAC's sessions equal joint training once λ is fixed (its head depends on the data only through
``G, C``); RanPAC beats NCM and FeCAM beats NCM, as both papers report on ViT-B/16 features.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from analytic.solve import RidgeSolveWarning
from benchmarks.family import render_claims
from continual.acil import ACIL
from continual.baselines import SLDA
from continual.prototypes import NCM, FeCAM, RanPAC
from continual.runner import run_protocol, summarize
from continual.scenarios import class_incremental

#: random-projection width M by mode (the paper's M = 10000 in full mode).
BUFFER = {"quick": 2000, "full": 10000}
#: relative difference of phased vs joint RanPAC heads below which "phased = joint" holds (float64 rounding).
EXACT = 1e-8
METHODS = ("RanPAC", "NCM", "FeCAM", "SLDA", "ACIL")
RANPAC_SOURCE = ("McDonnell et al., NeurIPS 2023 (arXiv 2307.02251), abstract: ViT-B/16, seven class-incremental "
                 "benchmarks; the per-table figures (incl. the 'NCM only' ablation) were not reachable offline")
FECAM_SOURCE = ("Goswami et al., NeurIPS 2023 (arXiv 2309.14062), Tab. 2: pre-trained ViT-B/16 on CIFAR-100, "
                "ImageNet-R, CoRe50 (the authors' only ViT table, per github.com/dipamgoswami/FeCAM/issues/7)")


def _datasets(data: dict[str, Any]) -> list[str]:
    return [k for k in data if k.startswith("fashion-mnist/") or k.startswith("wordnet")]


def _phases(y: np.ndarray, classes: int, seed: int = 0) -> list[Any]:
    per_phase = 2 if classes <= 10 else 5
    count = max(2, classes // per_phase)
    return class_incremental(y, base_classes=classes - per_phase * (count - 1), phases=count - 1, seed=seed)


def _learners(size: int, non_negative: bool) -> dict[str, Any]:
    return {"RanPAC": RanPAC(buffer_size=size, seed=0), "NCM": NCM(),
            # Tukey's x^0.5 (the paper's) needs non-negative features: pooled ReLU6 maps are, MiniLM's are not.
            "FeCAM": FeCAM(beta=0.5 if non_negative else 1.0), "SLDA": SLDA(), "ACIL": ACIL(buffer_size=size)}


def run(data: dict[str, Any], quick: bool, out_dir: Path, stem: str) -> dict[str, Any]:
    size = BUFFER["quick" if quick else "full"]
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[float]]] = {}
    exactness: dict[str, float] = {}
    for key in _datasets(data):
        split = data[key]["split"]
        x_train, y_train = np.asarray(split[0], np.float64), np.asarray(split[1])
        x_test, y_test = np.asarray(split[2], np.float64), np.asarray(split[3])
        classes = int(max(y_train.max(), y_test.max())) + 1
        phases = _phases(y_train, classes)
        curves[key] = {}
        for name, learner in _learners(size, bool(x_train.min() >= 0)).items():
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                # Tiny λ on a rank-deficient G warns; the authors' rule still may pick it (MSE on held-out rows).
                warnings.simplefilter("ignore", RidgeSolveWarning)
                result = run_protocol(learner, x_train, y_train, x_test, y_test, phases)
            summary = summarize(result)
            curves[key][name] = [float(100 * a) for a in result.seen_accuracy]
            row = {"data": key, "method": name, "phases": len(phases), "A_last": summary["A_last"],
                   "A_avg": summary["A_avg"], "forgetting": summary["forgetting"],
                   "fit_s": result.fit_seconds, "total_s": time.perf_counter() - t0}
            if name == "RanPAC":
                row["buffer"], row["ridge"] = size, learner.ridge_
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RidgeSolveWarning)
                    joint = RanPAC(buffer_size=size, seed=0, ridge=learner.ridge_).fit(x_train, y_train)
                phased_w, joint_w = np.asarray(learner.coef_), np.asarray(joint.coef_)
                exactness[key] = float(np.max(np.abs(phased_w - joint_w)) / max(np.max(np.abs(joint_w)), 1e-300))
                row["phased_vs_joint"] = exactness[key]
            if name == "ACIL":
                row["buffer"] = size
            rows.append(row)
    plots = _plot(curves, out_dir, stem)
    return {"rows": rows, "claims": _claims(rows, exactness), "plots": plots,
            "notes": [f"RanPAC: frozen backbone only (no Phase 1), M = {size}, W_rand ~ N(0, 1), λ per session by "
                      "the authors' rule (first 80% of the session's rows fit, last 20% score by one-hot MSE, "
                      "λ ∈ 10^-8..10^8); un-normalised logits relu(x W_rand) W.",
                      "FeCAM: per-class covariance, shrinkage γ1 = γ2 = 1, correlation normalisation; Tukey β = 0.5 "
                      "only on non-negative features (else β = 1).",
                      "ACIL: default γ = 0.1, buffer as RanPAC's M (N(0, 1/d) init); SLDA: shrinkage 1e-4.",
                      "Published numbers are on ViT-B/16 image benchmarks; ours on offline features, so 'holds' "
                      "judges the direction of each claim, not the accuracies."]}


def _claims(rows: list[dict[str, Any]], exactness: dict[str, float]) -> list[dict[str, Any]]:
    acc = {(r["data"], r["method"]): r["A_last"] for r in rows}
    keys = sorted({r["data"] for r in rows})
    fmt = lambda a, b: "; ".join(f"{k}: {acc[(k, a)]:.1f} vs {acc[(k, b)]:.1f}" for k in keys)  # noqa: E731
    worst = max(exactness.values()) if exactness else float("nan")
    return [
        {"method": "RanPAC", "claim": "phased = joint (fixed λ): max relative head difference",
         "published": "exact: W = (G + λI)⁻¹C depends on the data only through G = Σhhᵀ, C = Σhyᵀ (Alg. 1)",
         "ours": f"{worst:.1e}", "holds": bool(worst <= EXACT), "source": "McDonnell et al., NeurIPS 2023, Alg. 1"},
        {"method": "RanPAC", "claim": "RanPAC ≥ NCM (final accuracy, %)",
         "published": "final error 20%-62% lower than earlier methods on pre-trained ViT-B/16 (no per-table NCM "
                      "figure retrieved)",
         "ours": fmt("RanPAC", "NCM"), "holds": all(acc[(k, "RanPAC")] >= acc[(k, "NCM")] for k in keys),
         "source": RANPAC_SOURCE},
        {"method": "FeCAM", "claim": "FeCAM ≥ NCM (final accuracy, %)",
         "published": "FeCAM above NCM on all three ViT benchmarks (values not retrieved offline)",
         "ours": fmt("FeCAM", "NCM"), "holds": all(acc[(k, "FeCAM")] >= acc[(k, "NCM")] for k in keys),
         "source": FECAM_SOURCE},
    ]


def _plot(curves: dict[str, dict[str, list[float]]], out_dir: Path, stem: str) -> list[str]:
    if not curves:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (key, methods) in zip(axes[0], curves.items()):
        for name, values in methods.items():
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", label=name)
        ax.set(title=key, xlabel="phase", ylabel="accuracy on seen classes (%)",
               xticks=np.arange(1, max(len(v) for v in methods.values()) + 1))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    name = f"{stem}_prototypes_phases.png"
    fig.savefig(Path(out_dir) / name, dpi=120)
    plt.close(fig)
    return [name]


def render(section: dict[str, Any]) -> str:
    lines = ["### Closed-form continual peers (RanPAC, NCM, FeCAM, SLDA, ACIL)", "",
             "| data | method | phases | A_last | A_avg | forgetting | fit s | extra |",
             "|---|---|---|---|---|---|---|---|"]
    for r in section["rows"]:
        extra = ", ".join(f"{k}={r[k]:.3g}" for k in ("buffer", "ridge", "phased_vs_joint") if k in r)
        lines.append(f"| {r['data']} | {r['method']} | {r['phases']} | {r['A_last']:.2f} | {r['A_avg']:.2f} | "
                     f"{r['forgetting']:.2f} | {r['fit_s']:.1f} | {extra} |")
    lines += render_claims(section)
    return "\n".join(lines)
