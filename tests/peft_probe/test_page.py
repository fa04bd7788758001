"""PAGE probe: each variant against an independent computation, shares, one backward pass per batch, outputs."""

from __future__ import annotations

import csv
import io
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import peft_probe.page as page
from peft_probe.lora import ALL_LINEAR, LoraConfig, inject_lora, linear_modules, lora_modules
from peft_probe.page import VARIANTS, page_scores, page_scores_all, plot_page_heatmap
from peft_probe.training import answer_token_loss, per_example_loss
from tests.peft_probe.lora_fixtures import random_batch, tiny_model

CONFIG = LoraConfig(r=4, alpha=8, target_modules=ALL_LINEAR)


def _jnp(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


_all_param_grads = nnx.jit(nnx.grad(answer_token_loss))
_lora_grads = nnx.jit(nnx.grad(answer_token_loss, argnums=nnx.DiffState(0, nnx.LoRAParam)))
_first_example_grads = nnx.jit(nnx.grad(lambda m, b: per_example_loss(m, b)[0]))


def _flat(grads) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}


def _weight_grads(model, batch) -> dict[str, np.ndarray]:
    """dL/dkernel of every linear layer by plain nnx.grad over all parameters (an independent route)."""
    flat = _flat(_all_param_grads(model, _jnp(batch)))
    return {name: flat[name + ".kernel"] for name in linear_modules(model)}


@pytest.fixture(scope="module")
def probe():
    model = tiny_model()
    batches = [random_batch(0), random_batch(1)]
    return model, batches


def test_concrete_variant_equals_autodiff_gradient_of_b(probe):
    model, batches = probe
    scores = page_scores(model, batches, CONFIG, "concrete", seed=5)
    injected = nnx.clone(model)
    inject_lora(injected, CONFIG, 5)  # same seed -> same A for every module
    energy = {name: 0.0 for name in lora_modules(injected)}
    for batch in batches:
        flat = _flat(_lora_grads(injected, _jnp(batch)))
        for name in energy:
            assert np.abs(flat[name + ".lora_A"]).max() == 0.0  # B = 0 => dL/dA = 0
            energy[name] += float((flat[name + ".lora_B"] ** 2).sum()) / len(batches)
    assert {r.name for r in scores.rows} == set(energy)
    for row in scores.rows:
        # The model returns float32 logits (P1's design), so the loss cotangent carries float32 rounding into both
        # routes; 1e-6 relative is far below any ranking difference and far above the ~1e-10 observed.
        assert row.score == pytest.approx(energy[row.name], rel=1e-6)


def test_expectation_variant_matches_monte_carlo_over_a_seeds(probe):
    model, batches = probe
    expected = page_scores(model, batches[:1], CONFIG, "expectation")
    # Each draw of A (r = 4 rows) gives ||s G A^T||^2 = s^2 sum_k a_k^T M a_k with M = G^T G. For iid uniform
    # entries Var(a^T M a) <= 2 sigma^4 tr(M^2) <= 2 (sigma^2 tr M)^2 (uniform has negative excess kurtosis), so
    # the relative standard error of the mean over n draws is <= sqrt(2 / (r n)) = 1.1% for n = 4000; a 5% band
    # is > 4 standard errors even in the worst (rank-1 G) case.
    monte_carlo = page_scores(model, batches[:1], CONFIG, "concrete", seed=1000, num_draws=4000)
    mc = {r.name: r.score for r in monte_carlo.rows}
    for row in expected.rows:
        assert mc[row.name] == pytest.approx(row.score, rel=0.05)


def test_raw_normalized_and_expectation_follow_from_the_weight_gradient(probe):
    model, batches = probe
    grads = [_weight_grads(model, b) for b in batches]
    raw = {n: np.mean([(g[n] ** 2).sum() for g in grads]) for n in grads[0]}
    results = {v: {r.name: r.score for r in page_scores(model, batches, CONFIG, v).rows}
               for v in ("raw", "normalized", "expectation")}
    s2 = CONFIG.scale ** 2
    for name, g in grads[0].items():
        d_in, d_out = g.shape
        assert results["raw"][name] == pytest.approx(raw[name], rel=1e-6)
        assert results["normalized"][name] == pytest.approx(raw[name] / (d_in * d_out), rel=1e-6)
        assert results["expectation"][name] == pytest.approx(s2 * CONFIG.r * raw[name] / (3 * d_in), rel=1e-6)


def test_per_example_variant_is_mean_of_separate_example_gradients(probe):
    model, batches = probe
    batch = batches[0]
    scores = {r.name: r.score for r in page_scores(model, [batch], CONFIG, "per_example").rows}
    total = None
    n = batch["input_ids"].shape[0]
    for i in range(n):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        flat = _flat(_first_example_grads(model, _jnp(one)))
        energy = {name: (flat[name + ".kernel"] ** 2).sum() / n for name in scores}
        total = energy if total is None else {k: total[k] + energy[k] for k in total}
    for name, value in scores.items():
        assert value == pytest.approx(total[name], rel=1e-6)


def test_shares_sum_to_one_and_rows_are_sorted_in_every_variant(probe):
    model, batches = probe
    tables = page_scores_all(model, batches[:1], CONFIG, VARIANTS)
    assert set(tables) == set(VARIANTS)
    for variant, scores in tables.items():
        shares = np.array([r.share for r in scores.rows])
        assert scores.variant == variant
        assert shares.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(shares >= 0) and np.all(np.diff([r.score for r in scores.rows]) <= 0)
        assert len(scores.rows) == 14 and {r.layer for r in scores.rows} == {0, 1}
    single = page_scores(model, batches[:1], CONFIG, "raw")
    assert [r.score for r in single.rows] == [r.score for r in tables["raw"].rows]  # shared pass, same numbers


def test_one_backward_pass_per_batch(probe, monkeypatch):
    from peft_probe import gradient_taps

    model, batches = probe
    calls = {"compiled_calls": 0, "grad_traces": 0}
    original_energies, original_grad = page._page_energies, gradient_taps.jax.grad

    def counting_energies(*args, **kwargs):
        calls["compiled_calls"] += 1
        return original_energies(*args, **kwargs)

    def counting_grad(*args, **kwargs):
        calls["grad_traces"] += 1
        return original_grad(*args, **kwargs)

    monkeypatch.setattr(page, "_page_energies", counting_energies)
    monkeypatch.setattr(gradient_taps.jax, "grad", counting_grad)
    fresh_shape = [random_batch(seed, tokens=10, answer_from=5) for seed in range(4)]  # traced afresh
    page_scores_all(model, fresh_shape, CONFIG, VARIANTS, num_draws=3)
    # one compiled call per batch for all five variants, whose body differentiates once (traced once, reused),
    # however many modules and A draws are scored
    assert calls == {"compiled_calls": 4, "grad_traces": 1}


def test_table_outputs_and_heatmap(probe, tmp_path):
    model, batches = probe
    scores = page_scores(model, batches[:1], CONFIG, "raw")
    data = json.loads(scores.to_json(tmp_path / "s.json"))
    assert data["variant"] == "raw" and len(data["modules"]) == 14
    assert json.loads((tmp_path / "s.json").read_text()) == data
    rows = list(csv.DictReader(io.StringIO(scores.to_csv(tmp_path / "s.csv"))))
    assert [r["name"] for r in rows] == [r.name for r in scores.rows]
    assert float(rows[0]["score"]) == scores.rows[0].score
    layers, types, grid = scores.matrix()
    assert layers == [0, 1] and types[0] == "q_proj" and types[-1] == "down_proj"
    assert np.nansum(grid) == pytest.approx(1.0)
    path = plot_page_heatmap(scores, tmp_path / "heat.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_raise_before_any_work(probe):
    model, batches = probe
    with pytest.raises(ValueError, match="variant"):
        page_scores(model, batches, CONFIG, "fisher")
    with pytest.raises(ValueError, match="empty"):
        page_scores(model, [], CONFIG)
    bad = dict(batches[0], loss_mask=np.zeros_like(batches[0]["loss_mask"]))
    with pytest.raises(ValueError, match="no answer token"):
        page_scores(model, [bad], CONFIG)
    with pytest.raises(ValueError, match="shape"):
        page_scores(model, [dict(batches[0], attention_mask=np.ones((1, 2)))], CONFIG)
    with pytest.raises(TypeError, match="integers"):
        page_scores(model, [dict(batches[0], input_ids=batches[0]["input_ids"] * 0.5)], CONFIG)
    with pytest.raises(ValueError, match="num_draws"):
        page_scores(model, batches, CONFIG, "concrete", num_draws=0)
    adapted = nnx.clone(model)
    inject_lora(adapted, CONFIG, 0)
    with pytest.raises(ValueError, match="already has LoRA"):
        page_scores(adapted, batches, CONFIG)
    assert not lora_modules(model)  # the probe never modifies the model


@pytest.mark.slow
def test_page_on_real_smollm2_scores_all_210_modules():
    weights = pytest.importorskip("peft_probe.weights")
    try:
        _, model = weights.load_gguf()
    except (FileNotFoundError, ModuleNotFoundError) as err:  # the weight package is an optional install
        pytest.skip(f"SmolLM2 weights not installed: {err}")
    from peft_probe.tasks import encode_example, make_task
    from peft_probe.tokenizer import gguf_tokenizer

    example = make_task("arithmetic", 1, 0, seed=0).train[0]
    ids, mask = encode_example(example, gguf_tokenizer(), 64)
    batch = {"input_ids": ids[None], "attention_mask": np.ones_like(ids)[None], "loss_mask": mask[None]}
    scores = page_scores(model, [batch], LoraConfig(r=8, alpha=16, target_modules=ALL_LINEAR), "raw")
    assert len(scores.rows) == 210 == 30 * 7
    values = np.array([r.score for r in scores.rows])
    assert np.all(np.isfinite(values)) and np.all(values > 0)
    assert sum(r.share for r in scores.rows) == pytest.approx(1.0)


def test_default_variant_is_the_papers_empirical_fisher(probe):
    model, batches = probe
    default = page_scores(model, batches[:1], CONFIG)
    assert page.DEFAULT_VARIANT == "per_example" and default.variant == "per_example"
    assert set(page.ABLATIONS) == set(VARIANTS) - {"per_example"}
    explicit = page_scores(model, batches[:1], CONFIG, "per_example")
    assert [r.score for r in default.rows] == [r.score for r in explicit.rows]


def _table(variant, names_in_order):
    rows = [page.ModuleScore(n, 0, n, float(len(names_in_order) - j), 0.0) for j, n in enumerate(names_in_order)]
    return page.PageScores(variant, rows, 1)


def test_variant_agreement_counts_top1_overlap_and_rank_correlation():
    names = ["a", "b", "c", "d"]
    same = {"per_example": _table("per_example", names), "raw": _table("raw", names),
            "reversed": _table("reversed", names[::-1]), "swap": _table("swap", ["b", "a", "c", "d"])}
    second = {"per_example": _table("per_example", names), "raw": _table("raw", ["b", "a", "d", "c"]),
              "reversed": _table("reversed", names[::-1]), "swap": _table("swap", names)}
    out = page.variant_agreement([same, second], k=2)
    assert out["per_example"] == {"top1": 1.0, "top_k_overlap": 1.0, "rank_correlation": 1.0, "probes": 2}
    assert out["raw"]["top1"] == 0.5 and out["raw"]["top_k_overlap"] == 1.0
    # ranks (0,1,2,3) vs (1,0,3,2): Spearman 1 - 6*4/(4*15) = 0.6; averaged with the identical first probe
    assert out["raw"]["rank_correlation"] == pytest.approx((1.0 + 0.6) / 2)
    assert out["reversed"]["top1"] == 0.0 and out["reversed"]["top_k_overlap"] == 0.0
    assert out["reversed"]["rank_correlation"] == pytest.approx(-1.0)
    assert out["swap"]["top1"] == 0.5


def test_variant_agreement_rejects_missing_reference_and_mismatched_modules():
    with pytest.raises(ValueError, match="empty"):
        page.variant_agreement([])
    with pytest.raises(ValueError, match="reference"):
        page.variant_agreement([{"raw": _table("raw", ["a", "b"])}])
    with pytest.raises(ValueError, match="different modules"):
        page.variant_agreement([{"per_example": _table("per_example", ["a", "b"]), "raw": _table("raw", ["a", "c"])}])
    with pytest.raises(ValueError, match="k must be"):
        page.variant_agreement([{"per_example": _table("per_example", ["a"])}], k=0)
