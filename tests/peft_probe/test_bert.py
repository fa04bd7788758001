"""BERT encoder: NumPy reference, mask handling, Sentence-BERT pooling, and MiniLM-L6 sentence similarity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from peft_probe.models.bert import BertConfig, BertModel
from tests.peft_probe import reference


@nnx.jit
def _hidden_and_embedding(model, ids, mask):
    return model(ids, mask), model.encode(ids, mask)


def _encode(model, ids, mask):
    return _hidden_and_embedding(model, ids, mask)[1]


@pytest.fixture(scope="module")
def tiny64() -> BertModel:
    model = BertModel(BertConfig.tiny(dtype=jnp.float64, param_dtype=jnp.float64), rngs=nnx.Rngs(0))
    # HF's 0.02 init leaves attention nearly uniform; scale the matrices so tokens really interact.
    nnx.update(model, jax.tree.map(lambda v: v * 10.0 if v.ndim == 2 else v, nnx.state(model, nnx.Param)))
    return model


@pytest.fixture(scope="module")
def padded_batch(tiny64):
    """Two sequences of 8 and 5 tokens (the second right-padded) through one compiled call."""
    ids = np.random.default_rng(2).integers(1, 128, (2, 8))
    mask = np.array([[1] * 8, [1] * 5 + [0] * 3])
    ids[1, 5:] = 0
    hidden, emb = _hidden_and_embedding(tiny64, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    return ids, np.asarray(hidden), np.asarray(emb)


def test_float64_bert_equals_numpy_reference(tiny64, padded_batch):
    ids, hidden, _ = padded_batch
    want = reference.bert_hidden(reference.hf_tensors(tiny64), ids[0], 2, 4, 1e-12)
    np.testing.assert_allclose(hidden[0], want, rtol=1e-10, atol=1e-10)  # float64 on both sides: rounding only


def test_padding_changes_neither_hidden_states_nor_sentence_embedding(tiny64, padded_batch):
    ids, hidden, emb = padded_batch
    # The reference sees only the 5 real tokens, no padding at all.
    alone = reference.bert_hidden(reference.hf_tensors(tiny64), ids[1, :5], 2, 4, 1e-12)
    np.testing.assert_allclose(hidden[1, :5], alone, rtol=1e-10, atol=1e-10)
    # Sentence-BERT pooling, literally: mean over real tokens, then unit L2 norm.
    mean = alone.mean(0)
    np.testing.assert_allclose(emb[1], mean / np.linalg.norm(mean), atol=1e-10)


def test_too_long_input_is_rejected(tiny64):
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        tiny64(jnp.zeros((1, 65), jnp.int32))


def test_inconsistent_config_is_rejected():
    with pytest.raises(ValueError, match="num_attention_heads=5"):
        BertConfig.tiny(num_attention_heads=5)


SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.",
    "A woman is playing the violin.", "A girl plays a violin on stage.",
    "The new movie is awesome.", "The new film is great.",
    "The stock market fell sharply today.",
]
PAIRS = [(0, 1), (2, 3), (4, 5)]  # paraphrases; every other pair is unrelated


@pytest.mark.slow
def test_minilm_scores_paraphrases_above_unrelated_sentences(minilm):
    config, model, tok = minilm
    assert config == BertConfig.minilm_l6()
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    emb = np.asarray(_encode(model, jnp.asarray(enc["input_ids"], jnp.int32),
                             jnp.asarray(enc["attention_mask"], jnp.int32)))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    related = [sim[i, j] for i, j in PAIRS]
    unrelated = [sim[i, j] for i in range(len(SENTENCES)) for j in range(i + 1, len(SENTENCES))
                 if (i, j) not in PAIRS]
    print("MiniLM cosine: paraphrases", np.round(related, 3), "max unrelated", round(max(unrelated), 3))
    assert min(related) > max(unrelated) + 0.2
    # Padding in the batch must not matter: the shortest sentence alone gives the same vector.
    alone = tok(SENTENCES[0], return_tensors="np")
    single = np.asarray(_encode(model, jnp.asarray(alone["input_ids"], jnp.int32),
                                jnp.asarray(alone["attention_mask"], jnp.int32)))[0]
    np.testing.assert_allclose(single, emb[0], atol=1e-5)
