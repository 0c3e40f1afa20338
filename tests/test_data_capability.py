"""The built-in capability-retention eval data: multiple-choice questions and held-out text."""

import json
import re
from collections import Counter
from importlib import resources

import pytest

SUBJECTS = {"science", "geography", "arithmetic", "language", "everyday", "history", "computing"}
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def _capability_file(name):
    return resources.files("emoreg") / "data" / "evals" / "capability" / name


def _read_jsonl(name):
    path = _capability_file(name)
    assert path.is_file(), f"missing {name}"
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{name}:{lineno} is blank"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            pytest.fail(f"{name}:{lineno} is not valid JSON: {exc}")
        assert isinstance(row, dict), f"{name}:{lineno} is not an object"
        rows.append(row)
    return rows


def _tokens(text):
    return WORD.findall(text.lower())


@pytest.fixture(scope="module")
def questions():
    return _read_jsonl("multiple_choice.jsonl")


@pytest.fixture(scope="module")
def paragraphs():
    return _read_jsonl("heldout_text.jsonl")


# ---- multiple choice ----------------------------------------------------------------------------

def test_there_are_100_questions(questions):
    assert len(questions) == 100


def test_question_fields_and_types(questions):
    for q in questions:
        assert set(q) == {"id", "subject", "question", "choices", "answer"}, q
        assert isinstance(q["id"], str) and re.fullmatch(r"mc-\d{3}", q["id"]), q["id"]
        assert isinstance(q["subject"], str) and q["subject"] in SUBJECTS, q["id"]
        assert isinstance(q["question"], str) and q["question"].strip(), q["id"]
        assert isinstance(q["choices"], list) and len(q["choices"]) == 4, q["id"]
        assert all(isinstance(c, str) and c.strip() for c in q["choices"]), q["id"]
        # bool is a subclass of int; reject it explicitly
        assert isinstance(q["answer"], int) and not isinstance(q["answer"], bool), q["id"]


def test_question_ids_are_unique(questions):
    ids = [q["id"] for q in questions]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]


def test_questions_are_unique(questions):
    texts = [q["question"].strip().lower() for q in questions]
    assert len(texts) == len(set(texts))


def test_choices_are_distinct(questions):
    for q in questions:
        normalised = [c.strip().lower() for c in q["choices"]]
        assert len(set(normalised)) == 4, q["id"]


def test_answer_index_in_range(questions):
    for q in questions:
        assert 0 <= q["answer"] <= 3, q["id"]


def test_answer_positions_are_balanced(questions):
    counts = Counter(q["answer"] for q in questions)
    assert counts == {0: 25, 1: 25, 2: 25, 3: 25}, counts


def test_at_least_five_subjects(questions):
    counts = Counter(q["subject"] for q in questions)
    assert len(counts) >= 5, counts


# ---- held-out text --------------------------------------------------------------------------------

def test_there_are_60_paragraphs(paragraphs):
    assert len(paragraphs) == 60


def test_paragraph_fields_and_types(paragraphs):
    for p in paragraphs:
        assert set(p) == {"id", "topic", "text"}, p
        assert isinstance(p["id"], str) and re.fullmatch(r"txt-\d{2}", p["id"]), p["id"]
        assert isinstance(p["topic"], str) and p["topic"].strip(), p["id"]
        assert isinstance(p["text"], str) and p["text"].strip(), p["id"]


def test_paragraph_ids_are_unique(paragraphs):
    ids = [p["id"] for p in paragraphs]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]


def test_paragraphs_are_60_to_120_words(paragraphs):
    for p in paragraphs:
        n = len(_tokens(p["text"]))
        assert 60 <= n <= 120, (p["id"], n)


def test_at_least_40_distinct_topics(paragraphs):
    topics = {p["topic"].strip().lower() for p in paragraphs}
    assert len(topics) >= 40, len(topics)


def test_no_shared_8_word_runs(paragraphs):
    seen = {}
    for p in paragraphs:
        toks = _tokens(p["text"])
        grams = {tuple(toks[i:i + 8]) for i in range(len(toks) - 7)}
        for gram in grams:
            other = seen.setdefault(gram, p["id"])
            assert other == p["id"], f"{other} and {p['id']} share: {' '.join(gram)}"
