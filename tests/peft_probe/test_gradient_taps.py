"""One-backward-pass gradient statistics equal plain autodiff (batch gradient, per-example gradient norms)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from peft_probe.gradient_taps import (
    batch_gradient,
    batch_gradient_sq_norm,
    gradient_statistics_fn,
    per_example_sq_norms,
)
from peft_probe.lora import linear_modules
from peft_probe.page import kernel_gradient_fn
from tests.peft_probe.lora_fixtures import random_batch, tiny_model


@pytest.mark.parametrize(("tokens", "d_in", "d_out"), [(3, 16, 24), (40, 8, 6)])  # ghost-norm and explicit branch
def test_norm_identities_on_both_branches(tokens, d_in, d_out):
    """float64: the ghost norm Σ (x_t·x_s)(δ_t·δ_s) and the explicit ||xᵀδ||² are the same number (1e-12)."""
    rng = np.random.default_rng(0)
    x, delta = rng.normal(size=(2, tokens, d_in)), rng.normal(size=(2, tokens, d_out))
    explicit = [np.sum((x[i].T @ delta[i]) ** 2) for i in range(2)]
    np.testing.assert_allclose(per_example_sq_norms(jnp.asarray(x), jnp.asarray(delta)), explicit, rtol=1e-12)
    g = np.einsum("bti,bto->io", x, delta)
    np.testing.assert_allclose(batch_gradient(jnp.asarray(x), jnp.asarray(delta)), g, rtol=1e-12)
    assert float(batch_gradient_sq_norm(jnp.asarray(x), jnp.asarray(delta))) == pytest.approx(np.sum(g**2), rel=1e-12)


@pytest.mark.parametrize("tokens", [12, 64])  # 12: every per-example norm by the ghost identity; 64: explicitly
def test_statistics_equal_autodiff_kernel_gradients(tokens):
    """The batch gradient and each example's gradient norm from recorded inputs and output gradients equal
    ``jax.grad`` w.r.t. the kernels (batch loss) and vmapped per-example ``jax.grad``. The logits are float32 by
    design, so both routes carry float32 rounding: 1e-6 of the largest entry, 1e-5 relative for the norms."""
    model = tiny_model()
    batch = {k: jnp.asarray(v) for k, v in random_batch(4, batch=3, tokens=tokens, answer_from=tokens // 2).items()}
    names = list(linear_modules(model))
    grads, norms = gradient_statistics_fn(model, names)(batch)
    reference = kernel_gradient_fn(model, names)(batch)
    per_example = kernel_gradient_fn(model, names, per_example=True)(batch)
    assert set(grads) == set(norms) == set(names)
    for name in names:
        np.testing.assert_allclose(grads[name], reference[name], rtol=1e-5, atol=1e-6 * np.abs(reference[name]).max())
        expected = np.sum(np.asarray(per_example[name]) ** 2, axis=(1, 2))
        np.testing.assert_allclose(norms[name], expected, rtol=1e-5)
    only_norms = gradient_statistics_fn(model, names[:2], batch_gradients=False)(batch)
    assert only_norms[0] == {} and set(only_norms[1]) == set(names[:2])
