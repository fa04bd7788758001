"""A sentence classifier over a BERT encoder whose head is fitted in closed form: the second model family PAGE
and LoRA probe (an encoder next to the Llama decoder).

The head is ridge regression on the encoder's Sentence-BERT embeddings (Reimers & Gurevych, 2019, Sec. 3) to
one-hot targets, ``W = (ΦᵀΦ + γI)⁻¹ΦᵀY`` (``analytic.ridge_fit``), so the probe loss is the head's own objective,
``ℓ_i = ½ ||φ(x_i) W - y_i||²`` (uniform example weights): PAGE then measures where an adapter in the encoder
would first move the fitted head's error. All-linear LoRA skips the head (``classifier``, PEFT's rule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from peft_probe.models.bert import BertModel
from peft_probe.models.inputs import batch_arrays

__all__ = ["SentenceClassifier"]

_KEYS = ("input_ids", "attention_mask", "labels")


class SentenceClassifier(nnx.Module):
    """``model(input_ids, attention_mask) -> scores (b, classes)``: ``encode(...) @ W`` of a BERT ``encoder``."""

    peft_task_type = "FEATURE_EXTRACTION"

    def __init__(self, encoder: BertModel, head: jax.Array):
        head = jnp.asarray(head)
        if head.ndim != 2 or head.shape[0] != encoder.config.hidden_size:
            raise ValueError(f"head must be (hidden={encoder.config.hidden_size}, classes), got {head.shape}")
        self.encoder = encoder
        self.classifier = nnx.Linear(head.shape[0], head.shape[1], use_bias=False, rngs=nnx.Rngs(0),
                                     dtype=head.dtype, param_dtype=head.dtype)
        self.classifier.kernel[...] = head

    @property
    def classes(self) -> int:
        return int(self.classifier.kernel.shape[1])

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        return self.classifier(self.encoder.encode(input_ids, attention_mask))

    @classmethod
    def fit(cls, encoder: BertModel, batches: Sequence[Mapping[str, Any]], classes: int, gamma: float = 1e-2
            ) -> SentenceClassifier:
        """The closed-form head on ``batches`` (dicts with ``input_ids``, ``attention_mask``, ``labels``)."""
        from analytic import ridge_fit

        checked = [cls.probe_check_batch(b, f"batches[{i}]", classes) for i, b in enumerate(batches)]
        if not checked:
            raise ValueError("batches is empty; the head needs training examples")
        encode = nnx.jit(lambda m, ids, mask: m.encode(ids, mask))
        features = np.concatenate([np.asarray(encode(encoder, b["input_ids"], b["attention_mask"]))
                                   for b in checked])
        labels = np.concatenate([b["labels"] for b in checked])
        targets = np.eye(classes, dtype=features.dtype)[labels]
        return cls(encoder, ridge_fit(features, targets, gamma))

    @staticmethod
    def probe_check_batch(batch: Mapping[str, Any], name: str = "batch", classes: int | None = None
                          ) -> dict[str, np.ndarray]:
        out = batch_arrays(batch, _KEYS, name)
        ids, labels = out["input_ids"], out["labels"]
        if ids.ndim != 2 or ids.shape[0] == 0 or out["attention_mask"].shape != ids.shape:
            raise ValueError(f"{name}: input_ids and attention_mask must be one (batch >= 1, tokens) shape, got "
                             f"{ids.shape} and {out['attention_mask'].shape}")
        if labels.shape != ids.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name}['labels'] must be ({ids.shape[0]},) integers, got {labels.shape} {labels.dtype}")
        if labels.min() < 0 or (classes is not None and labels.max() >= classes):
            raise ValueError(f"{name}['labels'] must be in [0, {classes}), got [{labels.min()}, {labels.max()}]")
        return out

    @staticmethod
    def probe_example_losses(model: SentenceClassifier, batch: Mapping[str, jax.Array]) -> jax.Array:
        """``½ ||scores_i - onehot(y_i)||²`` per example ``(b,)``: the ridge head's own objective."""
        scores = model(batch["input_ids"], batch["attention_mask"])
        targets = jax.nn.one_hot(batch["labels"], scores.shape[-1], dtype=scores.dtype)
        return 0.5 * jnp.sum(jnp.square(scores - targets), axis=-1)

    @staticmethod
    def probe_example_weights(batch: Mapping[str, jax.Array]) -> jax.Array:
        b = batch["labels"].shape[0]
        return jnp.full((b,), 1.0 / b)
