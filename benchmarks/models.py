"""Real-weight models: SmolLM2-135M-Instruct (GGUF Q4_1 -> float32) and all-MiniLM-L6-v2 (safetensors).

``python -m benchmarks models [--quick] [--new-tokens N]``

1. Load time of each model and tokenizer.
2. Greedy chat answers to factual questions; decode speed of the KV-cached loop (one compiled ``fori_loop``)
   with the decoder layers as a ``lax.scan`` and unrolled, and of recomputing the whole sequence every step
   (one compiled fixed-width forward), side by side on the same prompts: first-call (compile) time, tokens/s,
   their ratios, and whether all three produced the same tokens.
3. Mean token NLL and perplexity on fixed English paragraphs, on the same tokens shuffled, and with the GGUF
   q/k rows left in llama.cpp's order (what a loader that forgets the un-permutation would give).
4. MiniLM cosine similarities of paraphrase and unrelated sentence pairs; sentences/s.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks.common import best_time, parser, print_table, save_figure, write_results

QUESTIONS = ["What is the capital of France?", "What is 2 + 2?", "What color is the sky on a clear day?",
             "Which planet is known as the Red Planet?"]
PARAGRAPHS = [
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to synthesize "
    "foods from carbon dioxide and water. It generally involves the green pigment chlorophyll and generates "
    "oxygen as a by-product.",
    "The Industrial Revolution began in Great Britain in the late eighteenth century and spread to other parts "
    "of Europe and North America. It marked a shift from hand production to machines, new chemical processes "
    "and the growing use of steam power.",
    "A computer program is a sequence of instructions written in a programming language that a computer can "
    "execute. Programs are usually written by people called programmers, who test them and fix their errors.",
]
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "A woman is playing the violin.",
             "A girl plays a violin on stage.", "The new movie is awesome.", "The new film is great.",
             "The stock market fell sharply today.", "Two dogs are running through a field."]
PARAPHRASES = [(0, 1), (2, 3), (4, 5)]


def _chat_prompts(tok: Any, questions: list[str]) -> list[list[int]]:
    return [tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                        tokenize=False))["input_ids"] for q in questions]


def _recompute_greedy(model: Any, prompts: list[list[int]], steps: int, pad: int) -> Any:
    """Greedy decoding without a cache: the whole right-padded sequence through one compiled forward per step."""
    import jax.numpy as jnp
    from flax import nnx

    width = max(map(len, prompts)) + steps
    forward = nnx.jit(lambda m, ids, mask: m(ids, mask))

    def run() -> list[list[int]]:
        rows = [list(p) for p in prompts]
        for _ in range(steps):
            ids = np.full((len(rows), width), pad, np.int32)
            mask = np.zeros((len(rows), width), np.int32)
            for i, r in enumerate(rows):
                ids[i, :len(r)], mask[i, :len(r)] = r, 1
            logits = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
            for i, r in enumerate(rows):
                r.append(int(logits[i, len(r) - 1].argmax()))
        return [r[len(p):] for r, p in zip(rows, prompts)]

    return run


def _llama(args: Any, figures: dict[str, Any]) -> None:
    from flax import nnx

    from peft_probe.generate import greedy_generate, mean_token_nll
    from peft_probe.tokenizer import gguf_tokenizer
    from peft_probe.weights import load_gguf, permute_rotary_rows

    t0 = time.perf_counter()
    config, model = load_gguf()
    t1 = time.perf_counter()
    tok = gguf_tokenizer()
    figures["smollm2_load_s"] = t1 - t0
    figures["smollm2_tokenizer_s"] = time.perf_counter() - t1
    steps = args.new_tokens
    questions = QUESTIONS[:2] if args.quick else QUESTIONS
    prompts = _chat_prompts(tok, questions)

    gen: dict[str, Any] = {"questions": questions, "new_tokens": steps, "batch": len(prompts)}
    n_tokens = len(prompts) * steps
    outputs = {}
    greedy_generate(model, [[1, 2]], 1)  # process-wide first-use costs, so neither variant below pays them
    for label, scan in (("unrolled", False), ("scan", True)):
        c0, t0 = time.process_time(), time.perf_counter()
        outputs[label] = greedy_generate(model, prompts, steps, scan_layers=scan)
        gen[f"{label}_first_call_s"] = time.perf_counter() - t0  # compilation + one run
        gen[f"{label}_first_call_cpu_s"] = time.process_time() - c0
        c0 = time.process_time()
        t = best_time(lambda scan=scan: greedy_generate(model, prompts, steps, scan_layers=scan),
                      repeats=2 if args.quick else 3, warmup=0)
        gen[f"{label}_run_cpu_s"] = (time.process_time() - c0) / (2 if args.quick else 3)
        # CPU seconds are robust to other jobs on the machine; first call minus a run ~ compilation.
        gen[f"{label}_compile_cpu_s"] = gen[f"{label}_first_call_cpu_s"] - gen[f"{label}_run_cpu_s"]
        gen[f"{label}_tokens_per_s"] = n_tokens / t
    recompute = _recompute_greedy(model, prompts, steps, tok.pad_token_id)
    recomputed = recompute()  # compiles the fixed-width forward
    t0 = time.perf_counter()
    recompute()
    gen["recompute_tokens_per_s"] = n_tokens / (time.perf_counter() - t0)
    cached = outputs["scan"]
    answers = [tok.decode(a[:a.index(tok.eos_token_id)] if tok.eos_token_id in a else a, skip_special_tokens=True)
               for a in cached]
    gen.update({
        "answers": answers, "paris_in_answer": "Paris" in answers[0],
        "same_tokens_scan_unrolled_recompute": cached == outputs["unrolled"] == recomputed,
        "kv_cache_speedup_over_recompute": gen["unrolled_tokens_per_s"] / gen["recompute_tokens_per_s"],
        "scan_compile_cpu_speedup": gen["unrolled_compile_cpu_s"] / gen["scan_compile_cpu_s"],
        "scan_step_slowdown": gen["unrolled_tokens_per_s"] / gen["scan_tokens_per_s"]})
    figures["generation"] = gen
    print_table([{"decoder": k, "first call s": gen.get(f"{k}_first_call_s", float("nan")),
                  "compile cpu s": gen.get(f"{k}_compile_cpu_s", float("nan")),
                  "tokens/s": gen[f"{k}_tokens_per_s"]} for k in ("unrolled", "scan", "recompute")])
    for q, a in zip(questions, answers):
        print(f"Q: {q}\nA: {a}\n")

    rows = []
    broken = nnx.clone(model)  # merge(split(model)) would share the Variables
    for layer in broken.model.layers:
        for proj, heads in ((layer.self_attn.q_proj, config.num_attention_heads),
                            (layer.self_attn.k_proj, config.num_key_value_heads)):
            proj.kernel[...] = permute_rotary_rows(np.asarray(proj.kernel[...]).T, heads).T
    rng = np.random.default_rng(0)
    for text in tqdm(PARAGRAPHS[:1] if args.quick else PARAGRAPHS, desc="perplexity"):
        ids = np.asarray([tok(text)["input_ids"]])
        shuffled = ids.copy()
        rng.shuffle(shuffled[0])
        nll = mean_token_nll(model, ids)
        rows.append({"tokens": ids.shape[1], "nll": nll, "perplexity": float(np.exp(nll)),
                     "shuffled_perplexity": float(np.exp(mean_token_nll(model, shuffled))),
                     "no_qk_unpermute_perplexity": float(np.exp(mean_token_nll(broken, ids)))})
    print_table(rows)
    total = sum(r["tokens"] - 1 for r in rows)
    mean_nll = sum(r["nll"] * (r["tokens"] - 1) for r in rows) / total
    figures["perplexity"] = {"paragraphs": rows, "mean_nll": mean_nll, "perplexity": float(np.exp(mean_nll))}


def _bert(args: Any, figures: dict[str, Any]) -> None:
    import jax.numpy as jnp
    from flax import nnx

    from peft_probe.tokenizer import bert_tokenizer
    from peft_probe.weights import load_safetensors

    t0 = time.perf_counter()
    _, model = load_safetensors()
    tok = bert_tokenizer()
    figures["minilm_load_s"] = time.perf_counter() - t0
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    encode = nnx.jit(lambda m, ids, mask: m.encode(ids, mask))
    ids, mask = jnp.asarray(enc["input_ids"], jnp.int32), jnp.asarray(enc["attention_mask"], jnp.int32)
    emb = np.asarray(encode(model, ids, mask))
    t = best_time(lambda: encode(model, ids, mask).block_until_ready(), repeats=3 if args.quick else 10)
    sim = emb @ emb.T
    related = [float(sim[i, j]) for i, j in PARAPHRASES]
    unrelated = [float(sim[i, j]) for i in range(len(SENTENCES)) for j in range(i + 1, len(SENTENCES))
                 if (i, j) not in PARAPHRASES]
    figures["minilm"] = {"sentences": SENTENCES, "cosine": sim, "paraphrase_cosine": related,
                         "max_unrelated_cosine": max(unrelated), "mean_unrelated_cosine": float(np.mean(unrelated)),
                         "sentences_per_s": len(SENTENCES) / t}
    print(f"MiniLM: paraphrase cosine {np.round(related, 3)}, unrelated max {max(unrelated):.3f}, "
          f"{len(SENTENCES) / t:.0f} sentences/s")


def plot(figures: dict[str, Any]) -> Any:
    """MiniLM similarity heatmap and SmolLM2 perplexities from a results record's ``figures``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim, sentences = np.asarray(figures["minilm"]["cosine"]), figures["minilm"]["sentences"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1.2, 1]})
    im = ax1.imshow(sim, vmin=-0.2, vmax=1, cmap="viridis")
    ax1.set_xticks(range(len(sentences)), [s[:22] for s in sentences], rotation=60, ha="right", fontsize=7)
    ax1.set_yticks(range(len(sentences)), [s[:22] for s in sentences], fontsize=7)
    ax1.set_title("all-MiniLM-L6-v2 cosine similarity (Flax NNX)")
    fig.colorbar(im, ax=ax1, fraction=0.046)
    gen, ppl = figures["generation"], figures["perplexity"]["paragraphs"]
    labels = ["English", "shuffled\ntokens", "q/k not\nun-permuted"]
    values = [np.mean([r[k] for r in ppl]) for k in ("perplexity", "shuffled_perplexity",
                                                     "no_qk_unpermute_perplexity")]
    ax2.bar(labels, values, color=["tab:green", "tab:red", "tab:orange"])
    ax2.set_yscale("log")
    ax2.set_ylabel("perplexity (log scale)")
    ax2.set_title(f"SmolLM2-135M Q4_1->f32; KV cache {gen['unrolled_tokens_per_s']:.1f} tok/s "
                  f"({gen['kv_cache_speedup_over_recompute']:.1f}x recompute)", fontsize=9)
    return fig


def main(argv: list[str]) -> dict[str, Any]:
    p = parser("models", __doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=20)
    args = p.parse_args(argv)
    # Timings on a shared machine: record how busy it was (1-minute load average, before and after).
    figures: dict[str, Any] = {"quick": args.quick, "load_average_start": os.getloadavg()[0]}
    _llama(args, figures)
    _bert(args, figures)
    figures["load_average_end"] = os.getloadavg()[0]
    name = "models_quick" if args.quick else "models"
    save_figure(plot(figures), name, args.out)
    path = write_results(name, figures, args.out)
    print(f"wrote {path}")
    return figures
