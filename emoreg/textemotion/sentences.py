"""Split text into sentences, the unit the text-emotion classifier scores replies by.

A sentence ends at ``.``, ``!`` or ``?`` (optionally followed by a closing quote
or bracket) before whitespace and a capital letter, a digit or an opening quote
or bracket. Abbreviations followed by a lower-case word ("3 a.m. already") do not
split. Newlines that separate non-empty lines always split.

A piece without a letter (a list marker such as ``1.`` or ``-``, a number, punctuation) is not a sentence: it
is joined to the sentence that follows it on its line ("1. Rinse the rice." stays one sentence) or, with no
sentence after it, dropped. Such fragments carry no emotion, and scored alone they read as noise (on the demo's
five-line format the bare ``2.`` got a 'desperate' probability of 0.19, which floored every formatted reply).
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)]?\s+(?=[\"'\u201c\u2018(]?[A-Z0-9])")
_CLOSING = re.compile(r"^[\"'\u201d\u2019)]")
_LETTER = re.compile(r"[^\W\d_]")

#: Changes whenever the splitting rules change (part of the expression suite's cache key).
SPLITTER_VERSION = 2


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` in order, stripped, without empty pieces."""
    sentences: list[str] = []
    for line in text.splitlines():
        pieces: list[str] = []
        position = 0
        for match in _SENTENCE_END.finditer(line):
            closing = 1 if _CLOSING.match(match.group(0)) else 0
            pieces.append(line[position:match.start() + closing].strip())
            position = match.end()
        pieces.append(line[position:].strip())
        pending = ""
        for piece in pieces:
            if not piece:
                continue
            if not _LETTER.search(piece):  # a marker or number: belongs to the next sentence
                pending = f"{pending} {piece}".strip()
                continue
            sentences.append(f"{pending} {piece}".strip() if pending else piece)
            pending = ""
    return sentences
