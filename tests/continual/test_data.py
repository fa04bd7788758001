"""Data: offline datasets, the base-phase-only frozen backbone, synthetic features and on-disk loaders (tested on
tiny files written here in the exact public formats)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from continual.data import (
    MLPBackbone,
    Split,
    extract_features,
    frozen_backbone_features,
    list_image_folder,
    load_cifar100,
    load_digits,
    load_feature_file,
    load_image_folder,
    load_mnist1d,
    save_feature_file,
    synthetic_features,
    train_backbone,
)


def test_digits_and_mnist1d_load_offline_with_stratified_labels() -> None:
    digits = load_digits()
    assert digits.x_train.shape[1] == 64 and digits.x_train.dtype == np.float32
    assert digits.x_train.shape[0] + digits.x_test.shape[0] == 1797
    assert np.array_equal(np.unique(digits.y_test), np.arange(10)) and digits.classes == 10
    a, b = load_mnist1d(num_samples=300), load_mnist1d(num_samples=300)
    assert a.x_train.shape == (240, 40) and a.x_test.shape == (60, 40)
    np.testing.assert_array_equal(a.x_train, b.x_train)            # generated, seeded, no download
    with pytest.raises(ValueError, match="num_samples"):
        load_mnist1d(num_samples=10)


def _tiny_split(seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.standard_normal((4, 10))
    y_tr, y_te = np.repeat(np.arange(4), 30), np.repeat(np.arange(4), 5)
    return Split((centres[y_tr] + rng.standard_normal((120, 10))).astype(np.float32), y_tr,
                 (centres[y_te] + rng.standard_normal((20, 10))).astype(np.float32), y_te)


def test_backbone_sees_only_base_classes() -> None:
    split = _tiny_split()
    feats = frozen_backbone_features(split, np.array([0, 2]), feature_dim=16, epochs=3)
    assert feats.x_train.shape == (120, 16) and feats.x_test.shape == (20, 16)
    assert np.all(feats.x_train >= 0) and np.isfinite(feats.x_train).all()      # ReLU features
    np.testing.assert_array_equal(feats.y_train, split.y_train)
    # Replacing every non-base training sample changes nothing: the backbone never saw them.
    other = split.x_train.copy()
    other[~np.isin(split.y_train, [0, 2])] = 99.0
    again = frozen_backbone_features(split._replace(x_train=other), np.array([0, 2]), feature_dim=16, epochs=3)
    np.testing.assert_array_equal(again.x_test, feats.x_test)


def test_backbone_training_fits_the_base_classes() -> None:
    from flax import nnx

    split = _tiny_split(1)
    model = MLPBackbone(10, 16, 4, hidden=32, rngs=nnx.Rngs(0))
    train_backbone(model, split.x_train, split.y_train, epochs=30, batch_size=30)
    logits = np.asarray(model(split.x_test))
    assert np.mean(logits.argmax(1) == split.y_test) > 0.9
    assert extract_features(model, split.x_test).shape == (20, 16)


def test_conv1d_backbone_on_signals_and_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    split = Split(rng.standard_normal((60, 40)).astype(np.float32), y, rng.standard_normal((9, 40)).astype(
        np.float32), y[:9])
    feats = frozen_backbone_features(split, np.array([0, 1]), arch="conv1d", feature_dim=8, epochs=1)
    assert feats.x_train.shape == (60, 8)
    with pytest.raises(ValueError, match="arch"):
        frozen_backbone_features(split, np.array([0, 1]), arch="resnet")
    with pytest.raises(ValueError, match="base_classes"):
        frozen_backbone_features(split, np.array([0]))
    with pytest.raises(ValueError, match="no training sample"):
        frozen_backbone_features(split, np.array([7, 8]))


def test_synthetic_features_are_seeded_balanced_and_overlapping() -> None:
    a = synthetic_features(classes=100, dim=768, train_per_class=20, test_per_class=5, seed=1)
    b = synthetic_features(classes=100, dim=768, train_per_class=20, test_per_class=5, seed=1)
    assert a.x_train.shape == (2000, 768) and a.x_train.dtype == np.float32
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, synthetic_features(100, 768, 20, 5, seed=2).x_train)
    assert np.all(np.bincount(a.y_train) == 20) and np.all(np.bincount(a.y_test) == 5)
    # Overlap: a ridge probe is far above chance (1%) but not perfect on held-out rows.
    x, onehot = a.x_train.astype(np.float64), np.eye(100)[a.y_train]
    w = np.linalg.solve(x.T @ x + np.eye(768), x.T @ onehot)
    acc = np.mean(np.argmax(a.x_test @ w, 1) == a.y_test)
    assert 0.2 < acc < 0.99
    big = synthetic_features(classes=1000, dim=768, train_per_class=2, test_per_class=1, seed=0)
    assert big.x_train.shape == (2000, 768) and big.classes == 1000
    with pytest.raises(ValueError, match="classes"):
        synthetic_features(classes=0)
    with pytest.raises(ValueError, match="separation"):
        synthetic_features(separation=-1.0)


def _write_cifar_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    # The official files are Python 2 pickles: byte-string keys, plus coarse labels and file names.
    batch = {b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * len(labels),
             b"filenames": [b"x.png"] * len(labels), b"batch_label": b"training batch 1 of 1"}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar100_python_batches_load_as_nhwc(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(5, 3072), dtype=np.uint8)
    _write_cifar_batch(tmp_path / "train", train, [3, 99, 0, 7, 3])
    _write_cifar_batch(tmp_path / "test", train[:2], [1, 2])
    split = load_cifar100(tmp_path)
    assert split.x_train.shape == (5, 32, 32, 3) and split.x_train.dtype == np.uint8
    np.testing.assert_array_equal(split.y_train, [3, 99, 0, 7, 3])
    # Row layout is 1024 red, 1024 green, 1024 blue values, each row-major over 32×32.
    r, c = 4, 17
    for channel in range(3):
        assert split.x_train[1, r, c, channel] == train[1, channel * 1024 + r * 32 + c]
    (tmp_path / "test").write_bytes(pickle.dumps({"data": train[:1]}))
    with pytest.raises(ValueError, match="fine_labels"):
        load_cifar100(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_cifar100(tmp_path / "missing")


def test_image_folder_labels_by_sorted_class_names(tmp_path: Path) -> None:
    from PIL import Image

    colours = {"n02_zebra": (255, 0, 0), "n01_apple": (0, 0, 255)}
    for name, colour in colours.items():
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (12 + i, 10), colour).save(tmp_path / name / f"img{i}.png")
    (tmp_path / "n01_apple" / "notes.txt").write_text("not an image")
    paths, labels, names = list_image_folder(tmp_path)
    assert names == ["n01_apple", "n02_zebra"] and labels.tolist() == [0, 0, 1, 1] and len(paths) == 4
    images, labels, _ = load_image_folder(tmp_path, size=(8, 6))
    assert images.shape == (4, 8, 6, 3)
    assert tuple(images[0, 0, 0]) == (0, 0, 255) and tuple(images[3, 0, 0]) == (255, 0, 0)
    with pytest.raises(ValueError, match="different sizes"):
        load_image_folder(tmp_path, size=None)
    with pytest.raises(ValueError, match="class sub-folders"):
        list_image_folder(tmp_path / "n01_apple")


def test_feature_files_round_trip_and_are_validated(tmp_path: Path) -> None:
    split = _tiny_split()
    path = save_feature_file(tmp_path / "feats.npz", split)
    loaded = load_feature_file(path)
    for got, want in zip(loaded, split):
        np.testing.assert_array_equal(got, want)
    np.savez(tmp_path / "partial.npz", x_train=split.x_train)
    with pytest.raises(ValueError, match="lacks"):
        load_feature_file(tmp_path / "partial.npz")
    bad = split._replace(x_test=np.full((20, 10), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        load_feature_file(save_feature_file(tmp_path / "nan.npz", bad))
    wrong = split._replace(y_train=split.y_train[:-1])
    with pytest.raises(ValueError, match="y_train"):
        load_feature_file(save_feature_file(tmp_path / "wrong.npz", wrong))
