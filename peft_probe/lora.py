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

import dataclasses
import json
import re
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "LoraConfig", "LoraLinear", "inject_lora", "merge_lora", "unmerge_lora", "export_peft", "linear_modules",
    "lora_modules", "trainable_count", "lora_a_init", "adapter_key", "save_adapters", "load_adapters",
    "module_layer", "base_key", "name_hash", "placement_config", "candidate_modules", "ALL_LINEAR",
]

ALL_LINEAR = "all-linear"
_INITS = ("kaiming", "gaussian")
_LAYER_INDEX = re.compile(r".*\.[^.]*\.(\d+)\.")  # PEFT's default layers_pattern: "<anything>.<name>.<int>."


def _is_real(value: object) -> bool:
    """A real scalar (Python, NumPy or a 0-d JAX array), but not a bool or a string."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        return False
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything numpy cannot even wrap is not a number
        return False
    return arr.ndim == 0 and arr.dtype.kind in "iuf"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Where and how to place LoRA adapters (field names and matching rules as in ``peft.LoraConfig``).

    r: rank; alpha: scale numerator (``s = alpha / r``); target_modules: suffixes of dotted module names
    (``["q_proj", "v_proj"]``), a regex string full-matched against the whole name, or ``"all-linear"`` (every
    ``nnx.Linear`` except the output head); layers_to_transform: decoder-layer indices (only with a suffix
    list, as in PEFT); dropout: on the adapter's input; init: ``"kaiming"`` (PEFT default) or ``"gaussian"``.
    """

    r: int = 8
    alpha: float = 16.0
    target_modules: Sequence[str] | str = ("q_proj", "v_proj")
    layers_to_transform: Sequence[int] | int | None = None
    dropout: float = 0.0
    init: str = "kaiming"

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)) or self.r <= 0:
            raise ValueError(f"LoraConfig.r must be a positive integer, got {self.r!r}")
        if not _is_real(self.alpha) or not np.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"LoraConfig.alpha must be a positive finite number, got {self.alpha!r}")
        if not _is_real(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraConfig.dropout must be a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.init, str) or self.init not in _INITS:
            raise ValueError(f"LoraConfig.init must be one of {_INITS}, got {self.init!r}")
        targets = self.target_modules
        if isinstance(targets, str):
            if targets != ALL_LINEAR:
                try:
                    re.compile(targets)
                except re.error as err:
                    raise ValueError(f"LoraConfig.target_modules={targets!r} is not a valid regex: {err}") from err
        else:
            # Only real sequences of names: a bare number, None, bytes or a mapping is a mistake, not a target list.
            if not isinstance(targets, (list, tuple, set, frozenset)):
                raise TypeError(f"LoraConfig.target_modules must be a string or a list/tuple/set of names, got "
                                f"{type(targets).__name__} {targets!r}")
            targets = tuple(sorted(targets)) if isinstance(targets, (set, frozenset)) else tuple(targets)
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise ValueError(f"LoraConfig.target_modules must be non-empty names, got {self.target_modules!r}")
            object.__setattr__(self, "target_modules", targets)
        layers = self.layers_to_transform
        if layers is not None:
            if isinstance(layers, (int, np.integer)) and not isinstance(layers, (bool, np.bool_)):
                layers = (layers,)
            elif isinstance(layers, (list, tuple, range)):
                layers = tuple(layers)
            else:
                raise TypeError(f"LoraConfig.layers_to_transform must be an int or a list/tuple of ints, got "
                                f"{type(layers).__name__} {layers!r}")
            if not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) and i >= 0
                       for i in layers):
                raise ValueError(f"LoraConfig.layers_to_transform must be non-negative ints, got {layers!r}")
            object.__setattr__(self, "layers_to_transform", tuple(int(i) for i in layers))

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.r

    def matches(self, name: str, output_head: str | None = None) -> bool:
        """PEFT's ``check_target_module_exists`` for the dotted module name ``name``."""
        targets = self.target_modules
        if targets == ALL_LINEAR:
            return name != output_head
        if isinstance(targets, str):  # a regex bypasses layers_to_transform, as in PEFT
            return re.fullmatch(targets, name) is not None
        if name in targets:
            return True
        if not any(name.endswith("." + t) for t in targets):
            return False
        if not self.layers_to_transform:
            return True
        found = _LAYER_INDEX.match(name)
        return found is not None and int(found.group(1)) in self.layers_to_transform

    def to_peft_dict(self, base_model_name_or_path: str | None = None, module_names: Sequence[str] = ()) -> dict:
        """``adapter_config.json`` contents as ``peft.LoraConfig.to_dict()`` writes them.

        ``"all-linear"`` is resolved to the adapted modules' short names (PEFT does the same on load).
        """
        targets = self.target_modules
        if targets == ALL_LINEAR:
            targets = sorted({n.rsplit(".", 1)[-1] for n in module_names})
        elif not isinstance(targets, str):
            targets = sorted(targets)
        return {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
            "revision": None, "inference_mode": True, "r": self.r,
            "lora_alpha": int(self.alpha) if float(self.alpha).is_integer() else float(self.alpha),
            "target_modules": targets, "lora_dropout": self.dropout, "fan_in_fan_out": False, "bias": "none",
            "use_rslora": False, "use_dora": False, "modules_to_save": None,
            "init_lora_weights": True if self.init == "kaiming" else "gaussian",
            "layers_to_transform": list(self.layers_to_transform) if self.layers_to_transform else None,
            "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}, "auto_mapping": None,
        }


class LoraLinear(nnx.Module):
    """``base_layer(x) + s * dropout(x) @ lora_A @ lora_B`` (Hu et al., 2021, eq. 3), wrapping an ``nnx.Linear``.

    The wrapped layer keeps its kernel; after ``merge()`` the kernel holds ``W0 + s A B`` and the adapter path
    is skipped (PEFT ``merge``), ``unmerge()`` subtracts it again.
    """

    def __init__(self, base_layer: nnx.Linear, r: int, scale: float, lora_a: jax.Array, dropout: float,
                 rngs: nnx.Rngs | None):
        d_in, d_out = base_layer.kernel.shape
        self.base_layer = base_layer
        self.scale = float(scale)
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
        delta = (h.astype(self.lora_A.dtype) @ self.lora_A[...]) @ self.lora_B[...]
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
    found = _LAYER_INDEX.match(name + ".")
    return int(found.group(1)) if found else -1


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
    raise ValueError(f"init must be one of {_INITS}, got {init!r}")


def base_key(rngs: nnx.Rngs | int | jax.Array) -> jax.Array:
    """The key adapters are drawn from: ``jax.random.key(seed)`` for an int, ``rngs.params()`` for ``nnx.Rngs``."""
    if isinstance(rngs, nnx.Rngs):
        return rngs.params()
    if isinstance(rngs, (int, np.integer)):
        return jax.random.key(int(rngs))
    return rngs


def _set_child(model: nnx.Module, path: tuple, new: nnx.Module) -> None:
    parent = model
    for part in path[:-1]:
        parent = parent[part] if isinstance(part, int) else getattr(parent, part)
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
        d_in = linear.kernel.shape[0]
        a = lora_a_init(adapter_key(key, name), d_in, config.r, config.init, linear.kernel.dtype)
        _set_child(model, paths[name], LoraLinear(linear, config.r, config.scale, a, config.dropout, dropout_rngs))
    return list(targets)


def merge_lora(model: nnx.Module, unload: bool = False) -> None:
    """Fold every adapter into its kernel (``W0 + s A B``); with ``unload`` also drop the wrappers (PEFT
    ``merge_and_unload``) so the model is a plain model again."""
    for name, module in lora_modules(model).items():
        module.merge()
        if unload:
            path = tuple(int(p) if p.isdigit() else p for p in name.split("."))
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
    shared = dict(r=r, alpha=first.scale * r, dropout=dropout)
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
    ``placement_config(model)``.
    """
    from safetensors.numpy import save_file

    modules = lora_modules(model)
    if not modules:
        raise ValueError("model has no LoRA adapters to export; call inject_lora first")
    if any(m.merged for m in modules.values()):
        raise ValueError("adapters are merged into the kernels; unmerge_lora(model) before exporting")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(dict(_peft_tensors(model)), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = placement_config(model) if config is None else config
    peft_config = config.to_peft_dict(base_model_name_or_path, list(modules))
    (out / "adapter_config.json").write_text(json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
    return out


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
