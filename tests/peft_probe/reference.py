"""Independent float64 NumPy forward passes (Llama, BERT) written literally from the papers, head by head.

They read weights in the HF ``(d_out, d_in)`` layout under plain names, so they share no code with the Flax
modules or the loaders. ``rope="interleaved"`` rotates adjacent pairs ``(2i, 2i+1)`` as llama.cpp does on GGUF
q/k weights; ``rope="half"`` rotates ``(i, i + d/2)`` as HF does.
"""

from __future__ import annotations

import math

import numpy as np


def _rms_norm(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale


def _layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def rotate(x: np.ndarray, theta: float, rope: str) -> np.ndarray:
    """Rotary embedding of ``x: (t, heads, d)`` at positions ``0..t-1``, pair by pair."""
    t, _, d = x.shape
    out = np.empty_like(x)
    for i in range(d // 2):
        a, b = (2 * i, 2 * i + 1) if rope == "interleaved" else (i, i + d // 2)
        ang = np.arange(t)[:, None] * theta ** (-2.0 * i / d)
        c, s = np.cos(ang), np.sin(ang)
        out[..., a] = x[..., a] * c - x[..., b] * s
        out[..., b] = x[..., b] * c + x[..., a] * s
    return out


def llama_logits(w: dict, ids: np.ndarray, heads: int, kv_heads: int, eps: float, theta: float,
                 rope: str = "half") -> np.ndarray:
    """Logits ``(t, vocab)`` of one sequence. ``w``: embed (V, D), norm (D,), layers: list of dicts with
    attn_norm, ffn_norm (D,) and q, k, v, o, gate, up, down in ``(d_out, d_in)``; output head = embed (tied)."""
    x = w["embed"][ids].astype(np.float64)
    t, dim = x.shape
    hd = dim // heads
    causal = np.tril(np.ones((t, t), bool))
    for layer in w["layers"]:
        h = _rms_norm(x, layer["attn_norm"], eps)
        q = rotate((h @ layer["q"].T).reshape(t, heads, hd), theta, rope)
        k = rotate((h @ layer["k"].T).reshape(t, kv_heads, hd), theta, rope)
        v = (h @ layer["v"].T).reshape(t, kv_heads, hd)
        out = np.empty((t, heads, hd))
        for head in range(heads):
            kv = head // (heads // kv_heads)
            scores = np.where(causal, q[:, head] @ k[:, kv].T / math.sqrt(hd), -np.inf)
            out[:, head] = _softmax(scores) @ v[:, kv]
        x = x + out.reshape(t, dim) @ layer["o"].T
        h = _rms_norm(x, layer["ffn_norm"], eps)
        gate = h @ layer["gate"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ layer["up"].T)) @ layer["down"].T
    return _rms_norm(x, w["norm"], eps) @ w["embed"].T


def bert_hidden(w: dict[str, np.ndarray], ids: np.ndarray, layers: int, heads: int, eps: float) -> np.ndarray:
    """Last hidden states ``(t, D)`` of one unpadded sequence, ``w`` keyed by HF ``BertModel`` names."""
    from scipy.special import erf

    def lin(x, name):
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def ln(x, name):
        return _layer_norm(x, w[f"{name}.weight"], w[f"{name}.bias"], eps)

    t = len(ids)
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t]
         + w["embeddings.token_type_embeddings.weight"][0]).astype(np.float64)
    x = ln(x, "embeddings.LayerNorm")
    dim = x.shape[1]
    hd = dim // heads
    for i in range(layers):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{n}").reshape(t, heads, hd) for n in ("query", "key", "value"))
        ctx = np.concatenate([_softmax(q[:, h] @ k[:, h].T / math.sqrt(hd)) @ v[:, h] for h in range(heads)], -1)
        x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        inter = lin(x, p + "intermediate.dense")
        inter = 0.5 * inter * (1 + erf(inter / math.sqrt(2)))
        x = ln(lin(inter, p + "output.dense") + x, p + "output.LayerNorm")
    return x


def hf_tensors(model) -> dict[str, np.ndarray]:
    """A Flax module's parameters under HF names and layout (``kernel`` -> ``weight`` transposed), as
    transformers would save them; for writing test checkpoints and feeding the references above."""
    from flax import nnx

    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        stem, leaf = ".".join(map(str, path[:-1])), path[-1]
        value = np.asarray(var[...])
        name = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}[leaf]
        out[f"{stem}.{name}"] = np.ascontiguousarray(value.T if leaf == "kernel" else value)
    return out
