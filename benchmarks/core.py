"""``python -m benchmarks core``: speed of the analytic core, as ratios measured side by side in one run.

1. Gram accumulation throughput as a fraction of a same-shape GEMM (goal ≥ 0.8) and of the machine's matmul peak,
   and its time against NumPy's ``x.T @ x`` (OpenBLAS SYRK) in the compute dtype (goal ≥ 0.9), for the default
   ``impl="auto"`` and for the XLA path.
2. A class-incremental stream (50,000 rows, batch 256, 100 classes over 25 phases, buffer d ∈ {2048, 8192}):
   this core (Gram accumulation + one Cholesky read-out per phase; and the jitted Woodbury recursion) against a
   plain NumPy float64 implementation of the published recursion with a matrix inverse per batch, as the
   authors' code does it. Reports the speed ratio (goal ≥ 5×) and the max relative difference of W (≤ 1e-6).
3. Time vs n and d for accumulate + solve, with a log-log plot.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from analytic import RandomBuffer, gram_accumulate, gram_init, ridge_solve, rls_init, rls_step  # noqa: E402
from benchmarks.common import (  # noqa: E402
    best_time,
    matmul_peak_flops,
    max_rel_diff,
    parser,
    print_table,
    save_figure,
    write_results,
)


@jax.jit
def _gemm_t(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a.T, b, precision=jax.lax.Precision.HIGHEST)


def _run_gemm(a: jax.Array, b: jax.Array) -> None:
    _gemm_t(a, b).block_until_ready()


def _run_gram(stats: Any, x: jax.Array, y: jax.Array, cd: Any, impl: str = "auto") -> None:
    gram_accumulate(stats, x, y, None, cd, impl).xtx.block_until_ready()


def _numpy_xtx(x: np.ndarray) -> None:
    x.T @ x       # C-contiguous x: NumPy calls SYRK (one triangle) and mirrors it


def _accumulate_and_solve(x: jax.Array, y: jax.Array, blk: int) -> None:
    stats = gram_init(x.shape[1], y.shape[1], jnp.float64)
    for s in range(0, x.shape[0] - blk + 1, blk):
        stats = gram_accumulate(stats, x[s:s + blk], y[s:s + blk], None, jnp.float32)
    ridge_solve(stats.xtx, stats.xty, 1.0, warn_cond=np.inf).block_until_ready()


def gram_throughput(n: int, d: int, repeats: int) -> dict[str, Any]:
    """Gram block ``XᵀX`` (+ ``XᵀY``, 100 columns) through the core vs a same-shape general GEMM ``AᵀB`` (XLA and
    NumPy) and vs NumPy's ``x.T @ x`` alone (time ratios ``numpy_xtx_s / gram_s``, so ``XᵀY`` is billed to us)."""
    rng = np.random.default_rng(0)
    rows: dict[str, Any] = {"n": n, "d": d}
    for name, dt, acc in (("float32", jnp.float32, jnp.float32), ("float32->float64", jnp.float32, jnp.float64),
                          ("float64", jnp.float64, jnp.float64)):
        x = jnp.asarray(rng.standard_normal((n, d)), dt)
        other = jnp.asarray(rng.standard_normal((n, d)), dt)
        y = jax.nn.one_hot(jnp.asarray(rng.integers(0, 100, n)), 100, dtype=dt)
        stats = gram_init(d, 100, acc)
        cd = None if dt == acc else dt
        t_gram = best_time(partial(_run_gram, stats, x, y, cd), repeats)
        t_gemm = best_time(partial(_run_gemm, x, other), repeats)
        t_np = best_time(partial(np.matmul, np.asarray(x).T, np.asarray(other)), repeats)
        t_gram_xla = best_time(partial(_run_gram, stats, x, y, cd, "xla"), repeats)
        t_syrk = best_time(partial(_numpy_xtx, np.ascontiguousarray(np.asarray(x))), repeats)
        flops = 2.0 * n * d * d + 2.0 * n * d * 100
        rows[name] = {"gram_s": t_gram, "xla_gemm_s": t_gemm, "numpy_gemm_s": t_np,
                      # Rate of the Gram path (its flops include XᵀY) over the GEMM's rate.
                      "fraction_of_xla_gemm": (t_gemm * flops / (2.0 * n * d * d)) / t_gram,
                      "fraction_of_numpy_gemm": (t_np * flops / (2.0 * n * d * d)) / t_gram,
                      "gram_gflops": flops / t_gram / 1e9,
                      "gram_xla_s": t_gram_xla, "numpy_xtx_s": t_syrk,
                      "vs_numpy_xtx": t_syrk / t_gram, "xla_vs_numpy_xtx": t_syrk / t_gram_xla}
    return rows


def naive_woodbury(feats: np.ndarray, labels: np.ndarray, classes: int, gamma: float, batch: int,
                   phase_ends: set[int], progress: tqdm) -> tuple[list[np.ndarray], float]:
    """The published recursion, literally, in NumPy float64 with ``np.linalg.inv`` per batch (docs/methods.md §1)."""
    d = feats.shape[1]
    t0 = time.perf_counter()
    r = np.eye(d) / gamma
    w = np.zeros((d, 0))
    snapshots = []
    for start in range(0, len(labels), batch):
        x = feats[start:start + batch]
        lab = labels[start:start + batch]
        width = max(w.shape[1], int(lab.max()) + 1)
        w = np.pad(w, ((0, 0), (0, width - w.shape[1])))
        y = np.eye(width)[lab]
        k_inv = np.linalg.inv(np.eye(len(x)) + x @ r @ x.T)
        r = r - r @ x.T @ k_inv @ x @ r
        w = w + r @ x.T @ (y - x @ w)
        if start + len(x) in phase_ends:
            snapshots.append(np.pad(w, ((0, 0), (0, classes - w.shape[1]))))
        progress.update(1)
    return snapshots, time.perf_counter() - t0


def core_gram_stream(feats: jax.Array, labels: np.ndarray, classes: int, gamma: float, batch: int,
                     phase_ends: set[int], acc: Any, compute: Any, progress: tqdm) -> tuple[list[np.ndarray], float]:
    """This core's phase-level path: Gram blocks accumulated per batch, one Cholesky read-out per phase."""
    d = feats.shape[1]
    y_all = jax.nn.one_hot(jnp.asarray(labels), classes, dtype=compute)
    stats = gram_init(d, classes, acc)
    snapshots = []
    t0 = time.perf_counter()
    for start in range(0, len(labels), batch):
        stats = gram_accumulate(stats, feats[start:start + batch], y_all[start:start + batch], None,
                                None if compute == acc else compute)
        if start + batch in phase_ends or start + batch >= len(labels):
            snapshots.append(np.asarray(ridge_solve(stats.xtx, stats.xty, gamma, warn_cond=np.inf)))
        progress.update(1)
    return snapshots, time.perf_counter() - t0


def core_rls_stream(feats: jax.Array, labels: np.ndarray, classes: int, gamma: float, batch: int,
                    phase_ends: set[int], progress: tqdm) -> tuple[list[np.ndarray], float]:
    """This core's online path: the jitted Woodbury step (W current after every batch)."""
    d = feats.shape[1]
    y_all = jax.nn.one_hot(jnp.asarray(labels), classes, dtype=feats.dtype)
    state = rls_init(d, classes, gamma, feats.dtype)
    snapshots = []
    t0 = time.perf_counter()
    for start in range(0, len(labels), batch):
        state = rls_step(state, feats[start:start + batch], y_all[start:start + batch])
        if start + batch in phase_ends or start + batch >= len(labels):
            snapshots.append(np.asarray(state.weight))
        progress.update(1)
    return snapshots, time.perf_counter() - t0


def stream_comparison(n: int, d: int, in_dim: int, classes: int, phases: int, batch: int,
                      gamma: float) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    labels = np.concatenate([rng.permutation(np.repeat(np.arange(p * classes // phases, (p + 1) * classes // phases),
                                                       n // classes)) for p in range(phases)])
    centers = rng.standard_normal((classes, in_dim))
    raw = centers[labels] + 0.8 * rng.standard_normal((len(labels), in_dim))
    buf = RandomBuffer(in_dim, d, "relu", seed=0, dtype=jnp.float64)
    feats64 = buf(jnp.asarray(raw))
    n = len(labels)
    phase_ends = {(p + 1) * n // phases for p in range(phases)}
    batches = -(-n // batch)
    results: dict[str, Any] = {"n": n, "d": d, "batch": batch, "classes": classes, "phases": phases,
                               "gamma": gamma}
    # Warm up every jitted program on a small prefix so compile time is not billed to either side.
    warm = {batch}
    core_gram_stream(feats64[:batch], labels[:batch], classes, gamma, batch, warm, jnp.float64, jnp.float64,
                     tqdm(disable=True))
    core_gram_stream(feats64[:batch].astype(jnp.float32), labels[:batch], classes, gamma, batch, warm,
                     jnp.float64, jnp.float32, tqdm(disable=True))
    core_rls_stream(feats64[:batch], labels[:batch], classes, gamma, batch, warm, tqdm(disable=True))
    feats_np = np.asarray(feats64)
    with tqdm(total=batches, desc=f"naive NumPy Woodbury d={d}", leave=False) as bar:
        ref, t_naive = naive_woodbury(feats_np, labels, classes, gamma, batch, phase_ends, bar)
    runs = {
        "core_gram_float64": lambda bar: core_gram_stream(feats64, labels, classes, gamma, batch, phase_ends,
                                                          jnp.float64, jnp.float64, bar),
        "core_gram_float32_blocks": lambda bar: core_gram_stream(feats64.astype(jnp.float32), labels, classes,
                                                                 gamma, batch, phase_ends, jnp.float64,
                                                                 jnp.float32, bar),
        "core_rls_float64": lambda bar: core_rls_stream(feats64, labels, classes, gamma, batch, phase_ends, bar),
    }
    results["naive_numpy_woodbury_s"] = t_naive
    for name, run in runs.items():
        with tqdm(total=batches, desc=f"{name} d={d}", leave=False) as bar:
            snaps, t = run(bar)
        diff = max(max_rel_diff(a, b) for a, b in zip(snaps, ref))
        results[name] = {"seconds": t, "speedup_vs_naive": t_naive / t, "max_rel_diff_W": diff}
    return results


def scaling_table(ns: list[int], ds: list[int], repeats: int) -> list[dict[str, Any]]:
    """Time to accumulate n rows (float32 blocks into float64, batch 1024) and solve once, for each (n, d)."""
    rows = []
    rng = np.random.default_rng(2)
    for d in ds:
        for n in tqdm(ns, desc=f"scaling d={d}", leave=False):
            x = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
            y = jax.nn.one_hot(jnp.asarray(rng.integers(0, 10, n)), 10, dtype=jnp.float32)
            rows.append({"n": n, "d": d, "seconds": best_time(partial(_accumulate_and_solve, x, y, min(n, 1024)),
                                                               repeats)})
    return rows


def plot_scaling(rows: list[dict[str, Any]], out: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for d in sorted({r["d"] for r in rows}):
        pts = [(r["n"], r["seconds"]) for r in rows if r["d"] == d]
        ax.loglog(*zip(*pts), marker="o", label=f"d = {d}")
    ax.set_xlabel("rows n")
    ax.set_ylabel("accumulate + solve time [s]")
    ax.set_title("analytic core: Gram accumulation + Cholesky read-out")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save_figure(fig, "core_scaling", out)


def main(argv: list[str]) -> dict[str, Any]:
    p = parser("core", __doc__)
    p.add_argument("--dims", type=int, nargs="*", help="buffer widths of the stream comparison")
    args = p.parse_args(argv)
    quick = args.quick
    repeats = 2 if quick else 5
    peak = {"float32": matmul_peak_flops(1024 if quick else 2048, "float32", repeats),
            "float64": matmul_peak_flops(1024 if quick else 2048, "float64", repeats)}
    throughput = [gram_throughput(n, d, repeats) for n, d in ([(4096, 512)] if quick else
                                                              [(4096, 1024), (16384, 2048)])]
    dims = args.dims or ([512, 1024] if quick else [2048, 8192])
    stream = [stream_comparison(n=10_000 if quick else 50_000, d=d, in_dim=256, classes=100, phases=25,
                                batch=256, gamma=1.0) for d in dims]
    scaling = scaling_table([1024, 4096, 16384] if quick else [1024, 4096, 16384, 65536],
                            [128, 512] if quick else [256, 1024, 2048], repeats=1 if quick else 2)
    figures = {"matmul_peak": peak, "gram_throughput": throughput, "stream": stream, "scaling": scaling}
    print("\nGram accumulation vs same-shape GEMM (fraction ≥ 0.8 is the goal) and vs NumPy x.T @ x (≥ 0.9)")
    print_table([{"n": r["n"], "d": r["d"], "path": k, "fraction_xla_gemm": v["fraction_of_xla_gemm"],
                  "fraction_numpy_gemm": v["fraction_of_numpy_gemm"], "GFLOP/s": v["gram_gflops"],
                  "vs_numpy_xtx": v["vs_numpy_xtx"], "xla_vs_numpy_xtx": v["xla_vs_numpy_xtx"]}
                 for r in throughput for k, v in r.items() if isinstance(v, dict)])
    print("\nStream: 25 phases, batch 256 -- core vs NumPy float64 per-batch-inverse Woodbury")
    print_table([{"d": s["d"], "n": s["n"], "naive_s": s["naive_numpy_woodbury_s"], "path": k,
                  "seconds": v["seconds"], "speedup": v["speedup_vs_naive"], "max_rel_diff_W": v["max_rel_diff_W"]}
                 for s in stream for k, v in s.items() if isinstance(v, dict)])
    print("\nTime vs n and d (accumulate + solve)")
    print_table(scaling)
    plot_scaling(scaling, args.out)
    write_results("core" + ("_quick" if quick else ""), figures, args.out)
    return figures
