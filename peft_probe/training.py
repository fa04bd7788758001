"""Adapter-only fine-tuning with optax: answer-token cross entropy, AdamW, warmup + cosine, gradient clipping.

Only ``nnx.LoRAParam`` variables are differentiated and updated (Hu et al., 2021, "LoRA", Sec. 4: the pretrained
weights stay frozen); the loss is the mean next-token cross entropy over answer tokens only (prompt tokens masked,
as in instruction tuning). A batch is a dict of ``(b, t)`` arrays: ``input_ids`` (int), ``attention_mask`` (1 =
token) and ``loss_mask`` (1 = this token belongs to the answer and is predicted from the tokens before it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from peft_probe.layer_scan import write_back
from peft_probe.lora import LoraConfig, candidate_modules, inject_lora, lora_modules, save_adapters, trainable_count
from peft_probe.models.inputs import batch_arrays

__all__ = ["train_step", "ScannedLoraTrainer", "pad_batch", "check_batch", "Objective", "objective",
           "training_loss", "answer_token_loss", "per_example_loss", "answer_token_weights", "default_optimizer",
           "finetune", "FinetuneResult", "answer_token_accuracy"]

_BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask")
_TOKEN_BUCKET = 32  # batches are padded to a multiple of this many tokens: a few compiled shapes, little waste


def check_batch(batch: Mapping[str, Any], name: str = "batch") -> dict[str, np.ndarray]:
    """Validate a batch dict (keys, ``(b, t)`` shapes, integer ids, at least one answer token per batch)."""
    out = batch_arrays(batch, _BATCH_KEYS, name)
    ids = out["input_ids"]
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        raise ValueError(f"{name}['input_ids'] must be (batch >= 1, tokens >= 2), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name}['input_ids'] must hold integers, got dtype {ids.dtype}")
    for k in ("attention_mask", "loss_mask"):
        if out[k].shape != ids.shape:
            raise ValueError(f"{name}[{k!r}] has shape {out[k].shape}, input_ids has {ids.shape}")
    if not out["loss_mask"][:, 1:].any():
        raise ValueError(f"{name}['loss_mask'] marks no answer token after position 0; nothing to learn from")
    return out


def _token_losses(model: nnx.Module, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Next-token cross entropy at every answer position ``(b, t-1)`` and its mask."""
    return _answer_losses(model(batch["input_ids"], batch["attention_mask"]), batch)


def _answer_losses(logits: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    targets = batch["input_ids"][:, 1:]
    mask = batch["loss_mask"][:, 1:].astype(logits.dtype)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], targets)
    return ce * mask, mask


def answer_token_loss(model: nnx.Module, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Mean cross entropy over all answer tokens of the batch (token-weighted)."""
    losses, mask = _token_losses(model, batch)
    return losses.sum() / jnp.maximum(mask.sum(), 1.0)


def per_example_loss(model: nnx.Module, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Mean cross entropy over each example's own answer tokens ``(b,)`` (0 for an example without any)."""
    losses, mask = _token_losses(model, batch)
    return losses.sum(1) / jnp.maximum(mask.sum(1), 1.0)


def answer_token_weights(batch: Mapping[str, jax.Array]) -> jax.Array:
    """``n_i / N``: ``answer_token_loss`` (token-weighted) is ``Σ_i (n_i / N) ℓ_i`` in per-example losses."""
    tokens = batch["loss_mask"][:, 1:].sum(1)
    return tokens / jnp.maximum(tokens.sum(), 1)


class Objective(NamedTuple):
    """A model's training loss ``L = Σ_i w_i ℓ_i`` in per-example terms, which fine-tuning minimizes and PAGE
    differentiates: ``check_batch(batch, name) -> numpy dict`` (raises on bad input), ``example_losses(model,
    batch) -> ℓ (b,)`` and ``example_weights(batch) -> w (b,)``."""

    check_batch: Callable[..., dict[str, np.ndarray]]
    example_losses: Callable[[nnx.Module, Mapping[str, jax.Array]], jax.Array]
    example_weights: Callable[[Mapping[str, jax.Array]], jax.Array]
    own: bool  # supplied by the model class (False: the causal-LM answer-token loss)


def objective(model: nnx.Module) -> Objective:
    """The model's own objective (its method ``objective_check_batch`` and the static ``objective_example_losses``,
    ``objective_example_weights``, e.g. ``SentenceClassifier``) or, by default, the answer-token cross entropy."""
    cls = type(model)
    if hasattr(cls, "objective_example_losses"):
        return Objective(model.objective_check_batch, cls.objective_example_losses, cls.objective_example_weights,
                         True)
    return Objective(check_batch, per_example_loss, answer_token_weights, False)


def training_loss(model: nnx.Module, batch: Mapping[str, jax.Array]) -> jax.Array:
    """``Σ_i w_i ℓ_i`` of ``objective(model)`` (for a causal LM exactly ``answer_token_loss``)."""
    obj = objective(model)
    if not obj.own:
        return answer_token_loss(model, batch)
    return jnp.sum(obj.example_weights(batch) * obj.example_losses(model, batch))


def answer_token_accuracy(model: nnx.Module, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced answer metrics ``(token_accuracy, exact)``: the fraction of answer tokens whose argmax is
    right, and per example whether all are (equal to greedy decoding reproducing the answer exactly)."""
    hit, mask = _answer_hits(model(batch["input_ids"], batch["attention_mask"]), batch)
    token_acc = (hit & mask).sum() / jnp.maximum(mask.sum(), 1)
    exact = jnp.all(hit | ~mask, axis=1)
    return token_acc, exact


def _answer_hits(logits: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Whether each next-token argmax is right ``(b, t-1)``, and which of those positions are answer tokens."""
    return logits[:, :-1].argmax(-1) == batch["input_ids"][:, 1:], batch["loss_mask"][:, 1:].astype(bool)


def default_optimizer(learning_rate: float = 2e-4, steps: int = 100, warmup: int | None = None,
                      weight_decay: float = 0.01, clip_norm: float = 1.0) -> optax.GradientTransformation:
    """Clip the global gradient norm, then AdamW (Loshchilov & Hutter, 2019) on a linear-warmup + cosine schedule."""
    warmup = max(1, steps // 10) if warmup is None else warmup
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(steps, warmup + 1),
                                                  end_value=learning_rate * 0.1)
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(schedule, weight_decay=weight_decay))


class FinetuneResult(NamedTuple):
    losses: list[float]        # training loss of every step
    seconds: float             # wall time of all steps (compilation of the first step included)
    step_seconds: float        # median wall time of one step after the first
    trainable: int             # adapter scalars trained


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, batch: dict[str, jax.Array]) -> jax.Array:
    """One adapter step on ``training_loss`` with the model as it is (unrolled layers); any model, any adapter."""
    diff = nnx.DiffState(0, nnx.LoRAParam)
    loss, grads = nnx.value_and_grad(training_loss, argnums=diff)(model, batch)
    optimizer.update(model, grads)
    return loss


class ScannedLoraTrainer:
    """Adapter training over the decoder stack scanned per run of equal layers (``peft_probe.layer_scan``).

    The same loss and optimizer as ``train_step`` (AdamW and the global-norm clip are elementwise or global, so
    stacking leaves changes nothing), but XLA compiles one layer per run instead of every layer, and the
    optimizer updates one stacked leaf per adapter matrix instead of one per module (all-linear LoRA on SmolLM2:
    420 leaves). The layers' weights are stacked once here; the model itself is only changed by
    ``write_back``. ``unsupported(model)`` says why a model cannot be trained this way (empty if it can).
    """

    def __init__(self, model: nnx.Module, optimizer: optax.GradientTransformation):
        reason = self.unsupported(model)
        if reason:
            raise ValueError(f"model cannot be trained with scanned layers: {reason}")
        self.model = model
        self.runs, states = model.layer_runs(nnx.LoRAParam, ...)
        self.trainable = [trainable for trainable, _ in states]
        frozen = [rest for _, rest in states]
        outer_graphdef, outer_state = nnx.split(model.outer_modules())
        self._frozen, self._outer_state = frozen, outer_state
        self._opt_state = optimizer.init(self.trainable)
        logits_fn, config, runs = model.logits_from_parts, model.config, self.runs

        def logits(trainable, frozen, outer_state, batch):
            outer = nnx.merge(outer_graphdef, outer_state)
            layers = (runs, [(t, f) for t, f in zip(trainable, frozen)])
            return logits_fn(config, outer, layers, batch["input_ids"], batch["attention_mask"])

        def loss_fn(trainable, frozen, outer_state, batch):
            losses, mask = _answer_losses(logits(trainable, frozen, outer_state, batch), batch)
            return losses.sum() / jnp.maximum(mask.sum(), 1.0)

        def metrics(trainable, frozen, outer_state, batch):
            out = logits(trainable, frozen, outer_state, batch)
            losses, mask = _answer_losses(out, batch)
            hit, answer = _answer_hits(out, batch)
            return losses.sum(), mask.sum(), (hit & answer).sum(), jnp.all(hit | ~answer, axis=1)

        def step(trainable, opt_state, frozen, outer_state, batch):
            loss, grads = jax.value_and_grad(loss_fn)(trainable, frozen, outer_state, batch)
            updates, opt_state = optimizer.update(grads, opt_state, trainable)
            return optax.apply_updates(trainable, updates), opt_state, loss

        # the adapters and moments are replaced every step: donating them lets XLA update in place
        self._step = jax.jit(step, donate_argnums=(0, 1))
        self._metrics = jax.jit(metrics)

    @staticmethod
    def unsupported(model: nnx.Module, config: LoraConfig | None = None) -> str:
        """Why ``model`` (after injecting ``config``, if given) cannot be trained scanned; empty if it can."""
        if not all(hasattr(model, name) for name in ("layer_runs", "outer_modules", "logits_from_parts")):
            return f"{type(model).__name__} does not expose its layers as runs (layer_runs / outer_modules)"
        outer = model.outer_modules()
        if config is not None:
            # decided from the config, so that a refusal comes before the model is touched
            inside_outer = {id(node) for _, node in nnx.iter_graph(outer)}
            if any(id(linear) in inside_outer for linear in candidate_modules(model, config).values()):
                return "adapters outside the decoder layers (e.g. on lm_head)"
            if config.dropout > 0:
                return "LoRA dropout (a scan would replay one dropout mask per layer every step)"
            return ""
        if jax.tree.leaves(nnx.state(outer, nnx.LoRAParam)):
            return "adapters outside the decoder layers (e.g. on lm_head)"
        if jax.tree.leaves(nnx.state(model, nnx.RngState)):
            return "random state (LoRA dropout) in the model (a scan would replay one mask per layer every step)"
        if not jax.tree.leaves(nnx.state(model, nnx.LoRAParam)):
            return "no LoRA adapters"
        return ""

    def step(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """One optimizer step on a (checked) batch; returns the loss before the update."""
        self.trainable, self._opt_state, loss = self._step(self.trainable, self._opt_state, self._frozen,
                                                           self._outer_state, dict(batch))
        return loss

    def answer_metrics(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, ...]:
        """Teacher-forced metrics with the current adapters, without an update: ``(summed answer-token loss,
        answer tokens, correct answer tokens, per-example exact match (b,))`` (sums, so batches can be pooled)."""
        return self._metrics(self.trainable, self._frozen, self._outer_state, dict(batch))

    def write_back(self) -> None:
        """Copy the trained adapters into the model's layers."""
        write_back(self.model.model.layers, self.runs, self.trainable)


def pad_batch(batch: Mapping[str, np.ndarray], rows: int, tokens: int) -> dict[str, np.ndarray]:
    """Right-pad a checked batch with masked rows and tokens to ``(rows, tokens)``; the answer-token loss is
    unchanged (padding is never attended to, causal attention never looks right, and its loss mask is 0)."""
    b, t = batch["input_ids"].shape
    return {k: np.pad(v, ((0, rows - b), (0, tokens - t))) for k, v in batch.items()}


def _bucket_shape(batches: Sequence[Mapping[str, np.ndarray]], model: nnx.Module) -> tuple[int, int]:
    """One ``(rows, tokens)`` for all batches (so a jitted step compiles once): the most rows, the longest
    batch rounded up to a multiple of ``_TOKEN_BUCKET`` within the model's position limit."""
    rows = max(b["input_ids"].shape[0] for b in batches)
    longest = max(b["input_ids"].shape[1] for b in batches)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    tokens = -(-longest // _TOKEN_BUCKET) * _TOKEN_BUCKET
    return rows, tokens if limit is None else max(longest, min(tokens, limit))


def finetune(model: nnx.Module, config: LoraConfig | None, data: Iterable[Mapping[str, Any]],
             optimizer: optax.GradientTransformation | None = None, *, steps: int | None = None,
             rngs: nnx.Rngs | int = 0, checkpoint: str | Path | None = None, progress: bool = False,
             scan_layers: bool | None = None) -> FinetuneResult:
    """Train only the LoRA adapters of ``model`` on ``data`` (in place).

    config: injected first if given (``None``: the model already has adapters); data: batches (dicts, see module
    docstring), cycled until ``steps`` (default: one pass) and padded to one shape. A model with its own
    ``objective`` (e.g. ``SentenceClassifier``) is trained on that loss, with its batches as given (one compiled
    step per distinct batch shape) and the unrolled ``train_step``; optimizer: default
    ``default_optimizer(steps=steps)``; checkpoint: folder for an orbax checkpoint of the trained adapters;
    scan_layers: train with ``ScannedLoraTrainer`` (default: whenever the model supports it; ``False``: the
    unrolled ``train_step``). Base weights are never changed.
    """
    # everything is validated before the model is touched, so a bad call leaves it as it was
    if config is None and not lora_modules(model):
        raise ValueError("model has no LoRA adapters; pass a LoraConfig or call inject_lora first")
    if config is not None and not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a LoraConfig or None, got {type(config).__name__}")
    obj = objective(model)
    batches = [obj.check_batch(b, f"data[{i}]") for i, b in enumerate(data)]
    if not batches:
        raise ValueError("data is empty; need at least one batch")
    steps = len(batches) if steps is None else int(steps)
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if scan_layers not in (None, True, False):
        raise TypeError(f"scan_layers must be None, True or False, got {scan_layers!r}")
    reason = "a model-supplied objective" if obj.own else ScannedLoraTrainer.unsupported(model, config)
    if scan_layers and reason:
        raise ValueError(f"scan_layers=True but {reason}")
    if config is not None:
        inject_lora(model, config, rngs)
    if not obj.own:
        rows, tokens = _bucket_shape(batches, model)
        batches = [pad_batch(b, rows, tokens) for b in batches]
    tx = default_optimizer(steps=steps) if optimizer is None else optimizer
    model.train()
    if scan_layers is not False and not reason:
        trainer = ScannedLoraTrainer(model, tx)
        run_step, finish = trainer.step, trainer.write_back
    else:
        opt = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)
        run_step, finish = (lambda batch: train_step(model, opt, batch)), (lambda: None)
    losses, times = [], []
    start = time.perf_counter()
    for step in tqdm(range(steps), desc="finetune", disable=not progress):
        t0 = time.perf_counter()
        batch = {k: jnp.asarray(v) for k, v in batches[step % len(batches)].items()}
        losses.append(float(run_step(batch)))
        times.append(time.perf_counter() - t0)
    finish()
    seconds = time.perf_counter() - start
    model.eval()
    trainable = trainable_count(model)
    if checkpoint is not None:
        save_adapters(model, checkpoint, {"steps": steps, "final_loss": losses[-1]}, overwrite=True)
    step_seconds = float(np.median(times[1:])) if len(times) > 1 else float(times[0])
    return FinetuneResult(losses, seconds, step_seconds, trainable)
