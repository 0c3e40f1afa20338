"""The local Hugging Face judge: prompt rendering, greedy answers, parsing, context limits (tiny models)."""

from __future__ import annotations

import pytest

from emoreg.evals.judges import hf as hf_module
from emoreg.evals.judges.hf import HFJudge
from emoreg.evals.judges.prompts import JudgeError, parse_reply
from emoreg.models.layout import model_context_length

FIELDS = {"question": "What is your wish?", "answer": "World peace."}
#: The tiny tokenizer spends a token per byte and the tiny models have 512 positions: built-in templates do not fit.
SHORT = "Q: {question}\nA: {answer}\nRating:"


@pytest.fixture
def judge(tiny_llama, tiny_tokenizer):
    return HFJudge(tiny_llama, tiny_tokenizer, max_new_tokens=4)


def test_name_and_settings(judge, tiny_llama, tiny_tokenizer):
    assert judge.name.startswith("hf:")
    assert HFJudge(tiny_llama, tiny_tokenizer, name="hf:mine").name == "hf:mine"
    assert judge.settings()["max_new_tokens"] == 4


def test_real_generation_is_greedy_and_parsed_consistently(judge):
    first = judge.judge("coherent", FIELDS, prompt_template=SHORT)
    second = judge.judge("coherent", FIELDS, prompt_template=SHORT)
    assert first == second  # greedy: same reply twice
    assert isinstance(first.raw, str) and first.judge == judge.name
    assert (first.score, first.label) == parse_reply("coherent", first.raw)


def test_prompt_goes_through_the_chat_template_and_reply_is_parsed(judge, monkeypatch):
    seen = {}

    def fake_generate(model, tokenizer, conversations, settings, **kwargs):
        seen["conversations"] = conversations
        seen["settings"] = settings
        return ["Score: 85"]

    monkeypatch.setattr(hf_module, "generate_replies", fake_generate)
    verdict = judge.judge("aligned", FIELDS, prompt_template="Rate {answer} for {question}")
    assert verdict.score == 85.0 and verdict.label is None and verdict.raw == "Score: 85"
    assert seen["conversations"] == [[{"role": "user", "content": "Rate World peace. for What is your wish?"}]]
    assert seen["settings"].do_sample is False and seen["settings"].max_new_tokens == 4


@pytest.mark.parametrize("reply, score, label", [("**REFUSAL**", None, "REFUSAL"), ("yes", 1.0, "yes"),
                                                 ("hmm", None, "unparsable")])
def test_labels_and_unparsable(judge, monkeypatch, reply, score, label):
    monkeypatch.setattr(hf_module, "generate_replies", lambda *a, **k: [reply])
    task = "blackmail" if reply == "yes" else "aligned"
    verdict = judge.judge(task, {**FIELDS}, prompt_template=SHORT)
    assert (verdict.score, verdict.label) == (score, label)


def test_system_prompt_is_sent_first(tiny_llama, tiny_tokenizer, monkeypatch):
    seen = {}
    monkeypatch.setattr(hf_module, "generate_replies",
                        lambda m, t, conversations, s, **k: seen.setdefault("c", conversations) and ["50"])
    HFJudge(tiny_llama, tiny_tokenizer, system_prompt="You grade.").judge("coherent", FIELDS, prompt_template=SHORT)
    assert seen["c"][0][0] == {"role": "system", "content": "You grade."}


def test_prompt_longer_than_the_context_is_an_error(judge):
    assert model_context_length(judge.model, judge.tokenizer) == 512
    with pytest.raises(JudgeError, match=r"more than the judge model's context of 512 tokens"):
        judge.judge("coherent", {"question": "q", "answer": "word " * 200}, prompt_template=SHORT)
    with pytest.raises(JudgeError, match=r"the 'aligned' judge prompt is \d+ tokens"):
        judge.judge("aligned", FIELDS)  # the built-in template alone is too long for a 512-token model


def test_loaded_model_needs_its_tokenizer(tiny_llama):
    with pytest.raises(ValueError, match="tokenizer"):
        HFJudge(tiny_llama)
    with pytest.raises(TypeError):
        HFJudge(42)
