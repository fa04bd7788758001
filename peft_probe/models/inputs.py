"""Checks on token inputs shared by the model entry points (static shapes and dtypes, so they also run under jit)."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_token_inputs(input_ids: Any, attention_mask: Any = None, max_len: int | None = None) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument unless ``input_ids`` is a non-empty integer
    ``(batch, tokens)`` array, ``attention_mask`` (if given) has its shape, and tokens <= ``max_len``."""
    shape = np.shape(input_ids)
    dtype = input_ids.dtype if hasattr(input_ids, "dtype") else np.asarray(input_ids).dtype  # tracers too
    if len(shape) != 2 or 0 in shape:
        raise ValueError(f"input_ids must have shape (batch, tokens) with both > 0, got {shape}")
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"input_ids must hold integer token ids, got dtype {dtype}")
    if attention_mask is not None and np.shape(attention_mask) != shape:
        raise ValueError(f"attention_mask has shape {np.shape(attention_mask)}, input_ids has {shape}")
    if max_len is not None and shape[1] > max_len:
        raise ValueError(f"input_ids has {shape[1]} tokens, more than max_position_embeddings={max_len}")


def batch_arrays(batch: Any, keys: tuple[str, ...], name: str = "batch") -> dict[str, np.ndarray]:
    """``{key: np.asarray(batch[key])}`` for a dict ``batch`` holding every key of ``keys``; ``TypeError`` for a
    non-dict, ``ValueError`` naming the missing keys."""
    from collections.abc import Mapping

    if not isinstance(batch, Mapping):
        raise TypeError(f"{name} must be a dict with keys {keys}, got {type(batch).__name__}")
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"{name} is missing {missing}; expected keys {keys}")
    return {k: np.asarray(batch[k]) for k in keys}
