"""Federated analytic learning: accuracy under label skew, aggregation speed and DeepAFL cost.

``python -m benchmarks federated [--quick]``

1. Accuracy of AFL (RI + one global γ), AFL without RI, DeepAFL, FedAvg, FedProx and the centralized ridge over
   Dirichlet α ∈ {0.01, 0.1, 1} and IID, for K ∈ {10, 100, 1000} clients, on scikit-learn ``digits``, ``mnist1d``
   (``make_dataset()`` defaults, raw 40-d signals) and a synthetic d = 512 feature set (a stand-in for ResNet-18
   features). AFL runs for every cell. DeepAFL is partition-invariant (tests/federated/test_deepafl.py), so it is
   fitted once per data set and run federated in one cell per data set, whose agreement is recorded.
2. Speed: the AFL server for 1000 clients at d = 512, sum form vs the literal pairwise AA law (same W checked),
   and NumPy's sum + solve as the machine reference; the sum form with its default screening (``psd="probe"``:
   O(d²) checks per upload plus one Cholesky of the summed Gram) and, on 50 uploads, with the exact per-upload
   Cholesky screening (``psd="cholesky"``, extrapolated per upload); all timed in this run.
3. DeepAFL at the authors' sizes (T = 20, d_Φ = d_F = 1024, float32) on the synthetic set, 100 clients:
   federated end-to-end time and bytes. (The accuracy grid uses d_Φ = d_F = 512, T = 10; ``--quick`` 256 / 5.)
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from benchmarks.common import best_time, parser, print_table, save_figure, write_results

ALPHAS: list[Any] = [0.01, 0.1, 1.0, "iid"]
METHODS = ["centralized", "AFL", "AFL (no RI)", "DeepAFL", "FedAvg", "FedProx"]


def load_datasets(quick: bool) -> dict[str, tuple[np.ndarray, ...]]:
    from mnist1d.data import make_dataset
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    out = {}
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.3, random_state=0, stratify=y)
    out["digits"] = (xtr, ytr, xte, yte)
    m = make_dataset()
    mean, std = m["x"].mean(0), m["x"].std(0)
    out["mnist1d"] = ((m["x"] - mean) / std, m["y"], (m["x_test"] - mean) / std, m["y_test"])
    out["synthetic512"] = synthetic(n=4000 if quick else 8000, d=512)
    return out


def synthetic(n: int, d: int, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Two Gaussian sub-clusters per class in a 64-d subspace plus isotropic noise, embedded in ``d`` dims:
    linearly separable only in part (a ridge head reaches ≈ 0.65 at n = 8000)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, 2, 64)) * 0.45
    basis = np.linalg.qr(rng.standard_normal((d, 64)))[0]

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, m)
        z = centers[y, rng.integers(0, 2, m)] + rng.standard_normal((m, 64))
        return z @ basis.T + 0.3 * rng.standard_normal((m, d)), y

    (xtr, ytr), (xte, yte) = draw(n), draw(n // 4)
    return xtr, ytr, xte, yte


def parts_for(y: np.ndarray, clients: int, alpha: Any, seed: int = 0) -> list[np.ndarray]:
    from federated import partition

    if alpha == "iid":
        return partition.iid(y, clients, seed=seed)
    return partition.dirichlet(y, clients, float(alpha), min_size=0, seed=seed)


def accuracy(pred: Any, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == y))


def afl_cell(x, y, xte, yte, parts, gamma: float) -> dict[str, float]:
    """AFL with RI (+ global γ, as the pooled Gram of digits is singular) and without RI, merged in waves of 100
    clients so that 1000 uploads of a 512×512 Gram never sit in memory together."""
    from federated import afl

    classes = int(max(y.max(), yte.max())) + 1
    state = None
    for start in range(0, len(parts), 100):
        wave = [afl.client_stats(x[p], y[p], gamma, classes, client_id=start + i)
                for i, p in enumerate(parts[start:start + 100])]
        state = afl.aggregate(wave, dim=x.shape[1], classes=classes, state=state, global_gamma=gamma,
                              psd="none").state
    w_ri = afl.server_solve(state, global_gamma=gamma)
    w_raw = afl.server_solve(state, remove_regularization=False)
    return {"AFL": accuracy(afl.predict(w_ri, xte), yte), "AFL (no RI)": accuracy(afl.predict(w_raw, xte), yte)}


def accuracy_grid(data, clients_list, quick: bool, deep_kw: dict, fed_kw: dict,
                  gamma: float | dict[str, float] = 1.0) -> tuple[list[dict], dict]:
    """AFL (with and without RI), DeepAFL, FedAvg, FedProx and the centralized ridge in every (data, K, α) cell;
    ``gamma`` is the ridge γ of AFL and the centralized fit, one value or one per data set."""
    from analytic import ridge_fit
    from federated import baselines, deepafl

    rows, checks = [], {}
    cells = [(name, k, a) for name in data for k in clients_list for a in ALPHAS]
    gammas = gamma if isinstance(gamma, dict) else dict.fromkeys(data, gamma)
    deep_acc: dict[str, float] = {}
    central: dict[str, float] = {}
    for name, (x, y, xte, yte) in data.items():
        w = ridge_fit(x, y, gammas[name])
        central[name] = accuracy(np.argmax(np.asarray(xte) @ np.asarray(w), axis=1), yte)
        t0 = time.perf_counter()
        model = deepafl.DeepAFL(**deep_kw).fit(x.astype(np.float32), y)
        deep_acc[name] = model.score(xte.astype(np.float32), yte)
        # One federated DeepAFL run per data set (K = 100 or 10, α = 0.1) against the pooled fit.
        k_check = 10 if quick else 100
        parts = parts_for(y, k_check, 0.1)
        t1 = time.perf_counter()
        fed = deepafl.DeepAFL(**deep_kw).fit_federated([(x[p].astype(np.float32), y[p]) for p in parts],
                                                        classes=int(y.max()) + 1)
        t2 = time.perf_counter()
        a, b = np.asarray(fed.decision_function(xte.astype(np.float32))), np.asarray(
            model.decision_function(xte.astype(np.float32)))
        checks[name] = {"clients": k_check, "alpha": 0.1, "max_rel_logit_diff": float(np.abs(a - b).max()
                                                                                      / np.abs(b).max()),
                        "federated_accuracy": fed.score(xte.astype(np.float32), yte),
                        "pooled_accuracy": deep_acc[name], "pooled_seconds": t1 - t0, "federated_seconds": t2 - t1,
                        "comm": fed.comm_}
    for name, k, alpha in tqdm(cells, desc="accuracy grid"):
        x, y, xte, yte = data[name]
        parts = parts_for(y, k, alpha)
        row = {"data": name, "clients": k, "alpha": alpha, "centralized": central[name], "DeepAFL": deep_acc[name]}
        row.update(afl_cell(x, y, xte, yte, parts, gamma=gammas[name]))
        kw = dict(fed_kw, client_fraction=max(0.1, min(1.0, 10 / k)), eval_data=(xte, yte))
        row["FedAvg"] = baselines.fedavg(x, y, parts, classes=int(y.max()) + 1, **kw).history[-1][1]
        row["FedProx"] = baselines.fedprox(x, y, parts, mu=0.01, classes=int(y.max()) + 1, **kw).history[-1][1]
        row["empty_clients"] = int(sum(len(p) == 0 for p in parts))
        rows.append(row)
    return rows, checks


def aggregation_speed(clients: int, dim: int, classes: int = 10, rows_per_client: int = 16) -> dict[str, Any]:
    """AFL server time for ``clients`` float32 uploads of a ``dim``×``dim`` Gram: sum form vs literal law."""
    from analytic import ridge_solve
    from federated import afl

    rng = np.random.default_rng(1)
    uploads = []
    for k in tqdm(range(clients), desc=f"uploads d={dim}", leave=False):
        x = rng.standard_normal((rows_per_client, dim)).astype(np.float32)
        uploads.append(afl.client_stats(x, rng.integers(0, classes, rows_per_client), 1.0, classes, k,
                                        dtype=np.float32))
    reps = 3

    def sum_form(validate: bool) -> jax.Array:
        return afl.aggregate(uploads, dim=dim, classes=classes, global_gamma=1.0,
                             validate=validate).weight.block_until_ready()

    def numpy_sum() -> np.ndarray:
        xtx = np.zeros((dim, dim))
        xty = np.zeros((dim, classes))
        for u in uploads:
            xtx += u.xtx
            xty += u.xty
        return np.linalg.solve(xtx + np.eye(dim), xty)

    t_sum = best_time(lambda: sum_form(False), repeats=reps)
    t_sum_checked = best_time(lambda: sum_form(True), repeats=reps)
    t_numpy = best_time(numpy_sum, repeats=reps)
    # The exact per-upload PSD screening costs d³/3 per upload: timed on 50 uploads, reported per upload.
    t_exact = best_time(lambda: afl.aggregate(uploads[:50], dim=dim, classes=classes, global_gamma=1.0,
                                              psd="cholesky").weight.block_until_ready(), repeats=1) / 50
    t0 = time.perf_counter()
    local = [ridge_solve(u.xtx.astype(np.float64), u.xty.astype(np.float64), u.gamma) for u in uploads]
    jax.block_until_ready(local)
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairwise = afl.aggregate_pairwise(uploads, dim=dim, classes=classes, global_gamma=1.0, validate=False,
                                      local_weights=local)
    pairwise.weight.block_until_ready()
    t_pair = time.perf_counter() - t0
    w_sum = np.asarray(sum_form(False))
    diff = float(np.abs(np.asarray(pairwise.weight) - w_sum).max() / np.abs(w_sum).max())
    return {"clients": clients, "dim": dim, "upload_bytes_per_client": uploads[0].nbytes,
            "sum_form_s": t_sum, "sum_form_with_validation_s": t_sum_checked, "numpy_sum_solve_s": t_numpy,
            "sum_form_with_validation_vs_numpy": t_numpy / t_sum_checked,
            "exact_cholesky_screening_s_per_upload": t_exact,
            "pairwise_server_s": t_pair, "pairwise_local_solves_s": t_local,
            "speedup_pairwise_server_over_sum": t_pair / t_sum,
            "speedup_pairwise_with_local_solves_over_sum": (t_pair + t_local) / t_sum,
            "sum_form_vs_numpy": t_numpy / t_sum, "max_rel_weight_diff": diff}


def deepafl_cost(data, clients: int, kw: dict) -> dict[str, Any]:
    from federated import deepafl

    x, y, xte, yte = data
    parts = parts_for(y, clients, 0.1)
    t0 = time.perf_counter()
    model = deepafl.DeepAFL(**kw).fit_federated([(x[p].astype(np.float32), y[p]) for p in parts],
                                                classes=int(y.max()) + 1)
    seconds = time.perf_counter() - t0
    return {"clients": clients, **kw, "dtype": "float32", "seconds": seconds,
            "accuracy": model.score(xte.astype(np.float32), yte), "comm": model.comm_, "rows": int(len(y))}


def plot(rows: list[dict], clients_list: list[int], out, filename: str = "federated_accuracy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["data"] for r in rows})
    fig, axes = plt.subplots(len(clients_list), len(names), figsize=(4.2 * len(names), 3.0 * len(clients_list)),
                             squeeze=False, sharey="col")
    for i, k in enumerate(clients_list):
        for j, name in enumerate(names):
            ax = axes[i, j]
            cell = [r for r in rows if r["data"] == name and r["clients"] == k]
            for method, style in zip(METHODS, ["k:", "C0-o", "C0--x", "C3-s", "C1-^", "C2-v"]):
                ax.plot(range(len(ALPHAS)), [r[method] for r in cell], style, label=method, ms=4)
            ax.set_xticks(range(len(ALPHAS)), [str(a) for a in ALPHAS])
            ax.set_title(f"{name}, K={k}", fontsize=9)
            ax.set_xlabel("Dirichlet α")
            ax.set_ylabel("test accuracy")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, filename, out)


def main(argv: list[str]) -> dict:
    p = parser("federated", __doc__.splitlines()[0])
    p.add_argument("--sections", default="accuracy,speed,deepafl",
                   help="comma-separated subset of accuracy,speed,deepafl; a subset writes federated_<subset>.json")
    p.add_argument("--clients", default=None, help="comma-separated client counts for the accuracy grid")
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := set(sections) - {"accuracy", "speed", "deepafl"}:
        p.error(f"unknown sections {sorted(unknown)}")
    # float64 server solves and AFL statistics (exactness); DeepAFL runs in float32 as the authors do.
    jax.config.update("jax_enable_x64", True)
    quick = args.quick
    clients_list = ([int(k) for k in args.clients.split(",")] if args.clients
                    else [10, 100] if quick else [10, 100, 1000])
    # The accuracy grid uses mid-sized DeepAFL layers (it fits 6 models); section 3 runs the authors' sizes.
    deep_kw = (dict(phi_dim=256, block_dim=256, layers=5, dtype=np.float32) if quick
               else dict(phi_dim=512, block_dim=512, layers=10, dtype=np.float32))
    cost_kw = deep_kw if quick else dict(phi_dim=1024, block_dim=1024, layers=20, dtype=np.float32)
    fed_kw = dict(rounds=10 if quick else 30, local_epochs=2, batch_size=32, lr=0.1)
    data = load_datasets(quick)
    figures: dict[str, Any] = {"quick": quick, "sections": sections, "settings": {
        "afl_gamma": 1.0, "global_gamma": 1.0, "fedavg": fed_kw, "fedprox_mu": 0.01,
        "client_fraction": "max(0.1, 10/K)", "deepafl_grid": {k: str(v) for k, v in deep_kw.items()},
        "deepafl_cost": {k: str(v) for k, v in cost_kw.items()}, "dirichlet_min_size": 0}}
    name = "federated" if len(sections) == 3 else "federated_" + "_".join(sections)
    if "accuracy" in sections:
        rows, checks = accuracy_grid(data, clients_list, quick, deep_kw, fed_kw)
        print_table(rows, ["data", "clients", "alpha", *METHODS, "empty_clients"], floatfmt="{:.3f}")
        plot(rows, clients_list, args.out, name + "_accuracy")
        figures |= {"accuracy": rows, "deepafl_federated_vs_pooled": checks}
    if "speed" in sections:
        figures["aggregation_speed"] = aggregation_speed(*((200, 256) if quick else (1000, 512)))
        print_table([figures["aggregation_speed"]])
    if "deepafl" in sections:
        cost = deepafl_cost(data["synthetic512"], 10 if quick else 100, cost_kw)
        figures["deepafl_cost"] = {k: v for k, v in cost.items() if k != "comm"} | cost["comm"]
        print_table([figures["deepafl_cost"]])
    path = write_results(name, figures, args.out)
    print(f"wrote {path}")
    return figures
