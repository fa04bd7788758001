"""ACIL: analytic class-incremental learning with absolute memorization.

Zhuang et al., "ACIL: Analytic Class-Incremental Learning with Absolute Memorization and Privacy Protection",
NeurIPS 2022; METHODS.md section 2. A frozen backbone's features pass through a fixed random buffer
``φ(x) = relu(x A)`` and a ridge head is learned recursively, phase after phase: the Woodbury updates of ``R``
and ``W`` (equations (10) and (9) as the authors' code numbers them), computed by :func:`analytic.rls_step`. After
every phase ``W`` equals the joint ridge solution on the buffered features of all data seen so far, whatever the
order of phases or classes.

Authors' settings (METHODS.md 2b): float64, no bias, ``buffer_init="torch_linear"`` (``nn.Linear``'s default
``U(±1/√d)``), γ = 0.1, buffer 8192 for CIFAR-100.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import jax

from analytic import RandomBuffer, RLSState, expand_classes, rls_init, rls_predict, rls_step_checked
from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import resolve_dtype
from analytic.health import RLSHealth, check_committed
from analytic.validation import check_features, check_gamma, check_labels
from continual._wrapper import ContinualClassifier, padded_batch, real_rows

__all__ = ["ACILState", "init", "update", "predict", "ACIL"]


@register_checkpoint_type
class ACILState(NamedTuple):
    """Attributes: ``buffer`` -- the fixed :class:`analytic.RandomBuffer` (``in_dim -> buffer_size``);
    ``head`` -- :class:`analytic.RLSState` with ``weight (buffer_size, c)`` and ``inv_autocorr (buffer_size,)*2``."""

    buffer: RandomBuffer
    head: RLSState


def init(
    in_dim: int, classes: int = 0, gamma: float = 0.1, *, buffer_size: int = 8192, activation: str = "relu",
    buffer_init: str = "normal", seed: int = 0, dtype: Any = None,
) -> ACILState:
    """Buffer of width ``buffer_size`` and an empty head (``W₀ = 0``, ``R₀ = I/γ``)."""
    gamma = check_gamma(gamma)
    dt = resolve_dtype(dtype)
    buffer = RandomBuffer(in_dim, buffer_size, activation, seed, buffer_init, dtype=dt)
    return ACILState(buffer, rls_init(buffer_size, classes, gamma, dt))


def input_dim(state: ACILState) -> int:
    return state.buffer.in_dim


def num_classes(state: ACILState) -> int:
    return state.head.classes


def update(state: ACILState, x: Any, y: Any) -> ACILState:
    """Learn a batch or phase: ``x: (n, in_dim)``, class ids ``y: (n,)`` (new ids add head columns)."""
    x = check_features(x, dim=input_dim(state))
    labels = check_labels(y, n=x.shape[0])
    head = expand_classes(state.head, max(num_classes(state), int(labels.max()) + 1))
    x_pad, targets = padded_batch(x, labels, head.classes, head.weight.dtype)
    head, health = _step(state.buffer, head, x_pad, targets)
    # Committed only if sound: an overflowing row or a broken recursion raises and `state` stays as it was.
    check_committed(health.ok, lambda: state.buffer(x), head.weight.dtype, what="buffered features", health=health)
    return state._replace(head=head)


@jax.jit
def _step(buffer: RandomBuffer, head: RLSState, x: jax.Array, targets: jax.Array) -> tuple[RLSState, RLSHealth]:
    # Buffer then the core's Woodbury step, one compiled program per (row bucket, width).
    return rls_step_checked(head, real_rows(buffer(x), targets), targets)


def predict(state: ACILState, x: Any) -> jax.Array:
    """Logits ``φ(x) W: (n, c)``."""
    x = check_features(x, dim=input_dim(state))
    return rls_predict(state.head, state.buffer(x))


class ACIL(ContinualClassifier):
    """ACIL with scikit-learn verbs. ``partial_fit`` = one phase (or one mini-batch: the result is the same)."""

    _module = sys.modules[__name__]

    def __init__(
        self, gamma: float = 0.1, *, buffer_size: int = 8192, activation: str = "relu", buffer_init: str = "normal",
        seed: int = 0, dtype: Any = None,
    ) -> None:
        check_gamma(gamma)
        super().__init__(gamma=gamma, buffer_size=buffer_size, activation=activation, buffer_init=buffer_init,
                         seed=seed, dtype=dtype)

    @property
    def coef_(self) -> jax.Array:
        """Head weights ``(buffer_size, c)``."""
        self._require_fitted()
        return self.state.head.weight
