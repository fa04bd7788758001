"""``python -m benchmarks quickstart``: a small real class-incremental reproduction on offline data.

The ACIL protocol (Zhuang et al., NeurIPS 2022) on scikit-learn's ``digits``: a small MLP backbone is trained
with optax on the 5 base classes only and frozen; the remaining 5 classes arrive one per phase. Analytic learners
(ACIL, DS-AL) are compared with their joint upper bound (ridge on the same buffer over all data seen) and with
gradient fine-tuning of a linear head (which forgets) and with replay. Prints A_avg / A_last / forgetting and
writes ``benchmarks/results/quickstart.json`` and ``quickstart.png`` (accuracy on seen classes after each phase).
Runs in about a minute on a laptop CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import parser, print_table, save_figure, write_results


def main(argv: list[str]) -> dict[str, Any]:
    p = parser("quickstart", __doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--buffer", type=int, default=2048, help="random buffer width of the analytic learners")
    args = p.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    from continual import ACIL, DSAL
    from continual.baselines import FineTune, JointRidge
    from continual.data.backbone import frozen_backbone_features
    from continual.data.datasets import load_digits
    from continual.runner import run_protocol, summarize
    from continual.scenarios import class_incremental

    split = load_digits(seed=args.seed)
    phases = class_incremental(split.y_train, base_classes=5, phases=5, seed=args.seed)
    base = phases[0].seen_classes
    print(f"digits: {len(split.y_train)} train / {len(split.y_test)} test; base classes {base.tolist()}, "
          f"then one new class per phase")
    feats = frozen_backbone_features(split, base, arch="mlp", feature_dim=64, epochs=30, seed=args.seed,
                                     progress=True)
    learners = {
        "ACIL": ACIL(gamma=0.1, buffer_size=args.buffer, seed=args.seed),
        "DS-AL": DSAL(gamma_main=0.1, gamma_comp=0.1, compensation_ratio=0.6, buffer_size=args.buffer,
                      seed=args.seed),
        "joint ridge (upper bound)": JointRidge(gamma=0.1, buffer_size=args.buffer, seed=args.seed),
        "fine-tune linear head (SGD)": FineTune(epochs=5, seed=args.seed),
        "fine-tune + replay 200": FineTune(epochs=5, replay=200, seed=args.seed),
    }
    rows, curves = [], {}
    for name, learner in learners.items():
        res = run_protocol(learner, feats.x_train, feats.y_train, feats.x_test, feats.y_test, phases)
        summary = summarize(res)
        rows.append({"learner": name, **summary, "fit_s": res.fit_seconds})
        curves[name] = (100 * np.asarray(res.seen_accuracy)).tolist()
    print()
    print_table(rows, ["learner", "A_avg", "A_last", "forgetting", "fit_s"], floatfmt="{:.2f}")
    acil = next(r for r in rows if r["learner"] == "ACIL")
    joint = next(r for r in rows if r["learner"].startswith("joint"))
    print(f"\nACIL A_last {acil['A_last']:.2f} vs joint upper bound {joint['A_last']:.2f}: ACIL's head equals joint "
          "ridge on all data seen (absolute memorization), so the two coincide up to floating point.")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(range(len(curve)), curve, marker="o", label=name)
    ax.set_xlabel("phase (0 = base, 5 classes)")
    ax.set_ylabel("accuracy on seen classes [%]")
    ax.set_title("digits, class-incremental: analytic vs gradient learners")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    png = save_figure(fig, "quickstart", args.out)
    figures = {"dataset": "sklearn digits", "protocol": "base 5 classes + 5 phases of 1 class",
               "buffer": args.buffer, "seed": args.seed, "table": rows, "seen_accuracy_per_phase": curves}
    path = write_results("quickstart", figures, args.out)
    print(f"\nwrote {path} and {png}")
    return figures
