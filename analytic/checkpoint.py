"""Checkpoints of state pytrees with orbax: crash-safe, digest-verified, and unable to run code on load.

Layout. ``save_state(path, state, metadata)`` writes one orbax checkpoint directory holding three items:
``arrays`` (the leaves, through ``StandardSave``), ``meta`` (JSON: format and library version, the tree's
structure with every leaf's shape, dtype and SHA-256, and the caller's ``metadata``) and ``digest`` (the SHA-256
of the canonical JSON encoding of the whole ``meta`` document, see :func:`metadata_digest`).

Loading never runs code named by the file. Structure nodes name their Python type by a registry key (by default
``"<module>:<qualname>"``); the key is looked up in this module's registry, filled by
:func:`register_checkpoint_type` where each state type is defined. If a key is unknown, the modules listed in the
fixed, library-owned table ``_STATE_MODULES`` are imported (never a module named by the file) and the lookup is
repeated; a key that is still unknown raises :class:`CheckpointError`. The digest detects damage (a flipped byte,
a truncated or missing file); it is no defence against a deliberately crafted file, because whoever can rewrite
the metadata can recompute the digest -- the registry is that defence. Every field of the stored structure is
type-checked before use (the caller's ``metadata`` must be a JSON object; its fields are the caller's to check), and
any failure -- orbax or tensorstore errors included -- surfaces as :class:`CheckpointError` naming the checkpoint
and what is wrong.

Overwriting (single writer). The new checkpoint is written completely into a sibling ``<path>.tmp-<id>`` on the
same filesystem and fsynced; then ``<path>`` is renamed to ``<path>.old-<id>``, ``<path>.tmp-<id>`` is renamed to
``<path>``, the parent directory is fsynced and the old copy deleted. Linux cannot atomically replace a non-empty
directory, so there is a window between the two renames in which ``<path>`` does not exist; a crash there leaves
the pair ``<path>.old-<id>`` / ``<path>.tmp-<id>``, and :func:`load_state` (and the next :func:`save_state`)
recovers: it verifies ``<path>.tmp-<id>`` (complete by construction: ``.old-<id>`` is only created after it was
fsynced) by digest and checksums and renames it to ``<path>``, falling back to ``<path>.old-<id>``. A crash at any
other point leaves ``<path>`` holding the old or the new checkpoint. So after a crash at any instant ``<path>``
loads and equals the old or the new state. Leftover ``.tmp-*``/``.old-*`` siblings of crashed saves are deleted by
the next successful save. Two processes saving to the same path at the same time are not supported.

``atomic_write_bytes`` / ``atomic_write_text`` / ``atomic_savez`` give single files the same old-or-new guarantee
(temporary file beside the target, fsync, ``os.replace``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CheckpointError", "save_state", "load_state", "FORMAT_VERSION", "register_checkpoint_type",
           "registered_checkpoint_types", "metadata_digest", "check_like", "atomic_write_bytes", "atomic_write_text",
           "atomic_savez"]

FORMAT_VERSION = 2
_TMP, _OLD = ".tmp-", ".old-"
# The only modules load_state ever imports to find a registered type. A fixed list owned by the library, so that
# no string read from a checkpoint decides what gets imported.
_STATE_MODULES = ("analytic.gram", "analytic.rls", "analytic.lazy_solve", "analytic.buffers", "continual.acil",
                  "continual.air", "continual.baselines", "continual.dsal", "continual.foal", "continual.gacl",
                  "federated.afl", "federated.deepafl")
# Leaf dtypes a checkpoint may declare: plain numeric types only (an object dtype would unpickle).
_DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                     "bfloat16", "float32", "float64", "complex64", "complex128"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_META_KEYS = {"format", "library", "library_version", "tree", "user"}

T = TypeVar("T", bound=type)
_REGISTRY: dict[str, type] = {}
_NAMES: dict[type, str] = {}
_modules_imported = False


class CheckpointError(ValueError):
    """The checkpoint is missing, truncated, corrupt, unsafe or does not match what was expected."""


# -- type registry ------------------------------------------------------------------------------------------------
def register_checkpoint_type(cls: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
    """Allow ``cls`` (a NamedTuple, or a class with ``tree_flatten``/``tree_unflatten``) in checkpoints.

    Use as ``@register_checkpoint_type`` (key ``"<module>:<qualname>"``) or ``@register_checkpoint_type(name=...)``.
    The key is what the checkpoint stores; keep it stable when moving a class. Registering happens at import time,
    so a type of your own must be imported before :func:`load_state` reads a checkpoint that holds it.
    """
    def register(c: T) -> T:
        if not isinstance(c, type):
            raise TypeError(f"register_checkpoint_type expects a class, got {c!r}")
        is_namedtuple = issubclass(c, tuple) and hasattr(c, "_fields")
        if not is_namedtuple and not (hasattr(c, "tree_flatten") and hasattr(c, "tree_unflatten")):
            raise TypeError(f"{c.__qualname__} is neither a NamedTuple nor a class with tree_flatten/tree_unflatten")
        key = name if name is not None else f"{c.__module__}:{c.__qualname__}"
        if not isinstance(key, str) or not key:
            raise TypeError(f"checkpoint type name must be a non-empty string, got {key!r}")
        known = _REGISTRY.get(key)
        # The same class defined again (a module reload) replaces its old self; a different class may not steal a key.
        if known is not None and known is not c and (known.__module__, known.__qualname__) != (c.__module__,
                                                                                             c.__qualname__):
            raise ValueError(f"checkpoint type name {key!r} is already registered for {known!r}")
        _REGISTRY[key] = c
        _NAMES[c] = key
        return c

    return register if cls is None else register(cls)


def registered_checkpoint_types() -> dict[str, type]:
    """The registry after importing the library's state modules: ``{key: class}`` (a copy)."""
    _import_state_modules()
    return dict(_REGISTRY)


def _import_state_modules() -> None:
    global _modules_imported
    if _modules_imported:
        return
    for module in _STATE_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # an optional part that is not installed holds no type the checkpoint can need
            pass
    _modules_imported = True


def _lookup(name: Any, where: str) -> type:
    if not isinstance(name, str):
        raise CheckpointError(f"{where}: type name must be a string, got {type(name).__name__}")
    if name not in _REGISTRY:
        _import_state_modules()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise CheckpointError(f"{where}: type {name!r} is not a registered checkpoint type; refusing to load it "
                              "(see analytic.checkpoint.register_checkpoint_type)")
    return cls


def _name_of(cls: type) -> str:
    name = _NAMES.get(cls)
    if name is None or _REGISTRY.get(name) is not cls:
        raise TypeError(f"save_state: {cls.__module__}.{cls.__qualname__} is not a registered checkpoint type; "
                        "decorate it with analytic.checkpoint.register_checkpoint_type so that it can be loaded")
    return name


# -- metadata encoding --------------------------------------------------------------------------------------------
def _library_version() -> str:
    try:
        return importlib.metadata.version("analytic-learning")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def metadata_digest(meta: Any) -> str:
    """SHA-256 (hex) of the canonical JSON encoding (sorted keys, no whitespace, ASCII) of ``meta``."""
    return hashlib.sha256(_canonical(meta)).hexdigest()


def _leaf_sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _encode(tree: Any, leaves: list[np.ndarray], digests: bool = True) -> Any:
    """Structure spec of ``tree`` as JSON; array leaves are appended to ``leaves`` and referenced by index.

    ``digests=False`` leaves the per-leaf SHA-256 empty (specs used only to compare structure).
    """
    if tree is None:
        return {"kind": "none"}
    if isinstance(tree, bool | int | float | str):
        return {"kind": "scalar", "value": tree}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {"kind": "namedtuple", "type": _name_of(type(tree)),
                "fields": {f: _encode(getattr(tree, f), leaves, digests) for f in tree._fields}}
    if isinstance(tree, tuple | list):
        return {"kind": type(tree).__name__ if type(tree) in (tuple, list) else _bad_leaf(tree),
                "items": [_encode(t, leaves, digests) for t in tree]}
    if isinstance(tree, dict):
        if not all(isinstance(k, str) for k in tree):
            raise TypeError("save_state: dict keys must be strings")
        return {"kind": "dict", "items": {k: _encode(v, leaves, digests) for k, v in tree.items()}}
    if hasattr(tree, "tree_flatten") and hasattr(type(tree), "tree_unflatten"):
        name = _name_of(type(tree))
        children, aux = tree.tree_flatten()
        aux = json.loads(json.dumps(aux))  # only JSON-representable static data can be stored
        return {"kind": "pytree", "type": name, "aux": aux, "children": _encode(tuple(children), leaves, digests)}
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        arr = np.asarray(jax.device_get(tree))
        if arr.dtype.name not in _DTYPES:
            raise TypeError(f"save_state cannot store an array of dtype {arr.dtype}")
        leaves.append(arr)
        return {"kind": "array", "index": len(leaves) - 1, "shape": list(arr.shape), "dtype": arr.dtype.name,
                "sha256": _leaf_sha(arr) if digests else ""}
    return _bad_leaf(tree)


def _bad_leaf(tree: Any) -> Any:
    raise TypeError(f"save_state cannot store a leaf of type {type(tree).__name__}")


# -- metadata validation (every field type-checked before use) ---------------------------------------------------
def _require(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise CheckpointError(f"{where}: {what}")


def _keys(spec: dict, expected: set[str], where: str) -> None:
    _require(set(spec) == expected, where, f"metadata node has keys {sorted(spec)}, expected {sorted(expected)}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _validate(spec: Any, where: str, arrays: dict[int, dict[str, Any]]) -> None:
    """Check one structure node (recursively) against the schema :func:`_encode` writes; collect array specs."""
    _require(isinstance(spec, dict), where, f"metadata node must be an object, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind == "none":
        _keys(spec, {"kind"}, where)
    elif kind == "scalar":
        _keys(spec, {"kind", "value"}, where)
        _require(isinstance(spec["value"], bool | int | float | str), where,
                 f"scalar value has JSON type {type(spec['value']).__name__}")
    elif kind == "array":
        _keys(spec, {"kind", "index", "shape", "dtype", "sha256"}, where)
        index, shape = spec["index"], spec["shape"]
        _require(_is_int(index) and index >= 0, where, f"array index {index!r} is not a non-negative integer")
        _require(isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape), where,
                 f"array shape {shape!r} is not a list of non-negative integers")
        _require(isinstance(spec["dtype"], str) and spec["dtype"] in _DTYPES, where,
                 f"array dtype {spec['dtype']!r} is not an allowed numeric dtype")
        _require(isinstance(spec["sha256"], str) and _HEX64.fullmatch(spec["sha256"]) is not None, where,
                 "array sha256 is not 64 lowercase hex digits")
        _require(index not in arrays, where, f"array index {index} is used twice")
        arrays[index] = spec
    elif kind == "namedtuple":
        _keys(spec, {"kind", "type", "fields"}, where)
        _require(isinstance(spec["type"], str), where, "type name must be a string")
        _require(isinstance(spec["fields"], dict), where, "namedtuple fields must be an object")
        for f, s in spec["fields"].items():
            _validate(s, f"{where}.{f}", arrays)
    elif kind in ("tuple", "list"):
        _keys(spec, {"kind", "items"}, where)
        _require(isinstance(spec["items"], list), where, f"{kind} items must be a list")
        for i, s in enumerate(spec["items"]):
            _validate(s, f"{where}[{i}]", arrays)
    elif kind == "dict":
        _keys(spec, {"kind", "items"}, where)
        _require(isinstance(spec["items"], dict), where, "dict items must be an object")
        for k, s in spec["items"].items():
            _validate(s, f"{where}[{k!r}]", arrays)
    elif kind == "pytree":
        _keys(spec, {"kind", "type", "aux", "children"}, where)
        _require(isinstance(spec["type"], str), where, "type name must be a string")
        _require(isinstance(spec["children"], dict) and spec["children"].get("kind") == "tuple", where,
                 "pytree children must be a tuple node")
        _validate(spec["children"], f"{where}.children", arrays)
    else:
        raise CheckpointError(f"{where}: unknown node kind {kind!r} in checkpoint metadata")


def _validate_meta(meta: Any, digest: Any, where: str) -> dict[int, dict[str, Any]]:
    _require(isinstance(meta, dict), where, "metadata is not a JSON object")
    if meta.get("library") != "analytic-learning":
        raise CheckpointError(f"{where} is not an analytic-learning checkpoint")
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{where} has checkpoint format {meta.get('format')!r}, this library reads "
                              f"{FORMAT_VERSION}")
    _require(isinstance(digest, dict) and set(digest) == {"sha256"} and isinstance(digest["sha256"], str), where,
             "digest item is malformed")
    actual = metadata_digest(meta)
    _require(actual == digest["sha256"], where,
             f"metadata digest mismatch (stored {digest['sha256'][:16]}..., computed {actual[:16]}...): the metadata "
             "or its digest is damaged")
    _keys(meta, _META_KEYS, where)
    _require(isinstance(meta["user"], dict), where, "user metadata is not a JSON object")
    _require(isinstance(meta["library_version"], str), where, "library_version is not a string")
    arrays: dict[int, dict[str, Any]] = {}
    _validate(meta["tree"], "state", arrays)
    _require(sorted(arrays) == list(range(len(arrays))), where,
             f"array indices {sorted(arrays)} are not 0..{len(arrays) - 1}")
    return arrays


def _build(spec: dict[str, Any], leaves: Mapping[str, Any], where: str) -> Any:
    """Rebuild the pytree from a validated spec and verified leaves; only registered types are constructed."""
    kind = spec["kind"]
    if kind == "none":
        return None
    if kind == "scalar":
        return spec["value"]
    if kind == "array":
        return jnp.asarray(leaves[str(spec["index"])])
    if kind in ("tuple", "list"):
        items = [_build(s, leaves, f"{where}[{i}]") for i, s in enumerate(spec["items"])]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {k: _build(s, leaves, f"{where}[{k!r}]") for k, s in spec["items"].items()}
    cls = _lookup(spec["type"], where)
    if kind == "namedtuple":
        fields = getattr(cls, "_fields", None)
        _require(issubclass(cls, tuple) and fields is not None, where, f"type {spec['type']!r} is not a NamedTuple")
        _require(list(spec["fields"]) == list(fields), where,
                 f"{spec['type']} has fields {list(fields)}, checkpoint stores {list(spec['fields'])}")
        values = {f: _build(s, leaves, f"{where}.{f}") for f, s in spec["fields"].items()}
        try:
            return cls(**values)
        except Exception as err:  # noqa: BLE001 - a registered type's own checks; reported uniformly
            raise CheckpointError(f"{where}: cannot construct {spec['type']}: {err}") from err
    _require(hasattr(cls, "tree_unflatten"), where, f"type {spec['type']!r} is not a pytree class")
    aux = spec["aux"]
    aux = tuple(aux) if isinstance(aux, list) else aux
    children = _build(spec["children"], leaves, f"{where}.children")
    try:
        return cls.tree_unflatten(aux, children)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{where}: cannot rebuild {spec['type']}: {err}") from err


# -- reading ------------------------------------------------------------------------------------------------------
def _read(path: Path, like: Any) -> tuple[Any, dict[str, Any]]:
    """Load one checkpoint directory; every failure becomes a :class:`CheckpointError` naming ``path``."""
    try:
        return _read_unchecked(path, like)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - orbax/tensorstore/numpy raise many types; one clear error for callers
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {type(err).__name__}: {err}") from err


def _read_unchecked(path: Path, like: Any) -> tuple[Any, dict[str, Any]]:
    import orbax.checkpoint as ocp

    for item in ("meta", "digest", "arrays"):
        if not (path / item).is_dir():
            raise CheckpointError(f"checkpoint {path} lacks its {item!r} item (truncated, or not a checkpoint)")
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            items = ckptr.restore(path, ocp.args.Composite(meta=ocp.args.JsonRestore(),
                                                           digest=ocp.args.JsonRestore()))
        meta, digest = items["meta"], items["digest"]
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} has unreadable metadata ({path / 'meta'}, {path / 'digest'}): "
                              f"{type(err).__name__}: {err}") from err
    specs = _validate_meta(meta, digest, str(path))
    if like is not None:
        _compare(_encode(like, [], digests=False), meta["tree"], "state")
    abstract = {str(i): np.zeros(s["shape"], jnp.dtype(s["dtype"])) for i, s in specs.items()}
    abstract = abstract or {"_empty": np.zeros((0,), np.float32)}
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            arrays = ckptr.restore(path, ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract)))["arrays"]
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} has truncated or corrupt arrays ({path / 'arrays'}): "
                              f"{type(err).__name__}: {err}") from err
    _require(isinstance(arrays, dict) and set(arrays) == set(abstract), str(path / "arrays"),
             "stored array names differ from the metadata")
    for i, s in specs.items():
        arr = np.asarray(arrays[str(i)])
        where = f"{path / 'arrays'}: leaf {i} {tuple(s['shape'])}"
        _require(list(arr.shape) == s["shape"] and arr.dtype.name == s["dtype"], where,
                 f"stored {arr.shape}/{arr.dtype}, metadata says {tuple(s['shape'])}/{s['dtype']}")
        _require(_leaf_sha(arr) == s["sha256"], where, "checksum mismatch (corrupt file)")
        arrays[str(i)] = arr
    return _build(meta["tree"], arrays, "state"), meta["user"]


def _compare(expected: dict[str, Any], stored: dict[str, Any], where: str) -> None:
    """``stored`` (validated) has ``expected``'s structure, types, shapes and dtypes, else :class:`CheckpointError`."""
    kind = expected["kind"]
    if kind != stored["kind"]:
        raise CheckpointError(f"{where}: expected a {kind}, checkpoint has {stored['kind']}")
    if kind == "array":
        if expected["shape"] != stored["shape"] or expected["dtype"] != stored["dtype"]:
            raise CheckpointError(f"{where}: expected shape {tuple(expected['shape'])} {expected['dtype']}, "
                                  f"checkpoint has {tuple(stored['shape'])} {stored['dtype']}")
    elif kind in ("namedtuple", "pytree"):
        if expected["type"] != stored["type"]:
            raise CheckpointError(f"{where}: expected type {expected['type']}, checkpoint has {stored['type']}")
        if kind == "pytree":
            if expected["aux"] != stored["aux"]:
                raise CheckpointError(f"{where}: expected static data {expected['aux']!r}, checkpoint has "
                                      f"{stored['aux']!r}")
            _compare(expected["children"], stored["children"], f"{where}.children")
        else:
            _compare_items(expected["fields"], stored["fields"], where, ".{}")
    elif kind in ("tuple", "list"):
        if len(expected["items"]) != len(stored["items"]):
            raise CheckpointError(f"{where}: expected {len(expected['items'])} items, checkpoint has "
                                  f"{len(stored['items'])}")
        for i, (e, s) in enumerate(zip(expected["items"], stored["items"])):
            _compare(e, s, f"{where}[{i}]")
    elif kind == "dict":
        _compare_items(expected["items"], stored["items"], where, "[{!r}]")


def check_like(state: Any, like: Any, where: str = "state") -> None:
    """Raise :class:`CheckpointError` (prefixed ``where``) unless ``state`` has the tree structure, registered types,
    static data, shapes and dtypes of ``like``; values are not compared."""
    _compare(_encode(like, [], digests=False), _encode(state, [], digests=False), where)


def _compare_items(expected: dict[str, Any], stored: dict[str, Any], where: str, fmt: str) -> None:
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing:
        raise CheckpointError(f"{where}: checkpoint lacks {missing}")
    if extra:
        raise CheckpointError(f"{where}: checkpoint has unexpected entries {extra}")
    for k, e in expected.items():
        _compare(e, stored[k], where + fmt.format(k))


# -- crash-safe directory replacement -----------------------------------------------------------------------------
def _siblings(path: Path, marker: str) -> list[Path]:
    """``<path><marker><32 hex>`` siblings, plus orbax's own temporaries of them (``...<32 hex>.orbax-...``).

    The exact token shape keeps cleanup from ever touching a user's directory that merely starts with the name.
    """
    pattern = re.compile(re.escape(path.name + marker) + r"[0-9a-f]{32}(\..*)?")
    try:
        return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))
    except FileNotFoundError:
        return []


def _fsync(path: Path, directory: bool) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:  # e.g. directories cannot be opened on Windows; rename durability is then the OS's
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            _fsync(Path(dirpath) / f, directory=False)
        _fsync(Path(dirpath), directory=True)


def _recover(path: Path, like: Any = None) -> tuple[Any, dict[str, Any]] | None:
    """If ``path`` is missing because a save crashed between its two renames, put the complete copy back.

    Tries each ``<path>.old-<id>`` whose ``<path>.tmp-<id>`` exists: the new copy first (it was fsynced before the
    old one was moved), then the old copy; the first that verifies is renamed to ``path`` and returned as loaded.
    Returns None if nothing is recoverable. If the rename is impossible (read-only directory) the verified copy
    is still returned.
    """
    olds = [p for p in _siblings(path, _OLD) if len(p.name) == len(path.name) + len(_OLD) + 32]
    candidates = []
    for old in olds:
        tmp = path.with_name(path.name + _TMP + old.name[len(path.name) + len(_OLD):])
        if tmp.is_dir():
            candidates.append(tmp)
        candidates.append(old)
    for candidate in candidates:
        try:
            loaded = _read(candidate, None)
        except CheckpointError:
            continue
        if like is not None:
            _read(candidate, like)  # raises the structural mismatch for the caller
        try:
            os.rename(candidate, path)
            _fsync(path.parent, directory=True)
        except OSError:
            if path.is_dir():  # another process recovered first: read what it put there
                return _read(path, like)
        return loaded
    return None


def _cleanup(path: Path) -> None:
    """Delete the ``.tmp-*`` / ``.old-*`` siblings left by crashed saves (only called once ``path`` is complete)."""
    for stale in _siblings(path, _TMP) + _siblings(path, _OLD):
        shutil.rmtree(stale, ignore_errors=True)


def save_state(path: str | Path, state: Any, metadata: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``state`` (a pytree of arrays, registered NamedTuples/pytree classes, dicts, lists, tuples, scalars).

    ``metadata``: JSON-serializable dict returned by :func:`load_state`. With ``overwrite=True`` an existing
    checkpoint is replaced so that a crash at any moment leaves the old or the new one loadable (module docstring).
    Raises FileExistsError if ``path`` exists and ``overwrite`` is False; TypeError for an unstorable leaf or an
    unregistered type.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    leaves: list[np.ndarray] = []
    spec = _encode(state, leaves)
    meta = {"format": FORMAT_VERSION, "library": "analytic-learning", "library_version": _library_version(),
            "tree": spec, "user": dict(metadata or {})}
    # The digest must be of exactly what loading will parse, so tuples etc. are normalized to JSON first.
    meta = json.loads(json.dumps(meta))
    digest = {"sha256": metadata_digest(meta)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _recover(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"checkpoint {path} exists; pass overwrite=True to replace it")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a checkpoint directory; refusing to replace it")
    arrays = {str(i): a for i, a in enumerate(leaves)} or {"_empty": np.zeros((0,), np.float32)}
    token = uuid.uuid4().hex
    tmp = path.with_name(path.name + _TMP + token)
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            ckptr.save(tmp, ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta),
                                               digest=ocp.args.JsonSave(digest)))
        _fsync_tree(tmp)
        _fsync(path.parent, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        # From here until the second rename `path` is absent; _recover handles a crash in that window.
        os.rename(path, path.with_name(path.name + _OLD + token))
        _fsync(path.parent, directory=True)
    try:
        os.rename(tmp, path)
    except FileNotFoundError:
        # A concurrent load_state saw `path` missing in the window above and already moved our complete new copy
        # into place (recovery prefers the new copy); anything else is a real error.
        if not path.is_dir() or tmp.exists():
            raise
    _fsync(path.parent, directory=True)
    _cleanup(path)
    return path


def load_state(path: str | Path, like: Any = None) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_state`; returns ``(state, user_metadata)``.

    ``like``: an example state (e.g. a freshly initialized one); if given, the checkpoint must have the same tree
    structure, types, shapes and dtypes, otherwise :class:`CheckpointError` says what differs. A missing, damaged
    or unsafe checkpoint raises :class:`CheckpointError`; a save interrupted between its renames is recovered.
    """
    path = Path(path).absolute()
    if not path.exists():
        recovered = _recover(path, like)
        if recovered is not None:
            return recovered
        raise CheckpointError(f"no checkpoint at {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    return _read(path, like)


# -- single files -------------------------------------------------------------------------------------------------
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that ``path`` always holds the old or the new content (temp file + fsync +
    ``os.replace`` in the same directory)."""
    path = Path(path).absolute()
    fd, tmp = tempfile.mkstemp(prefix=path.name + _TMP, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savez(path: str | Path, arrays: Mapping[str, Any]) -> Path:
    """``np.savez`` of ``arrays`` written atomically; refuses object arrays so the file loads with
    ``np.load(allow_pickle=False)``."""
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(path, buf.getvalue())
