"""A sentence classifier over a BERT encoder whose head is fitted in closed form: the second model family PAGE
and LoRA probe (an encoder next to the Llama decoder).

The head is ridge regression on the encoder's Sentence-BERT embeddings (Reimers & Gurevych, 2019, Sec. 3) to
one-hot targets, ``W = (ΦᵀΦ + γI)⁻¹ΦᵀY`` (``analytic.ridge_fit``), and the model's objective is the head's own,
``L = (1/b) Σ_i ½ ||φ(x_i) W - y_i||²``: PAGE measures where an adapter in the encoder would first move the fitted
head's error, and ``training.finetune`` trains the encoder's adapters on the same loss with the head held fixed.
After fine-tuning, ``refit_head`` solves the head again in closed form on the adapted features, so placements are
compared with the head that is optimal for their features. All-linear LoRA skips the head (``classifier``,
PEFT's rule).
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
        return cls(encoder, _ridge_head(encoder, batches, classes, gamma))

    def refit_head(self, batches: Sequence[Mapping[str, Any]], gamma: float = 1e-2) -> None:
        """Solve the head again in closed form on the current (e.g. adapted) encoder's embeddings of ``batches``."""
        head = _ridge_head(self.encoder, batches, self.classes, gamma)
        self.classifier.kernel[...] = head.astype(self.classifier.kernel.dtype)

    def accuracy(self, batches: Sequence[Mapping[str, Any]]) -> float:
        """The fraction of examples in ``batches`` whose highest score is their label."""
        checked = [self.objective_check_batch(b, f"batches[{i}]") for i, b in enumerate(batches)]
        scores = np.concatenate([np.asarray(_scores(self, jnp.asarray(b["input_ids"]), jnp.asarray(
            b["attention_mask"]))) for b in checked])
        return float(np.mean(scores.argmax(1) == np.concatenate([b["labels"] for b in checked])))

    def objective_check_batch(self, batch: Mapping[str, Any], name: str = "batch") -> dict[str, np.ndarray]:
        """``batch`` as NumPy arrays, or a ``ValueError`` naming the bad key (labels must be in [0, classes))."""
        return _check_batch(batch, name, self.classes)

    @staticmethod
    def objective_example_losses(model: SentenceClassifier, batch: Mapping[str, jax.Array]) -> jax.Array:
        """``½ ||scores_i - onehot(y_i)||²`` per example ``(b,)``: the ridge head's own objective."""
        scores = model(batch["input_ids"], batch["attention_mask"])
        targets = jax.nn.one_hot(batch["labels"], scores.shape[-1], dtype=scores.dtype)
        return 0.5 * jnp.sum(jnp.square(scores - targets), axis=-1)

    @staticmethod
    def objective_example_weights(batch: Mapping[str, jax.Array]) -> jax.Array:
        b = batch["labels"].shape[0]
        return jnp.full((b,), 1.0 / b)


def _check_batch(batch: Mapping[str, Any], name: str, classes: int) -> dict[str, np.ndarray]:
    out = batch_arrays(batch, _KEYS, name)
    ids, labels = out["input_ids"], out["labels"]
    if ids.ndim != 2 or ids.shape[0] == 0 or out["attention_mask"].shape != ids.shape:
        raise ValueError(f"{name}: input_ids and attention_mask must be one (batch >= 1, tokens) shape, got "
                         f"{ids.shape} and {out['attention_mask'].shape}")
    if labels.shape != ids.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}['labels'] must be ({ids.shape[0]},) integers, got {labels.shape} {labels.dtype}")
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"{name}['labels'] must be in [0, {classes}), got [{labels.min()}, {labels.max()}]")
    return out


@nnx.jit
def _encode(encoder: BertModel, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    return encoder.encode(input_ids, attention_mask)


@nnx.jit
def _scores(model: SentenceClassifier, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    return model(input_ids, attention_mask)


def _ridge_head(encoder: BertModel, batches: Sequence[Mapping[str, Any]], classes: int, gamma: float) -> jax.Array:
    from analytic import ridge_fit

    checked = [_check_batch(b, f"batches[{i}]", classes) for i, b in enumerate(batches)]
    if not checked:
        raise ValueError("batches is empty; the head needs training examples")
    features = np.concatenate([np.asarray(_encode(encoder, jnp.asarray(b["input_ids"]),
                                                  jnp.asarray(b["attention_mask"]))) for b in checked])
    labels = np.concatenate([b["labels"] for b in checked])
    return ridge_fit(features, np.eye(classes, dtype=features.dtype)[labels], gamma)
