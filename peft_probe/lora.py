"""LoRA for Flax NNX modules, placed by PEFT's matching rules and exported in PEFT's file format.

Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv 2106.09685), eq. 3:
``h = W0 x + (α/r) B A x`` with ``A (r, d_in)``, ``B (d_out, r)``; ``B = 0`` at start so the adapted model
equals the base model. ``A`` is Kaiming-uniform with PEFT's default bound ``1/sqrt(d_in)`` (torch's
``kaiming_uniform_(a=sqrt(5))``), or Gaussian with std ``1/r`` (PEFT ``init_lora_weights="gaussian"``).

Placement is data, as in PEFT's ``LoraConfig``: a module is adapted when its dotted name (``model.layers.3.mlp.
down_proj``) ends with one of ``target_modules`` (or full-matches ``target_modules`` when it is a regex string), and,
for a suffix list, its ``layers.{i}`` index is in ``layers_to_transform``. Adapter weights are ``nnx.LoRAParam``
variables so ``nnx.Optimizer(..., wrt=nnx.LoRAParam)`` and checkpointers select exactly them.

Layouts: flax kernels are ``(d_in, d_out)``; here ``lora_A`` is ``(d_in, r)`` and ``lora_B`` ``(r, d_out)`` so that
``y = x @ kernel + s * x @ lora_A @ lora_B``; PEFT's ``lora_A.weight`` is ``lora_A.T`` and ``lora_B.weight`` is
``lora_B.T``.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from peft_probe.lora_config import ALL_LINEAR, INITS, LoraConfig, layer_index

__all__ = [
    "LoraConfig", "LoraLinear", "inject_lora", "merge_lora", "unmerge_lora", "export_peft", "linear_modules",
    "lora_modules", "trainable_count", "lora_a_init", "adapter_key", "save_adapters", "load_adapters",
    "module_layer", "base_key", "name_hash", "placement_config", "candidate_modules", "ALL_LINEAR",
]

class LoraLinear(nnx.Module):
    """``base_layer(x) + s * dropout(x) @ lora_A @ lora_B`` (Hu et al., 2021, eq. 3), wrapping an ``nnx.Linear``.

    The wrapped layer keeps its kernel; after ``merge()`` the kernel holds ``W0 + s A B`` and the adapter path
    is skipped (PEFT ``merge``), ``unmerge()`` subtracts it again.
    """

    def __init__(self, base_layer: nnx.Linear, r: int, scale: float, lora_a: jax.Array, dropout: float,
                 rngs: nnx.Rngs | None, init: str = "kaiming"):
        d_in, d_out = base_layer.kernel.shape
        self.base_layer = base_layer
        self.scale = float(scale)
        self.init = init  # how A was drawn, kept for placement_config / export
        self.lora_A = nnx.LoRAParam(jnp.asarray(lora_a, base_layer.kernel.dtype))
        self.lora_B = nnx.LoRAParam(jnp.zeros((r, d_out), base_layer.kernel.dtype))
        # eval mode until model.train(): probing and evaluation must see the deterministic adapter
        self.dropout = nnx.Dropout(dropout, deterministic=True, rngs=rngs) if dropout > 0 else None
        self.merged = False

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.base_layer(x)
        if self.merged:
            return y
        h = self.dropout(x) if self.dropout is not None else x
        # The adapter runs on (tokens, d_in) rows: on a (b, t, d_in) input, dA = hᵀ(δ Bᵀ) would contract two axes
        # at once, which XLA's CPU backend runs far slower than one GEMM (SmolLM2, batch 4 x 128: 39 vs ~10 ms
        # of adapter overhead per decoder layer and step).
        rows = h.reshape(-1, h.shape[-1]).astype(self.lora_A.dtype)
        delta = ((rows @ self.lora_A[...]) @ self.lora_B[...]).reshape(*h.shape[:-1], -1)
        return y + (self.scale * delta).astype(y.dtype)

    def delta_weight(self) -> jax.Array:
        """``s * lora_A @ lora_B``: ``(d_in, d_out)``, the change to the flax kernel."""
        return self.scale * (self.lora_A[...] @ self.lora_B[...])

    def merge(self) -> None:
        if not self.merged:
            kernel = self.base_layer.kernel
            kernel[...] = (kernel[...] + self.delta_weight()).astype(kernel.dtype)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            kernel = self.base_layer.kernel
            kernel[...] = (kernel[...] - self.delta_weight()).astype(kernel.dtype)
            self.merged = False


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def module_layer(name: str) -> int:
    """Decoder-layer index of a dotted module name (PEFT's rule), or -1 if it has none."""
    index = layer_index(name + ".")
    return -1 if index is None else index


def _output_head(model: nnx.Module) -> str | None:
    # PEFT's "all-linear" skips the output embedding; HF calls it lm_head (cls for BERT heads).
    for name in ("lm_head", "cls", "classifier", "score"):
        if isinstance(getattr(model, name, None), nnx.Module):
            return name
    return None


def linear_modules(model: nnx.Module) -> dict[str, nnx.Linear]:
    """Every plain ``nnx.Linear`` in ``model`` by dotted name (LoRA wrappers' inner layers excluded)."""
    found: dict[str, nnx.Linear] = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Linear) and "base_layer" not in path:
            found[_dotted(path)] = node
    return dict(sorted(found.items(), key=lambda kv: (module_layer(kv[0]), kv[0])))


def lora_modules(model: nnx.Module) -> dict[str, LoraLinear]:
    """Every ``LoraLinear`` in ``model`` by dotted name, ordered by layer then name."""
    found = {_dotted(p): n for p, n in nnx.iter_graph(model) if isinstance(n, LoraLinear)}
    return dict(sorted(found.items(), key=lambda kv: (module_layer(kv[0]), kv[0])))


def candidate_modules(model: nnx.Module, config: LoraConfig) -> dict[str, nnx.Linear]:
    """The ``nnx.Linear`` modules ``config`` selects, by dotted name."""
    head = _output_head(model)
    return {n: m for n, m in linear_modules(model).items() if config.matches(n, head)}


def name_hash(name: str) -> int:
    """A stable 31-bit hash (CRC32) of a module name, folded into the adapter key."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def adapter_key(key: jax.Array, name: str) -> jax.Array:
    """The key of module ``name``'s ``A``: independent of which other modules are adapted."""
    return jax.random.fold_in(key, name_hash(name))


def lora_a_init(key: jax.Array, d_in: int, r: int, init: str = "kaiming", dtype: Any = jnp.float32) -> jax.Array:
    """``A`` in flax layout ``(d_in, r)``: U(-1/sqrt(d_in), 1/sqrt(d_in)) (PEFT default) or N(0, 1/r^2)."""
    if init == "kaiming":
        bound = 1.0 / np.sqrt(d_in)
        return jax.random.uniform(key, (d_in, r), dtype, -bound, bound)
    if init == "gaussian":
        return jax.random.normal(key, (d_in, r), dtype) / r
    raise ValueError(f"init must be one of {INITS}, got {init!r}")


def base_key(rngs: nnx.Rngs | int | jax.Array) -> jax.Array:
    """The key adapters are drawn from: ``jax.random.key(seed)`` for an int, ``rngs.params()`` for ``nnx.Rngs``."""
    if isinstance(rngs, nnx.Rngs):
        return rngs.params()
    if isinstance(rngs, (int, np.integer)):
        return jax.random.key(int(rngs))
    return rngs


def module_path(name: str) -> tuple:
    """The graph path of a dotted module name (``model.layers.3.mlp`` -> ``("model", "layers", 3, "mlp")``)."""
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def module_at(model: nnx.Module, path: tuple) -> Any:
    """The node at graph ``path`` below ``model``."""
    node = model
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return node


def _set_child(model: nnx.Module, path: tuple, new: nnx.Module) -> None:
    parent = module_at(model, path[:-1])
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)


def inject_lora(model: nnx.Module, config: LoraConfig, rngs: nnx.Rngs | int = 0) -> list[str]:
    """Replace every ``nnx.Linear`` that ``config`` selects by a ``LoraLinear`` (in place); return their names.

    ``A`` of module ``name`` is drawn from ``adapter_key(base_key(rngs), name)``, so the same seed gives the same
    ``A`` whatever else is adapted (the PAGE probe's concrete variant relies on this). ``B = 0``.
    """
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a LoraConfig, got {type(config).__name__}")
    if lora_modules(model):
        raise ValueError("model already has LoRA adapters; merge_lora(model, unload=True) them first")
    key = base_key(rngs)
    dropout_rngs = nnx.Rngs(dropout=jax.random.fold_in(key, 1)) if config.dropout > 0 else None
    targets = candidate_modules(model, config)
    if not targets:
        names = list(linear_modules(model))[:8]
        raise ValueError(f"LoraConfig target_modules={config.target_modules!r}, layers_to_transform="
                         f"{config.layers_to_transform!r} matched no nnx.Linear (some names: {names})")
    paths = {_dotted(p): p for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Linear)}
    for name, linear in targets.items():
        d_in, r = linear.kernel.shape[0], config.rank_of(name)  # rank_pattern / alpha_pattern, as in PEFT
        a = lora_a_init(adapter_key(key, name), d_in, r, config.init, linear.kernel.dtype)
        _set_child(model, paths[name], LoraLinear(linear, r, config.scale_of(name), a, config.dropout, dropout_rngs,
                                                  config.init))
    return list(targets)


def merge_lora(model: nnx.Module, unload: bool = False) -> None:
    """Fold every adapter into its kernel (``W0 + s A B``); with ``unload`` also drop the wrappers (PEFT
    ``merge_and_unload``) so the model is a plain model again."""
    for name, module in lora_modules(model).items():
        module.merge()
        if unload:
            path = module_path(name)
            _set_child(model, path, module.base_layer)


def unmerge_lora(model: nnx.Module) -> None:
    """Subtract every merged adapter from its kernel again (PEFT ``unmerge_adapter``)."""
    for module in lora_modules(model).values():
        module.unmerge()


def trainable_count(model: nnx.Module) -> int:
    """Number of adapter (``nnx.LoRAParam``) scalars."""
    return int(sum(np.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.LoRAParam))))


def _peft_tensors(model: nnx.Module) -> Iterator[tuple[str, np.ndarray]]:
    for name, module in lora_modules(model).items():
        prefix = f"base_model.model.{name}"
        yield f"{prefix}.lora_A.weight", np.ascontiguousarray(np.asarray(module.lora_A[...]).T)
        yield f"{prefix}.lora_B.weight", np.ascontiguousarray(np.asarray(module.lora_B[...]).T)


def placement_config(model: nnx.Module) -> LoraConfig:
    """A ``LoraConfig`` that selects exactly the adapted modules of ``model`` (suffixes + layers if those
    reproduce the set, else a regex of the exact names), with their rank, scale and dropout."""
    modules = lora_modules(model)
    if not modules:
        raise ValueError("model has no LoRA adapters; call inject_lora first")
    first = next(iter(modules.values()))
    r = int(first.lora_A.shape[1])
    dropout = first.dropout.rate if first.dropout is not None else 0.0
    # Modules whose rank or alpha differ from the first's are named exactly in rank_pattern / alpha_pattern.
    ranks = {n: int(m.lora_A.shape[1]) for n, m in modules.items()}
    alphas = {n: m.scale * ranks[n] for n, m in modules.items()}
    rank_pattern = {re.escape(n): k for n, k in ranks.items() if k != r}
    alpha_pattern = {re.escape(n): a for n, a in alphas.items() if a != first.scale * r}
    shared = dict(r=r, alpha=first.scale * r, dropout=dropout, init=getattr(first, "init", "kaiming"),
                  rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    head = _output_head(model)
    names = set(modules)
    all_names = names | set(linear_modules(model))
    layers = sorted({module_layer(n) for n in names})
    suffixes = tuple(sorted({n.rsplit(".", 1)[-1] for n in names}))
    for layer_choice in (None, tuple(layers) if -1 not in layers else None):
        config = LoraConfig(target_modules=suffixes, layers_to_transform=layer_choice, **shared)
        if {n for n in all_names if config.matches(n, head)} == names:
            return config
    return LoraConfig(target_modules="|".join(re.escape(n) for n in sorted(names)), **shared)


def export_peft(model: nnx.Module, path: str | Path, config: LoraConfig | None = None,
                base_model_name_or_path: str | None = None) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` in PEFT's layout into folder ``path``.

    Keys: ``base_model.model.<name>.lora_A.weight`` ``(r, d_in)`` and ``...lora_B.weight`` ``(d_out, r)``,
    loadable by ``peft.PeftModel.from_pretrained`` on the matching Hugging Face model. ``config`` defaults to
    ``placement_config(model)``; it must select exactly the adapted modules with their ranks and scales (else
    ``ValueError``: PEFT would load a different set, silently). ``task_type``: the config's, else the model
    class's ``peft_task_type`` (``CAUSAL_LM`` for Llama, ``FEATURE_EXTRACTION`` for BERT and unknown models).
    """
    from safetensors.numpy import save_file

    modules = lora_modules(model)
    if not modules:
        raise ValueError("model has no LoRA adapters to export; call inject_lora first")
    if any(m.merged for m in modules.values()):
        raise ValueError("adapters are merged into the kernels; unmerge_lora(model) before exporting")
    if config is None:
        config = placement_config(model)  # describes the adapters by construction
    else:
        _check_describes(model, config, modules)  # before anything is written
    task = getattr(model, "peft_task_type", "FEATURE_EXTRACTION")
    peft_config = config.to_peft_dict(base_model_name_or_path, list(modules), task_type=task)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(dict(_peft_tensors(model)), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
    return out


def _check_describes(model: nnx.Module, config: LoraConfig, modules: dict[str, LoraLinear]) -> None:
    """``config`` selects exactly ``modules`` with their ranks and scales -- what PEFT will rebuild from it."""
    head = _output_head(model)
    selected = {n for n in set(modules) | set(linear_modules(model)) if config.matches(n, head)}
    if selected != set(modules):
        extra, missing = sorted(selected - set(modules)), sorted(set(modules) - selected)
        raise ValueError(f"the config does not describe the adapted modules: it selects {extra[:4]} too and misses "
                         f"{missing[:4]}; PEFT would load a different adapter (pass config=None to derive one)")
    for name, module in modules.items():
        r = int(module.lora_A.shape[1])
        if config.rank_of(name) != r or not np.isclose(config.scale_of(name), module.scale, rtol=1e-12, atol=0):
            raise ValueError(f"the config gives {name} rank {config.rank_of(name)} and scale {config.scale_of(name)}; "
                             f"the adapter has rank {r} and scale {module.scale}")


def _adapter_arrays(model: nnx.Module) -> dict[str, jax.Array]:
    arrays = {}
    for name, module in lora_modules(model).items():
        arrays[f"{name}.lora_A"] = module.lora_A[...]
        arrays[f"{name}.lora_B"] = module.lora_B[...]
    return arrays


def save_adapters(model: nnx.Module, path: str | Path, metadata: dict | None = None, overwrite: bool = False) -> Path:
    """Orbax checkpoint of the adapter weights only (flax layout, keyed ``<name>.lora_A``), via
    ``analytic.save_state`` (atomic, checksummed)."""
    from analytic import save_state

    arrays = _adapter_arrays(model)
    if not arrays:
        raise ValueError("model has no LoRA adapters to save; call inject_lora first")
    return save_state(path, arrays, dict(metadata or {}), overwrite=overwrite)


def load_adapters(model: nnx.Module, path: str | Path) -> dict:
    """Restore adapters saved by ``save_adapters`` into ``model`` (same placement and shapes, else
    ``analytic.checkpoint.CheckpointError``); returns the saved metadata."""
    from analytic import load_state

    loaded, metadata = load_state(path, like=_adapter_arrays(model))
    for name, module in lora_modules(model).items():
        module.lora_A[...] = jnp.asarray(loaded[f"{name}.lora_A"], module.lora_A.dtype)
        module.lora_B[...] = jnp.asarray(loaded[f"{name}.lora_B"], module.lora_B.dtype)
    return metadata
