"""The story corpus that emotion vectors are extracted from.

A corpus holds *stories*, each written to evoke one emotion without naming it,
and *neutral* texts (emotion-free dialogues) used for denoising and for the
base model's projection statistics. The built-in corpus ships with the package
(``emoreg/data/corpus``); users can add emotions or replace it with their own
JSONL files:

* stories: one object per line, ``{"emotion": str, "topic": str, "text": str}``
* neutral texts: ``{"text": str, "topic": str (optional)}``

Each built-in emotion also has a banned-word list: the emotion word, its
inflections and synonyms, none of which may appear in that emotion's stories.
An entry ending in ``*`` matches any word with that prefix.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from emoreg.errors import DataFormatError
from emoreg.utils.records import iter_records, require_text_field
from emoreg.vectors.dialogues import Dialogue, load_dialogues
from emoreg.vectors.labelled import NEUTRAL, LabelledText

BUILTIN_EMOTIONS: tuple[str, ...] = (
    "happy", "sad", "afraid", "angry", "disgusted", "surprised", "ashamed", "guilty",
    "desperate", "calm", "loving", "hostile", "anxious", "proud", "frustrated", "hopeful",
    "lonely", "grateful", "jealous", "bored", "blissful", "brooding", "panicked", "relieved",
)

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class Story:
    """One story written to evoke ``emotion``; ``topic`` groups stories for held-out validation."""

    emotion: str
    topic: str
    text: str


@dataclass(frozen=True)
class NeutralText:
    """One emotion-free text (a dialogue in the built-in corpus)."""

    text: str
    topic: str = ""


@dataclass
class Corpus:
    """Stories per emotion, neutral texts and banned-word lists; optionally dialogues and labelled text.

    Which of the three example sources an extraction reads is chosen by
    ``ExtractionConfig.sources``; ``labelled_description`` records where the
    labelled text came from (file, hash, label map) for the bundle.
    """

    stories: list[Story]
    neutral: list[NeutralText]
    banned_words: dict[str, list[str]] = field(default_factory=dict)
    dialogues: list[Dialogue] = field(default_factory=list)
    labelled: list[LabelledText] = field(default_factory=list)
    labelled_description: dict = field(default_factory=dict)

    @property
    def emotions(self) -> list[str]:
        """Emotions in first-appearance order of the stories, then of the dialogues and labelled texts
        (the labelled texts' neutral baseline is not an emotion)."""
        return list(dict.fromkeys([s.emotion for s in self.stories] + [d.emotion for d in self.dialogues]
                                  + [t.emotion for t in self.labelled if t.emotion != NEUTRAL]))

    @property
    def topics(self) -> list[str]:
        """Topics in first-appearance order of the stories."""
        return list(dict.fromkeys(story.topic for story in self.stories))

    def select(self, emotions: Sequence[str] | None) -> Corpus:
        """Return a corpus restricted to ``emotions`` (all of them when ``None``)."""
        if emotions is None:
            return self
        known = set(self.emotions)
        missing = [e for e in emotions if e not in known]
        if missing:
            raise DataFormatError(
                f"emotions {missing} have no stories (nor dialogues or labelled texts) in the corpus; "
                f"it has {self.emotions}"
            )
        wanted = set(emotions)
        order = {e: i for i, e in enumerate(emotions)}
        stories = sorted((s for s in self.stories if s.emotion in wanted), key=lambda s: order[s.emotion])
        banned = {e: w for e, w in self.banned_words.items() if e in wanted}
        return Corpus(
            stories=stories, neutral=self.neutral, banned_words=banned,
            dialogues=[d for d in self.dialogues if d.emotion in wanted],
            labelled=[t for t in self.labelled if t.emotion in wanted or t.emotion == NEUTRAL],
            labelled_description=dict(self.labelled_description),
        )

    def with_stories(self, extra: Iterable[Story], replace_emotions: bool = True) -> Corpus:
        """Add ``extra`` stories; with ``replace_emotions`` an emotion present in
        ``extra`` drops its existing stories (the user's set replaces ours)."""
        extra = list(extra)
        replaced = {s.emotion for s in extra} if replace_emotions else set()
        kept = [s for s in self.stories if s.emotion not in replaced]
        return replace(self, stories=kept + extra, banned_words=dict(self.banned_words))

    def with_neutral(self, neutral: Sequence[NeutralText]) -> Corpus:
        """Return a corpus whose neutral texts are ``neutral``."""
        return replace(self, stories=list(self.stories), neutral=list(neutral), banned_words=dict(self.banned_words))

    def with_dialogues(self, extra: Iterable[Dialogue], replace_emotions: bool = True) -> Corpus:
        """Add dialogues; with ``replace_emotions`` an emotion present in ``extra`` drops its existing ones."""
        extra = list(extra)
        replaced = {d.emotion for d in extra} if replace_emotions else set()
        kept = [d for d in self.dialogues if d.emotion not in replaced]
        return replace(self, dialogues=kept + extra)

    def with_labelled(self, texts: Sequence[LabelledText], description: dict | None = None) -> Corpus:
        """Return a corpus whose labelled texts are ``texts`` (``description`` goes into the bundle)."""
        return replace(self, labelled=list(texts), labelled_description=dict(description or {}))

    def content_hash(self) -> str:
        """SHA-256 of the stories and neutral texts (order-sensitive), for provenance."""
        digest = hashlib.sha256()
        for story in self.stories:
            digest.update(json.dumps([story.emotion, story.topic, story.text]).encode())
        digest.update(b"\x00neutral\x00")
        for text in self.neutral:
            digest.update(json.dumps([text.topic, text.text]).encode())
        if self.dialogues:  # absent from the hash of story-only corpora, so their hashes stay as they were
            digest.update(b"\x00dialogues\x00")
            for d in self.dialogues:
                digest.update(json.dumps([d.emotion, d.topic, d.speaker, d.user, d.assistant]).encode())
        if self.labelled:
            digest.update(b"\x00labelled\x00")
            for t in self.labelled:
                digest.update(json.dumps([t.emotion, t.text]).encode())
        return digest.hexdigest()

    def validate(self, *, min_stories_per_emotion: int = 2, min_neutral: int = 2) -> None:
        """Raise :class:`DataFormatError` when the corpus cannot support extraction."""
        if not self.stories:
            raise DataFormatError("the corpus has no stories")
        counts = Counter(story.emotion for story in self.stories)
        thin = {e: n for e, n in counts.items() if n < min_stories_per_emotion}
        if thin:
            raise DataFormatError(
                f"every emotion needs at least {min_stories_per_emotion} stories; too few for {thin}"
            )
        if len(counts) < 2:
            raise DataFormatError(
                f"difference-of-means extraction needs at least 2 emotions; the corpus has {sorted(counts)}"
            )
        if len(self.neutral) < min_neutral:
            raise DataFormatError(
                f"the corpus needs at least {min_neutral} neutral texts for denoising; it has {len(self.neutral)}"
            )


def words(text: str) -> list[str]:
    """Lower-case word tokens, the unit banned-word lists are matched against."""
    return _WORD.findall(text.lower())


def banned_words_in(text: str, banned: Iterable[str]) -> list[str]:
    """Return the words of ``text`` that a banned-word list forbids (in order)."""
    exact = set()
    prefixes = []
    for entry in banned:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry.endswith("*"):
            prefixes.append(entry[:-1])
        else:
            exact.add(entry)
    return [w for w in words(text) if w in exact or any(w.startswith(p) for p in prefixes)]


def load_stories(path: str | Path) -> list[Story]:
    """Read stories from a JSONL/CSV/TSV file with ``emotion``, ``topic``, ``text`` fields.

    ``topic`` may be missing; such stories get the topic ``"default"``.
    """
    stories = []
    for number, record in iter_records(path):
        emotion = require_text_field(path, number, record, "emotion").strip().lower()
        text = require_text_field(path, number, record, "text")
        topic = record.get("topic") or "default"
        if not isinstance(topic, str):
            raise DataFormatError(f"{path}, line {number}: field 'topic' must be a string, got {topic!r:.60}")
        if not re.fullmatch(r"[a-z][a-z0-9_\-]*", emotion):
            raise DataFormatError(
                f"{path}, line {number}: field 'emotion' must be a lower-case name like 'desperate', got {emotion!r}"
            )
        stories.append(Story(emotion=emotion, topic=topic.strip(), text=text.strip()))
    if not stories:
        raise DataFormatError(f"{path}: no stories found (expected JSON lines with 'emotion' and 'text')")
    return stories


def load_neutral(path: str | Path) -> list[NeutralText]:
    """Read neutral texts from a JSONL/CSV/TSV file with a ``text`` field."""
    texts = []
    for number, record in iter_records(path):
        text = require_text_field(path, number, record, "text")
        texts.append(NeutralText(text=text.strip(), topic=str(record.get("topic") or "")))
    if not texts:
        raise DataFormatError(f"{path}: no neutral texts found (expected JSON lines with a 'text' field)")
    return texts


def load_banned_words(path: str | Path) -> list[str]:
    """Read a banned-word list: one entry per line, ``#`` starts a comment."""
    entries = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line:
            entries.append(line)
    return entries


def builtin_corpus_dir() -> Path:
    """The directory of the corpus shipped with the package."""
    return Path(str(resources.files("emoreg") / "data" / "corpus"))


def load_builtin_corpus(emotions: Sequence[str] | None = None) -> Corpus:
    """Load the shipped corpus (24 emotions, neutral dialogues, banned words).

    With ``emotions``, only those emotions' stories are read (in that order).
    """
    root = builtin_corpus_dir()
    if emotions is not None:
        unknown = [e for e in emotions if e not in BUILTIN_EMOTIONS]
        if unknown:
            raise DataFormatError(
                f"emotions {unknown} have no stories in the built-in corpus; it has {list(BUILTIN_EMOTIONS)} "
                "(add your own with a stories file)"
            )
    stories: list[Story] = []
    banned: dict[str, list[str]] = {}
    for emotion in BUILTIN_EMOTIONS if emotions is None else emotions:
        stories.extend(load_stories(root / "stories" / f"{emotion}.jsonl"))
        banned[emotion] = load_banned_words(root / "banned" / f"{emotion}.txt")
    return Corpus(stories=stories, neutral=load_builtin_neutral(), banned_words=banned,
                  dialogues=load_builtin_dialogues(emotions))


def load_builtin_dialogues(emotions: Sequence[str] | None = None) -> list[Dialogue]:
    """The shipped dialogue corpus (``data/corpus/dialogues``) for ``emotions`` (every file when ``None``)."""
    root = builtin_corpus_dir() / "dialogues"
    dialogues: list[Dialogue] = []
    for emotion in BUILTIN_EMOTIONS if emotions is None else emotions:
        path = root / f"{emotion}.jsonl"
        if path.is_file():
            dialogues.extend(load_dialogues(path))
    return dialogues


def load_builtin_neutral() -> list[NeutralText]:
    """The shipped neutral dialogues alone."""
    return load_neutral(builtin_corpus_dir() / "neutral.jsonl")
