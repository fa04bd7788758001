"""Flax NNX transformers with real weights, LoRA, the PAGE gradient-energy probe and DomLoRA placement."""

from analytic.lazy import lazy_namespace

# Public names -> defining module, loaded on first access.
_EXPORTS: dict[str, str] = {
    "LoraConfig": "peft_probe.lora",
    "inject_lora": "peft_probe.lora",
    "merge_lora": "peft_probe.lora",
    "unmerge_lora": "peft_probe.lora",
    "export_peft": "peft_probe.lora",
    "finetune": "peft_probe.training",
    "page_scores": "peft_probe.page",
    "dominant_module": "peft_probe.domlora",
    "domlora_config": "peft_probe.domlora",
    "plot_page_heatmap": "peft_probe.page",
}

__getattr__, __dir__, __all__ = lazy_namespace(__name__, _EXPORTS, globals())
