"""Independent float64 NumPy forward of EfficientNet-Lite on raw ``efficientnet_pytorch``-named tensors.

It shares no code with ``peft_probe.models.efficientnet``: TF "SAME" padding is computed explicitly
(``out = ceil(n / s)``, ``pad = max((out - 1) * s + k - n, 0)``, the odd pixel at the bottom/right), convolutions
are sums over kernel taps of strided slices (``tensordot`` for dense taps, a per-channel product for depthwise
ones), BatchNorm is ``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` on torch-layout weights.
The architecture is read off the tensor names and shapes; only the per-block strides are given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BN_EPS = 1e-3


def same_padding(n: int, k: int, s: int) -> tuple[int, int, int]:
    """TF "SAME" for one axis of length ``n``: ``(output length, pad before, pad after)``."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2, total - total // 2


def conv(x: np.ndarray, weight: np.ndarray, stride: int, depthwise: bool = False) -> np.ndarray:
    """NHWC ``x`` with torch ``weight`` ``(out, in or 1, kh, kw)``, TF SAME padding, no bias."""
    n, h, w, c = x.shape
    _, _, kh, kw = weight.shape
    oh, top, bottom = same_padding(h, kh, stride)
    ow, left, right = same_padding(w, kw, stride)
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out = np.zeros((n, oh, ow, weight.shape[0]), np.float64)
    for a in range(kh):
        for b in range(kw):
            tap = xp[:, a:a + stride * (oh - 1) + 1:stride, b:b + stride * (ow - 1) + 1:stride, :]
            if depthwise:
                out += tap * weight[:, 0, a, b]
            else:
                out += np.tensordot(tap, weight[:, :, a, b], axes=([3], [1]))
    return out


def batch_norm(x: np.ndarray, t: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    scale = t[f"{prefix}.weight"] / np.sqrt(t[f"{prefix}.running_var"].astype(np.float64) + BN_EPS)
    return (x - t[f"{prefix}.running_mean"]) * scale + t[f"{prefix}.bias"]


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def forward(tensors: dict[str, np.ndarray], strides: Sequence[int],
            x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """``(stages, pooled features, logits)`` in float64; ``stages`` = stem, every block's output, head."""
    t = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    h = relu6(batch_norm(conv(np.asarray(x, np.float64), t["_conv_stem.weight"], 2), t, "_bn0"))
    stages = [h]
    for i, stride in enumerate(strides):
        p = f"_blocks.{i}."
        y = h
        if f"{p}_expand_conv.weight" in t:
            y = relu6(batch_norm(conv(y, t[f"{p}_expand_conv.weight"], 1), t, f"{p}_bn0"))
        y = relu6(batch_norm(conv(y, t[f"{p}_depthwise_conv.weight"], stride, depthwise=True), t, f"{p}_bn1"))
        y = batch_norm(conv(y, t[f"{p}_project_conv.weight"], 1), t, f"{p}_bn2")
        h = y + h if stride == 1 and y.shape[-1] == h.shape[-1] else y
        stages.append(h)
    if f"_blocks.{len(strides)}._depthwise_conv.weight" in t:
        raise ValueError(f"the tensors hold more than the {len(strides)} blocks given strides for")
    stages.append(relu6(batch_norm(conv(h, t["_conv_head.weight"], 1), t, "_bn1")))
    features = stages[-1].mean(axis=(1, 2))
    return stages, features, features @ t["_fc.weight"].T + t["_fc.bias"]


def random_tensors(rng: np.random.Generator, blocks: Sequence[tuple[int, int, int, int]], stem: int, head: int,
                   classes: int, in_channels: int = 3) -> dict[str, np.ndarray]:
    """Random float32 torch-named tensors for ``blocks`` = ``(kernel, stride, expand, out)``; about a tenth of
    the BN channels get running variance exactly 0 (as in the real checkpoint, where eps then matters)."""
    t: dict[str, np.ndarray] = {}

    def conv_w(name: str, o: int, i: int, k: int) -> None:
        t[name] = (rng.standard_normal((o, i, k, k)) / np.sqrt(i * k * k)).astype(np.float32)

    def bn(prefix: str, c: int) -> None:
        var = rng.uniform(0.5, 2.0, c)
        var[rng.random(c) < 0.1] = 0.0
        t.update({f"{prefix}.weight": rng.uniform(0.5, 1.5, c), f"{prefix}.bias": rng.normal(0, 0.1, c),
                  f"{prefix}.running_mean": rng.normal(0, 0.1, c), f"{prefix}.running_var": var})
        t[f"{prefix}.num_batches_tracked"] = np.array(7, np.int64)

    conv_w("_conv_stem.weight", stem, in_channels, 3)
    bn("_bn0", stem)
    width = stem
    for i, (k, _, e, out) in enumerate(blocks):
        p, hidden = f"_blocks.{i}.", width * e
        if e != 1:
            conv_w(f"{p}_expand_conv.weight", hidden, width, 1)
            bn(f"{p}_bn0", hidden)
        conv_w(f"{p}_depthwise_conv.weight", hidden, 1, k)
        bn(f"{p}_bn1", hidden)
        conv_w(f"{p}_project_conv.weight", out, hidden, 1)
        bn(f"{p}_bn2", out)
        width = out
    conv_w("_conv_head.weight", head, width, 1)
    bn("_bn1", head)
    t["_fc.weight"] = (rng.standard_normal((classes, head)) / np.sqrt(head)).astype(np.float32)
    t["_fc.bias"] = rng.normal(0, 0.1, classes).astype(np.float32)
    return {k: v if v.dtype == np.int64 else v.astype(np.float32) for k, v in t.items()}
