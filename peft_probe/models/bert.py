"""BERT encoder in Flax NNX with HF/PEFT module paths, plus sentence-transformers mean pooling.

Devlin et al., 2019, "BERT" (arXiv 1810.04805), Sec. 3: post-norm Transformer encoder (Vaswani et al., 2017,
eq. 1 attention) over word + position + segment embeddings. Sentence embeddings follow Reimers & Gurevych, 2019,
"Sentence-BERT" (arXiv 1908.10084), Sec. 3: the mean of the token outputs over the attention mask, L2-normalised
as all-MiniLM-L6-v2's ``Normalize`` module does.

Paths read ``encoder/layer/{i}/attention/self/query/kernel`` for HF's ``encoder.layer.{i}.attention.self.query``;
kernels are ``(d_in, d_out)``, the HF ``weight`` transposed. Inference only: no dropout.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from peft_probe.models.inputs import check_token_inputs

_INIT = nnx.initializers.normal(stddev=0.02)  # HF ``initializer_range`` default


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder (names as in HF ``BertConfig``)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")

    @classmethod
    def tiny(cls, **overrides: Any) -> BertConfig:
        """A small random-weight config for tests: vocab 128, hidden 32, 2 layers, 4 heads."""
        kw = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64)
        return cls(**{**kw, **overrides})

    @classmethod
    def minilm_l6(cls, **overrides: Any) -> BertConfig:
        """all-MiniLM-L6-v2 (``nreimers/MiniLM-L6-H384-uncased``): 6 layers, hidden 384, 12 heads."""
        kw = dict(vocab_size=30522, hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                  num_attention_heads=12, max_position_embeddings=512)
        return cls(**{**kw, **overrides})


def _dense(d_in: int, d_out: int, config: BertConfig, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, dtype=config.dtype, param_dtype=config.param_dtype, kernel_init=_INIT, rngs=rngs)


def _layer_norm(config: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, dtype=config.dtype,
                         param_dtype=config.param_dtype, rngs=rngs)


def _embed(n: int, config: BertConfig, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(n, config.hidden_size, dtype=config.dtype, param_dtype=config.param_dtype,
                     embedding_init=_INIT, rngs=rngs)


class BertEmbeddings(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.word_embeddings = _embed(config.vocab_size, config, rngs)
        self.position_embeddings = _embed(config.max_position_embeddings, config, rngs)
        self.token_type_embeddings = _embed(config.type_vocab_size, config, rngs)
        self.LayerNorm = _layer_norm(config, rngs)

    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        positions = jnp.arange(input_ids.shape[1], dtype=jnp.int32)[None]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.LayerNorm(x + self.token_type_embeddings(token_type_ids))


class BertSelfAttention(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.num_heads = config.num_attention_heads
        self.query = _dense(config.hidden_size, config.hidden_size, config, rngs)
        self.key = _dense(config.hidden_size, config.hidden_size, config, rngs)
        self.value = _dense(config.hidden_size, config.hidden_size, config, rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        b, t, d = x.shape
        h = self.num_heads
        q, k, v = (proj(x).reshape(b, t, h, d // h) for proj in (self.query, self.key, self.value))
        score_dtype = jnp.promote_types(q.dtype, jnp.float32)
        scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=score_dtype) / np.sqrt(d // h)
        scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(score_dtype).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        return jnp.einsum("bhts,bshd->bthd", probs, v).reshape(b, t, d)


class BertResidualOutput(nnx.Module):
    """``LayerNorm(dense(h) + residual)``: HF's ``BertSelfOutput`` (d_in = hidden) and ``BertOutput``
    (d_in = intermediate) have this same form."""

    def __init__(self, d_in: int, config: BertConfig, *, rngs: nnx.Rngs):
        self.dense = _dense(d_in, config.hidden_size, config, rngs)
        self.LayerNorm = _layer_norm(config, rngs)

    def __call__(self, h: jax.Array, residual: jax.Array) -> jax.Array:
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.self = BertSelfAttention(config, rngs=rngs)
        self.output = BertResidualOutput(config.hidden_size, config, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        return self.output(self.self(x, key_mask), x)


class BertIntermediate(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.dense = _dense(config.hidden_size, config.intermediate_size, config, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(self.dense(x), approximate=False)  # HF "gelu" is the exact erf form


class BertLayer(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.attention = BertAttention(config, rngs=rngs)
        self.intermediate = BertIntermediate(config, rngs=rngs)
        self.output = BertResidualOutput(config.intermediate_size, config, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        x = self.attention(x, key_mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.layer = nnx.List([BertLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])


class BertModel(nnx.Module):
    """``model(input_ids, attention_mask, token_type_ids) -> (b, t, hidden)``; ``encode`` gives sentence vectors."""

    peft_task_type = "FEATURE_EXTRACTION"  # an encoder: PEFT loads its adapters as PeftModelForFeatureExtraction

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = BertEmbeddings(config, rngs=rngs)
        self.encoder = BertEncoder(config, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None) -> jax.Array:
        """input_ids, attention_mask (1 = token, 0 = padding), token_type_ids: ``(b, t)`` -> ``(b, t, hidden)``."""
        check_token_inputs(input_ids, attention_mask, self.config.max_position_embeddings)
        key_mask = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask.astype(bool)
        if token_type_ids is None:
            token_type_ids = jnp.zeros(input_ids.shape, jnp.int32)
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder.layer:
            x = layer(x, key_mask)
        return x

    def encode(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               normalize: bool = True) -> jax.Array:
        """Sentence-BERT embeddings ``(b, hidden)``: masked mean of token outputs, then L2-normalised."""
        hidden = self(input_ids, attention_mask)
        mask = jnp.ones(input_ids.shape, hidden.dtype) if attention_mask is None else attention_mask.astype(
            hidden.dtype)
        pooled = (hidden * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1e-9)
        if not normalize:
            return pooled
        return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
