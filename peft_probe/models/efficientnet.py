"""EfficientNet-Lite (ImageNet-1k classifier and 1280-d pooled features) in Flax NNX, inference only.

Tan & Le, 2019, "EfficientNet" (arXiv 1905.11946), Table 1 and Sec. 4: a stride-2 3×3 stem, a stack of MBConv
blocks (Sandler et al., 2018, "MobileNetV2", arXiv 1801.04381, Table 1: 1×1 expansion, k×k depthwise, linear 1×1
projection, identity shortcut when stride is 1 and widths match), a 1×1 head conv, global average pooling and a
linear classifier. The "Lite" variants (tensorflow/tpu ``models/official/efficientnet/lite``) drop
squeeze-and-excitation, replace swish by ReLU6 and keep the stem (32) and head (1280) widths fixed.

Layout is NHWC; kernels are ``(kh, kw, in / groups, out)`` and convolutions use TF "SAME" padding, which pads
``max((ceil(n / s) - 1) * s + k - n, 0)`` pixels per axis with the extra one at the bottom/right -- exactly what
``padding="SAME"`` computes in JAX for any input size (used by the dense convs; ``DepthwiseConv`` pads
explicitly by the same rule). BatchNorm uses its running statistics (``eps = 1e-3``
as in TF; the default 1e-5 changes predictions because some channels have running variance exactly 0). Dropout
before the classifier (0.2 in training) is the identity at inference and therefore absent.

Module paths follow the torch ``efficientnet_pytorch`` names without their leading underscore:
``blocks/{i}/depthwise_conv/kernel``, ``blocks/{i}/bn1/{scale,bias,mean,var}``, ``fc/kernel`` ...
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["BlockSpec", "DepthwiseConv", "EfficientNetLiteConfig", "EfficientNetLite", "MBConvBlock", "preprocess"]

INPUT_MEAN, INPUT_STD = 127.0, 128.0  # EfficientNet-Lite's integer-friendly normalization of 0..255 pixels


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: depthwise ``kernel`` size, its ``stride``, ``expand`` ratio and output width ``out``."""

    kernel: int
    stride: int
    expand: int
    out: int


# Tan & Le, 2019, Table 1 at width/depth multiplier 1 (Lite0), one entry per block.
_LITE0_BLOCKS = (
    (3, 1, 1, 16),
    (3, 2, 6, 24), (3, 1, 6, 24),
    (5, 2, 6, 40), (5, 1, 6, 40),
    (3, 2, 6, 80), (3, 1, 6, 80), (3, 1, 6, 80),
    (5, 1, 6, 112), (5, 1, 6, 112), (5, 1, 6, 112),
    (5, 2, 6, 192), (5, 1, 6, 192), (5, 1, 6, 192), (5, 1, 6, 192),
    (3, 1, 6, 320),
)


@dataclasses.dataclass(frozen=True)
class EfficientNetLiteConfig:
    """Architecture of an EfficientNet-Lite network (block list already expanded by the depth multiplier)."""

    blocks: tuple[BlockSpec, ...]
    stem_width: int = 32
    head_width: int = 1280
    num_classes: int = 1000
    in_channels: int = 3
    bn_eps: float = 1e-3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        blocks = tuple(b if isinstance(b, BlockSpec) else BlockSpec(*b) for b in self.blocks)
        object.__setattr__(self, "blocks", blocks)  # accept plain tuples; frozen dataclass needs this route
        if not blocks:
            raise ValueError("EfficientNetLiteConfig.blocks must not be empty")
        for i, b in enumerate(blocks):
            for name in ("kernel", "stride", "expand", "out"):
                value = getattr(b, name)
                if not isinstance(value, (int, np.integer)) or value <= 0:
                    raise ValueError(f"EfficientNetLiteConfig.blocks[{i}].{name} must be a positive integer, "
                                     f"got {value!r}")
        for name in ("stem_width", "head_width", "num_classes", "in_channels"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"EfficientNetLiteConfig.{name} must be a positive integer, got {value!r}")
        if not self.bn_eps > 0:
            raise ValueError(f"EfficientNetLiteConfig.bn_eps must be positive, got {self.bn_eps!r}")

    @classmethod
    def lite0(cls, **overrides: Any) -> EfficientNetLiteConfig:
        """EfficientNet-Lite0 on ImageNet-1k: 16 blocks, stem 32, head 1280, 1000 classes (4.65M parameters)."""
        return cls(**{"blocks": tuple(BlockSpec(*b) for b in _LITE0_BLOCKS), **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> EfficientNetLiteConfig:
        """A small random-weight config for tests: 4 blocks (one without expansion, two with residuals, kernels
        3 and 5, two stride-2 blocks), stem 8, head 32, 10 classes."""
        blocks = (BlockSpec(3, 1, 1, 8), BlockSpec(3, 2, 4, 12), BlockSpec(5, 1, 3, 12), BlockSpec(5, 2, 2, 16))
        return cls(**{"blocks": blocks, "stem_width": 8, "head_width": 32, "num_classes": 10, **overrides})

    @property
    def feature_dim(self) -> int:
        """Width of ``EfficientNetLite.features``: the head width."""
        return self.head_width


def _conv(c_in: int, c_out: int, kernel: int, stride: int, config: EfficientNetLiteConfig,
          rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(c_in, c_out, (kernel, kernel), strides=stride, padding="SAME", use_bias=False,
                    dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs)


class DepthwiseConv(nnx.Module):
    """k×k depthwise convolution (one filter per channel, no bias) with TF "SAME" padding.

    Computed as a sum over the ``k * k`` taps of strided slices times per-channel weights: the same arithmetic as
    ``lax.conv_general_dilated(..., feature_group_count=C)``, but XLA:CPU runs grouped convolutions 4-15× slower
    than these fused element-wise products. ``kernel`` is ``(k, k, 1, C)``, the layout ``nnx.Conv`` would use.
    """

    def __init__(self, channels: int, kernel: int, stride: int, config: EfficientNetLiteConfig, *, rngs: nnx.Rngs):
        self.stride, self.dtype = stride, config.dtype
        init = nnx.initializers.lecun_normal()  # nnx.Conv's default; fan-in k*k*1 from the kernel shape
        self.kernel = nnx.Param(init(rngs.params(), (kernel, kernel, 1, channels), config.param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        k, s = self.kernel.shape[0], self.stride
        (oh, top, bottom), (ow, left, right) = _same_padding(h, k, s), _same_padding(w, k, s)
        xp = jnp.pad(x.astype(self.dtype), ((0, 0), (top, bottom), (left, right), (0, 0)))
        kernel = self.kernel[...].astype(self.dtype)
        out = None
        for i in range(k):
            for j in range(k):
                tap = jax.lax.slice(xp, (0, i, j, 0), (n, i + s * (oh - 1) + 1, j + s * (ow - 1) + 1, c),
                                    (1, s, s, 1)) * kernel[i, j, 0]
                out = tap if out is None else out + tap
        return out


def _same_padding(n: int, k: int, s: int) -> tuple[int, int, int]:
    """TF "SAME" along one axis of length ``n``: ``(ceil(n / s), pad before, pad after)``, the odd pixel after."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2, total - total // 2


def _bn(width: int, config: EfficientNetLiteConfig, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(width, use_running_average=True, epsilon=config.bn_eps, dtype=config.dtype,
                         param_dtype=config.param_dtype, rngs=rngs)


class MBConvBlock(nnx.Module):
    """Inverted residual without squeeze-excitation: [1×1 expand, BN, ReLU6], k×k depthwise, BN, ReLU6,
    1×1 project, BN (linear bottleneck), plus the input when ``stride == 1`` and the widths match."""

    def __init__(self, c_in: int, spec: BlockSpec, config: EfficientNetLiteConfig, *, rngs: nnx.Rngs):
        hidden = c_in * spec.expand
        self.residual = spec.stride == 1 and c_in == spec.out
        if spec.expand != 1:  # no expansion at ratio 1; the other BNs keep their names (bn1, bn2) as in torch
            self.expand_conv = _conv(c_in, hidden, 1, 1, config, rngs)
            self.bn0 = _bn(hidden, config, rngs)
        else:
            self.expand_conv = None
        self.depthwise_conv = DepthwiseConv(hidden, spec.kernel, spec.stride, config, rngs=rngs)
        self.bn1 = _bn(hidden, config, rngs)
        self.project_conv = _conv(hidden, spec.out, 1, 1, config, rngs)
        self.bn2 = _bn(spec.out, config, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        if self.expand_conv is not None:
            h = jax.nn.relu6(self.bn0(self.expand_conv(h)))
        h = jax.nn.relu6(self.bn1(self.depthwise_conv(h)))
        h = self.bn2(self.project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite(nnx.Module):
    """``model(x) -> (n, num_classes)`` logits; ``features(x) -> (n, head_width)`` pooled features.

    ``x`` is NHWC float, already normalized (``preprocess``); any spatial size >= 1 works.
    """

    def __init__(self, config: EfficientNetLiteConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.conv_stem = _conv(config.in_channels, config.stem_width, 3, 2, config, rngs)
        self.bn0 = _bn(config.stem_width, config, rngs)
        blocks, width = [], config.stem_width
        for spec in config.blocks:
            blocks.append(MBConvBlock(width, spec, config, rngs=rngs))
            width = spec.out
        self.blocks = nnx.List(blocks)
        self.conv_head = _conv(width, config.head_width, 1, 1, config, rngs)
        self.bn1 = _bn(config.head_width, config, rngs)
        self.fc = nnx.Linear(config.head_width, config.num_classes, dtype=config.dtype,
                             param_dtype=config.param_dtype, rngs=rngs)

    def _check(self, x: jax.Array) -> None:
        if x.ndim != 4 or x.shape[-1] != self.config.in_channels:
            raise ValueError(f"x must be NHWC with {self.config.in_channels} channels, got shape {x.shape}")

    def stages(self, x: jax.Array) -> list[jax.Array]:
        """Activations ``[stem, block 0, ..., block B-1, head]``: the stem's and head's after BN + ReLU6, each
        block's output (after its residual add); ``len(config.blocks) + 2`` NHWC arrays, the last before pooling."""
        self._check(x)
        outs = [jax.nn.relu6(self.bn0(self.conv_stem(x)))]
        for block in self.blocks:
            outs.append(block(outs[-1]))
        outs.append(jax.nn.relu6(self.bn1(self.conv_head(outs[-1]))))
        return outs

    def features(self, x: jax.Array) -> jax.Array:
        """Global-average-pooled head activations ``(n, head_width)`` (the classifier's input)."""
        return self.stages(x)[-1].mean(axis=(1, 2))  # under jit the unused intermediates cost nothing

    def __call__(self, x: jax.Array) -> jax.Array:
        """ImageNet logits ``(n, num_classes)`` (no softmax)."""
        return self.fc(self.features(x))


def preprocess(images_u8: Any, size: int | Sequence[int], *, antialias: bool = True) -> jax.Array:
    """uint8 images -> normalized float32 NHWC input ``(n, h, w, 3)``: resize, repeat grey, ``(x - 127) / 128``.

    ``images_u8``: ``(n, H, W)`` or ``(n, H, W, 1)`` grayscale (repeated to 3 channels) or ``(n, H, W, 3)`` RGB,
    dtype uint8. ``size``: output ``h = w = size`` or ``(h, w)``. Resizing is ``jax.image.resize(..., "bilinear")``
    on the 0..255 values with half-pixel centres (TF2 ``tf.image.resize`` / PIL convention). With
    ``antialias=True`` (default) downsampling widens the triangle kernel by the scale factor (like
    ``tf.image.resize(antialias=True)``), so it averages instead of aliasing; upsampling is plain bilinear either
    way. The kernel weights are non-negative, so values stay in [0, 255] and normalized inputs in [-127/128, 1].
    """
    if isinstance(images_u8, jax.Array):
        dtype, shape = images_u8.dtype, images_u8.shape
    else:
        images_u8 = np.asarray(images_u8)
        dtype, shape = images_u8.dtype, images_u8.shape
    if dtype != np.uint8:
        raise TypeError(f"images_u8 must have dtype uint8 (0..255 pixels), got {dtype}")
    if len(shape) == 3:
        images_u8 = images_u8[..., None]
    elif len(shape) != 4 or shape[-1] not in (1, 3):
        raise ValueError(f"images_u8 must be (n, H, W), (n, H, W, 1) or (n, H, W, 3), got shape {shape}")
    if min(shape[:3]) <= 0:
        raise ValueError(f"images_u8 must hold at least one non-empty image, got shape {shape}")
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size) if isinstance(size, Sequence) else ()
    if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ValueError(f"size must be a positive int or a pair of positive ints, got {size!r}")
    return _resize_normalize(jnp.asarray(images_u8), (int(hw[0]), int(hw[1])), antialias)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _resize_normalize(images: jax.Array, hw: tuple[int, int], antialias: bool) -> jax.Array:
    x = images.astype(jnp.float32)
    if x.shape[1:3] != hw:
        x = jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), "bilinear", antialias=antialias)
    x = jnp.broadcast_to(x, (*x.shape[:3], 3))  # grey -> RGB; a no-op for 3 channels
    return (x - INPUT_MEAN) / INPUT_STD
