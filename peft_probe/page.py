"""PAGE: projected adapter gradient energy, a one-backward-pass probe of where LoRA adapters would learn.

Zhang, He, Fang, Tan, Chen & Zhuang, 2026, "Rethinking Adapter Placement: A Dominant Adaptation Module
Perspective" (arXiv 2605.06183). A LoRA adapter ``W + s B A`` starts with ``B = 0``, so at initialization
``dL/dA = 0`` and ``dL/dB = s G A^T`` with ``G = dL/dW (d_out, d_in)`` the frozen weight's gradient: how much an
adapter can learn at first is set by ``G``. The paper describes PAGE as the empirical Fisher information of each
projection weight at initialization (abstract and method summary; the full method section was not reachable when
this was written), i.e. the trace of the empirical Fisher

    PAGE(W) = tr F̂(W) = (1/n) Σ_i ||∂ℓ_i/∂W||²_F

over the probe examples ``i`` (``ℓ_i`` = example ``i``'s mean answer-token loss). That is the default,
``"per_example"`` (:data:`DEFAULT_VARIANT`). The others are ablations from the batch gradient ``G``. All five come
from ONE backward pass per batch that records each module's input and output gradient
(:mod:`peft_probe.gradient_taps`); no adapters are needed:

- ``"concrete"``: ``||s G A^T||²_F`` with ``A`` drawn as ``inject_lora`` would with the same seed; ``num_draws > 1``
  averages seeds.
- ``"expectation"``: ``E_A ||s G A^T||² = s² r Var(A_ij) ||G||²`` with ``Var = 1/(3 d_in)`` for PEFT's
  Kaiming-uniform bound ``1/sqrt(d_in)`` (``1/r²`` for the Gaussian init).
- ``"raw"``: ``||G||²``; ``"normalized"``: ``||G||² / (d_in d_out)`` (per parameter).

Scores are averaged over probe batches; each module's share of the total is reported too.
:func:`variant_agreement` counts how often each variant names the default's dominant module.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from peft_probe.gradient_taps import (
    batch_gradient_sq_norm,
    module_paths,
    per_example_sq_norms,
    tapped_activations,
)
from peft_probe.lora import (
    ALL_LINEAR,
    LoraConfig,
    candidate_modules,
    lora_a_init,
    lora_modules,
    module_layer,
    module_path,
    name_hash,
)
from peft_probe.training import objective, training_loss

__all__ = ["VARIANTS", "DEFAULT_VARIANT", "ABLATIONS", "ModuleScore", "PageScores", "page_scores", "page_scores_all",
           "kernel_gradient_fn", "variant_agreement", "plot_page_heatmap"]

VARIANTS = ("per_example", "concrete", "expectation", "raw", "normalized")
DEFAULT_VARIANT = "per_example"  # the empirical Fisher of the projection weight: the paper's PAGE
ABLATIONS = tuple(v for v in VARIANTS if v != DEFAULT_VARIANT)
_MODULE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ModuleScore(NamedTuple):
    name: str      # dotted module name, e.g. model.layers.3.mlp.down_proj
    layer: int     # decoder-layer index (-1 outside the layer stack)
    module: str    # module type, e.g. down_proj
    score: float   # PAGE (mean over probe batches)
    share: float   # score / sum of all scores


class PageScores(NamedTuple):
    """PAGE of every candidate module, highest first."""

    variant: str
    rows: list[ModuleScore]
    batches: int

    def top(self, k: int = 1) -> list[ModuleScore]:
        return self.rows[:k]

    def matrix(self) -> tuple[list[int], list[str], np.ndarray]:
        """Shares as a ``(layers, module types)`` grid (NaN where a module type is absent)."""
        layers = sorted({r.layer for r in self.rows})
        present = {r.module for r in self.rows}
        types = [t for t in _MODULE_ORDER if t in present] + sorted(present - set(_MODULE_ORDER))
        grid = np.full((len(layers), len(types)), np.nan)
        for r in self.rows:
            grid[layers.index(r.layer), types.index(r.module)] = r.share
        return layers, types, grid

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps({"variant": self.variant, "batches": self.batches,
                           "modules": [r._asdict() for r in self.rows]}, indent=1)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["variant", *ModuleScore._fields])
        for r in self.rows:
            writer.writerow([self.variant, r.name, r.layer, r.module, repr(r.score), repr(r.share)])
        if path is not None:
            Path(path).write_text(buf.getvalue())
        return buf.getvalue()


def kernel_gradient_fn(model: nnx.Module, names: Iterable[str], per_example: bool = False
                       ) -> Callable[[Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """``batch -> {name: dL/dkernel (d_in, d_out)}`` for the named ``nnx.Linear`` modules, from one backward
    pass through the frozen model; with ``per_example`` the gradients are ``(b, d_in, d_out)``, one per
    example's own loss (vmapped); the loss is ``training.objective(model)``'s. Compiled once per model
    structure and batch shape."""
    wanted = {module_path(n) + ("kernel",): n for n in names}
    graphdef, kernels, rest = nnx.split(model, lambda path, _: tuple(path) in wanted, ...)

    def step(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        grads = _kernel_grads(graphdef, kernels, rest, dict(batch), per_example)
        return {wanted[tuple(path)]: v.get_value() for path, v in nnx.to_flat_state(grads)}

    return step


@functools.partial(jax.jit, static_argnames=("graphdef", "per_example"))
def _kernel_grads(graphdef: Any, kernels: nnx.State, rest: nnx.State, batch: dict[str, jax.Array],
                  per_example: bool) -> nnx.State:
    def loss(k: nnx.State, example_batch: dict[str, jax.Array]) -> jax.Array:
        model = nnx.merge(graphdef, k, rest)
        if per_example:
            return objective(model).example_losses(model, example_batch)[0]
        return training_loss(model, example_batch)

    if per_example:
        one = lambda example: jax.grad(loss)(kernels, {key: v[None] for key, v in example.items()})  # noqa: E731
        return jax.vmap(one)(batch)
    return jax.grad(loss)(kernels, batch)


def _module_energies(x: jax.Array, delta: jax.Array, weights: jax.Array, seeds: jax.Array, module_hash: jax.Array,
                     variants: tuple, config: LoraConfig) -> dict[str, jax.Array]:
    """Every requested PAGE variant of one module from its input ``x (b, t, d_in)`` and per-example output
    gradients ``δ (b, t, d_out)``, without forming the kernel gradient where that is cheaper."""
    d_in, d_out = x.shape[-1], delta.shape[-1]
    weighted = delta * weights[:, None, None]  # the batch gradient G = Σ x_nᵀ δ'_n
    out = {}
    if "per_example" in variants:
        out["per_example"] = jnp.mean(per_example_sq_norms(x, delta))
    if {"raw", "normalized", "expectation"} & set(variants):
        energy = batch_gradient_sq_norm(x, weighted)
        s = config.scale
        var_a = 1.0 / (3.0 * d_in) if config.init == "kaiming" else 1.0 / config.r**2
        out |= {"raw": energy, "normalized": energy / (d_in * d_out), "expectation": s * s * config.r * var_a * energy}
    if "concrete" in variants:
        # the A of inject_lora(model, config, seed) for every seed (adapter_key(key(seed), name)), then
        # ||s G A^T||^2 = s^2 ||A^T G||^2 with A (d_in, r) in flax layout; A^T G = (x A)^T δ', averaged over draws
        draws = jax.vmap(lambda seed: lora_a_init(jax.random.fold_in(jax.random.key(seed), module_hash), d_in,
                                                  config.r, config.init, x.dtype))(seeds)
        projected = jnp.einsum("bti,kir,bto->kro", x, draws, weighted)
        out["concrete"] = config.scale ** 2 * jnp.mean(jnp.sum(jnp.square(projected), axis=(1, 2)))
    return {v: out[v] for v in variants}


@functools.partial(jax.jit, static_argnames=("graphdef", "paths", "names", "variants", "config", "losses", "weights"))
def _page_energies(graphdef: Any, state: Any, batch: dict[str, jax.Array], paths: tuple, names: tuple,
                   variants: tuple, config: LoraConfig, seeds: jax.Array, hashes: dict[str, jax.Array],
                   losses: Callable, weights: Callable) -> dict[str, dict[str, jax.Array]]:
    """Every requested variant of every module for one batch, in one compiled call (one backward pass)."""
    taps, w = tapped_activations(graphdef, state, batch, paths, names, losses, weights)
    per_module = {n: _module_energies(x, d, w, seeds, hashes[n], variants, config) for n, (x, d) in taps.items()}
    return {v: {n: e[v] for n, e in per_module.items()} for v in variants}


def page_scores(model: nnx.Module, batches: Iterable[Mapping[str, Any]], config: LoraConfig | None = None,
                variant: str = DEFAULT_VARIANT, seed: int = 0, num_draws: int = 1, progress: bool = False
                ) -> PageScores:
    """PAGE of every module ``config`` selects (default: all linear layers, r = 8, alpha = 16), in ``variant``
    (default: the paper's empirical Fisher, ``"per_example"``).

    batches: dicts with ``input_ids``, ``attention_mask``, ``loss_mask`` ``(b, t)``; the loss is answer-token
    cross entropy. One backward pass per batch. ``seed``/``num_draws``: the concrete variant's ``A`` draws,
    ``A`` of draw ``j`` = the ``A`` that ``inject_lora(model, config, seed + j)`` creates.
    """
    return page_scores_all(model, batches, config, (variant,), seed, num_draws, progress)[variant]


def page_scores_all(model: nnx.Module, batches: Iterable[Mapping[str, Any]], config: LoraConfig | None = None,
                    variants: Sequence[str] = VARIANTS, seed: int = 0, num_draws: int = 1, progress: bool = False
                    ) -> dict[str, PageScores]:
    """Several variants from ONE backward pass per batch (``gradient_taps``: every module's input and output
    gradient give the batch gradient and each example's gradient norm)."""
    variants = tuple(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"variant must be one of {VARIANTS}, got {unknown or variants!r}")
    if int(num_draws) < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws!r}")
    config = LoraConfig(r=8, alpha=16, target_modules=ALL_LINEAR) if config is None else config
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a LoraConfig, got {type(config).__name__}")
    if lora_modules(model):
        raise ValueError("page_scores probes the base model; it already has LoRA adapters (merge_lora(model, "
                         "unload=True) or probe a fresh copy)")
    check, losses, weights, _ = objective(model)
    checked = [check(b, f"batches[{i}]") for i, b in enumerate(batches)]
    if not checked:
        raise ValueError("batches is empty; PAGE needs at least one probe batch")
    modules = candidate_modules(model, config)
    if not modules:
        raise ValueError(f"config.target_modules={config.target_modules!r} selects no linear module")
    seeds = jnp.arange(int(num_draws)) + int(seed)
    hashes = {name: jnp.uint32(name_hash(name)) for name in modules}
    names = tuple(modules)
    graphdef, state = nnx.split(model)
    totals = {v: dict.fromkeys(names, 0.0) for v in variants}
    for batch in _progress(checked, progress):
        energies = jax.device_get(_page_energies(graphdef, state, {k: jnp.asarray(v) for k, v in batch.items()},
                                                 module_paths(names), names, variants, config, seeds, hashes,
                                                 losses, weights))
        for variant, per_module in energies.items():
            for name, value in per_module.items():
                totals[variant][name] += float(value) / len(checked)
    return {v: _table(v, totals[v], len(checked)) for v in variants}


def _table(variant: str, totals: dict[str, float], batches: int) -> PageScores:
    grand = sum(totals.values())
    rows = [ModuleScore(n, module_layer(n), n.rsplit(".", 1)[-1], v, v / grand if grand > 0 else 0.0)
            for n, v in totals.items()]
    rows.sort(key=lambda r: (-r.score, r.layer, r.name))
    return PageScores(variant, rows, batches)


def variant_agreement(tables: Sequence[Mapping[str, PageScores]], reference: str = DEFAULT_VARIANT, k: int = 5
                      ) -> dict[str, dict[str, float]]:
    """How often each variant agrees with ``reference`` over several probes (one ``{variant: PageScores}`` per
    task and seed, as :func:`page_scores_all` returns).

    Per variant: ``top1``, the fraction of probes whose dominant module is the reference's; ``top_k_overlap``, the
    mean of ``|top-k ∩ top-k_ref| / k``; ``rank_correlation``, the mean Spearman correlation of the module scores
    with the reference's (ties ranked by the tables' own order); ``probes``, their number.
    """
    tables = list(tables)
    if not tables:
        raise ValueError("tables is empty; pass one {variant: PageScores} per probe")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    for i, table in enumerate(tables):
        if not isinstance(table, Mapping) or reference not in table:
            raise ValueError(f"tables[{i}] has no {reference!r} scores (the reference variant)")
    variants = [v for v in tables[0] if all(v in t for t in tables)]
    out: dict[str, dict[str, float]] = {}
    for variant in variants:
        top1, overlap, rho = [], [], []
        for i, table in enumerate(tables):
            ref, other = table[reference], table[variant]
            names = [r.name for r in ref.rows]
            if sorted(names) != sorted(r.name for r in other.rows):
                raise ValueError(f"tables[{i}]: {variant!r} and {reference!r} score different modules")
            kk = min(int(k), len(names))
            top1.append(other.rows[0].name == ref.rows[0].name)
            overlap.append(len({r.name for r in other.rows[:kk]} & set(names[:kk])) / kk)
            # rows are sorted by score, so a module's position is its rank
            other_rank = {r.name: j for j, r in enumerate(other.rows)}
            a = np.arange(len(names), dtype=float)
            b = np.array([other_rank[n] for n in names], dtype=float)
            rho.append(float(np.corrcoef(a, b)[0, 1]) if len(names) > 1 else 1.0)
        out[variant] = {"top1": float(np.mean(top1)), "top_k_overlap": float(np.mean(overlap)),
                        "rank_correlation": float(np.mean(rho)), "probes": len(tables)}
    return out


def _progress(items: list, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="PAGE")


def plot_page_heatmap(scores: PageScores, path: str | Path, title: str | None = None) -> Path:
    """Heatmap of each module's share of PAGE, decoder layers x module types, saved as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, types, grid = scores.matrix()
    fig, ax = plt.subplots(figsize=(1.1 * len(types) + 2.0, 0.28 * len(layers) + 1.8))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(types)), types, rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), [str(i) for i in layers])
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    best = scores.rows[0]
    ax.scatter([types.index(best.module)], [layers.index(best.layer)], marker="s", s=60, facecolors="none",
               edgecolors="red", linewidths=1.5, label=f"top: layer {best.layer} {best.module} ({best.share:.1%})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=8, frameon=False)
    fig.colorbar(image, ax=ax, label="share of total PAGE")
    ax.set_title(title or f"PAGE ({scores.variant})")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
