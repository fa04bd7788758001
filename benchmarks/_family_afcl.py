"""Family section ``afcl``: analytic federated continual learning (Tang et al., 2025, arXiv 2505.12245) on real
pretrained features, against FedAvg/FedProx fine-tuned task after task and centralized joint ridge.

Protocol: class-incremental, 5 tasks (Fashion-MNIST: 2 classes each; WordNet supersenses: 9 each), classes in
ascending id order; each task's rows split over 100 clients IID or Dirichlet(α ∈ {0.1, 1}) with a per-task seed
(:func:`federated.streams.client_streams`). After each task every method is scored on the test rows of the classes
seen so far (predictions restricted to them). γ: :func:`analytic.selection.select_gamma` on task 1's training rows
(raw features). AFCL clients send float64 statistics, so "AFCL = joint" is checked at float64 rounding.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks.common import max_rel_diff
from benchmarks.family import render_claims

PARTITIONS = {"iid": ("iid", {}), "dir0.1": ("dirichlet", {"alpha": 0.1}), "dir1": ("dirichlet", {"alpha": 1.0})}
CLIENTS, TASKS, FEDPROX_MU = 100, 5, 0.01
#: --quick on wide features (d > 512, the 1280-d EfficientNet set): every AFL upload is a d×d Gram (~13 MB at
#: d = 1280, ~0.15 s to build and screen here), so 100 clients x 5 tasks x 3 partitions alone would take minutes.
QUICK_WIDE_CLIENTS = 20
#: "AFCL = joint" holds when every per-task weight is within this relative gap (float64 statistics and solves).
EXACT = 1e-6
#: "FedAvg forgets" holds when its final task-1 accuracy trails AFCL's by at least this much in every setting.
FORGET_GAP = 0.10
PAPER = "Tang et al. 2025, AFCL, arXiv 2505.12245"


#: FedAvg/FedProx step size by feature set: 0.1 (the repository's FL-grid setting) on the EfficientNet features
#: (mean ‖x‖² ≈ 3.7e3); on the unit-norm MiniLM features 0.1 barely moves the logits within the round budget, and
#: 4.0 was the best of {0.1, 1, 2, 4, 8} on the quick IID / Dir 0.1 streams (tuned on test accuracy: it favours the
#: baseline, not AFCL).
LR = {"fashion-mnist/": 0.1, "wordnet": 4.0}


def _fed_kw(quick: bool, name: str) -> dict[str, Any]:
    lr = next((v for k, v in LR.items() if name.startswith(k)), 0.1)
    return {"rounds": 10 if quick else 30, "local_epochs": 2, "batch_size": 32, "lr": lr, "client_fraction": 0.1}


def _datasets(data: dict[str, dict[str, Any]]) -> list[str]:
    return [k for k in data if k.startswith("fashion-mnist/") or k.startswith("wordnet")]


def _clean(value: Any) -> Any:
    """JSON-safe: NaN (a metric with nothing to score) becomes ``None``."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _joint(x: np.ndarray, y: np.ndarray, streams: Any, gamma: float, classes: int) -> list[np.ndarray]:
    """Centralized joint ridge on all rows of tasks 1..t, float64 NumPy (the independent reference)."""
    from federated.streams import seen_rows

    out = []
    for t in range(streams.tasks):
        rows = seen_rows(streams, t)
        xs, ts = x[rows], np.eye(classes)[y[rows]]
        out.append(np.linalg.solve(xs.T @ xs + gamma * np.eye(x.shape[1]), xs.T @ ts))
    return out


def _row(dataset: str, partition: str, method: str, result: Any, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"dataset": dataset, "partition": partition, "method": method, "A_avg": _clean(float(result.average)),
            "A_last": _clean(float(result.last)), "forgetting": _clean(float(result.forgetting)),
            "task1_final": _clean(float(result.matrix[-1][0])), "seconds": seconds, **extra}


def run(data: dict[str, dict[str, Any]], quick: bool, out_dir: Path, stem: str,
        clients: int | None = None) -> dict[str, Any]:
    """The section (module docstring); ``clients`` overrides the client count (tests on tiny data)."""
    from analytic.selection import select_gamma
    from federated import afcl
    from federated.streams import client_streams

    rows, curves, notes, plots = [], {}, [], []
    exact_gaps, invariance, forget_gaps, beats = [], [], [], []
    for name in _datasets(data):
        split = data[name]["split"]
        x = np.asarray(split.x_train, np.float64)
        y = np.asarray(split.y_train, np.int64)
        xt, yt = np.asarray(split.x_test, np.float64), np.asarray(split.y_test, np.int64)
        classes = int(split.classes)
        fed_kw = _fed_kw(quick, name)
        count = clients or (QUICK_WIDE_CLIENTS if quick and x.shape[1] > 512 else CLIENTS)
        base = client_streams(y, TASKS, 1, "iid")
        first = base.streams[0][0]
        gamma = float(select_gamma(x[first], y[first], seed=0, dtype=np.float64).gamma)
        t0 = time.perf_counter()
        joint_w = _joint(x, y, base, gamma, classes)
        joint_preds = [np.asarray(afcl.predict(w, xt, base.seen_classes(t))) for t, w in enumerate(joint_w)]
        joint_scores = afcl.evaluate(joint_preds, yt, base)
        rows.append(_row(name, "pooled", "joint ridge (centralized)", SimpleNamespace(**joint_scores),
                         time.perf_counter() - t0, gamma=gamma))
        curves[name] = {"joint ridge": _clean(joint_scores["seen_accuracy"])}
        afcl_acc = []
        for label, (scheme, kw) in PARTITIONS.items():
            streams = client_streams(y, TASKS, count, scheme, seed=0, **kw)
            t0 = time.perf_counter()
            ours = afcl.run_afcl(x, y, streams, gamma, classes=classes, x_test=xt, y_test=yt)
            gap = max(max_rel_diff(w, j) for w, j in zip(ours.weights, joint_w))
            exact_gaps.append(gap)
            afcl_acc.append(ours.seen_accuracy)
            rows.append(_row(name, label, "AFCL", ours, time.perf_counter() - t0, gamma=gamma, clients=count,
                             max_rel_diff_vs_joint=gap, rejected=sum(len(e) for e in ours.excluded)))
            curves[name][f"AFCL {label}"] = _clean(ours.seen_accuracy)
            for method, mu in (("FedAvg per task", 0.0), ("FedProx per task", FEDPROX_MU)):
                t0 = time.perf_counter()
                grad = afcl.fedavg_per_task(x.astype(np.float32), y, streams, classes=classes, x_test=xt, y_test=yt,
                                            mu=mu, seed=0, **fed_kw)
                rows.append(_row(name, label, method, grad, time.perf_counter() - t0, clients=count))
                curves[name][f"{method} {label}"] = _clean(grad.seen_accuracy)
                beats.append(ours.average > grad.average)
                if mu == 0.0:
                    forget_gaps.append(ours.matrix[-1][0] - grad.matrix[-1][0])
        invariance.append(float(np.max(np.ptp(np.asarray(afcl_acc), axis=0))))
        plots.append(_plot(curves[name], name, out_dir, stem))
    claims = _claims(exact_gaps, invariance, forget_gaps, beats)
    notes += [
        f"{CLIENTS} clients ({QUICK_WIDE_CLIENTS} for d > 512 in --quick), {TASKS} tasks; FedAvg/FedProx: "
        f"{ {k: v for k, v in _fed_kw(quick, '').items() if k != 'lr'} } per task, lr {LR}, "
        f"FedProx μ={FEDPROX_MU}, softmax "
        "regression, each task starting from the previous task's parameters, no replay.",
        "Published AFCL numbers are on CIFAR-100 / ImageNet-R-style benchmarks with their own backbones; only the "
        "shape of each claim is compared here. The paper's per-table accuracies were not retrievable through the "
        "offline search tool (abstract only), so 'published' quotes the paper's stated property.",
        "γ = select_gamma on task 1's training rows (raw features); AFCL statistics in float64.",
    ]
    return {"rows": rows, "claims": claims, "notes": notes, "plots": plots, "curves": curves,
            "settings": {"clients": CLIENTS, "tasks": TASKS, "fedavg": _fed_kw(quick, ""), "lr": LR,
                         "fedprox_mu": FEDPROX_MU,
                         "partitions": list(PARTITIONS)}}


def _claims(exact_gaps: list[float], invariance: list[float], forget_gaps: list[float],
            beats: list[bool]) -> list[dict[str, Any]]:
    if not exact_gaps:
        return []
    worst = max(exact_gaps)
    return [
        {"method": "AFCL", "claim": "global model = centralized joint ridge after every task, any split",
         "published": "aggregated model invariant and identical to centralized joint learning (Abstract)",
         "ours": f"max rel diff of W vs joint over tasks/partitions {worst:.2e}", "holds": bool(worst <= EXACT),
         "source": PAPER},
        {"method": "AFCL", "claim": "accuracy invariant to the non-IID degree (IID, Dir 1, Dir 0.1)",
         "published": "invariant regardless of how heterogeneous the client/task split is (Abstract)",
         "ours": f"max spread of per-task accuracy across partitions {max(invariance):.2e}",
         "holds": bool(max(invariance) <= 1e-9), "source": PAPER},
        {"method": "FedAvg per task", "claim": "gradient FCL forgets earlier tasks (final task-1 accuracy)",
         "published": "gradient FCL shows severe spatial-temporal catastrophic forgetting (Abstract)",
         "ours": f"AFCL − FedAvg final task-1 accuracy: min {min(forget_gaps):.3f}, mean {np.mean(forget_gaps):.3f}",
         "holds": bool(min(forget_gaps) >= FORGET_GAP), "source": PAPER},
        {"method": "AFCL", "claim": "beats FedAvg/FedProx per task in average accuracy",
         "published": "consistent superiority over state-of-the-art baselines (Abstract; table values not retrieved)",
         "ours": f"AFCL A_avg higher in {sum(beats)}/{len(beats)} settings", "holds": bool(all(beats)),
         "source": PAPER},
    ]


def _plot(curves: dict[str, list[Any]], name: str, out_dir: Path, stem: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PARTITIONS), figsize=(4 * len(PARTITIONS), 3.2), sharey=True)
    for ax, label in zip(np.atleast_1d(axes), PARTITIONS):
        for method, style in (("joint ridge", "k--"), (f"AFCL {label}", "C0o-"), (f"FedAvg per task {label}", "C1s-"),
                              (f"FedProx per task {label}", "C2^-")):
            acc = [np.nan if a is None else a for a in curves[method]]
            ax.plot(np.arange(1, len(acc) + 1), acc, style, label=method.replace(f" {label}", ""), ms=4)
        ax.set_title(f"{name} — {label}", fontsize=9)
        ax.set_xlabel("task")
        ax.set_ylim(0, 1.02)
    np.atleast_1d(axes)[0].set_ylabel("accuracy on seen classes")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    file = f"{stem}_afcl_{name.replace('/', '_')}.png"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(out_dir) / file, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return file


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.3f}"
    return str(value).replace("|", "\\|")


def render(section: dict[str, Any]) -> str:
    cols = ["dataset", "partition", "clients", "method", "A_avg", "A_last", "forgetting", "task1_final",
            "max_rel_diff_vs_joint", "seconds"]
    lines = ["### AFCL: analytic federated continual learning", "", "| " + " | ".join(cols) + " |",
             "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in section.get("rows", [])]
    lines += render_claims(section)
    return "\n".join(lines)
