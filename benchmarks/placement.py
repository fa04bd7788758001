"""Placement study: does one LoRA adapter at PAGE's dominant module match all-linear LoRA (SmolLM2-135M)?

Zhang et al., 2026 (arXiv 2605.06183) claim that DomLoRA, one adapter at the module with the highest PAGE, matches
or beats all-linear LoRA with under 1% of its trainable parameters. This study trains, on the same batches:
DomLoRA, PAGE top-k (k = 2, 4), all-linear, attention-only, one random module (drawn afresh per seed) and the
deepest ``down_proj``, each at every learning rate of a sweep (a single adapter needs its own rate) and with
several seeds (the seed sets the adapters' ``A``, the batch order and the random module). PAGE is the default
variant (the empirical Fisher) on probe batches of the training split.

Every run logs the held-out (validation and test) answer loss every ``--eval-every`` steps against the training
seconds spent, so the same runs are read at **equal steps** (step ``--steps``) and at **equal wall time** (the
seconds all-linear LoRA needs for ``--steps`` steps; a cheaper placement keeps training until it has spent as
much, at most ``--max-steps-factor`` x the steps). The learning rate of each placement is chosen on the
validation split and reported on the test split: teacher-forced answer loss, token accuracy, exact match, and
the task metric (``peft_probe.tasks.score``: exact answer, or the code's execution result) on greedy
generations. The schedule is linear warmup then a constant rate, so a checkpoint at step k is a k-step run.

Resume: every finished run is written to ``<runs>/<task>/<placement>/lr=<lr>/seed=<s>.json`` (atomically); a
restart with the same settings skips them (a folder written with other settings is refused).

``python -m benchmarks placement [--quick]``: results in ``benchmarks/results/placement[_quick].json`` and
``placement[_quick]_curves.png``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks._run_report import atomic_write
from benchmarks.common import parser, print_table, save_figure, write_results
from peft_probe.domlora import domlora_config, top_k_config
from peft_probe.lora import ALL_LINEAR, LoraConfig, inject_lora, linear_modules, merge_lora, module_layer
from peft_probe.page import DEFAULT_VARIANT, page_scores
from peft_probe.tasks import IM_END, chat_prompt, evaluate, make_batches, make_task
from peft_probe.training import ScannedLoraTrainer, pad_batch

RUNS_DIR = Path(__file__).resolve().parent / "runs"


def study_optimizer(learning_rate: float, warmup: int, clip_norm: float = 1.0, weight_decay: float = 0.01
                    ) -> optax.GradientTransformation:
    """Global-norm clip, AdamW, linear warmup then a constant rate (a checkpoint at step k is a k-step run)."""
    schedule = optax.join_schedules([optax.linear_schedule(0.0, learning_rate, max(warmup, 1)),
                                     optax.constant_schedule(learning_rate)], [max(warmup, 1)])
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(schedule, weight_decay=weight_decay))


def placements(table: Any, base: nnx.Module, r: int, alpha: float, seed: int) -> dict[str, LoraConfig]:
    """The compared placements; ``random_single`` is drawn with ``seed`` among the non-dominant modules."""
    names = list(linear_modules(base))
    best = table.rows[0].name
    others = [n for n in names if n != best]
    pick = others[int(np.random.default_rng([seed, 7]).integers(len(others)))]
    deepest = max(module_layer(n) for n in names)
    return {
        "domlora": domlora_config(table, r, alpha),
        "page_top2": top_k_config(table, 2, r, alpha),
        "page_top4": top_k_config(table, 4, r, alpha),
        "all_linear": LoraConfig(r=r, alpha=alpha, target_modules=ALL_LINEAR),
        "attention_only": LoraConfig(r=r, alpha=alpha, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")),
        "random_single": LoraConfig(r=r, alpha=alpha, target_modules=(pick.rsplit(".", 1)[-1],),
                                    layers_to_transform=(module_layer(pick),)),
        "deepest_down_proj": LoraConfig(r=r, alpha=alpha, target_modules=("down_proj",),
                                        layers_to_transform=(deepest,)),
    }


def _pooled(trainer: ScannedLoraTrainer, batches: list[dict[str, jax.Array]]) -> dict[str, float]:
    sums = np.zeros(3)
    exact: list[bool] = []
    for b in batches:
        loss, tokens, correct, ex = jax.device_get(trainer.answer_metrics(b))
        sums += (loss, tokens, correct)
        exact.extend(np.asarray(ex)[np.asarray(b["loss_mask"]).any(1)].tolist())  # padded rows are no examples
    return {"loss": float(sums[0] / sums[1]), "token_accuracy": float(sums[2] / sums[1]),
            "exact_teacher_forced": float(np.mean(exact))}


def _generation_metric(model: nnx.Module, tokenizer: Any, examples: list) -> float:
    from peft_probe.generate import greedy_generate

    prompts = [tokenizer.encode(chat_prompt(e.messages), add_special_tokens=False) for e in examples]
    longest = max(len(tokenizer.encode(e.answer + IM_END, add_special_tokens=False)) for e in examples)
    outputs = greedy_generate(model, prompts, longest + 2, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
                              pad_token_id=tokenizer.pad_token_id or 0)
    return evaluate(examples, [tokenizer.decode(o, skip_special_tokens=True) for o in outputs])


def run_one(base: nnx.Module, config: LoraConfig, train: list[dict[str, np.ndarray]],
            held_out: dict[str, list[dict[str, np.ndarray]]], generate: Callable[[nnx.Module], float] | None, *,
            lr: float, seed: int, steps: int, eval_every: int, time_budget: float | None, max_steps: int
            ) -> dict[str, Any]:
    """One (placement, lr, seed) run: curves of held-out metrics vs steps and training seconds; the generation
    metric at step ``steps`` and, if the run continues to ``time_budget`` seconds, there too."""
    model = nnx.clone(base)
    adapted = inject_lora(model, config, seed)
    trainer = ScannedLoraTrainer(model, study_optimizer(lr, warmup=max(1, steps // 10)))
    order = np.random.default_rng([seed, 1]).permutation(len(train))
    to_device = lambda b: {k: jnp.asarray(v) for k, v in b.items()}  # noqa: E731
    held = {split: [to_device(b) for b in batches] for split, batches in held_out.items()}
    curve = [{"step": 0, "train_s": 0.0, **{f"{s}_{k}": v for s in held for k, v in _pooled(trainer, held[s]).items()}}]
    losses, seconds, compile_s, gen = [], 0.0, 0.0, {}
    step = 0
    while step < max_steps:
        t0 = time.perf_counter()
        losses.append(float(trainer.step(to_device(train[order[step % len(train)]]))))
        dt = time.perf_counter() - t0
        if step == 0:
            compile_s = dt  # the first call compiles; it is not training time
        else:
            seconds += dt
        step += 1
        done_steps = step >= steps
        done_time = time_budget is None or seconds >= time_budget
        if step % eval_every == 0 or step == steps or (done_steps and done_time):
            curve.append({"step": step, "train_s": seconds,
                          **{f"{s}_{k}": v for s in held for k, v in _pooled(trainer, held[s]).items()}})
        if generate is not None and step == steps:
            gen["equal_steps"] = _merged_metric(trainer, model, generate)
        if done_steps and done_time:
            break
    if generate is not None:
        gen["equal_time"] = _merged_metric(trainer, model, generate) if step > steps else gen["equal_steps"]
    trainable = sum(int(x.size) for x in jax.tree.leaves(trainer.trainable))
    return {"adapted": adapted, "trainable": trainable, "train_losses": losses, "curve": curve,
            "first_step_s": compile_s, "step_s": seconds / max(step - 1, 1), "steps_run": step, "generation": gen,
            "reached_time_budget": time_budget is None or seconds >= time_budget}


def _merged_metric(trainer: ScannedLoraTrainer, model: nnx.Module, generate: Callable[[nnx.Module], float]
                   ) -> float:
    trainer.write_back()
    merged = nnx.clone(model)
    merge_lora(merged, unload=True)  # every placement then shares one compiled generation program
    return generate(merged)


def _settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _at(curve: list[dict[str, Any]], key: str, *, step: int | None = None, seconds: float | None = None) -> float:
    """The curve's value at ``step``, or at the checkpoint nearest to ``seconds`` of training."""
    if step is not None:
        return next(c[key] for c in curve if c["step"] == step)
    return min(curve, key=lambda c: abs(c["train_s"] - seconds))[key]


def summarize(runs: list[dict[str, Any]], steps: int, budget: float) -> list[dict[str, Any]]:
    """Per (task, placement) and reading (equal steps / equal time): the learning rate with the lowest mean
    validation loss, and the test metrics at it, mean and std over seeds."""
    rows = []
    for task in sorted({r["task"] for r in runs}):
        for placement in dict.fromkeys(r["placement"] for r in runs if r["task"] == task):
            mine = [r for r in runs if r["task"] == task and r["placement"] == placement]
            for reading in ("equal_steps", "equal_time"):
                where = {"step": steps} if reading == "equal_steps" else {"seconds": budget}
                by_lr = {}
                for lr in sorted({r["lr"] for r in mine}):
                    at_lr = [r for r in mine if r["lr"] == lr]
                    by_lr[lr] = float(np.mean([_at(r["result"]["curve"], "val_loss", **where) for r in at_lr]))
                lr = min(by_lr, key=by_lr.get)
                chosen = [r["result"] for r in mine if r["lr"] == lr]
                row = {"task": task, "placement": placement, "reading": reading, "lr": lr, "seeds": len(chosen),
                       "trainable": chosen[0]["trainable"], "val_loss_by_lr": by_lr,
                       "step_s": float(np.mean([c["step_s"] for c in chosen])),
                       "steps": float(np.mean([_at(c["curve"], "step", **where) for c in chosen]))}
                for key in ("test_loss", "test_token_accuracy", "test_exact_teacher_forced"):
                    values = [_at(c["curve"], key, **where) for c in chosen]
                    row[key], row[key + "_std"] = float(np.mean(values)), float(np.std(values))
                gen = [c["generation"].get(reading) for c in chosen if reading in c["generation"]]
                row["test_task_metric"] = float(np.mean(gen)) if gen else None
                row["test_task_metric_std"] = float(np.std(gen)) if gen else None
                # flat: the validation loss fell by < 2% over the last fifth of the steps
                late = [_at(c["curve"], "val_loss", step=max(s["step"] for s in c["curve"]
                                                              if s["step"] <= int(0.8 * steps)))
                        for c in chosen]
                final = [_at(c["curve"], "val_loss", step=steps) for c in chosen]
                row["late_relative_improvement"] = float(np.mean([(a - b) / a for a, b in zip(late, final)]))
                rows.append(row)
    return rows


def _plot(runs: list[dict[str, Any]], summary: list[dict[str, Any]], name: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in runs})
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.8 * len(tasks)), squeeze=False)
    for row_axes, task in zip(axes, tasks):
        for s in (s for s in summary if s["task"] == task and s["reading"] == "equal_steps"):
            curves = [r["result"]["curve"] for r in runs
                      if r["task"] == task and r["placement"] == s["placement"] and r["lr"] == s["lr"]]
            n = min(len(c) for c in curves)
            loss = np.array([[c[i]["test_loss"] for i in range(n)] for c in curves])
            for ax, x in zip(row_axes, (np.array([c["step"] for c in curves[0][:n]]),
                                        np.mean([[c[i]["train_s"] for i in range(n)] for c in curves], axis=0))):
                line, = ax.plot(x, loss.mean(0), label=f"{s['placement']} (lr {s['lr']:g})", lw=1.3)
                ax.fill_between(x, loss.min(0), loss.max(0), color=line.get_color(), alpha=0.15)
        row_axes[0].set(title=f"{task}: held-out answer loss vs steps", xlabel="step", ylabel="test answer CE")
        row_axes[1].set(title=f"{task}: vs training seconds", xlabel="seconds (2 CPU cores)")
        row_axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = save_figure(fig, f"{name}_curves", out)
    plt.close(fig)
    return path


def _page_table(base: nnx.Module, tokenizer: Any, task: Any, st: dict[str, Any]) -> Any:
    """PAGE (default variant) on the first 16 training examples, in batches of 4."""
    probe = make_batches(task.train[:16], tokenizer, 4, st["max_len"], tokenizer.pad_token_id or 0)
    return page_scores(base, probe, LoraConfig(r=st["rank"], alpha=st["alpha"], target_modules=ALL_LINEAR))


def run_study(base: nnx.Module, tokenizer: Any, settings: dict[str, Any], runs_dir: Path
              ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, float]]:
    """Every (task, placement, lr, seed) run of ``settings`` (see ``main``), skipping those already in
    ``runs_dir``; all-linear first, since its seconds for ``steps`` steps are the equal-time budget."""
    stamp = runs_dir / "settings.json"
    if stamp.exists() and json.loads(stamp.read_text())["hash"] != _settings_hash(settings):
        raise SystemExit(f"{runs_dir} holds runs made with other settings; pass --runs to use another folder")
    atomic_write(stamp, json.dumps({"hash": _settings_hash(settings), "settings": settings}, indent=1))
    st = settings
    pad = tokenizer.pad_token_id or 0
    runs, pages, budgets = [], {}, {}
    for task_name in st["tasks"]:
        task = make_task(task_name, n_train=st["steps"] * st["batch"], n_eval=st["n_val"] + st["n_test"], seed=0)
        val, test = task.eval[:st["n_val"]], task.eval[st["n_val"]:]
        table = _page_table(base, tokenizer, task, st)
        pages[task_name] = [r._asdict() for r in table.top(5)]
        train = make_batches(task.train, tokenizer, st["batch"], st["max_len"], pad)
        held = {"val": make_batches(val, tokenizer, 8, st["max_len"], pad),
                "test": make_batches(test, tokenizer, 8, st["max_len"], pad)}
        shape = (max(b["input_ids"].shape[0] for b in held["val"] + held["test"]), st["max_len"])
        held = {s: [pad_batch(b, *shape) for b in bs] for s, bs in held.items()}  # one compiled shape
        gen = (lambda m, ex=test[:st["generate"]]: _generation_metric(m, tokenizer, ex)) if st["generate"] else None
        budget = None
        keys = placements(table, base, st["rank"], st["alpha"], 0)
        for placement in ["all_linear"] + [k for k in keys if k != "all_linear"]:
            for lr in st["lrs"]:
                for seed in range(st["seeds"]):
                    path = runs_dir / task_name / placement / f"lr={lr:g}" / f"seed={seed}.json"
                    if path.exists():
                        result = json.loads(path.read_text())
                    else:
                        config = placements(table, base, st["rank"], st["alpha"], seed)[placement]
                        print(f"{task_name} {placement} lr={lr:g} seed={seed}", flush=True)
                        result = run_one(base, config, train, held, gen, lr=lr, seed=seed, steps=st["steps"],
                                         eval_every=st["eval_every"], time_budget=budget,
                                         max_steps=int(st["max_steps_factor"] * st["steps"]))
                        atomic_write(path, json.dumps(result))
                    runs.append({"task": task_name, "placement": placement, "lr": lr, "seed": seed,
                                 "result": result})
            if placement == "all_linear":
                # equal wall time = what all-linear LoRA spends on `steps` steps (mean over its lrs and seeds)
                budget = float(np.mean([_at(r["result"]["curve"], "train_s", step=st["steps"]) for r in runs
                                        if r["task"] == task_name and r["placement"] == "all_linear"]))
        budgets[task_name] = budget
    return runs, pages, budgets


def finished_runs(settings: dict[str, Any], runs_dir: Path
                  ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, float]]:
    """The runs of ``settings`` already in ``runs_dir``, for the placements that have every (lr, seed) run."""
    stamp = runs_dir / "settings.json"
    if not stamp.exists() or json.loads(stamp.read_text())["hash"] != _settings_hash(settings):
        raise SystemExit(f"{runs_dir} holds no runs made with these settings")
    runs, budgets = [], {}
    for task in settings["tasks"]:
        for folder in sorted(p for p in (runs_dir / task).iterdir() if p.is_dir()):
            paths = [folder / f"lr={lr:g}" / f"seed={seed}.json" for lr in settings["lrs"]
                     for seed in range(settings["seeds"])]
            if not all(path.exists() for path in paths):
                continue
            for path in paths:
                runs.append({"task": task, "placement": folder.name, "lr": float(path.parent.name[3:]),
                             "seed": int(path.stem[5:]), "result": json.loads(path.read_text())})
        linear = [r for r in runs if r["task"] == task and r["placement"] == "all_linear"]
        if not linear:
            raise SystemExit(f"{runs_dir}: all-linear has not finished on {task}; nothing to compare with")
        budgets[task] = float(np.mean([_at(r["result"]["curve"], "train_s", step=settings["steps"]) for r in linear]))
    order = ["all_linear", "domlora", "page_top2", "page_top4", "attention_only", "random_single", "deepest_down_proj"]
    runs.sort(key=lambda r: (r["task"], order.index(r["placement"]) if r["placement"] in order else 99))
    return runs, {}, budgets


def main(argv: list[str]) -> dict:
    p = parser("placement", __doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="*", default=None, help="task families (quick: arithmetic; full: all four)")
    p.add_argument("--lrs", type=float, nargs="*", default=None, help="learning-rate sweep")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="equal-steps budget (quick 50, full 300)")
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--n-val", type=int, default=None, help="validation examples, for the lr (quick 16, full 64)")
    p.add_argument("--n-test", type=int, default=None, help="test examples (quick 32, full 128)")
    p.add_argument("--generate", type=int, default=None, help="test examples generated (quick 8, full 64)")
    p.add_argument("--max-steps-factor", type=float, default=3.0)
    p.add_argument("--runs", type=Path, default=None, help="folder of per-run results (resume)")
    p.add_argument("--summarize-only", action="store_true",
                   help="train nothing: summarize the finished runs in --runs (placements missing a run are left out)")
    args = p.parse_args(argv)
    quick = args.quick
    name = "placement_quick" if quick else "placement"
    tasks = args.tasks or (["arithmetic"] if quick else ["arithmetic", "instruction", "code", "dialogue"])
    lrs = args.lrs or ([1e-3, 3e-3, 1e-2] if quick else [3e-4, 1e-3, 3e-3, 1e-2, 3e-2])
    steps = args.steps or (50 if quick else 300)
    eval_every = args.eval_every or max(1, steps // (5 if quick else 10))
    n_test = args.n_test or (32 if quick else 128)
    n_val = args.n_val or (16 if quick else 64)
    n_gen = args.generate if args.generate is not None else (8 if quick else 64)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "runs", "quick", "summarize_only")}
    settings |= {"tasks": tasks, "lrs": lrs, "steps": steps, "eval_every": eval_every, "n_val": n_val, "n_test": n_test,
                 "generate": n_gen, "page_variant": DEFAULT_VARIANT}
    runs_dir = args.runs or RUNS_DIR / name
    t_start = time.perf_counter()

    from peft_probe.tokenizer import gguf_tokenizer
    from peft_probe.weights import load_gguf

    _, base = load_gguf()
    if args.summarize_only:
        runs, _, budgets = finished_runs(settings, runs_dir)
        pages = {t: [r._asdict() for r in _page_table(base, gguf_tokenizer(), make_task(
            t, n_train=steps * args.batch, n_eval=n_val + n_test, seed=0), settings).top(5)] for t in tasks}
    else:
        runs, pages, budgets = run_study(base, gguf_tokenizer(), settings, runs_dir)
    summary = [row for task in tasks for row in summarize([r for r in runs if r["task"] == task], steps,
                                                            budgets[task])]
    print_table([{k: v for k, v in s.items() if k != "val_loss_by_lr"} for s in summary],
                ["task", "placement", "reading", "lr", "trainable", "steps", "test_loss", "test_loss_std",
                 "test_token_accuracy", "test_task_metric", "late_relative_improvement"])
    _plot(runs, summary, name, args.out)
    figures = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to float32)", "settings": settings,
               "page_top5": pages, "time_budget_s": budgets, "summary": summary,
               "runs": [{k: v for k, v in r.items() if k != "result"} | {
                   "curve": r["result"]["curve"], "generation": r["result"]["generation"],
                   "step_s": r["result"]["step_s"], "steps_run": r["result"]["steps_run"]} for r in runs],
               "complete": len(runs) == len(tasks) * 7 * len(lrs) * args.seeds,
               "seconds_total": time.perf_counter() - t_start}
    path = write_results(name, figures, args.out)
    print(f"wrote {path}")
    return figures
