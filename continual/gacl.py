"""GACL: exemplar-free generalized analytic continual learning (Si-Blurry streams).

Zhuang et al., "GACL: Exemplar-Free Generalized Analytic Continual Learning", NeurIPS 2024 (arXiv:2403.15706),
§3 (the recursive solution with the exposed class label gain, ECLG); docs/methods.md §2. In generalized
class-incremental learning a batch mixes classes that were *exposed* earlier with *unexposed* ones seen for the
first time, and classes reappear across tasks. GACL splits the one-hot labels of batch ``k`` into the exposed
block ``Y_k^E`` and the unexposed block ``Y_k^U`` and updates::

    R_k   = R_{k-1} − R_{k-1}X_kᵀ (I + X_k R_{k-1} X_kᵀ)⁻¹ X_k R_{k-1}
    W_k^E = W_{k-1}^E − R_k X_kᵀ X_k W_{k-1}^E + R_k X_kᵀ Y_k^E        (R_k X_kᵀ Y_k^E: exposed class label gain)
    W_k^U = R_k X_kᵀ Y_k^U

The decomposition is the Woodbury step of :mod:`analytic.rls` written per column block: an unexposed column of
``W_{k-1}`` is zero (``W̃``, class-column growth), so ``W_k^U = W_{k-1}^U + R_k X_kᵀ(Y_k^U − X_k W_{k-1}^U)`` and the
exposed columns are the same expression with ``W_{k-1}^E``. So ECLG *is* padded RLS, which is joint ridge on all data
seen (weight-invariant property: the result does not depend on batch split, class order or re-appearance), and
the learner keeps the head in one of two exact forms (``solver``):

* ``"gram"`` (default): additive statistics solved once per read (:class:`analytic.lazy_solve.RidgeHead`); a
  stream of small batches pays ``b d²`` flops per batch instead of the recursion's ``2 b d²``.
* ``"rls"``: the core's checked Woodbury step (:func:`analytic.rls_step_checked`) per batch, ``W`` current after
  every batch; :func:`eclg_step` is that step.

Columns are indexed by the original class ids (the authors renumber classes by first exposure; the two differ
by a column permutation only). Prediction masks never-exposed classes, as the authors evaluate on exposed ones.

``online_iter`` (docs/methods.md §2b): the authors' code fits every batch ``online_iter = k`` times (3 in their
scripts).
On the recursion that is ``k`` steps on the batch; on the Gram path it is ``k`` times the batch's statistics
(:func:`analytic.lazy_solve.head_accumulate` with ``repeats=k``). Both equal joint ridge with ``γ / k`` when
``k`` is fixed; the default 1 is the paper's equations.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analytic import RandomBuffer, RLSState, expand_classes, rls_init
from analytic.buffers import learner_buffer
from analytic.checkpoint import register_checkpoint_type
from analytic.classes import trim_classes
from analytic.dtypes import HIGHEST, resolve_dtype
from analytic.health import RLSHealth, healthy, merge_health
from analytic.lazy_solve import RidgeHead, head_accumulate, head_init
from analytic.rls import rls_step_checked
from analytic.validation import check_features, check_gamma
from continual._donation import commit, head_step
from continual._held_back import gram_head_bound
from continual._wrapper import (
    ContinualClassifier,
    as_batch,
    check_solver,
    grow_mask,
    mask_unseen,
    positive_int,
    real_rows,
)

__all__ = ["GACLState", "init", "update", "eclg_step", "eclg_step_checked", "predict", "GACL"]


@register_checkpoint_type
class GACLState(NamedTuple):
    """Attributes:
      buffer: optional :class:`analytic.RandomBuffer` (``None``: the features are used as given).
      head: :class:`analytic.lazy_solve.RidgeHead` (``solver="gram"``) or :class:`analytic.RLSState` --
        ``weight (d, c)`` and ``inv_autocorr R (d, d)`` (``solver="rls"``); both have ``.weight``.
      exposed: ``(c,)`` boolean, classes with at least one training sample so far.
    """

    buffer: RandomBuffer | None
    head: RidgeHead | RLSState
    exposed: jax.Array


def init(
    in_dim: int, classes: int = 0, gamma: float = 100.0, *, buffer_size: int | None = None,
    buffer_init: str = "normal", seed: int = 0, dtype: Any = None, solver: str = "gram",
    buffer: RandomBuffer | None = None,
) -> GACLState:
    """Empty head (``W₀ = 0``; ``R₀ = I/γ`` for ``solver="rls"``); γ = 100 as in the paper's runs. A ReLU buffer:
    ``buffer`` if given, else drawn from ``seed`` if ``buffer_size`` is given, else none (raw features)."""
    gamma = check_gamma(gamma)
    dt = resolve_dtype(dtype)
    if buffer is not None or buffer_size is not None:
        buffer = learner_buffer(buffer, in_dim, buffer_size, "relu", seed, buffer_init, dt)
    d = in_dim if buffer is None else buffer.out_dim
    head = (head_init if check_solver(solver) == "gram" else rls_init)(d, classes, gamma, dt)
    return GACLState(buffer, head, jnp.zeros((classes,), bool))


def input_dim(state: GACLState) -> int:
    return state.head.dim if state.buffer is None else state.buffer.in_dim


def num_classes(state: GACLState) -> int:
    return state.head.classes


def state_dtype(state: GACLState) -> Any:
    return state.head.stats.xtx.dtype if isinstance(state.head, RidgeHead) else state.head.weight.dtype


def features(state: GACLState, x: jax.Array) -> jax.Array:
    return x.astype(state_dtype(state)) if state.buffer is None else state.buffer(x)


@jax.jit
def _features(buffer: RandomBuffer | None, x: jax.Array, targets: jax.Array) -> jax.Array:
    return real_rows(x.astype(targets.dtype) if buffer is None else buffer(x), targets)


@jax.jit
def eclg_step(head: RLSState, exposed: jax.Array, x: jax.Array, targets: jax.Array) -> RLSState:
    """The exposed/unexposed (ECLG) update on one batch: the core's Woodbury step (module docstring).

    ``x: (b, d)``, one-hot ``targets: (b, c)``, ``exposed: (c,)`` the classes exposed before this batch (implied
    by the zero columns of ``W``; kept so the signature states the paper's inputs).
    """
    return rls_step_checked(head, x, targets)[0]


@jax.jit
def eclg_step_checked(
    head: RLSState, exposed: jax.Array, x: jax.Array, targets: jax.Array
) -> tuple[RLSState, RLSHealth]:
    """:func:`eclg_step` plus its :class:`analytic.health.RLSHealth` flags."""
    return rls_step_checked(head, x, targets)


@head_step("repeats")
def _gram_step(
    buffer: RandomBuffer | None, head: RidgeHead, x: jax.Array, targets: jax.Array, rows: jax.Array, repeats: int,
    in_place: bool,
) -> tuple[RidgeHead, jax.Array]:
    return head_accumulate(head, _features(buffer, x, targets), targets, rows, repeats=repeats, in_place=in_place)


def update(state: GACLState, x: Any, y: Any = None, online_iter: int = 1) -> GACLState:
    """Learn one stream batch ``x: (b, in_dim)``, class ids ``y: (b,)`` (or a prepared batch as ``x``), fitted
    ``online_iter`` times (module docstring)."""
    if int(online_iter) != online_iter or online_iter < 1:
        raise ValueError(f"online_iter must be a positive integer, got {online_iter!r}")
    batch = as_batch(x, y, dim=input_dim(state), classes=num_classes(state), dtype=state_dtype(state))
    head = expand_classes(state.head, batch.width)
    exposed = grow_mask(state.exposed, head.classes)
    if isinstance(head, RidgeHead):
        head, ok = _gram_step(state.buffer, head, batch.x, batch.targets, np.int32(batch.n), repeats=int(online_iter))
        health = None
    else:
        feats = _features(state.buffer, batch.x, batch.targets)
        health = healthy(head.weight.dtype)
        for _ in range(int(online_iter)):
            head, h = eclg_step_checked(head, exposed, feats, batch.targets)
            health = merge_health(health, h)
        ok = health.ok
    # Committed only if sound: an overflowing row or a broken recursion raises and `state` stays as it was (a
    # donated Gram head comes back unchanged, continual._donation).
    restore = (lambda: state._replace(head=trim_classes(head, num_classes(state)))) if health is None else None
    commit(ok, lambda: features(state, jnp.asarray(batch.host_x)), state_dtype(state), restore, health=health)
    present = np.zeros(head.classes, bool)
    present[batch.labels] = True
    return GACLState(state.buffer, head, exposed | jnp.asarray(present))


def predict(state: GACLState, x: Any) -> jax.Array:
    """Logits ``(n, c)``; classes never exposed get ``-inf``."""
    x = check_features(x, dim=input_dim(state))
    logits = jnp.matmul(features(state, x), state.head.weight, precision=HIGHEST)  # a Gram head solves once
    return mask_unseen(logits, state.exposed)


class GACL(ContinualClassifier):
    """GACL with scikit-learn verbs; ``partial_fit`` = one stream batch."""

    _state_params = {"buffer": "buffer"}

    _module = sys.modules[__name__]
    _update_options = ("online_iter",)
    _legacy_params = {"solver": "rls"}
    _coalesce_below = 64

    def _coalesce_bound(self, state: GACLState) -> tuple[float, float, float, Any] | None:
        return gram_head_bound(self, state.buffer, state.head, self._params()["online_iter"])

    def __init__(
        self, gamma: float = 100.0, *, online_iter: int = 1, buffer_size: int | None = None,
        buffer_init: str = "normal", seed: int = 0, dtype: Any = None, solver: str = "gram",
        buffer: RandomBuffer | None = None,
    ) -> None:
        super().__init__(gamma=gamma, online_iter=online_iter, buffer_size=buffer_size, buffer_init=buffer_init,
                         seed=seed, dtype=dtype, solver=solver, buffer=buffer)

    def _checked_params(self) -> dict[str, Any]:
        params = super()._checked_params()
        params["online_iter"] = positive_int(params["online_iter"], "online_iter")
        return params

    @property
    def coef_(self) -> jax.Array:
        self._require_fitted()
        return self._state.head.weight
