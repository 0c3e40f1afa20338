"""Labelled text as a source of emotion directions: human-written text with emotion labels.

A user brings text with a label column (JSONL/CSV/TSV) and says how labels map
to emotion names (``joy=happy,sadness=sad``; a label that already is an
emotion name maps to itself). Rows with an unmapped label are skipped and
counted. ``per_label`` caps each emotion's rows with a seeded, class-balanced
sample (kept in file order), so one large class cannot dominate and the
extraction stays fast.

Rows whose label maps to ``neutral`` are the baseline: the labelled source's
direction for an emotion is then its mean minus the neutral rows' mean (instead
of minus the mean over emotions), which keeps what the emotions share (the
genre, the platform) out of every direction. ``neutral`` never becomes an
emotion of the bundle.

GoEmotions' Ekman files (``text<TAB>label ids<TAB>id`` without a header, label
names in ``ekman_labels.txt`` beside them) are read by
:func:`read_goemotions_ekman`; multi-label rows are skipped, single-label
neutral rows are kept as the baseline.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoreg.errors import ConfigError, DataFormatError
from emoreg.utils.records import iter_records, require_text_field

#: The label (after mapping) of baseline rows: no emotion.
NEUTRAL = "neutral"

#: GoEmotions' Ekman labels mapped to emoreg emotion names.
EKMAN_TO_EMOREG = {
    "joy": "happy",
    "sadness": "sad",
    "fear": "afraid",
    "anger": "angry",
    "disgust": "disgusted",
    "surprise": "surprised",
}


@dataclass(frozen=True)
class LabelledText:
    """One human-written text labelled with an emotion."""

    emotion: str
    text: str


@dataclass
class LabelledSet:
    """Labelled texts and where they came from (recorded in the bundle)."""

    texts: list[LabelledText]
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def emotions(self) -> list[str]:
        """The emotions labelled (the neutral baseline excluded)."""
        return list(dict.fromkeys(t.emotion for t in self.texts if t.emotion != NEUTRAL))


@dataclass
class LabelledTexts:
    """A GoEmotions Ekman file's single-label rows: emotion rows and neutral rows."""

    texts: list[str]
    labels: list[str]
    neutral: list[str]  # single-label rows marked neutral (no emotion label is used from them)


def parse_label_map(spec: str | None) -> dict[str, str]:
    """``"joy=happy,sadness=sad"`` -> ``{"joy": "happy", "sadness": "sad"}``."""
    mapping: dict[str, str] = {}
    if not spec:
        return mapping
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        label, sep, emotion = part.partition("=")
        if not sep or not label.strip() or not emotion.strip():
            raise ConfigError(f"--label-map entry {part!r} must look like LABEL=EMOTION (e.g. joy=happy)")
        mapping[label.strip()] = emotion.strip().lower()
    return mapping


def read_goemotions_ekman(path: str | Path, labels_path: str | Path | None = None) -> LabelledTexts:
    """Single-label, non-neutral rows of a GoEmotions Ekman TSV (``text<TAB>ids<TAB>id``).

    Label ids index ``ekman_labels.txt`` next to the TSV (or ``labels_path``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    labels_path = Path(labels_path) if labels_path else path.parent / "ekman_labels.txt"
    if not labels_path.is_file():
        raise DataFormatError(f"{labels_path}: label list not found (one Ekman label per line)")
    names = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts, labels, neutral = [], [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2:
                raise DataFormatError(f"{path}, line {number}: expected text<TAB>label ids, got {line[:60]!r}")
            ids = [p for p in parts[1].split(",") if p.strip()]
            if len(ids) != 1:
                continue
            try:
                label = names[int(ids[0])]
            except (ValueError, IndexError):
                raise DataFormatError(f"{path}, line {number}: label id {ids[0]!r} is not in {labels_path}") from None
            if label in EKMAN_TO_EMOREG:
                texts.append(parts[0])
                labels.append(EKMAN_TO_EMOREG[label])
            elif label == "neutral":
                neutral.append(parts[0])
    if not texts:
        raise DataFormatError(f"{path}: no single-label, non-neutral rows found")
    return LabelledTexts(texts, labels, neutral)


def load_labelled(
    path: str | Path,
    *,
    text_field: str = "text",
    label_field: str = "label",
    label_map: dict[str, str] | None = None,
    file_format: str | None = None,
    per_label: int | None = None,
    seed: int = 0,
) -> LabelledSet:
    """Read labelled text for direction extraction.

    Args:
        file_format: ``"jsonl"``, ``"csv"``, ``"tsv"`` (default: from the extension) or
            ``"goemotions"`` (a GoEmotions Ekman TSV; fields and label map are implied).
        per_label: keep at most this many rows per emotion (seeded sample, file order kept).
    """
    path = Path(path)
    if per_label is not None and per_label < 2:
        raise ConfigError(f"per_label must be >= 2, got {per_label}")
    pairs: list[tuple[str, str]] = []
    skipped: Counter[str] = Counter()
    if file_format == "goemotions":
        data = read_goemotions_ekman(path)
        pairs = list(zip(data.labels, data.texts)) + [(NEUTRAL, text) for text in data.neutral]
        used_map = {**EKMAN_TO_EMOREG, NEUTRAL: NEUTRAL}
    else:
        used_map = dict(label_map or {})
        for number, record in iter_records(path, file_format):
            text = require_text_field(path, number, record, text_field).strip()
            label = require_text_field(path, number, record, label_field).strip()
            emotion = used_map.get(label, label.lower() if not used_map else None)
            if emotion is None:
                skipped[label] += 1
                continue
            pairs.append((emotion, text))
    if not pairs:
        raise DataFormatError(
            f"{path}: no rows with a mapped label (labels seen: {sorted(skipped)[:10]}; map: {used_map})"
        )
    by_emotion: dict[str, list[int]] = {}
    for index, (emotion, _) in enumerate(pairs):
        by_emotion.setdefault(emotion, []).append(index)
    if len(set(by_emotion) - {NEUTRAL}) < 1:
        raise DataFormatError(f"{path}: only neutral rows were found; label some rows with emotions")
    thin = {e: len(rows) for e, rows in by_emotion.items() if len(rows) < 2}
    if thin:
        raise DataFormatError(f"{path}: every emotion needs at least 2 labelled rows; too few for {thin}")
    keep = set(range(len(pairs)))
    if per_label is not None:
        rng = random.Random(seed)
        keep = {i for rows in by_emotion.values() for i in (rows if len(rows) <= per_label
                                                                else rng.sample(rows, per_label))}
    texts = [LabelledText(emotion=pairs[i][0], text=pairs[i][1]) for i in sorted(keep)]
    description = {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "format": file_format or path.suffix.lstrip(".").lower(),
        "text_field": text_field if file_format != "goemotions" else None,
        "label_field": label_field if file_format != "goemotions" else None,
        "label_map": used_map,
        "per_label": per_label,
        "seed": seed,
        "rows_per_emotion": dict(Counter(t.emotion for t in texts)),
        "rows_skipped_unmapped": sum(skipped.values()),
    }
    return LabelledSet(texts=texts, description=description)


__all__ = [
    "EKMAN_TO_EMOREG", "NEUTRAL", "LabelledSet", "LabelledText", "LabelledTexts", "load_labelled", "parse_label_map",
    "read_goemotions_ekman",
]
