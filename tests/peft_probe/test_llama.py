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
from tests.peft_probe import reference


@pytest.fixture(scope="module")
def tiny() -> LlamaForCausalLM:
    model = LlamaForCausalLM(LlamaConfig.tiny(), rngs=nnx.Rngs(0))
    # HF's 0.02 init makes every layer nearly the identity; scale up so attention and MLP really mix tokens.
    nnx.update(model, jax.tree.map(lambda v: v * 10.0 if v.ndim == 2 else v, nnx.state(model, nnx.Param)))
    return model


# One compiled forward per model structure: op-by-op eager execution would compile every primitive per shape.
@nnx.jit
def _logits(model, ids, mask, positions):
    return model(ids, mask, positions)


def forward(model, ids, mask=None, positions=None):
    b, t = ids.shape
    mask = jnp.ones((b, t), jnp.int32) if mask is None else mask
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)) if positions is None else positions
    return np.asarray(_logits(model, ids, mask, positions))


_decode = nnx.jit(lambda model, ids, positions, cache, index, key_mask: model.decode(ids, positions, cache, index,
                                                                                   key_mask))


def _ids(b: int, t: int, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, 128, (b, t)), jnp.int32)


def test_logits_are_float32_with_vocab_width_even_under_x64(tiny):
    logits = _logits(tiny, _ids(2, 8), jnp.ones((2, 8), jnp.int32), jnp.zeros((2, 8), jnp.int32))
    assert logits.shape == (2, 8, 128)
    assert logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(tiny, nnx.Param)))
    assert np.isfinite(np.asarray(logits)).all()


def test_changing_a_future_token_leaves_past_logits_unchanged(tiny):
    ids = _ids(2, 8)
    changed = ids.at[:, 5].set((ids[:, 5] + 1) % 128)
    a, b = forward(tiny, ids), forward(tiny, changed)
    np.testing.assert_array_equal(a[:, :5], b[:, :5])  # positions before 5 never see token 5: bitwise equal
    assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-4  # and the change does reach later positions


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
    ids = _ids(2, 8, seed=4)
    full = forward(tiny, ids)
    cache = tiny.init_cache(2, 10)
    key_mask = jnp.zeros((2, 10), bool).at[:, :5].set(True)
    pos = jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32), (2, 8))
    logits, cache = _decode(tiny, ids[:, :5], pos[:, :5], cache, jnp.int32(0), key_mask)
    steps = [np.asarray(logits)]
    for i in range(5, 8):
        key_mask = key_mask.at[:, i].set(True)
        logits, cache = _decode(tiny, ids[:, i:i + 1], pos[:, i:i + 1], cache, jnp.int32(i), key_mask)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4)  # float32 summation order only


def test_right_padding_does_not_change_real_token_logits(tiny):
    ids = _ids(2, 8, seed=5)
    mask = jnp.array([[1] * 8, [1] * 5 + [0] * 3], jnp.int32)
    padded = jnp.where(mask == 1, ids, 0)
    got, want = forward(tiny, padded, mask), forward(tiny, ids)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_allclose(got[1, :5], want[1, :5], atol=1e-5)


def test_left_padding_with_shifted_positions_matches_unpadded(tiny):
    ids = _ids(2, 8, seed=6)
    mask = jnp.array([[1] * 8, [0] * 3 + [1] * 5], jnp.int32)
    shifted = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), ids[1:, :5]], axis=1)
    padded = jnp.concatenate([ids[:1], shifted], axis=0)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    got = forward(tiny, padded, mask, positions)
    np.testing.assert_allclose(got[1, 3:], forward(tiny, ids)[1, :5], atol=1e-4)
    assert np.isfinite(got).all()  # padding queries attend to nothing: uniform average, not NaN


def test_peft_paths_split_merge_and_module_replacement(tiny):
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(tiny, nnx.Param))}
    for i in range(2):
        for name in ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj", "self_attn/o_proj",
                     "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj"):
            assert f"model/layers/{i}/{name}/kernel" in paths
    assert tiny.model.layers[0].mlp.down_proj.kernel.shape == (128, 64)  # (d_in, d_out): HF weight.T
    ids = _ids(2, 8, seed=7)
    graphdef, state = nnx.split(tiny)
    np.testing.assert_array_equal(forward(nnx.merge(graphdef, state), ids), forward(tiny, ids))

    class AddShift(nnx.Module):
        def __init__(self, base):
            self.base = base
            self.shift = nnx.Param(jnp.zeros((64,), jnp.float32))

        def __call__(self, x):
            return self.base(x) + self.shift

    model = nnx.clone(tiny)  # a deep copy: merge(split()) would share Variables with the fixture
    model.model.layers[1].mlp.down_proj = AddShift(model.model.layers[1].mlp.down_proj)
    np.testing.assert_allclose(forward(model, ids), forward(tiny, ids), atol=1e-6)

    @nnx.jit
    def grads(m):
        return nnx.grad(lambda m: forward_sum(m, ids), argnums=nnx.DiffState(0, nnx.Param))(m)

    g = grads(model)
    assert np.abs(np.asarray(g["model"]["layers"][1]["mlp"]["down_proj"]["shift"][...])).max() > 0


def forward_sum(model, ids):
    return model(ids).sum()


@pytest.mark.parametrize(("ids", "mask", "error", "match"), [
    (np.zeros((8,), np.int32), None, ValueError, r"shape \(batch, tokens\)"),
    (np.zeros((1, 8), np.float32), None, TypeError, "integer token ids"),
    (np.zeros((2, 8), np.int32), np.ones((2, 7), np.int32), ValueError, "attention_mask has shape"),
    (np.zeros((1, 257), np.int32), None, ValueError, "max_position_embeddings=256"),
])
def test_bad_token_inputs_are_rejected_before_any_compute(tiny, ids, mask, error, match):
    with pytest.raises(error, match=match):
        tiny(jnp.asarray(ids), None if mask is None else jnp.asarray(mask))
    with pytest.raises(error, match=match):  # the same checks hold under jit (they read static shapes only)
        _logits(tiny, jnp.asarray(ids), None if mask is None else jnp.asarray(mask), None)


@pytest.mark.parametrize("bad", [dict(hidden_size=65), dict(num_key_value_heads=3), dict(vocab_size=0)])
def test_inconsistent_config_is_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LlamaConfig.tiny(**bad)


# ------------------------------------------------------------------------------------ independent reference
def _hf_weights(model: LlamaForCausalLM) -> dict:
    """The model's parameters in HF layout (``weight = kernel.T``) for the NumPy reference."""
    m = model.model
    layers = []
    for layer in m.layers:
        a, f = layer.self_attn, layer.mlp
        layers.append({
            "q": a.q_proj.kernel[...].T, "k": a.k_proj.kernel[...].T, "v": a.v_proj.kernel[...].T,
            "o": a.o_proj.kernel[...].T, "gate": f.gate_proj.kernel[...].T, "up": f.up_proj.kernel[...].T,
            "down": f.down_proj.kernel[...].T, "attn_norm": layer.input_layernorm.scale[...],
            "ffn_norm": layer.post_attention_layernorm.scale[...]})
    return jax.tree.map(np.asarray, {"embed": m.embed_tokens.embedding[...], "norm": m.norm.scale[...],
                                     "layers": layers})


def test_float64_model_equals_numpy_llama_reference():
    config = LlamaConfig.tiny(dtype=jnp.float64, param_dtype=jnp.float64)
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(1))
    # HF's 0.02 init makes every layer nearly the identity; scale up so attention and MLP really mix tokens.
    nnx.update(model, jax.tree.map(lambda v: v * 10.0 if v.ndim == 2 else v, nnx.state(model, nnx.Param)))
    ids = np.random.default_rng(8).integers(0, 128, 9)
    want = reference.llama_logits(_hf_weights(model), ids, 4, 2, config.rms_norm_eps, config.rope_theta)
    got = forward(model, jnp.asarray(ids[None], jnp.int32))[0]
    # Logits are cast to float32 on output (the interface promises float32 logits): relative 1e-6.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert np.abs(want).max() > 1.0  # a non-trivial comparison


# --------------------------------------------------------------------------------------------- generation
def _naive_greedy(model, prompt, steps, width=16):
    # Full recompute every step; right padding to a fixed width keeps one compiled shape (causality makes the
    # logits at the last real token independent of the padding after it).
    ids = list(prompt)
    for _ in range(steps):
        padded = jnp.asarray([ids + [0] * (width - len(ids))], jnp.int32)
        ids.append(int(forward(model, padded)[0, len(ids) - 1].argmax()))
    return ids[len(prompt):]


def test_cached_greedy_generation_equals_full_recompute_and_ignores_left_padding(tiny):
    from peft_probe.generate import greedy_generate

    prompts = [[5, 17, 99, 3], [42, 7, 7, 1, 60, 2, 9]]
    batch = greedy_generate(tiny, prompts, max_new_tokens=6)
    assert batch == [_naive_greedy(tiny, p, 6) for p in prompts]
    assert len(set(map(tuple, batch))) == 2  # the two continuations really differ
    assert greedy_generate(tiny, prompts, max_new_tokens=6, scan_layers=True) == batch  # lax.scan over layers
    stopped = greedy_generate(tiny, [prompts[0]], max_new_tokens=6, eos_token_id=batch[0][2])
    assert stopped == [batch[0][:batch[0].index(batch[0][2])]]


def test_generation_scans_one_run_per_block_of_equal_layers(tiny):
    from peft_probe.generate import greedy_generate

    class Scaled(nnx.Module):  # stands in for an adapter injected into one layer only
        def __init__(self, base):
            self.base = base

        def __call__(self, x):
            return 2.0 * self.base(x)

    runs, states = tiny.layer_runs()
    assert [(r.start, r.stop) for r in runs] == [(0, 2)]
    assert jax.tree.leaves(states[0])[0].shape[0] == 2
    model = nnx.clone(tiny)
    model.model.layers[0].mlp.down_proj = Scaled(model.model.layers[0].mlp.down_proj)
    assert [(r.start, r.stop) for r in model.layer_runs()[0]] == [(0, 1), (1, 2)]
    prompt = [5, 17, 99, 3]
    expected = _naive_greedy(model, prompt, 4)
    assert expected != _naive_greedy(tiny, prompt, 4)  # the scaled layer changes the answer, so runs matter
    assert greedy_generate(model, [prompt], max_new_tokens=4, scan_layers=True) == [expected]


@pytest.mark.parametrize(("prompts", "steps", "error", "match"), [
    ([], 3, ValueError, "prompts is empty"),
    ([[1, 2], []], 3, ValueError, r"prompts\[1\]"),
    ([[1, 200]], 3, ValueError, r"outside \[0, 128\)"),
    ([[1.5, 2.0]], 3, TypeError, "integer"),
    ([[1, 2]], 0, ValueError, "max_new_tokens"),
])
def test_generation_rejects_bad_input(tiny, prompts, steps, error, match):
    from peft_probe.generate import greedy_generate

    with pytest.raises(error, match=match):
        greedy_generate(tiny, prompts, max_new_tokens=steps)


def test_bucketed_logits_and_token_nll_match_a_direct_computation(tiny):
    from scipy.special import log_softmax

    from peft_probe.generate import causal_logits, mean_token_nll

    ids = np.asarray(_ids(2, 8, seed=9))
    mask = np.array([[1] * 8, [1] * 6 + [0] * 2])
    direct = forward(tiny, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(causal_logits(tiny, ids, mask), direct, atol=1e-5)  # padded to 64 inside
    logp = log_softmax(direct[:, :-1].astype(np.float64), axis=-1)
    picked = np.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    want = -(picked[0].sum() + picked[1, :5].sum()) / 12  # 7 + 5 predicted tokens
    assert mean_token_nll(tiny, ids, mask) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="tokens >= 2"):
        mean_token_nll(tiny, ids[:, :1])


# ------------------------------------------------------------------------------------------- real weights
ENGLISH = ("The history of science is the study of the development of science and scientific knowledge, "
           "including both the natural and social sciences. Science is a body of empirical, theoretical, and "
           "practical knowledge about the natural world, produced by scientists who emphasize the observation, "
           "explanation, and prediction of real-world phenomena.")


@pytest.mark.slow
def test_smollm2_answers_factual_questions_greedily(smollm2):
    from peft_probe.generate import greedy_generate

    _, model, tok = smollm2
    questions = ["What is the capital of France?", "What is 2 + 2?"]
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=False))["input_ids"] for q in questions]
    # scan_layers: one compiled layer instead of 30 (the tiny tests check scan == unrolled)
    answers = [tok.decode(a, skip_special_tokens=True)
               for a in greedy_generate(model, prompts, 20, eos_token_id=tok.eos_token_id, scan_layers=True)]
    assert "Paris" in answers[0], answers
    assert "4" in answers[1], answers


@pytest.mark.slow
def test_smollm2_perplexity_is_low_on_english_and_high_when_broken(smollm2):
    from peft_probe.generate import mean_token_nll
    from peft_probe.weights import permute_rotary_rows

    config, model, tok = smollm2
    ids = np.asarray([tok(ENGLISH)["input_ids"]])
    ppl = np.exp(mean_token_nll(model, ids))
    shuffled = ids.copy()
    np.random.default_rng(0).shuffle(shuffled[0])
    ppl_shuffled = np.exp(mean_token_nll(model, shuffled))
    # Skipping the GGUF q/k un-permutation scrambles rotary pairs: the loader would be silently wrong.
    broken = nnx.clone(model)  # merge(split(model)) would share the Variables
    for layer in broken.model.layers:
        for proj, heads in ((layer.self_attn.q_proj, config.num_attention_heads),
                            (layer.self_attn.k_proj, config.num_key_value_heads)):
            proj.kernel[...] = jnp.asarray(permute_rotary_rows(np.asarray(proj.kernel[...]).T, heads).T)
    ppl_broken = np.exp(mean_token_nll(broken, ids))
    print(f"SmolLM2-135M perplexity: english {ppl:.2f}, shuffled {ppl_shuffled:.1f}, no q/k unpermute "
          f"{ppl_broken:.1f}")
    assert ppl < 60
    assert ppl_shuffled > 10 * ppl
    assert ppl_broken > 2 * ppl
    assert np.exp(mean_token_nll(model, ids)) == ppl  # the shared fixture was not touched by the broken copy
