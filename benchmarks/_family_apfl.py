"""Family section ``apfl``: personalized analytic FL (APFL, arXiv 2508.10732) beside global AFL, Fed3R (raw and
random Fourier features, arXiv 2406.01116) and local-only ridge, on label-skewed clients.

Protocol. The training rows are split over K clients (quick: K = 20; full: K = 20 and 100) by Dirichlet label skew
(α ∈ {0.1, 0.5}, PFLlib semantics) or by 2-class shards. **Per-client test sets** follow each client's label
distribution: the test rows of class ``c`` are shuffled and dealt to the clients in the proportions in which the
clients hold class ``c`` in training (``n_kc / n_c``), so the K test sets are disjoint, cover the test set, and a
client that holds 30% of class ``c``'s training rows is tested on 30% of its test rows. The reported metric is the
mean over clients (with a non-empty test set) of per-client accuracy.

Ridge strengths, per data set: AFL's ``γ_g`` = Fed3R's λ by :func:`analytic.selection.select_gamma` on the pooled
training rows; Fed3R-RF's λ the same on the mapped rows; APFL's refinement ``γ_p`` (α = 1, linear stream with a
bias column) and the local ridge's γ by held-out accuracy on three (full: five) clients' own rows
(:func:`_select_client_gamma`). Fed3R-RF: D random Fourier features (quick 512, full 2048), bandwidth σ by the
median heuristic (median pairwise distance of 500 training rows), seed 0; its uploads are merged in waves of five
clients (a D×D Gram per client).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import max_rel_diff
from benchmarks.family import render_claims

METHODS = ("global AFL", "Fed3R", "Fed3R-RF", "local ridge", "APFL")
APFL_PUBLISHED = ("APFL beats state-of-the-art PFL baselines by at least 1.10%-15.45% accuracy (abstract, arXiv "
                  "2508.10732; the paper's 2 tables were not retrieved here)")


def _datasets(data: dict[str, dict[str, Any]]) -> list[str]:
    return [k for k in data if k.startswith("fashion-mnist") or k.startswith("wordnet")]


def _partitions(y: np.ndarray, clients: int) -> dict[str, list[np.ndarray]]:
    from federated import partition

    return {"dir0.1": partition.dirichlet(y, clients, 0.1, seed=0),
            "dir0.5": partition.dirichlet(y, clients, 0.5, seed=0),
            "shards2": partition.shards(y, clients, 2, seed=0)}


def client_test_sets(y_train: np.ndarray, parts: list[np.ndarray], y_test: np.ndarray, classes: int,
                     seed: int = 0) -> list[np.ndarray]:
    """Test rows per client, class ``c``'s rows dealt in the clients' training shares of class ``c``."""
    from federated.partition import class_histogram

    table = class_histogram(y_train, parts, classes)
    rng = np.random.default_rng(seed)
    out: list[list[np.ndarray]] = [[] for _ in parts]
    for c in range(classes):
        rows = rng.permutation(np.flatnonzero(y_test == c))
        total = table[:, c].sum()
        if total == 0 or rows.size == 0:
            continue
        cuts = np.round(np.cumsum(table[:, c]) / total * rows.size).astype(np.int64)[:-1]
        for k, chunk in enumerate(np.split(rows, cuts)):
            out[k].append(chunk)
    return [np.sort(np.concatenate(o)) if o else np.zeros(0, np.int64) for o in out]


def _median_sigma(x: np.ndarray, rows: int = 500) -> float:
    sample = x[np.random.default_rng(0).choice(len(x), min(rows, len(x)), replace=False)].astype(np.float64)
    sq = (sample**2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * sample @ sample.T, 0.0)
    return float(np.sqrt(np.median(d2[np.triu_indices(len(sample), 1)])))


def _select_client_gamma(x: np.ndarray, y: np.ndarray, parts: list[np.ndarray], w_g: Any, grid: list[float],
                         clients: int = 5, seed: int = 0) -> tuple[float, list[float]]:
    """γ of a refinement stream (``w_g`` = 0: the local ridge) by pooled held-out accuracy: on the first ``clients``
    clients with ≥ 20 rows, 25% of each client's training rows are held out, the stream's statistics are formed on
    the rest and every γ of ``grid`` is solved from one ``eigh`` (:func:`analytic.selection.ridge_path`)."""
    from analytic.selection import ridge_path
    from federated import apfl

    rng = np.random.default_rng(seed)
    correct = np.zeros(len(grid))
    for p in [p for p in parts if p.size >= 20][:clients]:
        p = rng.permutation(p)
        cut = p.size // 4
        held, fit = p[:cut], p[cut:]
        stream = apfl.personalize(w_g, x[fit], y[fit], gamma=grid[0])
        for i, v in enumerate(np.asarray(ridge_path(stream.stats.xtx, stream.stats.xty, grid))):
            pred = apfl.predict(w_g, stream._replace(weight=v), x[held])
            correct[i] += float(np.sum(np.asarray(pred) == y[held]))
    best = max(range(len(grid)), key=lambda i: (correct[i], grid[i]))  # ties: the larger γ
    return float(grid[best]), correct.tolist()


def _fed3r(x: np.ndarray, y: np.ndarray, parts: list[np.ndarray], classes: int, lam: float, rff: Any) -> Any:
    from federated import fed3r

    dim = fed3r.mapped_dim(x.shape[1], rff)
    state, result = None, None
    for start in range(0, len(parts), 5):  # waves: never more than five D×D uploads in memory
        ups = [fed3r.fed3r_client_stats(x[p], y[p], classes, client_id=start + i, rff=rff)
               for i, p in enumerate(parts[start:start + 5])]
        result = fed3r.fed3r_server(ups, dim=dim, classes=classes, lam=lam, state=state)
        state = result.state
    return result


def _one_setting(split: Any, parts: list[np.ndarray], tests: list[np.ndarray], gammas: dict[str, float],
                 rff: Any) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    from federated import apfl, fed3r

    x, y, xt, yt = (np.asarray(split.x_train, np.float64), np.asarray(split.y_train), np.asarray(split.x_test,
                    np.float64), np.asarray(split.y_test))
    classes, d = split.classes, x.shape[1]
    gamma = gammas["global"]
    uploads = [apfl.apfl_client_stats(x[p], y[p], classes, client_id=k) for k, p in enumerate(parts)]
    w_g = apfl.apfl_server(uploads, dim=d, classes=classes, global_gamma=gamma).weight
    pooled = np.linalg.solve(x.T @ x + gamma * np.eye(d), x.T @ np.eye(classes)[y])
    checks = {"global_vs_pooled": max_rel_diff(w_g, pooled)}
    raw = _fed3r(x, y, parts, classes, gamma, None).weight
    xb = np.hstack([x, np.ones((len(x), 1))])
    central = np.linalg.solve(xb.T @ xb + gamma * np.eye(d + 1), xb.T @ np.eye(classes)[y])
    checks["fed3r_vs_centralized"] = max_rel_diff(raw, central)
    w_raw = fed3r.normalize_weight(raw)
    w_rf = fed3r.normalize_weight(_fed3r(x, y, parts, classes, gammas["rf"], rff).weight)
    zeros = np.zeros_like(np.asarray(w_g))
    # Every model scores the whole test set (one shape: one compiled program per model kind) and each client is
    # scored on its own rows of it; the shared models are scored once.
    shared = {"global AFL": np.asarray(apfl.predict(w_g, None, xt)),
              "Fed3R": np.asarray(fed3r.fed3r_predict(w_raw, xt)),
              "Fed3R-RF": np.asarray(fed3r.fed3r_predict(w_rf, xt, rff))}
    acc: dict[str, list[float]] = {m: [] for m in METHODS}
    for p, t in zip(parts, tests):
        if t.size == 0:
            continue
        for method, pred in shared.items():
            acc[method].append(float(np.mean(pred[t] == yt[t])))
        # Local-only ridge = the refinement stream against a zero global weight (the residual is then Y itself).
        local = apfl.personalize(zeros, x[p], y[p], gamma=gammas["local"])
        acc["local ridge"].append(float(np.mean(np.asarray(apfl.predict(zeros, local, xt))[t] == yt[t])))
        personal = apfl.personalize(w_g, x[p], y[p], gamma=gammas["personal"])
        acc["APFL"].append(float(np.mean(np.asarray(apfl.predict(w_g, personal, xt))[t] == yt[t])))
    return {m: np.asarray(v) for m, v in acc.items()}, checks


def run(data: dict[str, dict[str, Any]], quick: bool, out_dir: Path, stem: str,
        rff_features: int | None = None) -> dict[str, Any]:
    """The section (module docstring); ``rff_features`` overrides D (quick 512, full 2048)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analytic.selection import select_gamma
    from federated import apfl, fed3r

    client_counts = [20] if quick else [20, 100]
    rff_d = rff_features or (512 if quick else 2048)
    rows: list[dict[str, Any]] = []
    scatter: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    max_global, max_fed3r = 0.0, 0.0
    gains, fractions = [], []
    notes = []
    for name in _datasets(data):
        split = data[name]["split"]
        x = np.asarray(split.x_train)
        y = np.asarray(split.y_train)
        gamma = float(select_gamma(x, y, seed=0, dtype=np.float64).gamma)
        sigma = _median_sigma(x)
        rff = fed3r.rff_init(x.shape[1], rff_d, sigma, seed=0)
        gamma_rf = float(select_gamma(np.asarray(fed3r.rff_features(rff, x)), y, seed=0, dtype=np.float64).gamma)
        # The refinement streams see n_k << n rows, so their γ is chosen on clients' own held-out rows, once per
        # data set on the Dirichlet α = 0.5, K = 20 split (the primary stream fitted on all clients).
        sel_parts = _partitions(y, 20)["dir0.5"]
        x64 = x.astype(np.float64)
        w_sel = apfl.apfl_server([apfl.apfl_client_stats(x64[p], y[p], split.classes, client_id=k)
                                  for k, p in enumerate(sel_parts)], dim=x.shape[1], classes=split.classes,
                                 global_gamma=gamma).weight
        grid = [gamma * 10.0**k for k in range(-1, 4)]
        gamma_p, _ = _select_client_gamma(x64, y, sel_parts, w_sel, grid, clients=3 if quick else 5)
        gamma_l, _ = _select_client_gamma(x64, y, sel_parts, np.zeros_like(np.asarray(w_sel)), grid,
                                          clients=3 if quick else 5)
        gammas = {"global": gamma, "rf": gamma_rf, "personal": gamma_p, "local": gamma_l}
        notes.append(f"{name}: γ_g = λ = {gamma:g} (select_gamma, pooled training rows); Fed3R-RF λ = {gamma_rf:g} "
                     f"(select_gamma on the mapped rows), D = {rff_d}, σ = {sigma:.4g} (median heuristic); APFL "
                     f"γ_p = {gamma_p:g}, local ridge γ = {gamma_l:g} (clients' held-out rows, grid γ_g·10^-1..3)")
        for clients in client_counts:
            for scheme, parts in _partitions(np.asarray(split.y_train), clients).items():
                tests = client_test_sets(np.asarray(split.y_train), parts, np.asarray(split.y_test), split.classes)
                acc, checks = _one_setting(split, parts, tests, gammas, rff)
                max_global = max(max_global, checks["global_vs_pooled"])
                max_fed3r = max(max_fed3r, checks["fed3r_vs_centralized"])
                gain = acc["APFL"] - acc["global AFL"]
                gains.append(float(gain.mean()))
                fractions.append(float(np.mean(gain >= 0)))
                scatter[f"{name.split('/')[0]} {scheme} K={clients}"] = (acc["global AFL"], acc["APFL"])
                for method in METHODS:
                    row = {"dataset": name, "partition": scheme, "clients": clients, "method": method,
                           "mean_client_acc": 100 * float(acc[method].mean()),
                           "std_client_acc": 100 * float(acc[method].std()), "tested_clients": int(acc[method].size)}
                    if method == "APFL":
                        row.update(gain_vs_global=100 * float(gain.mean()),
                                   frac_clients_ge_global=float(np.mean(gain >= 0)))
                    rows.append(row)
    plots = []
    if scatter:
        cols = 3
        nrows = -(-len(scatter) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(3.3 * cols, 3.2 * nrows), squeeze=False)
        for ax, (label, (g, p)) in zip(axes.flat, scatter.items()):
            ax.scatter(100 * g, 100 * p, s=12, alpha=0.7)
            ax.plot([0, 100], [0, 100], "k--", lw=0.8)
            ax.set_title(label, fontsize=8)
            ax.set_xlabel("global AFL acc (%)", fontsize=7)
            ax.set_ylabel("APFL personalized acc (%)", fontsize=7)
        for ax in list(axes.flat)[len(scatter):]:
            ax.axis("off")
        fig.tight_layout()
        plot = f"{stem}_apfl_scatter.png"
        fig.savefig(Path(out_dir) / plot, dpi=110)
        plt.close(fig)
        plots.append(plot)
    mean_gain = float(np.mean(gains)) if gains else float("nan")
    mean_frac = float(np.mean(fractions)) if fractions else float("nan")
    claims = [
        {"method": "APFL primary stream", "claim": "global stream = pooled ridge for every partition",
         "published": "exact by construction (AFL AA law; APFL heterogeneity invariance, abstract)",
         "ours": f"max rel diff {max_global:.2e}", "holds": bool(max_global <= 1e-6),
         "source": "arXiv 2508.10732 abstract; Zhuang et al. 2024 (AFL)"},
        {"method": "APFL", "claim": "personalized >= global on label-skewed clients",
         "published": APFL_PUBLISHED,
         "ours": f"mean gain {100 * mean_gain:+.2f} pp; {100 * mean_frac:.0f}% of clients >= global "
                 f"(over {len(gains)} settings)",
         "holds": bool(mean_gain > 0 and mean_frac >= 0.5), "source": "arXiv 2508.10732 (abstract)"},
        {"method": "Fed3R", "claim": "any partition / client order = centralized ridge (immune to heterogeneity)",
         "published": "exact: immune to heterogeneity, invariant to client sampling order (abstract)",
         "ours": f"max rel diff {max_fed3r:.2e} vs pooled NumPy ridge on [x, 1]", "holds": bool(max_fed3r <= 1e-6),
         "source": "Fanì et al., ICML 2024, arXiv 2406.01116"},
    ]
    rf = [r["mean_client_acc"] for r in rows if r["method"] == "Fed3R-RF"]
    raw = [r["mean_client_acc"] for r in rows if r["method"] == "Fed3R"]
    if rf:
        claims.append({"method": "Fed3R-RF", "claim": "random features improve on raw Fed3R",
                       "published": "Fed3R-RF 'significantly enhancing performance to levels akin to centralized "
                                    "training' (OpenReview abstract, openreview.net/forum?id=LiSj1GRVhL; the "
                                    "Landmarks/iNaturalist tables were not retrieved here)",
                       "ours": f"mean over settings {np.mean(rf):.2f}% vs {np.mean(raw):.2f}%",
                       "holds": bool(np.mean(rf) >= np.mean(raw)), "source": "arXiv 2406.01116"})
    notes.append("Per-client test sets: each class's test rows dealt in the clients' training shares of that class.")
    notes.append("Published numbers: only the two papers' abstracts (and the Fed3R authors' public classifier code for "
                 "the weight normalization) were reachable; the APFL refinement stream is our construction "
                 "(federated/apfl.py docstring).")
    return {"rows": rows, "claims": claims, "notes": notes, "plots": plots}


def render(section: dict[str, Any]) -> str:
    lines = ["### APFL / Fed3R: personalized analytic FL on label-skewed clients", "",
             "| dataset | partition | K | method | mean client acc | std | gain vs global | clients ≥ global |",
             "|---|---|---|---|---|---|---|---|"]
    for r in section.get("rows", []):
        gain = f"{r['gain_vs_global']:+.2f}" if "gain_vs_global" in r else ""
        frac = f"{100 * r['frac_clients_ge_global']:.0f}%" if "frac_clients_ge_global" in r else ""
        lines.append(f"| {r['dataset']} | {r['partition']} | {r['clients']} | {r['method']} | "
                     f"{r['mean_client_acc']:.2f} | {r['std_client_acc']:.2f} | {gain} | {frac} |")
    lines += render_claims(section)
    return "\n".join(lines)
