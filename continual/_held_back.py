"""Small batches held back by a continual learner and learned together (ACIL/GACL with a Gram head).

A ``"gram"`` head is additive statistics: learning batches ``a`` then ``b`` gives ``ΦᵀΦ`` and ``ΦᵀY`` of ``a ∪ b``,
so a stream of 10-row batches needs one pass over the ``d×d`` Gram per batch only because each call commits its
rows. :class:`HeldBackRows` (a base of :class:`continual._wrapper.ContinualClassifier`) holds a small batch back
instead -- validated in full, and only if a bound on its features proves the eventual update cannot overflow -- and
learns the held-back rows as one batch at the next read of the state or once 256 have gathered. The result differs
from batch-by-batch learning by rounding only; the same calls and reads give bit-identical states, and a checkpoint
keeps held-back rows beside the state.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np

from analytic.checkpoint import CheckpointError
from analytic.validation import check_labels

__all__ = ["HeldBackRows", "gram_head_bound"]


def gram_head_bound(learner: Any, buffer: Any, head: Any, repeats: int = 1) -> tuple[float, float, float, Any] | None:
    """:meth:`ContinualClassifier._coalesce_bound` of a learner whose features are ``buffer(x)`` (``None``: ``x``
    itself) and whose head is ``head``: ``None`` unless it is a Gram head (:class:`analytic.lazy_solve.RidgeHead`).
    The buffer's bound is computed once per buffer and cached on ``learner``."""
    from analytic.lazy_solve import RidgeHead

    if not isinstance(head, RidgeHead):
        return None
    if buffer is None:
        m, beta = 1.0, 0.0
    else:
        cached = learner.__dict__.get("_buffer_bound")
        if cached is None or cached[0] is not buffer.weight:
            cached = (buffer.weight, buffer.entry_bound())
            learner.__dict__["_buffer_bound"] = cached
        m, beta = cached[1]
    return m, beta, float(repeats), head.stats.xtx


class HeldBackRows:
    """The held-back rows of a learner (module docstring). Needs the host class's ``_module``, ``_learn``,
    ``_check_x_host`` and ``_declared`` (:class:`continual._wrapper.ContinualClassifier`)."""

    #: Batches of fewer rows are held back (:meth:`_coalesce_bound`; 0: never), up to this many rows at a time.
    _coalesce_below: ClassVar[int] = 0
    _coalesce_rows: ClassVar[int] = 256

    @property
    def _state(self) -> Any:
        # Every read of the state first learns the rows held back by coalescing (_coalesce), so no reader -- a
        # prediction, coef_, the next large batch -- ever sees a state without them (save writes them beside it).
        if self.__dict__.get("_pending"):
            self._flush()
        return self.__dict__.get("_stored")

    @_state.setter
    def _state(self, value: Any) -> None:
        self.__dict__.update(_stored=value, _pending=[])

    @property
    def _pending_rows(self) -> int:
        return sum(len(ids) for _, ids in self.__dict__.get("_pending") or [])

    def _coalesce_bound(self, state: Any) -> tuple[float, float, float, Any] | None:
        """``(M, β, k, gram)`` when the head is additive statistics, so that batches may be coalesced: learning
        batches ``a`` then ``b`` equals learning ``a ∪ b`` up to rounding (``ΦᵀΦ`` and ``ΦᵀY`` are sums over rows).
        The features obey ``|φ(x)ⱼ| ≤ M‖x‖₂ + β`` (:meth:`analytic.RandomBuffer.entry_bound`), ``k`` multiplies
        every row's contribution (GACL's ``online_iter``), ``gram`` is the accumulated ``ΦᵀΦ``. ``None``: never."""
        return None

    def _pending_width(self, stored: Any) -> int:
        pending = self.__dict__.get("_pending") or []
        width = int(self._module.num_classes(stored))
        return max([width] + [int(ids.max()) + 1 for _, ids in pending if ids.size])

    def _coalesce(self, stored: Any, x: Any, ids: np.ndarray, limit: float | None = None) -> bool:
        """Hold back ``(x, ids)`` if the learner coalesces batches this small and the sum of the held-back rows'
        feature bounds keeps every diagonal entry of the Gram below an eighth of the dtype's range -- then the
        eventual update passes its soundness check (diagonal at most half the range, :mod:`analytic.health`), and
        the cross-moments are finite by Cauchy-Schwarz."""
        n = int(x.shape[0])
        if not (0 < n < (self._coalesce_below if limit is None else limit) and isinstance(x, np.ndarray)):
            return False
        bound = self._coalesce_bound(stored)
        if bound is None:
            return False
        m, beta, k, gram = bound
        pending = self.__dict__.get("_pending") or []
        base = self.__dict__.get("_pending_base") if pending else None
        if base is None:
            base = float(jnp.max(jnp.diagonal(gram))) if gram.shape[0] else 0.0
        x64 = x.astype(np.float64, copy=False)
        growth = k * float(np.sum((m * np.sqrt(np.einsum("ij,ij->i", x64, x64)) + beta) ** 2))
        total = base + (self.__dict__.get("_pending_growth", 0.0) if pending else 0.0) + growth
        if not (np.isfinite(total) and total <= float(np.finfo(self._module.state_dtype(stored)).max) / 8):
            return False
        pending = [*pending, (np.array(x, copy=True), ids)]  # a copy: the caller may reuse its array
        self.__dict__.update(_pending=pending, _pending_base=base, _pending_growth=total - base)
        return True

    def _flush(self) -> None:
        """Learn the held-back rows as one batch (the soundness bound of :meth:`_coalesce` guarantees it passes)."""
        pending = self.__dict__["_pending"]
        self.__dict__["_pending"] = []
        x = np.concatenate([p[0] for p in pending])
        ids = np.concatenate([p[1] for p in pending])
        try:
            self.__dict__["_stored"] = self._learn(self.__dict__["_stored"], x, ids)
        except Exception as err:  # pragma: no cover - excluded by the bound; said loudly if it ever happens
            raise RuntimeError(f"{type(self).__name__}: {len(ids)} rows held back by partial_fit could not be learned "
                               f"together ({err}); they were dropped") from err

    def _held_back_tree(self, state: Any) -> tuple[Any, int]:
        """What :meth:`save` writes: ``state`` alone, or with the held-back rows beside it; and their count."""
        pending = self.__dict__.get("_pending") or []
        if not pending:
            return state, 0
        ids = np.concatenate([p[1] for p in pending]).astype(np.int64)
        return {"state": state, "held_back_x": np.concatenate([p[0] for p in pending]), "held_back_ids": ids}, len(ids)

    def _restore_held_back(self, x: Any, ids: Any, where: str) -> None:
        """Take back the rows a checkpoint held back: validated as :meth:`partial_fit` validates a batch, held back
        again if the coalescing bound still allows it, else learned at once."""
        try:
            x = self._check_x_host(np.asarray(x), "held_back_x")
            ids = check_labels(np.asarray(ids), name="held_back_ids", n=x.shape[0], classes=self._declared)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: {err}") from err
        stored = self.__dict__["_stored"]
        if not self._coalesce(stored, x, ids, limit=np.inf):
            try:
                self._state = self._learn(stored, x, ids)
            except (TypeError, ValueError) as err:
                raise CheckpointError(f"{where}: the held-back rows cannot be learned: {err}") from err
