"""Adapter-only fine-tuning with optax: answer-token cross entropy, AdamW, warmup + cosine, gradient clipping.

Only ``nnx.LoRAParam`` variables are differentiated and updated (Hu et al., 2021, "LoRA", Sec. 4: the pretrained
weights stay frozen); the loss is the mean next-token cross entropy over answer tokens only (prompt tokens masked,
as in instruction tuning). A batch is a dict of ``(b, t)`` arrays: ``input_ids`` (int), ``attention_mask`` (1 =
token) and ``loss_mask`` (1 = this token belongs to the answer and is predicted from the tokens before it).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from peft_probe.lora import LoraConfig, inject_lora, lora_modules, save_adapters, trainable_count

__all__ = ["train_step", "check_batch", "answer_token_loss", "per_example_loss", "default_optimizer", "finetune",
           "FinetuneResult", "answer_token_accuracy"]

_BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask")


def check_batch(batch: Mapping[str, Any], name: str = "batch") -> dict[str, np.ndarray]:
    """Validate a batch dict (keys, ``(b, t)`` shapes, integer ids, at least one answer token per batch)."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"{name} must be a dict with keys {_BATCH_KEYS}, got {type(batch).__name__}")
    missing = [k for k in _BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"{name} is missing {missing}; expected keys {_BATCH_KEYS}")
    out = {k: np.asarray(batch[k]) for k in _BATCH_KEYS}
    ids = out["input_ids"]
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        raise ValueError(f"{name}['input_ids'] must be (batch >= 1, tokens >= 2), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name}['input_ids'] must hold integers, got dtype {ids.dtype}")
    for k in ("attention_mask", "loss_mask"):
        if out[k].shape != ids.shape:
            raise ValueError(f"{name}[{k!r}] has shape {out[k].shape}, input_ids has {ids.shape}")
    if not out["loss_mask"][:, 1:].any():
        raise ValueError(f"{name}['loss_mask'] marks no answer token after position 0; nothing to learn from")
    return out


def _token_losses(model: nnx.Module, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Next-token cross entropy at every answer position ``(b, t-1)`` and its mask."""
    logits = model(batch["input_ids"], batch["attention_mask"])[:, :-1]
    targets = batch["input_ids"][:, 1:]
    mask = batch["loss_mask"][:, 1:].astype(logits.dtype)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return ce * mask, mask


def answer_token_loss(model: nnx.Module, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Mean cross entropy over all answer tokens of the batch (token-weighted)."""
    losses, mask = _token_losses(model, batch)
    return losses.sum() / jnp.maximum(mask.sum(), 1.0)


def per_example_loss(model: nnx.Module, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Mean cross entropy over each example's own answer tokens ``(b,)`` (0 for an example without any)."""
    losses, mask = _token_losses(model, batch)
    return losses.sum(1) / jnp.maximum(mask.sum(1), 1.0)


def answer_token_accuracy(model: nnx.Module, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced answer metrics ``(token_accuracy, exact)``: the fraction of answer tokens whose argmax is
    right, and per example whether all are (equal to greedy decoding reproducing the answer exactly)."""
    logits = model(batch["input_ids"], batch["attention_mask"])[:, :-1]
    hit = (logits.argmax(-1) == batch["input_ids"][:, 1:])
    mask = batch["loss_mask"][:, 1:].astype(bool)
    token_acc = (hit & mask).sum() / jnp.maximum(mask.sum(), 1)
    exact = jnp.all(hit | ~mask, axis=1)
    return token_acc, exact


def default_optimizer(learning_rate: float = 2e-4, steps: int = 100, warmup: int | None = None,
                      weight_decay: float = 0.01, clip_norm: float = 1.0) -> optax.GradientTransformation:
    """Clip the global gradient norm, then AdamW (Loshchilov & Hutter, 2019) on a linear-warmup + cosine schedule."""
    warmup = max(1, steps // 10) if warmup is None else warmup
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(steps, warmup + 1),
                                                  end_value=learning_rate * 0.1)
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(schedule, weight_decay=weight_decay))


class FinetuneResult(NamedTuple):
    losses: list[float]        # training loss of every step
    seconds: float             # wall time of all steps (compilation of the first step included)
    step_seconds: float        # median wall time of one step after the first
    trainable: int             # adapter scalars trained


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, batch: dict[str, jax.Array]) -> jax.Array:
    diff = nnx.DiffState(0, nnx.LoRAParam)
    loss, grads = nnx.value_and_grad(answer_token_loss, argnums=diff)(model, batch)
    optimizer.update(model, grads)
    return loss


def finetune(model: nnx.Module, config: LoraConfig | None, data: Iterable[Mapping[str, Any]],
             optimizer: optax.GradientTransformation | None = None, *, steps: int | None = None,
             rngs: nnx.Rngs | int = 0, checkpoint: str | Path | None = None, progress: bool = False
             ) -> FinetuneResult:
    """Train only the LoRA adapters of ``model`` on ``data`` (in place).

    config: injected first if given (``None``: the model already has adapters); data: batches (dicts, see module
    docstring), cycled until ``steps`` (default: one pass); optimizer: default ``default_optimizer(steps=steps)``;
    checkpoint: folder for an orbax checkpoint of the trained adapters. Base weights are never changed.
    """
    # everything is validated before the model is touched, so a bad call leaves it as it was
    if config is None and not lora_modules(model):
        raise ValueError("model has no LoRA adapters; pass a LoraConfig or call inject_lora first")
    if config is not None and not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a LoraConfig or None, got {type(config).__name__}")
    batches = [check_batch(b, f"data[{i}]") for i, b in enumerate(data)]
    if not batches:
        raise ValueError("data is empty; need at least one batch")
    steps = len(batches) if steps is None else int(steps)
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if config is not None:
        inject_lora(model, config, rngs)
    tx = default_optimizer(steps=steps) if optimizer is None else optimizer
    opt = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)
    model.train()
    losses, times = [], []
    start = time.perf_counter()
    for step in tqdm(range(steps), desc="finetune", disable=not progress):
        t0 = time.perf_counter()
        batch = {k: jnp.asarray(v) for k, v in batches[step % len(batches)].items()}
        losses.append(float(train_step(model, opt, batch)))
        times.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - start
    model.eval()
    trainable = trainable_count(model)
    if checkpoint is not None:
        save_adapters(model, checkpoint, {"steps": steps, "final_loss": losses[-1]}, overwrite=True)
    step_seconds = float(np.median(times[1:])) if len(times) > 1 else float(times[0])
    return FinetuneResult(losses, seconds, step_seconds, trainable)
