"""Flax NNX modules loadable from real weights (Llama family, BERT, EfficientNet-Lite)."""

from peft_probe.models.efficientnet import EfficientNetLite, EfficientNetLiteConfig, preprocess

__all__ = ["EfficientNetLite", "EfficientNetLiteConfig", "preprocess"]
