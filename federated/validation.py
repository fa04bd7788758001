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
- each Gram ``G``: a non-negative diagonal, symmetric (``max|G − Gᵀ| ≤ tol·max|G|``) and positive
  semi-definite (``λ_min(G) ≥ −tol·max(tr G, max|G|)``), ``tol`` = :func:`tolerance`. How symmetry and PSD are
  checked is the ``psd`` setting:

  * ``"probe"`` (the servers' default; ``O(d²·P)`` per upload): Rayleigh–Ritz on a random ``P``-dimensional
    subspace, ``P = probes`` (8). ``Z: (d, P)`` has orthonormal columns drawn by the *server* after the uploads
    arrived (``probe_seed=None``: fresh OS entropy), so no client can aim a forgery at it; ``T = ZᵀGZ``. An
    upload is rejected if ``|z_aᵀ(G − Gᵀ)z_b| = |T_ab − T_ba| > tol·max|G|·‖z_a‖₁‖z_b‖₁`` for two columns (a
    bound every ``G`` passing the exact symmetry check meets) or if ``λ_min((T + Tᵀ)/2) < −tol·max(tr G,
    max|G|)`` (Cauchy interlacing: ``λ_min(ZᵀGZ) ≥ λ_min(G)``, so a PSD ``G`` always passes). Both tests only
    ever reject a genuinely bad Gram. For ``d ≤ P`` the server takes ``Z = I``: both are then the exact checks.
    For ``d > P`` they are random necessary tests, far weaker than the exact ones: an asymmetry, or a negative
    direction nearly orthogonal to ``Z``, can pass them. The servers (:func:`federated.afl.server_update`,
    :class:`federated.deepafl.DeepAFLServer`) therefore also certify the *sum* of each wave's accepted Grams by
    one Cholesky factorization (:func:`sum_is_psd`); if the sum fails, the whole wave is screened again with
    ``"cholesky"`` and that exact verdict is final. So for ``d > P`` an indefinite upload is rejected whenever a
    probe exposes it or it makes the wave's merged Gram indefinite; one whose negative part the other uploads
    outweigh and the probes miss can be merged -- the merged Gram is then still PSD (the solve stays
    well-posed), as after merging any valid-looking forgery, which no server can tell from an honest upload.
    Use ``"cholesky"`` when every single upload must be certified. A Gram is not scanned entry by entry in this
    mode (it is read about once, for its probe product, and the server's sum reuses that read): a NaN/inf entry
    reaches ``T`` (no entry of ``Z`` is zero) and such an upload -- or one whose products overflow -- is then
    checked exactly; the magnitude bound is checked on the diagonal, and ``max|diag G|`` stands for ``max|G|`` in
    the tolerances (equal for a PSD ``G``, by Cauchy–Schwarz). An off-diagonal entry beyond the bound makes ``G``
    indefinite (``|Gᵢⱼ| ≤ √(GᵢᵢGⱼⱼ)`` for a PSD ``G``): like any indefinite upload it is rejected when a probe
    exposes it or the sum certificate fails (the sum indefinite or not finite), and otherwise merged into a sum
    that is finite and PSD.
  * ``"cholesky"``: exact per upload -- ``max|G − Gᵀ|``, then a Cholesky factorization of
    ``G + tol·max(tr G, max|G|)·I`` (``d³/3`` flops per upload), which fails exactly when ``λ_min`` is below the
    bound, up to rounding. ``"eigvalsh"`` checks the eigenvalue bound literally; ``"none"`` checks symmetry
    exactly and skips the diagonal and PSD checks.

:func:`screen` runs the checks over a batch of messages and returns the accepted ones (normalized copies: plain
``int`` id, count and layer, ``float`` gamma, ``np.ndarray`` arrays; the array data is not copied) plus one
:class:`Rejection` per excluded message, in input order. A rejection is keyed by the message's *position* in the
batch, not by the id it claims, so an invalid message claiming an honest client's id can never displace or
exclude that client. Screening never raises for a message's fault: any exception a malformed object provokes
(``None``, objects without attributes, unhashable ids, object arrays, overflowing numbers) becomes a rejection.

Identity is not authenticated: the server keeps the *first valid* upload per id, and a later upload with the same
id (in this batch, or an id in ``seen`` from earlier waves) is rejected without affecting the first. Ids are
assigned only after every check, the batched probes included, so a rejected message never reserves an id. A
valid-looking upload sent first under someone else's id is therefore kept; authenticating clients is the
transport's job.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from analytic.host_kernels import sum_of_squares
from federated._probing import MAX_ENTRY, RECHECK, Prober, one_blas_thread, probe, tolerance
from federated.messages import AFLUpload, DeepAFLBlockUpload, DeepAFLClassifierUpload

__all__ = ["DEFAULT_PSD", "MAX_COUNT", "MAX_ENTRY", "PROBES", "PSD_MODES", "RejectedUploadWarning", "Rejection",
           "ScreenResult", "check_upload", "describe_id", "normalize_client_id", "screen", "sum_is_psd", "tolerance",
           "warn_rejections"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# (gram field, cross-moment field) of each upload type.
_FIELDS: dict[type, tuple[str, str]] = {
    AFLUpload: ("xtx", "xty"),
    DeepAFLClassifierUpload: ("phi_gram", "phi_target"),
    DeepAFLBlockUpload: ("block_gram", "block_residual"),
}
MAX_COUNT = 2**62
_INT64 = (-(2**63), 2**63 - 1)
PSD_MODES = ("probe", "cholesky", "eigvalsh", "none")
DEFAULT_PSD = "probe"
PROBES = 8


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


def _check_array(who: str, name: str, a: Any, shape: tuple[int | None, ...], dtype: Any,
                 scan: bool = True) -> tuple[np.ndarray, float]:
    """The checked array and its ``max |entry|`` (reused by the Gram checks instead of a second pass); with
    ``scan=False`` only type, dtype and shape, and the returned ``max |entry|`` is NaN (unknown)."""
    if type(a) is not np.ndarray:
        # Only NumPy arrays (and array-likes such as jax.Array with an __array__) -- never lists or strings.
        if not hasattr(a, "__array__") or isinstance(a, (str, bytes)):
            raise TypeError(f"{who}: {name} must be an array, got {type(a).__name__}")
        a = np.asarray(a)  # also drops ndarray subclasses (np.matrix, masked arrays): their operators differ
        if type(a) is not np.ndarray:
            raise TypeError(f"{who}: {name} could not be read as an array")
    if a.dtype not in _FLOATS:
        raise TypeError(f"{who}: {name} has dtype {a.dtype}; float32 or float64 expected")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise TypeError(f"{who}: {name} has dtype {a.dtype}; this server expects {np.dtype(dtype)}")
    if a.shape != shape and not _shape_matches(a.shape, shape):
        want = tuple("*" if s is None else s for s in shape)
        raise ValueError(f"{who}: {name} has shape {a.shape}, expected {want}")
    return a, (_peak(who, name, a) if scan else math.nan)


def _shape_matches(got: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
    """``got`` has ``want``'s rank and its sizes where ``want`` names one (``None``: any size)."""
    if len(got) != len(want):
        return False
    for size, wanted in zip(got, want):  # a plain loop: a generator per call cost ~1 µs per message
        if wanted is not None and size != wanted:
            return False
    return True


def _peak(who: str, name: str, a: np.ndarray) -> float:
    """``max |a|``, or ``ValueError`` for a NaN/inf entry or one above :data:`MAX_ENTRY`."""
    # max and min propagate NaN, so max(max a, −min a) is NaN or inf exactly when an entry is; no |a| temporary.
    peak = max(float(a.max()), -float(a.min())) if a.size else 0.0
    if not math.isfinite(peak):
        raise ValueError(f"{who}: {name} has {int(a.size - np.isfinite(a).sum())} NaN/inf entries")
    if peak > MAX_ENTRY:
        raise ValueError(f"{who}: {name} has entries above {MAX_ENTRY:.3g} in magnitude (a sum would overflow)")
    return peak


def _check_bounded(who: str, name: str, a: np.ndarray) -> None:
    """:func:`_peak`'s ``ValueError`` for ``a``, without computing the peak when ``a``'s sum of squares is finite
    (then every entry is finite and below ``√max float`` ≪ :data:`MAX_ENTRY`). One BLAS dot product
    (:func:`analytic.host_kernels.sum_of_squares`: the host kernels' library, whose thread pool a second OpenBLAS
    would contend with) instead of a max and a min: 0.8 against 6.2 µs for a 256×20 cross-moment. The exact scan runs
    only when the dot product overflows (or meets a NaN/inf)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    if flat.size and not math.isfinite(sum_of_squares(flat)):
        _peak(who, name, a)


def _check_gram(who: str, name: str, g: np.ndarray, scale: float, psd: str) -> None:
    """The exact per-upload Gram checks of ``g`` whose ``max |entry|`` is ``scale``; none with ``psd="probe"``
    (the diagonal, symmetry and PSD are then :class:`federated._probing.Prober`'s)."""
    if psd == "probe":
        return
    d = g.shape[0]
    tol = tolerance(g.dtype, d)
    g64 = g.astype(np.float64)
    asym = float(np.abs(g64 - g64.T).max()) if g.size else 0.0
    if asym > tol * max(scale, np.finfo(np.float64).tiny):
        raise ValueError(f"{who}: {name} is not symmetric (max |G - G^T| = {asym:.3g}, max |G| = {scale:.3g})")
    if psd == "none" or scale == 0.0:
        return
    diag = np.diagonal(g)
    if float(diag.min()) < -tol * scale:
        raise ValueError(f"{who}: {name} is not positive semi-definite (diagonal entry {diag.min():.3g} < 0)")
    trace = float(np.sum(diag, dtype=np.float64))
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
        raise ValueError(f"psd must be one of {PSD_MODES}, got {psd!r}")


def sum_is_psd(gram_sum: Any, tol: float) -> bool:
    """``λ_min(S) ≥ −tol·max(tr S, max|S|)`` for a summed Gram ``S`` (float64), by one Cholesky factorization.

    If every summand has ``λ_min(Gₖ) ≥ −tol·tr Gₖ`` -- so every PSD summand, and every honest one up to
    rounding -- the sum meets the bound, as ``λ_min`` is superadditive and ``tr`` additive. A failure therefore
    proves that some summand is indefinite beyond that tolerance (the servers then screen the wave exactly).
    """
    s = np.asarray(gram_sum, np.float64)
    if not np.isfinite(s).all():
        return False
    scale = float(np.abs(s).max()) if s.size else 0.0
    if scale == 0.0:
        return True
    shift = tol * max(float(np.trace(s)), scale)
    try:
        # One thread: d³/3 flops once per wave is cheap on one core, and spinning BLAS threads on a loaded
        # machine made this factorization up to 10x slower.
        with one_blas_thread():
            np.linalg.cholesky(s + shift * np.eye(s.shape[0]))
    except np.linalg.LinAlgError:
        return False
    return True


def _check_settings(kind: Any, dim: Any, classes: Any, layer: Any, psd: Any) -> None:
    """The server's own settings: a wrong one is the caller's bug and raises (it is not a client's fault)."""
    if kind not in _FIELDS:
        raise TypeError(f"kind must be one of {[k.__name__ for k in _FIELDS]}, got {kind!r}")
    for name, value, low in (("dim", dim, 1), ("classes", classes, 0), ("layer", layer, 0)):
        if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
                                  or value < low):
            raise ValueError(f"the server's {name} must be an integer >= {low} or None, got {value!r}")
    if psd not in PSD_MODES:
        raise ValueError(f"psd must be one of {PSD_MODES}, got {psd!r}")


def _check_one(message: Any, *, kind: type, dim: int | None, classes: int | None, layer: int | None,
               dtype: Any, psd: str) -> tuple[Any, str, np.ndarray]:
    """:func:`check_upload` without the ``"probe"`` checks: ``(normalized copy, who, gram)``.

    With ``psd="probe"`` the Gram is not read here at all: its diagonal, finiteness, symmetry and PSD are
    :class:`federated._probing.Prober`'s, from one read of the Gram (module docstring)."""
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
    gram, scale = _check_array(who, gram_name, getattr(message, gram_name), (dim, dim), dtype, scan=psd != "probe")
    if gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"{who}: {gram_name} must be square and non-empty, got shape {gram.shape}")
    cross, _ = _check_array(who, cross_name, getattr(message, cross_name), (gram.shape[0], None), dtype, scan=False)
    _check_bounded(who, cross_name, cross)
    if classes is not None and cross.shape[1] > classes:
        raise ValueError(f"{who}: {cross_name} has {cross.shape[1]} columns, more than the {classes} classes")
    if count == 0 and (np.any(gram) or np.any(cross)):
        raise ValueError(f"{who}: count is 0 but the statistics are non-zero")
    _check_gram(who, gram_name, gram, scale, psd)
    fields[gram_name], fields[cross_name] = gram, cross
    # Every field of each message kind is set above (the normalized copy is built afresh, not copied from the
    # sender's object): about 1 µs per message less than dataclasses.replace.
    return kind(**fields), who, gram


def _rng(probe_seed: Any) -> np.random.Generator:
    """The server's probe generator: ``probe_seed=None`` draws fresh OS entropy (unpredictable to clients); a
    seed or ``Generator`` makes a screening reproducible (tests, audits)."""
    return probe_seed if isinstance(probe_seed, np.random.Generator) else np.random.default_rng(probe_seed)


def check_upload(
    message: Any,
    *,
    kind: type,
    dim: int | None = None,
    classes: int | None = None,
    layer: int | None = None,
    dtype: Any = None,
    psd: str = "cholesky",
    probes: int = PROBES,
    probe_seed: Any = None,
) -> Any:
    """Validate one upload of type ``kind``; return its normalized copy, or raise ``TypeError``/``ValueError``
    naming the claimed client.

    ``dim`` is the expected Gram size (``None`` accepts any square Gram -- only for checking a lone message; a
    server passes its configured size); ``classes`` the largest allowed number of target columns (fewer columns
    are zero-padded by the merge); ``layer`` the DeepAFL layer index this round expects; ``dtype`` pins the
    transport dtype (``None``: float32 or float64); ``psd`` (default ``"cholesky"``, exact, for a lone message),
    ``probes`` and ``probe_seed`` as in the module docstring. A malformed object may also raise other exceptions
    here; :func:`screen` turns every one of them into a rejection.
    """
    _check_settings(kind, dim, classes, layer, psd)
    clean, who, gram = _check_one(message, kind=kind, dim=dim, classes=classes, layer=layer, dtype=dtype, psd=psd)
    if psd == "probe":
        failure = probe([gram], _probe_count(probes), _rng(probe_seed))[0]
        if failure == RECHECK:
            return _check_one(message, kind=kind, dim=dim, classes=classes, layer=layer, dtype=dtype,
                              psd="cholesky")[0]
        if failure is not None:
            raise ValueError(f"{who}: {_FIELDS[kind][0]} {failure}")
    return clean


def _probe_count(probes: Any) -> int:
    if isinstance(probes, (bool, np.bool_)) or not isinstance(probes, (int, np.integer)) or probes < 1:
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    return int(probes)


def warn_rejections(excluded: Iterable[Rejection], stacklevel: int = 3) -> None:
    """One :class:`RejectedUploadWarning` per rejection (the servers warn once, after their final verdict)."""
    for r in excluded:
        warnings.warn(f"rejected upload: {r.reason}", RejectedUploadWarning, stacklevel=stacklevel)


def _rejection(position: int, message: Any, text: str) -> Rejection:
    try:
        claimed = describe_id(message.client_id)
    except Exception:  # noqa: BLE001 - no (readable) client_id attribute at all
        claimed = "<none>"
    return Rejection(position, claimed, f"message {position} (claimed client_id {claimed}): {text}")


def screen(messages: Iterable[Any], *, seen: Iterable[Any] = (), warn: bool = True, psd: str = DEFAULT_PSD,
           probes: int = PROBES, probe_seed: Any = None, on_checked: Callable[[Any], None] | None = None,
           **checks: Any) -> ScreenResult:
    """Split ``messages`` into accepted (normalized) ones and :class:`Rejection` records; ``checks`` go to
    :func:`check_upload` (``kind`` is required); ``psd``, ``probes``, ``probe_seed`` as in the module docstring.

    The checks run in three passes: each message alone; then the ``"probe"`` symmetry/PSD tests batched over the
    survivors; then, in input order, ids: an id already in ``seen`` (an earlier wave) or accepted earlier in
    ``messages`` is rejected (its rows would otherwise be counted twice). The first valid upload per id wins;
    rejected messages never reserve an id. Raises only for a wrong server setting (checked before any message),
    never for a message. ``"probe"`` alone does not certify the sum: the servers add :func:`sum_is_psd`.

    ``on_checked(message)`` (optional) is called, in input order, with each normalized message that passed its
    own checks, right after them; it may return an array of the Gram's shape, into which the Gram is then added
    during its probe product (one read from memory for both). It is a hint, not a verdict (the probes, ids and
    re-checks decide after the pass): the servers use it to sum the wave speculatively and keep that sum only if
    every message it holds was accepted.
    """
    _check_settings(checks.get("kind"), checks.get("dim"), checks.get("classes"), checks.get("layer"), psd)
    probes = _probe_count(probes)
    seen_ids = {normalize_client_id(c) for c in seen}
    settings = {"dim": None, "classes": None, "layer": None, "dtype": None, **checks}
    messages = list(messages)
    failures: dict[int, str] = {}
    passed: list[tuple[int, Any, str, np.ndarray]] = []
    prober = Prober(probes, _rng(probe_seed)) if psd == "probe" else None
    # One BLAS thread per probe worker (see one_blas_thread); nothing else in this loop calls BLAS.
    with one_blas_thread() if prober is not None else contextlib.nullcontext():
        for position, message in enumerate(messages):
            try:
                row = (position, *_check_one(message, psd=psd, **settings))
            except Exception as err:  # noqa: BLE001 - whatever a malformed message provokes must not abort the round
                failures[position] = _error_text(err)
                continue
            passed.append(row)
            sink = on_checked(row[1]) if on_checked is not None else None
            if prober is not None:
                prober.add(position, row[3], sink)
            elif sink is not None:
                sink += row[3]
        verdicts = prober.verdicts() if prober is not None else {}
    if prober is not None:
        gram_name = _FIELDS[checks["kind"]][0]
        for position, _, who, *_ in passed:
            failure = verdicts.get(position)
            if failure == RECHECK:
                try:
                    _check_one(messages[position], psd="cholesky", **settings)
                except Exception as err:  # noqa: BLE001 - as above
                    failures[position] = _error_text(err)
            elif failure is not None:
                failures[position] = f"{who}: {gram_name} {failure}"
    accepted: list[Any] = []
    clean_at = {p[0]: p[1] for p in passed if p[0] not in failures}
    for position in range(len(messages)):
        clean = clean_at.get(position)
        if clean is None:
            continue
        if clean.client_id in seen_ids:
            failures[position] = (f"client {clean.client_id!r}: a second upload in this aggregation (its rows would "
                                  "count twice); the first valid one is kept")
            continue
        seen_ids.add(clean.client_id)
        accepted.append(clean)
    excluded = [_rejection(position, messages[position], failures[position]) for position in sorted(failures)]
    if warn:
        warn_rejections(excluded)
    return ScreenResult(accepted, excluded)
