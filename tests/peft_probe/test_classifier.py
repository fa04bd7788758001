"""The encoder family: a BERT sentence classifier with a closed-form head, probed by PAGE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from peft_probe.lora import ALL_LINEAR, LoraConfig, inject_lora, linear_modules, lora_modules
from peft_probe.models.bert import BertConfig, BertModel
from peft_probe.models.classifier import SentenceClassifier
from peft_probe.page import VARIANTS, page_scores_all
from peft_probe.training import finetune

CLASSES = 3


def _batch(seed: int, rows: int = 4, tokens: int = 9) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 128, (rows, tokens)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[-1, -3:] = 0
    ids[-1, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": rng.integers(0, CLASSES, rows)}


@pytest.fixture(scope="module")
def classifier() -> SentenceClassifier:
    encoder = BertModel(BertConfig.tiny(dtype=jnp.float64, param_dtype=jnp.float64), rngs=nnx.Rngs(0))
    nnx.update(encoder, jax.tree.map(lambda v: v * 10.0 if v.ndim == 2 else v, nnx.state(encoder, nnx.Param)))
    return SentenceClassifier.fit(encoder, [_batch(0), _batch(1)], CLASSES, gamma=0.1)


def test_head_is_the_ridge_solution_on_the_sentence_embeddings(classifier):
    """float64 normal equations (XᵀX + γI) W = XᵀY solved by NumPy: 1e-9 relative."""
    batches = [_batch(0), _batch(1)]
    x = np.concatenate([np.asarray(classifier.encoder.encode(jnp.asarray(b["input_ids"]),
                                                             jnp.asarray(b["attention_mask"]))) for b in batches])
    y = np.eye(CLASSES)[np.concatenate([b["labels"] for b in batches])]
    expected = np.linalg.solve(x.T @ x + 0.1 * np.eye(x.shape[1]), x.T @ y)
    np.testing.assert_allclose(np.asarray(classifier.classifier.kernel[...]), expected, rtol=1e-9, atol=1e-12)


def test_page_on_the_encoder_equals_per_example_autodiff_and_skips_the_head(classifier):
    batch = _batch(2)
    config = LoraConfig(r=4, alpha=8, target_modules=ALL_LINEAR)
    tables = page_scores_all(classifier, [batch], config, VARIANTS)
    names = {r.name for r in tables["per_example"].rows}
    assert len(names) == 2 * 6 and not any("classifier" in n for n in names)  # 6 linear layers per BERT layer
    assert {r.layer for r in tables["raw"].rows} == {0, 1}

    def example_loss(kernels, i):
        model = nnx.merge(graphdef, kernels, rest)
        one = {k: jnp.asarray(v[i:i + 1]) for k, v in batch.items()}
        return SentenceClassifier.objective_example_losses(model, one)[0]

    wanted = {tuple(int(p) if p.isdigit() else p for p in n.split(".")) + ("kernel",) for n in names}
    graphdef, kernels, rest = nnx.split(classifier, lambda path, _: tuple(path) in wanted, ...)
    fisher = dict.fromkeys(names, 0.0)
    full = dict.fromkeys(names, 0.0)
    for i in range(4):
        grads = jax.grad(example_loss)(kernels, i)
        for path, v in nnx.to_flat_state(grads):
            name = ".".join(map(str, path[:-1]))
            fisher[name] += float(np.sum(np.asarray(v.get_value()) ** 2)) / 4
            full[name] = full[name] + np.asarray(v.get_value()) / 4  # uniform example weights
    for row in tables["per_example"].rows:
        assert row.score == pytest.approx(fisher[row.name], rel=1e-9)
    for row in tables["raw"].rows:
        assert row.score == pytest.approx(float(np.sum(full[row.name] ** 2)), rel=1e-9)


def test_bad_classifier_batches_raise_naming_the_key(classifier):
    with pytest.raises(ValueError, match="labels"):
        page_scores_all(classifier, [dict(_batch(0), labels=np.zeros((4, 2), int))])
    with pytest.raises(ValueError, match="missing"):
        page_scores_all(classifier, [{"input_ids": np.ones((2, 3), int)}])
    with pytest.raises(ValueError, match="labels"):
        SentenceClassifier.fit(classifier.encoder, [dict(_batch(0), labels=np.full(4, 7))], CLASSES)
    assert len(linear_modules(classifier)) == 13  # the 12 encoder layers and the head


def _ridge_loss_by_hand(model: SentenceClassifier, batch: dict[str, np.ndarray]) -> jax.Array:
    scores = model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
    return 0.5 * jnp.mean(jnp.sum((scores - jnp.eye(CLASSES)[batch["labels"]]) ** 2, axis=1))


def test_finetune_is_sgd_on_the_ridge_objective_of_the_adapters_alone(classifier):
    """Two SGD steps through ``finetune`` == two steps of jax.grad on the loss written out here, float64: 1e-12
    (only summation order differs). The head and every base weight stay bit-identical."""
    config = LoraConfig(r=2, alpha=4, target_modules=ALL_LINEAR)
    batches = [_batch(3), _batch(4)]
    model = nnx.clone(classifier)
    result = finetune(model, config, batches, optax.sgd(0.5), steps=2)

    ref = nnx.clone(classifier)
    inject_lora(ref, config, 0)
    graphdef, adapters, rest = nnx.split(ref, nnx.LoRAParam, ...)
    expected_losses = []
    for batch in batches:
        loss, grads = jax.value_and_grad(lambda a, b=batch: _ridge_loss_by_hand(nnx.merge(graphdef, a, rest), b))(
            adapters)
        expected_losses.append(float(loss))
        adapters = jax.tree.map(lambda p, g: p - 0.5 * g, adapters, grads)
    np.testing.assert_allclose(result.losses, expected_losses, rtol=1e-12)
    assert expected_losses[0] == pytest.approx(float(_ridge_loss_by_hand(classifier, batches[0])), rel=1e-12)
    for (path, got), (_, want) in zip(nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)),
                                      nnx.to_flat_state(adapters), strict=True):
        np.testing.assert_allclose(np.asarray(got.get_value()), np.asarray(want.get_value()), rtol=1e-12,
                                   atol=1e-15, err_msg=str(path))
    assert float(jnp.abs(nnx.state(model, nnx.LoRAParam)["encoder"]["encoder"]["layer"][0]["output"]["dense"]
                         ["lora_B"][...]).max()) > 0  # the adapters did move
    np.testing.assert_array_equal(np.asarray(model.classifier.kernel[...]),
                                  np.asarray(classifier.classifier.kernel[...]))
    before = nnx.to_flat_state(nnx.state(classifier, nnx.Param))
    after = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, value in before:
        trained = after.get(path) or after[path[:-1] + ("base_layer", path[-1])]
        np.testing.assert_array_equal(np.asarray(trained.get_value()), np.asarray(value.get_value()))


def test_refit_head_is_the_ridge_solution_on_the_adapted_features_and_accuracy_counts_argmax(classifier):
    model = nnx.clone(classifier)
    finetune(model, LoraConfig(r=2, alpha=4, target_modules=("value", "output.dense")), [_batch(5)],
             optax.sgd(1.0), steps=3)
    batches = [_batch(0), _batch(1)]
    model.refit_head(batches, gamma=0.3)
    x = np.concatenate([np.asarray(model.encoder.encode(jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"])))
                        for b in batches])
    y = np.eye(CLASSES)[np.concatenate([b["labels"] for b in batches])]
    np.testing.assert_allclose(np.asarray(model.classifier.kernel[...]),
                               np.linalg.solve(x.T @ x + 0.3 * np.eye(x.shape[1]), x.T @ y), rtol=1e-9, atol=1e-12)
    assert not np.allclose(np.asarray(model.classifier.kernel[...]), np.asarray(classifier.classifier.kernel[...]))
    test = [_batch(6), _batch(7, rows=3)]
    scores = [np.asarray(model(jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]))) for b in test]
    expected = np.mean(np.concatenate([s.argmax(1) == b["labels"] for s, b in zip(scores, test)]))
    assert model.accuracy(test) == pytest.approx(expected)


def test_bad_finetune_batch_raises_and_leaves_the_classifier_without_adapters(classifier):
    model = nnx.clone(classifier)
    with pytest.raises(ValueError, match="labels"):
        finetune(model, LoraConfig(r=2, alpha=4, target_modules=ALL_LINEAR), [dict(_batch(0), labels=np.full(4, 9))])
    assert not lora_modules(model)
    with pytest.raises(ValueError, match="scan_layers=True"):
        finetune(model, LoraConfig(r=2, alpha=4, target_modules=ALL_LINEAR), [_batch(0)], scan_layers=True)
    assert not lora_modules(model)
    with pytest.raises(ValueError, match="labels"):
        model.refit_head([dict(_batch(0), labels=np.full(4, -1))])
    np.testing.assert_array_equal(np.asarray(model.classifier.kernel[...]),
                                  np.asarray(classifier.classifier.kernel[...]))
