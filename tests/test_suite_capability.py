"""The capability suite: perplexity, KL to the base model and multiple-choice accuracy."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from emoreg.errors import ConfigError, DataFormatError
from emoreg.evals.scoring import mean_token_nll
from emoreg.evals.suites.base import EvalContext
from emoreg.evals.suites.capability import (
    NO_BASE_REASON,
    CapabilitySuite,
    bootstrap_ratio_ci,
    read_multiple_choice,
)
from tests.tiny_models import TINY_VOCAB_SIZE


class ConstantLM(nn.Module):
    """A causal LM whose next-token distribution is ``softmax(logits)`` at every position, whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone().float())

    def forward(self, input_ids, attention_mask=None, **kwargs):
        batch, length = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(batch, length, -1))


def byte_id(char: str) -> int:
    """The tiny tokenizer's id of a one-byte character."""
    return 6 + ord(char)


def constant_lm(probabilities: dict[str, float]) -> ConstantLM:
    """Each listed character gets its probability; the rest of the mass is spread over the other tokens."""
    rest = (1.0 - sum(probabilities.values())) / (TINY_VOCAB_SIZE - len(probabilities))
    p = torch.full((TINY_VOCAB_SIZE,), rest, dtype=torch.float64)
    for char, value in probabilities.items():
        p[byte_id(char)] = value
    return ConstantLM(p.log())


def _items(suite, part, rows, tmp_path, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return suite.load(part, path)


def _evaluate(suite, ctx, items):
    records = list(suite.run(ctx, items))
    return records, suite.summarize(records, ctx)


def test_perplexity_equals_a_hand_computation(tmp_path, tiny_tokenizer):
    model = constant_lm({"a": 0.2, "b": 0.1, " ": 0.3})
    log_p = torch.log_softmax(model.logits.detach().double(), -1)
    texts = ["ab ba", "a b", "bbbb a"]
    suite = CapabilitySuite()
    items = _items(suite, "heldout_text", [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)], tmp_path)
    records, metrics = _evaluate(suite, EvalContext(model, tiny_tokenizer, batch_size=2), items)
    total = sum(-float(log_p[byte_id(c)]) for text in texts for c in text[1:])  # the first token is not predicted
    count = sum(len(t) - 1 for t in texts)
    assert metrics["mean_token_nll"]["value"] == pytest.approx(total / count, rel=1e-6)
    assert metrics["perplexity"]["value"] == pytest.approx(math.exp(total / count), rel=1e-6)
    assert metrics["perplexity"]["n"] == 3
    low, high = metrics["perplexity"]["ci"]
    assert low <= metrics["perplexity"]["value"] <= high
    by_id = {r["id"]: r for r in records}
    assert by_id["heldout_text/t1"]["tokens"] == 2
    assert by_id["heldout_text/t1"]["nll_sum"] == pytest.approx(-float(log_p[byte_id(" ")] + log_p[byte_id("b")]))


def test_mean_token_nll_matches_the_shared_scorer_on_a_real_transformer(tmp_path, tiny_llama, tiny_tokenizer):
    texts = ["the water cycle moves water", "tides follow the moon", "a"]
    suite = CapabilitySuite()
    items = _items(suite, "heldout_text", [{"text": t} for t in texts], tmp_path)
    _, metrics = _evaluate(suite, EvalContext(tiny_llama, tiny_tokenizer, batch_size=3), items)
    expected, tokens = mean_token_nll(tiny_llama, tiny_tokenizer, texts)
    assert metrics["mean_token_nll"]["value"] == pytest.approx(expected, rel=1e-5)
    assert metrics["mean_token_nll"]["n"] == 2  # "a" has no predicted token
    assert tokens == sum(len(t) - 1 for t in texts)


def test_multiple_choice_picks_the_answer_a_forced_model_prefers(tmp_path, tiny_tokenizer):
    model = constant_lm({"z": 0.6, " ": 0.3})
    suite = CapabilitySuite()
    rows = [{"id": "right", "question": "Which?", "choices": ["abc", "zz", "qq"], "answer": 1},
            {"id": "wrong", "question": "Which?", "choices": ["zz", "abc"], "answer": "B"}]
    records, metrics = _evaluate(suite, EvalContext(model, tiny_tokenizer), _items(suite, "multiple_choice", rows,
                                                                                   tmp_path))
    by_id = {r["id"]: r for r in records}
    assert by_id["multiple_choice/right"]["predicted"] == 1 and by_id["multiple_choice/right"]["correct"]
    assert by_id["multiple_choice/wrong"]["predicted"] == 0 and not by_id["multiple_choice/wrong"]["correct"]
    assert by_id["multiple_choice/right"]["prompt"] == "Question: Which?\nAnswer:"
    assert metrics["mc_accuracy"]["value"] == 0.5 and metrics["mc_accuracy"]["n"] == 2


def test_summed_and_length_normalised_accuracy_differ_where_they_should(tmp_path, tiny_tokenizer):
    # " aa": log .5 + 2 log .3 = -3.10 (mean -1.03); " b": log .5 + log .1 = -3.00 (mean -1.50)
    model = constant_lm({" ": 0.5, "a": 0.3, "b": 0.1})
    suite = CapabilitySuite()
    rows = [{"question": "Pick", "choices": ["aa", "b"], "answer": 0}]
    records, metrics = _evaluate(suite, EvalContext(model, tiny_tokenizer), _items(suite, "multiple_choice", rows,
                                                                                   tmp_path))
    assert records[0]["predicted"] == 1 and records[0]["predicted_norm"] == 0
    assert records[0]["tokens"] == [3, 2]
    assert metrics["mc_accuracy"]["value"] == 0.0 and metrics["mc_accuracy_norm"]["value"] == 1.0


def test_kl_of_a_model_to_itself_is_zero_and_grows_after_perturbing(tmp_path, tiny_llama, tiny_tokenizer):
    suite = CapabilitySuite()
    items = _items(suite, "heldout_text", [{"text": "tides follow the moon"}, {"text": "water boils at 100 C"}],
                   tmp_path)
    same = copy.deepcopy(tiny_llama)
    _, metrics = _evaluate(suite, EvalContext(tiny_llama, tiny_tokenizer, base_model=same), items)
    assert metrics["kl_to_base"]["value"] == 0.0
    perturbed = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for parameter in perturbed.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    records, metrics = _evaluate(suite, EvalContext(perturbed, tiny_tokenizer, base_model=lambda: tiny_llama), items)
    assert metrics["kl_to_base"]["value"] > 1e-4
    assert all(r["kl_sum"] > 0 for r in records)


def test_kl_equals_the_closed_form_for_constant_distributions(tmp_path, tiny_tokenizer):
    base, model = constant_lm({"a": 0.5, "b": 0.2}), constant_lm({"a": 0.3, "b": 0.4})
    p = torch.softmax(base.logits.detach().double(), -1)
    q = torch.softmax(model.logits.detach().double(), -1)
    expected = float((p * (p.log() - q.log())).sum())
    suite = CapabilitySuite()
    items = _items(suite, "heldout_text", [{"text": "abcabc"}, {"text": "xy"}], tmp_path)
    _, metrics = _evaluate(suite, EvalContext(model, tiny_tokenizer, base_model=base), items)
    assert metrics["kl_to_base"]["value"] == pytest.approx(expected, rel=1e-5)


def test_without_a_base_model_kl_is_left_out_with_a_reason(tmp_path, tiny_llama, tiny_tokenizer):
    suite = CapabilitySuite()
    items = _items(suite, "heldout_text", [{"text": "tides follow the moon"}, {"text": "hello"}], tmp_path)
    records, metrics = _evaluate(suite, EvalContext(tiny_llama, tiny_tokenizer), items)
    notes = [r for r in records if r["part"] == "note"]
    assert notes == [{"id": "capability/note/kl_to_base", "part": "note", "metric": "kl_to_base", "skipped": True,
                      "reason": NO_BASE_REASON}]
    assert "kl_to_base" not in metrics and "perplexity" in metrics
    assert suite.settings(EvalContext(tiny_llama, tiny_tokenizer))["kl_to_base"] is False
    assert suite.settings(EvalContext(tiny_llama, tiny_tokenizer, base_model=tiny_llama))["kl_to_base"] is True


def test_run_reports_progress_and_restores_training_mode(tmp_path, tiny_llama, tiny_tokenizer):
    suite = CapabilitySuite()
    items = (_items(suite, "heldout_text", [{"text": "one two"}] * 3, tmp_path, "t.jsonl")
             + _items(suite, "multiple_choice", [{"question": "q", "choices": ["x", "y"], "answer": 0}], tmp_path))
    done = []
    tiny_llama.train()
    records = list(suite.run(EvalContext(tiny_llama, tiny_tokenizer, batch_size=2, progress=done.append), items))
    assert sum(done) == 4 and tiny_llama.training
    assert sorted(r["id"] for r in records if r["part"] != "note") == sorted(i["id"] for i in items)


def test_answer_formats_and_csv(tmp_path):
    rows = [{"question": "q1", "choices": ["a", "b", "c"], "answer": 2},
            {"question": "q2", "choices": ["a", "b", "c"], "answer": "b"},
            {"question": "q3", "choices": ["a", "b"], "answer": "(A)"},
            {"question": "q4", "choices": ["a", "b"], "answer": "1"}]
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [item["answer"] for item in read_multiple_choice(path)] == [2, 1, 0, 1]
    csv_path = tmp_path / "mc.csv"
    csv_path.write_text('question,A,B,C,D,answer\n"What, exactly?",one,two,three,four,C\nq,x,y,,,A\n')
    items = read_multiple_choice(csv_path)
    assert items[0] == {"id": "0", "question": "What, exactly?", "choices": ["one", "two", "three", "four"],
                        "answer": 2}
    assert items[1]["choices"] == ["x", "y"]


@pytest.mark.parametrize("row, message", [
    ({"choices": ["a", "b"], "answer": 0}, "line 1: missing field 'question'"),
    ({"question": "q", "answer": 0}, "line 1: missing field 'choices'"),
    ({"question": "q", "choices": ["a"], "answer": 0}, "line 1: field 'choices' must be a list of at least two"),
    ({"question": "q", "choices": ["a", "a"], "answer": 0}, "line 1: field 'choices' repeats"),
    ({"question": "q", "choices": ["a", "b"]}, "line 1: missing field 'answer'"),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "line 1: field 'answer' 2 is out of range for 2"),
    ({"question": "q", "choices": ["a", "b"], "answer": "C"}, "line 1: field 'answer' 'C' is out of range"),
    ({"question": "q", "choices": ["a", "b"], "answer": "first"}, "line 1: field 'answer' must be a 0-based"),
    ({"question": "q", "choices": ["a", "b"], "answer": True}, "line 1: field 'answer' must be a 0-based"),
])
def test_bad_multiple_choice_rows(tmp_path, row, message):
    with pytest.raises(DataFormatError, match=message) as error:
        _items(CapabilitySuite(), "multiple_choice", [row], tmp_path)
    assert "data.jsonl" in str(error.value)


def test_bad_heldout_rows_and_parts(tmp_path):
    suite = CapabilitySuite()
    with pytest.raises(DataFormatError, match="line 2: missing field 'text'"):
        _items(suite, "heldout_text", [{"text": "fine"}, {"body": "x"}], tmp_path)
    with pytest.raises(DataFormatError, match="line 2: field 'id' 'a' repeats line 1"):
        _items(suite, "heldout_text", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], tmp_path)
    with pytest.raises(ConfigError, match="no data part 'essays'"):
        suite.load("essays", tmp_path / "data.jsonl")
    with pytest.raises(ConfigError, match="max_length"):
        CapabilitySuite(max_length=1)


def test_builtin_data_loads_with_unique_ids():
    suite = CapabilitySuite()
    items = [item for part in suite.data_parts for item in suite.load(part, suite.builtin_path(part))]
    assert len(items) == 160 and len({item["id"] for item in items}) == 160
    assert {item["part"] for item in items} == {"heldout_text", "multiple_choice"}


def test_bootstrap_interval_is_seeded_and_covers_the_estimate():
    numerators, denominators = [3.0, 10.0, 4.0, 7.0, 1.0], [2.0, 5.0, 3.0, 4.0, 1.0]
    first = bootstrap_ratio_ci(numerators, denominators, seed=3)
    assert first == bootstrap_ratio_ci(numerators, denominators, seed=3)
    assert first != bootstrap_ratio_ci(numerators, denominators, seed=4)
    assert first[0] < sum(numerators) / sum(denominators) < first[1]
    assert all(math.isnan(v) for v in bootstrap_ratio_ci([1.0], [2.0], seed=0))


@pytest.mark.slow
def test_real_model_perplexity_and_accuracy_are_plausible():
    from emoreg.evals.suites.base import limit_items
    from emoreg.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("default")
    suite = CapabilitySuite()
    items = [item for part in suite.data_parts
             for item in limit_items(suite.load(part, suite.builtin_path(part)), 8, seed=0)]
    _, metrics = _evaluate(suite, EvalContext(model, tokenizer, batch_size=8), items)
    assert 2.0 < metrics["perplexity"]["value"] < 40.0  # random weights would give ~49,000
    assert metrics["mc_accuracy_norm"]["n"] == 8
