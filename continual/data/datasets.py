"""Small real datasets that need no download: scikit-learn's ``digits`` and procedurally generated MNIST-1D."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Split", "load_digits", "load_mnist1d"]


class Split(NamedTuple):
    """A train/test split. x_train: (n, ...) float32, y_train: (n,) int64, x_test: (m, ...), y_test: (m,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def load_digits(test_fraction: float = 0.3, seed: int = 0) -> Split:
    """scikit-learn's 8×8 ``digits`` (1797 samples, 10 classes), pixels scaled to [0, 1], stratified split."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    bunch = _load()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Split(x_tr, y_tr, x_te, y_te)


def load_mnist1d(num_samples: int = 5000, seed: int = 42) -> Split:
    """MNIST-1D (Greydanus, 2020): 10 classes of length-40 signals, generated locally.

    Calls ``mnist1d.data.make_dataset`` with the package's default arguments (``get_dataset_args()``) and only
    ``num_samples``/``seed`` changed; 80/20 train/test split as the package makes it. ``get_dataset`` is never
    used because it downloads. Note that ``make_dataset`` reseeds NumPy's and Python's global generators.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    if num_samples < 50:
        raise ValueError(f"num_samples must be at least 50 (5 per class and split), got {num_samples}")
    args = get_dataset_args()
    args.num_samples, args.seed = int(num_samples), int(seed)
    data = make_dataset(args)
    return Split(
        np.asarray(data["x"], np.float32), np.asarray(data["y"], np.int64),
        np.asarray(data["x_test"], np.float32), np.asarray(data["y_test"], np.int64),
    )
