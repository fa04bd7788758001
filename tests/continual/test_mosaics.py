"""Fashion-MNIST mosaics: label sets, imbalance, train/test item separation, the feature cache (tiny inputs)."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from continual.data import mosaics
from continual.data.mosaics import bits_to_multi_hot, fashion_mosaic_features, fashion_mosaic_images, multi_hot_to_bits
from continual.data.real import FASHION_MNIST_DIR

CALLS: list[bool] = []


def _fake_items(train: bool, path=None):
    """3 items per class of 4×4 pixels; pixel value encodes (split, class, item) so tiles can be traced back."""
    CALLS.append(train)
    labels = np.repeat(np.arange(10), 3)
    values = (100 if train else 0) + labels * 3 + np.tile(np.arange(3), 10)
    return np.broadcast_to(values[:, None, None], (30, 4, 4)).astype(np.uint8), labels


@pytest.fixture
def fake(monkeypatch):
    CALLS.clear()
    monkeypatch.setattr(mosaics, "_items", _fake_items)


def _tiles(img):
    return [int(img[r * 4, s * 4]) for r in range(2) for s in range(2)]


def test_label_set_is_the_set_of_tile_classes(fake):
    x, y = fashion_mosaic_images(300, seed=1, train=True)
    assert x.shape == (300, 8, 8) and x.dtype == np.uint8 and y.shape == (300, 10) and y.dtype == np.int8
    for img, labels in zip(x, y):
        values = np.array(_tiles(img))
        assert (values >= 100).all()  # training items only
        assert set(((values - 100) // 3).tolist()) == set(np.flatnonzero(labels).tolist())
        assert np.all(img[:4, :4] == img[0, 0])  # each tile is one whole item
    assert set(y.sum(1).tolist()) == {1, 2, 3, 4}


def test_test_mosaics_use_test_items_and_seed_reproduces(fake):
    x, _ = fashion_mosaic_images(50, seed=2, train=False)
    assert CALLS == [False] and (x < 100).all()
    a = fashion_mosaic_images(40, seed=3)
    b = fashion_mosaic_images(40, seed=3)
    c = fashion_mosaic_images(40, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_label_frequencies_are_imbalanced(fake):
    _, y = fashion_mosaic_images(3000, seed=0)
    freq = y.mean(0)
    assert freq.max() / freq.min() > 4  # head vs tail class, as in COCO-like label sets
    assert np.argmax(freq) == np.argmax(mosaics.CLASS_PRIOR)


def test_bits_round_trip():
    y = np.random.default_rng(0).integers(0, 2, (50, 10)).astype(np.int8)
    bits = multi_hot_to_bits(y)
    assert bits.shape == (50,) and bits.dtype == np.int64 and bits.min() >= 0
    np.testing.assert_array_equal(bits_to_multi_hot(bits), y)


class _Tiny(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.head = nnx.Linear(3, 5, rngs=rngs)

    def features(self, x: jnp.ndarray) -> jnp.ndarray:
        return self.head(x.mean(axis=(1, 2)))


def _pre(images, size):
    x = np.asarray(images, np.float32)[:, :size, :size] / 255.0
    return np.repeat(x[..., None], 3, axis=-1)


def test_features_are_cached_multi_label(fake, tmp_path: Path):
    folder = tmp_path / "fmnist"  # the cache key hashes the IDX files; their content is not read here
    folder.mkdir()
    for stem in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (folder / f"{stem.split('-idx')[0]}-{stem.split('-')[-1]}-ubyte").write_bytes(stem.encode())
    model = _Tiny(rngs=nnx.Rngs(0))
    kw = dict(cache_dir=tmp_path / "cache", size=8, path=folder, model=model, preprocess=_pre, progress=False)
    split = fashion_mosaic_features(train=20, test=10, **kw)
    assert split.x_train.shape == (20, 5) and split.y_train.shape == (20, 10) and split.y_test.shape == (10, 10)
    _, y_tr = fashion_mosaic_images(20, 0, True)
    _, y_te = fashion_mosaic_images(10, 1, False)
    np.testing.assert_array_equal(split.y_train, y_tr)
    np.testing.assert_array_equal(split.y_test, y_te)
    CALLS.clear()
    again = fashion_mosaic_features(train=20, test=10, **kw)
    assert CALLS == []  # read from the cache
    np.testing.assert_array_equal(again.x_train, split.x_train)
    np.testing.assert_array_equal(again.y_train, split.y_train)
    with pytest.raises(ValueError, match="train"):
        fashion_mosaic_features(train=0, test=10, **kw)


def test_bad_counts(fake):
    with pytest.raises(ValueError, match="n"):
        fashion_mosaic_images(0)
    with pytest.raises(ValueError, match="n"):
        fashion_mosaic_images(2.5)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_real_items_come_from_the_training_split():
    from continual.data.real import load_fashion_mnist

    raw = load_fashion_mnist()
    x, y = fashion_mosaic_images(6, seed=0, train=True)
    assert x.shape == (6, 56, 56)
    train_items = {img.tobytes(): c for img, c in zip(raw.x_train, raw.y_train)}
    for img, labels in zip(x, y):
        tiles = [img[r * 28:(r + 1) * 28, s * 28:(s + 1) * 28].tobytes() for r in range(2) for s in range(2)]
        assert all(t in train_items for t in tiles)
        assert {int(train_items[t]) for t in tiles} == set(np.flatnonzero(labels).tolist())
