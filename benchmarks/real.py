"""Real pretrained features: analytic continual and federated learning on Fashion-MNIST through EfficientNet-Lite0
(ImageNet-1k weights) and on the 45 WordNet supersenses through all-MiniLM-L6-v2, against their baselines.

``python -m benchmarks real [--quick] [--sections cil,fl,flower] [--fashion-train N] [--wordnet-per-class K]``
(``--render RECORD.json`` prints a record's tables as Markdown)

Data and encoders (all offline): Fashion-MNIST from Debian ``dataset-fashion-mnist`` (the first ``--fashion-train``
/ ``--fashion-test`` images of the official splits), bilinear-resized to 64×64 and encoded by the frozen
EfficientNet-Lite0 into its 1280-d pooled features; WordNet 3.0 synsets from Debian ``wordnet-base``, "lemma: gloss"
through MiniLM into 384-d sentence embeddings, labelled by lexicographer file (45 supersenses, naturally
imbalanced; at most ``--wordnet-per-class`` synsets per class, a seeded stratified cap), split 80/20 stratified.
Features are cached on disk (``continual.data.features``), keyed by encoder, data and preprocessing.

1. ``cil``: class-incremental streams -- Fashion-MNIST base 5 + 5 phases and 10 phases of one class, WordNet base
   25 + 20 phases -- and the Si-Blurry online stream (5 tasks, 50% disjoint, 10% blurry, batches of 32), for
   ACIL, DS-AL, GACL, F-OAL, AIR, joint ridge, SLDA, fine-tuning and replay: A_avg, A_last, forgetting, A_auc,
   and the class-balanced accuracy after the last phase (the metric AIR targets; AIR keeps its exact per-class
   Grams where they fit in :data:`AIR_FULL_BYTES`, and normalizes π to mean 1 as the authors' code does, so that
   the shared γ regularizes it as much as the others: without that, π_c = 1/n_c shrinks its Gram by ≈ n_c).
   **γ and buffer rule** (:func:`analytic.selection.select_gamma`): on the *base phase's training rows only*, an
   80/20 stratified split, the ReLU buffer the learners use, γ on every decade 1e-2 … 1e4 and the buffer widths
   of :data:`BUFFERS`; highest held-out accuracy, ties to the larger γ. The one-class-per-phase Fashion stream has
   no multi-class base phase; it reuses the choice made on the first five classes of the same class order
   (training rows only). Test data are never looked at before the final evaluation.
2. ``fl``: AFL (with RI and a global γ), AFL without RI, DeepAFL, FedAvg, FedProx and the centralized ridge on the
   same features for Dirichlet α ∈ {0.01, 0.1, 1} and IID, K ∈ {10, 100, 1000}; γ by the same rule on the raw
   features of the pooled training rows (AFL's result does not depend on the partition, so one γ serves every
   cell).
3. ``flower``: AFL through Flower's simulation engine (Ray) with 10 clients (Dirichlet α = 0.1) on the Fashion
   features: its weights against the in-process AFL and the centralized ridge.

The record ``real[_quick].json`` holds every row, the chosen γ tables, the published patterns with ours beside
them (:mod:`benchmarks._real_claims`) and the plots ``real[_quick]_continual.png`` / ``real[_quick]_federated.png``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks.common import max_rel_diff, parser, print_table, write_results

#: buffer widths the γ rule chooses among (the 1280-d image features need a buffer wider than 1280). Wider buffers
#: and all 60,000 Fashion-MNIST images (``--fashion-train 60000``) fit the method; on a 2-core CPU the online
#: Si-Blurry stream at 60,000 rows × 4096 (one recursion per 32 rows for DS-AL, GACL, AIR) takes about an hour.
BUFFERS = {"quick": (1024, 2048), "full": (1024, 2048)}
ONLINE_BATCH = 32
#: F-OAL's projection width, the paper's 1000 (768 -> 1000 for ViT-B/16): its recursion runs every 10 rows, and at
#: the ReLU buffers' 4096 each step moves the 4096² ``R`` several times (10 min per 60,000-row stream here).
FOAL_PROJECTION = 1000
#: memory allowed for AIR's per-class float64 Grams (the CI machine class has 24 GiB).
AIR_FULL_BYTES = 8e9


def load_features(args: Any) -> dict[str, dict[str, Any]]:
    """name -> {"split", "class_names", "protocols": [(label, base, phases)], "source"}."""
    from continual.data.features import fashion_mnist_features, wordnet_features

    out: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    fashion = fashion_mnist_features(size=64, train=args.fashion_train, test=args.fashion_test,
                                     cache_dir=args.cache)
    out["fashion-mnist/effnet-lite0"] = {
        "split": fashion, "class_names": None, "seconds": time.perf_counter() - t0,
        "protocols": [("CIL B5+5", 5, 5), ("CIL 10x1", 1, 9)],
        "source": f"Debian dataset-fashion-mnist, first {fashion.y_train.size}/{fashion.y_test.size} images, 64x64, "
                  "EfficientNet-Lite0 ImageNet pooled 1280-d"}
    t0 = time.perf_counter()
    wordnet, names = wordnet_features(max_per_class=args.wordnet_per_class, test_fraction=0.2, seed=0,
                                      cache_dir=args.cache)
    out["wordnet-45/minilm"] = {
        "split": wordnet, "class_names": names, "seconds": time.perf_counter() - t0,
        "protocols": [("CIL B25+20", 25, 20)],
        "source": f"Debian wordnet-base, <= {args.wordnet_per_class} synsets per supersense, 'lemma: gloss', "
                  "all-MiniLM-L6-v2 384-d"}
    return out


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over classes of the per-class recall (classes present in ``y``)."""
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def choose(x: np.ndarray, y: np.ndarray, buffers: tuple[int | None, ...]) -> dict[str, Any]:
    from analytic.selection import select_gamma

    result = select_gamma(x, y, buffer_sizes=buffers, seed=0, dtype=np.float64)
    return {"gamma": result.gamma, "buffer": result.buffer_size, "train_rows": result.train_rows,
            "validation_rows": result.validation_rows,
            "table": [{"buffer": b, "gamma": g, "val_accuracy": a} for b, g, a in result.table]}


def cil_section(data: dict[str, dict[str, Any]], quick: bool,
                only: list[str] | None = None) -> tuple[list[dict], dict, dict]:
    from benchmarks.continual import learners
    from continual.runner import run_protocol, state_bytes, summarize
    from continual.scenarios import class_incremental, si_blurry

    rows, curves, choices = [], {}, {}
    buffers = BUFFERS["quick" if quick else "full"]
    for name, item in data.items():
        split = item["split"]
        classes = split.classes
        chosen: dict[str, Any] | None = None
        runs = [(label, class_incremental(split.y_train, base, phases, seed=0), None)
                for label, base, phases in item["protocols"]]
        runs.append(("Si-Blurry", si_blurry(split.y_train, tasks=5, disjoint_ratio=0.5, blurry_ratio=0.1, seed=0),
                     ONLINE_BATCH))
        for label, phases, batch in runs:
            base = phases[0].indices
            if len(np.unique(split.y_train[base])) >= 2:
                chosen = choose(split.x_train[base], split.y_train[base], buffers)
                chosen["rule"] = f"select_gamma on the {label} base phase's {base.size} training rows"
            elif chosen is None:
                raise ValueError(f"{name}: the first protocol needs a base phase of two or more classes")
            else:
                chosen = dict(chosen, rule=chosen["rule"] + f" (reused for {label})")
            choices[f"{name} {label}"] = chosen
            replay = max(100, split.y_train.size // 10)
            # AIR's exact class-balanced statistics (one d×d Gram per class) wherever they fit in AIR_FULL_BYTES;
            # the diagonal approximation otherwise (recorded in the row).
            air = "full" if classes * chosen["buffer"] ** 2 * 8 <= AIR_FULL_BYTES else "diagonal"
            makers = learners(chosen["buffer"], classes, replay, gamma=chosen["gamma"], air_statistics=air,
                              air_normalize=True, foal_projection=FOAL_PROJECTION)
            if only:
                makers = {k: v for k, v in makers.items() if k in only or k.split()[0] in only}
            for learner_name, make in tqdm(makers.items(), desc=f"{name} {label}"):
                learner = make()
                t0 = time.perf_counter()
                kw = {} if batch is None else {"batch_size": batch,
                                               "eval_every": max(batch, split.y_train.size // 20)}
                result = run_protocol(learner, *split, phases, classes=classes, **kw)
                pred = np.asarray(learner.predict(split.x_test))
                rows.append({"dataset": name, "scenario": label, "learner": learner_name, **summarize(result),
                             "balanced_last": 100 * balanced_accuracy(split.y_test, pred),
                             "gamma": chosen["gamma"], "buffer": chosen["buffer"],
                             **({"air_statistics": air} if learner_name == "AIR" else {}),
                             "fit_s": result.fit_seconds, "wall_s": time.perf_counter() - t0,
                             "state_MB": state_bytes(learner) / 1e6})
                if batch is None:
                    curves.setdefault(f"{name} {label}", {})[learner_name] = result.seen_accuracy.tolist()
                else:
                    curves.setdefault(f"{name} {label}", {})[learner_name] = {
                        "samples": result.anytime_samples.tolist(), "accuracy": result.anytime_accuracy.tolist()}
    return rows, curves, choices


def fl_section(data: dict[str, dict[str, Any]], quick: bool, clients: list[int]) -> tuple[list[dict], dict, dict]:
    from benchmarks.federated import accuracy_grid

    arrays = {name: tuple(item["split"]) for name, item in data.items()}
    choices = {name: choose(item["split"].x_train, item["split"].y_train, (None,)) for name, item in data.items()}
    for choice in choices.values():
        choice["rule"] = "select_gamma on the pooled training rows (raw features)"
    deep_kw = (dict(phi_dim=256, block_dim=256, layers=5, dtype=np.float32) if quick
               else dict(phi_dim=512, block_dim=512, layers=10, dtype=np.float32))
    fed_kw = dict(rounds=10 if quick else 30, local_epochs=2, batch_size=32, lr=0.1)
    rows, checks = accuracy_grid(arrays, clients, quick, deep_kw, fed_kw,
                                 gamma={name: c["gamma"] for name, c in choices.items()})
    settings = {"deepafl": {k: str(v) for k, v in deep_kw.items()}, "fedavg": fed_kw, "fedprox_mu": 0.01,
                "client_fraction": "max(0.1, 10/K)"}
    return rows, {"deepafl_federated_vs_pooled": checks, "settings": settings}, choices


def flower_section(item: dict[str, Any], gamma: float, out_dir: Any, clients: int = 10) -> dict[str, Any]:
    """AFL through Flower's simulation engine on a feature file, against in-process AFL and the pooled ridge."""
    import json
    import tempfile
    from pathlib import Path

    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from continual.data import save_feature_file
    from federated import afl
    from federated.flower import client_app, server_app, task

    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        path = save_feature_file(Path(tmp) / "features.npz", item["split"])
        config = task.resolve_config({}, {
            "method": "afl", "dataset": "features", "features-file": str(path), "num-partitions": clients,
            "min-clients": clients, "alpha": 0.1, "min-size": 5, "gamma": gamma, "global-gamma": gamma,
            "connect-timeout": 300.0, "round-timeout": 600.0, "output-dir": str(Path(tmp) / "afl")})
        server = ServerApp()

        @server.main()
        def main(grid: Any, context: Any) -> None:
            server_app.run(grid, config)

        t0 = time.perf_counter()
        run_simulation(server, client_app.app, num_supernodes=clients, backend_config={
            "client_resources": {"num_cpus": 1},
            "init_args": {"num_cpus": 2, "logging_level": "error", "log_to_driver": False}})
        seconds = time.perf_counter() - t0
        report = json.loads((Path(tmp) / "afl" / "result.json").read_text())
        with np.load(Path(tmp) / "afl" / "result.npz") as arrays:
            weight = np.asarray(arrays["weight"], np.float64)
        split = task.load_split(config)
        parts = task.partition_indices(split.y_train, config, clients)
    uploads = [afl.client_stats(split.x_train[p], split.y_train[p], gamma, split.classes, client_id=k,
                                dtype=np.float32) for k, p in enumerate(parts)]
    reference = np.asarray(afl.aggregate(uploads, dim=split.x_train.shape[1], classes=split.classes,
                                         global_gamma=gamma).weight, np.float64)
    x = split.x_train.astype(np.float64)
    pooled = np.linalg.solve(x.T @ x + gamma * np.eye(x.shape[1]), x.T @ np.eye(split.classes)[split.y_train])

    return {"clients": clients, "alpha": 0.1, "gamma": gamma, "seconds": seconds,
            "merged_partitions": len(report["merged_partitions"]), "rows": report["count"],
            "test_accuracy": report["test_accuracy"],
            "pooled_test_accuracy": float(np.mean(np.argmax(split.x_test @ pooled, 1) == split.y_test)),
            "max_rel_diff_vs_in_process_afl": max_rel_diff(weight, reference),
            "max_rel_diff_vs_pooled_ridge": max_rel_diff(weight, pooled),
            "client_sizes": [int(len(p)) for p in parts]}


def main(argv: list[str]) -> dict:
    p = parser("real", __doc__.splitlines()[0])
    p.add_argument("--render", default=None, help="print the Markdown tables of a record (real.json) and exit")
    p.add_argument("--sections", default="cil,fl,flower", help="comma-separated subset of cil,fl,flower")
    p.add_argument("--fashion-train", type=int, default=None, help="first N training images (default 30000 of "
                   "60000; --quick 6000)")
    p.add_argument("--fashion-test", type=int, default=None, help="first M test images (default 10000; --quick 2000)")
    p.add_argument("--wordnet-per-class", type=int, default=None,
                   help="cap on synsets per supersense (default 600; --quick 150)")
    p.add_argument("--clients", default=None, help="comma-separated client counts of the FL grid (default 10,100,1000;"
                   " --quick 10,100)")
    p.add_argument("--learners", default=None, help="comma-separated subset of the continual learners (default all: "
                   "ACIL,DS-AL,GACL,F-OAL,AIR,joint ridge,SLDA,fine-tune,replay)")
    p.add_argument("--cache", default=None, help="feature cache folder (default $ANALYTIC_CACHE or "
                   "~/.cache/analytic-learning/features)")
    args = p.parse_args(argv)
    if args.render:
        import json
        from pathlib import Path

        from benchmarks._real_report import markdown

        record = json.loads(Path(args.render).read_text())
        print(markdown(record))
        return record
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if unknown := set(sections) - {"cil", "fl", "flower"}:
        p.error(f"unknown sections {sorted(unknown)}")
    import jax

    from benchmarks import _real_claims
    from benchmarks.continual import plot_curves
    from benchmarks.federated import plot

    jax.config.update("jax_enable_x64", True)
    quick = args.quick
    args.fashion_train = args.fashion_train or (6000 if quick else 30000)
    args.fashion_test = args.fashion_test or (2000 if quick else 10000)
    args.wordnet_per_class = args.wordnet_per_class or (150 if quick else 600)
    clients = [int(k) for k in args.clients.split(",")] if args.clients else [10, 100] if quick else [10, 100, 1000]
    name = "real_quick" if quick else "real"
    if sections != ["cil", "fl", "flower"]:
        name += "_" + "_".join(sections)
    data = load_features(args)
    figures: dict[str, Any] = {"quick": quick, "sections": sections, "data": {
        k: {"source": v["source"], "train": int(v["split"].y_train.size), "test": int(v["split"].y_test.size),
            "dim": int(v["split"].x_train.shape[1]), "classes": v["split"].classes,
            "train_per_class_min_max": [int(np.bincount(v["split"].y_train).min()),
                                        int(np.bincount(v["split"].y_train).max())],
            "feature_seconds": v["seconds"]} for k, v in data.items()}}
    if "cil" in sections:
        only = [s.strip() for s in args.learners.split(",")] if args.learners else None
        rows, curves, choices = cil_section(data, quick, only)
        print_table(rows, ["dataset", "scenario", "learner", "A_avg", "A_last", "forgetting", "A_auc",
                           "balanced_last", "fit_s"], floatfmt="{:.2f}")
        figures |= {"cil": rows, "cil_gamma": choices, "curves": curves,
                    "cil_plot": plot_curves(curves, args.out, name + "_continual")}
    if "fl" in sections:
        rows, extra, choices = fl_section(data, quick, clients)
        print_table(rows, ["data", "clients", "alpha", "centralized", "AFL", "AFL (no RI)", "DeepAFL", "FedAvg",
                           "FedProx"], floatfmt="{:.3f}")
        plot(rows, clients, args.out, name + "_federated")
        figures |= {"fl": rows, "fl_gamma": choices, **extra}
    if "flower" in sections:
        fashion = next(iter(data))
        gamma = figures.get("fl_gamma", {}).get(fashion, {}).get("gamma")
        if gamma is None:
            gamma = choose(data[fashion]["split"].x_train, data[fashion]["split"].y_train, (None,))["gamma"]
        figures["flower"] = flower_section(data[fashion], gamma, args.out)
        print_table([{k: v for k, v in figures["flower"].items() if k != "client_sizes"}], floatfmt="{:.3g}")
    figures["claims"] = _real_claims.evaluate(figures)
    print_table(figures["claims"], ["claim", "published", "ours", "holds"])
    path = write_results(name, figures, args.out)
    print(f"wrote {path}")
    return figures
