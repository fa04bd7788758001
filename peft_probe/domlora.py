"""DomLoRA: one LoRA adapter on the dominant adaptation module that PAGE finds.

Zhang et al., 2026 (arXiv 2605.06183): PAGE concentrates on one (shallow FFN down-projection) module; DomLoRA puts a
single adapter of the usual rank there, about 0.7% of all-linear LoRA's trainable parameters on SmolLM2-135M.
The result is an ordinary ``LoraConfig`` (PEFT: ``target_modules=["down_proj"], layers_to_transform=[l*]``).
"""

from __future__ import annotations

from peft_probe.lora import LoraConfig
from peft_probe.page import ModuleScore, PageScores

__all__ = ["dominant_module", "domlora_config", "top_k_config"]


def _check(scores: PageScores) -> None:
    if not isinstance(scores, PageScores):
        raise TypeError(f"scores must be the PageScores that page_scores returns, got {type(scores).__name__}")
    if not scores.rows:
        raise ValueError("scores has no modules")


def dominant_module(scores: PageScores) -> ModuleScore:
    """The module with the highest PAGE (ties: shallower layer, then name)."""
    _check(scores)
    return scores.rows[0]


def domlora_config(scores: PageScores, r: int = 8, alpha: float | None = None, dropout: float = 0.0) -> LoraConfig:
    """A ``LoraConfig`` with one adapter at the dominant module (``alpha`` defaults to ``2 r``)."""
    best = dominant_module(scores)
    same_suffix = [row for row in scores.rows if row.layer == best.layer and row.name.endswith("." + best.module)]
    if best.layer < 0 or len(same_suffix) > 1:
        # outside the layer stack a suffix + layer index cannot name it, nor where the suffix is shared (BERT's
        # attention.output.dense, intermediate.dense and output.dense all end in "dense"); an exact regex can
        return LoraConfig(r=r, alpha=2.0 * r if alpha is None else alpha, target_modules=best.name.replace(".", r"\."),
                          dropout=dropout)
    return LoraConfig(r=r, alpha=2.0 * r if alpha is None else alpha, target_modules=(best.module,),
                      layers_to_transform=(best.layer,), dropout=dropout)


def top_k_config(scores: PageScores, k: int, r: int = 8, alpha: float | None = None, dropout: float = 0.0
                 ) -> LoraConfig:
    """Adapters on the ``k`` highest-PAGE modules (the paper's top-k baseline), as an exact-name regex."""
    _check(scores)
    if not 1 <= k <= len(scores.rows):
        raise ValueError(f"k must be in [1, {len(scores.rows)}], got {k}")
    pattern = "|".join(row.name.replace(".", r"\.") for row in scores.rows[:k])
    return LoraConfig(r=r, alpha=2.0 * r if alpha is None else alpha, target_modules=f"(?:{pattern})",
                      dropout=dropout)
