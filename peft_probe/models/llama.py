"""Llama-family decoder (Llama 2/3, SmolLM2) in Flax NNX, laid out like Hugging Face's ``LlamaForCausalLM``.

Touvron et al., 2023, "Llama 2" (arXiv 2307.09288), Sec. 2.2: pre-norm decoder with RMSNorm (Zhang & Sennrich,
2019, eq. 4), rotary position embeddings (Su et al., 2021, "RoFormer", eq. 34, in HF's ``rotate_half`` layout),
grouped-query attention (Ainslie et al., 2023, "GQA") and a SwiGLU MLP (Shazeer, 2020, eq. 6).

Module paths follow HF/PEFT vocabulary so that ``nnx`` paths read ``model/layers/{i}/mlp/down_proj/kernel`` for
PEFT's ``model.layers.{i}.mlp.down_proj``. Linear kernels are ``(d_in, d_out)`` (flax convention), i.e. the HF
``weight`` transposed. Layers are held in an ``nnx.List`` so ``nnx.split/merge/state/grad`` see them and a child
``nnx.Linear`` can be replaced in place (LoRA injection).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from peft_probe.layer_scan import LayerRun, stack_layer_runs
from peft_probe.models.inputs import check_token_inputs

_INIT = nnx.initializers.normal(stddev=0.02)  # HF ``initializer_range`` default


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama-family decoder (names as in HF ``LlamaConfig``)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not divisible by "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if not (self.rms_norm_eps > 0 and self.rope_theta > 0):
            raise ValueError(f"rms_norm_eps={self.rms_norm_eps} and rope_theta={self.rope_theta} must be > 0")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def tiny(cls, **overrides: Any) -> LlamaConfig:
        """A small random-weight config for tests: vocab 128, hidden 64, 2 layers, 4 query / 2 KV heads."""
        kw = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
                  max_position_embeddings=256)
        return cls(**{**kw, **overrides})

    @classmethod
    def smollm2_135m(cls, **overrides: Any) -> LlamaConfig:
        """SmolLM2-135M (HuggingFaceTB/SmolLM2-135M-Instruct ``config.json``)."""
        kw = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0,
                  max_position_embeddings=8192, tie_word_embeddings=True)
        return cls(**{**kw, **overrides})


class KVCache(NamedTuple):
    """Keys and values of every layer for incremental decoding.

    key, value: ``(num_layers, batch, max_len, num_key_value_heads, head_dim)``; slots beyond the tokens written
    so far are zeros and masked out by the caller's ``key_mask``.
    """

    key: jax.Array
    value: jax.Array


def rotary_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """RoFormer eq. 34 angles ``pos * theta^(-2i/d)``, duplicated across both halves (HF layout).

    positions: ``(b, t)`` ints -> cos, sin: ``(b, t, head_dim)`` float32.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x: (b, t, heads, head_dim)`` by ``cos, sin: (b, t, head_dim)``: ``x cos + rotate_half(x) sin``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x.astype(jnp.float32) * cos[:, :, None, :] + rotated.astype(jnp.float32) * sin[:, :, None, :]
    return out.astype(x.dtype)


def grouped_query_attention(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array) -> jax.Array:
    """Softmax attention where query head ``h`` reads key/value head ``h // (H / KV)`` (GQA, Ainslie et al.).

    q: ``(b, t, H, d)``; k, v: ``(b, s, KV, d)``; allowed: ``(b, t, s)`` bool -> ``(b, t, H, d)``. Equal to
    repeating each K/V head ``H / KV`` times (HF ``repeat_kv``) without materialising the copies. A query row
    with no allowed key (a padding position) gets a uniform average instead of NaN.
    """
    b, t, num_heads, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, num_heads // kv_heads, d)
    score_dtype = jnp.promote_types(q.dtype, jnp.float32)  # softmax in at least float32, as HF does
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=score_dtype) / np.sqrt(d)
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(score_dtype).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, num_heads, d)


def _linear(d_in: int, d_out: int, config: LlamaConfig, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=False, dtype=config.dtype, param_dtype=config.param_dtype,
                      kernel_init=_INIT, rngs=rngs)


def _rms_norm(config: LlamaConfig, rngs: nnx.Rngs) -> nnx.RMSNorm:
    return nnx.RMSNorm(config.hidden_size, epsilon=config.rms_norm_eps, dtype=config.dtype,
                       param_dtype=config.param_dtype, rngs=rngs)


class LlamaAttention(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        hd, h, kv = config.head_dim, config.num_attention_heads, config.num_key_value_heads
        self.q_proj = _linear(config.hidden_size, h * hd, config, rngs)
        self.k_proj = _linear(config.hidden_size, kv * hd, config, rngs)
        self.v_proj = _linear(config.hidden_size, kv * hd, config, rngs)
        self.o_proj = _linear(h * hd, config.hidden_size, config, rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, allowed: jax.Array,
                 past: tuple[jax.Array, jax.Array] | None = None, index: jax.Array | int = 0,
                 ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x: ``(b, t, D)``; ``past`` (keys, values) ``(b, max_len, KV, d)`` get this step written at ``index``."""
        cfg = self.config
        b, t, _ = x.shape
        q = apply_rotary(self.q_proj(x).reshape(b, t, cfg.num_attention_heads, cfg.head_dim), cos, sin)
        k = apply_rotary(self.k_proj(x).reshape(b, t, cfg.num_key_value_heads, cfg.head_dim), cos, sin)
        v = self.v_proj(x).reshape(b, t, cfg.num_key_value_heads, cfg.head_dim)
        if past is not None:
            k = jax.lax.dynamic_update_slice_in_dim(past[0], k.astype(past[0].dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(past[1], v.astype(past[1].dtype), index, axis=1)
        out = grouped_query_attention(q, k, v, allowed)
        return self.o_proj(out.reshape(b, t, cfg.num_attention_heads * cfg.head_dim)), (k, v)


class LlamaMLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))`` (Shazeer, 2020, eq. 6)."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.gate_proj = _linear(config.hidden_size, config.intermediate_size, config, rngs)
        self.up_proj = _linear(config.hidden_size, config.intermediate_size, config, rngs)
        self.down_proj = _linear(config.intermediate_size, config.hidden_size, config, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = _rms_norm(config, rngs)
        self.self_attn = LlamaAttention(config, rngs=rngs)
        self.post_attention_layernorm = _rms_norm(config, rngs)
        self.mlp = LlamaMLP(config, rngs=rngs)

    def __call__(self, x, cos, sin, allowed, past=None, index=0):
        attn, kv = self.self_attn(self.input_layernorm(x), cos, sin, allowed, past, index)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class LlamaModel(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, dtype=config.dtype,
                                      param_dtype=config.param_dtype, embedding_init=_INIT, rngs=rngs)
        self.layers = nnx.List([LlamaDecoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.norm = _rms_norm(config, rngs)


class LlamaForCausalLM(nnx.Module):
    """Decoder-only language model; ``model(input_ids, attention_mask) -> logits (b, t, vocab)`` float32."""

    peft_task_type = "CAUSAL_LM"  # PEFT's task type for adapters exported from it (peft_probe.lora.export_peft)

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = LlamaModel(config, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config.hidden_size, config.vocab_size, config, rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None) -> jax.Array:
        """Causal forward pass.

        input_ids: ``(b, t)`` ints; attention_mask: ``(b, t)`` 1 = token, 0 = padding (keys at padding are
        ignored); positions: ``(b, t)`` rotary positions, default ``0..t-1`` (as HF without ``position_ids``).
        Returns logits ``(b, t, vocab)`` float32.
        """
        check_token_inputs(input_ids, attention_mask, self.config.max_position_embeddings)
        positions, allowed = _causal_inputs(input_ids, attention_mask, positions)
        logits, _ = self._forward(input_ids, positions, allowed, cache=None, index=0)
        return logits

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        """Zero keys/values for ``batch`` sequences of at most ``max_len`` tokens."""
        cfg = self.config
        shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
        return KVCache(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype))

    def decode(self, input_ids: jax.Array, positions: jax.Array, cache: KVCache, index: jax.Array | int,
               key_mask: jax.Array, layers: tuple[Any, Any] | None = None) -> tuple[jax.Array, KVCache]:
        """Run ``input_ids: (b, t)`` at cache slots ``index .. index+t-1`` with rotary ``positions: (b, t)``.

        key_mask: ``(b, max_len)`` bool, slots holding real tokens (those written now included). Query ``i``
        attends to slots ``<= index + i`` allowed by ``key_mask``. ``layers``: ``layer_runs()``, to run the
        decoder stack as one ``lax.scan`` per run. Returns (logits ``(b, t, vocab)``, cache).
        """
        t, max_len = input_ids.shape[1], cache.key.shape[2]
        causal = jnp.arange(max_len)[None, :] <= (index + jnp.arange(t))[:, None]
        allowed = causal[None] & key_mask.astype(bool)[:, None, :]
        return self._forward(input_ids, positions, allowed, cache=cache, index=index, layers=layers)

    def layer_runs(self, *filters: Any) -> tuple[list[LayerRun], list[tuple[Any, ...]]]:
        """The decoder layers as runs of equal structure with stacked states (``layer_scan.stack_layer_runs``).

        Scanning a run compiles one layer instead of ``num_hidden_layers`` unrolled copies (XLA compile time on
        CPU grows with the unrolled graph); an adapter in some layers only cuts the stack into several runs.
        Stack once, outside any loop, since stacking copies the weights.
        """
        return stack_layer_runs(self.model.layers, *filters)

    def outer_modules(self) -> dict[str, nnx.Module]:
        """The modules around the decoder stack, for ``causal_lm_logits`` on scanned layers."""
        outer = {"embed_tokens": self.model.embed_tokens, "norm": self.model.norm}
        if not self.config.tie_word_embeddings:
            outer["lm_head"] = self.lm_head
        return outer

    @staticmethod
    def logits_from_parts(config: LlamaConfig, outer: dict[str, nnx.Module], layers: tuple[Any, Any],
                          input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """``causal_lm_logits``: the hook through which ``ScannedLoraTrainer`` runs this model."""
        return causal_lm_logits(config, outer, layers, input_ids, attention_mask)

    def _forward(self, input_ids, positions, allowed, cache: KVCache | None, index, layers=None):
        stack = self.model.layers if layers is None else layers
        return _decoder(self.config, self.outer_modules(), stack, input_ids, positions, allowed, cache, index)


def causal_lm_logits(config: LlamaConfig, outer: dict[str, nnx.Module], layers: tuple[Any, Any],
                     input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """``LlamaForCausalLM.__call__`` as a function of its parts: ``outer`` from ``outer_modules()`` and
    ``layers = (runs, states)`` from ``layer_runs(...)`` (states may be traced, e.g. differentiated)."""
    positions, allowed = _causal_inputs(input_ids, attention_mask)
    return _decoder(config, outer, layers, input_ids, positions, allowed, None, 0)[0]


def _causal_inputs(input_ids: jax.Array, attention_mask: jax.Array | None, positions: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array]:
    """Rotary positions (default ``0..t-1``) and the ``(b, t, t)`` causal mask over non-padding keys."""
    b, t = input_ids.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    key_mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    return positions, jnp.tril(jnp.ones((t, t), bool))[None] & key_mask[:, None, :]


def _decoder(config: LlamaConfig, outer: dict[str, nnx.Module], layers: Any, input_ids, positions, allowed,
             cache: KVCache | None, index) -> tuple[jax.Array, KVCache | None]:
    """Embed, run the decoder stack (a list of layers, unrolled, or ``(runs, states)``, scanned), norm, project."""
    x = outer["embed_tokens"](input_ids)
    cos, sin = rotary_cos_sin(positions, config.head_dim, config.rope_theta)
    keys, values = [], []
    if isinstance(layers, tuple):
        for run, state in zip(*layers):
            def one_layer(x, per_layer, graphdef=run.graphdef):
                parts, past = per_layer
                return nnx.merge(graphdef, *parts)(x, cos, sin, allowed, past, index)

            past = None if cache is None else (cache.key[run.start:run.stop], cache.value[run.start:run.stop])
            x, (k, v) = jax.lax.scan(one_layer, x, (state, past))
            keys.append(k)
            values.append(v)
    else:
        for i, layer in enumerate(layers):
            past = None if cache is None else (cache.key[i], cache.value[i])
            x, (k, v) = layer(x, cos, sin, allowed, past, index)
            keys.append(k[None])
            values.append(v[None])
    x = outer["norm"](x)
    logits = outer["embed_tokens"].attend(x) if config.tie_word_embeddings else outer["lm_head"](x)
    new_cache = None if cache is None else KVCache(jnp.concatenate(keys), jnp.concatenate(values))
    return logits.astype(jnp.float32), new_cache
