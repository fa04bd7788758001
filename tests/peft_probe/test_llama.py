"""Tiny random-weight Llama: shapes, causality, GQA, rotary embeddings, KV cache, padding and NNX surgery."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from peft_probe.models.llama import (
    LlamaConfig,
    LlamaForCausalLM,
    apply_rotary,
    grouped_query_attention,
    rotary_cos_sin,
)


@pytest.fixture(scope="module")
def tiny() -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig.tiny(), rngs=nnx.Rngs(0))


def _ids(b: int, t: int, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, 128, (b, t)), jnp.int32)


def test_logits_are_float32_with_vocab_width_even_under_x64(tiny):
    logits = tiny(_ids(2, 7))
    assert logits.shape == (2, 7, 128)
    assert logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(tiny, nnx.Param)))
    assert np.isfinite(np.asarray(logits)).all()


def test_changing_a_future_token_leaves_past_logits_unchanged(tiny):
    ids = _ids(1, 9)
    changed = ids.at[0, 6].set((ids[0, 6] + 1) % 128)
    a, b = np.asarray(tiny(ids)), np.asarray(tiny(changed))
    np.testing.assert_array_equal(a[:, :6], b[:, :6])  # positions before 6 never see token 6: bitwise equal
    assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-4  # and the change does reach later positions


def test_gqa_equals_attention_with_repeated_kv_heads():
    rng = np.random.default_rng(1)
    b, t, h, kv, d = 2, 5, 6, 2, 8
    q = rng.standard_normal((b, t, h, d))
    k = rng.standard_normal((b, t, kv, d))
    v = rng.standard_normal((b, t, kv, d))
    allowed = np.tril(np.ones((t, t), bool))[None].repeat(b, 0)
    got = np.asarray(grouped_query_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(allowed)))
    # Independent float64 reference: HF repeat_kv (head h reads kv head h // (H/KV)) then plain softmax attention.
    k_rep, v_rep = np.repeat(k, h // kv, axis=2), np.repeat(v, h // kv, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k_rep) / np.sqrt(d)
    scores = np.where(allowed[:, None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    want = np.einsum("bhts,bshd->bthd", probs, v_rep)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)  # float64 inputs: rounding only


def test_rotary_matches_pairwise_2d_rotation_in_numpy():
    rng = np.random.default_rng(2)
    b, t, h, d, theta = 2, 6, 3, 16, 10000.0
    x = rng.standard_normal((b, t, h, d))
    pos = rng.integers(0, 500, (b, t))
    cos, sin = rotary_cos_sin(jnp.asarray(pos, jnp.int32), d, theta)
    got = np.asarray(apply_rotary(jnp.asarray(x, jnp.float32), cos, sin))
    # RoFormer eq. 34 in HF's half-split layout: coordinate i pairs with i + d/2 and turns by pos * theta^(-2i/d).
    want = np.empty_like(x)
    for i in range(d // 2):
        ang = pos[..., None] * theta ** (-2.0 * i / d)
        c, s = np.cos(ang), np.sin(ang)
        x1, x2 = x[..., i], x[..., i + d // 2]
        want[..., i] = x1 * c - x2 * s
        want[..., i + d // 2] = x2 * c + x1 * s
    # float32 angles up to 500 rad: absolute angle error ~ 500 * 6e-8, so 1e-4 on unit-scale outputs.
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_rotary_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.standard_normal((1, 1, 1, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 1, 8)), jnp.float32)

    def score(pq, pk):
        cq, sq = rotary_cos_sin(jnp.array([[pq]], jnp.int32), 8, 10000.0)
        ck, sk = rotary_cos_sin(jnp.array([[pk]], jnp.int32), 8, 10000.0)
        return float(jnp.sum(apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)))

    assert abs(score(7, 3) - score(40, 36)) < 1e-4
    assert abs(score(7, 3) - score(7, 5)) > 1e-3


def test_kv_cache_decoding_equals_full_forward(tiny):
    ids = _ids(2, 10, seed=4)
    full = np.asarray(tiny(ids))
    cache = tiny.init_cache(2, 12)
    key_mask = jnp.zeros((2, 12), bool).at[:, :6].set(True)
    pos = jnp.broadcast_to(jnp.arange(10, dtype=jnp.int32), (2, 10))
    logits, cache = tiny.decode(ids[:, :6], pos[:, :6], cache, 0, key_mask)
    steps = [np.asarray(logits)]
    for i in range(6, 10):
        key_mask = key_mask.at[:, i].set(True)
        logits, cache = tiny.decode(ids[:, i:i + 1], pos[:, i:i + 1], cache, i, key_mask)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)  # float32 summation order only


def test_right_padding_does_not_change_real_token_logits(tiny):
    ids = _ids(1, 5, seed=5)
    padded = jnp.concatenate([ids, jnp.zeros((1, 3), jnp.int32)], axis=1)
    mask = jnp.array([[1, 1, 1, 1, 1, 0, 0, 0]], jnp.int32)
    np.testing.assert_allclose(np.asarray(tiny(padded, mask))[:, :5], np.asarray(tiny(ids)), atol=1e-6)


def test_left_padding_with_shifted_positions_matches_unpadded(tiny):
    ids = _ids(1, 5, seed=6)
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), ids], axis=1)
    mask = jnp.array([[0, 0, 0, 1, 1, 1, 1, 1]], jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    got = np.asarray(tiny(padded, mask, positions))
    np.testing.assert_allclose(got[:, 3:], np.asarray(tiny(ids)), atol=1e-5)
    assert np.isfinite(got).all()  # padding queries attend to nothing: uniform average, not NaN


def test_peft_paths_split_merge_and_module_replacement(tiny):
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(tiny, nnx.Param))}
    for i in range(2):
        for name in ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj", "self_attn/o_proj",
                     "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj"):
            assert f"model/layers/{i}/{name}/kernel" in paths
    assert tiny.model.layers[0].mlp.down_proj.kernel.shape == (128, 64)  # (d_in, d_out): HF weight.T
    ids = _ids(1, 4, seed=7)
    graphdef, state = nnx.split(tiny)
    np.testing.assert_array_equal(np.asarray(nnx.merge(graphdef, state)(ids)), np.asarray(tiny(ids)))

    class AddOne(nnx.Module):
        def __init__(self, base):
            self.base = base
            self.shift = nnx.Param(jnp.zeros((64,), jnp.float32))

        def __call__(self, x):
            return self.base(x) + self.shift

    model = nnx.merge(graphdef, state)  # a copy: the shared fixture stays untouched
    model.model.layers[1].mlp.down_proj = AddOne(model.model.layers[1].mlp.down_proj)
    np.testing.assert_allclose(np.asarray(model(ids)), np.asarray(tiny(ids)), atol=1e-6)
    grads = nnx.grad(lambda m: m(ids).sum(), argnums=nnx.DiffState(0, nnx.Param))(model)
    assert np.abs(np.asarray(grads["model"]["layers"][1]["mlp"]["down_proj"]["shift"][...])).max() > 0


@pytest.mark.parametrize("bad", [dict(hidden_size=65), dict(num_key_value_heads=3), dict(vocab_size=0)])
def test_inconsistent_config_is_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LlamaConfig.tiny(**bad)
