"""The encoder family: a BERT sentence classifier with a closed-form head, probed by PAGE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from peft_probe.lora import ALL_LINEAR, LoraConfig, linear_modules
from peft_probe.models.bert import BertConfig, BertModel
from peft_probe.models.classifier import SentenceClassifier
from peft_probe.page import VARIANTS, page_scores_all

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
        return SentenceClassifier.probe_example_losses(model, one)[0]

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
