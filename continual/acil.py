"""ACIL: analytic class-incremental learning with absolute memorization.

Zhuang et al., "ACIL: Analytic Class-Incremental Learning with Absolute Memorization and Privacy Protection",
NeurIPS 2022; docs/methods.md §2. A frozen backbone's features pass through a fixed random buffer
``φ(x) = relu(x A)`` and a ridge head is learned phase after phase. After every phase ``W`` equals the joint ridge
solution ``(ΦᵀΦ + γI)⁻¹ ΦᵀY`` on the buffered features of all data seen so far, whatever the order of phases or
classes (absolute memorization, §3), so the head can be kept in either of two exact forms (``solver``):

* ``"gram"`` (default): additive statistics ``(ΦᵀΦ, ΦᵀY)`` accumulated per batch (:func:`analytic.gram_accumulate`,
  about half the flops of a Woodbury step) and solved once per read (:class:`analytic.lazy_solve.RidgeHead`, the
  solve cached until the next update). ACIL reads ``W`` once per phase, so this is the cheaper path.
* ``"rls"``: the Woodbury updates of ``R`` and ``W`` (equations (10) and (9) as the authors' code numbers them,
  :func:`analytic.rls_step_checked`), for callers that need ``W`` after every batch.

Authors' settings (docs/methods.md §2b): float64, no bias, ``buffer_init="torch_linear"`` (``nn.Linear``'s default
``U(±1/√d)``), γ = 0.1, buffer 8192 for CIFAR-100.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analytic import RandomBuffer, RLSState, expand_classes, rls_init, rls_step_checked
from analytic.buffers import learner_buffer
from analytic.checkpoint import register_checkpoint_type
from analytic.classes import trim_classes
from analytic.dtypes import HIGHEST, resolve_dtype
from analytic.health import RLSHealth
from analytic.lazy_solve import RidgeHead, head_accumulate, head_init
from analytic.validation import check_features, check_gamma
from continual._donation import commit, head_step
from continual._held_back import gram_head_bound
from continual._wrapper import ContinualClassifier, as_batch, check_solver, real_rows

__all__ = ["ACILState", "init", "update", "predict", "ACIL"]


@register_checkpoint_type
class ACILState(NamedTuple):
    """Attributes: ``buffer`` -- the fixed :class:`analytic.RandomBuffer` (``in_dim -> buffer_size``);
    ``head`` -- :class:`analytic.lazy_solve.RidgeHead` (``solver="gram"``) or :class:`analytic.RLSState`
    (``solver="rls"``: ``weight (buffer_size, c)``, ``inv_autocorr (buffer_size,)*2``); both have ``.weight``."""

    buffer: RandomBuffer
    head: RidgeHead | RLSState


def init(
    in_dim: int, classes: int = 0, gamma: float = 0.1, *, buffer_size: int | None = None, activation: str = "relu",
    buffer_init: str = "normal", seed: int = 0, dtype: Any = None, solver: str = "gram",
    buffer: RandomBuffer | None = None,
) -> ACILState:
    """Buffer and an empty head (``W₀ = 0``; ``R₀ = I/γ`` for ``solver="rls"``). The buffer is ``buffer`` if given
    (e.g. :meth:`analytic.RandomBuffer.from_weights` of another run's weights), else drawn from ``seed`` with
    ``buffer_size`` outputs (default 8192, the paper's CIFAR-100 width)."""
    gamma = check_gamma(gamma)
    dt = resolve_dtype(dtype)
    size = buffer_size if buffer_size is not None or buffer is not None else 8192
    buffer = learner_buffer(buffer, in_dim, size, activation, seed, buffer_init, dt)
    head = (head_init if check_solver(solver) == "gram" else rls_init)(buffer.out_dim, classes, gamma, dt)
    return ACILState(buffer, head)


def input_dim(state: ACILState) -> int:
    return state.buffer.in_dim


def num_classes(state: ACILState) -> int:
    return state.head.classes


def state_dtype(state: ACILState) -> Any:
    return state.buffer.weight.dtype


def update(state: ACILState, x: Any, y: Any = None) -> ACILState:
    """Learn a batch or phase: ``x: (n, in_dim)`` and class ids ``y: (n,)`` (new ids add head columns), or a
    :class:`~analytic.validation.PreparedBatch` as ``x`` (``y`` unused; what the class wrapper passes)."""
    batch = as_batch(x, y, dim=input_dim(state), classes=num_classes(state), dtype=state_dtype(state))
    head = expand_classes(state.head, batch.width)
    if isinstance(head, RidgeHead):
        head, ok = _gram_step(state.buffer, head, batch.x, batch.targets, np.int32(batch.n))
        health = None
    else:
        head, health = _rls_step(state.buffer, head, batch.x, batch.targets)
        ok = health.ok
    # Committed only if sound (one scalar read): an overflowing row or a broken recursion raises and `state`
    # stays as it was (a donated head comes back unchanged: both steps judge before writing, continual._donation).
    restore = lambda: state._replace(head=trim_classes(head, num_classes(state)))  # noqa: E731
    commit(ok, lambda: state.buffer(jnp.asarray(batch.host_x)), state_dtype(state), restore,
           what="buffered features", health=health)
    return state._replace(head=head)


@head_step()
def _gram_step(
    buffer: RandomBuffer, head: RidgeHead, x: jax.Array, targets: jax.Array, rows: jax.Array, in_place: bool
) -> tuple[RidgeHead, jax.Array]:
    # Buffer then the core's accumulation and finite check, one compiled program per (row bucket, width).
    return head_accumulate(head, real_rows(buffer(x), targets), targets, rows, in_place=in_place)


@head_step()
def _rls_step(buffer: RandomBuffer, head: RLSState, x: jax.Array, targets: jax.Array, in_place: bool
              ) -> tuple[RLSState, RLSHealth]:
    return rls_step_checked(head, real_rows(buffer(x), targets), targets, in_place=in_place)


def predict(state: ACILState, x: Any) -> jax.Array:
    """Logits ``φ(x) W: (n, c)`` (a ``"gram"`` head is solved on its first read, then cached)."""
    x = check_features(x, dim=input_dim(state))
    return _logits(state.buffer, state.head.weight, x)


@jax.jit
def _logits(buffer: RandomBuffer, weight: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.matmul(buffer(x), weight, precision=HIGHEST)


class ACIL(ContinualClassifier):
    """ACIL with scikit-learn verbs. ``partial_fit`` = one phase (or one mini-batch: the result is the same)."""

    _module = sys.modules[__name__]
    _legacy_params = {"solver": "rls"}

    _state_params = {"buffer": "buffer"}
    _coalesce_below = 64

    def _coalesce_bound(self, state: ACILState) -> tuple[float, float, float, Any] | None:
        return gram_head_bound(self, state.buffer, state.head)

    def __init__(
        self, gamma: float = 0.1, *, buffer_size: int | None = None, activation: str = "relu",
        buffer_init: str = "normal", seed: int = 0, dtype: Any = None, solver: str = "gram",
        buffer: RandomBuffer | None = None,
    ) -> None:
        super().__init__(gamma=gamma, buffer_size=buffer_size, activation=activation, buffer_init=buffer_init,
                         seed=seed, dtype=dtype, solver=solver, buffer=buffer)

    @property
    def coef_(self) -> jax.Array:
        """Head weights ``(buffer_size, c)``."""
        self._require_fitted()
        return self._state.head.weight
