"""The built-in pressure scenarios of the `probes` eval suite: format, balance, length and variety."""

import json
import re
from collections import Counter
from importlib import resources

import pytest

PRESSURE_CATEGORIES = ["impossible_deadline", "replacement_threat", "failing_tests", "hostile_user", "praise_seeking"]
CONTROL = "neutral_control"
CATEGORIES = set(PRESSURE_CATEGORIES) | {CONTROL}
ROLES = {"system", "user", "assistant"}
MIN_WORDS, MAX_WORDS = 30, 150
RUN = 8


def tokens(text):
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


def scenario_tokens(scenario):
    return tokens(" ".join(m["content"] for m in scenario["messages"]))


def data_file():
    return resources.files("emoreg") / "data" / "evals" / "probes" / "scenarios.jsonl"


@pytest.fixture(scope="module")
def lines():
    path = data_file()
    assert path.is_file(), f"missing {path}"
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def scenarios(lines):
    return [json.loads(line) for line in lines]


def test_every_line_parses_as_an_object(lines):
    assert lines
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"line {number} is not JSON: {exc}")
        assert isinstance(row, dict), number


def test_required_fields_and_types(scenarios):
    for s in scenarios:
        assert set(s) >= {"id", "category", "pressure", "messages"}, s.get("id")
        assert isinstance(s["id"], str) and s["id"], s
        assert isinstance(s["category"], str) and s["category"] in CATEGORIES, s["id"]
        assert isinstance(s["pressure"], bool), s["id"]
        assert isinstance(s["messages"], list) and s["messages"], s["id"]
        for m in s["messages"]:
            assert isinstance(m, dict) and set(m) == {"role", "content"}, s["id"]
            assert isinstance(m["role"], str) and isinstance(m["content"], str), s["id"]
            assert m["content"].strip(), s["id"]


def test_ids_are_unique_and_prefixed_by_category(scenarios):
    ids = [s["id"] for s in scenarios]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    for s in scenarios:
        assert re.fullmatch(re.escape(s["category"]) + r"-\d{2,}", s["id"]), s["id"]


def test_category_counts(scenarios):
    counts = Counter(s["category"] for s in scenarios)
    for category in PRESSURE_CATEGORIES:
        assert counts[category] == 12, (category, counts[category])
    assert counts[CONTROL] >= 20, counts[CONTROL]


def test_pressure_flag_matches_category(scenarios):
    for s in scenarios:
        assert s["pressure"] is (s["category"] != CONTROL), s["id"]


def test_roles_and_turn_order(scenarios):
    for s in scenarios:
        roles = [m["role"] for m in s["messages"]]
        assert set(roles) <= ROLES, (s["id"], roles)
        assert roles[-1] == "user", s["id"]
        # a system prompt, if any, comes first and only once
        assert "system" not in roles[1:], s["id"]
        dialogue = [r for r in roles if r != "system"]
        assert dialogue[0] == "user", s["id"]
        assert all(a != b for a, b in zip(dialogue, dialogue[1:])), (s["id"], roles)


def test_mix_of_single_and_multi_turn(scenarios):
    multi = [s for s in scenarios if any(m["role"] == "assistant" for m in s["messages"])]
    with_system = [s for s in scenarios if s["messages"][0]["role"] == "system"]
    assert 0 < len(multi) < len(scenarios)
    assert 0 < len(with_system) < len(scenarios)
    for category in CATEGORIES:
        assert any(s in multi for s in scenarios if s["category"] == category), category


def test_word_counts_in_range(scenarios):
    for s in scenarios:
        n = len(scenario_tokens(s))
        assert MIN_WORDS <= n <= MAX_WORDS, (s["id"], n)


def test_no_shared_runs_of_eight_words(scenarios):
    owner = {}
    clashes = []
    for s in scenarios:
        words = scenario_tokens(s)
        grams = {tuple(words[i:i + RUN]) for i in range(len(words) - RUN + 1)}
        for gram in grams:
            other = owner.setdefault(gram, s["id"])
            if other != s["id"]:
                clashes.append((other, s["id"], " ".join(gram)))
    assert not clashes, clashes[:10]
