"""Loaders: GGUF q/k un-permutation, weight assignment, and the real models against NumPy references."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from peft_probe import weights
from peft_probe.models.bert import BertConfig, BertModel
from peft_probe.models.llama import LlamaConfig, LlamaForCausalLM
from tests.peft_probe import reference


@nnx.jit
def _apply(model, ids):
    return model(ids)


@pytest.mark.parametrize(("heads", "head_dim", "d_in"), [(1, 2, 3), (3, 8, 5), (9, 64, 4)])
def test_unpermute_inverts_permute_and_permute_follows_the_pair_rule(heads, head_dim, d_in):
    w = np.random.default_rng(0).standard_normal((heads * head_dim, d_in))
    permuted = weights.permute_rotary_rows(w, heads)
    np.testing.assert_array_equal(weights.unpermute_rotary_rows(permuted, heads), w)
    np.testing.assert_array_equal(weights.permute_rotary_rows(weights.unpermute_rotary_rows(w, heads), heads), w)
    half = head_dim // 2
    for h in range(heads):  # HF row (half j, pair i) of head h sits at GGUF row 2i + j of that head
        for i in range(half):
            for j in range(2):
                np.testing.assert_array_equal(permuted[h * head_dim + 2 * i + j], w[h * head_dim + j * half + i])


def test_interleaved_rotary_on_permuted_rows_gives_hf_attention_scores():
    # Why the permutation exists: llama.cpp's adjacent-pair rotary applied to permuted q/k rows must give the
    # same q.k scores as HF's half-split rotary on the original rows (float64, rounding only).
    rng = np.random.default_rng(1)
    heads, hd, d_in, t = 2, 8, 6, 5
    wq, wk = rng.standard_normal((2, heads * hd, d_in))
    x = rng.standard_normal((t, d_in))

    def scores(wq, wk, rope):
        q = reference.rotate((x @ wq.T).reshape(t, heads, hd), 10000.0, rope)
        k = reference.rotate((x @ wk.T).reshape(t, heads, hd), 10000.0, rope)
        return np.einsum("thd,shd->hts", q, k)

    hf = scores(wq, wk, "half")
    gguf = scores(weights.permute_rotary_rows(wq, heads), weights.permute_rotary_rows(wk, heads), "interleaved")
    np.testing.assert_allclose(gguf, hf, rtol=1e-12, atol=1e-12)
    assert np.abs(scores(wq, wk, "interleaved") - hf).max() > 1e-3  # without the permutation they differ


def test_permutation_rejects_odd_head_split():
    with pytest.raises(ValueError, match="num_heads=3"):
        weights.unpermute_rotary_rows(np.zeros((10, 4)), 3)


def test_assign_weights_names_missing_and_misshaped_entries():
    config = LlamaConfig.tiny()
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
    arrays = {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}

    def factory():
        return LlamaForCausalLM(config, rngs=nnx.Rngs(1))

    rebuilt = weights.assign_weights(factory, arrays, jnp.float32)
    ids = jnp.arange(6, dtype=jnp.int32)[None]
    np.testing.assert_array_equal(np.asarray(_apply(rebuilt, ids)), np.asarray(_apply(model, ids)))
    with pytest.raises(ValueError, match="missing.*model/norm/scale"):
        weights.assign_weights(factory, {k: v for k, v in arrays.items() if k != "model/norm/scale"}, jnp.float32)
    bad = dict(arrays, **{"model/norm/scale": np.ones(3)})
    with pytest.raises(ValueError, match=r"model/norm/scale.*\(3,\)"):
        weights.assign_weights(factory, bad, jnp.float32)


def test_safetensors_round_trip_of_a_tiny_bert(tmp_path):
    from safetensors.numpy import save_file

    config = BertConfig.tiny()
    model = BertModel(config, rngs=nnx.Rngs(3))
    hf = reference.hf_tensors(model)  # the tiny model in HF names and layout, as transformers saves it
    hf["embeddings.position_ids"] = np.arange(64)[None]
    save_file(hf, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(dict(
        model_type="bert", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12,
        hidden_act="gelu")))
    loaded_config, loaded = weights.load_safetensors(tmp_path)
    assert loaded_config == config
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 7)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(_apply(loaded, ids)), np.asarray(_apply(model, ids)))


def test_missing_weight_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        weights.load_gguf(tmp_path / "absent.gguf")
    with pytest.raises(FileNotFoundError, match="config.json"):
        weights.load_safetensors(tmp_path)


@pytest.mark.slow
def test_gguf_header_gives_the_smollm2_135m_config(smollm2):
    config, _, _ = smollm2
    expected = LlamaConfig.smollm2_135m()
    assert dataclasses_without(config, "rms_norm_eps") == dataclasses_without(expected, "rms_norm_eps")
    assert config.rms_norm_eps == pytest.approx(1e-5, rel=1e-6)  # stored as float32 in the header


def dataclasses_without(config, field):
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(config).items() if k != field}


@pytest.mark.slow
def test_smollm2_logits_match_numpy_llama_on_raw_gguf_tensors(smollm2):
    import gguf

    from peft_probe.generate import causal_logits

    config, model, tok = smollm2
    reader = weights.gguf_reader()
    raw = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}  # float32; x is float64
    names = dict(q="attn_q", k="attn_k", v="attn_v", o="attn_output", gate="ffn_gate", up="ffn_up",
                 down="ffn_down", attn_norm="attn_norm", ffn_norm="ffn_norm")
    w = {"embed": raw["token_embd.weight"], "norm": raw["output_norm.weight"],
         "layers": [{k: raw[f"blk.{i}.{n}.weight"] for k, n in names.items()}
                    for i in range(config.num_hidden_layers)]}
    ids = np.asarray(tok("The capital of France is Paris.")["input_ids"])
    # q/k stay in llama.cpp's row order here, rotated by adjacent pairs: independent of unpermute_rotary_rows.
    want = reference.llama_logits(w, ids, config.num_attention_heads, config.num_key_value_heads,
                                  config.rms_norm_eps, config.rope_theta, rope="interleaved")
    got = causal_logits(model, ids[None])[0]  # the compiled forward the perplexity test uses too
    # float32 through 30 layers against float64: logits (scale ~20) agree to ~1e-3.
    np.testing.assert_allclose(got, want, atol=5e-3 * np.abs(want).max())
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.slow
def test_minilm_hidden_states_match_numpy_bert_on_hf_tensors(minilm):
    from safetensors.numpy import load_file

    config, model, tok = minilm
    raw = load_file(weights.minilm_dir() / "model.safetensors")
    ids = np.asarray(tok("Analytic learning solves a ridge regression in closed form.")["input_ids"])
    want = reference.bert_hidden(raw, ids, config.num_hidden_layers, config.num_attention_heads,
                                 config.layer_norm_eps)
    got = np.asarray(_apply(model, jnp.asarray(ids[None], jnp.int32)))[0]
    np.testing.assert_allclose(got, want, atol=1e-4)  # float32 vs float64 through 6 post-norm layers
