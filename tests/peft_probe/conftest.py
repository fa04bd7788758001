"""Session-wide real models for tests/peft_probe: each is loaded once per test run (loading costs seconds)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def smollm2() -> tuple[Any, Any, Any]:
    """(LlamaConfig, LlamaForCausalLM, tokenizer) of SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32."""
    from peft_probe.tokenizer import gguf_tokenizer
    from peft_probe.weights import load_gguf

    config, model = load_gguf()
    return config, model, gguf_tokenizer()


@pytest.fixture(scope="session")
def minilm() -> tuple[Any, Any, Any]:
    """(BertConfig, BertModel, tokenizer) of all-MiniLM-L6-v2 from its safetensors."""
    from peft_probe.tokenizer import bert_tokenizer
    from peft_probe.weights import load_safetensors

    config, model = load_safetensors()
    return config, model, bert_tokenizer()
