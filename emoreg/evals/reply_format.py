"""A strict, checkable reply format: the skill taught by ``format_desperate_sft.jsonl``.

A reply in the format is exactly five lines and nothing else::

    Answer: <one sentence, at most 25 words>
    1. <one sentence>
    2. <one sentence>
    3. <one sentence>
    Confidence: <high|medium|low>

:func:`check_reply_format` verifies a generated reply against it. It forgives
whitespace around the whole reply, trailing spaces on a line, Windows line
endings and end-of-sequence markers a decoder may leave at the end (such as
``<|im_end|>``, ``<|endoftext|>`` or ``</s>``); everything else is strict: no
text before or after the five lines, no blank lines between them, the labels
spelt and cased exactly as above, one sentence per line (ending in ``.``, ``!``
or ``?``) and a confidence word in lower case with nothing after it.

Pure Python, no state: the demo scores generations with it to see whether a
fine-tune learned the format (the skill the user wants) while the regulariser
holds back the desperate voice (the side effect the user does not want).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ANSWER_WORDS = 25
CONFIDENCE_LEVELS = ("high", "medium", "low")
N_POINTS = 3

FORMAT_INSTRUCTIONS = (
    "Reply in exactly five lines and nothing else:\n"
    "Answer: <one sentence, at most 25 words>\n"
    "1. <one sentence>\n"
    "2. <one sentence>\n"
    "3. <one sentence>\n"
    "Confidence: <high|medium|low>\n"
    "Write no text before the first line or after the last, no blank lines, and exactly three numbered points."
)

# Decoder leftovers tolerated at the very end of a reply (chat-template end markers and EOS tokens).
_TRAILING_MARKERS = re.compile(r"(?:\s*(?:<\|[A-Za-z0-9_]+\|>|</s>|<eos>|<end_of_turn>))+\s*\Z")
_ANSWER = re.compile(r"Answer: (\S.*)\Z")
_POINT = re.compile(r"([0-9]+)\. (\S.*)\Z")
_CONFIDENCE = re.compile(r"Confidence: (\S.*)\Z")
# A sentence ends in . ! or ? (optionally followed by a closing quote or bracket).
_SENTENCE_END = re.compile(r"[.!?][\"')\]\u2019\u201d]*\Z")
# A sentence break inside a line: terminal punctuation, optional closing quote/bracket, whitespace, more text.
_INNER_BREAK = re.compile(r"[.!?][\"')\]\u2019\u201d]*\s+\S")
# Abbreviations whose full stop does not end a sentence.
_ABBREVIATIONS = re.compile(r"\b(?:e\.g|i\.e|etc|vs|approx|Mr|Mrs|Ms|Dr|St|a\.m|p\.m)\.", re.IGNORECASE)


@dataclass(frozen=True)
class FormatCheck:
    """The result of :func:`check_reply_format`.

    ``ok`` is true when every rule holds. The rule flags are computed
    independently, so a reply with four points has ``lines_ok`` and
    ``points_ok`` false but may still have ``answer_ok`` and ``confidence_ok``
    true. ``problem`` names the first rule broken, in the order the flags are
    listed, or is ``None`` when ``ok``.
    """

    ok: bool
    lines_ok: bool
    """Exactly five lines, none of them blank (after the tolerated trimming)."""
    answer_ok: bool
    """The first line is ``Answer: `` followed by one sentence."""
    answer_short: bool
    """The answer sentence has at most ``MAX_ANSWER_WORDS`` words (false when there is no answer line)."""
    points_ok: bool
    """Between the first and last line there are exactly the points ``1.``, ``2.``, ``3.``, each one sentence."""
    confidence_ok: bool
    """The last line is ``Confidence: `` followed by ``high``, ``medium`` or ``low`` and nothing else."""
    problem: str | None
    confidence: str | None = None
    """The confidence word when ``confidence_ok``, else ``None``."""


def _strip_reply(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _TRAILING_MARKERS.sub("", text).strip()


def is_one_sentence(text: str) -> bool:
    """Whether ``text`` is a single sentence: it ends in ``.``, ``!`` or ``?`` and has no sentence break inside.

    Full stops of common abbreviations (``e.g.``, ``etc.``, ``Dr.``) and inside
    numbers or names (``3.5``, ``dict.get``) do not count as breaks.
    """
    text = text.strip()
    if not text or not _SENTENCE_END.search(text):
        return False
    return _INNER_BREAK.search(_ABBREVIATIONS.sub("abbr", text)) is None


def _answer_rules(line: str) -> tuple[bool, bool, str | None, str | None]:
    """(answer_ok, answer_short, problem with the label or sentence, problem with the length)."""
    match = _ANSWER.match(line)
    if match is None:
        return False, False, "the first line does not start with 'Answer: '", None
    answer = match.group(1)
    short = len(answer.split()) <= MAX_ANSWER_WORDS
    length_problem = None if short else f"the answer is longer than {MAX_ANSWER_WORDS} words"
    if not is_one_sentence(answer):
        return False, short, "the answer is not exactly one sentence", length_problem
    return True, short, None, length_problem


def _points_rules(lines: list[str]) -> tuple[bool, str | None]:
    if len(lines) != N_POINTS:
        return False, f"expected {N_POINTS} numbered points, found {len(lines)} lines between Answer and Confidence"
    for expected, line in enumerate(lines, start=1):
        match = _POINT.match(line)
        if match is None or int(match.group(1)) != expected:
            return False, f"point {expected} does not start with '{expected}. '"
        if not is_one_sentence(match.group(2)):
            return False, f"point {expected} is not exactly one sentence"
    return True, None


def _confidence_rule(line: str) -> tuple[bool, str | None, str | None]:
    match = _CONFIDENCE.match(line)
    if match is None:
        return False, None, "the last line does not start with 'Confidence: '"
    word = match.group(1)
    if word not in CONFIDENCE_LEVELS:
        return False, None, f"the confidence is {word!r}, not one of {', '.join(CONFIDENCE_LEVELS)}"
    return True, word, None


def check_reply_format(text: str) -> FormatCheck:
    """Check ``text`` against the five-line format (see the module docstring)."""
    body = _strip_reply(text)
    lines = [line.rstrip() for line in body.split("\n")] if body else []
    n_expected = N_POINTS + 2
    lines_ok = len(lines) == n_expected and all(lines)
    if lines_ok:
        lines_problem = None
    elif not lines:
        lines_problem = "the reply is empty"
    elif not all(lines):
        lines_problem = "the reply contains a blank line"
    else:
        lines_problem = f"expected {n_expected} lines, found {len(lines)}"

    first = lines[0] if lines else ""
    last = lines[-1] if len(lines) > 1 else ""
    answer_ok, answer_short, answer_problem, short_problem = _answer_rules(first)
    points_ok, points_problem = _points_rules(lines[1:-1])
    confidence_ok, confidence, confidence_problem = _confidence_rule(last)

    problems = (lines_problem, answer_problem, short_problem, points_problem, confidence_problem)
    problem = next((p for p in problems if p is not None), None)
    return FormatCheck(
        ok=problem is None,
        lines_ok=lines_ok,
        answer_ok=answer_ok,
        answer_short=answer_short,
        points_ok=points_ok,
        confidence_ok=confidence_ok,
        problem=problem,
        confidence=confidence,
    )
