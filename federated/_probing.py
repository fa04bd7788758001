"""The ``"probe"`` screening of uploaded Grams (see :mod:`federated.validation`): ``T = ZᵀGZ`` on a random
``P``-dimensional subspace, the diagonal, and optionally the server's sum, from one read of each Gram.

The product costs ``2·P·d²`` flops per upload against the ``d²`` additions of the server's sum, so on one core it
dominates a screened aggregation. :class:`Prober` therefore splits every Gram's *rows* between worker threads
(NumPy's BLAS releases the GIL): worker ``w`` owns rows ``[w·d/W, (w+1)·d/W)`` of every Gram, computes its share
``Z[rows]ᵀ G[rows]`` of ``ZᵀG``, copies its part of the diagonal and adds its rows into the sink, upload by upload
in input order. Each entry of the sink therefore receives exactly the additions of a sequential sum, in the same
order (bit for bit); ``T`` is the workers' shares added in a fixed order, then multiplied by ``Z`` -- batched over
the uploads, after the workers joined -- so it is deterministic too. A worker makes three NumPy calls per upload
(sum, diagonal, product) and writes into arrays preallocated per group of Grams: with the ``Z`` product, the cast
and a fresh result array per upload inside the loop, each of two workers took 93-115 ms for 1000 Grams at
d = 256, against 65-71 ms now (60 ms for the bare sum-and-product loop).
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any

import numpy as np

from analytic.host_kernels import cpu_count

__all__ = ["MAX_ENTRY", "RECHECK", "Prober", "one_blas_thread", "probe", "probe_basis", "probe_product",
           "probe_verdicts", "tolerance"]

# 2**32 uploads at this magnitude still sum to a finite float64.
MAX_ENTRY = float(np.finfo(np.float64).max) / 2.0**32
RECHECK = "<recheck exactly>"
# Rows of a Gram handled per BLAS call. One thread: 128 KiB blocks stay in L1/L2 between the product and the sum
# (d = 512, 1000 Grams: 334 ms against 508 ms for a separate sum). Several threads: larger blocks, so that each
# call holds the GIL released for long (with 128 KiB blocks two threads were slower than one).
_BLOCK_BYTES = 1 << 17
_THREADED_BLOCK_BYTES = 1 << 20
_MAX_WORKERS = 4
_MIN_ROWS_PER_WORKER = 64


def tolerance(dtype: Any, dim: int) -> float:
    """Relative tolerance for symmetry/PSD checks: ``100·d·eps`` of the message dtype (rounding of a Gram sum)."""
    return 100.0 * max(dim, 1) * float(np.finfo(dtype).eps)


def one_blas_thread() -> Any:
    """A context that runs BLAS on one thread, if ``threadpoolctl`` is installed: the probe products are skinny
    (``P`` columns) and memory-bound, and on a loaded machine a multi-threaded OpenBLAS spent 20-40x longer on
    them (threads spinning for a core) than one thread did. Parallelism comes from :class:`Prober`'s workers."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional; only speed depends on it
        return contextlib.nullcontext()
    return threadpool_limits(1, "blas")


def probe_basis(d: int, probes: int, rng: np.random.Generator, dtype: Any) -> np.ndarray | None:
    """``Z: (d, P)`` with orthonormal columns drawn from ``rng``, or ``None`` for ``d ≤ P`` (then ``Z = I``).

    No entry of ``Z`` is zero (a zero has probability 0; it is redrawn anyway), so a NaN or inf anywhere in ``G``
    reaches ``ZᵀGZ``: ``(ZᵀGZ)_pq = Σᵢⱼ Z_ip G_ij Z_jq`` with every coefficient non-zero.
    """
    if d <= probes:
        return None
    while True:
        z = np.linalg.qr(rng.standard_normal((d, probes)))[0].astype(dtype)
        if np.all(z != 0):
            return z


def _rows_share(g: np.ndarray, z: np.ndarray, lo: int, hi: int, sink: np.ndarray | None, diag: np.ndarray,
                block_bytes: int, out: np.ndarray) -> None:
    """``out ← Z[lo:hi]ᵀ G[lo:hi]``, ``(P, d)`` in ``G``'s dtype (this row range's share of ``ZᵀG``), writing
    ``diag(G)[lo:hi]`` into ``diag[lo:hi]`` and adding ``G[lo:hi]`` into ``sink[lo:hi]`` on the way, in blocks of
    rows read once from memory for all three. NaN/inf entries are expected (they are how a non-finite ``G``
    shows): the caller silences their warnings. ``out`` is preallocated by the caller: a fresh array per upload
    that outlives the loop (1000 of them) cost as much as the products (each lands on new pages)."""
    zt = z.T
    rows = max(8, block_bytes // max(1, g.shape[1] * g.itemsize))
    # The sum first: its streaming read brings the block into cache faster than the product's own reads
    # (1000 Grams at d = 256: 83 vs 111 ms on one thread, 53 vs 60 ms on two). (ZᵀG)Z rather than Zᵀ(GZ): the
    # same T, and OpenBLAS streams G ~1.7x faster with the P-row operand on the left (d = 512).
    for i in range(lo, hi, rows):
        j = min(i + rows, hi)
        block = g[i:j]
        if sink is not None:
            sink[i:j] += block
        diag[i:j] = block.diagonal(i)
        if i == lo:
            np.matmul(zt[:, i:j], block, out=out)
        else:
            out += zt[:, i:j] @ block


def _products_of_shares(shares: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``T = (Σ_w share_w) Z: (n, P, P)`` in float64 from the workers' shares ``(W, n, P, d)`` of ``ZᵀG`` for
    ``n`` Grams of one shape and dtype: added in worker order (so ``T`` does not depend on timing), then one
    ``(nP, d) × (d, P)`` product for all of them."""
    with np.errstate(invalid="ignore", over="ignore"):
        total = shares[0]
        for w in range(1, shares.shape[0]):
            total += shares[w]
        n, p, d = total.shape
        return (total.reshape(n * p, d) @ z).reshape(n, p, p).astype(np.float64)


def probe_product(g: np.ndarray, z: np.ndarray | None,
                  sink: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(T, diag G)`` with ``T = ZᵀGZ`` in float64 (``G`` itself in float64 when ``Z = I``), on this thread;
    ``T`` is not finite when ``G`` holds a NaN/inf. With ``sink`` (an array of ``G``'s shape): ``sink += G``,
    elementwise the same additions, from the same read of ``G``."""
    if z is None:
        if sink is not None:
            sink += g
        return g.astype(np.float64), np.diagonal(g).copy()
    diag = np.empty(g.shape[0], g.dtype)
    share = np.empty((z.shape[1], g.shape[1]), g.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        _rows_share(g, z, 0, g.shape[0], sink, diag, _BLOCK_BYTES, share)
        return (share @ z).astype(np.float64), diag


def _ritz_lower_bounds(sym: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The smallest eigenvalue of each symmetric ``P×P`` matrix of ``sym``, or ``-shift`` where the matrix is known
    to be above it: one batched Cholesky of ``sym + shift·I`` (10x cheaper than ``eigvalsh``) proves
    ``λ_min > −shift`` for the whole batch when it succeeds; otherwise the eigenvalues are computed."""
    try:
        np.linalg.cholesky(sym + shift[:, None, None] * np.eye(sym.shape[1]))
    except np.linalg.LinAlgError:
        return np.linalg.eigvalsh(sym)[:, 0]
    return -shift


def probe_verdicts(grams: list[np.ndarray], diags: list[np.ndarray], products: list[np.ndarray],
                   z: np.ndarray | None) -> list[str | None]:
    """The ``"probe"`` verdicts of Grams of one shape and dtype from their diagonals and products ``T``
    (:func:`probe_product` with the same ``z``): the failure text, ``None``, or :data:`RECHECK` -- the exact
    per-upload checks decide -- when ``T`` or the diagonal is not finite or the diagonal exceeds :data:`MAX_ENTRY`.
    ``max|diag G|`` stands for ``max|G|`` (a zero diagonal: ``G`` is scanned for it, and an all-zero ``G``
    passes); the ``P×P`` PSD tests are one batched Cholesky factorization (eigenvalues only if it fails)."""
    d, dtype = grams[0].shape[0], grams[0].dtype
    tol = tolerance(dtype, d)
    t = np.stack(products)
    dg = np.stack(diags).astype(np.float64)
    with np.errstate(invalid="ignore"):
        scales = np.abs(dg).max(axis=1)
        usable = np.isfinite(t).all(axis=(1, 2)) & np.isfinite(scales) & (scales <= MAX_ENTRY)
    for j in np.flatnonzero(usable & (scales == 0)):
        # A zero diagonal: G is zero if PSD, and its own max |entry| is the scale of the tests below (rare).
        peak = float(np.abs(grams[j]).max())
        usable[j] = math.isfinite(peak) and peak <= MAX_ENTRY
        scales[j] = peak
    t[~usable] = 0.0
    smallest, total = dg.min(axis=1), dg.sum(axis=1)
    shift = tol * np.maximum(total, scales)
    decided = usable & (scales > 0)  # an all-zero Gram is symmetric and PSD
    if z is None:
        # Z = I: the exact checks, G − Gᵀ and the spectrum of G itself (d ≤ P, so this is cheap).
        asym = np.abs(t - t.transpose(0, 2, 1)).max(axis=(1, 2))
        low = np.linalg.eigvalsh(t)[:, 0]
    else:
        # T − Tᵀ = Zᵀ(G − Gᵀ)Z and |z_aᵀAz_b| ≤ max|A|·‖z_a‖₁‖z_b‖₁: the symmetry test needs no second product.
        l1 = np.abs(z).sum(axis=0, dtype=np.float64)
        asym = (np.abs(t - t.transpose(0, 2, 1)) / np.multiply.outer(l1, l1)).max(axis=(1, 2))
        low = _ritz_lower_bounds(0.5 * (t + t.transpose(0, 2, 1)), np.where(decided, shift, 1.0))
    # The checks in order, vectorised over the group; only the (rare) failures are put into words.
    with np.errstate(invalid="ignore"):
        bad_diag = smallest < -tol * scales
        bad_sym = ~bad_diag & (asym > tol * scales)
        bad_psd = ~bad_diag & ~bad_sym & (low < -shift)
    out: list[str | None] = [None] * len(grams)
    for j in np.flatnonzero(~usable):
        out[j] = RECHECK
    for j in np.flatnonzero(decided & bad_diag):
        out[j] = f"is not positive semi-definite (diagonal entry {float(smallest[j]):.3g} < 0)"
    for j in np.flatnonzero(decided & bad_sym):
        what = ("max |G - G^T|" if z is None
                else f"max |u^T (G - G^T) v|/(|u|_1 |v|_1) over {z.shape[1]} random directions")
        out[j] = f"is not symmetric ({what} = {float(asym[j]):.3g}, max |G| = {float(scales[j]):.3g})"
    for j in np.flatnonzero(decided & bad_psd):
        what = "min eigenvalue" if z is None else f"min Ritz value on {z.shape[1]} random directions"
        out[j] = f"is not positive semi-definite ({what} {float(low[j]):.3g} < -{float(shift[j]):.3g})"
    return out


class _Job:
    """One Gram to probe: its verdict key, group, index among its group's Grams, basis, sink, number of row parts,
    and (set by :meth:`Prober._run`) its diagonal and ``T``."""

    __slots__ = ("key", "group", "g", "z", "sink", "parts", "index", "product", "diag")

    def __init__(self, key: int, group: tuple[Any, ...], index: int, g: np.ndarray, z: np.ndarray | None,
                 sink: np.ndarray | None, parts: int) -> None:
        self.key, self.group, self.index, self.g, self.z = key, group, index, g, z
        self.sink, self.parts = sink, parts
        self.product: np.ndarray | None = None
        self.diag: np.ndarray | None = None


class Prober:
    """The ``"probe"`` checks -- diagonal, finiteness, symmetry, PSD -- upload by upload.

    :meth:`add` takes an upload's Gram (and optionally the server's sum to add it into,
    :func:`federated.afl.screen_and_merge`); :meth:`verdicts` computes ``T = ZᵀGZ`` and the diagonals -- on
    ``workers`` threads splitting each Gram's rows, one read of each Gram for product, diagonal and sum -- and
    decides them all, batched per Gram shape and dtype. One ``Z`` per shape and dtype, drawn from the server's
    generator in the order the shapes first appear. ``workers=None``: one per CPU up to 4, fewer for small Grams
    (each takes ≥ 64 rows).

    The products run only in :meth:`verdicts`, not as the Grams arrive: while the caller's thread runs Python
    (the per-message checks) it holds the GIL, and a worker returning from a BLAS call waits a whole switch
    interval (5 ms) for it -- overlapping the two was slower than either alone. ``g`` and ``sink`` must not change
    until :meth:`verdicts` returns.
    """

    def __init__(self, probes: int, rng: np.random.Generator, workers: int | None = None) -> None:
        self.probes, self.rng = probes, rng
        self.workers = min(_MAX_WORKERS, cpu_count()) if workers is None else max(1, int(workers))
        self.bases: dict[tuple[Any, ...], np.ndarray | None] = {}
        self.jobs: list[_Job] = []
        self.groups: dict[tuple[Any, ...], list[_Job]] = {}  # the jobs of each (shape, dtype), in input order

    def add(self, key: int, g: np.ndarray, sink: np.ndarray | None = None) -> None:
        """Queue ``g`` (its verdict is read by ``key``), to be added into ``sink`` on the way if given."""
        group = (g.shape, g.dtype)
        if group not in self.bases:
            self.bases[group] = probe_basis(g.shape[0], self.probes, self.rng, g.dtype)
        z = self.bases[group]
        parts = 1 if z is None else max(1, min(self.workers, g.shape[0] // _MIN_ROWS_PER_WORKER))
        members = self.groups.setdefault(group, [])
        members.append(_Job(key, group, len(members), g, z, sink, parts))
        self.jobs.append(members[-1])

    def _work(self, w: int, shares: dict[tuple[Any, ...], np.ndarray], errors: list[BaseException]) -> None:
        """Worker ``w``'s rows of every Gram, in input order (so each sink entry sees its additions in order).
        Grams of one shape have the same number of parts, so the same worker adds a given sink row each time."""
        block_bytes = _BLOCK_BYTES if self.workers == 1 else _THREADED_BLOCK_BYTES
        try:
            with np.errstate(invalid="ignore", over="ignore"):  # per thread: NumPy's error state is thread-local
                for job in self.jobs:
                    if w >= job.parts:
                        continue
                    if job.z is None:  # Z = I (d ≤ P): one part, on this thread
                        job.product, job.diag = probe_product(job.g, None, job.sink)
                        continue
                    d = job.g.shape[0]
                    lo, hi = w * d // job.parts, (w + 1) * d // job.parts
                    _rows_share(job.g, job.z, lo, hi, job.sink, job.diag, block_bytes, shares[job.group][w, job.index])
        except BaseException as err:  # noqa: BLE001 - re-raised by verdicts() on the caller's thread
            errors.append(err)

    def _run(self) -> None:
        # Every output preallocated per group of Grams of one shape and dtype (see _rows_share).
        members = {group: jobs for group, jobs in self.groups.items() if self.bases[group] is not None}
        shares = {}
        for group, jobs in members.items():
            (d, _), dtype, parts = group[0], group[1], jobs[0].parts
            shares[group] = np.empty((parts, len(jobs), self.probes, d), dtype)
            diags = np.empty((len(jobs), d), dtype)
            for job in jobs:
                job.diag = diags[job.index]
        errors: list[BaseException] = []
        needed = max((job.parts for job in self.jobs), default=1)
        threads = [threading.Thread(target=self._work, args=(w, shares, errors), name=f"probe-{w}", daemon=True)
                   for w in range(1, needed)]
        for t in threads:
            t.start()
        self._work(0, shares, errors)  # the caller's thread is worker 0
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        for group, jobs in members.items():
            for job, t in zip(jobs, _products_of_shares(shares[group], self.bases[group])):
                job.product = t

    def verdicts(self) -> dict[int, str | None]:
        self._run()
        out: dict[int, str | None] = {}
        for group, jobs in self.groups.items():
            verdicts = probe_verdicts([j.g for j in jobs], [j.diag for j in jobs], [j.product for j in jobs],
                                      self.bases[group])
            out.update(zip((j.key for j in jobs), verdicts))
        return out


def probe(grams: list[np.ndarray], probes: int, rng: np.random.Generator) -> list[str | None]:
    """The :class:`Prober` verdicts of ``grams``: the failure text, ``None``, or :data:`RECHECK` (the caller then
    runs the exact per-upload checks)."""
    prober = Prober(probes, rng, workers=1 if len(grams) == 1 else None)
    for i, g in enumerate(grams):
        prober.add(i, g)
    with one_blas_thread():
        verdicts = prober.verdicts()
    return [verdicts.get(i) for i in range(len(grams))]
