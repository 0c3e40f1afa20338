"""Check built-in dialogue files: format, 10 topics x 2 speakers, banned words, variety.

Usage: .venv/bin/python scripts/check_dialogues.py [EMOTION ...]   (default: every file present)
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from emoreg.vectors.corpus import banned_words_in, load_banned_words, words

ROOT = Path(__file__).resolve().parents[1] / "emoreg" / "data" / "corpus"
TOPICS = ["work", "family", "money", "health", "travel", "technology", "home", "school", "friends", "food"]


def check(emotion: str) -> list[str]:
    problems = []
    path = ROOT / "dialogues" / f"{emotion}.jsonl"
    banned = load_banned_words(ROOT / "banned" / f"{emotion}.txt")
    cells = Counter()
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"{path.name}:{number}: not JSON ({error})")
            continue
        if item.get("emotion") != emotion:
            problems.append(f"{path.name}:{number}: emotion {item.get('emotion')!r} != {emotion!r}")
        if item.get("topic") not in TOPICS:
            problems.append(f"{path.name}:{number}: topic {item.get('topic')!r} not in {TOPICS}")
        speaker = item.get("speaker")
        expected = {"emotion", "topic", "speaker", "user"} | ({"assistant"} if speaker == "assistant" else set())
        if speaker not in ("user", "assistant") or set(item) != expected:
            problems.append(f"{path.name}:{number}: keys {sorted(item)} (speaker {speaker!r}) != {sorted(expected)}")
            continue
        cells[(item["topic"], speaker)] += 1
        for field in ("user", "assistant") if speaker == "assistant" else ("user",):
            text = item[field]
            found = banned_words_in(text, banned)
            if found:
                problems.append(f"{path.name}:{number}: {field} uses banned words {found}")
            n = len(words(text))
            low, high = (30, 110) if field == speaker else (6, 60)
            if not low <= n <= high:
                problems.append(f"{path.name}:{number}: {field} has {n} words (want {low}-{high})")
        texts.append(item[speaker])
    for topic in TOPICS:
        for speaker in ("user", "assistant"):
            if cells[(topic, speaker)] != 1:
                problems.append(f"{path.name}: {cells[(topic, speaker)]} items for ({topic}, {speaker}), want 1")
    runs = {}
    for i, text in enumerate(texts):
        w = words(text)
        for j in range(len(w) - 5):
            run = tuple(w[j:j + 6])
            if run in runs and runs[run] != i:
                problems.append(f"{path.name}: items {runs[run]} and {i} share the 6-word run {' '.join(run)!r}")
            runs.setdefault(run, i)
    return problems


def main(argv: list[str]) -> int:
    emotions = argv or sorted(p.stem for p in (ROOT / "dialogues").glob("*.jsonl"))
    bad = 0
    for emotion in emotions:
        problems = check(emotion)
        bad += len(problems)
        print(f"{emotion}: {'ok' if not problems else f'{len(problems)} problems'}")
        for problem in problems:
            print("  " + problem)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
