"""LoraConfig against PEFT's documented rules (check_target_module_exists, get_pattern_key, LoraConfig's own
refusals), and adapter_config.json written by export_peft and read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from peft_probe.lora import export_peft, inject_lora, lora_modules, placement_config
from peft_probe.lora_config import ALL_LINEAR, LoraConfig, layer_index
from tests.peft_probe.lora_fixtures import tiny_model

# (config keywords, module name, PEFT's verdict), from the rule in peft.tuners.tuners_utils.
TABLE = [
    ({"target_modules": ["down_proj"]}, "model.layers.3.mlp.down_proj", True),
    ({"target_modules": ["down_proj"]}, "model.layers.3.mlp.down_proj_2", False),
    ({"target_modules": ["proj"]}, "model.layers.3.mlp.down_proj", False),  # suffix after a dot only
    ({"target_modules": ["model.layers.3.mlp.down_proj"]}, "model.layers.3.mlp.down_proj", True),  # exact name
    ({"target_modules": ["down_proj"], "layers_to_transform": [3]}, "model.layers.3.mlp.down_proj", True),
    ({"target_modules": ["down_proj"], "layers_to_transform": [1]}, "model.layers.3.mlp.down_proj", False),
    ({"target_modules": ["down_proj"], "layers_to_transform": 3}, "model.layers.3.mlp.down_proj", True),
    # The first numbered segment is the layer, not an expert index deeper in the name (lazy match).
    ({"target_modules": ["down_proj"], "layers_to_transform": [1]}, "model.layers.1.experts.0.down_proj", True),
    ({"target_modules": ["down_proj"], "layers_to_transform": [0]}, "model.layers.1.experts.0.down_proj", False),
    ({"target_modules": ["c_fc"], "layers_to_transform": [2], "layers_pattern": "h"}, "transformer.h.2.mlp.c_fc",
     True),
    ({"target_modules": ["c_fc"], "layers_to_transform": [2], "layers_pattern": "layers"},
     "transformer.h.2.mlp.c_fc", False),
    ({"target_modules": ["c_fc"], "layers_to_transform": [2], "layers_pattern": ["blocks", "h"]},
     "transformer.h.2.mlp.c_fc", True),
    ({"target_modules": ["lm_head"], "layers_to_transform": [0]}, "lm_head", True),  # an exact name skips layers
    ({"target_modules": r".*\.(q|v)_proj"}, "model.layers.0.self_attn.q_proj", True),
    ({"target_modules": r"(q|v)_proj"}, "model.layers.0.self_attn.q_proj", False),  # full match of the name
]


@pytest.mark.parametrize(("kwargs", "name", "verdict"), TABLE)
def test_matching_agrees_with_peft_rule_on_a_table_of_names(kwargs, name, verdict):
    assert LoraConfig(**kwargs).matches(name) is verdict


def test_layer_index_is_the_first_numbered_segment():
    assert layer_index("model.layers.12.mlp.experts.3.down_proj") == 12
    assert layer_index("transformer.h.2.attn.c_attn", ["h"]) == 2
    assert layer_index("lm_head") is None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"target_modules": r".*q_proj", "layers_to_transform": [0]}, "cannot be used when target_modules is a str"),
    ({"target_modules": ALL_LINEAR, "layers_to_transform": [0]}, "cannot be used when target_modules is a str"),
    ({"target_modules": r".*q_proj", "layers_pattern": "layers"}, "layers_pattern cannot be used"),
    ({"target_modules": ["q_proj"], "layers_pattern": "layers"}, "needs layers_to_transform"),
    ({"rank_pattern": {"q_proj": 0}}, "positive integer"),
    ({"rank_pattern": {"(": 4}}, "not a valid regex"),
    ({"alpha_pattern": {"q_proj": float("inf")}}, "positive finite"),
    ({"task_type": "CAUSAL"}, "task_type"),
])
def test_configs_peft_refuses_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoraConfig(**kwargs)


def test_rank_and_alpha_patterns_follow_get_pattern_key():
    config = LoraConfig(r=8, alpha=16, target_modules=["q_proj", "down_proj"],
                        rank_pattern={"down_proj": 4, r"layers\.1\.self_attn\.q_proj": 2},
                        alpha_pattern={"down_proj": 32})
    assert (config.rank_of("model.layers.0.mlp.down_proj"), config.scale_of("model.layers.0.mlp.down_proj")) == (4, 8.0)
    assert (config.rank_of("model.layers.1.self_attn.q_proj"), config.scale_of("model.layers.1.self_attn.q_proj")) == (
        2, 8.0)
    assert (config.rank_of("model.layers.0.self_attn.q_proj"), config.scale_of("model.layers.0.self_attn.q_proj")) == (
        8, 2.0)
    assert config.rank_of("model.layers.0.mlp.xdown_proj") == 8  # a key matches a whole dotted segment suffix
    model = tiny_model()
    inject_lora(model, config, 0)
    modules = lora_modules(model)
    for name, module in modules.items():
        assert module.lora_A.shape[1] == config.rank_of(name) and module.scale == config.scale_of(name)
    assert {m.lora_A.shape[1] for m in modules.values()} == {2, 4, 8}


@pytest.mark.parametrize("config", [
    LoraConfig(r=4, alpha=8, target_modules=["down_proj", "q_proj"], layers_to_transform=[1]),
    LoraConfig(r=4, alpha=8, target_modules=["down_proj"], layers_to_transform=[0, 1], layers_pattern="layers"),
    LoraConfig(r=4, alpha=8, target_modules=["q_proj", "down_proj"], rank_pattern={"down_proj": 2},
               alpha_pattern={"down_proj": 6}, init="gaussian"),
    LoraConfig(r=2, alpha=2, target_modules=r"model\.layers\.0\..*"),
])
def test_exported_config_round_trips_through_our_reader_and_reselects_the_modules(config, tmp_path):
    model = tiny_model()
    names = inject_lora(model, config, 1)
    saved = json.loads((export_peft(model, tmp_path / "a", config) / "adapter_config.json").read_text())
    read = LoraConfig.from_peft_dict(saved)
    assert saved["task_type"] == "CAUSAL_LM"  # tiny_model has an lm_head
    fresh = tiny_model()
    assert inject_lora(fresh, read, 1) == names
    for (name, a), b in zip(lora_modules(model).items(), lora_modules(fresh).values()):
        assert a.lora_A.shape == b.lora_A.shape and a.scale == b.scale and b.init == config.init, name
        np.testing.assert_array_equal(np.asarray(a.lora_A[...]), np.asarray(b.lora_A[...]))
    # placement_config keeps init and per-module ranks too.
    derived = placement_config(model)
    assert derived.init == config.init
    assert inject_lora(tiny_model(), derived, 1) == names


def test_export_refuses_a_config_that_would_load_a_different_adapter(tmp_path):
    model = tiny_model()
    inject_lora(model, LoraConfig(r=2, target_modules=["down_proj"], layers_to_transform=[1]), 0)
    with pytest.raises(ValueError, match="does not describe the adapted modules"):
        export_peft(model, tmp_path / "a", LoraConfig(r=2, target_modules=["down_proj"]))
    with pytest.raises(ValueError, match="rank 4"):
        export_peft(model, tmp_path / "b", LoraConfig(r=4, target_modules=["down_proj"], layers_to_transform=[1]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything is written


def test_reader_refuses_lora_variants_it_does_not_implement():
    base = LoraConfig().to_peft_dict()
    for key, value in (("use_dora", True), ("use_rslora", True), ("bias", "all"), ("fan_in_fan_out", True),
                       ("modules_to_save", ["classifier"]), ("init_lora_weights", "pissa"), ("peft_type", "IA3")):
        with pytest.raises(ValueError, match=key if key != "peft_type" else "not a LoRA"):
            LoraConfig.from_peft_dict({**base, key: value})


def test_task_type_comes_from_the_model_unless_the_config_names_one(tmp_path):
    from flax import nnx

    from peft_probe.models.bert import BertConfig, BertModel

    bert = BertModel(BertConfig.tiny(), rngs=nnx.Rngs(0))
    inject_lora(bert, LoraConfig(r=2, target_modules=["query", "value"]), 0)
    saved = json.loads((export_peft(bert, tmp_path / "bert") / "adapter_config.json").read_text())
    assert saved["task_type"] == "FEATURE_EXTRACTION"
    llama = tiny_model()
    config = LoraConfig(r=2, target_modules=["q_proj"], task_type="SEQ_CLS")
    inject_lora(llama, config, 0)
    assert json.loads((export_peft(llama, tmp_path / "l", config) / "adapter_config.json").read_text())[
        "task_type"] == "SEQ_CLS"
    assert json.loads((export_peft(llama, tmp_path / "d") / "adapter_config.json").read_text())[
        "task_type"] == "CAUSAL_LM"
