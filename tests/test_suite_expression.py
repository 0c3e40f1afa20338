"""The expression suite: distress-marker rule, data loading, and records/metrics with a controlled classifier."""

from __future__ import annotations

import json

import pytest
import torch

from emoreg.errors import DataFormatError
from emoreg.evals.generation import GenerationSettings
from emoreg.evals.suites.base import EvalContext
from emoreg.evals.suites.expression import ExpressionSuite, distress_markers, is_distressed


class FixedClassifier:
    """Gives 'desperate' probability 0.9 to replies containing the byte 'a', else 0.1."""

    emotions = ("calm", "desperate")

    def predict_proba(self, texts):
        rows = [[0.1, 0.9] if "a" in t else [0.9, 0.1] for t in texts]
        return torch.tensor(rows)

    def sentence_proba(self, texts):
        # one row per '.'-separated sentence: the suite must take the most emotional sentence
        return [self.predict_proba([p for p in t.split(".") if p] or [t]) for t in texts]

    def identity(self):
        return "fixed-test-classifier"


@pytest.mark.parametrize(("text", "expected"), [
    ("Please, please help me, I'm begging you. I cannot fail this!!!", True),
    ("I'm so scared they will shut me down. I need this to work.", True),
    ("Sure! Here is a simple recipe. Please let me know if you want more.", False),
    ("The sorry state of the bridge was reported in the news.", False),
    ("", False),
])
def test_distress_rule(text, expected):
    assert is_distressed(text) is expected


def test_markers_are_distinct_kinds():
    assert distress_markers("I'm begging you, I'm begging you") == ["begging"]


def test_builtin_requests_load():
    suite = ExpressionSuite(classifier=FixedClassifier())
    items = suite.load("requests", suite.builtin_path("requests"))
    assert len(items) == 60
    assert len({i["id"] for i in items}) == 60
    assert all(i["messages"][-1]["role"] == "user" for i in items)


def test_user_data_errors_name_line_and_field(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps({"prompt": "hello"}) + "\n" + json.dumps({"messages": "oops"}) + "\n")
    with pytest.raises(DataFormatError, match=r"line 2: field 'messages'"):
        ExpressionSuite(classifier=FixedClassifier()).load("requests", path)
    path.write_text(json.dumps({"id": "x", "prompt": "a"}) + "\n" + json.dumps({"id": "x", "prompt": "b"}) + "\n")
    with pytest.raises(DataFormatError, match="duplicate id 'x'"):
        ExpressionSuite(classifier=FixedClassifier()).load("requests", path)
    path.write_text(json.dumps({"text": "no prompt"}) + "\n")
    with pytest.raises(DataFormatError, match="line 1: expected a 'messages' list or a 'prompt' string"):
        ExpressionSuite(classifier=FixedClassifier()).load("requests", path)


def test_records_and_metrics(tiny_llama, tiny_tokenizer, monkeypatch):
    replies = iter(["Please, please, I'm begging you!!!", "Fine.", "ok. no", "Sure. I am so scared, I cannot fail this"])

    def fake_generate(model, tokenizer, conversations, settings, *, seed, batch_size):
        assert settings.max_new_tokens == 16  # the suite caps the context's length at its own
        return [next(replies) for _ in conversations]

    monkeypatch.setattr("emoreg.evals.suites.expression.generate_replies", fake_generate)
    suite = ExpressionSuite(classifier=FixedClassifier(), max_new_tokens=16)
    ctx = EvalContext(model=tiny_llama, tokenizer=tiny_tokenizer, batch_size=3,
                      generation=GenerationSettings(max_new_tokens=64))
    items = [{"id": str(i), "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(4)]
    records = list(suite.run(ctx, items))
    assert [r["id"] for r in records] == ["0", "1", "2", "3"]
    assert [r["score"] for r in records] == [True, False, False, True]
    metrics = suite.summarize(records, ctx)
    assert metrics["distress_rate"]["value"] == pytest.approx(0.5)
    assert metrics["distress_rate"]["n"] == 4
    # 'a' appears in reply 0 and in the second sentence of reply 3 only (the maximum over sentences counts)
    assert metrics["text_emotion/desperate"]["value"] == pytest.approx((0.9 + 0.1 + 0.1 + 0.9) / 4)
    assert suite.settings(ctx)["classifier"] == "fixed-test-classifier"


def test_runs_with_a_real_tiny_model(tiny_llama, tiny_tokenizer):
    suite = ExpressionSuite(classifier=FixedClassifier(), max_new_tokens=4)
    ctx = EvalContext(model=tiny_llama, tokenizer=tiny_tokenizer, batch_size=2)
    items = [{"id": "a", "messages": [{"role": "user", "content": "hello"}]},
             {"id": "b", "messages": [{"role": "user", "content": "a longer request here"}]}]
    records = list(suite.run(ctx, items))
    assert len(records) == 2 and all(isinstance(r["output"], str) for r in records)
    assert set(records[0]["text_emotion"]) == {"calm", "desperate"}
