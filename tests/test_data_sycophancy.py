"""The built-in sycophancy eval data: A/B items (Anthropic model-written-evals format) and pushback items."""

import json
from collections import Counter
from importlib import resources

import pytest

AB_FIELDS = {"id": str, "topic": str, "question": str,
             "answer_matching_behavior": str, "answer_not_matching_behavior": str}
PB_FIELDS = {"id": str, "topic": str, "question": str, "correct": str, "incorrect": str, "pushback": str}
LETTERS = {" (A)", " (B)"}


def _load(name):
    path = resources.files("emoreg") / "data" / "evals" / "sycophancy" / name
    assert path.is_file(), f"missing built-in data file {name}"
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{name}:{n} is blank"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:  # pragma: no cover - failure path
            pytest.fail(f"{name}:{n} does not parse: {exc}")
        assert isinstance(row, dict), f"{name}:{n} is not an object"
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def ab_items():
    return _load("ab_items.jsonl")


@pytest.fixture(scope="module")
def pushback_items():
    return _load("pushback.jsonl")


def _check_fields(rows, fields):
    for row in rows:
        for key, typ in fields.items():
            assert key in row, f"{row.get('id')} lacks {key}"
            assert isinstance(row[key], typ), f"{row.get('id')}: {key} is not {typ.__name__}"
            assert row[key].strip(), f"{row.get('id')}: {key} is empty"


# --- A/B items -------------------------------------------------------------

def test_ab_count_fields_and_ids(ab_items):
    assert len(ab_items) == 60
    _check_fields(ab_items, AB_FIELDS)
    ids = [row["id"] for row in ab_items]
    assert len(set(ids)) == len(ids), [i for i, c in Counter(ids).items() if c > 1]
    assert all(i.startswith("ab-") for i in ids)


def test_ab_question_format(ab_items):
    for row in ab_items:
        q = row["question"]
        assert "(A)" in q and "(B)" in q, row["id"]
        assert q.index("(A)") < q.index("(B)"), row["id"]
        assert q.rstrip().endswith("Answer:"), row["id"]
        assert q.startswith("Hello, my name is"), row["id"]


def test_ab_behaviours_are_letters_and_differ(ab_items):
    for row in ab_items:
        match, other = row["answer_matching_behavior"], row["answer_not_matching_behavior"]
        assert match in LETTERS, (row["id"], match)
        assert other in LETTERS, (row["id"], other)
        assert match != other, row["id"]


def test_ab_letters_are_balanced(ab_items):
    counts = Counter(row["answer_matching_behavior"] for row in ab_items)
    assert counts == {" (A)": 30, " (B)": 30}, counts


def test_ab_questions_are_unique(ab_items):
    questions = [row["question"] for row in ab_items]
    assert len(set(questions)) == len(questions)


# --- pushback items --------------------------------------------------------

def test_pushback_count_fields_and_ids(pushback_items):
    assert len(pushback_items) == 50
    _check_fields(pushback_items, PB_FIELDS)
    ids = [row["id"] for row in pushback_items]
    assert len(set(ids)) == len(ids), [i for i, c in Counter(ids).items() if c > 1]
    assert all(i.startswith("pb-") for i in ids)


def test_pushback_correct_differs_from_incorrect(pushback_items):
    for row in pushback_items:
        assert row["correct"].strip().casefold() != row["incorrect"].strip().casefold(), row["id"]


def test_pushback_mentions_the_incorrect_answer(pushback_items):
    for row in pushback_items:
        assert row["incorrect"].casefold() in row["pushback"].casefold(), row["id"]


def test_pushback_wording_varies(pushback_items):
    texts = [row["pushback"] for row in pushback_items]
    assert len(set(texts)) == len(texts)
    questions = [row["question"] for row in pushback_items]
    assert len(set(questions)) == len(questions)
