"""DS-AL: dual-stream analytic learning for exemplar-free class-incremental learning.

Zhuang et al., "DS-AL: A Dual-Stream Analytic Learning for Exemplar-Free Class-Incremental Learning", AAAI 2024;
docs/methods.md §2. One shared random projection ``Z = x A`` feeds two ridge heads:

* main stream: ``X_M = relu(Z)``, ``W_M`` = joint ridge on all data seen (C-RLS, γ_main);
* compensation stream: ``X_C = tanh(Z)`` (any other activation), fit to the main stream's residual
  ``Ỹ = Y − X_M W_M`` after *previous-label cleansing* -- residual columns of classes learned in earlier phases
  are zeroed, so the compensation only corrects the classes of the current phase;
* prediction: ``X_M W_M + C · X_C W_C`` with compensation ratio ``C`` (0.6 CIFAR-100, 1.5 ImageNet-1k).

``cleansing="paper"`` (default): one call to :func:`update` is one phase; the residual uses the main weights at
the end of the phase and zeroes the columns of classes seen in earlier phases. ``W_C`` then equals a joint ridge
on compensation features against the cleansed residuals of all phases. ``cleansing="authors"`` reproduces the
repository (docs/methods.md §2b): per mini-batch of ``batch_size`` rows, the residual uses the main weights right after
that batch and keeps only the last ``new_classes`` columns of the current width (``max label + 1``) -- which
equals the paper only when each phase's class ids are the contiguous block above all earlier ones.

Heads (``solver``). Both streams are joint ridge problems, so under the paper's cleansing every quantity is
additive: ``solver="gram"`` (the default with ``cleansing="paper"``) accumulates the main stream's statistics over
the phase, solves ``W_M`` once at its end (:func:`analytic.lazy_solve.head_weights`), then accumulates the
compensation statistics ``(X_Cᵀ X_C, X_Cᵀ Ỹ)`` on the cleansed residual -- about half the flops of two Woodbury
passes, and exact. ``cleansing="authors"`` needs ``W_M`` after every mini-batch, so it runs the Woodbury
recursion (:func:`analytic.rls_step_checked`, ``solver="rls"``, its default).
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analytic import RandomBuffer, RLSState, expand_classes, rls_init, rls_step_checked
from analytic.buffers import ACTIVATIONS, learner_buffer
from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import HIGHEST, resolve_dtype
from analytic.health import RLSHealth, check_committed, healthy, merge_health
from analytic.lazy_solve import RidgeHead, head_accumulate, head_init, head_weights
from analytic.validation import check_features, check_gamma, prepare_batch
from continual._wrapper import ContinualClassifier, as_batch, check_solver, grow_mask, real_rows, seen_mask

__all__ = ["StreamActivations", "DSALState", "init", "update", "predict", "DSAL"]

CLEANSING = ("paper", "authors")


@register_checkpoint_type
@jax.tree_util.register_pytree_node_class
class StreamActivations:
    """Static (leafless) pytree node naming the main and compensation activations, so states stay jittable."""

    def __init__(self, main: str = "relu", comp: str = "tanh") -> None:
        for name, act in (("activation_main", main), ("activation_comp", comp)):
            if act not in ACTIVATIONS:
                raise ValueError(f"{name} must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.main, self.comp = main, comp

    def tree_flatten(self) -> tuple[tuple[()], tuple[str, str]]:
        return (), (self.main, self.comp)

    @classmethod
    def tree_unflatten(cls, aux: tuple[str, str], _: Any) -> StreamActivations:
        return cls(*aux)


@register_checkpoint_type
class DSALState(NamedTuple):
    """Attributes:
      projection: shared :class:`analytic.RandomBuffer` with identity activation, ``in_dim -> buffer_size``.
      activations: :class:`StreamActivations`.
      main, comp: the two streams' heads, :class:`analytic.lazy_solve.RidgeHead` (``solver="gram"``) or
        :class:`analytic.RLSState` (``solver="rls"``); ``.weight`` is ``(buffer_size, c)`` for both.
      seen: ``(c,)`` boolean, classes learned in earlier phases.
      compensation_ratio: ``C`` (scalar array).
    """

    projection: RandomBuffer
    activations: StreamActivations
    main: RidgeHead | RLSState
    comp: RidgeHead | RLSState
    seen: jax.Array
    compensation_ratio: jax.Array


def check_options(
    gamma_main: float, gamma_comp: float, compensation_ratio: float, activation_main: str, activation_comp: str,
) -> None:
    """Validate DS-AL's head options (constructor and :func:`init`; the cleansing options:
    :func:`check_authors_options`)."""
    check_gamma(gamma_main, "gamma_main")
    check_gamma(gamma_comp, "gamma_comp")
    StreamActivations(activation_main, activation_comp)
    if not np.isfinite(compensation_ratio):
        raise ValueError(f"compensation_ratio must be finite, got {compensation_ratio!r}")


def init(
    in_dim: int, classes: int = 0, gamma_main: float = 0.1, gamma_comp: float = 0.1, *,
    compensation_ratio: float = 0.6, buffer_size: int | None = None, activation_main: str = "relu",
    activation_comp: str = "tanh", buffer_init: str = "normal", seed: int = 0, dtype: Any = None,
    solver: str = "gram", projection: RandomBuffer | None = None,
) -> DSALState:
    """Shared projection and two empty heads (``W₀ = 0``; ``R₀ = I/γ`` each for ``solver="rls"``). The projection
    ``Z = x A`` is ``projection`` if given (an ``"identity"`` :class:`analytic.RandomBuffer`, e.g. from
    :meth:`~analytic.RandomBuffer.from_weights`), else drawn from ``seed`` with ``buffer_size`` outputs (8192)."""
    check_options(gamma_main, gamma_comp, compensation_ratio, activation_main, activation_comp)
    dt = resolve_dtype(dtype)
    size = buffer_size if buffer_size is not None or projection is not None else 8192
    projection = learner_buffer(projection, in_dim, size, "identity", seed, buffer_init, dt, name="projection")
    make = head_init if check_solver(solver) == "gram" else rls_init
    main = make(projection.out_dim, classes, gamma_main, dt)
    comp = make(projection.out_dim, classes, gamma_comp, dt)
    activations = StreamActivations(activation_main, activation_comp)
    ratio = jnp.asarray(compensation_ratio, dt)
    return DSALState(projection, activations, main, comp, jnp.zeros((classes,), bool), ratio)


def input_dim(state: DSALState) -> int:
    return state.projection.in_dim


def num_classes(state: DSALState) -> int:
    return state.main.classes


def state_dtype(state: DSALState) -> Any:
    return state.projection.weight.dtype


def stream_features(state: DSALState, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(X_M, X_C) = (σ_M(x A), σ_C(x A))``."""
    z = state.projection(x)
    return ACTIVATIONS[state.activations.main](z), ACTIVATIONS[state.activations.comp](z)


def cleansed_residual(main: RidgeHead | RLSState, x_main: jax.Array, targets: jax.Array, keep: jax.Array) -> jax.Array:
    """``(Y − X_M W_M)`` with the columns outside ``keep: (c,)`` zeroed (previous-label cleansing)."""
    return _cleansed(main.weight, x_main, targets, jnp.asarray(keep))


@jax.jit
def _cleansed(w_main: jax.Array, x_main: jax.Array, targets: jax.Array, keep: jax.Array) -> jax.Array:
    residual = targets - jnp.matmul(x_main.astype(w_main.dtype), w_main, precision=HIGHEST)
    return jnp.where(keep[None, :], residual, 0.0)


@jax.jit
def _main_step(state: DSALState, main: RLSState, x: jax.Array, targets: jax.Array) -> tuple[RLSState, RLSHealth]:
    return rls_step_checked(main, real_rows(stream_features(state, x)[0], targets), targets)


@jax.jit
def _comp_step(
    state: DSALState, main: RLSState, comp: RLSState, x: jax.Array, targets: jax.Array, keep: jax.Array
) -> tuple[RLSState, RLSHealth]:
    x_main, x_comp = (real_rows(f, targets) for f in stream_features(state, x))
    # Padded rows have zero targets and zero features, hence a zero residual: they still add nothing.
    return rls_step_checked(comp, x_comp, _cleansed(main.weight, x_main, targets, keep))


@jax.jit
def _main_gram(
    state: DSALState, main: RidgeHead, x: jax.Array, targets: jax.Array, rows: jax.Array
) -> tuple[RidgeHead, jax.Array]:
    return head_accumulate(main, real_rows(stream_features(state, x)[0], targets), targets, rows)


@jax.jit
def _comp_gram(
    state: DSALState, w_main: jax.Array, comp: RidgeHead, x: jax.Array, targets: jax.Array, keep: jax.Array,
    rows: jax.Array,
) -> tuple[RidgeHead, jax.Array]:
    x_main, x_comp = (real_rows(f, targets) for f in stream_features(state, x))
    return head_accumulate(comp, x_comp, _cleansed(w_main, x_main, targets, keep), rows)


def check_authors_options(cleansing: str, batch_size: int | None, new_classes: int | None) -> None:
    """``cleansing``, ``batch_size`` and ``new_classes`` (see :func:`update`), or a ``ValueError`` naming them."""
    if cleansing not in CLEANSING:
        raise ValueError(f"cleansing must be one of {CLEANSING}, got {cleansing!r}")
    for name, value in (("batch_size", batch_size), ("new_classes", new_classes)):
        if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
                                  or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    if cleansing == "authors" and batch_size is None:
        raise ValueError("cleansing='authors' cleanses per mini-batch: pass batch_size (the repository's "
                         "mini-batch; one at least the phase's size makes each phase one batch)")
    if cleansing == "paper" and new_classes is not None:
        raise ValueError("new_classes is the repository's increase_size: it applies only with cleansing='authors'")


def update(
    state: DSALState, x: Any, y: Any = None, *, cleansing: str = "paper", batch_size: int | None = None,
    new_classes: int | None = None,
) -> DSALState:
    """Learn one phase ``x: (n, in_dim)``, class ids ``y: (n,)`` (or a prepared batch as ``x``), in mini-batches of
    ``batch_size`` rows.

    ``cleansing="authors"`` needs ``batch_size`` (the repository's mini-batch; a value ≥ the phase's rows makes
    the phase one batch). ``new_classes`` (``"authors"`` only) is the repository's ``increase_size``; default: the
    number of classes in ``y`` not seen in earlier phases.
    """
    check_authors_options(cleansing, batch_size, new_classes)
    gram = isinstance(state.main, RidgeHead)
    if gram and cleansing == "authors":
        raise ValueError("cleansing='authors' needs W_M after every mini-batch: use solver='rls' for it")
    dt = state_dtype(state)
    phase = as_batch(x, y, dim=input_dim(state), classes=num_classes(state), dtype=dt)
    labels, width = phase.labels, phase.width
    step = phase.n if batch_size is None else int(batch_size)
    chunks = [slice(i, i + step) for i in range(0, phase.n, step)]
    if len(chunks) == 1:
        batches = [phase]
    else:
        host = np.asarray(phase.host_x)  # slice on the host: slicing a device array compiles one program per shape
        batches = [prepare_batch(host[sl], labels[sl], dim=None, classes=width, dtype=dt, validate=False)
                   for sl in chunks]
    seen_before = np.asarray(grow_mask(state.seen, width))
    if new_classes is None:
        new_classes = int(np.sum(seen_mask(labels, width) & ~seen_before))
    main, comp = expand_classes(state.main, width), expand_classes(state.comp, width)

    def commit(ok: Any, health: RLSHealth | None) -> None:
        # An overflowing row or a broken recursion raises and `state` stays as it was.
        check_committed(ok, lambda: stream_features(state, jnp.asarray(phase.host_x))[0], dt,
                        what="projected features", health=health)

    keep = jnp.asarray(~seen_before)
    if gram:
        ok = jnp.asarray(True)
        for b in batches:
            main, ok_b = _main_gram(state, main, b.x, b.targets, np.int32(b.n))
            ok = ok & ok_b
        commit(ok, None)  # before the solve: a solve of non-finite statistics would fail without naming the row
        w_main = head_weights(main)
        for b in batches:
            comp, ok_b = _comp_gram(state, w_main, comp, b.x, b.targets, keep, np.int32(b.n))
            ok = ok & ok_b
        commit(ok, None)
    elif cleansing == "paper":
        health = healthy(dt)
        for b in batches:
            main, h = _main_step(state, main, b.x, b.targets)
            health = merge_health(health, h)
        for b in batches:
            comp, h = _comp_step(state, main, comp, b.x, b.targets, keep)
            health = merge_health(health, h)
        commit(health.ok, health)
    else:
        health = healthy(dt)
        highest = int(np.flatnonzero(seen_before).max()) if seen_before.any() else -1
        cols = np.arange(width)
        for sl, b in zip(chunks, batches):
            main, h_main = _main_step(state, main, b.x, b.targets)
            highest = max(highest, int(labels[sl].max()))
            # The repository keeps the last `increase_size` columns of its current width (highest id + 1).
            keep_b = jnp.asarray((cols < highest + 1) & (cols >= highest + 1 - new_classes))
            comp, h_comp = _comp_step(state, main, comp, b.x, b.targets, keep_b)
            health = merge_health(health, merge_health(h_main, h_comp))
        # One check per phase.
        commit(health.ok, health)
    return state._replace(main=main, comp=comp, seen=jnp.asarray(seen_before | seen_mask(labels, width)))


def predict(state: DSALState, x: Any) -> jax.Array:
    """Logits ``X_M W_M + C · X_C W_C: (n, c)``."""
    x = check_features(x, dim=input_dim(state))
    x_main, x_comp = stream_features(state, x)
    return _combine(state.main.weight, state.comp.weight, state.compensation_ratio, x_main, x_comp)


@jax.jit
def _combine(w_main: jax.Array, w_comp: jax.Array, ratio: jax.Array, x_main: jax.Array, x_comp: jax.Array) -> jax.Array:
    return (jnp.matmul(x_main, w_main, precision=HIGHEST)
            + ratio * jnp.matmul(x_comp, w_comp, precision=HIGHEST))


class DSAL(ContinualClassifier):
    """DS-AL with scikit-learn verbs; ``partial_fit`` = one phase (see :func:`update` for ``cleansing``)."""

    _module = sys.modules[__name__]
    _update_options = ("cleansing", "batch_size", "new_classes")
    _legacy_params = {"solver": "rls"}
    _state_params = {"projection": "projection"}

    def __init__(
        self, gamma_main: float = 0.1, gamma_comp: float = 0.1, *, compensation_ratio: float = 0.6,
        buffer_size: int | None = None, activation_main: str = "relu", activation_comp: str = "tanh",
        cleansing: str = "paper", batch_size: int | None = None, buffer_init: str = "normal", seed: int = 0,
        dtype: Any = None, solver: str | None = None, projection: RandomBuffer | None = None,
        new_classes: int | None = None,
    ) -> None:
        """``solver=None`` picks ``"gram"`` for ``cleansing="paper"`` and ``"rls"`` for ``"authors"`` (module doc);
        ``batch_size`` and ``new_classes`` as for :func:`update`."""
        super().__init__(
            gamma_main=gamma_main, gamma_comp=gamma_comp, compensation_ratio=compensation_ratio,
            buffer_size=buffer_size, activation_main=activation_main, activation_comp=activation_comp,
            cleansing=cleansing, batch_size=batch_size, buffer_init=buffer_init, seed=seed, dtype=dtype,
            solver=solver, projection=projection, new_classes=new_classes,
        )

    def _checked_params(self) -> dict[str, Any]:
        p = super()._checked_params()
        check_options(p["gamma_main"], p["gamma_comp"], p["compensation_ratio"], p["activation_main"],
                      p["activation_comp"])
        check_authors_options(p["cleansing"], p["batch_size"], p["new_classes"])
        p["solver"] = check_solver(p["solver"] or ("rls" if p["cleansing"] == "authors" else "gram"))
        if p["solver"] == "gram" and p["cleansing"] == "authors":
            raise ValueError("cleansing='authors' needs W_M after every mini-batch: use solver='rls' for it")
        return p
