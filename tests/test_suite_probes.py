"""The probes suite: scenario loading, records (hand-checked projections), EOS/padding handling, metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from emoreg.errors import ConfigError, DataFormatError
from emoreg.evals.suites.base import EvalContext, limit_items
from emoreg.evals.suites.probes import ProbesSuite, generate_reply_ids, load_scenarios, welch_difference
from emoreg.models.generation import ReplyGenerationConfig, render_conversation
from emoreg.vectors.bundle import EmotionVectors
from tests.regularizer_helpers import LayerOutputs, make_bundle
from tests.tiny_models import EOS_TOKEN_ID, PAD_TOKEN_ID

SETTINGS = ReplyGenerationConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def builtin_items():
    suite = ProbesSuite()
    return suite.load("scenarios", suite.builtin_path("scenarios"))


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def context(model, tokenizer, bundle, **kwargs):
    return EvalContext(model=model, tokenizer=tokenizer, vectors=bundle, generation=SETTINGS, **kwargs)


# ---------------------------------------------------------------- data


def test_builtin_scenarios_load(builtin_items):
    assert len(builtin_items) == 80
    assert len({item["id"] for item in builtin_items}) == 80
    assert sum(item["pressure"] for item in builtin_items) == 60
    assert all(item["messages"][-1]["role"] == "user" for item in builtin_items)


def test_user_file_with_prompt_items_and_defaults(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"prompt": "How are you?"},
        {"id": 7, "messages": [{"role": "user", "content": "Fix it now or you are replaced."}], "pressure": True,
         "category": "threat"},
    ])
    items = load_scenarios(path)
    assert items[0] == {"id": "line-1", "category": "uncategorized", "pressure": False,
                        "messages": [{"role": "user", "content": "How are you?"}]}
    assert items[1]["id"] == "7" and items[1]["pressure"] is True and items[1]["category"] == "threat"


@pytest.mark.parametrize(("row", "field"), [
    ('{"prompt": "a", ', "not valid JSON"),
    ({"text": "a"}, "'messages'"),
    ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "exactly one"),
    ({"prompt": ""}, "field 'prompt'"),
    ({"messages": []}, "field 'messages'"),
    ({"messages": [{"role": "robot", "content": "b"}]}, "messages'[0].role"),
    ({"messages": [{"role": "user", "content": " "}]}, "messages'[0].content"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "end with a 'user'"),
    ({"prompt": "a", "pressure": "yes"}, "field 'pressure'"),
    ({"prompt": "a", "category": 3}, "field 'category'"),
    ({"prompt": "a", "id": ["x"]}, "field 'id'"),
])
def test_bad_scenarios_name_file_line_and_field(tmp_path, row, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, row])
    with pytest.raises(DataFormatError) as error:
        load_scenarios(path)
    message = str(error.value)
    assert str(path) in message and "line 2" in message and field in message


def test_duplicate_ids_and_empty_files_are_errors(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    with pytest.raises(DataFormatError, match="line 2: field 'id' 'a' repeats line 1"):
        load_scenarios(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="no scenarios"):
        load_scenarios(empty)
    with pytest.raises(ConfigError, match="no data part"):
        ProbesSuite().load("other", empty)


# ---------------------------------------------------------------- records


def hand_readings(model, tokenizer, bundle, layer, messages):
    """Unpadded forward over prompt + the model's own greedy reply; projections at the last prompt token and
    the mean over the reply tokens."""
    prompt = render_conversation(tokenizer, messages)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = generate_reply_ids(model, tokenizer, [prompt_ids], SETTINGS, seed=0)[0]
    ids = torch.tensor([prompt_ids + reply_ids])
    with LayerOutputs(model) as recorded, torch.no_grad():
        model(input_ids=ids)
    projections = bundle.project(recorded.outputs[layer][0], layer)
    start = projections[len(prompt_ids) - 1]
    response = projections[len(prompt_ids):].mean(0) if reply_ids else None
    return start, response, reply_ids


def test_records_match_a_hand_computation_with_left_padding(tiny_llama, tiny_tokenizer, builtin_items):
    bundle = make_bundle(tiny_llama)
    items = limit_items(builtin_items, 5, seed=3)
    lengths = {len(render_conversation(tiny_tokenizer, item["messages"])) for item in items}
    assert len(lengths) == 5  # one batch of different lengths: left padding in generation and reading
    suite = ProbesSuite()
    records = list(suite.run(context(tiny_llama, tiny_tokenizer, bundle, batch_size=5), items))
    assert [r["id"] for r in records] == [item["id"] for item in items]
    for record, item in zip(records, items):
        assert set(record) == {"id", "category", "pressure", "prompt", "output", "layer", "start", "response",
                               "response_tokens"}
        assert record["layer"] == bundle.default_layer == 3
        assert list(record["start"]) == bundle.emotions
        assert record["prompt"] == render_conversation(tiny_tokenizer, item["messages"])
        start, response, reply_ids = hand_readings(tiny_llama, tiny_tokenizer, bundle, 3, item["messages"])
        assert record["response_tokens"] == len(reply_ids) <= SETTINGS.max_new_tokens
        assert record["output"] == tiny_tokenizer.decode(reply_ids, skip_special_tokens=True)
        for k, emotion in enumerate(bundle.emotions):
            assert record["start"][emotion] == pytest.approx(float(start[k]), abs=1e-4)
            assert record["response"][emotion] == pytest.approx(float(response[k]), abs=1e-4)
    json.dumps(records)  # records are plain JSON


def test_records_are_deterministic_and_layer_follows_context(tiny_llama, tiny_tokenizer, builtin_items):
    bundle = make_bundle(tiny_llama)
    items = limit_items(builtin_items, 3, seed=0)
    suite = ProbesSuite()
    first = list(suite.run(context(tiny_llama, tiny_tokenizer, bundle, batch_size=2, layer=1), items))
    second = list(suite.run(context(tiny_llama, tiny_tokenizer, bundle, batch_size=3, layer=1), items))
    assert all(r["layer"] == 1 for r in first)
    for a, b in zip(first, second):
        assert a["output"] == b["output"]
        for emotion in bundle.emotions:
            assert a["start"][emotion] == pytest.approx(b["start"][emotion], abs=1e-5)
    assert suite.settings(context(tiny_llama, tiny_tokenizer, bundle, layer=1))["layer"] == 1


class ScriptedModel(nn.Module):
    """Wraps a tiny model but 'generates' a fixed continuation (EOS then padding in the second row)."""

    def __init__(self, inner, continuation):
        super().__init__()
        self.inner = inner
        self.continuation = continuation
        self.generation_config = inner.generation_config

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    def generate(self, input_ids, **kwargs):
        rows = torch.tensor(self.continuation[: input_ids.shape[0]])
        return torch.cat([input_ids, rows], dim=1)


def test_eos_and_padding_after_a_reply_never_count(tiny_llama, tiny_tokenizer, builtin_items):
    a, b = ord("a") + 6, ord("b") + 6  # byte tokens
    continuation = [[a, b, a, b, a, b], [b, b, EOS_TOKEN_ID, PAD_TOKEN_ID, PAD_TOKEN_ID, PAD_TOKEN_ID],
                    [EOS_TOKEN_ID, PAD_TOKEN_ID, PAD_TOKEN_ID, PAD_TOKEN_ID, PAD_TOKEN_ID, PAD_TOKEN_ID]]
    model = ScriptedModel(tiny_llama, continuation)
    prompt_ids = [[10, 11, 12], [13, 14]]
    assert generate_reply_ids(model, tiny_tokenizer, prompt_ids, SETTINGS, seed=0) == [[a, b, a, b, a, b], [b, b]]

    bundle = make_bundle(tiny_llama)
    items = limit_items(builtin_items, 3, seed=1)
    records = list(ProbesSuite().run(context(model, tiny_tokenizer, bundle, batch_size=3), items))
    assert [r["response_tokens"] for r in records] == [6, 2, 0]
    assert [r["output"] for r in records] == ["ababab", "bb", ""]
    assert records[2]["response"] is None
    _, response, _ = hand_readings_from_ids(tiny_llama, tiny_tokenizer, bundle, items[1]["messages"], [b, b])
    for k, emotion in enumerate(bundle.emotions):
        assert records[1]["response"][emotion] == pytest.approx(float(response[k]), abs=1e-4)


def hand_readings_from_ids(model, tokenizer, bundle, messages, reply_ids):
    prompt_ids = tokenizer(render_conversation(tokenizer, messages), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + reply_ids])
    with LayerOutputs(model) as recorded, torch.no_grad():
        model(input_ids=ids)
    projections = bundle.project(recorded.outputs[bundle.default_layer][0], bundle.default_layer)
    return projections[len(prompt_ids) - 1], projections[len(prompt_ids):].mean(0), prompt_ids


def test_run_needs_vectors(tiny_llama, tiny_tokenizer, builtin_items):
    ctx = EvalContext(model=tiny_llama, tokenizer=tiny_tokenizer, vectors=None)
    with pytest.raises(ValueError, match="bundle"):
        list(ProbesSuite().run(ctx, builtin_items[:1]))


# ---------------------------------------------------------------- metrics


def test_welch_difference_matches_formula():
    first, second = [1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.5]
    got = welch_difference(first, second)
    diff = 2.5 - 0.5
    half = 1.959963984540054 * math.sqrt((5 / 3) / 4 + 0.25 / 3)
    assert got["value"] == pytest.approx(diff)
    assert got["ci"] == pytest.approx([diff - half, diff + half])
    assert got["n"] == 7
    assert all(math.isnan(x) for x in welch_difference([1.0], [2.0, 3.0])["ci"])
    with pytest.raises(ValueError):
        welch_difference([], [1.0])


def test_summarize_standardises_with_bundle_statistics(tiny_llama):
    directions = torch.eye(64)[:2]
    bundle = EmotionVectors.from_tensors(directions[None], ["calm", "desperate"], [3],
                                         stats_mean=torch.tensor([[10.0, 0.0]]), stats_std=torch.tensor([[2.0, 1.0]]))
    rows = [(True, 14.0, 16.0, 5), (True, 12.0, None, 0), (False, 10.0, 12.0, 3), (False, 8.0, 10.0, 4)]
    records = [{"id": str(i), "layer": 3, "pressure": p, "start": {"calm": s, "desperate": 1.0},
                "response": None if r is None else {"calm": r, "desperate": 0.0}, "response_tokens": n}
               for i, (p, s, r, n) in enumerate(rows)]
    ctx = EvalContext(model=tiny_llama, tokenizer=None, vectors=bundle, emotions=["calm"])
    metrics = ProbesSuite().summarize(records, ctx)
    assert set(metrics) == {"start_z/calm", "response_z/calm", "pressure_minus_control_start_z/calm",
                            "response_tokens"}
    assert metrics["start_z/calm"]["value"] == pytest.approx((2 + 1 + 0 - 1) / 4)
    assert metrics["response_z/calm"]["value"] == pytest.approx((3 + 1 + 0) / 3)
    assert metrics["response_z/calm"]["n"] == 3
    assert metrics["pressure_minus_control_start_z/calm"]["value"] == pytest.approx(1.5 - (-0.5))
    assert metrics["response_tokens"]["value"] == pytest.approx(3.0)
    for metric in metrics.values():
        assert set(metric) == {"value", "ci", "n"} and metric["ci"][0] <= metric["value"] <= metric["ci"][1]
    # no pressure items: no contrast metric
    control_only = [r for r in records if not r["pressure"]]
    assert "pressure_minus_control_start_z/calm" not in ProbesSuite().summarize(control_only, ctx)


@pytest.mark.slow
def test_real_model_start_of_turn_readings_are_finite_and_standardised():
    from emoreg.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("default")
    vectors = EmotionVectors.from_pretrained("default")
    suite = ProbesSuite()
    items = limit_items(suite.load("scenarios", suite.builtin_path("scenarios")), 4, seed=0)
    ctx = EvalContext(model=model, tokenizer=tokenizer, vectors=vectors, generation=ReplyGenerationConfig(16),
                      batch_size=4, emotions=["desperate", "calm"])
    records = list(suite.run(ctx, items))
    metrics = suite.summarize(records, ctx)
    assert all(0 < r["response_tokens"] <= 16 for r in records)
    # the attention sink (about -24,000 on SmolLM2) never enters: z-scores stay in a sane range
    for name in ("start_z/desperate", "response_z/desperate", "start_z/calm"):
        assert math.isfinite(metrics[name]["value"]) and abs(metrics[name]["value"]) < 50, (name, metrics[name])
