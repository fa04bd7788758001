"""A stack of decoder layers as one ``lax.scan`` per run of identically structured layers.

XLA compiles an unrolled stack of L layers as L copies of the layer (compile time on CPU grows with it), and an
optimizer over per-layer adapters updates L separate leaves per parameter. A ``lax.scan`` over weights stacked on a
leading layer axis compiles one layer and updates one stacked leaf. Adapters placed in some layers only (DomLoRA,
PAGE's top-k) give those layers another structure, so the stack is cut into maximal runs of consecutive layers that
share one graphdef, each scanned on its own: SmolLM2's 30 layers with one adapted layer are three runs.

Stacking copies the weights, so it is done once, outside any loop; ``write_back`` puts (trained) stacked values
back into the layers they came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["LayerRun", "stack_layer_runs", "write_back", "layer_slice"]


class LayerRun(NamedTuple):
    """Layers ``start .. stop-1`` share ``graphdef``; their states are stacked elsewhere (see ``stack_layer_runs``)."""

    start: int
    stop: int
    graphdef: Any


def stack_layer_runs(layers: Sequence[nnx.Module], *filters: Any) -> tuple[list[LayerRun], list[tuple[Any, ...]]]:
    """Cut ``layers`` into runs of equal structure and stack each run's state.

    filters: as for ``nnx.split`` (e.g. ``nnx.LoRAParam, ...`` for trainable and frozen parts); none means one
    state holding everything. Returns ``(runs, states)`` where ``states[r]`` holds one state per filter, every
    leaf with a leading axis of ``runs[r].stop - runs[r].start`` layers. ``nnx.merge(run.graphdef, *per_layer)``
    rebuilds one layer from a slice of them.
    """
    if not len(layers):
        raise ValueError("layers is empty; nothing to stack")
    splits = [nnx.split(layer, *filters) for layer in layers]
    runs, states = [], []
    start = 0
    for i in range(1, len(splits) + 1):
        if i < len(splits) and splits[i][0] == splits[start][0]:
            continue
        runs.append(LayerRun(start, i, splits[start][0]))
        per_filter = zip(*(split[1:] for split in splits[start:i]))
        states.append(tuple(jax.tree.map(lambda *xs: jnp.stack(xs), *group) for group in per_filter))
        start = i
    return runs, states


def layer_slice(state: Any, j: int) -> Any:
    """The ``j``-th layer's values of a stacked state."""
    return jax.tree.map(lambda a: a[j], state)


def write_back(layers: Sequence[nnx.Module], runs: Sequence[LayerRun], states: Sequence[Any]) -> None:
    """Update each layer in place from its slice of the stacked ``states`` (one state, or a tuple per filter,
    per run); variables the states do not hold are left as they are."""
    for run, state in zip(runs, states):
        parts = state if isinstance(state, tuple) else (state,)
        for j in range(run.stop - run.start):
            for part in parts:
                nnx.update(layers[run.start + j], layer_slice(part, j))
