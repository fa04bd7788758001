"""PAGE on SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (real weights, offline tasks): where each variant puts the
dominant module, how often the variants agree with the paper's (the default), and what the probe and a LoRA step
cost, next to torch + PEFT on the same configuration when those are installed.

Zhang et al., 2026 (arXiv 2605.06183). For each task family (instruction, arithmetic, code, dialogue) PAGE is
measured in every variant on a few probe batches, with several probe seeds (other examples, other ``A`` draws),
and drawn as a layers x modules heatmap; the dominant module is compared across tasks and seeds. Fine-tuning by
placement (DomLoRA against all-linear and the other placements) is ``python -m benchmarks placement``. The second
model family, an encoder with a closed-form head on WordNet supersenses, is ``benchmarks/_page_encoder.py``.

``python -m benchmarks page [--quick]``: results in ``benchmarks/results/page[_quick].json``, ``page*_heatmap_*.png``
and per-task PAGE tables ``page*_scores_<task>.csv``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from benchmarks.common import best_time, parser, print_table, write_results
from peft_probe.lora import ALL_LINEAR, LoraConfig, inject_lora, linear_modules
from peft_probe.page import (
    DEFAULT_VARIANT,
    VARIANTS,
    page_scores_all,
    plot_page_heatmap,
    variant_agreement,
)
from peft_probe.tasks import FAMILIES, make_batches, make_task
from peft_probe.training import (
    ScannedLoraTrainer,
    default_optimizer,
    train_step,
)


def _probe_cost(model: nnx.Module, batch: dict[str, np.ndarray], config: LoraConfig, repeats: int,
                torch_repeats: int) -> dict[str, Any]:
    """Seconds of the PAGE probe (all variants, and the default alone) and of one all-linear LoRA training step,
    scanned (``ScannedLoraTrainer``, what ``finetune`` runs) and unrolled (``train_step``), first calls apart;
    side by side with torch + PEFT on the same weights, batch and LoRA config when those are installed."""
    from benchmarks import _torch_peft

    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    out: dict[str, Any] = {"batch_shape": list(batch["input_ids"].shape), "rank": config.r}
    for key, variants in (("probe_all_variants", VARIANTS), ("probe_default_variant", (DEFAULT_VARIANT,))):
        t0 = time.perf_counter()
        page_scores_all(model, [batch], config, variants)
        out[f"{key}_first_call_s"] = time.perf_counter() - t0
        out[f"{key}_s"] = best_time(lambda v=variants: page_scores_all(model, [batch], config, v), repeats)
    scanned = nnx.clone(model)
    inject_lora(scanned, config, 0)
    trainer = ScannedLoraTrainer(scanned, default_optimizer(steps=100))
    t0 = time.perf_counter()
    jax.block_until_ready(trainer.step(jb))
    out["lora_step_first_call_s"] = time.perf_counter() - t0
    out["lora_step_s"] = best_time(lambda: jax.block_until_ready(trainer.step(jb)), repeats)
    unrolled = nnx.clone(model)
    inject_lora(unrolled, config, 0)
    opt = nnx.Optimizer(unrolled, default_optimizer(steps=100), wrt=nnx.LoRAParam)
    t0 = time.perf_counter()
    jax.block_until_ready(train_step(unrolled, opt, jb))
    out["unrolled_lora_step_first_call_s"] = time.perf_counter() - t0
    out["unrolled_lora_step_s"] = best_time(lambda: jax.block_until_ready(train_step(unrolled, opt, jb)), repeats)
    for key in ("probe_all_variants", "probe_default_variant"):
        out[f"{key}_over_lora_step"] = out[f"{key}_s"] / out["lora_step_s"]
    # the first call = tracing + XLA compilation + one step
    for key in ("lora_step", "unrolled_lora_step"):
        out[f"{key}_compile_s"] = out[f"{key}_first_call_s"] - out[f"{key}_s"]
    missing = _torch_peft.available()
    if missing or not torch_repeats:
        out["torch_peft"] = {"skipped": missing or "--torch-repeats 0"}
        return out
    theirs = _torch_peft.torch_lora_step(model, config.target_modules, config.r, config.scale * config.r)
    fresh = nnx.clone(model)  # untrained adapters (B = 0), so the first losses must agree
    inject_lora(fresh, config, 0)
    ours = ScannedLoraTrainer(fresh, default_optimizer(steps=100))
    out["torch_peft"] = _torch_peft.side_by_side(lambda: float(ours.step(jb)), lambda: theirs(batch), torch_repeats)
    return out


def _module_label(row: Any) -> str:
    return f"layer {row.layer} {row.module}"


def main(argv: list[str]) -> dict:
    p = parser("page", __doc__.split("\n")[0])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--probe-seeds", type=int, default=3,
                   help="PAGE probes per task (other probe examples and A draws) for the variants' agreement")
    p.add_argument("--torch-repeats", type=int, default=5,
                   help="side-by-side steps against torch + PEFT when installed (0: skip)")
    p.add_argument("--no-encoder", action="store_true", help="skip PAGE on the MiniLM encoder (WordNet)")
    p.add_argument("--tag", default="", help="suffix of the result names (keeps several runs side by side)")
    args = p.parse_args(argv)
    quick = args.quick
    max_len, batch_size = 64, (4 if quick else 8)
    probe_batches = 1 if quick else 4
    name = ("page_quick" if quick else "page") + (f"_{args.tag}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    from peft_probe.tokenizer import gguf_tokenizer
    from peft_probe.weights import load_gguf

    config, base = load_gguf()
    tokenizer = gguf_tokenizer()
    pad = tokenizer.pad_token_id or 0
    probe_config = LoraConfig(r=args.rank, alpha=args.alpha, target_modules=ALL_LINEAR)
    probe_rows = probe_batches * batch_size
    tasks = {f: make_task(f, n_train=args.probe_seeds * probe_rows, n_eval=0, seed=0) for f in FAMILIES}

    # ---- PAGE per task and probe seed, every variant (one backward per batch shared by the batch-gradient
    # variants, one vmapped per-example pass for the default); seed s probes other examples and draws other A
    page: dict[str, dict[str, Any]] = {}
    tables: dict[str, Any] = {}
    probes: list[dict[str, Any]] = []
    for family, task in tqdm(tasks.items(), desc="PAGE per task"):
        for seed in range(args.probe_seeds):
            examples = task.train[seed * probe_rows:(seed + 1) * probe_rows]
            probe = make_batches(examples, tokenizer, batch_size, max_len, pad)
            t0 = time.perf_counter()
            table = page_scores_all(base, probe, probe_config, VARIANTS, seed=seed)
            seconds = time.perf_counter() - t0
            probes.append(table)
            if seed:
                page[family]["seeds_dominant"].append({v: _module_label(s.rows[0]) for v, s in table.items()})
                continue
            tables[family] = table
            (args.out / f"{name}_scores_{family}.csv").write_text(
                "".join(t.to_csv() if i == 0 else t.to_csv().split("\n", 1)[1] for i, t in enumerate(table.values())))
            for variant, scores in table.items():
                plot_page_heatmap(scores, args.out / f"{name}_heatmap_{family}_{variant}.png",
                                  title=f"PAGE ({variant}) on {family}, SmolLM2-135M")
            page[family] = {"seconds_all_variants": seconds, "top5": {
                v: [r._asdict() for r in s.top(5)] for v, s in table.items()},
                "seeds_dominant": [{v: _module_label(s.rows[0]) for v, s in table.items()}]}
    agreement = variant_agreement(probes, DEFAULT_VARIANT, k=5)
    consistency = {}
    for variant in VARIANTS:
        dominant = {f: _module_label(tables[f][variant].rows[0]) for f in FAMILIES}
        top_down = {f: next(r.layer for r in tables[f][variant].rows if r.module == "down_proj") for f in FAMILIES}
        over_seeds = [d[variant] for f in FAMILIES for d in page[f]["seeds_dominant"]]
        consistency[variant] = {"dominant": dominant, "same_across_tasks": len(set(dominant.values())) == 1,
                                "most_common_over_tasks_and_seeds": max(set(over_seeds), key=over_seeds.count),
                                "most_common_count": max(over_seeds.count(x) for x in set(over_seeds)),
                                "probes": len(over_seeds), "top_down_proj_layer": top_down,
                                "top_share": {f: tables[f][variant].rows[0].share for f in FAMILIES}}
    print_table([{"variant": v, **c["dominant"], "same": c["same_across_tasks"],
                  "agrees_with_default_top1": agreement[v]["top1"]} for v, c in consistency.items()])

    # ---- probe cost vs one LoRA training step (same batch)
    # (4 x 128 tokens: the configuration of the torch + PEFT comparison in the issue)
    cost_batch = make_batches(tasks[FAMILIES[0]].train[:4], tokenizer, 4, 128, pad)[0]
    cost = _probe_cost(base, cost_batch, probe_config, repeats=3, torch_repeats=args.torch_repeats)
    print(json.dumps(cost, indent=1), flush=True)

    encoder = None
    if not args.no_encoder:
        from benchmarks._page_encoder import encoder_page

        encoder = encoder_page(args.probe_seeds, quick, args.rank, args.alpha)
        print_table([{"task": t, **{f"seed {i}": f"{s[DEFAULT_VARIANT]['layer']} {s[DEFAULT_VARIANT]['module']}"
                                    for i, s in enumerate(v["seeds"])}} for t, v in encoder["tasks"].items()])

    figures = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to float32)", "rank": args.rank, "alpha": args.alpha,
        "max_len": max_len, "batch_size": batch_size, "probe_batches": probe_batches,
        "linear_weights": sum(int(np.prod(m.kernel.shape)) for m in linear_modules(base).values()),
        "default_variant": DEFAULT_VARIANT, "probe_seeds": args.probe_seeds,
        "page": page, "dominant_consistency": consistency, "variant_agreement": agreement,
        "probe_cost": cost, "encoder": encoder, "seconds_total": time.perf_counter() - t_start,
        "note": "fine-tuning by placement: python -m benchmarks placement",
    }
    path = write_results(name, figures, args.out)
    print(f"wrote {path}")
    return figures
