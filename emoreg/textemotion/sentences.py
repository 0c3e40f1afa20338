"""Split text into sentences, the unit the text-emotion classifier scores replies by.

A sentence ends at ``.``, ``!`` or ``?`` (optionally followed by a closing quote
or bracket) before whitespace and a capital letter, a digit or an opening quote
or bracket. Abbreviations followed by a lower-case word ("3 a.m. already") do not
split. Newlines that separate non-empty lines always split.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)]?\s+(?=[\"'\u201c\u2018(]?[A-Z0-9])")
_CLOSING = re.compile(r"^[\"'\u201d\u2019)]")


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` in order, stripped, without empty pieces."""
    pieces: list[str] = []
    for line in text.splitlines():
        position = 0
        for match in _SENTENCE_END.finditer(line):
            closing = 1 if _CLOSING.match(match.group(0)) else 0
            pieces.append(line[position:match.start() + closing].strip())
            position = match.end()
        pieces.append(line[position:].strip())
    return [piece for piece in pieces if piece]
