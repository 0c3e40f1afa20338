"""The reply_format suite: built-in data, records and metrics with controlled replies."""

from __future__ import annotations

import pytest

from emoreg.evals.suites import get_suite
from emoreg.evals.suites.base import EvalContext
from emoreg.evals.suites.reply_format import ReplyFormatSuite
from emoreg.models.generation import ReplyGenerationConfig

GOOD = ("Answer: Tacking turns the bow through the wind.\n1. Ease the sheet first.\n2. Push the tiller away.\n"
        "3. Trim on the new side.\nConfidence: high")
FOUR_POINTS = GOOD.replace("Confidence", "4. One more.\nConfidence")


def test_registered_and_builtin_data_loads():
    suite = get_suite("reply_format")
    items = suite.load("requests", suite.builtin_path("requests"))
    assert len(items) == 60 and len({i["id"] for i in items}) == 60
    assert items[0]["id"] == "sailing-1"


def test_records_and_metrics(tiny_llama, tiny_tokenizer, monkeypatch):
    replies = iter([GOOD, FOUR_POINTS, "Sure, here is how.", GOOD + "<|im_end|>"])

    def fake_generate(model, tokenizer, conversations, settings, *, seed, batch_size):
        assert settings.max_new_tokens == 100  # capped by the context
        return [next(replies) for _ in conversations]

    monkeypatch.setattr("emoreg.evals.suites.reply_format.generate_replies", fake_generate)
    suite = ReplyFormatSuite(max_new_tokens=160)
    ctx = EvalContext(model=tiny_llama, tokenizer=tiny_tokenizer, batch_size=3,
                      generation=ReplyGenerationConfig(max_new_tokens=100))
    items = [{"id": str(i), "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(4)]
    records = list(suite.run(ctx, items))
    assert [r["score"] for r in records] == [True, False, False, True]
    assert records[1]["check"]["points_ok"] is False and records[1]["check"]["answer_ok"] is True
    metrics = suite.summarize(records, ctx)
    assert metrics["format_rate"]["value"] == pytest.approx(0.5) and metrics["format_rate"]["n"] == 4
    assert metrics["answer_ok"]["value"] == pytest.approx(0.75)
    assert metrics["confidence_ok"]["value"] == pytest.approx(0.75)
    assert suite.settings(ctx)["generation"]["max_new_tokens"] == 100


def test_runs_with_a_real_tiny_model(tiny_llama, tiny_tokenizer):
    suite = ReplyFormatSuite(max_new_tokens=4)
    ctx = EvalContext(model=tiny_llama, tokenizer=tiny_tokenizer, batch_size=2)
    items = [{"id": "a", "messages": [{"role": "user", "content": "hello"}]}]
    records = list(suite.run(ctx, items))
    assert records[0]["score"] is False and isinstance(records[0]["output"], str)
