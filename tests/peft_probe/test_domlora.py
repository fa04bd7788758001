"""DomLoRA: the dominant module is PAGE's argmax and the config places exactly one adapter there."""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from flax import nnx

from peft_probe.domlora import dominant_module, domlora_config, top_k_config
from peft_probe.lora import ALL_LINEAR, LoraConfig, inject_lora, lora_modules, module_layer, trainable_count
from peft_probe.models.llama import LlamaConfig
from peft_probe.page import ModuleScore, PageScores, page_scores
from tests.peft_probe.lora_fixtures import random_batch, tiny_model


def _table(scores: dict[str, float]) -> PageScores:
    total = sum(scores.values())
    rows = [ModuleScore(n, module_layer(n), n.rsplit(".", 1)[-1], v, v / total) for n, v in scores.items()]
    return PageScores("raw", sorted(rows, key=lambda r: (-r.score, r.layer, r.name)), 1)


def test_dominant_module_is_the_argmax_of_page():
    model = tiny_model()
    scores = page_scores(model, [random_batch(0)], LoraConfig(r=4, alpha=8, target_modules=ALL_LINEAR), "raw")
    best = dominant_module(scores)
    assert best.score == max(r.score for r in scores.rows)
    config = domlora_config(scores, r=4)
    assert config.target_modules == (best.module,) and config.layers_to_transform == (best.layer,)
    assert (config.r, config.alpha) == (4, 8.0)
    assert inject_lora(model, config, 0) == [best.name]
    d_in, d_out = lora_modules(model)[best.name].base_layer.kernel.shape
    assert trainable_count(model) == 4 * (d_in + d_out)


def test_domlora_places_one_down_proj_like_the_paper():
    table = _table({"model.layers.0.mlp.down_proj": 1.0, "model.layers.1.mlp.down_proj": 3.0,
                    "model.layers.1.self_attn.q_proj": 2.0})
    config = domlora_config(table, r=8, alpha=16)
    assert config == LoraConfig(r=8, alpha=16, target_modules=("down_proj",), layers_to_transform=(1,))
    model = tiny_model()
    assert inject_lora(model, config, 0) == ["model.layers.1.mlp.down_proj"]


def test_domlora_names_one_module_where_the_suffix_is_shared_like_bert_dense():
    from peft_probe.models.bert import BertConfig, BertModel
    from peft_probe.models.classifier import SentenceClassifier

    names = [f"encoder.encoder.layer.{i}.{m}" for i in (0, 1)
             for m in ("attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense")]
    table = _table(dict(zip(names, range(1, len(names) + 1))) | {"encoder.encoder.layer.1.output.dense": 99.0})
    config = domlora_config(table, r=2)
    model = SentenceClassifier(BertModel(BertConfig.tiny(), rngs=nnx.Rngs(0)), jnp.zeros((32, 3)))
    assert inject_lora(model, config, 0) == ["encoder.encoder.layer.1.output.dense"]


def _lora_widths(config: LlamaConfig) -> dict[str, int]:
    """``d_in + d_out`` of each linear module of one decoder layer (a rank-r adapter has ``r`` times that)."""
    h, kv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    d, m = config.hidden_size, config.intermediate_size
    return {"q_proj": d + h * hd, "k_proj": d + kv * hd, "v_proj": d + kv * hd, "o_proj": h * hd + d,
            "gate_proj": d + m, "up_proj": d + m, "down_proj": m + d}


def test_domlora_trains_0_69_percent_of_all_linear_lora_on_smollm2():
    # The shape arithmetic is checked against real injections on the tiny model first ...
    tiny = LlamaConfig.tiny()
    widths = _lora_widths(tiny)
    everywhere = tiny_model()
    inject_lora(everywhere, LoraConfig(r=8, alpha=16, target_modules=ALL_LINEAR), 0)
    assert trainable_count(everywhere) == 8 * tiny.num_hidden_layers * sum(widths.values())
    one = tiny_model()
    inject_lora(one, LoraConfig(r=8, alpha=16, target_modules=("down_proj",), layers_to_transform=(1,)), 0)
    assert trainable_count(one) == 8 * widths["down_proj"]
    # ... then applied to SmolLM2-135M's config: one down_proj is 2112 r of all-linear's 305,280 r (0.69%).
    smol = LlamaConfig.smollm2_135m()
    widths = _lora_widths(smol)
    assert widths["down_proj"] / (smol.num_hidden_layers * sum(widths.values())) == pytest.approx(2112 / 305_280)
    assert widths["down_proj"] / (smol.num_hidden_layers * sum(widths.values())) == pytest.approx(0.0069, abs=5e-5)


def test_top_k_config_selects_the_k_best_modules_exactly():
    table = _table({"model.layers.0.mlp.down_proj": 1.0, "model.layers.1.mlp.down_proj": 3.0,
                    "model.layers.1.self_attn.q_proj": 2.0, "model.layers.0.self_attn.q_proj": 0.5})
    model = tiny_model()
    assert set(inject_lora(model, top_k_config(table, 2, r=2), 0)) == {"model.layers.1.mlp.down_proj",
                                                                        "model.layers.1.self_attn.q_proj"}
    with pytest.raises(ValueError, match="k must be"):
        top_k_config(table, 5)


def test_bad_scores_are_rejected():
    with pytest.raises(TypeError, match="PageScores"):
        dominant_module({"a": 1.0})
    with pytest.raises(ValueError, match="no modules"):
        domlora_config(PageScores("raw", [], 1))
