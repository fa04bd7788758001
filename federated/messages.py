"""What federated clients send and the server broadcasts, for AFL and DeepAFL.

Every message is a frozen dataclass of NumPy arrays and Python scalars with

- ``kind``: a class-level tag naming the message type on the wire;
- ``to_arrays()``: a flat ``dict`` of NumPy arrays and scalars (plus ``"kind"``), the transport form (Flower
  records, ``np.savez``, pickling-free sockets);
- ``from_arrays(d)``: the strict inverse; raises ``ValueError`` naming a missing or unknown field or a wrong
  ``kind``, ``TypeError`` naming a field of the wrong type (object/string arrays, ``bool`` or ``1.0`` for an
  ``int``, ...);
- ``nbytes``: payload size in bytes (array bytes plus 8 bytes per scalar), used for communication accounting.

Messages check only their structure. What a server must check before trusting a message (shapes agreeing across
clients, dtype, finiteness, symmetry and positive semi-definiteness of Grams) lives in ``federated.validation``
so that a malformed upload is rejected with the sender named and the round goes on with the others.

AFL (Zhuang et al., 2024, "Analytic Federated Learning", one round):
  client k uploads :class:`AFLUpload` ``(XₖᵀXₖ, XₖᵀYₖ, nₖ, γ)``; its regularized Gram is ``Cₖ = XₖᵀXₖ + γI`` and its
  local ridge weight ``Wₖ = Cₖ⁻¹XₖᵀYₖ`` (eq. of the client stage); the server answers :class:`AFLBroadcast`.
DeepAFL (Tang et al., 2026), layer-wise, ``2T + 1`` rounds after the :class:`DeepAFLSetup` broadcast:
  for t = 0..T: clients upload :class:`DeepAFLClassifierUpload` ``(ΦₜᵀΦₜ, ΦₜᵀY)``, the server broadcasts
  :class:`DeepAFLClassifierBroadcast` ``Wₜ``; for t < T clients then upload :class:`DeepAFLBlockUpload`
  ``(FₜᵀFₜ, FₜᵀRₜ)`` and the server broadcasts :class:`DeepAFLBlockBroadcast` ``Ωₜ``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np

_SCALAR_BYTES = 8
M = TypeVar("M", bound="_Message")


def _scalar(value: Any) -> Any:
    """A Python scalar from a scalar or a 0-d array (``np.savez`` and some transports wrap scalars in arrays)."""
    if isinstance(value, np.ndarray) and value.ndim == 0 or isinstance(value, np.generic):
        return value.item()
    return value


def _short(value: Any) -> str:
    """A bounded ``repr`` for error messages (a hostile value's ``repr`` may be huge or raise)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - replaced by the type name
        return f"<unprintable {type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _decode_field(message: str, field: str, annotation: str, value: Any) -> Any:
    """One transport value checked against its annotation; see :meth:`_Message.from_arrays`."""
    where = f"{message}.from_arrays: field {field!r}"
    if annotation in ("np.ndarray", "ndarray"):
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{where} must be a NumPy array, got {type(value).__name__}")
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{where} has dtype {value.dtype}; a numeric array is expected")
        return np.asarray(value)
    value = _scalar(value)
    if annotation == "int":
        if type(value) is not int:
            raise TypeError(f"{where} must be an integer, got {type(value).__name__} {_short(value)}")
        return value
    if annotation == "float":
        if type(value) not in (int, float):
            raise TypeError(f"{where} must be a real number, got {type(value).__name__} {_short(value)}")
        return float(value)
    if annotation == "str":
        if type(value) is not str:
            raise TypeError(f"{where} must be a string, got {type(value).__name__} {_short(value)}")
        return value
    raise TypeError(f"{where}: unsupported annotation {annotation!r}")  # a message class defined wrongly


@dataclasses.dataclass(frozen=True)
class _Message:
    """Shared transport logic: fields annotated ``np.ndarray`` are arrays, every other field is a scalar."""

    kind: ClassVar[str] = ""

    @classmethod
    def _array_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.type in ("np.ndarray", np.ndarray))

    @classmethod
    def _scalar_fields(cls) -> tuple[str, ...]:
        arrays = cls._array_fields()
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in arrays)

    def to_arrays(self) -> dict[str, Any]:
        """Flat transport dict: NumPy arrays for array fields, Python scalars otherwise, and ``"kind"``."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in self._array_fields():
            out[name] = np.asarray(getattr(self, name))
        for name in self._scalar_fields():
            value = getattr(self, name)
            out[name] = value.item() if isinstance(value, np.generic) else value
        return out

    @classmethod
    def _field_types(cls) -> dict[str, str]:
        """Field name -> annotation (``"np.ndarray"``, ``"int"``, ``"float"`` or ``"str"``)."""
        return {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
                for f in dataclasses.fields(cls)}

    @classmethod
    def from_arrays(cls: type[M], arrays: Mapping[str, Any]) -> M:
        """Rebuild a message from :meth:`to_arrays` output, strictly.

        Refused with ``ValueError`` naming the field: a wrong or missing ``kind``, a missing or unknown field.
        Refused with ``TypeError``: an array field that is not a numeric (bool, integer, float) NumPy array -- in
        particular object and string arrays, which would run arbitrary ``__eq__``/``__add__`` code on the server
        --, an ``int`` field that is not an integer (``bool`` and ``1.0`` are refused), a ``float`` field that is
        not a real number, a ``str`` field that is not a string. Scalars may arrive as 0-d arrays or NumPy
        scalars (``np.savez``); they are returned as Python ``int``/``float``/``str``. Values (shapes, finiteness,
        ranges) are the server's to check (:mod:`federated.validation`).
        """
        if not isinstance(arrays, Mapping):
            raise TypeError(f"{cls.__name__}.from_arrays expects a mapping, got {type(arrays).__name__}")
        name = cls.__name__
        kind = _scalar(arrays.get("kind", cls.kind))
        if not isinstance(kind, str) or kind != cls.kind:
            raise ValueError(f"{name}.from_arrays: kind={_short(kind)}, expected {cls.kind!r}")
        types = cls._field_types()
        missing = [f for f in types if f not in arrays]
        if missing:
            raise ValueError(f"{name}.from_arrays: missing field(s) {missing}")
        extra = sorted(_short(k) for k in arrays if k != "kind" and k not in types)
        if extra:
            raise ValueError(f"{name}.from_arrays: unknown field(s) {extra}")
        values: dict[str, Any] = {}
        for field, annotation in types.items():
            values[field] = _decode_field(name, field, annotation, arrays[field])
        return cls(**values)

    @property
    def nbytes(self) -> int:
        """Payload bytes: all array bytes plus 8 per scalar field (the ``kind`` tag is not counted)."""
        arrays = sum(int(np.asarray(getattr(self, n)).nbytes) for n in self._array_fields())
        return arrays + _SCALAR_BYTES * len(self._scalar_fields())


@dataclasses.dataclass(frozen=True)
class AFLUpload(_Message):
    """AFL client upload: ``xtx = XₖᵀXₖ (d, d)``, ``xty = XₖᵀYₖ (d, c)``, ``count = nₖ``, the client's ``gamma``.

    The regularized Gram of the paper is ``Cₖ = xtx + gamma·I``; sending the raw Gram plus ``gamma`` carries the
    same information and lets the server use the sum form of the absolute aggregation law directly.
    """

    kind: ClassVar[str] = "afl_upload"
    client_id: int
    xtx: np.ndarray
    xty: np.ndarray
    count: int
    gamma: float

    @property
    def dim(self) -> int:
        return int(np.shape(self.xtx)[0])

    @property
    def classes(self) -> int:
        return int(np.shape(self.xty)[1])


@dataclasses.dataclass(frozen=True)
class AFLBroadcast(_Message):
    """AFL server answer: the global weight ``W (d, c)``, the total sample count and the ``gamma`` it carries
    (0 after regularization removal, or the re-added global γ)."""

    kind: ClassVar[str] = "afl_broadcast"
    weight: np.ndarray
    count: int
    gamma: float


@dataclasses.dataclass(frozen=True)
class DeepAFLSetup(_Message):
    """DeepAFL round-0 broadcast: everything a client needs to rebuild the shared random layers from ``seed``.

    ``in_dim`` input features, ``classes`` one-hot width, ``phi_dim = d_Φ``, ``block_dim = d_F``, ``layers = T``,
    ``lam = λ`` (classifier ridge), ``gamma = γ`` (Ω ridge), ``activation`` of the blocks ``Fₜ`` and
    ``input_activation`` of ``Φ₀ = σ(XA + b)`` (the authors always use tanh there).
    """

    kind: ClassVar[str] = "deepafl_setup"
    seed: int
    in_dim: int
    classes: int
    phi_dim: int
    block_dim: int
    layers: int
    lam: float
    gamma: float
    activation: str
    input_activation: str


@dataclasses.dataclass(frozen=True)
class DeepAFLClassifierUpload(_Message):
    """DeepAFL client upload for layer ``t``: ``phi_gram = ΦₜᵀΦₜ (d_Φ, d_Φ)``, ``phi_target = ΦₜᵀY (d_Φ, c)``."""

    kind: ClassVar[str] = "deepafl_classifier_upload"
    client_id: int
    layer: int
    phi_gram: np.ndarray
    phi_target: np.ndarray
    count: int


@dataclasses.dataclass(frozen=True)
class DeepAFLBlockUpload(_Message):
    """DeepAFL client upload for block ``t``: ``block_gram = FₜᵀFₜ (d_F, d_F)``, ``block_residual = FₜᵀRₜ (d_F, c)``
    with ``Rₜ = Y − ΦₜWₜ``."""

    kind: ClassVar[str] = "deepafl_block_upload"
    client_id: int
    layer: int
    block_gram: np.ndarray
    block_residual: np.ndarray
    count: int


@dataclasses.dataclass(frozen=True)
class DeepAFLClassifierBroadcast(_Message):
    """DeepAFL server broadcast of the layer-``t`` classifier ``Wₜ = (ΦₜᵀΦₜ + λI)⁻¹ΦₜᵀY (d_Φ, c)``."""

    kind: ClassVar[str] = "deepafl_classifier_broadcast"
    layer: int
    weight: np.ndarray


@dataclasses.dataclass(frozen=True)
class DeepAFLBlockBroadcast(_Message):
    """DeepAFL server broadcast of the block-``t`` mixing matrix ``Ωₜ (d_F, d_Φ)``; clients set
    ``Φₜ₊₁ = Φₜ + FₜΩₜ``."""

    kind: ClassVar[str] = "deepafl_block_broadcast"
    layer: int
    omega: np.ndarray


MESSAGE_TYPES: dict[str, type[_Message]] = {
    cls.kind: cls
    for cls in (AFLUpload, AFLBroadcast, DeepAFLSetup, DeepAFLClassifierUpload, DeepAFLBlockUpload,
                DeepAFLClassifierBroadcast, DeepAFLBlockBroadcast)
}


def from_arrays(arrays: Mapping[str, Any]) -> _Message:
    """Rebuild any message from its transport dict, dispatching on ``arrays["kind"]`` (strict: see
    :meth:`_Message.from_arrays`)."""
    if not isinstance(arrays, Mapping) or "kind" not in arrays:
        raise ValueError("from_arrays: a transport dict with a 'kind' entry is required")
    kind = _scalar(arrays["kind"])
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ValueError(f"from_arrays: unknown kind {_short(kind)}; known: {sorted(MESSAGE_TYPES)}")
    return MESSAGE_TYPES[kind].from_arrays(arrays)
