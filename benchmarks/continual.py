"""Continual-learning benchmark: every analytic learner and baseline on three feature sets, plus the speed of the
core's recursive head against a plain NumPy per-batch-inverse Woodbury recursion at buffer 8192.

``python -m benchmarks continual [--quick] [--features FILE.npz]``

1. Class-incremental (base half of the classes, the rest in phases: 5 for digits/MNIST-1D, 25 for the synthetic
   100-class set, as the CIFAR-100 "B50 25 phases" protocol): A_avg, A_last, forgetting, fit time, state bytes.
2. Si-Blurry (5 tasks, 50% disjoint classes, 10% blurry samples; online batches of 32, every learner sees each
   sample once; F-OAL still updates per 10 rows inside a batch): A_auc (20 samples of the anytime accuracy),
   A_avg, A_last.
3. Speed: ACIL's head (``analytic.rls_update`` per phase) vs NumPy float64 Woodbury with ``np.linalg.inv`` per
   mini-batch of 256 (the repository's default IL batch size) on a base + 25-phase synthetic stream; ratio and
   max relative W difference. NumPy runs twice: with ``R Xᵀ`` reused (the cheapest association) over the whole
   stream, and as the authors' code writes it (``R @ X.T @ K @ X @ R`` evaluated left to right, an extra
   ``2d³`` per batch), timed on its first batch(es) and extrapolated (labelled as such).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks.common import max_rel_diff, parser, print_table, save_figure, write_results

GAMMA = 1.0
ONLINE_BATCH = 32


def learners(buffer: int, classes: int, replay: int, gamma: float = GAMMA,
             air_statistics: str | None = None, air_normalize: bool = False,
             foal_projection: int | None = None) -> dict[str, Any]:
    """name -> factory of every learner the continual benchmarks compare (one γ for every analytic head).

    air_statistics: AIR's ``statistics`` option; by default ``"full"`` up to 20 classes, ``"diagonal"`` above.
    air_normalize: AIR's ``normalize`` (π scaled to mean 1, as the authors' code does); with it AIR's weighted Gram
    has the scale of the plain Gram, so the shared γ means the same for AIR as for the others.
    foal_projection: F-OAL's sigmoid projection width (default: ``buffer``).
    """
    from continual import ACIL, AIR, DSAL, FOAL, GACL
    from continual.baselines import SLDA, FineTune, JointRidge
    from continual.runner import FeaturesAsOneBlock

    return {
        "ACIL": lambda: ACIL(gamma, buffer_size=buffer),
        "DS-AL": lambda: DSAL(gamma, gamma, compensation_ratio=0.6, buffer_size=buffer),
        "GACL": lambda: GACL(gamma, buffer_size=buffer),
        "F-OAL": lambda: FeaturesAsOneBlock(FOAL(gamma, projection_dim=foal_projection or buffer,
                                                           batch_size=10)),
        # Full per-class Grams cost c·d² memory and c·d²·b flops per batch: on many classes AIR keeps the diagonal
        # statistics (O(d² + c·d)) instead.
        "AIR": lambda: AIR(gamma, buffer_size=buffer, normalize=air_normalize, statistics=air_statistics or (
            "full" if classes <= 20 else "diagonal")),
        "joint ridge": lambda: JointRidge(gamma, buffer_size=buffer),
        "SLDA": lambda: SLDA(1e-4),
        "fine-tune": lambda: FineTune(hidden=0, epochs=5, seed=0),
        f"replay {replay}": lambda: FineTune(hidden=0, epochs=5, replay=replay, seed=0),
    }


def _datasets(quick: bool, features: Path | None) -> dict[str, tuple[Any, int, int, int]]:
    """name -> (feature Split, base classes, phases, buffer size)."""
    from continual.data import (
        frozen_backbone_features,
        load_digits,
        load_feature_file,
        load_mnist1d,
        synthetic_features,
    )
    from continual.scenarios import class_incremental

    out: dict[str, tuple[Any, int, int, int]] = {}
    if features is not None:
        split = load_feature_file(features)
        classes = split.classes
        out[features.stem] = (split, classes // 2, min(25, classes - classes // 2), 512 if quick else 8192)
        return out
    buffer = 512 if quick else 1024
    for name, loader, arch in (("digits", load_digits, "mlp"),
                               ("mnist1d", lambda: load_mnist1d(2000 if quick else 4000), "conv1d")):
        split = loader()
        base = class_incremental(split.y_train, 5, 5, seed=0)[0].seen_classes
        out[name] = (frozen_backbone_features(split, base, arch=arch, feature_dim=64 if quick else 128,
                                              epochs=15 if quick else 30), 5, 5, buffer)
        if quick:
            break
    # A ReLU buffer narrower than its input loses information: the 768-d set gets a buffer wider than 768.
    out["synthetic-100"] = (synthetic_features(100, 768, 20 if quick else 40, 10 if quick else 20, seed=0), 50, 25,
                            1024 if quick else 2048)
    return out


def _protocols(datasets: dict, quick: bool) -> tuple[list[dict], dict]:
    from continual.runner import run_protocol, state_bytes, summarize
    from continual.scenarios import class_incremental, si_blurry

    rows, curves = [], {}
    for name, (split, base, phases, buffer) in datasets.items():
        classes = split.classes
        ci = class_incremental(split.y_train, base, phases, seed=0)
        blurry = si_blurry(split.y_train, tasks=5, disjoint_ratio=0.5, blurry_ratio=0.1, seed=0)
        replay = max(100, split.y_train.size // 10)
        makers = learners(buffer, classes, replay)
        for learner_name, make in tqdm(makers.items(), desc=name):
            learner = make()
            t0 = time.perf_counter()
            result = run_protocol(learner, *split, ci, classes=classes)
            wall = time.perf_counter() - t0
            row = {"dataset": name, "scenario": f"CIL B{base}+{phases}", "learner": learner_name,
                   **summarize(result), "fit_s": result.fit_seconds, "wall_s": wall,
                   "state_MB": state_bytes(learner) / 1e6}
            rows.append(row)
            curves.setdefault(name, {})[learner_name] = result.seen_accuracy.tolist()
            online = run_protocol(make(), *split, blurry, batch_size=ONLINE_BATCH,
                                  eval_every=max(ONLINE_BATCH, split.y_train.size // 20),
                                  classes=classes)
            rows.append({"dataset": name, "scenario": "Si-Blurry", "learner": learner_name, **summarize(online),
                         "fit_s": online.fit_seconds})
            curves.setdefault(f"{name} Si-Blurry", {})[learner_name] = {
                "samples": online.anytime_samples.tolist(), "accuracy": online.anytime_accuracy.tolist()}
    return rows, curves


# -- speed: core head vs NumPy Woodbury ---------------------------------------------------------------------------
def numpy_woodbury(phases: list[tuple[np.ndarray, np.ndarray]], dim: int, classes: int, gamma: float,
                   batch_size: int, literal: bool, max_batches: int | None = None) -> tuple[np.ndarray, int]:
    """Float64 Woodbury recursion with ``np.linalg.inv`` per mini-batch (ACIL eqs. 9-10, as in the authors' code).

    literal: evaluate ``R @ X.T @ K @ X @ R`` left to right as written there (``2d³`` per batch); otherwise reuse
    ``R Xᵀ``. Returns ``(W, batches run)``; ``max_batches`` stops early (for timing the literal form).
    """
    r = np.eye(dim) / gamma
    w = np.zeros((dim, classes))
    done = 0
    for x, y in phases:
        for start in range(0, len(y), batch_size):
            if max_batches is not None and done >= max_batches:
                return w, done
            xb, yb = x[start:start + batch_size], np.eye(classes)[y[start:start + batch_size]]
            k = np.linalg.inv(np.eye(len(xb)) + xb @ r @ xb.T)
            if literal:
                r -= r @ xb.T @ k @ xb @ r
            else:
                rxt = r @ xb.T
                r -= (rxt @ k) @ rxt.T
            w += r @ xb.T @ (yb - xb @ w)
            done += 1
    return w, done


def _speed(quick: bool) -> dict[str, Any]:
    import jax

    from continual import ACIL, acil
    from continual.data import synthetic_features
    from continual.scenarios import class_incremental

    buffer, per_class, batch = (2048, 12, 256) if quick else (8192, 24, 256)
    split = synthetic_features(100, 768, per_class, 1, seed=1, dtype=np.float64)
    phases = class_incremental(split.y_train, 50, 25, seed=0)
    stream = [(split.x_train[p.indices], split.y_train[p.indices]) for p in phases]
    gamma, classes = 0.1, 100
    weight = np.asarray(acil.init(768, 0, gamma, buffer_size=buffer, buffer_init="torch_linear", seed=0,
                                  dtype=np.float64).buffer.weight)

    def run_core(dtype: Any) -> tuple[np.ndarray, float]:
        learner = ACIL(gamma, buffer_size=buffer, buffer_init="torch_linear", seed=0, dtype=dtype)
        t0 = time.perf_counter()
        for x, y in stream:
            learner.partial_fit(x.astype(dtype), y, classes=classes)
        w = jax.block_until_ready(learner.state.head.weight)
        return np.asarray(w, np.float64), time.perf_counter() - t0

    def buffered() -> list[tuple[np.ndarray, np.ndarray]]:
        return [(np.maximum(x @ weight, 0.0), y) for x, y in stream]

    # One run each, compilation included (two programs per dtype: the base-phase and the phase row bucket; seconds
    # against minutes of arithmetic at buffer 8192). --quick warms up first because there compilation would dominate.
    if quick:
        run_core(np.float64)
        run_core(np.float32)
    w_core, t_core = run_core(np.float64)
    w_core32, t_core32 = run_core(np.float32)
    t0 = time.perf_counter()
    w_np, batches = numpy_woodbury(buffered(), buffer, classes, gamma, batch, literal=False)
    t_np = time.perf_counter() - t0
    literal_batches = batches if quick else 1
    t0 = time.perf_counter()
    w_lit, done = numpy_woodbury(buffered(), buffer, classes, gamma, batch, literal=True, max_batches=literal_batches)
    t_lit = (time.perf_counter() - t0) * batches / done

    out = {
        "buffer": buffer, "rows": int(split.y_train.size), "phases": len(phases), "numpy_batch_size": batch,
        "numpy_batches": batches, "core_float64_s": t_core, "core_float32_s": t_core32,
        "numpy_reassociated_s": t_np, "numpy_literal_s": t_lit,
        "numpy_literal_extrapolated_from_batches": done,
        "speedup_float64_vs_numpy_reassociated": t_np / t_core,
        "speedup_float32_vs_numpy_reassociated": t_np / t_core32,
        "speedup_float64_vs_numpy_literal": t_lit / t_core,
        "max_rel_w_diff_float64": max_rel_diff(w_core, w_np),
        "max_rel_w_diff_float32": max_rel_diff(w_core32, w_np),
    }
    if done == batches:
        out["max_rel_w_diff_literal_vs_reassociated"] = max_rel_diff(w_lit, w_np)
    return out


def plot_curves(curves: dict, out: Path, filename: str = "continual") -> Path:
    """One panel per stream: accuracy on the classes seen so far, per phase (CIL) or per stream sample (online)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), squeeze=False)
    for ax, (name, per_learner) in zip(axes[0], curves.items()):
        for learner, curve in per_learner.items():
            if isinstance(curve, dict):
                ax.plot(curve["samples"], 100 * np.asarray(curve["accuracy"]), label=learner, lw=1.2)
                ax.set_xlabel("stream samples")
            else:
                ax.plot(range(len(curve)), 100 * np.asarray(curve), marker="o", ms=3, label=learner, lw=1.2)
                ax.set_xlabel("phase")
        ax.set_title(name)
        ax.set_ylabel("accuracy on seen classes (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = save_figure(fig, filename, out)
    plt.close(fig)
    return path


def main(argv: list[str]) -> dict:
    p = parser("continual", __doc__.splitlines()[0])
    p.add_argument("--features", type=Path, default=None,
                   help=".npz feature file (x_train, y_train, x_test, y_test), e.g. CIFAR-100 ViT features")
    p.add_argument("--skip-speed", action="store_true", help="only the accuracy tables")
    p.add_argument("--speed-only", action="store_true", help="only the Woodbury speed comparison, written to "
                   "continual_speed.json")
    args = p.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    if args.speed_only:
        speed = _speed(args.quick)
        print_table([speed], list(speed), floatfmt="{:.3g}")
        write_results("continual_speed", {"speed": speed}, args.out)
        return {"speed": speed}
    datasets = _datasets(args.quick, args.features)
    rows, curves = _protocols(datasets, args.quick)
    cols = ["dataset", "scenario", "learner", "A_avg", "A_last", "forgetting", "A_auc", "fit_s", "state_MB"]
    print_table(rows, cols, floatfmt="{:.2f}")
    figures: dict[str, Any] = {"gamma": GAMMA, "rows": rows, "curves": curves}
    if not args.skip_speed:
        figures["speed"] = _speed(args.quick)
        print_table([figures["speed"]], list(figures["speed"]), floatfmt="{:.3g}")
    figures["plot"] = plot_curves(curves, args.out)
    write_results("continual", figures, args.out)
    return figures
