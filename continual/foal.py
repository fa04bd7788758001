"""F-OAL: forward-only online analytic learning.

Zhuang et al., "F-OAL: Forward-only Online Analytic Learning with Fast Training and Low Memory Footprint in
Class Incremental Learning", NeurIPS 2024; docs/methods.md §2. A frozen pretrained ViT runs forward once per
sample; its class tokens of all blocks are fused (:func:`analytic.feature_fusion`: mean over blocks -> the ViT's
final LayerNorm -> fixed random projection ``P`` -> sigmoid) and a ridge head is updated by recursive least
squares on every mini-batch of 10 samples (``R₀ = I/γ``, γ = 1). The stream is seen once; after any number
of mini-batches ``W`` equals the joint ridge solution on the fused features of all samples seen.

That equality lets the head be kept in either of two exact forms (``solver``), as for ACIL:

* ``"rls"`` (default): the authors' recursion, one Woodbury step per mini-batch of ``batch_size`` samples, ``W``
  current after each (test-then-train protocols that predict after every mini-batch).
* ``"gram"``: the fused features' additive statistics (:class:`analytic.lazy_solve.RidgeHead`), one SYRK per
  chunk, ``W`` solved on read and cached until the next update -- the cheaper form in float64 whenever ``W`` is
  read less often than every few mini-batches; ``batch_size`` then does not change the result. Not the default:
  sigmoid features are strongly correlated (all in ``(0, 1)``), and a float32 solve from float32 statistics lost
  accuracy where the float32 recursion did not (1024 fused features, 4,096 samples: ``W`` within 1e-2 of float64
  joint ridge against 1.6e-4).

As in the authors' code (docs/methods.md §2b) ``P`` is ``nn.Linear(D, P, bias=False)``'s untrained default init
``U(±1/√D)``; ``W`` may hold columns for every class from the start, so classes never seen in the stream are
masked at prediction (their zero column would otherwise win whenever all seen logits are negative). The authors
invert ``I + X R Xᵀ`` with ``pinverse``; it is symmetric positive definite, so the core's Cholesky gives the same
step. In float32 the recursion stays close to float64 ridge: over 2,000 mini-batches (20k samples, 256 fused
features, cond(XᵀX + I) ≈ 1e6) the weights differed by 1.3e-5 relative and no prediction changed.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analytic import RandomBuffer, RLSState, expand_classes, feature_fusion, host_kernels, rls_init
from analytic.checkpoint import register_checkpoint_type
from analytic.classes import trim_classes
from analytic.dtypes import pad_rows, resolve_dtype
from analytic.health import RLSHealth, check_committed, healthy, merge_health, overflowing_rows
from analytic.lazy_solve import RidgeHead, head_accumulate, head_init
from analytic.rls import rls_step_checked
from analytic.sklearn_api import as_features
from analytic.validation import PreparedBatch, check_feature_layout, check_finite_entries, check_gamma, check_weights
from continual._donation import commit, head_step
from continual._wrapper import (
    ContinualClassifier,
    as_batch,
    check_solver,
    grow_mask,
    mask_unseen,
    positive_int,
    real_rows,
)

__all__ = ["FOALState", "init", "update", "predict", "check_block_tokens", "FOAL"]


@register_checkpoint_type
class FOALState(NamedTuple):
    """Attributes:
      projection: ``(D, P)`` fixed random projection of the fusion, or ``None`` when the inputs are already fused
        features ``(n, P)`` (``inputs="fused"``).
      ln_scale, ln_bias: ``(D,)`` affine of the backbone's final LayerNorm, or ``None`` (no affine).
      head: :class:`analytic.lazy_solve.RidgeHead` (``solver="gram"``) or :class:`analytic.RLSState`
        (``solver="rls"``); both have ``.weight (P, c)``.
      seen: ``(c,)`` boolean, classes with at least one sample so far.
    """

    projection: jax.Array | None
    ln_scale: jax.Array | None
    ln_bias: jax.Array | None
    head: RidgeHead | RLSState
    seen: jax.Array


def init(
    token_dim: int, classes: int = 0, gamma: float = 1.0, *, projection_dim: int = 1000,
    ln_scale: Any = None, ln_bias: Any = None, seed: int = 0, dtype: Any = None, solver: str = "rls",
    projection: Any = None, inputs: str = "tokens",
) -> FOALState:
    """Projection ``token_dim -> projection_dim`` (768 -> 1000 for ViT-B/16) and an empty head (``W₀ = 0``;
    ``R₀ = I/γ`` for ``solver="rls"``). ``projection``: the ``(token_dim, P)`` matrix to use instead of the one
    ``seed`` draws (e.g. another run's ``Linear(768, 1000).weight.T``). ``inputs="fused"``: the inputs are fused
    features ``(n, token_dim)`` already (computed elsewhere), the head learns on them as they are (no projection,
    LayerNorm or sigmoid here)."""
    gamma = check_gamma(gamma)
    dt = resolve_dtype(dtype)
    if check_inputs_option(inputs) == "fused":
        if projection is not None or ln_scale is not None or ln_bias is not None:
            raise ValueError("inputs='fused' takes fused features: projection, ln_scale and ln_bias do not apply")
        head = (head_init if check_solver(solver) == "gram" else rls_init)(token_dim, classes, gamma, dt)
        return FOALState(None, None, None, head, jnp.zeros((classes,), bool))
    if projection is None:
        projection = RandomBuffer(token_dim, projection_dim, "identity", seed, "torch_linear", dtype=dt).weight
    else:
        projection = _given_projection(projection, token_dim, dt)
        projection_dim = projection.shape[1]
    affine = []
    for name, value in (("ln_scale", ln_scale), ("ln_bias", ln_bias)):
        if value is not None:
            value = jnp.asarray(value, dt)
            if value.shape != (token_dim,) or not bool(jnp.isfinite(value).all()):
                raise ValueError(f"{name} must be a finite ({token_dim},) vector, got shape {tuple(value.shape)}")
        affine.append(value)
    head = (head_init if check_solver(solver) == "gram" else rls_init)(projection_dim, classes, gamma, dt)
    return FOALState(projection, *affine, head, jnp.zeros((classes,), bool))


def check_inputs_option(inputs: Any) -> str:
    if inputs not in ("tokens", "fused"):
        raise ValueError(f"inputs must be 'tokens' (per-block class tokens) or 'fused' (fused features), got "
                         f"{inputs!r}")
    return inputs


def _given_projection(projection: Any, token_dim: int, dtype: Any) -> jax.Array:
    projection = check_weights(projection, "projection", 2, dtype)
    if projection.shape[0] != token_dim:
        raise ValueError(f"projection must be ({token_dim}, P) for tokens of width {token_dim}, got shape "
                         f"{tuple(projection.shape)}")
    return projection


def is_fused(state: FOALState) -> bool:
    """Whether the learner takes fused features ``(n, P)`` rather than per-block tokens ``(n, L, D)``."""
    return state.projection is None


def input_dim(state: FOALState) -> int:
    return state.head.dim if is_fused(state) else state.projection.shape[0]


def num_classes(state: FOALState) -> int:
    return state.head.classes


def state_dtype(state: FOALState) -> Any:
    if not is_fused(state):
        return state.projection.dtype
    return state.head.stats.xtx.dtype if isinstance(state.head, RidgeHead) else state.head.weight.dtype


def check_inputs(state: FOALState | None, x: Any, name: str = "x", fused: bool = False) -> Any:
    """``x`` validated on the host for ``state`` (or, before the first batch, for ``fused``): per-block tokens
    ``(n, L, D)`` or fused features ``(n, P)``."""
    if (is_fused(state) if state is not None else fused):
        x = check_feature_layout(x, name, None if state is None else input_dim(state), allow_empty=False)
        check_finite_entries(x, name)
        return x
    return check_block_tokens(x, None if state is None else input_dim(state), name=name, host=True)


def check_block_tokens(
    block_cls: Any, token_dim: int | None = None, name: str = "block_cls", host: bool = False
) -> jax.Array:
    """Validate per-block class tokens ``(n, L, D)`` (same rules as :func:`analytic.validation.check_features`).

    ``host=True`` returns host (NumPy) input as it is, checked on the host, for :func:`prepare_batch` to transfer.
    """
    shape = tuple(np.shape(block_cls))
    if len(shape) != 3:
        raise ValueError(f"{name} must be (n, L, D) class tokens of L blocks, got shape {shape}")
    if token_dim is not None and shape[2] != token_dim:
        raise ValueError(f"{name} has token width {shape[2]} (shape {shape}) but {token_dim} was expected")
    if 0 in shape:
        raise ValueError(f"{name} is empty (shape {shape})")
    if not hasattr(block_cls, "dtype"):
        block_cls = np.asarray(block_cls)
    flat = check_feature_layout(block_cls.reshape(shape[0], -1), name, None, allow_empty=False)
    check_finite_entries(flat, name)
    return block_cls if host and isinstance(block_cls, np.ndarray) else jnp.reshape(jnp.asarray(flat), shape)


def fused_features(state: FOALState, block_cls: jax.Array) -> jax.Array:
    """The head's input: the fusion of per-block tokens, or the given fused features as they are (``state`` may
    lack its head here: the compiled steps take it separately)."""
    if is_fused(state):
        return block_cls
    return feature_fusion(block_cls.astype(state.projection.dtype), state.projection, state.ln_scale, state.ln_bias)


def update(state: FOALState, block_cls: Any, y: Any = None, batch_size: int = 10) -> FOALState:
    """One online pass over ``block_cls: (n, L, D)``, class ids ``y: (n,)`` (or a prepared batch as
    ``block_cls``): with an RLS head one step per ``batch_size`` rows, the authors' per-mini-batch protocol;
    with a Gram head one accumulation of all rows (the same ``W``)."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    dtype = state_dtype(state)
    if not isinstance(block_cls, PreparedBatch):
        block_cls = as_batch(check_inputs(state, block_cls, "block_cls"), y, dim=None,
                             classes=num_classes(state), dtype=dtype, validate=False)
    batch = block_cls
    tokens = batch.host_x
    flat = lambda: np.asarray(tokens).reshape(batch.n, -1)  # noqa: E731 - error path only
    # The fusion's LayerNorm squares the tokens: an overflow there gives finite but meaningless features
    # (0/inf -> 0), so it is refused here, before the bounded sigmoid could hide it.
    check_committed(not overflowing_rows(flat(), dtype).size, flat, dtype, name="block_cls", what="class tokens")
    head = expand_classes(state.head, batch.width)
    donated = True
    if isinstance(head, RidgeHead):
        head, ok = _gram_pass(state._replace(head=None), head, batch.x, batch.targets, np.int32(batch.n))
        health = None
    elif batch.x.shape[0] <= batch_size:
        # One mini-batch: one Woodbury step, which may update a donated head in place (it judges before writing).
        head, health = _online_step(state._replace(head=None), head, batch.x, batch.targets)
        ok = health.ok
    else:
        # Several steps are not donated: a step refused mid-pass could not give back the head as it was.
        head, health = _online_pass(state, head, batch.x, batch.targets, int(batch_size))
        ok, donated = health.ok, False
    # One check per pass (one scalar read): an overflowing sample or a broken recursion raises and `state` stays
    # (a donated head comes back unchanged, continual._donation).
    restore = (lambda: state._replace(head=trim_classes(head, num_classes(state)))) if donated else None
    commit(ok, lambda: fused_features(state, jnp.asarray(tokens)), dtype, restore, name="block_cls",
           what="fused features", health=health)
    present = np.zeros(batch.width, bool)
    present[batch.labels] = True
    return state._replace(head=head, seen=grow_mask(state.seen, batch.width) | jnp.asarray(present))


@head_step()
def _gram_pass(
    fusion: FOALState, head: RidgeHead, block_cls: jax.Array, targets: jax.Array, rows: jax.Array, in_place: bool
) -> tuple[RidgeHead, jax.Array]:
    # ``fusion`` is the state without its head (which is passed, and may be donated, on its own).
    feats = real_rows(fused_features(fusion, block_cls), targets)
    return head_accumulate(head, feats, targets, rows, in_place=in_place)


@head_step()
def _online_step(
    fusion: FOALState, head: RLSState, block_cls: jax.Array, targets: jax.Array, in_place: bool
) -> tuple[RLSState, RLSHealth]:
    return rls_step_checked(head, real_rows(fused_features(fusion, block_cls), targets), targets, in_place=in_place)


@partial(jax.jit, static_argnames="batch_size")
def _online_pass(
    state: FOALState, head: RLSState, block_cls: jax.Array, targets: jax.Array, batch_size: int
) -> tuple[RLSState, RLSHealth]:
    feats = real_rows(fused_features(state, block_cls), targets)
    # Zero rows (padding to a whole number of mini-batches) leave the Woodbury step unchanged, so every step has
    # the same shape and the pass is one scan in one compiled program.
    rows = -(-feats.shape[0] // batch_size) * batch_size
    feats, targets = pad_rows(feats, rows), pad_rows(targets, rows)
    batches = (feats.reshape(-1, batch_size, feats.shape[1]), targets.reshape(-1, batch_size, targets.shape[1]))

    def step(carry: tuple[RLSState, RLSHealth], batch: tuple[jax.Array, jax.Array]):
        def learn(carry: tuple[RLSState, RLSHealth]) -> tuple[RLSState, RLSHealth]:
            new, health = rls_step_checked(carry[0], *batch, in_place=True)  # the carry is dead after
            return new, merge_health(carry[1], health)

        # A mini-batch of padding only would be an exact no-op costing a full pass over R: skip it (the row
        # bucket of a 10-row chunk is 16 rows, i.e. two mini-batches of which one is empty).
        return jax.lax.cond(jnp.any(batch[1] != 0), learn, lambda carry: carry, carry), None

    return jax.lax.scan(step, (head, healthy(head.weight.dtype)), batches)[0]


def predict(state: FOALState, block_cls: Any) -> jax.Array:
    """Logits ``(n, c)`` on fused features; never-seen classes get ``-inf``."""
    return _scores(state, check_inputs(state, block_cls, "block_cls"))


def _scores(state: FOALState, block_cls: Any) -> jax.Array:
    # W read outside the compiled program: a Gram head solves once and caches (analytic.lazy_solve).
    return _masked_logits(state._replace(head=None), state.head.weight, block_cls)


@jax.jit
def _masked_logits(fusion: FOALState, weight: jax.Array, block_cls: jax.Array) -> jax.Array:
    feats = fused_features(fusion, block_cls).astype(weight.dtype)
    return mask_unseen(host_kernels.matmul(feats, weight), fusion.seen)


class FOAL(ContinualClassifier):
    """F-OAL with scikit-learn verbs; ``x`` is ``(n, L, D)`` per-block class tokens, ``partial_fit`` = stream chunk."""

    _module = sys.modules[__name__]
    _update_options = ("batch_size",)
    _legacy_params = {"solver": "rls"}  # checkpoints from before the option
    _state_params = {"projection": "projection"}

    def __init__(
        self, gamma: float = 1.0, *, projection_dim: int = 1000, batch_size: int = 10, ln_scale: Any = None,
        ln_bias: Any = None, seed: int = 0, dtype: Any = None, solver: str = "rls", projection: Any = None,
        inputs: str = "tokens",
    ) -> None:
        super().__init__(gamma=gamma, projection_dim=projection_dim, batch_size=batch_size, ln_scale=ln_scale,
                         ln_bias=ln_bias, seed=seed, dtype=dtype, solver=solver, projection=projection,
                         inputs=inputs)

    def _checked_params(self) -> dict[str, Any]:
        p = super()._checked_params()
        check_inputs_option(p["inputs"])
        p["batch_size"] = positive_int(p["batch_size"], "batch_size")
        # LayerNorm affine kept as lists so that the options stay JSON-storable in checkpoints.
        for key in ("ln_scale", "ln_bias"):
            if p[key] is not None:
                p[key] = np.asarray(p[key], np.float64).tolist()
        return p

    def _check_x(self, x: Any, name: str = "x") -> Any:
        # Host input is checked on the host and transferred once, inside the prediction (no second check there).
        fused = self._params()["inputs"] == "fused"
        x = as_features(x, name, allow_nd=not fused)
        if self._state is not None and np.ndim(x) == (2 if fused else 3):
            self._check_dim(np.shape(x)[-1], self.n_features_in_)
        return check_inputs(self._state, x, name, fused=fused)

    def _decision(self, state: FOALState, x: Any) -> jax.Array:
        return _scores(state, x)

    _check_x_host = _check_x  # the one host-side check serves both

    def _input_width(self, x: jax.Array) -> int:
        return x.shape[-1]

    def _padded_rows(self, n: int) -> int | None:
        # Whole mini-batches, their count bucketed to a power of two (bounds recompiles): a chunk of one mini-batch
        # is one Woodbury step, not two of which one is padding.
        size = self._params()["batch_size"]
        steps = -(-n // size)
        return size * (1 << (steps - 1).bit_length())

    @property
    def coef_(self) -> jax.Array:
        """Head weights ``(projection_dim, c)`` on the fused features."""
        self._require_fitted()
        return self._state.head.weight
