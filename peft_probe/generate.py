"""Greedy decoding with a KV cache, and per-token negative log-likelihood, for ``LlamaForCausalLM``.

Greedy decoding picks ``argmax_v p(v | x_<t)`` at every step (Radford et al., 2019, GPT-2, Sec. 3 generation
setup without sampling). The prompt is processed once (prefill), then each new token costs one cached step; the
whole loop runs inside one ``jax.jit`` (``lax.fori_loop``), so only the first call per (prompt bucket, length)
compiles. Prompts are left-padded to a multiple of 16 tokens so that nearby prompt lengths share a compilation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from peft_probe.models.llama import LlamaForCausalLM

_BUCKET = 16
_LOGIT_BUCKET = 64


def _check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> list[np.ndarray]:
    if len(prompts) == 0:
        raise ValueError("prompts is empty; pass at least one token-id sequence")
    rows = []
    for i, p in enumerate(prompts):
        row = np.asarray(p)
        if row.ndim != 1 or row.size == 0:
            raise ValueError(f"prompts[{i}] must be a non-empty 1-D sequence of token ids, got shape {row.shape}")
        if not np.issubdtype(row.dtype, np.integer):
            raise TypeError(f"prompts[{i}] must hold integer token ids, got dtype {row.dtype}")
        if row.min() < 0 or row.max() >= vocab_size:
            raise ValueError(f"prompts[{i}] has token ids in [{row.min()}, {row.max()}], outside [0, {vocab_size})")
        rows.append(row)
    return rows


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "scan_layers"))
def _greedy(graphdef: Any, state: Any, ids: jax.Array, mask: jax.Array, steps: int, scan_layers: bool) -> jax.Array:
    model = nnx.merge(graphdef, state)
    layers = model.layer_runs() if scan_layers else None
    b, t = ids.shape
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)  # left padding shifts positions
    key_mask = jnp.zeros((b, t + steps), bool).at[:, :t].set(mask.astype(bool))
    logits, cache = model.decode(ids, positions, model.init_cache(b, t + steps), 0, key_mask, layers)
    token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    out = jnp.zeros((b, steps), jnp.int32)

    def step(i, carry):
        cache, token, pos, key_mask, out = carry
        out = out.at[:, i].set(token)
        key_mask = key_mask.at[:, t + i].set(True)
        logits, cache = model.decode(token[:, None], pos[:, None], cache, t + i, key_mask, layers)
        return cache, jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32), pos + 1, key_mask, out

    carry = (cache, token, positions[:, -1] + 1, key_mask, out)
    _, token, _, _, out = jax.lax.fori_loop(0, steps - 1, step, carry)
    return out.at[:, steps - 1].set(token)


def greedy_generate(model: LlamaForCausalLM, prompts: Sequence[Sequence[int]], max_new_tokens: int = 20,
                    eos_token_id: int | None = None, pad_token_id: int = 0,
                    scan_layers: bool = False) -> list[list[int]]:
    """Greedy continuations of a batch of token-id ``prompts``; each is cut before its first ``eos_token_id``.

    ``scan_layers``: run the decoder stack as a ``lax.scan`` instead of unrolled layers. On SmolLM2-135M (CPU)
    that compiles 2.7-3.8x faster (≈3 vs 8-12 CPU-seconds) but each step runs 1.5-2.4x slower (the scan slices
    the stacked weights), so it pays for one short call (tests), not for repeated generation; see
    ``benchmarks/results/models.json``.
    """
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    rows = _check_prompts(prompts, model.config.vocab_size)
    width = -(-max(len(r) for r in rows) // _BUCKET) * _BUCKET
    if width + max_new_tokens > model.config.max_position_embeddings:
        raise ValueError(f"prompt ({width} padded tokens) + max_new_tokens={max_new_tokens} exceeds "
                         f"max_position_embeddings={model.config.max_position_embeddings}")
    ids = np.full((len(rows), width), pad_token_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    graphdef, state = nnx.split(model)
    out = np.asarray(_greedy(graphdef, state, jnp.asarray(ids), jnp.asarray(mask), int(max_new_tokens),
                             bool(scan_layers)))
    result = []
    for row in out.tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[:row.index(eos_token_id)]
        result.append(row)
    return result


def chat(model: LlamaForCausalLM, tokenizer: Any, message: str, max_new_tokens: int = 20) -> str:
    """Greedy answer to one user ``message`` through the tokenizer's chat template."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                         tokenize=False)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    (answer,) = greedy_generate(model, [prompt], max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id or 0)
    return tokenizer.decode(answer, skip_special_tokens=True)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _logits(graphdef: Any, state: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(ids, mask)


def causal_logits(model: LlamaForCausalLM, input_ids: Any, attention_mask: Any = None) -> np.ndarray:
    """Logits ``(b, t, vocab)`` float32 of ``input_ids: (b, t)`` (right padding marked by ``attention_mask``).

    The token axis is right-padded to a multiple of 64 inside, so nearby lengths share one compilation; by
    causality the padding never changes the logits of the tokens before it.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape (batch, tokens >= 1), got {ids.shape}")
    _check_prompts(list(ids), model.config.vocab_size)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}")
    b, t = ids.shape
    width = -(-t // _LOGIT_BUCKET) * _LOGIT_BUCKET
    padded_ids, padded_mask = np.zeros((b, width), np.int32), np.zeros((b, width), np.int32)
    padded_ids[:, :t], padded_mask[:, :t] = ids, mask
    graphdef, state = nnx.split(model)
    return np.asarray(_logits(graphdef, state, jnp.asarray(padded_ids), jnp.asarray(padded_mask)))[:, :t]


def mean_token_nll(model: LlamaForCausalLM, input_ids: Any, attention_mask: Any = None) -> float:
    """Mean negative log-likelihood (nats) of every token after the first, given the ones before it.

    input_ids, attention_mask: ``(b, t)`` (right padding). ``exp`` of the result is the perplexity.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise ValueError(f"input_ids must have shape (batch, tokens >= 2), got {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    logits = causal_logits(model, ids, mask)[:, :-1].astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    picked = np.take_along_axis(logits, ids[:, 1:, None], axis=-1)[..., 0] - log_norm
    weight = (mask[:, 1:] * mask[:, :-1]).astype(np.float64)
    if weight.sum() == 0:
        raise ValueError("attention_mask leaves no predicted token")
    return float(-(picked * weight).sum() / weight.sum())
