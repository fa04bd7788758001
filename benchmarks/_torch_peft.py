"""The same LoRA training step in torch + PEFT, for a side-by-side timing in ``python -m benchmarks page``.

Optional: runs only when ``torch``, ``transformers`` and ``peft`` import (the ``compare`` extra; install a CPU
build of torch first, e.g. ``pip install torch==2.13.0``, or pip takes a CUDA build). The project itself never
imports torch. The Hugging Face model gets *our* weights (``kernel`` -> ``weight`` transposed), PEFT gets the
same LoRA config (rank, alpha, the adapted module names) and AdamW runs with the same clip and decay, so the two
steps do the same arithmetic; the first loss (``B = 0``: the base model) must agree, which is checked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import nnx


def available() -> str:
    """Empty if torch + transformers + peft import, else why not."""
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        return f"torch/transformers/peft not installed ({error.name}); pip install -e '.[compare]'"
    return ""


def _hf_state(model: nnx.Module) -> dict[str, np.ndarray]:
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        stem, leaf = ".".join(map(str, path[:-1])), path[-1]
        value = np.asarray(var[...], np.float32)
        name = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}[leaf]
        out[f"{stem}.{name}"] = np.ascontiguousarray(value.T if leaf == "kernel" else value)
    return out


def torch_lora_step(base: nnx.Module, target_modules: Any, r: int, alpha: float, threads: int = 2
                    ) -> Callable[[Mapping[str, np.ndarray]], float]:
    """``batch -> loss`` running one AdamW step of PEFT LoRA on the Hugging Face twin of our Llama ``base``."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(threads)
    cfg = base.config
    hf_config = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_word_embeddings,
        attention_bias=False, mlp_bias=False)
    hf = transformers.LlamaForCausalLM(hf_config)
    state = {k: torch.from_numpy(v) for k, v in _hf_state(base).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"weights do not map onto the HF model: missing {missing}, unexpected {unexpected}")
    model = get_peft_model(hf, LoraConfig(r=r, lora_alpha=alpha, target_modules=target_modules, lora_dropout=0.0))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)

    def step(batch: Mapping[str, np.ndarray]) -> float:
        ids = torch.from_numpy(np.asarray(batch["input_ids"], np.int64))
        mask = torch.from_numpy(np.asarray(batch["attention_mask"], np.int64))
        labels = ids.masked_fill(torch.from_numpy(np.asarray(batch["loss_mask"]) == 0), -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return float(loss.detach())

    return step


def side_by_side(ours: Callable[[], float], theirs: Callable[[], float], repeats: int) -> dict[str, Any]:
    """Alternate the two steps ``repeats`` times after one warm-up each (first-call times reported apart)."""
    t0 = time.perf_counter()
    ours_first_loss = ours()
    ours_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs_first_loss = theirs()
    theirs_first = time.perf_counter() - t0
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours()
        ours_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs()
        theirs_s.append(time.perf_counter() - t0)
    return {"ours_step_s": float(np.median(ours_s)), "ours_step_range_s": [min(ours_s), max(ours_s)],
            "torch_peft_step_s": float(np.median(theirs_s)), "torch_peft_step_range_s": [min(theirs_s), max(theirs_s)],
            "ours_over_torch": float(np.median(ours_s) / np.median(theirs_s)),
            "ours_first_step_s": ours_first, "torch_first_step_s": theirs_first,
            "first_loss": {"ours": ours_first_loss, "torch_peft": theirs_first_loss}, "repeats": repeats}
