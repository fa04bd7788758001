"""Tokenizers for the bundled models, built from local files only (no hub access, no torch).

``transformers.AutoTokenizer.from_pretrained(dir, gguf_file=...)`` would be the usual route for the GGUF, but in
transformers 5 its GGUF reader imports torch, which this project keeps out. The GGUF header carries everything a
byte-level BPE needs (vocabulary, merges, token types, special ids, chat template), so the tokenizer is rebuilt
from it with the ``tokenizers`` library and wrapped as a ``PreTrainedTokenizerFast`` (chat templates, padding,
batch decoding). SmolLM2's pre-tokenizer (GGUF ``tokenizer.ggml.pre = "smollm"``) splits every digit on its own
before GPT-2's byte-level regex, as its HF ``tokenizer.json`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft_probe import weights

_CONTROL = 3  # llama.cpp token type of special tokens such as <|im_start|>

# GGUF pre-tokenizer names whose split is "each digit alone, then the GPT-2 byte-level regex".
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}


def _strings(reader: Any, name: str) -> list[str]:
    field = reader.fields[name]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]  # 100x faster than field.contents()


def gguf_tokenizer(path: str | Path | None = None) -> Any:
    """``PreTrainedTokenizerFast`` for a byte-level BPE GGUF (default: the bundled SmolLM2-135M-Instruct).

    Adds no BOS token, as SmolLM2's HF tokenizer does not; ``apply_chat_template`` uses the GGUF's template.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    reader = weights.gguf_reader(None if path is None else Path(path))
    kind = weights.gguf_field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model is {kind!r}; only byte-level BPE ('gpt2') is supported")
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _strings(reader, "tokenizer.ggml.merges")]
    types = list(reader.fields["tokenizer.ggml.token_type"].contents())
    bpe = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pre = weights.gguf_field(reader, "tokenizer.ggml.pre", "default")
    bpe.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if pre in _DIGITS_THEN_GPT2 else byte_level)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == _CONTROL])

    def special(key: str) -> str | None:
        index = weights.gguf_field(reader, f"tokenizer.ggml.{key}_token_id")
        return None if index is None else tokens[int(index)]

    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=special("bos"), eos_token=special("eos"), pad_token=special("padding"),
        unk_token=special("unknown"), chat_template=weights.gguf_field(reader, "tokenizer.chat_template"))


def bert_tokenizer(path: str | Path | None = None) -> Any:
    """WordPiece tokenizer from a local model folder (default: the bundled all-MiniLM-L6-v2)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(path) if path is not None else weights.minilm_dir()),
                                         local_files_only=True)
