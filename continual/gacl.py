"""GACL: exemplar-free generalized analytic continual learning (Si-Blurry streams).

Zhuang et al., "GACL: Exemplar-Free Generalized Analytic Continual Learning", NeurIPS 2024 (arXiv:2403.15706),
§3 (the recursive solution with the exposed class label gain, ECLG); METHODS.md section 2. In generalized
class-incremental learning a batch mixes classes that were *exposed* earlier with *unexposed* ones seen for the
first time, and classes reappear across tasks. GACL splits the one-hot labels of batch ``k`` into the exposed
block ``Y_k^E`` and the unexposed block ``Y_k^U`` and updates::

    R_k   = R_{k-1} − R_{k-1}X_kᵀ (I + X_k R_{k-1} X_kᵀ)⁻¹ X_k R_{k-1}
    W_k^E = W_{k-1}^E − R_k X_kᵀ X_k W_{k-1}^E + R_k X_kᵀ Y_k^E        (R_k X_kᵀ Y_k^E: exposed class label gain)
    W_k^U = R_k X_kᵀ Y_k^U

``R_k`` comes from the core's Woodbury step; the weight update is the decomposition above, written out so that
the tests can check it against the core's padded RLS and against joint ridge after every batch (weight-invariant
property: the result does not depend on batch split, class order or re-appearance).

Columns are indexed by the original class ids (the authors renumber classes by first exposure; the two differ
by a column permutation only). Prediction masks never-exposed classes, as the authors evaluate on exposed ones.

``online_iter`` (METHODS.md 2b): the authors' code fits every batch ``online_iter`` times (3 in their scripts),
which equals joint ridge with ``γ / online_iter`` instead of ``γ``; the default 1 is the paper's equations.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from analytic import RandomBuffer, RLSState, expand_classes, rls_init
from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import HIGHEST, resolve_dtype
from analytic.health import RLSHealth, check_committed, healthy, merge_health
from analytic.rls import rls_step_checked
from analytic.validation import check_features, check_gamma, check_labels
from continual._wrapper import ContinualClassifier, grow_mask, mask_unseen, padded_batch, real_rows

__all__ = ["GACLState", "init", "update", "eclg_step", "eclg_step_checked", "predict", "GACL"]


@register_checkpoint_type
class GACLState(NamedTuple):
    """Attributes:
      buffer: optional :class:`analytic.RandomBuffer` (``None``: the features are used as given).
      head: :class:`analytic.RLSState` -- ``weight (d, c)`` and ``inv_autocorr R (d, d)``.
      exposed: ``(c,)`` boolean, classes with at least one training sample so far.
    """

    buffer: RandomBuffer | None
    head: RLSState
    exposed: jax.Array


def init(
    in_dim: int, classes: int = 0, gamma: float = 100.0, *, buffer_size: int | None = None,
    buffer_init: str = "normal", seed: int = 0, dtype: Any = None,
) -> GACLState:
    """Empty head (``W₀ = 0``, ``R₀ = I/γ``); γ = 100 as in the paper's runs."""
    gamma = check_gamma(gamma)
    dt = resolve_dtype(dtype)
    buffer = None if buffer_size is None else RandomBuffer(in_dim, buffer_size, "relu", seed, buffer_init, dtype=dt)
    d = in_dim if buffer is None else buffer_size
    return GACLState(buffer, rls_init(d, classes, gamma, dt), jnp.zeros((classes,), bool))


def input_dim(state: GACLState) -> int:
    return state.head.dim if state.buffer is None else state.buffer.in_dim


def num_classes(state: GACLState) -> int:
    return state.head.classes


def features(state: GACLState, x: jax.Array) -> jax.Array:
    return x.astype(state.head.weight.dtype) if state.buffer is None else state.buffer(x)


@jax.jit
def _features(buffer: RandomBuffer | None, x: jax.Array, targets: jax.Array) -> jax.Array:
    return real_rows(x.astype(targets.dtype) if buffer is None else buffer(x), targets)


def _eclg(head: RLSState, exposed: jax.Array, x: jax.Array, targets: jax.Array) -> tuple[RLSState, RLSHealth]:
    w, _ = head
    # The core's Woodbury step with zero target columns updates only R (its weight part is empty).
    r_step, health = rls_step_checked(RLSState(w[:, :0], head.inv_autocorr), x, targets[:, :0])
    r_new = r_step.inv_autocorr
    gain = jnp.matmul(r_new, x.T, precision=HIGHEST)                                  # R_k X_kᵀ: (d, b)
    label_gain = jnp.matmul(gain, targets * exposed[None, :], precision=HIGHEST)      # R_k X_kᵀ Y_k^E
    w_exposed = w - jnp.matmul(gain, jnp.matmul(x, w, precision=HIGHEST), precision=HIGHEST) + label_gain
    w_unexposed = jnp.matmul(gain, targets * ~exposed[None, :], precision=HIGHEST)    # R_k X_kᵀ Y_k^U
    w_new = jnp.where(exposed[None, :], w_exposed, w_unexposed)
    finite = jnp.all(jnp.isfinite(w_new))
    return RLSState(w_new, r_new), health._replace(ok=health.ok & finite, precise=health.precise & finite)


@jax.jit
def eclg_step(head: RLSState, exposed: jax.Array, x: jax.Array, targets: jax.Array) -> RLSState:
    """The exposed/unexposed (ECLG) update on one batch.

    ``x: (b, d)``, one-hot ``targets: (b, c)``, ``exposed: (c,)`` the classes exposed before this batch.
    """
    return _eclg(head, exposed, x, targets)[0]


eclg_step_checked = jax.jit(_eclg)
eclg_step_checked.__doc__ = ":func:`eclg_step` plus its :class:`analytic.health.RLSHealth` flags."


def update(state: GACLState, x: Any, y: Any, online_iter: int = 1) -> GACLState:
    """Learn one stream batch ``x: (b, in_dim)``, class ids ``y: (b,)`` (``online_iter`` fits, see module doc)."""
    if int(online_iter) != online_iter or online_iter < 1:
        raise ValueError(f"online_iter must be a positive integer, got {online_iter!r}")
    x = check_features(x, dim=input_dim(state))
    labels = check_labels(y, n=x.shape[0])
    head = expand_classes(state.head, max(num_classes(state), int(labels.max()) + 1))
    exposed = grow_mask(state.exposed, head.classes)
    x_pad, targets = padded_batch(x, labels, head.classes, head.weight.dtype)
    feats = _features(state.buffer, x_pad, targets)
    health = healthy(head.weight.dtype)
    for _ in range(int(online_iter)):
        head, h = eclg_step_checked(head, exposed, feats, targets)
        health = merge_health(health, h)
        exposed = exposed | (jnp.sum(targets, axis=0) > 0)
    # Committed only if sound: an overflowing row or a broken recursion raises and `state` stays as it was.
    check_committed(health.ok, lambda: feats, head.weight.dtype, health=health)
    return GACLState(state.buffer, head, exposed)


def predict(state: GACLState, x: Any) -> jax.Array:
    """Logits ``(n, c)``; classes never exposed get ``-inf``."""
    x = check_features(x, dim=input_dim(state))
    logits = jnp.matmul(features(state, x), state.head.weight, precision=HIGHEST)
    return mask_unseen(logits, state.exposed)


class GACL(ContinualClassifier):
    """GACL with scikit-learn verbs; ``partial_fit`` = one stream batch."""

    _module = sys.modules[__name__]
    _update_options = ("online_iter",)

    def __init__(
        self, gamma: float = 100.0, *, online_iter: int = 1, buffer_size: int | None = None,
        buffer_init: str = "normal", seed: int = 0, dtype: Any = None,
    ) -> None:
        check_gamma(gamma)
        if int(online_iter) != online_iter or online_iter < 1:
            raise ValueError(f"online_iter must be a positive integer, got {online_iter!r}")
        super().__init__(gamma=gamma, online_iter=int(online_iter), buffer_size=buffer_size, buffer_init=buffer_init,
                         seed=seed, dtype=dtype)

    @property
    def coef_(self) -> jax.Array:
        self._require_fitted()
        return self.state.head.weight
