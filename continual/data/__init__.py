"""Data for continual-learning experiments: small real sets with a frozen backbone, synthetic pretrained-feature
sets, and loaders for CIFAR-100 batches, ImageNet-style image folders and ``.npz`` feature files.

Nothing here downloads anything: ``digits`` ships with scikit-learn, ``mnist1d`` is generated procedurally, and
Fashion-MNIST and WordNet are read from their Debian packages (``continual.data.real``); cached frozen-encoder
features of those two are in ``continual.data.features`` (imported on demand, as it loads JAX models).
"""

from __future__ import annotations

from continual.data.backbone import (
    Conv1DBackbone,
    MLPBackbone,
    extract_features,
    frozen_backbone_features,
    train_backbone,
)
from continual.data.datasets import Split, load_digits, load_mnist1d
from continual.data.loaders import (
    list_image_folder,
    load_cifar100,
    load_feature_file,
    load_image_folder,
    save_feature_file,
)
from continual.data.real import FASHION_MNIST_CLASSES, WORDNET_LEXNAMES, load_fashion_mnist, load_wordnet_supersenses
from continual.data.synthetic import synthetic_features

__all__ = [
    "Split", "load_digits", "load_mnist1d", "MLPBackbone", "Conv1DBackbone", "train_backbone", "extract_features",
    "frozen_backbone_features", "synthetic_features", "load_cifar100", "list_image_folder", "load_image_folder",
    "load_feature_file", "save_feature_file", "load_fashion_mnist", "load_wordnet_supersenses",
    "FASHION_MNIST_CLASSES", "WORDNET_LEXNAMES",
]
