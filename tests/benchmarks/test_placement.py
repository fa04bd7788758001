"""The placement study's runner: every (placement, lr, seed) run, equal-step and equal-time readings, resume."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import placement
from peft_probe.models.llama import LlamaConfig, LlamaForCausalLM

SETTINGS = {"tasks": ["arithmetic"], "lrs": [1e-2], "seeds": 2, "steps": 4, "eval_every": 2, "batch": 2,
            "max_len": 48, "rank": 2, "alpha": 4.0, "n_val": 4, "n_test": 4, "generate": 2,
            "max_steps_factor": 2.0, "page_variant": "per_example"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 2-layer random Llama with SmolLM2's vocabulary and tokenizer (fast, and real text in and out)."""
    from peft_probe.tokenizer import gguf_tokenizer

    config = LlamaConfig.tiny(vocab_size=49152, hidden_size=32, intermediate_size=64, max_position_embeddings=512,
                              dtype=jnp.float32, param_dtype=jnp.float32)
    base = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
    runs_dir = tmp_path_factory.mktemp("runs")
    tokenizer = gguf_tokenizer()
    return base, tokenizer, runs_dir, placement.run_study(base, tokenizer, SETTINGS, runs_dir)


def test_every_run_is_done_and_read_at_equal_steps_and_equal_time(study):
    base, _, runs_dir, (runs, pages, budgets) = study
    names = ["all_linear", "domlora", "page_top2", "page_top4", "attention_only", "random_single",
             "deepest_down_proj"]
    assert sorted({r["placement"] for r in runs}) == sorted(names) and len(runs) == 7 * 2
    assert len(list(runs_dir.rglob("seed=*.json"))) == 14
    by = {(r["placement"], r["seed"]): r["result"] for r in runs}
    # r (d_in + d_out) per module: q, o 32 -> 32; k, v 32 -> 16; gate, up 32 -> 64; down 64 -> 32; 2 layers
    per_layer = {"q": 64, "k": 48, "v": 48, "o": 64, "gate": 96, "up": 96, "down": 96}
    assert by["all_linear", 0]["trainable"] == 2 * 2 * sum(per_layer.values())
    assert by["domlora", 0]["trainable"] in {2 * d for d in per_layer.values()}
    assert budgets["arithmetic"] > 0
    for (name, _), result in by.items():
        steps = [c["step"] for c in result["curve"]]
        assert steps[0] == 0 and 4 in steps and result["steps_run"] <= 8
        assert set(result["generation"]) == {"equal_steps", "equal_time"}
        assert 0.0 <= result["generation"]["equal_steps"] <= 1.0
        if name == "all_linear":
            assert result["steps_run"] == 4  # it sets the time budget, so it stops at the step budget
        elif result["steps_run"] > 4:  # a run past the step budget stopped on the time budget
            assert result["curve"][-1]["train_s"] >= budgets["arithmetic"] or result["steps_run"] == 8
    summary = placement.summarize(runs, 4, budgets["arithmetic"])
    assert len(summary) == 14 and {s["reading"] for s in summary} == {"equal_steps", "equal_time"}
    for row in summary:
        assert row["seeds"] == 2 and row["test_loss"] > 0 and row["test_loss_std"] >= 0
        assert np.isfinite(row["late_relative_improvement"])
    steps_at = {(s["placement"], s["reading"]): s["steps"] for s in summary}
    assert steps_at["all_linear", "equal_steps"] == steps_at["all_linear", "equal_time"] == 4


def test_a_restart_runs_only_what_is_missing_and_refuses_other_settings(study, monkeypatch):
    base, tokenizer, runs_dir, (runs, _, _) = study
    missing = runs_dir / "arithmetic" / "domlora" / "lr=0.01" / "seed=1.json"
    kept = json.loads((runs_dir / "arithmetic" / "page_top2" / "lr=0.01" / "seed=0.json").read_text())
    missing.unlink()
    calls = []
    original = placement.run_one
    monkeypatch.setattr(placement, "run_one", lambda *a, **k: calls.append(k["seed"]) or original(*a, **k))
    again, _, _ = placement.run_study(base, tokenizer, SETTINGS, runs_dir)
    assert calls == [1] and missing.exists()
    assert next(r for r in again if r["placement"] == "page_top2" and r["seed"] == 0)["result"] == kept
    redone = next(r for r in again if r["placement"] == "domlora" and r["seed"] == 1)["result"]
    first = next(r for r in runs if r["placement"] == "domlora" and r["seed"] == 1)["result"]
    # deterministic given the seed, up to the step budget (how far past it a run goes depends on the clock)
    assert redone["train_losses"][:4] == pytest.approx(first["train_losses"][:4], rel=1e-6)
    with pytest.raises(SystemExit, match="other settings"):
        placement.run_study(base, tokenizer, dict(SETTINGS, steps=5), runs_dir)


def test_summarize_only_reads_the_finished_placements(study, tmp_path):
    base, _, runs_dir, (runs, _, budgets) = study
    finished, _, read_budgets = placement.finished_runs(SETTINGS, runs_dir)
    assert read_budgets == pytest.approx(budgets)
    assert {(r["placement"], r["seed"]) for r in finished} == {(r["placement"], r["seed"]) for r in runs}
    assert finished[0]["placement"] == "all_linear" and finished[0]["result"]["adapted"]
    (runs_dir / "arithmetic" / "random_single" / "lr=0.01" / "seed=0.json").unlink()  # an unfinished placement
    partial, _, _ = placement.finished_runs(SETTINGS, runs_dir)
    assert "random_single" not in {r["placement"] for r in partial} and len(partial) == len(finished) - 2
    with pytest.raises(SystemExit, match="no runs made with these settings"):
        placement.finished_runs(dict(SETTINGS, seeds=3), runs_dir)
