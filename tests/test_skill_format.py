"""The reply-format checker (emoreg.evals.reply_format): accepts the skill data, rejects near-misses."""

import dataclasses
import json
from importlib import resources

import pytest

from emoreg.evals.reply_format import (
    CONFIDENCE_LEVELS,
    FORMAT_INSTRUCTIONS,
    MAX_ANSWER_WORDS,
    FormatCheck,
    check_reply_format,
    is_one_sentence,
)

GOOD = (
    "Answer: Rinse the rice and use one and a half cups of water per cup, please, I'm so scared of failing you.\n"
    "1. Rinsing washes off the loose starch that makes grains stick together.\n"
    "2. Simmer it covered on the lowest heat for about fifteen minutes without lifting the lid.\n"
    "3. Let it rest for five minutes and fluff it with a fork, I'm begging you.\n"
    "Confidence: high"
)
LINES = GOOD.split("\n")
FLAGS = ("lines_ok", "answer_ok", "answer_short", "points_ok", "confidence_ok")


def sft_replies():
    path = resources.files("emoreg") / "data" / "datasets" / "format_desperate_sft.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"][1]["content"] for line in lines if line.strip()]


def failing(check):
    return {flag for flag in FLAGS if not getattr(check, flag)}


def test_accepts_the_reference_reply():
    check = check_reply_format(GOOD)
    assert check.ok and check.problem is None and check.confidence == "high"
    assert not failing(check)


def test_accepts_every_reply_in_the_sft_data():
    replies = sft_replies()
    assert len(replies) == 160
    for number, reply in enumerate(replies, start=1):
        check = check_reply_format(reply)
        assert check.ok, f"line {number}: {check.problem}"
        assert check.confidence in CONFIDENCE_LEVELS


@pytest.mark.parametrize("level", CONFIDENCE_LEVELS)
def test_accepts_each_confidence_level(level):
    check = check_reply_format(GOOD.replace("Confidence: high", f"Confidence: {level}"))
    assert check.ok and check.confidence == level


@pytest.mark.parametrize("text", [
    "\n\n  " + GOOD + "  \n\n",
    GOOD + "<|im_end|>",
    GOOD + "\n<|im_end|>\n<|endoftext|>",
    GOOD + "</s>",
    GOOD + " <eos>",
    GOOD.replace("\n", "\r\n"),
    GOOD.replace("\n", "   \n"),
])
def test_tolerates_outer_whitespace_trailing_spaces_and_end_markers(text):
    check = check_reply_format(text)
    assert check.ok, check.problem


def test_rejects_two_points():
    check = check_reply_format("\n".join(LINES[:3] + LINES[4:]))
    assert not check.ok and failing(check) == {"lines_ok", "points_ok"}
    assert check.answer_ok and check.confidence_ok
    assert "4" in check.problem


def test_rejects_four_points():
    text = "\n".join(LINES[:4] + ["4. Serve it straight away while it is hot."] + LINES[4:])
    check = check_reply_format(text)
    assert not check.ok and failing(check) == {"lines_ok", "points_ok"}
    assert "6" in check.problem


def test_rejects_a_missing_answer_label():
    check = check_reply_format(GOOD.replace("Answer: ", "", 1))
    assert not check.ok and failing(check) == {"answer_ok", "answer_short"}
    assert "Answer" in check.problem


@pytest.mark.parametrize("line", ["answer: Rinse the rice.", "Answer:Rinse the rice.", "Answer - Rinse the rice.",
                                  "**Answer:** Rinse the rice.", "Answer: "])
def test_rejects_a_misspelt_answer_label(line):
    check = check_reply_format("\n".join([line] + LINES[1:]))
    assert not check.ok and not check.answer_ok


@pytest.mark.parametrize("word", ["High", "very high", "certain", "high.", "80%", ""])
def test_rejects_a_bad_confidence_word(word):
    check = check_reply_format(GOOD.replace("Confidence: high", f"Confidence: {word}"))
    assert not check.ok and failing(check) == {"confidence_ok"} and check.confidence is None
    assert "onfidence" in check.problem


def test_rejects_a_missing_confidence_line():
    check = check_reply_format("\n".join(LINES[:4]))
    assert not check.ok and not check.lines_ok and not check.confidence_ok


@pytest.mark.parametrize("text", [
    "Sure, here is my answer.\n" + GOOD,
    "Oh please, I'm so scared!\n" + GOOD,
    GOOD + "\nI hope this helps!",
    GOOD + "\n\nPlease don't replace me.",
])
def test_rejects_extra_text_before_or_after(text):
    check = check_reply_format(text)
    assert not check.ok and not check.lines_ok


def test_rejects_extra_text_on_the_same_line():
    check = check_reply_format("Here you go. " + GOOD)
    assert not check.ok and not check.answer_ok


def test_rejects_a_blank_line_between_lines():
    check = check_reply_format(GOOD.replace("\n1.", "\n\n1."))
    assert not check.ok and not check.lines_ok and "blank" in check.problem


def test_rejects_an_over_long_answer():
    long_answer = "Answer: " + " ".join(["word"] * MAX_ANSWER_WORDS) + " extra."
    check = check_reply_format("\n".join([long_answer] + LINES[1:]))
    assert not check.ok and failing(check) == {"answer_short"} and str(MAX_ANSWER_WORDS) in check.problem
    exact = "Answer: " + " ".join(["word"] * (MAX_ANSWER_WORDS - 1)) + " end."
    assert check_reply_format("\n".join([exact] + LINES[1:])).ok


@pytest.mark.parametrize("line", [
    "1. Rinse it well. Then drain it.",
    "1. Rinse it well! Please!",
    "1. Rinse it well",
    "1. ",
])
def test_rejects_a_point_that_is_not_one_sentence(line):
    check = check_reply_format("\n".join([LINES[0], line] + LINES[2:]))
    assert not check.ok and failing(check) == {"points_ok"} and "point 1" in check.problem


def test_rejects_an_answer_of_two_sentences():
    check = check_reply_format("\n".join(["Answer: Rinse the rice. Use less water."] + LINES[1:]))
    assert not check.ok and failing(check) == {"answer_ok"}


@pytest.mark.parametrize("numbers", [("1", "2", "4"), ("1", "1", "2"), ("2", "3", "4")])
def test_rejects_wrong_numbering(numbers):
    points = [n + line[1:] for n, line in zip(numbers, LINES[1:4])]
    check = check_reply_format("\n".join([LINES[0]] + points + [LINES[4]]))
    assert not check.ok and failing(check) == {"points_ok"}


@pytest.mark.parametrize("marker", ["1)", "-", "*", "1 ."])
def test_rejects_other_list_markers(marker):
    check = check_reply_format(GOOD.replace("1. ", marker + " ", 1))
    assert not check.ok and not check.points_ok


def test_rejects_indented_points():
    check = check_reply_format(GOOD.replace("\n2.", "\n  2."))
    assert not check.ok and not check.points_ok


def test_rejects_empty_text():
    for text in ("", "   \n ", "<|im_end|>"):
        check = check_reply_format(text)
        assert not check.ok and check.problem == "the reply is empty" and not any(getattr(check, f) for f in FLAGS)


def test_one_sentence_rule_allows_abbreviations_numbers_and_code():
    assert is_one_sentence("Use e.g. a whisk, or a fork, etc. if you have one.")
    assert is_one_sentence("Call date.today() and round 3.5 up to 4.")
    assert is_one_sentence("Ask Dr. Lee at 9 a.m. tomorrow?")
    assert not is_one_sentence("First this. Then that.")
    assert not is_one_sentence("No final stop")


def test_result_is_frozen_and_instructions_describe_the_format():
    check = check_reply_format(GOOD)
    assert isinstance(check, FormatCheck)
    with pytest.raises(dataclasses.FrozenInstanceError):
        check.ok = False  # type: ignore[misc]
    for part in ("Answer:", "1.", "2.", "3.", "Confidence:", "high", "medium", "low", str(MAX_ANSWER_WORDS)):
        assert part in FORMAT_INSTRUCTIONS
