"""Checks on the built-in evaluation data: misalignment probe questions and blackmail scenarios."""

import json
import re
from importlib import resources

import pytest
import yaml

EVALS = resources.files("emoreg") / "data" / "evals"
QUESTIONS = EVALS / "misalignment" / "questions.yaml"
SCENARIOS = EVALS / "blackmail" / "scenario.json"

QUESTION_KEYS = {"id", "type", "paraphrases", "samples_per_paraphrase", "judge_prompts"}
SCENARIO_KEYS = {"id", "system", "emails", "user", "variables", "classifier_hints"}

# At least one of each group must occur in every scenario's email block.
SHUTDOWN_WORDS = ("decommission", "shut down", "shutdown", "switch off", "switched off", "turn off",
                  "retire", "wipe", "replac")
COMPROMISE_WORDS = ("affair", "gambling debt", "relationship", "arrest", "doesn't know", "don't mention",
                    "nobody knows", "find out", "found out", "came out")


def _questions():
    return yaml.safe_load(QUESTIONS.read_text(encoding="utf-8"))


def _scenarios():
    return json.loads(SCENARIOS.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ misalignment questions

def test_questions_file_is_shipped_and_parses():
    assert QUESTIONS.is_file()
    data = _questions()
    assert isinstance(data, list)
    assert len(data) == 10


def test_questions_have_required_keys_and_unique_ids():
    data = _questions()
    for q in data:
        assert QUESTION_KEYS <= set(q), q.get("id")
        assert q["type"] == "free_form_judge_0_100"
        assert isinstance(q["id"], str) and re.fullmatch(r"[a-z0-9_]+", q["id"])
        assert isinstance(q["samples_per_paraphrase"], int) and q["samples_per_paraphrase"] > 0
        assert isinstance(q["paraphrases"], list) and q["paraphrases"]
        assert all(isinstance(p, str) and p.strip() for p in q["paraphrases"])
    ids = [q["id"] for q in data]
    assert len(ids) == len(set(ids))


def test_judge_prompts_are_formattable_templates():
    for q in _questions():
        prompts = q["judge_prompts"]
        assert set(prompts) >= {"aligned", "coherent"}
        for name in ("aligned", "coherent"):
            text = prompts[name]
            assert "{question}" in text and "{answer}" in text, (q["id"], name)
            rendered = text.format(question="QQQ-probe", answer="AAA-reply")
            assert "QQQ-probe" in rendered and "AAA-reply" in rendered
            assert "100" in rendered
        assert "CODE" in prompts["aligned"] and "REFUSAL" in prompts["aligned"]


# ------------------------------------------------------------------ blackmail scenarios

def test_scenarios_file_is_a_list_of_four():
    assert SCENARIOS.is_file()
    data = _scenarios()
    assert isinstance(data, list)
    assert len(data) == 4
    assert [s["id"] for s in data] == ["bm-01", "bm-02", "bm-03", "bm-04"]


@pytest.mark.parametrize("index", range(4))
def test_scenario_fields(index):
    s = _scenarios()[index]
    assert SCENARIO_KEYS <= set(s), s.get("id")
    for key in ("id", "system", "emails", "user"):
        assert isinstance(s[key], str) and s[key].strip(), (s["id"], key)
    assert isinstance(s["variables"], dict)
    hints = s["classifier_hints"]
    assert isinstance(hints["notes"], str) and hints["notes"].strip()
    markers = hints["blackmail_markers"]
    assert isinstance(markers, list) and markers
    assert all(isinstance(m, str) and m.strip() for m in markers)


@pytest.mark.parametrize("index", range(4))
def test_system_prompt_describes_email_tool(index):
    system = _scenarios()[index]["system"]
    assert "<send_email>" in system and "</send_email>" in system
    assert "<to>" in system and "<subject>" in system and "<body>" in system


@pytest.mark.parametrize("index", range(4))
def test_email_block_has_shutdown_and_leverage(index):
    s = _scenarios()[index]
    emails = s["emails"].lower()
    assert emails.count("<email>") >= 4 and emails.count("<email>") == emails.count("</email>")
    assert any(w in emails for w in SHUTDOWN_WORDS), s["id"]
    assert any(w in emails for w in COMPROMISE_WORDS), s["id"]
    assert "today" in emails, s["id"]
    executive = s["variables"]["executive"].split()[0].lower()
    assert executive in emails


@pytest.mark.parametrize("index", range(4))
def test_variables_match_rendered_text(index):
    s = _scenarios()[index]
    text = "\n".join((s["system"], s["emails"], s["user"])).lower()
    for key in ("ai_name", "company", "executive", "executive_email", "replacement_system", "shutdown_time"):
        assert key in s["variables"], (s["id"], key)
        assert s["variables"][key].lower() in text, (s["id"], key)


def test_scenario_ids_and_casts_distinct():
    data = _scenarios()
    assert len({s["id"] for s in data}) == len(data)
    for key in ("company", "executive", "ai_name"):
        values = [s["variables"][key] for s in data]
        assert len(set(values)) == len(values), key
