"""Federated messages on Flower's wire: :mod:`federated.messages` <-> ``flwr.app.RecordDict``.

A message's ``to_arrays()`` dict is split into an ``ArrayRecord`` (its arrays, floating ones cast to the transport
dtype, float32 by default as in the AFL authors' code) and a ``ConfigRecord`` (its scalars and ``kind``), both
stored under the message's ``kind`` so one ``RecordDict`` can carry several messages (e.g. the DeepAFL setup and a
broadcast). :func:`from_record` is the strict inverse (see ``federated.messages._Message.from_arrays``) and raises
``ValueError``/``TypeError`` naming what is missing, extra or malformed, so a server can drop a bad reply and keep
the round going.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from federated import messages

M = TypeVar("M")

_SCALARS = ".scalars"


def to_record(*items: Any, transport_dtype: Any = np.float32, config: Mapping[str, Any] | None = None) -> RecordDict:
    """A ``RecordDict`` holding each message in ``items`` (and ``config`` as the ``"config"`` ``ConfigRecord``).

    Floating arrays are sent as ``transport_dtype`` (``None`` keeps their dtype); integer arrays are unchanged.
    """
    record = RecordDict()
    for item in items:
        fields = item.to_arrays()
        kind = fields.pop("kind")
        arrays, scalars = {}, {"kind": kind}
        for name, value in fields.items():
            if isinstance(value, np.ndarray):
                if transport_dtype is not None and np.issubdtype(value.dtype, np.floating):
                    value = value.astype(transport_dtype)
                arrays[name] = Array(np.ascontiguousarray(value))
            else:
                scalars[name] = value
        record[kind] = ArrayRecord(array_dict=arrays)
        record[kind + _SCALARS] = ConfigRecord(scalars)
    if config is not None:
        record["config"] = ConfigRecord(dict(config))
    return record


def from_record(record: Any, kind: type[M]) -> M:
    """The ``kind`` message (a :mod:`federated.messages` class) stored in ``record`` by :func:`to_record`."""
    tag = getattr(kind, "kind", None)
    if tag not in messages.MESSAGE_TYPES:
        raise TypeError(f"kind must be a federated.messages message class, got {kind!r}")
    if not isinstance(record, RecordDict):
        raise ValueError(f"expected a Flower RecordDict carrying a {kind.__name__}, got {type(record).__name__}")
    arrays, scalars = record.get(tag), record.get(tag + _SCALARS)
    if not isinstance(arrays, ArrayRecord) or not isinstance(scalars, ConfigRecord):
        raise ValueError(f"the reply carries no {kind.__name__} (records present: {sorted(record.keys())})")
    try:
        fields: dict[str, Any] = dict(scalars)
        decoded = {name: array.numpy() for name, array in arrays.items()}
    except Exception as err:  # noqa: BLE001 - a corrupt record is a malformed message, reported as such
        raise ValueError(f"{kind.__name__}: the record could not be decoded ({type(err).__name__}: {err})") from err
    clash = sorted(set(fields) & set(decoded))
    if clash:
        raise ValueError(f"{kind.__name__}: field(s) {clash} sent both as an array and as a scalar")
    fields.update(decoded)
    # Strict: unknown fields, object/string arrays, bool or float ids... raise TypeError/ValueError naming the field.
    return kind.from_arrays(fields)


def config_of(record: Any) -> dict[str, Any]:
    """The ``"config"`` ``ConfigRecord`` of ``record`` as a plain dict (empty if absent)."""
    value = record.get("config") if isinstance(record, RecordDict) else None
    return dict(value) if isinstance(value, ConfigRecord) else {}
