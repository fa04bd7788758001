"""Offline task families: seeded generation, metrics on known right and wrong answers, encoding and batching."""

from __future__ import annotations

import numpy as np
import pytest

from peft_probe.tasks import (
    FAMILIES,
    IM_END,
    ByteTokenizer,
    chat_prompt,
    encode_example,
    evaluate,
    make_batches,
    make_task,
    run_python_tests,
    score,
)


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_is_seeded_and_eval_is_held_out(family):
    a, b, c = make_task(family, 40, 10, seed=3), make_task(family, 40, 10, seed=3), make_task(family, 40, 10, seed=4)
    assert a == b
    assert a.train != c.train
    train_prompts = {chat_prompt(e.messages) for e in a.train}
    assert not any(chat_prompt(e.messages) in train_prompts for e in a.eval)
    assert len(a.train) == 40 and len(a.eval) == 10


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_answers_score_one_and_wrong_answers_zero(family):
    task = make_task(family, 0, 12, seed=0)
    assert evaluate(task.eval, [e.answer for e in task.eval]) == 1.0
    assert evaluate(task.eval, ["I do not know."] * 12) == 0.0
    # another example's answer is wrong, except by coincidence (same number, same recalled fact)
    shifted = [task.eval[(i + 1) % 12].answer for i in range(12)]
    assert evaluate(task.eval, shifted) < 0.5


def test_metric_details_on_hand_written_predictions():
    arithmetic = make_task("arithmetic", 0, 1, seed=0).eval[0]
    value = arithmetic.check["value"]
    assert score(arithmetic, f"So the total is {value}.") == 1.0
    assert score(arithmetic, f"{value} ... no wait, {value + 1}") == 0.0  # the last number counts
    instruction = next(e for e in make_task("instruction", 0, 40, seed=0).eval if e.check["kind"] == "json")
    key, val = next(iter(instruction.check["value"].items()))
    assert score(instruction, f'{{ "{key}" : {val} }}') == 1.0  # any valid JSON with that content
    assert score(instruction, f'{{"{key}": "{val}"}}') == 0.0  # a string is not the number
    assert score(instruction, "{not json") == 0.0
    dialogue = make_task("dialogue", 0, 1, seed=0).eval[0]
    assert score(dialogue, f"  {dialogue.answer.upper()}.{IM_END}garbage") == 1.0


def test_code_metric_executes_in_a_separate_process():
    example = next(e for e in make_task("code", 0, 30, seed=0).eval if e.answer.split("(")[0].startswith("def add"))
    assert score(example, example.answer) == 1.0
    assert score(example, f"```python\n{example.answer}\n```") == 1.0
    name = example.answer.split("(")[0].removeprefix("def ")
    assert score(example, f"def {name}(x):\n    return x") == 0.0          # wrong result
    assert score(example, f"def {name}(x) return x") == 0.0                # syntax error
    assert score(example, "def other(x):\n    return x") == 0.0            # wrong name
    assert not run_python_tests("while True:\n    pass", ["assert True"], timeout=1.0)  # timeout -> wrong
    assert run_python_tests("x = 1", ["assert x == 1"])


def test_encode_masks_exactly_the_answer_and_end_token():
    tok = ByteTokenizer()
    example = make_task("arithmetic", 1, 0, seed=0).train[0]
    ids, mask = encode_example(example, tok, 256)
    assert tok.decode(ids.tolist()) == chat_prompt(example.messages) + example.answer + IM_END
    assert tok.decode(ids[mask == 1].tolist()) == example.answer + IM_END
    assert mask[: int(np.argmax(mask))].sum() == 0 and mask[int(np.argmax(mask)):].all()
    short_ids, short_mask = encode_example(example, tok, 40)  # the prompt loses its oldest tokens
    assert len(short_ids) == 40 and tok.decode(short_ids[short_mask == 1].tolist()) == example.answer + IM_END
    with pytest.raises(ValueError, match="does not fit"):
        encode_example(example, tok, 5)


def test_batches_are_padded_to_one_shape():
    tok = ByteTokenizer()
    task = make_task("dialogue", 5, 0, seed=0)
    batches = make_batches(task.train, tok, 2, 200, pad_id=tok.pad_id, seed=0)
    assert [b["input_ids"].shape for b in batches] == [(2, 200), (2, 200), (1, 200)]
    for b in batches:
        lengths = b["attention_mask"].sum(1)
        for row, n in enumerate(lengths):
            assert (b["input_ids"][row, n:] == tok.pad_id).all() and b["loss_mask"][row, n:].sum() == 0
    total_answer = sum(int(b["loss_mask"].sum()) for b in batches)
    assert total_answer == sum(len(e.answer.encode()) + 1 for e in task.train)  # answer bytes + <|im_end|>


@pytest.mark.parametrize(("call", "match"), [
    (lambda: make_task("poetry"), "family"), (lambda: make_task("code", -1, 2), "n_train"),
    (lambda: make_batches([], ByteTokenizer(), 0, 10), "batch_size"),
    (lambda: evaluate([], []), "as many"), (lambda: score(make_task("code", 0, 1).eval[0], 3), "str"),
])
def test_bad_arguments_raise(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
