"""Gradient baselines under the same partitions: FedAvg (McMahan et al., 2017) and FedProx (Li et al., 2020).

Round r: the server samples a fraction ``client_fraction`` of the (non-empty) clients; each runs
``local_epochs·⌈nₖ/B⌉`` optax steps from the global parameters ``w`` on minibatches of ``B`` of its own rows (drawn
with replacement), minimizing cross-entropy plus, for FedProx, the proximal term ``(μ/2)‖wₖ − w‖²`` (Li et al.,
eq. 2); the server sets ``w ← Σₖ nₖwₖ / Σₖ nₖ`` (McMahan et al., Algorithm 1). The local loop is one jitted
``lax.fori_loop`` ``vmap``-ed over the sampled clients; clients with fewer rows stop stepping early (masked).

The model is softmax regression (``hidden=0``) or a one-hidden-layer ReLU MLP, in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from analytic.validation import check_features, check_labels
from federated.comm import CommLog, pytree_nbytes

__all__ = ["FedResult", "init_params", "apply_model", "fedavg", "fedprox", "accuracy"]


class FedResult(NamedTuple):
    """Final ``params``; ``history``: ``[(round, test accuracy), ...]``; ``comm``: bytes and rounds."""

    params: Any
    history: list[tuple[int, float]]
    comm: dict[str, float]


def init_params(key: jax.Array, in_dim: int, classes: int, hidden: int = 0) -> dict[str, jax.Array]:
    """Linear (``hidden=0``) or one-hidden-layer MLP parameters, float32, LeCun-normal weights, zero biases."""
    if hidden:
        k1, k2 = jax.random.split(key)
        return {"w1": jax.random.normal(k1, (in_dim, hidden), jnp.float32) / math.sqrt(in_dim),
                "b1": jnp.zeros((hidden,), jnp.float32),
                "w": jax.random.normal(k2, (hidden, classes), jnp.float32) / math.sqrt(hidden),
                "b": jnp.zeros((classes,), jnp.float32)}
    return {"w": jnp.zeros((in_dim, classes), jnp.float32), "b": jnp.zeros((classes,), jnp.float32)}


def apply_model(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """Logits ``(n, c)``."""
    if "w1" in params:
        x = jax.nn.relu(x @ params["w1"] + params["b1"])
    return x @ params["w"] + params["b"]


def _local_train(optimizer, steps_per_epoch, local_epochs, batch_size, mu, params, x, y, rows, count, key):
    """One client's local optimization; ``rows``: its padded row indices into ``x``, ``count`` of them real."""
    global_params = params
    n_steps = local_epochs * jnp.maximum(1, -(-count // batch_size))

    def loss(p, xb, yb):
        ce = optax.softmax_cross_entropy_with_integer_labels(apply_model(p, xb), yb).mean()
        prox = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree_util.tree_leaves(p),
                                                            jax.tree_util.tree_leaves(global_params)))
        return ce + 0.5 * mu * prox

    def step(s, carry):
        p, opt_state, k = carry
        k, sub = jax.random.split(k)
        pick = rows[jax.random.randint(sub, (batch_size,), 0, jnp.maximum(count, 1))]
        grads = jax.grad(loss)(p, x[pick], y[pick])
        updates, new_state = optimizer.update(grads, opt_state, p)
        new_p = optax.apply_updates(p, updates)
        active = s < n_steps
        keep = partial(jax.tree_util.tree_map, lambda new, old: jnp.where(active, new, old))
        return keep(new_p, p), keep(new_state, opt_state), k

    carry = (params, optimizer.init(params), key)
    return jax.lax.fori_loop(0, local_epochs * steps_per_epoch, step, carry)[0]


@partial(jax.jit, static_argnames=("lr", "momentum", "steps_per_epoch", "local_epochs", "batch_size"))
def _round(params, x, y, rows, counts, key, mu, *, lr, momentum, steps_per_epoch, local_epochs, batch_size):
    optimizer = optax.sgd(lr, momentum=momentum or None)
    keys = jax.random.split(key, rows.shape[0])
    local = partial(_local_train, optimizer, steps_per_epoch, local_epochs, batch_size, mu)
    client_params = jax.vmap(local, in_axes=(None, None, None, 0, 0, 0))(params, x, y, rows, counts, keys)
    weights = counts.astype(jnp.float32) / jnp.sum(counts)
    return jax.tree_util.tree_map(lambda leaf: jnp.tensordot(weights, leaf, axes=1), client_params)


@jax.jit
def _accuracy(params, x, y):
    return jnp.mean(jnp.argmax(apply_model(params, x), axis=1) == y)


def accuracy(params: Any, x: Any, y: Any) -> float:
    return float(_accuracy(params, jnp.asarray(x, jnp.float32), jnp.asarray(y)))


def fedavg(
    x: Any, y: Any, parts: Sequence[np.ndarray], *, classes: int | None = None, rounds: int = 50,
    local_epochs: int = 1, batch_size: int = 32, lr: float = 0.1, client_fraction: float = 0.1,
    mu: float = 0.0, hidden: int = 0, momentum: float = 0.0, seed: int = 0,
    eval_data: tuple[Any, Any] | None = None, eval_every: int = 0, progress: bool = False,
    initial_params: dict[str, Any] | None = None,
) -> FedResult:
    """FedAvg over pooled rows ``x: (n, d)``, labels ``y: (n,)`` split by ``parts`` (one index array per client,
    e.g. from :mod:`federated.partition`). ``mu > 0`` is FedProx. ``eval_data`` is scored every ``eval_every``
    rounds (0: at the end only). ``initial_params`` (the ``params`` of an earlier result, same shapes as
    :func:`init_params` gives) continue a model instead of drawing one from ``seed`` -- task after task, the
    federated continual baseline of :func:`federated.afcl.fedavg_per_task`."""
    x = check_features(x).astype(jnp.float32)
    labels = check_labels(y, classes=classes, n=x.shape[0])
    classes = classes or int(labels.max()) + 1
    if not 0 < client_fraction <= 1:
        raise ValueError(f"client_fraction must be in (0, 1], got {client_fraction!r}")
    for name, value in (("rounds", rounds), ("local_epochs", local_epochs), ("batch_size", batch_size)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    if not lr > 0 or mu < 0:
        raise ValueError(f"lr must be > 0 and mu >= 0, got lr={lr!r}, mu={mu!r}")
    counts = np.array([len(p) for p in parts], dtype=np.int32)
    nonempty = np.flatnonzero(counts)
    if nonempty.size == 0:
        raise ValueError("every client is empty")
    # One padded width for the whole run (a power of two): every round reuses one compiled program.
    width = max(8, 1 << (int(counts.max()) - 1).bit_length())
    rows = np.zeros((len(parts), width), dtype=np.int32)
    for c, p in enumerate(parts):
        rows[c, : len(p)] = p
    sampled = max(1, round(client_fraction * nonempty.size))
    key = jax.random.PRNGKey(seed)
    key, init_key = jax.random.split(key)
    params = init_params(init_key, x.shape[1], classes, hidden)
    if initial_params is not None:
        params = _same_params(initial_params, params)
    yj = jnp.asarray(labels, jnp.int32)
    rng = np.random.default_rng(seed)
    size = pytree_nbytes(params)
    log, history = CommLog(), []
    for r in tqdm(range(1, rounds + 1), desc="FedProx" if mu else "FedAvg", disable=not progress, leave=False):
        chosen = np.sort(rng.choice(nonempty, sampled, replace=False))
        key, sub = jax.random.split(key)
        params = _round(params, x, yj, jnp.asarray(rows[chosen]), jnp.asarray(counts[chosen]), sub, float(mu),
                        lr=float(lr), momentum=float(momentum), steps_per_epoch=-(-width // batch_size),
                        local_epochs=int(local_epochs), batch_size=int(batch_size))
        log.record({int(c): size for c in chosen}, {int(c): size for c in chosen})
        if eval_data is not None and ((eval_every and r % eval_every == 0) or r == rounds):
            history.append((r, accuracy(params, *eval_data)))
    return FedResult(params, history, log.summary())


def _same_params(given: Any, fresh: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """``given`` as float32 arrays if it has exactly ``fresh``'s keys and shapes, else ``ValueError``."""
    if not isinstance(given, dict) or set(given) != set(fresh):
        raise ValueError(f"initial_params must be a dict with keys {sorted(fresh)}, got "
                         f"{sorted(given) if isinstance(given, dict) else type(given).__name__}")
    out = {}
    for name, value in fresh.items():
        array = jnp.asarray(given[name], jnp.float32)
        if array.shape != value.shape or not bool(jnp.all(jnp.isfinite(array))):
            raise ValueError(f"initial_params[{name!r}] must be finite with shape {value.shape}, got shape "
                             f"{array.shape}")
        out[name] = array
    return out


def fedprox(x: Any, y: Any, parts: Sequence[np.ndarray], *, mu: float = 0.01, **kwargs: Any) -> FedResult:
    """FedProx: :func:`fedavg` with the proximal term ``(μ/2)‖wₖ − w‖²`` in every local objective."""
    if not mu > 0:
        raise ValueError(f"FedProx needs mu > 0, got {mu!r}")
    return fedavg(x, y, parts, mu=mu, **kwargs)
