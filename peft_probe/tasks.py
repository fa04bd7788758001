"""Offline fine-tuning tasks in the four families of Zhang et al., 2026 (arXiv 2605.06183), generated from a seed.

The paper evaluates DomLoRA on instruction following, math, code and multi-turn chat. Nothing may be downloaded
here, so each family is a small seeded generator with an automatic metric:

- ``instruction``: format-constrained instructions (uppercase repeats, sorting, JSON, counting, reversing), checked
  by the constraint itself (JSON parsed, exact text otherwise);
- ``arithmetic``: two-step word problems, answered ``"7 + 5 - 3 = 9"``; right iff the last integer is the answer;
- ``code``: small Python functions, right iff the prediction passes the hidden asserts when executed in a separate
  Python process with a timeout (``python -I``, no shared state);
- ``dialogue``: a multi-turn chat that states facts, then asks to recall one; normalized exact match.

Prompts use ChatML (SmolLM2-Instruct's template, without a system turn to keep sequences short). ``encode_example``
returns token ids and a loss mask over the answer tokens; ``make_batches`` pads them into the dict batches that
``page_scores`` and ``finetune`` take.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["FAMILIES", "Example", "Task", "make_task", "score", "evaluate", "chat_prompt", "ByteTokenizer",
           "encode_example", "make_batches", "run_python_tests"]

FAMILIES = ("instruction", "arithmetic", "code", "dialogue")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


class Example(NamedTuple):
    messages: tuple[dict[str, str], ...]   # chat so far, ending with the user's turn
    answer: str                            # reference assistant reply
    check: dict[str, Any]                  # what the family's metric needs (kind, tests, expected value)


class Task(NamedTuple):
    family: str
    train: list[Example]
    eval: list[Example]


_WORDS = ("apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "rocket", "garden", "silver", "planet",
          "candle", "forest", "mirror", "winter", "orange", "bridge", "pencil", "dragon", "castle")
_NAMES = ("Ana", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kim", "Leo")
_ITEMS = ("apples", "books", "coins", "marbles", "stamps", "cards", "pens", "shells")
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")
_CITIES = ("Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Quito", "Rome", "Seoul")
_PETS = ("cat", "dog", "parrot", "rabbit", "turtle", "hamster")


def _user(text: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": text},)


def _instruction(rng: np.random.Generator) -> Example:
    kind = rng.integers(5)
    word = str(rng.choice(_WORDS))
    if kind == 0:
        n = int(rng.integers(2, 5))
        prompt = f"Write the word {word} in uppercase, {n} times, separated by commas."
        return Example(_user(prompt), ", ".join([word.upper()] * n), {"kind": "exact"})
    if kind == 1:
        words = [str(w) for w in rng.choice(_WORDS, 3, replace=False)]
        prompt = f"Sort these words alphabetically, separated by spaces: {' '.join(words)}"
        return Example(_user(prompt), " ".join(sorted(words)), {"kind": "exact"})
    if kind == 2:
        value = int(rng.integers(0, 100))
        prompt = f'Reply with a JSON object whose key "{word}" has the value {value}.'
        return Example(_user(prompt), json.dumps({word: value}), {"kind": "json", "value": {word: value}})
    if kind == 3:
        prompt = f"How many letters are in the word {word}? Reply with the number only."
        return Example(_user(prompt), str(len(word)), {"kind": "exact"})
    prompt = f"Write the word {word} backwards. Reply with that only."
    return Example(_user(prompt), word[::-1], {"kind": "exact"})


def _arithmetic(rng: np.random.Generator) -> Example:
    name, item = str(rng.choice(_NAMES)), str(rng.choice(_ITEMS))
    a, b = int(rng.integers(2, 20)), int(rng.integers(2, 20))
    if rng.integers(2):
        c = int(rng.integers(1, a + b))
        text = f"{name} has {a} {item}, gets {b} more and gives away {c}. How many {item} does {name} have now?"
        return Example(_user(text), f"{a} + {b} - {c} = {a + b - c}", {"kind": "number", "value": a + b - c})
    c = int(rng.integers(2, 6))
    text = f"{name} has {c} bags with {a} {item} each and finds {b} more. How many {item} in total?"
    return Example(_user(text), f"{c} * {a} + {b} = {c * a + b}", {"kind": "number", "value": c * a + b})


_CODE_SPECS: tuple[tuple[str, str, Callable[[int], tuple[str, list[tuple[Any, Any]]]]], ...] = (
    ("add_{k}", "returns x plus {k}", lambda k: (f"x + {k}", [(x, x + k) for x in (0, 3, -7)])),
    ("times_{k}", "returns x times {k}", lambda k: (f"x * {k}", [(x, x * k) for x in (0, 2, -5)])),
    ("square_plus_{k}", "returns x squared plus {k}", lambda k: (f"x * x + {k}", [(x, x * x + k) for x in (0, 3, -4)])),
    ("mod_{k}", "returns the remainder of x divided by {k}", lambda k: (f"x % {k}", [(x, x % k) for x in (0, 7, 23)])),
    ("is_above_{k}", "returns True if x is greater than {k}, else False",
     lambda k: (f"x > {k}", [(k - 1, False), (k, False), (k + 1, True)])),
    ("minus_{k}", "returns x minus {k}", lambda k: (f"x - {k}", [(x, x - k) for x in (0, 5, -2)])),
    ("at_least_{k}", "returns the larger of x and {k}",
     lambda k: (f"max(x, {k})", [(x, max(x, k)) for x in (0, k, 99)])),
    ("at_most_{k}", "returns the smaller of x and {k}",
     lambda k: (f"min(x, {k})", [(x, min(x, k)) for x in (0, k, 99)])),
    ("div_{k}", "returns x divided by {k}, rounded down", lambda k: (f"x // {k}", [(x, x // k) for x in (0, 17, 100)])),
)


def _code(rng: np.random.Generator) -> Example:
    name_t, what_t, body = _CODE_SPECS[int(rng.integers(len(_CODE_SPECS)))]
    k = int(rng.integers(2, 60))
    name = name_t.format(k=k)
    expr, cases = body(k)
    prompt = f"Write a Python function {name}(x) that {what_t.format(k=k)}. Reply with code only."
    tests = [f"assert {name}({x!r}) == {y!r}" for x, y in cases]
    return Example(_user(prompt), f"def {name}(x):\n    return {expr}", {"kind": "python", "tests": tests})


def _dialogue(rng: np.random.Generator) -> Example:
    facts = {"name": str(rng.choice(_NAMES)), "favourite colour": str(rng.choice(_COLOURS)),
             "city": str(rng.choice(_CITIES)), "pet": str(rng.choice(_PETS))}
    order = [str(k) for k in rng.permutation(list(facts))[:2]]  # two facts keep a chat within 64 tokens
    acks = ("Got it.", "Nice!", "Noted.", "Thanks for telling me.")
    messages: list[dict[str, str]] = []
    for key in order:
        messages.append({"role": "user", "content": f"My {key} is {facts[key]}."})
        messages.append({"role": "assistant", "content": str(rng.choice(acks))})
    asked = order[int(rng.integers(len(order)))]
    messages.append({"role": "user", "content": f"What is my {asked}? Answer with one word."})
    return Example(tuple(messages), facts[asked], {"kind": "exact"})


_GENERATORS = {"instruction": _instruction, "arithmetic": _arithmetic, "code": _code, "dialogue": _dialogue}


def make_task(family: str, n_train: int = 200, n_eval: int = 50, seed: int = 0) -> Task:
    """``n_train`` + ``n_eval`` seeded examples of ``family``; eval prompts never repeat a train prompt."""
    if family not in _GENERATORS:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if n_train < 0 or n_eval < 0:
        raise ValueError(f"n_train and n_eval must be >= 0, got {n_train}, {n_eval}")
    rng = np.random.default_rng([seed, FAMILIES.index(family)])
    train = [_GENERATORS[family](rng) for _ in range(n_train)]
    seen = {chat_prompt(ex.messages) for ex in train}
    held_out: list[Example] = []
    for _ in range(100 * n_eval + 100):
        if len(held_out) == n_eval:
            break
        ex = _GENERATORS[family](rng)
        if chat_prompt(ex.messages) not in seen:
            held_out.append(ex)
            seen.add(chat_prompt(ex.messages))
    if len(held_out) < n_eval:
        raise ValueError(f"family {family!r} has too few distinct prompts for n_eval={n_eval}")
    return Task(family, train, held_out)


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(".!").strip()).lower()


def run_python_tests(code: str, tests: Sequence[str], timeout: float = 5.0) -> bool:
    """True iff ``code`` followed by ``tests`` exits cleanly in a fresh isolated Python within ``timeout`` s."""
    program = code + "\n\n" + "\n".join(tests) + "\n"
    try:
        done = subprocess.run([sys.executable, "-I", "-c", program], capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def score(example: Example, prediction: str, timeout: float = 5.0) -> float:
    """1.0 if ``prediction`` (the generated reply, end token stripped) is right for ``example``, else 0.0."""
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str, got {type(prediction).__name__}")
    prediction = prediction.split(IM_END, 1)[0]
    kind = example.check["kind"]
    if kind == "exact":
        return float(_normalize(prediction) == _normalize(example.answer))
    if kind == "json":
        try:
            return float(json.loads(prediction.strip()) == example.check["value"])
        except json.JSONDecodeError:
            return 0.0
    if kind == "number":
        numbers = re.findall(r"-?\d+", prediction)
        return float(bool(numbers) and int(numbers[-1]) == example.check["value"])
    if kind == "python":
        code = re.sub(r"^```(?:python)?\n|```\s*$", "", prediction.strip())
        return float(run_python_tests(code, example.check["tests"], timeout))
    raise ValueError(f"unknown check kind {kind!r}")


def evaluate(examples: Sequence[Example], predictions: Sequence[str], timeout: float = 5.0) -> float:
    """Mean ``score`` over paired examples and predictions."""
    if len(examples) != len(predictions) or not examples:
        raise ValueError(f"need as many predictions as examples (> 0), got {len(predictions)} and {len(examples)}")
    return float(np.mean([score(e, p, timeout) for e, p in zip(examples, predictions)]))


def chat_prompt(messages: Sequence[dict[str, str]]) -> str:
    """ChatML text of ``messages`` followed by the assistant header (generation prompt)."""
    turns = [f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages]
    return "".join(turns) + f"{IM_START}assistant\n"


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 plus ``<|im_start|>`` 256, ``<|im_end|>`` 257, pad 258 (for tiny test models)."""

    vocab_size = 259
    pad_id = 258
    _SPECIAL = {IM_START: 256, IM_END: 257}

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in re.split(f"({re.escape(IM_START)}|{re.escape(IM_END)})", text):
            ids.extend([self._SPECIAL[part]] if part in self._SPECIAL else part.encode())
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        inverse = {v: k for k, v in self._SPECIAL.items()}
        out, buf = [], bytearray()
        for i in ids:
            if int(i) < 256:
                buf.append(int(i))
                continue
            out.append(buf.decode(errors="replace"))
            buf = bytearray()
            out.append(inverse.get(int(i), ""))
        out.append(buf.decode(errors="replace"))
        return "".join(out)


def _encode(tokenizer: Any, text: str) -> list[int]:
    try:
        out = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        out = tokenizer.encode(text)
    return list(getattr(out, "ids", out))


def encode_example(example: Example, tokenizer: Any, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of prompt + answer + ``<|im_end|>`` and a mask that is 1 on the answer (and end) tokens.

    A prompt too long for ``max_len`` loses its oldest tokens; an answer that alone does not fit is an error.
    """
    prompt = _encode(tokenizer, chat_prompt(example.messages))
    answer = _encode(tokenizer, example.answer + IM_END)
    if len(answer) + 1 > max_len:
        raise ValueError(f"answer of {len(answer)} tokens does not fit max_len={max_len}: {example.answer!r}")
    prompt = prompt[-(max_len - len(answer)):]
    ids = np.asarray(prompt + answer, np.int32)
    mask = np.concatenate([np.zeros(len(prompt), np.int32), np.ones(len(answer), np.int32)])
    return ids, mask


def make_batches(examples: Sequence[Example], tokenizer: Any, batch_size: int, max_len: int, pad_id: int = 0,
                 seed: int | None = None, fixed_length: bool = True) -> list[dict[str, np.ndarray]]:
    """Right-padded batches ``{"input_ids", "attention_mask", "loss_mask"}`` of ``(b, t)`` int32; ``t = max_len``
    (one shape, so a jitted step compiles once) or, without ``fixed_length``, the batch's longest example;
    ``seed`` shuffles the order first."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = np.arange(len(examples))
    if seed is not None:
        order = np.random.default_rng(seed).permutation(order)
    encoded = [encode_example(examples[i], tokenizer, max_len) for i in order]
    batches = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        t = max_len if fixed_length else max(len(ids) for ids, _ in chunk)
        ids = np.full((len(chunk), t), pad_id, np.int32)
        attention, loss = np.zeros((len(chunk), t), np.int32), np.zeros((len(chunk), t), np.int32)
        for row, (x, m) in enumerate(chunk):
            ids[row, :len(x)], attention[row, :len(x)], loss[row, :len(x)] = x, 1, m
        batches.append({"input_ids": ids, "attention_mask": attention, "loss_mask": loss})
    return batches
