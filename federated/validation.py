"""Server-side checks of client uploads: reject a malformed message, name its sender, keep the others.

A federated server sums whatever it is sent, so one corrupt Gram (NaN, wrong shape, integer dtype, asymmetric or
indefinite -- none of which ``XᵀX`` of real features can be) would silently poison the global model. Every
upload is screened before it is merged:

- the message type, ``client_id`` (integer, not seen before in this aggregation), ``count`` (integer ≥ 0),
  ``gamma`` (finite, ≥ 0) where present;
- each array: a floating dtype (``float32``/``float64``), the expected shape, only finite entries;
- each Gram ``G``: symmetric (``max|G − Gᵀ| ≤ tol·max|G|``) and positive semi-definite. PSD is checked cheaply: a
  non-negative diagonal, then a Cholesky factorization of ``G + tol·tr(G)·I`` (``d³/3`` flops, about a tenth of
  ``eigvalsh``); it fails exactly when ``λ_min(G) < −tol·tr(G)`` up to rounding. ``psd="eigvalsh"`` checks
  ``λ_min ≥ −tol·tr(G)`` literally; ``psd="none"`` skips it.

:func:`screen` runs the checks over a batch of messages and returns the accepted ones plus
``{client_id: reason}`` for the excluded ones (each reason is the ``ValueError``/``TypeError`` text, which names
the client); a :class:`RejectedUploadWarning` is emitted for each.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from federated.messages import AFLUpload, DeepAFLBlockUpload, DeepAFLClassifierUpload

__all__ = ["RejectedUploadWarning", "ScreenResult", "check_upload", "screen", "tolerance"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# (gram field, cross-moment field) of each upload type.
_FIELDS: dict[type, tuple[str, str]] = {
    AFLUpload: ("xtx", "xty"),
    DeepAFLClassifierUpload: ("phi_gram", "phi_target"),
    DeepAFLBlockUpload: ("block_gram", "block_residual"),
}


class RejectedUploadWarning(UserWarning):
    """A client upload failed validation and was left out of the aggregation."""


class ScreenResult(NamedTuple):
    accepted: list[Any]
    excluded: dict[Any, str]


def tolerance(dtype: Any, dim: int) -> float:
    """Relative tolerance for symmetry/PSD checks: ``100·d·eps`` of the message dtype (rounding of a Gram sum)."""
    return 100.0 * max(dim, 1) * float(np.finfo(dtype).eps)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_array(who: str, name: str, a: Any, shape: tuple[int | None, ...], dtype: Any) -> np.ndarray:
    if not isinstance(a, np.ndarray) and not hasattr(a, "__array__"):
        raise TypeError(f"{who}: {name} must be an array, got {type(a).__name__}")
    a = np.asarray(a)
    if a.dtype not in _FLOATS:
        raise TypeError(f"{who}: {name} has dtype {a.dtype}; float32 or float64 expected")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise TypeError(f"{who}: {name} has dtype {a.dtype}; this server expects {np.dtype(dtype)}")
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise ValueError(f"{who}: {name} has shape {a.shape}, expected {want}")
    if not np.isfinite(a).all():
        raise ValueError(f"{who}: {name} has {int(a.size - np.isfinite(a).sum())} NaN/inf entries")
    return a


def _check_gram(who: str, name: str, g: np.ndarray, psd: str) -> None:
    d = g.shape[0]
    tol = tolerance(g.dtype, d)
    g64 = g.astype(np.float64)
    scale = float(np.abs(g64).max()) if g.size else 0.0
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
    """Validate one upload of type ``kind``; return it, or raise ``TypeError``/``ValueError`` naming the client.

    ``dim`` is the expected Gram size; ``classes`` the largest allowed number of target columns (fewer columns
    are zero-padded by the merge); ``layer`` the DeepAFL layer index this round expects; ``dtype`` pins the
    transport dtype (``None``: float32 or float64).
    """
    if kind not in _FIELDS:
        raise TypeError(f"kind must be one of {[k.__name__ for k in _FIELDS]}, got {kind!r}")
    cid = getattr(message, "client_id", "?")
    who = f"client {cid!r}"
    if not isinstance(message, kind):
        raise TypeError(f"{who}: expected a {kind.__name__}, got {type(message).__name__}")
    if not _is_int(message.client_id):
        raise TypeError(f"{who}: client_id must be an integer")
    if not _is_int(message.count) or message.count < 0:
        raise ValueError(f"{who}: count must be an integer >= 0, got {message.count!r}")
    if hasattr(message, "gamma"):
        gamma = message.gamma
        if not isinstance(gamma, (int, float, np.floating, np.integer)) or not np.isfinite(gamma) or gamma < 0:
            raise ValueError(f"{who}: gamma must be finite and >= 0, got {gamma!r}")
    if layer is not None and getattr(message, "layer", layer) != layer:
        raise ValueError(f"{who}: message is for layer {message.layer}, this round is layer {layer}")
    gram_name, cross_name = _FIELDS[kind]
    gram = _check_array(who, gram_name, getattr(message, gram_name), (dim, dim), dtype)
    if gram.shape[0] != gram.shape[1]:
        raise ValueError(f"{who}: {gram_name} must be square, got shape {gram.shape}")
    cross = _check_array(who, cross_name, getattr(message, cross_name), (gram.shape[0], None), dtype)
    if classes is not None and cross.shape[1] > classes:
        raise ValueError(f"{who}: {cross_name} has {cross.shape[1]} columns, more than the {classes} classes")
    if message.count == 0 and (np.any(gram) or np.any(cross)):
        raise ValueError(f"{who}: count is 0 but the statistics are non-zero")
    _check_gram(who, gram_name, gram, psd)
    return message


def screen(messages: Iterable[Any], *, seen: Iterable[Any] = (), **checks: Any) -> ScreenResult:
    """Split ``messages`` into accepted ones and ``{client_id: reason}``; see :func:`check_upload` for ``checks``.

    A client id already in ``seen`` (an earlier wave) or repeated within ``messages`` is excluded: its rows
    would otherwise be counted twice.
    """
    seen_ids = set(seen)
    accepted: list[Any] = []
    excluded: dict[Any, str] = {}
    for message in messages:
        cid = getattr(message, "client_id", None)
        try:
            check_upload(message, **checks)
            if cid in seen_ids:
                raise ValueError(f"client {cid!r}: a second upload in this aggregation (its rows would count twice)")
        except (TypeError, ValueError) as err:
            key = cid if cid is not None and cid not in excluded else f"{cid}#{len(excluded)}"
            excluded[key] = str(err)
            warnings.warn(f"rejected upload: {err}", RejectedUploadWarning, stacklevel=2)
            continue
        seen_ids.add(cid)
        accepted.append(message)
    return ScreenResult(accepted, excluded)
