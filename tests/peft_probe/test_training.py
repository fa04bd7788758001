"""Adapter-only fine-tuning: base weights bit-identical, loss goes down, checkpoints, greedy decoding, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from peft_probe.lora import LoraConfig, inject_lora, load_adapters, lora_modules, trainable_count
from peft_probe.training import (
    ScannedLoraTrainer,
    answer_token_accuracy,
    answer_token_loss,
    check_batch,
    default_optimizer,
    finetune,
    pad_batch,
)
from tests.peft_probe.lora_fixtures import random_batch, tiny_model


def _base_params(model) -> list[np.ndarray]:
    state = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def test_only_adapters_train_and_base_weights_stay_bit_identical(tmp_path):
    model = tiny_model(dtype=jnp.float32)
    before = _base_params(model)
    batches = [random_batch(0, batch=4), random_batch(1, batch=4)]
    config = LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj"), dropout=0.1)
    result = finetune(model, config, batches, default_optimizer(learning_rate=1e-2, steps=12), steps=12,
                      checkpoint=tmp_path / "adapters")
    after = _base_params(model)
    assert len(before) == len(after) > 0
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert result.trainable == trainable_count(model) == 2 * 4 * ((64 + 64) + (64 + 32) + (128 + 64))
    assert any(np.abs(np.asarray(m.lora_B[...])).max() > 0 for m in lora_modules(model).values())
    # the same two batches seen 6 times each with lr 1e-2: the loss must fall clearly
    assert np.mean(result.losses[-2:]) < 0.9 * np.mean(result.losses[:2])
    fresh = tiny_model(dtype=jnp.float32)
    inject_lora(fresh, config, 0)
    assert load_adapters(fresh, tmp_path / "adapters")["steps"] == 12
    for m1, m2 in zip(lora_modules(model).values(), lora_modules(fresh).values()):
        np.testing.assert_array_equal(np.asarray(m1.lora_B[...]), np.asarray(m2.lora_B[...]))


def test_optimizer_schedule_warms_up_then_decays_and_clips():
    tx = default_optimizer(learning_rate=1.0, steps=20, warmup=5, weight_decay=0.0, clip_norm=1e-3)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    sizes = []
    for _ in range(20):
        updates, state = update({"w": jnp.ones(3) * 1e3}, state, params)
        sizes.append(float(jnp.abs(updates["w"]).max()))
    peak = int(np.argmax(sizes))
    assert 3 <= peak <= 6 and sizes[0] < sizes[peak] and sizes[-1] < 0.5 * sizes[peak]
    # Adam normalises the clipped gradient, so the step is ~lr(t): clipping must not blow it up
    assert max(sizes) <= 1.0 + 1e-6


def test_teacher_forced_exact_match_equals_greedy_decoding():
    from peft_probe.generate import greedy_generate

    model = tiny_model(dtype=jnp.float32)
    prompt = list(random_batch(3)["input_ids"][0, :6])
    (greedy,) = greedy_generate(model, [prompt], 5)
    ids = np.asarray([prompt + greedy], np.int32)
    mask = np.zeros_like(ids)
    mask[0, 6:] = 1
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones_like(ids), "loss_mask": jnp.asarray(mask)}
    acc, exact = answer_token_accuracy(model, batch)
    assert float(acc) == 1.0 and bool(exact[0])
    ids[0, -1] = (ids[0, -1] + 1) % 128  # one wrong answer token
    acc, exact = answer_token_accuracy(model, dict(batch, input_ids=jnp.asarray(ids)))
    assert float(acc) == pytest.approx(4 / 5) and not bool(exact[0])


@pytest.mark.parametrize(("batch", "error", "match"), [
    ({"input_ids": np.zeros((2, 4), int)}, ValueError, "missing"),
    (dict(random_batch(), input_ids=np.zeros((2, 3, 4), int)), ValueError, "input_ids"),
    (dict(random_batch(), input_ids=np.zeros((3, 12))), TypeError, "integers"),
    (dict(random_batch(), loss_mask=np.zeros((3, 12), int)), ValueError, "no answer token"),
    ([1, 2, 3], TypeError, "dict"),
])
def test_bad_batches_raise_and_leave_the_model_untouched(batch, error, match):
    model = tiny_model(dtype=jnp.float32)
    before = _base_params(model)
    with pytest.raises(error, match=match):
        check_batch(batch)
    with pytest.raises(error, match=match):
        finetune(model, LoraConfig(r=2), [batch], optax.sgd(0.1), steps=1)
    assert not lora_modules(model)
    for b, a in zip(before, _base_params(model)):
        np.testing.assert_array_equal(a, b)


def test_finetune_argument_errors():
    model = tiny_model(dtype=jnp.float32)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        finetune(model, None, [random_batch()])
    with pytest.raises(ValueError, match="steps"):
        finetune(model, LoraConfig(r=2), [random_batch()], steps=0)


def test_package_export_is_the_function_even_after_the_submodule_is_imported():
    import peft_probe
    import peft_probe.training  # noqa: F401
    from peft_probe import finetune as exported

    assert exported is finetune and peft_probe.finetune is finetune
    with pytest.raises(ValueError, match="no LoRA adapters"):
        exported(tiny_model(dtype=jnp.float32), None, [random_batch()])


@pytest.mark.parametrize("config", [
    LoraConfig(r=4, alpha=8, target_modules="all-linear"),
    # layer 1 only: three runs (0), (1), (2, 3) of different structure, each scanned on its own
    LoraConfig(r=2, alpha=4, target_modules=("q_proj", "down_proj"), layers_to_transform=(1,)),
])
def test_scanned_training_follows_the_unrolled_step(config):
    """float64: stacking the adapters and scanning the layers changes only the summation order, so the losses
    and trained adapters of six AdamW steps agree with the unrolled ``nnx.Optimizer`` path to 1e-9 relative."""
    batches = [random_batch(0, batch=4), random_batch(1, batch=3, tokens=10, answer_from=5)]
    tx = default_optimizer(learning_rate=1e-2, steps=6)
    unrolled, scanned = tiny_model(num_hidden_layers=4), tiny_model(num_hidden_layers=4)
    ref = finetune(unrolled, config, batches, tx, steps=6, scan_layers=False)
    got = finetune(scanned, config, batches, tx, steps=6, scan_layers=True)
    np.testing.assert_allclose(got.losses, ref.losses, rtol=1e-9)
    pairs = list(zip(lora_modules(unrolled).values(), lora_modules(scanned).values()))
    assert len(pairs) == (28 if config.target_modules == "all-linear" else 2)
    for ref_module, got_module in pairs:
        assert np.abs(np.asarray(got_module.lora_B[...])).max() > 0  # written back from the stacked copy
        np.testing.assert_allclose(got_module.lora_B[...], ref_module.lora_B[...], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got_module.lora_A[...], ref_module.lora_A[...], rtol=1e-9, atol=1e-12)


def test_padding_to_one_shape_leaves_the_answer_loss_unchanged():
    """Masked rows and right-padded tokens are never attended to nor scored: the loss equals the unpadded one
    (float64, 1e-12), and finetune's first loss (``B = 0``: the base model) is that of the unpadded batch."""
    model = tiny_model()
    batch = check_batch(random_batch(2, batch=3, tokens=11))
    loss = float(answer_token_loss(model, batch))
    padded = pad_batch(batch, rows=5, tokens=32)
    assert padded["input_ids"].shape == (5, 32)
    assert float(answer_token_loss(model, padded)) == pytest.approx(loss, rel=1e-12)
    result = finetune(model, LoraConfig(r=2), [batch], optax.sgd(0.0), steps=1)
    assert result.losses[0] == pytest.approx(loss, rel=1e-12)


def test_scan_layers_refusals_come_before_the_model_is_touched():
    model = tiny_model(dtype=jnp.float32)
    with pytest.raises(ValueError, match="dropout"):
        finetune(model, LoraConfig(r=2, dropout=0.1), [random_batch()], steps=1, scan_layers=True)
    assert not lora_modules(model)
    with pytest.raises(TypeError, match="scan_layers"):
        finetune(model, LoraConfig(r=2), [random_batch()], steps=1, scan_layers="yes")
    assert not lora_modules(model)
    inject_lora(model, LoraConfig(r=2, dropout=0.1), 0)
    assert "dropout" in ScannedLoraTrainer.unsupported(model)
    with pytest.raises(ValueError, match="cannot be trained with scanned layers"):
        ScannedLoraTrainer(model, optax.sgd(0.1))


def test_scanned_answer_metrics_equal_the_model_after_write_back():
    model = tiny_model(num_hidden_layers=3)
    inject_lora(model, LoraConfig(r=2, alpha=4, target_modules=("v_proj", "up_proj"), layers_to_transform=(0, 2)), 0)
    trainer = ScannedLoraTrainer(model, default_optimizer(learning_rate=1e-2, steps=3))
    batch = {k: jnp.asarray(v) for k, v in random_batch(5, batch=4).items()}
    for _ in range(3):
        trainer.step(batch)
    loss_sum, tokens, correct, exact = trainer.answer_metrics(batch)
    trainer.write_back()
    accuracy, expected_exact = answer_token_accuracy(model, batch)
    assert float(loss_sum / tokens) == pytest.approx(float(answer_token_loss(model, batch)), rel=1e-9)
    assert float(correct / tokens) == pytest.approx(float(accuracy), abs=1e-12)
    np.testing.assert_array_equal(np.asarray(exact), np.asarray(expected_exact))
