"""Synthetic stand-ins for pretrained-backbone features (ViT-B/16 class tokens: d = 768) at realistic scale.

Classes are grouped into superclasses (as CIFAR-100's 20 superclasses): a class centre is its superclass centre
plus a smaller class offset, so sibling classes overlap more than unrelated ones. Samples add noise with a
shared low-rank covariance (the dominant directions real features share) plus isotropic noise. All draws come
from one seeded generator, so a ``(arguments, seed)`` pair always gives the same arrays.
"""

from __future__ import annotations

import numpy as np

from continual.data.datasets import Split

__all__ = ["synthetic_features"]


def synthetic_features(
    classes: int = 100,
    dim: int = 768,
    train_per_class: int = 50,
    test_per_class: int = 20,
    superclasses: int | None = None,
    separation: float = 1.0,
    noise_rank: int = 32,
    seed: int = 0,
    dtype: type = np.float32,
) -> Split:
    """Class-clustered features with overlap; labels ``0..classes-1``, each class equally often.

    x = superclass_centre + class_offset + shared_low_rank_noise + isotropic_noise, where centres and offsets
    are scaled by ``separation`` (smaller -> more overlap; at the default a ridge probe on 100 classes reaches
    ≈ 88% with 50 training rows per class; 0.85 gives ≈ 76%). superclasses: default ``max(1, classes // 5)``.
    Train and test rows are shuffled.
    """
    for name, value in (("classes", classes), ("dim", dim), ("train_per_class", train_per_class),
                        ("test_per_class", test_per_class), ("noise_rank", noise_rank)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not np.isfinite(separation) or separation <= 0:
        raise ValueError(f"separation must be a positive finite number, got {separation!r}")
    superclasses = max(1, classes // 5) if superclasses is None else superclasses
    rng = np.random.default_rng(seed)
    # Centre norms do not grow with dim (≈ 4·separation between superclasses, ≈ 2·separation between siblings),
    # so the overlap with the unit-scale noise is the same at any width.
    scale = separation / np.sqrt(dim)
    super_centres = 4.0 * scale * rng.standard_normal((superclasses, dim))
    centres = super_centres[rng.integers(0, superclasses, classes)]
    centres = centres + 2.0 * scale * rng.standard_normal((classes, dim))
    mixing = rng.standard_normal((noise_rank, dim)) / np.sqrt(noise_rank)

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(classes, dtype=np.int64), per_class)
        x = centres[y] + rng.standard_normal((y.size, noise_rank)) @ mixing
        x += 0.5 * rng.standard_normal((y.size, dim))
        order = rng.permutation(y.size)
        return x[order].astype(dtype), y[order]

    x_train, y_train = draw(train_per_class)
    x_test, y_test = draw(test_per_class)
    return Split(x_train, y_train, x_test, y_test)
