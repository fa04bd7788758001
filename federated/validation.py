"""Server-side checks of client uploads: reject a malformed message, name it, keep the others.

A federated server sums whatever it is sent, so one corrupt Gram (NaN, wrong shape, integer dtype, asymmetric or
indefinite -- none of which ``XᵀX`` of real features can be) would silently poison the global model, and one
message that makes the server raise would abort the round for everybody. Every upload is screened before it is
merged (the sum form of the absolute aggregation law of AFL, Zhuang et al. 2024, and DeepAFL's per-layer sums):

- the message: exactly the expected message class (a subclass could change its fields between check and merge);
- ``client_id``: a Python ``int`` (a NumPy integer scalar is normalized to ``int``) in the int64 range, or a
  ``str``. ``bool`` (``True == 1``), ``float`` (``1.0 == 1``), 0-d arrays, lists and anything else are refused:
  they would alias a valid id in a ``dict``/``set`` or cannot be hashed at all;
- ``count``: an integer in ``[0, 2**62]`` (the server sums counts as Python ``int``, so any such count is exact);
  ``gamma`` (AFL): a real number, finite, ≥ 0; ``layer`` (DeepAFL): the integer layer of this round;
- each array: a ``float32``/``float64`` NumPy array of the expected shape -- the dimension and class count come
  from the *server's* configuration, never from another upload -- with only finite entries of magnitude at most
  ``finfo(float64).max / 2**32`` (so that a sum of up to ``2**32`` accepted uploads cannot overflow);
- each Gram ``G``: symmetric (``max|G − Gᵀ| ≤ tol·max|G|``) and positive semi-definite. PSD is checked cheaply: a
  non-negative diagonal, then a Cholesky factorization of ``G + tol·tr(G)·I`` (``d³/3`` flops, about a tenth of
  ``eigvalsh``); it fails exactly when ``λ_min(G) < −tol·tr(G)`` up to rounding. ``psd="eigvalsh"`` checks
  ``λ_min ≥ −tol·tr(G)`` literally; ``psd="none"`` skips it.

:func:`screen` runs the checks over a batch of messages and returns the accepted ones (normalized copies: plain
``int`` id, count and layer, ``float`` gamma, ``np.ndarray`` arrays; the array data is not copied) plus one
:class:`Rejection` per excluded message, in input order. A rejection is keyed by the message's *position* in the
batch, not by the id it claims, so an invalid message claiming an honest client's id can never displace or
exclude that client. Screening never raises for a message's fault: any exception a malformed object provokes
(``None``, objects without attributes, unhashable ids, object arrays, overflowing numbers) becomes a rejection.

Identity is not authenticated: the server keeps the *first valid* upload per id, and a later upload with the same
id (in this batch, or an id in ``seen`` from earlier waves) is rejected without affecting the first. A valid-looking
upload sent first under someone else's id is therefore kept; authenticating clients is the transport's job.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from federated.messages import AFLUpload, DeepAFLBlockUpload, DeepAFLClassifierUpload

__all__ = ["MAX_COUNT", "MAX_ENTRY", "RejectedUploadWarning", "Rejection", "ScreenResult", "check_upload",
           "describe_id", "normalize_client_id", "screen", "tolerance"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# (gram field, cross-moment field) of each upload type.
_FIELDS: dict[type, tuple[str, str]] = {
    AFLUpload: ("xtx", "xty"),
    DeepAFLClassifierUpload: ("phi_gram", "phi_target"),
    DeepAFLBlockUpload: ("block_gram", "block_residual"),
}
MAX_COUNT = 2**62
# 2**32 uploads at this magnitude still sum to a finite float64.
MAX_ENTRY = float(np.finfo(np.float64).max) / 2.0**32
_INT64 = (-(2**63), 2**63 - 1)


class RejectedUploadWarning(UserWarning):
    """A client upload failed validation and was left out of the aggregation."""


class Rejection(NamedTuple):
    """One excluded message: its ``position`` in the screened batch, the ``client_id`` it claimed (a bounded
    ``repr``, or ``"<none>"``) and the ``reason`` (the check's error text, which names the claimed id)."""

    position: int
    client_id: str
    reason: str


class ScreenResult(NamedTuple):
    """``accepted``: normalized copies of the messages that passed, in input order; ``excluded``: one
    :class:`Rejection` per other message, in input order."""

    accepted: list[Any]
    excluded: list[Rejection]


def tolerance(dtype: Any, dim: int) -> float:
    """Relative tolerance for symmetry/PSD checks: ``100·d·eps`` of the message dtype (rounding of a Gram sum)."""
    return 100.0 * max(dim, 1) * float(np.finfo(dtype).eps)


def describe_id(cid: Any) -> str:
    """A short, never-raising ``repr`` of a claimed id (``repr`` of a hostile object may raise or be huge)."""
    try:
        text = repr(cid)
    except Exception:  # noqa: BLE001 - any failure of a foreign __repr__ is replaced by the type name
        text = f"<unprintable {type(cid).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def normalize_client_id(cid: Any) -> int | str:
    """``cid`` as a plain ``int`` or ``str``; ``TypeError`` for anything else (see the module docstring).

    Exact types are required (``type(cid) is int``, or a NumPy integer scalar, or ``str``/``np.str_``): a
    subclass could redefine ``__eq__``/``__hash__`` and alias another client's id.
    """
    if type(cid) is int or isinstance(cid, np.integer):
        value = int(cid)
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"client_id {describe_id(cid)} is outside the int64 range")
        return value
    if type(cid) is str or type(cid) is np.str_:
        return str(cid)
    raise TypeError(f"client_id must be an int or a str, got {type(cid).__name__} {describe_id(cid)}")


def _error_text(err: BaseException) -> str:
    """The error's message (prefixed by its type unless a ``TypeError``/``ValueError`` of the checks); never raises."""
    try:
        text = str(err)
    except Exception:  # noqa: BLE001 - an exception raised by a hostile object may have a hostile __str__
        text = "<unprintable error>"
    text = text if len(text) <= 500 else text[:497] + "..."
    return text if type(err) in (TypeError, ValueError) else f"{type(err).__name__}: {text}"


def _integer(who: str, name: str, value: Any, low: int, high: int) -> int:
    if not (type(value) is int or isinstance(value, np.integer)):
        raise TypeError(f"{who}: {name} must be an integer, got {type(value).__name__} {describe_id(value)}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{who}: {name} must be an integer in [{low}, {high}], got {describe_id(value)}")
    return value


def _real(who: str, name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{who}: {name} must be a real number, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"{who}: {name} must be finite and >= 0, got {describe_id(value)}")
    return out


def _check_array(who: str, name: str, a: Any, shape: tuple[int | None, ...], dtype: Any) -> tuple[np.ndarray, float]:
    """The checked array and its ``max |entry|`` (reused by the Gram checks instead of a second pass)."""
    if not isinstance(a, np.ndarray):
        # Only NumPy arrays (and array-likes such as jax.Array with an __array__) -- never lists or strings.
        if not hasattr(a, "__array__") or isinstance(a, (str, bytes)):
            raise TypeError(f"{who}: {name} must be an array, got {type(a).__name__}")
        a = np.asarray(a)
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{who}: {name} could not be read as an array")
    a = np.asarray(a)  # drops ndarray subclasses (np.matrix, masked arrays): their operators differ
    if a.dtype not in _FLOATS:
        raise TypeError(f"{who}: {name} has dtype {a.dtype}; float32 or float64 expected")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise TypeError(f"{who}: {name} has dtype {a.dtype}; this server expects {np.dtype(dtype)}")
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise ValueError(f"{who}: {name} has shape {a.shape}, expected {want}")
    # One pass for both checks: max|a| is NaN or inf exactly when an entry is (np.max propagates NaN).
    peak = float(np.abs(a).max()) if a.size else 0.0
    if not math.isfinite(peak):
        raise ValueError(f"{who}: {name} has {int(a.size - np.isfinite(a).sum())} NaN/inf entries")
    if peak > MAX_ENTRY:
        raise ValueError(f"{who}: {name} has entries above {MAX_ENTRY:.3g} in magnitude (a sum would overflow)")
    return a, peak


def _check_gram(who: str, name: str, g: np.ndarray, scale: float, psd: str) -> None:
    """Symmetry and PSD of ``g`` whose ``max |entry|`` is ``scale``."""
    d = g.shape[0]
    tol = tolerance(g.dtype, d)
    g64 = g.astype(np.float64)
    asym = float(np.abs(g64 - g64.T).max()) if g.size else 0.0
    if asym > tol * max(scale, np.finfo(np.float64).tiny):
        raise ValueError(f"{who}: {name} is not symmetric (max |G - G^T| = {asym:.3g}, max |G| = {scale:.3g})")
    if psd == "none" or scale == 0.0:
        return
    diag = np.diagonal(g64)
    trace = float(diag.sum())
    if diag.min() < -tol * scale:
        raise ValueError(f"{who}: {name} is not positive semi-definite (diagonal entry {diag.min():.3g} < 0)")
    shift = tol * max(trace, scale)
    if psd == "eigvalsh":
        low = float(np.linalg.eigvalsh(g64)[0])
        if low < -shift:
            raise ValueError(
                f"{who}: {name} is not positive semi-definite (min eigenvalue {low:.3g}, trace {trace:.3g})"
            )
    elif psd == "cholesky":
        try:
            np.linalg.cholesky(g64 + shift * np.eye(d))
        except np.linalg.LinAlgError:
            raise ValueError(
                f"{who}: {name} is not positive semi-definite (Cholesky of G + {shift:.3g}·I failed, trace {trace:.3g})"
            ) from None
    else:
        raise ValueError(f"psd must be 'cholesky', 'eigvalsh' or 'none', got {psd!r}")


def _check_settings(kind: Any, dim: Any, classes: Any, layer: Any, psd: Any) -> None:
    """The server's own settings: a wrong one is the caller's bug and raises (it is not a client's fault)."""
    if kind not in _FIELDS:
        raise TypeError(f"kind must be one of {[k.__name__ for k in _FIELDS]}, got {kind!r}")
    for name, value, low in (("dim", dim, 1), ("classes", classes, 0), ("layer", layer, 0)):
        if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
                                  or value < low):
            raise ValueError(f"the server's {name} must be an integer >= {low} or None, got {value!r}")
    if psd not in ("cholesky", "eigvalsh", "none"):
        raise ValueError(f"psd must be 'cholesky', 'eigvalsh' or 'none', got {psd!r}")


def check_upload(
    message: Any,
    *,
    kind: type,
    dim: int | None = None,
    classes: int | None = None,
    layer: int | None = None,
    dtype: Any = None,
    psd: str = "cholesky",
) -> Any:
    """Validate one upload of type ``kind``; return its normalized copy, or raise ``TypeError``/``ValueError``
    naming the claimed client.

    ``dim`` is the expected Gram size (``None`` accepts any square Gram -- only for checking a lone message; a
    server passes its configured size); ``classes`` the largest allowed number of target columns (fewer columns
    are zero-padded by the merge); ``layer`` the DeepAFL layer index this round expects; ``dtype`` pins the
    transport dtype (``None``: float32 or float64). A malformed object may also raise other exceptions here;
    :func:`screen` turns every one of them into a rejection.
    """
    _check_settings(kind, dim, classes, layer, psd)
    if type(message) is not kind:
        raise TypeError(f"expected a {kind.__name__}, got {type(message).__name__}")
    cid = normalize_client_id(message.client_id)
    who = f"client {cid!r}"
    count = _integer(who, "count", message.count, 0, MAX_COUNT)
    fields: dict[str, Any] = {"client_id": cid, "count": count}
    if kind is AFLUpload:
        fields["gamma"] = _real(who, "gamma", message.gamma)
    else:
        fields["layer"] = _integer(who, "layer", message.layer, 0, _INT64[1])
        if layer is not None and fields["layer"] != layer:
            raise ValueError(f"{who}: message is for layer {fields['layer']}, this round is layer {layer}")
    gram_name, cross_name = _FIELDS[kind]
    gram, scale = _check_array(who, gram_name, getattr(message, gram_name), (dim, dim), dtype)
    if gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"{who}: {gram_name} must be square and non-empty, got shape {gram.shape}")
    cross, _ = _check_array(who, cross_name, getattr(message, cross_name), (gram.shape[0], None), dtype)
    if classes is not None and cross.shape[1] > classes:
        raise ValueError(f"{who}: {cross_name} has {cross.shape[1]} columns, more than the {classes} classes")
    if count == 0 and (np.any(gram) or np.any(cross)):
        raise ValueError(f"{who}: count is 0 but the statistics are non-zero")
    _check_gram(who, gram_name, gram, scale, psd)
    fields[gram_name], fields[cross_name] = gram, cross
    return dataclasses.replace(message, **fields)


def screen(messages: Iterable[Any], *, seen: Iterable[Any] = (), warn: bool = True, **checks: Any) -> ScreenResult:
    """Split ``messages`` into accepted (normalized) ones and :class:`Rejection` records; ``checks`` go to
    :func:`check_upload` (``kind`` is required).

    A client id already in ``seen`` (an earlier wave) or accepted earlier in ``messages`` is rejected: its rows
    would otherwise be counted twice. The first valid upload per id wins; rejected messages never reserve an id.
    Raises only for a wrong server setting in ``checks`` (checked before any message), never for a message.
    """
    _check_settings(checks.get("kind"), checks.get("dim"), checks.get("classes"), checks.get("layer"),
                    checks.get("psd", "cholesky"))
    seen_ids = {normalize_client_id(c) for c in seen}
    accepted: list[Any] = []
    excluded: list[Rejection] = []
    for position, message in enumerate(messages):
        try:
            clean = check_upload(message, **checks)
            if clean.client_id in seen_ids:
                raise ValueError(f"client {clean.client_id!r}: a second upload in this aggregation (its rows would "
                                 "count twice); the first valid one is kept")
        except Exception as err:  # noqa: BLE001 - whatever a malformed message provokes must not abort the round
            try:
                claimed = describe_id(message.client_id)
            except Exception:  # noqa: BLE001 - no (readable) client_id attribute at all
                claimed = "<none>"
            text = _error_text(err)
            reason = f"message {position} (claimed client_id {claimed}): {text}"
            excluded.append(Rejection(position, claimed, reason))
            if warn:
                warnings.warn(f"rejected upload: {reason}", RejectedUploadWarning, stacklevel=2)
            continue
        seen_ids.add(clean.client_id)
        accepted.append(clean)
    return ScreenResult(accepted, excluded)
