"""The XLA FFI's C calling convention, spoken from Python through ``ctypes`` (no C build).

:func:`handler` wraps a Python kernel ``kernel(ins, outs)`` -- lists of NumPy arrays that *are* XLA's buffers
(no copies) -- as the C callback :func:`jax.ffi.register_ffi_target` takes. The structures mirrored below are those
of ``xla/ffi/api/c_api.h`` (API 0.x), which JAX ships; only the fields a handler reads or writes are spelled out.
Registration asks the handler which API it speaks (the metadata extension; answered 0.1, no traits); an exception
inside a kernel becomes an XLA error carrying its message. Used by :mod:`analytic.host_kernels`.
"""

from __future__ import annotations

import ctypes as C
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["handler"]


# -- the C structures of xla/ffi/api/c_api.h that a handler reads or writes ----------------------------------------
class _ExtensionBase(C.Structure):
    pass


_ExtensionBase._fields_ = [("struct_size", C.c_size_t), ("type", C.c_int), ("next", C.POINTER(_ExtensionBase))]


class _ApiVersion(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("major", C.c_int), ("minor", C.c_int)]


class _Metadata(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("api_version", _ApiVersion), ("traits", C.c_uint32),
                ("state_type_id", C.c_int64)]


class _MetadataExtension(C.Structure):
    _fields_ = [("extension_base", _ExtensionBase), ("metadata", C.POINTER(_Metadata))]


class _Buffer(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("dtype", C.c_int),
                ("data", C.c_void_p), ("rank", C.c_int64), ("dims", C.POINTER(C.c_int64))]


class _Sequence(C.Structure):  # XLA_FFI_Args and XLA_FFI_Rets share this layout
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("size", C.c_int64),
                ("types", C.POINTER(C.c_int)), ("items", C.POINTER(C.c_void_p))]


class _Attrs(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("size", C.c_int64),
                ("types", C.c_void_p), ("names", C.c_void_p), ("attrs", C.c_void_p)]


class _CallFrame(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.POINTER(_ExtensionBase)), ("api", C.c_void_p),
                ("ctx", C.c_void_p), ("stage", C.c_int), ("args", _Sequence), ("rets", _Sequence),
                ("attrs", _Attrs), ("future", C.c_void_p)]


class _ErrorCreateArgs(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("message", C.c_char_p),
                ("errc", C.c_int)]


_ERROR_CREATE = C.CFUNCTYPE(C.c_void_p, C.POINTER(_ErrorCreateArgs))


class _Api(C.Structure):  # only the leading fields, up to XLA_FFI_Error_Create
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("api_version", _ApiVersion),
                ("internal_api", C.c_void_p), ("error_create", _ERROR_CREATE)]


_HANDLER = C.CFUNCTYPE(C.c_void_p, C.POINTER(_CallFrame))
_METADATA_EXTENSION, _EXECUTE, _ERRC_INTERNAL = 1, 3, 13
_DTYPES = {11: np.dtype(np.float32), 12: np.dtype(np.float64), 4: np.dtype(np.int32), 5: np.dtype(np.int64)}


def _view(pointer: int) -> np.ndarray:
    """The XLA buffer behind ``pointer`` as a writable NumPy array (no copy)."""
    buf = C.cast(pointer, C.POINTER(_Buffer)).contents
    shape = tuple(buf.dims[i] for i in range(buf.rank))
    dtype = _DTYPES[buf.dtype]
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size == 0:
        return np.empty(shape, dtype)
    return np.frombuffer((C.c_char * size).from_address(buf.data), dtype).reshape(shape)


def handler(kernel: Callable[[list[np.ndarray], list[np.ndarray]], None]) -> Any:
    def handle(frame_pointer: Any) -> int | None:
        frame = frame_pointer.contents
        extension = frame.extension_start
        if extension and extension.contents.type == _METADATA_EXTENSION:
            # Registration asks which FFI API the handler speaks; answer 0.1 with no traits.
            metadata = C.cast(extension, C.POINTER(_MetadataExtension)).contents.metadata.contents
            metadata.api_version.major, metadata.api_version.minor, metadata.traits = 0, 1, 0
            return None
        if frame.stage != _EXECUTE:
            return None
        try:
            # Overflow/NaN are the callers' health checks to report (analytic.health), not NumPy warnings.
            with np.errstate(all="ignore"):
                kernel([_view(frame.args.items[i]) for i in range(frame.args.size)],
                       [_view(frame.rets.items[i]) for i in range(frame.rets.size)])
        except Exception as exc:  # noqa: BLE001 - handed to XLA as the call's error
            api = C.cast(frame.api, C.POINTER(_Api)).contents
            message = f"{kernel.__name__}: {type(exc).__name__}: {exc}".encode()
            args = _ErrorCreateArgs(C.sizeof(_ErrorCreateArgs), None, message, _ERRC_INTERNAL)
            return api.error_create(C.byref(args))
        return None

    return _HANDLER(handle)
