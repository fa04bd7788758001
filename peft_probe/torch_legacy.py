"""Read a legacy (pre-1.6, non-zip) ``torch.save`` state dict with pickle and NumPy only: no torch, no code run.

Format (``torch/serialization.py``, ``_legacy_save``), five pickles followed by raw storage bytes:

1. the magic number ``0x1950a86a20f9469cfc6c``;
2. the protocol version ``1001``;
3. a sys-info dict ``{"protocol_version": 1001, "little_endian": bool, "type_sizes": {...}}``;
4. the object itself (here a state dict, pickle protocol 2). Every tensor is pickled as the call
   ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
   [, metadata])`` and every storage as a persistent id
   ``("storage", <storage type global, e.g. torch.FloatStorage>, key, location, numel, view_metadata)``, where
   ``view_metadata`` is ``None`` or ``(view_key, offset, view_numel)`` for a view into the storage ``key``.
   The dict itself is ``collections.OrderedDict`` (with a ``_metadata`` attribute set by ``BUILD``);
5. the list of storage keys, in the order their data follows;

then, for each key of that list, an int64 element count followed by ``count`` elements in the byte order the
sys-info states. A tensor's elements are ``storage[offset + sum(i_d * stride_d)]``: strides are not necessarily
contiguous (e.g. TF-converted conv kernels keep their ``(kh, kw, in, out)`` storage order under a
``(out, in, kh, kw)`` size), so they are honoured and the result is copied into a fresh C-contiguous array.

Safety: every pickle is read with an unpickler whose ``find_class`` resolves only the four globals a
float/int64 state dict needs (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch.FloatStorage``, ``torch.LongStorage``), each mapped to an inert local stand-in; any other global raises
``ForbiddenGlobalError`` (a ``pickle.UnpicklingError``) naming it before anything is called. The header pickles
and the key list allow no global at all. Strides reaching outside their storage, and any other malformed pickle,
raise ``pickle.UnpicklingError``; zip-format (torch >= 1.6) files, wrong magic, truncated data, element-count
mismatches and trailing bytes raise ``ValueError``. Messages name the file.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LEGACY_MAGIC", "LEGACY_PROTOCOL", "ForbiddenGlobalError", "read_legacy_state_dict"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allowed set; raised before that global could be called."""


class _Inert:
    """Base of the stand-ins: refuses the pickle ``BUILD`` opcode, which would otherwise overwrite an instance's
    ``__dict__`` (frozen dataclasses do not stop that) and so move a tensor's offset past its bounds check."""

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"refusing to set state {state!r} on a {type(self).__name__}")


@dataclasses.dataclass(frozen=True)
class _StorageType(_Inert):
    """Stand-in for a ``torch.<X>Storage`` class: only names the element type (instances are not callable)."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage(_Inert):
    """Placeholder for one persistent storage (or a view into one); the data is read after the pickle."""

    key: str
    storage_type: _StorageType
    numel: int
    view_offset: int = 0
    view_numel: int | None = None  # None: the whole storage


@dataclasses.dataclass(frozen=True)
class _TensorRef(_Inert):
    """What ``_rebuild_tensor_v2`` would build, kept as arguments until the storages are read."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, *rest: Any) -> _TensorRef:
    """Validate ``_rebuild_tensor_v2``'s arguments and record them (``requires_grad``, hooks, metadata dropped)."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2 expects a persistent storage, got {type(storage).__name__}")
    if len(rest) > 3:
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2 got {4 + len(rest)} arguments, expected 6 or 7")
    ints = (storage_offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else (None,)
    if not all(type(v) is int for v in ints) or len(size) != len(stride):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2: bad offset/size/stride {storage_offset!r}, {size!r}, "
                                     f"{stride!r}")
    if storage_offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2: negative offset/size/stride {storage_offset}, {size}, "
                                     f"{stride}")
    ref = _TensorRef(storage, storage_offset, size, stride)
    _check_bounds(ref, storage.numel if storage.view_numel is None else storage.view_numel)
    return ref


def _check_bounds(ref: _TensorRef, limit: int) -> None:
    """Raise unless every element ``offset + sum(i_d * stride_d)`` of ``ref`` is below ``limit``."""
    if 0 not in ref.size:  # an empty tensor touches no element
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
        if last >= limit:
            raise pickle.UnpicklingError(f"tensor of size {ref.size}, stride {ref.stride}, offset {ref.offset} "
                                         f"reads element {last} of storage {ref.storage.key!r} with {limit} "
                                         "elements")


_STATE_DICT_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,  # a dict subclass; calling it runs no file code
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch", "FloatStorage"): _StorageType("FloatStorage", np.dtype(np.float32)),
    ("torch", "LongStorage"): _StorageType("LongStorage", np.dtype(np.int64)),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``allowed`` globals and turns storage persistent ids into ``_Storage``."""

    def __init__(self, file: io.BytesIO, allowed: dict[tuple[str, str], Any]):
        super().__init__(file)
        self.allowed = allowed
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(f"refusing global {module}.{name}: only "
                                         f"{sorted(f'{m}.{n}' for m, n in self.allowed) or 'none'} "
                                         "may appear here") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not self.allowed:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}; expected ('storage', type, key, "
                                         "location, numel, view_metadata)")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or type(numel) is not int \
                or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage persistent id {pid!r}")
        known = self.storages.setdefault(key, _Storage(key, storage_type, numel))
        if (known.storage_type, known.numel) != (storage_type, numel):
            raise pickle.UnpicklingError(f"storage {key!r} is declared twice with different type or size")
        if view is None:
            return known
        if not (isinstance(view, tuple) and len(view) == 3 and type(view[1]) is int and type(view[2]) is int
                and 0 <= view[1] and 0 <= view[2] and view[1] + view[2] <= numel):
            raise pickle.UnpicklingError(f"malformed view metadata {view!r} of storage {key!r} ({numel} elements)")
        return dataclasses.replace(known, view_offset=view[1], view_numel=view[2])


def _load(buffer: io.BytesIO, allowed: dict[tuple[str, str], Any], what: str, path: Path) -> tuple[Any, Any]:
    unpickler = _RestrictedUnpickler(buffer, allowed)
    try:
        return unpickler.load(), unpickler.storages
    except ForbiddenGlobalError as err:
        raise ForbiddenGlobalError(f"{path}: {what} pickle: {err}") from None
    except (EOFError, pickle.UnpicklingError) as err:
        # The C unpickler reports a cut-off pickle as EOFError or as UnpicklingError("... truncated").
        if isinstance(err, EOFError) or "truncated" in str(err):
            raise ValueError(f"{path}: truncated file while reading the {what} pickle") from err
        raise pickle.UnpicklingError(f"{path}: malformed {what} pickle: {err}") from err
    except Exception as err:  # a malformed pickle (e.g. a stand-in called with wrong arguments)
        raise pickle.UnpicklingError(f"{path}: malformed {what} pickle: {type(err).__name__}: {err}") from err


def read_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a legacy ``torch.save``'d state dict as ``{name: C-contiguous np.ndarray}`` (float32/int64).

    Tensors keep torch's ``size`` (e.g. conv weights ``(out, in, kh, kw)``) whatever their strides. Raises
    ``FileNotFoundError`` if ``path`` is missing, ``ForbiddenGlobalError`` (a ``pickle.UnpicklingError``) for a
    global outside the allowed set, ``pickle.UnpicklingError`` for a malformed pickle (including out-of-bounds
    strides), ``ValueError`` for a zip-format file, wrong magic/protocol, big-endian data, truncation, count
    mismatches or trailing bytes.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:4] == _ZIP_MAGIC:
        raise ValueError(f"{path}: zip-format torch file (torch >= 1.6 default); only the legacy format is "
                         "supported -- re-save it with torch.save(..., _use_new_zipfile_serialization=False)")
    buffer = io.BytesIO(raw)
    try:
        magic = _load(buffer, {}, "magic-number", path)[0]
    except ForbiddenGlobalError:
        raise
    except (pickle.UnpicklingError, ValueError) as err:
        raise ValueError(f"{path}: not a legacy torch file (no magic-number pickle: {err})") from err
    if magic != LEGACY_MAGIC:
        raise ValueError(f"{path}: not a legacy torch file (magic {magic!r}, expected {LEGACY_MAGIC:#x})")
    protocol = _load(buffer, {}, "protocol", path)[0]
    if protocol != LEGACY_PROTOCOL:
        raise ValueError(f"{path}: legacy protocol {protocol!r}, expected {LEGACY_PROTOCOL}")
    sys_info = _load(buffer, {}, "sys-info", path)[0]
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise ValueError(f"{path}: only little-endian files are supported, sys info {sys_info!r}")
    state, storages = _load(buffer, _STATE_DICT_GLOBALS, "state-dict", path)
    keys = _load(buffer, {}, "storage-key", path)[0]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, _TensorRef)
                                              for k, v in state.items()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    if not isinstance(keys, list) or sorted(keys) != sorted(storages):
        raise ValueError(f"{path}: storage-key list does not match the storages the state dict references")

    data: dict[str, np.ndarray] = {}
    pos = buffer.tell()
    for key in keys:
        storage = storages[key]
        if pos + 8 > len(raw):
            raise ValueError(f"{path}: truncated file at the element count of storage {key!r}")
        count = int.from_bytes(raw[pos:pos + 8], "little", signed=True)
        if count != storage.numel:
            raise ValueError(f"{path}: storage {key!r} has {count} elements on disk, the pickle says "
                             f"{storage.numel}")
        dtype = storage.storage_type.dtype.newbyteorder("<")
        nbytes = count * dtype.itemsize
        if pos + 8 + nbytes > len(raw):
            raise ValueError(f"{path}: truncated file in the data of storage {key!r} ({nbytes} bytes expected, "
                             f"{len(raw) - pos - 8} left)")
        data[key] = np.frombuffer(raw, dtype=dtype, count=count, offset=pos + 8)
        pos += 8 + nbytes
    if pos != len(raw):
        raise ValueError(f"{path}: {len(raw) - pos} unexpected trailing bytes after the last storage")

    out: dict[str, np.ndarray] = {}
    for name, ref in state.items():
        flat = data[ref.storage.key][ref.storage.view_offset:]
        if ref.storage.view_numel is not None:
            flat = flat[:ref.storage.view_numel]
        _check_bounds(ref, flat.size)  # again, on the very array: as_strided reads wherever the strides point
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.size,
                                               strides=tuple(s * item for s in ref.stride), writeable=False)
        out[name] = np.array(view, dtype=view.dtype.newbyteorder("="), order="C")
    return out
