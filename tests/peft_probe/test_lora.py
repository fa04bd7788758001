"""LoRA placement (PEFT's matching rules), forward, merge/unmerge, PEFT export and adapter checkpoints."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from peft_probe.lora import (
    ALL_LINEAR,
    LoraConfig,
    LoraLinear,
    export_peft,
    inject_lora,
    linear_modules,
    load_adapters,
    lora_a_init,
    lora_modules,
    merge_lora,
    placement_config,
    save_adapters,
    trainable_count,
    unmerge_lora,
)
from tests.peft_probe.lora_fixtures import forward, random_batch, tiny_model

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def _randomize_b(model, seed: int = 0) -> None:
    for i, module in enumerate(lora_modules(model).values()):
        module.lora_B[...] = jax.random.normal(jax.random.key(seed + i), module.lora_B.shape, module.lora_B.dtype)


@pytest.mark.parametrize(("targets", "layers", "expected"), [
    (("down_proj",), None, {f"model.layers.{i}.mlp.down_proj" for i in (0, 1)}),
    (("down_proj",), (1,), {"model.layers.1.mlp.down_proj"}),
    (("q_proj", "v_proj"), 0, {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"}),
    (r"model\.layers\.1\.self_attn\.(q|k)_proj", None, {"model.layers.1.self_attn.q_proj",
                                                           "model.layers.1.self_attn.k_proj"}),
    (ALL_LINEAR, None, {f"model.layers.{i}.{p}.{m}" for i in (0, 1)
                        for p, ms in (("self_attn", ATTN), ("mlp", MLP)) for m in ms}),
])
def test_injection_follows_peft_matching_rules(targets, layers, expected):
    # Regexes are full-matched against the whole name, as in PEFT's check_target_module_exists.
    model = tiny_model(tie_word_embeddings=False)
    names = inject_lora(model, LoraConfig(r=2, target_modules=targets, layers_to_transform=layers), 0)
    assert set(names) == expected
    assert set(lora_modules(model)) == expected
    assert "lm_head" not in names  # "all-linear" skips the output head


def test_suffix_match_needs_a_dot_boundary():
    config = LoraConfig(target_modules=("proj",))
    assert not config.matches("model.layers.0.mlp.down_proj")  # PEFT: endswith(".proj"), not a bare suffix
    assert config.matches("model.layers.0.proj")


def test_kaiming_a_has_peft_bound_and_variance():
    d_in, r = 1536, 64
    a = np.asarray(lora_a_init(jax.random.key(0), d_in, r, "kaiming", jnp.float64))
    assert a.shape == (d_in, r)
    assert np.abs(a).max() <= 1 / np.sqrt(d_in)
    # U(-b, b) has variance b^2/3 = 1/(3 d_in); 98304 draws give a relative standard error of ~0.3%
    assert a.var() == pytest.approx(1 / (3 * d_in), rel=0.02)
    g = np.asarray(lora_a_init(jax.random.key(0), d_in, r, "gaussian", jnp.float64))
    assert g.std() == pytest.approx(1 / r, rel=0.02)


def test_injected_model_equals_base_model_at_init_and_counts_parameters():
    model = tiny_model()
    batch = random_batch()
    before = forward(model, batch)
    config = LoraConfig(r=4, alpha=8, target_modules=ALL_LINEAR)
    inject_lora(model, config, 0)
    after = forward(model, batch)
    np.testing.assert_array_equal(before, after)  # B = 0: the adapter adds exactly zero
    expected = sum(4 * (m.base_layer.kernel.shape[0] + m.base_layer.kernel.shape[1])
                   for m in lora_modules(model).values())
    assert trainable_count(model) == expected == 2 * 4 * (4 * (64 + 64) - 2 * 32 + 3 * (64 + 128))


def test_lora_forward_equals_independent_numpy_formula():
    rng = np.random.default_rng(0)
    base = nnx.Linear(5, 3, use_bias=True, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    a = rng.standard_normal((5, 2))
    layer = LoraLinear(base, r=2, scale=1.5, lora_a=jnp.asarray(a), dropout=0.0, rngs=None)
    b = rng.standard_normal((2, 3))
    layer.lora_B[...] = jnp.asarray(b)
    x = rng.standard_normal((4, 5))
    w, bias = np.asarray(base.kernel[...]), np.asarray(base.bias[...])
    expected = x @ w + bias + 1.5 * (x @ a) @ b  # Hu et al. eq. 3 in flax layout
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), expected, rtol=1e-13, atol=1e-13)


def test_merge_equals_wrapped_forward_and_unmerge_restores_base():
    model = tiny_model()
    kernels = {n: np.asarray(m.kernel[...]) for n, m in linear_modules(model).items()}
    inject_lora(model, LoraConfig(r=4, alpha=8, target_modules=ALL_LINEAR), 0)
    _randomize_b(model)
    batch = random_batch()
    wrapped = forward(model, batch)
    merge_lora(model)
    for name, module in lora_modules(model).items():
        delta = 2.0 * np.asarray(module.lora_A[...]) @ np.asarray(module.lora_B[...])
        np.testing.assert_allclose(np.asarray(module.base_layer.kernel[...]), kernels[name] + delta, rtol=1e-14,
                                   atol=1e-14)
    merged = forward(model, batch)
    # P1's model returns float32 logits (rotary and the head run in float32), so the two orders of summation
    # agree to float32 rounding of logits of size ~10: atol 1e-4.
    np.testing.assert_allclose(merged, wrapped, rtol=1e-5, atol=1e-4)
    assert np.abs(merged - forward(tiny_model(), batch)).max() > 1e-2
    unmerge_lora(model)
    for name, module in lora_modules(model).items():
        # (W + D) - D in float64: within a few ulps of W
        np.testing.assert_allclose(np.asarray(module.base_layer.kernel[...]), kernels[name], rtol=0, atol=1e-13)
    merge_lora(model, unload=True)
    assert not lora_modules(model)
    assert set(linear_modules(model)) == set(kernels)
    np.testing.assert_allclose(forward(model, batch), wrapped,
                               rtol=1e-5, atol=1e-4)


def test_export_peft_round_trips_through_safetensors(tmp_path):
    model = tiny_model()
    config = LoraConfig(r=4, alpha=16, target_modules=("down_proj", "q_proj"), layers_to_transform=(1,))
    inject_lora(model, config, 3)
    _randomize_b(model, 7)
    out = export_peft(model, tmp_path / "adapter", config, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M")
    tensors = load_file(str(out / "adapter_model.safetensors"))
    modules = lora_modules(model)
    assert len(tensors) == 2 * len(modules) == 4
    for name, module in modules.items():
        a = tensors[f"base_model.model.{name}.lora_A.weight"]
        b = tensors[f"base_model.model.{name}.lora_B.weight"]
        d_in, d_out = module.base_layer.kernel.shape
        assert a.shape == (4, d_in) and b.shape == (d_out, 4)  # PEFT / torch layout
        np.testing.assert_array_equal(a, np.asarray(module.lora_A[...]).T)
        np.testing.assert_array_equal(b, np.asarray(module.lora_B[...]).T)
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["task_type"] == "CAUSAL_LM" and saved["bias"] == "none"
    assert (saved["r"], saved["lora_alpha"], saved["lora_dropout"]) == (4, 16, 0.0)
    assert saved["target_modules"] == ["down_proj", "q_proj"] and saved["layers_to_transform"] == [1]
    assert saved["fan_in_fan_out"] is False and saved["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M"


def test_placement_config_reselects_exactly_the_adapted_modules():
    for config in (LoraConfig(r=2, alpha=4, target_modules=("down_proj",), layers_to_transform=(1,)),
                   LoraConfig(r=2, alpha=4, target_modules=ALL_LINEAR),
                   LoraConfig(r=2, alpha=4, target_modules=r"model\.layers\.0\.mlp\.up_proj|model\.layers\.1\."
                                                             r"self_attn\.q_proj")):
        model = tiny_model()
        names = inject_lora(model, config, 0)
        recovered = placement_config(model)
        fresh = tiny_model()
        assert set(inject_lora(fresh, recovered, 0)) == set(names)
        assert (recovered.r, recovered.alpha) == (2, 4.0)


def test_adapter_checkpoint_round_trip(tmp_path):
    model = tiny_model()
    config = LoraConfig(r=2, alpha=4, target_modules=("v_proj",))
    inject_lora(model, config, 0)
    _randomize_b(model)
    save_adapters(model, tmp_path / "ckpt", {"task": "unit"})
    other = tiny_model()
    inject_lora(other, config, 99)  # different A, B = 0
    assert load_adapters(other, tmp_path / "ckpt") == {"task": "unit"}
    for (n1, m1), (n2, m2) in zip(lora_modules(model).items(), lora_modules(other).items()):
        assert n1 == n2
        np.testing.assert_array_equal(np.asarray(m1.lora_A[...]), np.asarray(m2.lora_A[...]))
        np.testing.assert_array_equal(np.asarray(m1.lora_B[...]), np.asarray(m2.lora_B[...]))
    mismatched = tiny_model()
    inject_lora(mismatched, LoraConfig(r=3, target_modules=("v_proj",)), 0)
    with pytest.raises(ValueError, match="v_proj|shape"):
        load_adapters(mismatched, tmp_path / "ckpt")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"r": 0}, "r must be a positive"), ({"alpha": -1.0}, "alpha"), ({"dropout": 1.0}, "dropout"),
    ({"init": "pissa"}, "init"), ({"target_modules": ()}, "target_modules"), ({"target_modules": "("}, "regex"),
    ({"layers_to_transform": (-1,)}, "layers_to_transform"),
])
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoraConfig(**kwargs)


def test_failed_injection_leaves_model_unchanged():
    model = tiny_model()
    with pytest.raises(ValueError, match="matched no nnx.Linear"):
        inject_lora(model, LoraConfig(target_modules=("nope",)), 0)
    with pytest.raises(TypeError, match="LoraConfig"):
        inject_lora(model, {"r": 8}, 0)
    assert not lora_modules(model)
    inject_lora(model, LoraConfig(target_modules=("q_proj",)), 0)
    with pytest.raises(ValueError, match="already has LoRA"):
        inject_lora(model, LoraConfig(target_modules=("k_proj",)), 0)
    assert len(lora_modules(model)) == 2


def test_dropout_only_in_training_mode():
    model = tiny_model()
    inject_lora(model, LoraConfig(r=4, target_modules=("down_proj",), dropout=0.5), 0)
    _randomize_b(model)
    batch = random_batch()
    first = forward(model, batch)
    np.testing.assert_array_equal(first, forward(model, batch))  # eval mode by default
    model.train()
    assert np.abs(forward(model, batch) - first).max() > 1e-3
