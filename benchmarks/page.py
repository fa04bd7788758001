"""PAGE and DomLoRA on SmolLM2-135M-Instruct (real weights, offline tasks): where PAGE puts the dominant module,
what the probe costs next to a LoRA step, and equal-step fine-tuning of DomLoRA against the usual placements.

Zhang et al., 2026 (arXiv 2605.06183). For each task family (instruction, arithmetic, code, dialogue) PAGE is
measured in every variant on a few probe batches and drawn as a layers x modules heatmap; the dominant module is
compared across tasks. Then, on the fine-tuning tasks, DomLoRA (one adapter at the dominant module), all-linear
LoRA, attention-only LoRA, a random single module and the deepest down_proj are trained for the same number of
steps (same rank, alpha, optimizer, batches) and evaluated on held-out examples: teacher-forced answer loss and
token accuracy, and the task metric on greedy generations. On 2 CPU cores only a few steps fit, so the quality
numbers after ~20-40 steps are noisy indications, not the paper's result; parameter counts and the probe cost
ratio are exact measurements.

``python -m benchmarks page [--quick]``: results in ``benchmarks/results/page[_quick].json``, ``page*_heatmap_*.png``,
``page*_finetune.png`` and per-task PAGE tables ``page*_scores_<task>.csv``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from benchmarks.common import best_time, parser, print_table, save_figure, write_results
from peft_probe.domlora import dominant_module, domlora_config
from peft_probe.lora import ALL_LINEAR, LoraConfig, inject_lora, linear_modules, merge_lora
from peft_probe.page import (
    DEFAULT_VARIANT,
    VARIANTS,
    kernel_gradient_fn,
    page_scores_all,
    plot_page_heatmap,
    variant_agreement,
)
from peft_probe.tasks import FAMILIES, IM_END, chat_prompt, evaluate, make_batches, make_task
from peft_probe.training import answer_token_accuracy, answer_token_loss, default_optimizer, finetune, train_step


def _probe_cost(model: nnx.Module, batch: dict[str, np.ndarray], config: LoraConfig, repeats: int) -> dict[str, float]:
    """Seconds of one PAGE probe step (the shared backward pass) and of one all-linear LoRA training step."""
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    step = kernel_gradient_fn(model, linear_modules(model))
    probe = best_time(lambda: jax.block_until_ready(step(jb)), repeats)
    adapted = nnx.clone(model)
    inject_lora(adapted, config, 0)
    opt = nnx.Optimizer(adapted, default_optimizer(steps=100), wrt=nnx.LoRAParam)
    train = best_time(lambda: jax.block_until_ready(train_step(adapted, opt, jb)), repeats)
    return {"probe_step_s": probe, "lora_all_linear_step_s": train, "probe_over_lora_step": probe / train}


@nnx.jit
def _eval_batch(model: nnx.Module, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    token_acc, exact = answer_token_accuracy(model, batch)
    return answer_token_loss(model, batch), token_acc, exact


def _evaluate(model: nnx.Module, tokenizer: Any, task: Any, max_len: int, batch_size: int, generate: int
              ) -> dict[str, float]:
    """Held-out answer loss / token accuracy / teacher-forced exact match, and the task metric on ``generate``
    greedy generations (the adapters are merged first, so every method shares one compiled model)."""
    from peft_probe.generate import greedy_generate

    batches = make_batches(task.eval, tokenizer, batch_size, max_len, pad_id=tokenizer.pad_token_id or 0)
    losses, accs, exact, weights = [], [], [], []
    for b in batches:
        loss, acc, ex = _eval_batch(model, {k: jnp.asarray(v) for k, v in b.items()})
        weights.append(int(b["loss_mask"][:, 1:].sum()))
        losses.append(float(loss))
        accs.append(float(acc))
        exact.extend(np.asarray(ex).tolist())
    out = {"eval_loss": float(np.average(losses, weights=weights)),
           "token_accuracy": float(np.average(accs, weights=weights)), "exact_teacher_forced": float(np.mean(exact))}
    if generate:
        examples = task.eval[:generate]
        prompts = [tokenizer.encode(chat_prompt(e.messages), add_special_tokens=False) for e in examples]
        eos = tokenizer.convert_tokens_to_ids(IM_END)
        longest = max(len(tokenizer.encode(e.answer + IM_END, add_special_tokens=False)) for e in examples)
        outputs = greedy_generate(model, prompts, longest + 2, eos_token_id=eos,
                                  pad_token_id=tokenizer.pad_token_id or 0)
        texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outputs]
        out["task_metric"] = evaluate(examples, texts)
        out["samples"] = [{"answer": e.answer, "generated": t} for e, t in zip(examples[:3], texts[:3])]
    return out


def _module_label(row: Any) -> str:
    return f"layer {row.layer} {row.module}"


def _placements(page_table: Any, base: nnx.Module, r: int, alpha: float, seed: int) -> dict[str, LoraConfig]:
    names = list(linear_modules(base))
    layers = sorted({int(n.split(".")[2]) for n in names if n.startswith("model.layers.")})
    rng = np.random.default_rng(seed)
    best = dominant_module(page_table)
    others = [n for n in names if n != best.name]
    pick = others[int(rng.integers(len(others)))]
    pick_layer, pick_type = int(pick.split(".")[2]), pick.rsplit(".", 1)[-1]
    return {
        "domlora": domlora_config(page_table, r, alpha),
        "all_linear": LoraConfig(r=r, alpha=alpha, target_modules=ALL_LINEAR),
        "attention_only": LoraConfig(r=r, alpha=alpha, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")),
        f"random_single ({pick_layer}.{pick_type})": LoraConfig(r=r, alpha=alpha, target_modules=(pick_type,),
                                                                 layers_to_transform=(pick_layer,)),
        f"deepest_down_proj ({layers[-1]})": LoraConfig(r=r, alpha=alpha, target_modules=("down_proj",),
                                                         layers_to_transform=(layers[-1],)),
    }


def _plot_finetune(rows: list[dict[str, Any]], curves: dict[str, dict[str, list[float]]], name: str, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(curves)
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(5 * (len(tasks) + 1), 3.8))
    axes = np.atleast_1d(axes)
    for ax, task in zip(axes, tasks):
        for method, losses in curves[task].items():
            ax.plot(np.arange(1, len(losses) + 1), losses, label=method, lw=1.2)
        ax.set(title=f"{task}: training loss", xlabel="step", ylabel="answer-token CE")
        ax.legend(fontsize=7)
    ax = axes[-1]
    methods = sorted({r["method"].split(" (")[0] for r in rows})
    for task_i, task in enumerate(tasks):
        sub = {r["method"].split(" (")[0]: r for r in rows if r["task"] == task}
        ax.bar(np.arange(len(methods)) + 0.8 * task_i / len(tasks), [sub[m]["eval_loss"] for m in methods],
               width=0.8 / len(tasks), label=task)
    ax.set_xticks(np.arange(len(methods)) + 0.4 - 0.4 / len(tasks), methods, rotation=30, ha="right", fontsize=8)
    ax.set(title="held-out answer loss after equal steps", ylabel="answer-token CE")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, name, out)
    plt.close(fig)


def main(argv: list[str]) -> dict:
    p = parser("page", __doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps per method (quick 20, full 40)")
    p.add_argument("--finetune-tasks", nargs="*", default=None, help="task families to fine-tune on")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--domlora-variant", default=DEFAULT_VARIANT, choices=VARIANTS)
    p.add_argument("--probe-seeds", type=int, default=3,
                   help="PAGE probes per task (other probe examples and A draws) for the variants' agreement")
    p.add_argument("--tag", default="", help="suffix of the result names (keeps several runs side by side)")
    p.add_argument("--ft-batch", type=int, default=None, help="fine-tuning batch size (quick 2, full 8)")
    p.add_argument("--eval", type=int, default=None, help="held-out examples per task (quick 16, full 64)")
    args = p.parse_args(argv)
    quick = args.quick
    steps = args.steps or (20 if quick else 40)
    max_len, batch_size = 64, (4 if quick else 8)
    ft_batch = args.ft_batch or (2 if quick else 8)
    probe_batches = 1 if quick else 4
    ft_tasks = args.finetune_tasks if args.finetune_tasks is not None else (
        ["arithmetic"] if quick else list(FAMILIES))
    name = ("page_quick" if quick else "page") + (f"_{args.tag}" if args.tag else "")
    n_eval = args.eval or (16 if quick else 64)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    from peft_probe.tokenizer import gguf_tokenizer
    from peft_probe.weights import load_gguf

    config, base = load_gguf()
    tokenizer = gguf_tokenizer()
    pad = tokenizer.pad_token_id or 0
    probe_config = LoraConfig(r=args.rank, alpha=args.alpha, target_modules=ALL_LINEAR)
    probe_rows = probe_batches * batch_size
    tasks = {f: make_task(f, n_train=max(steps * max(batch_size, ft_batch), args.probe_seeds * probe_rows),
                          n_eval=n_eval, seed=0) for f in FAMILIES}

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
    cost_batch = make_batches(tasks[FAMILIES[0]].train[:batch_size], tokenizer, batch_size, max_len, pad)[0]
    cost = _probe_cost(base, cost_batch, probe_config, repeats=2 if quick else 3)
    print(f"probe step {cost['probe_step_s']:.2f}s, all-linear LoRA step {cost['lora_all_linear_step_s']:.2f}s, "
          f"ratio {cost['probe_over_lora_step']:.2f}", flush=True)

    # ---- equal-step fine-tuning
    rows, curves = [], {}
    total_linear = sum(int(np.prod(m.kernel.shape)) for m in linear_modules(base).values())
    for family in ft_tasks:
        task = tasks[family]
        train = make_batches(task.train[:steps * ft_batch], tokenizer, ft_batch, max_len, pad, seed=1)
        placements = _placements(tables[family][args.domlora_variant], base, args.rank, args.alpha, seed=0)
        curves[family] = {}
        before = _evaluate(base, tokenizer, task, max_len, batch_size, generate=8 if quick else 16)
        rows.append({"task": family, "method": "base (no training)", "trainable": 0, **before})
        for method, cfg in placements.items():
            model = nnx.clone(base)
            result = finetune(model, cfg, train, default_optimizer(learning_rate=1e-3, steps=steps), steps=steps,
                              rngs=0, progress=True)
            merge_lora(model, unload=True)
            metrics = _evaluate(model, tokenizer, task, max_len, batch_size, generate=8 if quick else 16)
            curves[family][method] = result.losses
            rows.append({"task": family, "method": method, "trainable": result.trainable,
                         "trainable_vs_all_linear": None, "train_seconds": result.seconds,
                         "step_seconds": result.step_seconds,
                         "adapter_state_bytes": result.trainable * 4 * 3,  # float32 weights + AdamW mu, nu
                         "final_train_loss": float(np.mean(result.losses[-5:])), **metrics})
            del model
        all_linear = next(r["trainable"] for r in rows if r["task"] == family and r["method"] == "all_linear")
        for r in rows:
            if r["task"] == family and r["trainable"]:
                r["trainable_vs_all_linear"] = r["trainable"] / all_linear
    print_table(rows, ["task", "method", "trainable", "trainable_vs_all_linear", "step_seconds", "final_train_loss",
                       "eval_loss", "token_accuracy", "exact_teacher_forced", "task_metric"])
    _plot_finetune([r for r in rows if r["trainable"]], curves, f"{name}_finetune", args.out)

    figures = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to float32)", "rank": args.rank, "alpha": args.alpha,
        "max_len": max_len, "batch_size": batch_size, "finetune_batch_size": ft_batch,
        "probe_batches": probe_batches, "finetune_steps": steps,
        "finetune_tasks": ft_tasks, "domlora_variant": args.domlora_variant, "linear_weights": total_linear,
        "default_variant": DEFAULT_VARIANT, "probe_seeds": args.probe_seeds,
        "page": page, "dominant_consistency": consistency, "variant_agreement": agreement,
        "probe_cost": cost, "finetune": rows,
        "train_loss_curves": curves, "seconds_total": time.perf_counter() - t_start,
        "note": ("quality metrics after so few CPU steps on tiny synthetic tasks are noisy; parameter counts and "
                 "the probe/step time ratio are the firm numbers"),
    }
    path = write_results(name, figures, args.out)
    print(f"wrote {path}")
    json.dumps(figures, default=str)
    return figures
