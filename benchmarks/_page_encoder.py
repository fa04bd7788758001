"""PAGE on the second model family: all-MiniLM-L6-v2 (a BERT encoder) with a closed-form head, on WordNet
supersense classification, one task per part of speech (nouns 26 classes, verbs 15, adjectives + adverbs 4).

For each task the ridge head is fitted on the encoder's sentence embeddings of the training texts
(``SentenceClassifier.fit``), then PAGE (every variant) probes the 36 encoder projections with several seeds
(other probe texts). Reported: the dominant module per task, variant and seed, and its relative depth
``layer / (layers - 1)``, next to SmolLM2's (layer 11 of 30 = 0.38 in the default variant): is the dominant layer
task-stable within an architecture, and does it move with the architecture?
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from peft_probe.lora import ALL_LINEAR, LoraConfig
from peft_probe.page import DEFAULT_VARIANT, VARIANTS, page_scores_all, variant_agreement

TASKS = {"nouns": ("noun",), "verbs": ("verb",), "adjectives+adverbs": ("adj", "adv")}


def _batches(tokenizer: Any, texts: list[str], labels: np.ndarray, rows: int, max_len: int) -> list[dict]:
    out = []
    for start in range(0, len(texts), rows):
        enc = tokenizer(texts[start:start + rows], truncation=True, max_length=max_len, padding="max_length",
                        return_tensors="np")
        out.append({"input_ids": enc["input_ids"].astype(np.int32),
                    "attention_mask": enc["attention_mask"].astype(np.int32),
                    "labels": labels[start:start + rows].astype(np.int32)})
    return out


def encoder_page(probe_seeds: int, quick: bool, rank: int = 8, alpha: float = 16.0) -> dict[str, Any]:
    from continual.data.real import load_wordnet_supersenses
    from peft_probe.models.classifier import SentenceClassifier
    from peft_probe.tokenizer import bert_tokenizer
    from peft_probe.weights import load_safetensors

    t0 = time.perf_counter()
    config, encoder = load_safetensors()
    tokenizer = bert_tokenizer()
    per_class, max_len, probe_rows = (20 if quick else 60), 48, 8
    out: dict[str, Any] = {"model": "all-MiniLM-L6-v2", "layers": config.num_hidden_layers, "tasks": {}}
    probes = []
    for task, parts in TASKS.items():
        texts, labels, _ = load_wordnet_supersenses(parts=parts, max_per_class=per_class + probe_seeds * 4, seed=0)
        present = np.unique(labels)
        y = np.searchsorted(present, labels)  # the part's classes as 0..c-1
        order = np.random.default_rng(0).permutation(len(texts))
        n_probe = probe_seeds * probe_rows
        probe_idx, head_idx = order[:n_probe], order[n_probe:]
        head_batches = _batches(tokenizer, [texts[i] for i in head_idx], y[head_idx], 64, max_len)
        model = SentenceClassifier.fit(encoder, head_batches, len(present))
        seeds = []
        for seed in range(probe_seeds):
            idx = probe_idx[seed * probe_rows:(seed + 1) * probe_rows]
            batch = _batches(tokenizer, [texts[i] for i in idx], y[idx], probe_rows, max_len)
            table = page_scores_all(model, batch, LoraConfig(r=rank, alpha=alpha, target_modules=ALL_LINEAR),
                                    VARIANTS, seed=seed)
            probes.append(table)
            seeds.append({v: {"module": s.rows[0].name.split(".", 4)[-1], "layer": s.rows[0].layer,
                              "relative_depth": s.rows[0].layer / (config.num_hidden_layers - 1),
                              "share": s.rows[0].share} for v, s in table.items()})
        default_layers = [s[DEFAULT_VARIANT]["layer"] for s in seeds]
        out["tasks"][task] = {"classes": int(len(present)), "head_examples": int(len(head_idx)), "seeds": seeds,
                              "default_layers": default_layers}
    out["variant_agreement"] = variant_agreement(probes, DEFAULT_VARIANT, k=5)
    layers = [layer for t in out["tasks"].values() for layer in t["default_layers"]]
    out["default_dominant_layers"] = layers
    out["default_most_common_layer"] = max(set(layers), key=layers.count)
    out["seconds"] = time.perf_counter() - t0
    return out
