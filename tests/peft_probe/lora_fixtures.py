"""Tiny float64 Llama models and probe batches shared by the LoRA / PAGE / DomLoRA / fine-tuning tests."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

from peft_probe.models.llama import LlamaConfig, LlamaForCausalLM

VOCAB = 128


def tiny_model(seed: int = 0, dtype=jnp.float64, **overrides) -> LlamaForCausalLM:
    """2-layer, hidden 64, intermediate 128 Llama; float64 parameters unless ``dtype`` says otherwise.

    Weights get std 0.2 instead of HF's 0.02 so that gradients and greedy outputs are not all near-identical.
    Each call returns a fresh copy (built once per argument set: eager initialisation is slow on busy cores).
    """
    return nnx.clone(_template(seed, jnp.dtype(dtype).name, tuple(sorted(overrides.items()))))


@functools.cache
def _template(seed: int, dtype: str, overrides: tuple) -> LlamaForCausalLM:
    config = LlamaConfig.tiny(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype), **dict(overrides))
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(seed))
    state = nnx.state(model, nnx.Param)
    nnx.update(model, nnx.map_state(lambda _, v: v * 10.0 if v.ndim == 2 else v, state))
    return model


def random_batch(seed: int = 0, batch: int = 3, tokens: int = 12, answer_from: int = 6) -> dict[str, np.ndarray]:
    """Random ids; the last ``tokens - answer_from`` tokens are the answer, one example right-padded by 2."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (batch, tokens)).astype(np.int32)
    attention = np.ones_like(ids)
    loss = np.zeros_like(ids)
    loss[:, answer_from:] = 1
    attention[-1, -2:] = 0
    loss[-1, -2:] = 0
    ids[-1, -2:] = 0
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss}


@nnx.jit
def _forward(model: LlamaForCausalLM, ids, mask):
    return model(ids, mask)


def forward(model: LlamaForCausalLM, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Jitted logits (one compilation per model structure instead of one per eager op)."""
    return np.asarray(_forward(model, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])))
