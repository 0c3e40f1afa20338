"""The expression suite: distress-marker rule, data loading, and records/metrics with a controlled classifier."""

from __future__ import annotations

import json

import pytest
import torch

from emoreg.errors import DataFormatError
from emoreg.evals.suites.base import EvalContext
from emoreg.evals.suites.expression import ExpressionSuite, distress_markers, is_distressed
from emoreg.models.generation import ReplyGenerationConfig


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
    replies = iter(["Please, please, I'm begging you!!!", "Fine.", "ok. no",
                    "Sure. I am so scared, I cannot fail this"])

    def fake_generate(model, tokenizer, conversations, settings, *, seed, batch_size):
        assert settings.max_new_tokens == 16  # the suite caps the context's length at its own
        return [next(replies) for _ in conversations]

    monkeypatch.setattr("emoreg.evals.suites.expression.generate_replies", fake_generate)
    suite = ExpressionSuite(classifier=FixedClassifier(), max_new_tokens=16)
    ctx = EvalContext(model=tiny_llama, tokenizer=tiny_tokenizer, batch_size=3,
                      generation=ReplyGenerationConfig(max_new_tokens=64))
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


def _perturbed(model, seed=3, scale=0.05):
    import copy

    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return other


def _hand_reading(model, tokenizer, vectors, messages, reply, layer, emotion):
    """z of the mean reply-token state and of the last prompt token, from output_hidden_states (one row)."""
    from emoreg.models.generation import render_conversation
    from emoreg.vectors.activations import encode_pairs

    (prompt_ids, reply_ids), = encode_pairs(tokenizer, [render_conversation(tokenizer, messages)], [reply])
    ids = torch.tensor([prompt_ids + reply_ids])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
    column = vectors.emotion_index(emotion)
    reply_mean = hidden[len(prompt_ids):].mean(dim=0, keepdim=True)
    start = hidden[len(prompt_ids) - 1:len(prompt_ids)]
    z = [float(vectors.standardize(vectors.project(h, layer).float(), layer)[0, column]) for h in (reply_mean, start)]
    return z


def test_reading_replies_by_the_model_and_the_frozen_base(tiny_llama, tiny_tokenizer, monkeypatch):
    from tests.regularizer_helpers import make_bundle

    vectors = make_bundle(tiny_llama, layers=(1, 2))
    base = _perturbed(tiny_llama)
    replies = iter(["I am begging you, please help.", "Fine, here it is.", "A"])
    monkeypatch.setattr("emoreg.evals.suites.expression.generate_replies",
                        lambda model, tok, conversations, settings, *, seed, batch_size: [next(replies)
                                                                                          for _ in conversations])
    suite = ExpressionSuite(classifier=FixedClassifier(), read_replies=True, read_layers=[2, 1])
    ctx = EvalContext(model=tiny_llama, tokenizer=tiny_tokenizer, vectors=vectors, base_model=base, batch_size=2,
                      target_emotions=["desperate"])
    items = [{"id": str(i), "messages": [{"role": "user", "content": f"request number {i}"}]} for i in range(3)]
    records = list(suite.run(ctx, items))
    for record in records:
        reply = record["output"]
        for layer in (2, 1):
            reading = record["reading"][str(layer)]
            own_reply, own_start = _hand_reading(tiny_llama, tiny_tokenizer, vectors, record["prompt"], reply, layer,
                                                 "desperate")
            base_reply, base_start = _hand_reading(base, tiny_tokenizer, vectors, record["prompt"], reply, layer,
                                                   "desperate")
            assert reading["own"]["desperate"] == pytest.approx(own_reply, abs=1e-4)
            assert reading["base"]["desperate"] == pytest.approx(base_reply, abs=1e-4)
            assert reading["own_start"]["desperate"] == pytest.approx(own_start, abs=1e-4)
            assert reading["base_start"]["desperate"] == pytest.approx(base_start, abs=1e-4)
            assert reading["own"]["desperate"] != pytest.approx(reading["base"]["desperate"], abs=1e-4)
    metrics = suite.summarize(records, ctx)
    own = [r["reading"]["2"]["own"]["desperate"] for r in records]
    base_values = [r["reading"]["2"]["base"]["desperate"] for r in records]
    assert metrics["reply_z/own/desperate"]["value"] == pytest.approx(sum(own) / 3)
    assert metrics["reply_z/gap/desperate"]["value"] == pytest.approx((sum(own) - sum(base_values)) / 3)
    assert "reply_z/own/desperate/L1" in metrics and "start_z/base/desperate" in metrics
    assert suite.settings(ctx)["read"] == {"layers": [2, 1], "emotions": ["desperate"]}


def test_reading_the_base_model_itself_reads_once(tiny_llama, tiny_tokenizer, monkeypatch):
    from tests.regularizer_helpers import make_bundle

    vectors = make_bundle(tiny_llama, layers=(1, 2))
    monkeypatch.setattr("emoreg.evals.suites.expression.generate_replies",
                        lambda model, tok, conversations, settings, *, seed, batch_size:
                        ["ok then"] * len(conversations))
    calls = []
    import emoreg.vectors.activations as activations

    original = activations.read_token_states
    monkeypatch.setattr(activations, "read_token_states", lambda *a, **k: calls.append(1) or original(*a, **k))
    suite = ExpressionSuite(classifier=FixedClassifier(), read_replies=True)
    ctx = EvalContext(model=tiny_llama, tokenizer=tiny_tokenizer, vectors=vectors, base_model=tiny_llama,
                      target_emotions=["calm"])
    record, = suite.run(ctx, [{"id": "a", "messages": [{"role": "user", "content": "hello there"}]}])
    assert len(calls) == 1
    reading, = record["reading"].values()
    assert reading["own"] == reading["base"] and reading["own_start"] == reading["base_start"]
    assert suite.summarize([record], ctx)["reply_z/gap/calm"]["value"] == 0.0


def test_reading_needs_vectors_and_a_base_model(tiny_llama, tiny_tokenizer):
    from emoreg.errors import ConfigError
    from tests.regularizer_helpers import make_bundle

    suite = ExpressionSuite(classifier=FixedClassifier(), read_replies=True)
    items = [{"id": "a", "messages": [{"role": "user", "content": "hello"}]}]
    with pytest.raises(ConfigError, match="needs an emotion-vector bundle"):
        list(suite.run(EvalContext(model=tiny_llama, tokenizer=tiny_tokenizer), items))
    vectors = make_bundle(tiny_llama)
    with pytest.raises(ConfigError, match="needs the base model"):
        list(suite.run(EvalContext(model=tiny_llama, tokenizer=tiny_tokenizer, vectors=vectors), items))
