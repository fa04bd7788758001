"""Batch and per-example weight-gradient statistics of many linear layers from ONE backward pass.

For a linear layer ``y = x W`` (flax layout, ``W: (d_in, d_out)``) the weight gradient of a loss is
``∂L/∂W = Σ_tokens x_tᵀ δ_t`` with ``δ = ∂L/∂y``. So a single backward pass through the frozen model that records
every probed layer's input ``x`` and output gradient ``δ`` gives the batch gradient *and* each example's own
gradient (Goodfellow, 2015, "Efficient Per-Example Gradient Computations", arXiv 1510.01799, Sec. 2): the pass
differentiates ``Σ_i ℓ_i`` (examples do not interact in the model), so ``δ_i = ∂ℓ_i/∂y_i`` and

    g_i = x_iᵀ δ_i,        G = ∂L/∂W = Σ_i (n_i / N) g_i      (L = answer_token_loss, n_i answer tokens of i)
    ||g_i||²_F = Σ_{t,s} (x_t·x_s)(δ_t·δ_s)                      (the "ghost norm", Li et al., 2022, Sec. 4)

The ghost norm costs ``t² (d_in + d_out)`` per example instead of ``t d_in d_out``; the cheaper one is used for
each layer shape. ``x`` and ``δ`` are recorded with ``nnx.Module.sow`` / ``perturb`` and ``nnx.capture``, on a
throw-away copy of the model built inside the jitted function (the caller's model is never changed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from peft_probe.lora import _set_child, module_at, module_path
from peft_probe.training import answer_token_weights, per_example_loss

__all__ = ["gradient_statistics_fn", "gradient_statistics", "tapped_activations", "module_paths",
           "answer_token_weights", "per_example_sq_norms", "batch_gradient", "batch_gradient_sq_norm"]


class _Tap(nnx.Module):
    """Records the wrapped linear layer's input and makes its output differentiable as a perturbation."""

    def __init__(self, base: nnx.Module):
        self.base = base

    def __call__(self, x: jax.Array) -> jax.Array:
        self.sow(nnx.Intermediate, "inputs", x)
        return self.perturb("outputs", self.base(x))


def gradient_statistics_fn(model: nnx.Module, names: Iterable[str], batch_gradients: bool = True,
                           per_example_norms: bool = True
                           ) -> Callable[[Mapping[str, jax.Array]], tuple[dict[str, jax.Array], dict[str, jax.Array]]]:
    """``batch -> (G, e)`` for the named linear modules: ``G[name] = ∂L/∂kernel (d_in, d_out)`` of the
    token-weighted answer loss and ``e[name] = ||∂ℓ_i/∂kernel||²_F (b,)`` of each example's own mean answer loss
    (the quantities of ``kernel_gradient_fn`` without and with ``per_example``), from one backward pass.
    Either output can be switched off (empty dict). Compiled once per model structure and batch shape."""
    names = tuple(names)
    paths = module_paths(names)
    graphdef, state = nnx.split(model)

    def step(batch: Mapping[str, jax.Array]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        return _statistics(graphdef, state, dict(batch), paths, names, batch_gradients, per_example_norms)

    return step


def module_paths(names: Iterable[str]) -> tuple[tuple, ...]:
    """Graph paths of dotted module names (``lora.module_path`` of each)."""
    return tuple(module_path(n) for n in names)


def per_example_sq_norms(x: jax.Array, delta: jax.Array) -> jax.Array:
    """``||x_iᵀ δ_i||²_F (b,)`` from ``x (b, t, d_in)``, ``δ (b, t, d_out)``: by the ghost norm when
    ``t (d_in + d_out) < d_in d_out``, else by forming each ``x_iᵀ δ_i``."""
    t, d_in, d_out = x.shape[1], x.shape[2], delta.shape[2]
    if t * (d_in + d_out) < d_in * d_out:
        gram_x = jnp.einsum("bti,bsi->bts", x, x)
        gram_d = jnp.einsum("bto,bso->bts", delta, delta)
        return jnp.sum(gram_x * gram_d, axis=(1, 2))
    return jnp.sum(jnp.square(jnp.einsum("bti,bto->bio", x, delta)), axis=(1, 2))


def batch_gradient(x: jax.Array, weighted_delta: jax.Array) -> jax.Array:
    """``G = Σ_n x_nᵀ δ'_n (d_in, d_out)`` over all tokens ``n`` (``δ'`` already carries the example weights)."""
    return jnp.einsum("bti,bto->io", x, weighted_delta)


def batch_gradient_sq_norm(x: jax.Array, weighted_delta: jax.Array) -> jax.Array:
    """``||G||²_F`` without forming ``G`` when the token count ``N`` is small: ``Σ_{n,m} (x_n·x_m)(δ'_n·δ'_m)``
    costs ``N² (d_in + d_out)``, ``G`` costs ``N d_in d_out``; the cheaper is used."""
    x2, d2 = x.reshape(-1, x.shape[-1]), weighted_delta.reshape(-1, weighted_delta.shape[-1])
    n, d_in, d_out = x2.shape[0], x2.shape[1], d2.shape[1]
    if n * (d_in + d_out) < d_in * d_out:
        return jnp.sum((x2 @ x2.T) * (d2 @ d2.T))
    return jnp.sum(jnp.square(x2.T @ d2))


def tapped_activations(graphdef: Any, state: Any, batch: dict[str, jax.Array], paths: tuple, names: tuple,
                       example_losses: Callable[[nnx.Module, Any], jax.Array] = per_example_loss,
                       example_weights: Callable[[Any], jax.Array] = answer_token_weights,
                       ) -> tuple[dict[str, tuple[jax.Array, jax.Array]], jax.Array]:
    """Traceable: ``{name: (x (b, t, d_in), δ (b, t, d_out))}`` of every named module, ``δ_i = ∂ℓ_i/∂y_i``, and
    the example weights ``w (b,)`` with ``L = Σ_i w_i ℓ_i`` the batch loss; ``graphdef, state = nnx.split(model)``,
    ``paths = module_paths(names)``. ``example_losses(model, batch) -> (b,)`` and ``example_weights(batch)``
    default to the causal-LM answer loss. For callers that fuse more work into the same jit."""
    def tapped() -> nnx.Module:
        # built inside each transform that runs it (nnx modules cannot be mutated across trace levels)
        model = nnx.merge(graphdef, state)
        for path in paths:
            _set_child(model, path, _Tap(module_at(model, path)))
        return model

    def summed_example_losses(m: nnx.Module, batch: dict[str, jax.Array]) -> jax.Array:
        return example_losses(m, batch).sum()

    # zero perturbations of every tapped output, shaped by an abstract forward pass (no compute)
    shapes = jax.eval_shape(lambda: nnx.capture(summed_example_losses, nnx.Perturbation)(tapped(), batch)[1])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def loss(perturbations: Any) -> tuple[jax.Array, Any]:
        return nnx.capture(summed_example_losses, nnx.Intermediate, init=perturbations)(tapped(), batch)

    deltas, inputs = jax.grad(loss, has_aux=True)(zeros)
    delta_at = {tuple(p[:-1]): v.get_value() for p, v in nnx.to_flat_state(deltas)}
    input_at = {tuple(p[:-1]): v.get_value() for p, v in nnx.to_flat_state(inputs)}
    out = {}
    for path, name in zip(paths, names):
        recorded = input_at[path]
        if len(recorded) != 1:
            raise ValueError(f"module {name} ran {len(recorded)} times in one forward pass; the probe needs one")
        x, delta = recorded[0], delta_at[path]
        out[name] = (x.reshape(x.shape[0], -1, x.shape[-1]), delta.reshape(delta.shape[0], -1, delta.shape[-1]))
    some = next(iter(out.values()))[1] if out else jnp.zeros(())
    return out, example_weights(batch).astype(some.dtype)


def gradient_statistics(graphdef: Any, state: Any, batch: dict[str, jax.Array], paths: tuple, names: tuple,
                        batch_gradients: bool = True, per_example_norms: bool = True
                        ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """The traceable body of ``gradient_statistics_fn``."""
    taps, weights = tapped_activations(graphdef, state, batch, paths, names)
    grads, norms = {}, {}
    for name, (x, delta) in taps.items():
        if batch_gradients:
            grads[name] = batch_gradient(x, delta * weights[:, None, None])
        if per_example_norms:
            norms[name] = per_example_sq_norms(x, delta)
    return grads, norms


_statistics = jax.jit(gradient_statistics, static_argnums=(0, 3, 4, 5, 6))
