"""Checkpoints of state pytrees with orbax: atomic, versioned, verified on load.

``save_state(path, state, metadata)`` writes one orbax checkpoint directory holding two items: ``arrays`` (the
leaves, through ``StandardSave``) and ``meta`` (JSON: format and library version, the tree's structure with every
leaf's shape and dtype, a SHA-256 of every leaf, and the caller's ``metadata``). Orbax writes into a temporary
directory and renames it on success, so a crash mid-save never leaves a half checkpoint under ``path``.

``load_state(path, like=None)`` rebuilds the pytree (NamedTuples, dicts, lists, tuples, registered analytic
types) and refuses, with :class:`CheckpointError`, a checkpoint that is truncated, corrupt (checksum), of another
format version, or -- when ``like`` is given -- of a different structure, shape or dtype.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CheckpointError", "save_state", "load_state", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_ALLOWED_MODULES = ("analytic", "continual", "federated", "peft_probe")


class CheckpointError(ValueError):
    """The checkpoint is missing, truncated, corrupt or does not match what was expected."""


def _library_version() -> str:
    try:
        return importlib.metadata.version("analytic-learning")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _encode(tree: Any, leaves: list[np.ndarray]) -> Any:
    """Structure spec of ``tree`` as JSON; array leaves are appended to ``leaves`` and referenced by index."""
    if tree is None:
        return {"kind": "none"}
    if isinstance(tree, bool | int | float | str):
        return {"kind": "scalar", "value": tree}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        cls = type(tree)
        return {"kind": "namedtuple", "type": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f: _encode(getattr(tree, f), leaves) for f in tree._fields}}
    if isinstance(tree, tuple | list):
        return {"kind": type(tree).__name__, "items": [_encode(t, leaves) for t in tree]}
    if isinstance(tree, dict):
        if not all(isinstance(k, str) for k in tree):
            raise TypeError("save_state: dict keys must be strings")
        return {"kind": "dict", "items": {k: _encode(v, leaves) for k, v in tree.items()}}
    if hasattr(tree, "tree_flatten") and hasattr(type(tree), "tree_unflatten"):
        children, aux = tree.tree_flatten()
        json.dumps(aux)  # only JSON-representable static data can be stored
        cls = type(tree)
        return {"kind": "pytree", "type": f"{cls.__module__}:{cls.__qualname__}", "aux": aux,
                "children": _encode(tuple(children), leaves)}
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        arr = np.asarray(jax.device_get(tree))
        leaves.append(arr)
        return {"kind": "array", "index": len(leaves) - 1, "shape": list(arr.shape), "dtype": arr.dtype.name,
                "sha256": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()}
    raise TypeError(f"save_state cannot store a leaf of type {type(tree).__name__}")


def _import_type(name: str) -> type:
    module, _, qual = name.partition(":")
    if module.split(".")[0] not in _ALLOWED_MODULES:
        raise CheckpointError(f"checkpoint names type {name!r} outside this library's packages; refusing to load")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _decode(spec: dict[str, Any], leaves: dict[str, Any]) -> Any:
    kind = spec["kind"]
    if kind == "none":
        return None
    if kind == "scalar":
        return spec["value"]
    if kind == "array":
        arr = np.asarray(leaves[str(spec["index"])])
        if list(arr.shape) != spec["shape"] or arr.dtype.name != spec["dtype"]:
            raise CheckpointError(f"leaf {spec['index']}: stored {arr.shape}/{arr.dtype}, metadata says "
                                  f"{tuple(spec['shape'])}/{spec['dtype']}")
        if hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest() != spec["sha256"]:
            raise CheckpointError(f"leaf {spec['index']} {tuple(spec['shape'])}: checksum mismatch (corrupt file)")
        return jnp.asarray(arr)
    if kind == "namedtuple":
        cls = _import_type(spec["type"])
        return cls(**{f: _decode(s, leaves) for f, s in spec["fields"].items()})
    if kind in ("tuple", "list"):
        items = [_decode(s, leaves) for s in spec["items"]]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {k: _decode(s, leaves) for k, s in spec["items"].items()}
    if kind == "pytree":
        cls = _import_type(spec["type"])
        aux = spec["aux"]
        aux = tuple(aux) if isinstance(aux, list) else aux
        return cls.tree_unflatten(aux, _decode(spec["children"], leaves))
    raise CheckpointError(f"unknown node kind {kind!r} in checkpoint metadata")


def save_state(path: str | Path, state: Any, metadata: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``state`` (any pytree of arrays, NamedTuples, dicts, lists, scalars) atomically under ``path``."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    leaves: list[np.ndarray] = []
    spec = _encode(state, leaves)
    meta = {"format": FORMAT_VERSION, "library": "analytic-learning", "library_version": _library_version(),
            "tree": spec, "user": metadata or {}}
    json.dumps(meta)
    if path.exists() and not overwrite:
        raise FileExistsError(f"checkpoint {path} exists; pass overwrite=True to replace it")
    arrays = {str(i): a for i, a in enumerate(leaves)} or {"_empty": np.zeros((0,), np.float32)}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(path, ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
                   force=overwrite)
    return path


def load_state(path: str | Path, like: Any = None) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_state`; returns ``(state, user_metadata)``.

    ``like``: an example state (e.g. a freshly initialized one); if given, the checkpoint must have the same tree
    structure, shapes and dtypes, otherwise :class:`CheckpointError` says what differs.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            meta = ckptr.restore(path, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as err:  # noqa: BLE001 - orbax/tensorstore raise many types; one clear error for callers
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated (metadata): {err}") from err
    if not isinstance(meta, dict) or meta.get("library") != "analytic-learning":
        raise CheckpointError(f"{path} is not an analytic-learning checkpoint")
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {meta.get('format')}, this library reads {FORMAT_VERSION}")
    if like is not None:
        expected = _encode(like, [])
        _compare(expected, meta["tree"], "state")
    abstract = {}
    _collect_abstract(meta["tree"], abstract)
    abstract = abstract or {"_empty": np.zeros((0,), np.float32)}
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            arrays = ckptr.restore(path, ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract)))["arrays"]
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (arrays): {err}") from err
    return _decode(meta["tree"], arrays), meta["user"]


def _collect_abstract(spec: Any, out: dict[str, Any]) -> None:
    if isinstance(spec, dict):
        if spec.get("kind") == "array":
            out[str(spec["index"])] = np.zeros(spec["shape"], np.dtype(spec["dtype"]))
            return
        for v in spec.values():
            _collect_abstract(v, out)
    elif isinstance(spec, list):
        for v in spec:
            _collect_abstract(v, out)


def _compare(expected: Any, stored: Any, where: str) -> None:
    if isinstance(expected, dict) and isinstance(stored, dict):
        if expected.get("kind") != stored.get("kind"):
            raise CheckpointError(f"{where}: expected a {expected.get('kind')}, checkpoint has {stored.get('kind')}")
        if expected.get("kind") == "array":
            if expected["shape"] != stored["shape"] or expected["dtype"] != stored["dtype"]:
                raise CheckpointError(f"{where}: expected shape {tuple(expected['shape'])} {expected['dtype']}, "
                                      f"checkpoint has {tuple(stored['shape'])} {stored['dtype']}")
            return
        if expected.get("type") != stored.get("type"):
            raise CheckpointError(f"{where}: expected type {expected.get('type')}, checkpoint has {stored.get('type')}")
        for k in expected:
            if k in ("kind", "type", "value", "sha256", "index"):
                continue
            if k not in stored:
                raise CheckpointError(f"{where}: checkpoint lacks {k!r}")
            _compare(expected[k], stored[k], f"{where}.{k}")
    elif isinstance(expected, list) and isinstance(stored, list):
        if len(expected) != len(stored):
            raise CheckpointError(f"{where}: expected {len(expected)} items, checkpoint has {len(stored)}")
        for i, (e, s) in enumerate(zip(expected, stored)):
            _compare(e, s, f"{where}[{i}]")
    elif expected != stored and not isinstance(expected, int | float | str | bool | None):
        raise CheckpointError(f"{where}: expected {expected!r}, checkpoint has {stored!r}")
