"""Training data and held-out-topic validation for the text-emotion classifier.

The classifier learns from emoreg's own corpus: 24 emotions x 60 stories on 20
topics, plus the neutral (emotion-free) user/assistant dialogues on 110 topics,
which teach it a ``neutral`` class so that plain helpful text does not have to
be assigned to some emotion. Stories are about 100 words and the texts it must
score are replies and their sentences, so each story, and each dialogue turn
(role prefix removed), is cut into windows of consecutive sentences (by default
single sentences and windows of three) and also kept whole; every piece carries
its source's label and topic.

Validation leaves whole topics out: story topics and neutral topics are each
split into folds, the classifier is fitted on the pieces of the other topics
and scored on the held-out topics' pieces, so no held-out text shares a scene
with training text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from emoreg.errors import ConfigError
from emoreg.textemotion.classifier import NEUTRAL, TextEmotionClassifier, fit_logistic_regression
from emoreg.textemotion.embedder import SentenceEmbedder
from emoreg.textemotion.sentences import split_sentences
from emoreg.vectors.corpus import Corpus

_ROLE_PREFIX = re.compile(r"^\s*(user|assistant|system)\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class LabelledText:
    """One training text: a window of ``sentences`` sentences (0 = the whole source) from source ``source``.

    ``label`` is an emotion or ``"neutral"``; ``topic`` of a neutral text is prefixed with ``"neutral:"``.
    """

    text: str
    label: str
    topic: str
    source: int
    sentences: int


def story_windows(text: str, window_sizes: Sequence[int] = (1, 3), *, min_words: int = 4) -> list[tuple[str, int]]:
    """All windows of consecutive sentences of each size in ``window_sizes`` plus the whole text (size 0).

    Windows with fewer than ``min_words`` words are dropped; a size not smaller
    than the text's sentence count gives no window (the whole text covers it).
    """
    if any(size < 1 for size in window_sizes):
        raise ConfigError(f"window sizes must be positive integers, got {list(window_sizes)}")
    sentences = split_sentences(text)
    out: list[tuple[str, int]] = []
    for size in window_sizes:
        if size >= len(sentences):
            continue
        for start in range(len(sentences) - size + 1):
            window = " ".join(sentences[start:start + size])
            if len(window.split()) >= min_words:
                out.append((window, size))
    out.append((text.strip(), 0))
    return out


def dialogue_turns(text: str) -> list[str]:
    """The turns of a ``User: ...`` / ``Assistant: ...`` dialogue (one per line), role prefixes removed."""
    return [_ROLE_PREFIX.sub("", line).strip() for line in text.splitlines() if _ROLE_PREFIX.sub("", line).strip()]


def build_training_texts(corpus: Corpus, window_sizes: Sequence[int] = (1, 3), *, min_words: int = 4,
                         neutral: bool = True) -> list[LabelledText]:
    """Every story's windows and the whole story, labelled with its emotion and topic; with ``neutral``,
    also every neutral dialogue turn's windows and the whole turn, labelled ``"neutral"``."""
    texts = []
    for number, story in enumerate(corpus.stories):
        for window, size in story_windows(story.text, window_sizes, min_words=min_words):
            texts.append(LabelledText(window, story.emotion, story.topic, number, size))
    if neutral:
        for number, item in enumerate(corpus.neutral, start=len(corpus.stories)):
            topic = f"{NEUTRAL}:{item.topic or number}"
            for turn in dialogue_turns(item.text):
                for window, size in story_windows(turn, window_sizes, min_words=min_words):
                    texts.append(LabelledText(window, NEUTRAL, topic, number, size))
    return texts


def topic_folds(topics: Sequence[str], folds: int, *, seed: int = 0) -> list[list[str]]:
    """Split the distinct ``topics`` into ``folds`` groups of near-equal size (a seeded shuffle)."""
    distinct = sorted(set(topics))
    if not 2 <= folds <= len(distinct):
        raise ConfigError(f"folds must be between 2 and the number of topics ({len(distinct)}), got {folds}")
    random.Random(seed).shuffle(distinct)
    return [sorted(distinct[i::folds]) for i in range(folds)]


def training_labels(texts: Sequence[LabelledText]) -> list[str]:
    """Class names in first-appearance order, with ``"neutral"`` moved last when present."""
    labels = list(dict.fromkeys(t.label for t in texts))
    return [label for label in labels if label != NEUTRAL] + ([NEUTRAL] if NEUTRAL in labels else [])


def leave_topics_out(
    embeddings: torch.Tensor,
    texts: Sequence[LabelledText],
    *,
    l2: float,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out-topic accuracy of logistic regression on ``embeddings`` ``[N, D]`` of ``texts``.

    Story topics and neutral topics are folded separately (fold ``i`` holds out
    the ``i``-th group of each). Accuracy is the argmax over all classes.
    Returns ``{"l2", "folds", "seed", "classes", "chance", "accuracy": {"all", "emotion_texts",
    "neutral_texts", "whole", "window_<k>"}, "n": {...}, "desperate_vs_calm_auc"}`` where the
    window keys cover emotion texts only and the AUC compares the held-out ``desperate``
    probability of desperate texts with that of calm texts.
    """
    from emoreg.textemotion.validation import roc_auc

    if embeddings.shape[0] != len(texts):
        raise ConfigError(f"{embeddings.shape[0]} embeddings for {len(texts)} texts")
    classes = training_labels(texts)
    index = {label: i for i, label in enumerate(classes)}
    labels = torch.tensor([index[t.label] for t in texts])
    story_topics = [t.topic for t in texts if t.label != NEUTRAL]
    neutral_topics = [t.topic for t in texts if t.label == NEUTRAL]
    held = topic_folds(story_topics, folds, seed=seed)
    if neutral_topics:
        held = [a + b for a, b in zip(held, topic_folds(neutral_topics, folds, seed=seed))]
    proba = torch.zeros(len(texts), len(classes))
    for held_out in held:
        test = torch.tensor([t.topic in held_out for t in texts])
        weight, bias = fit_logistic_regression(embeddings[~test], labels[~test], len(classes), l2=l2)
        proba[test] = torch.softmax(embeddings[test].float() @ weight.T + bias, dim=-1)
    correct = proba.argmax(dim=1) == labels
    is_neutral = torch.tensor([t.label == NEUTRAL for t in texts])
    groups: dict[str, torch.Tensor] = {"all": torch.ones(len(texts), dtype=torch.bool), "emotion_texts": ~is_neutral}
    if bool(is_neutral.any()):
        groups["neutral_texts"] = is_neutral
    for size in sorted({t.sentences for t in texts}):
        name = "whole" if size == 0 else f"window_{size}"
        groups[name] = torch.tensor([t.sentences == size for t in texts]) & ~is_neutral
    result: dict[str, Any] = {
        "l2": l2, "folds": folds, "seed": seed, "classes": classes, "chance": 1.0 / len(classes),
        "accuracy": {name: float(correct[rows].float().mean()) for name, rows in groups.items()},
        "n": {name: int(rows.sum()) for name, rows in groups.items()},
    }
    if "desperate" in index and "calm" in index:
        column = proba[:, index["desperate"]]
        result["desperate_vs_calm_auc"] = roc_auc(column[labels == index["desperate"]].tolist(),
                                                  column[labels == index["calm"]].tolist())
    return result


def train_classifier(
    corpus: Corpus,
    embedder: SentenceEmbedder,
    *,
    l2: float,
    window_sizes: Sequence[int] = (1, 3),
    min_words: int = 4,
    neutral: bool = True,
    metadata: dict[str, Any] | None = None,
) -> TextEmotionClassifier:
    """Fit a :class:`TextEmotionClassifier` on every window of ``corpus`` (see :func:`build_training_texts`)."""
    texts = build_training_texts(corpus, window_sizes, min_words=min_words, neutral=neutral)
    classes = training_labels(texts)
    embeddings = embedder.embed([t.text for t in texts])
    labels = torch.tensor([classes.index(t.label) for t in texts])
    weight, bias = fit_logistic_regression(embeddings, labels, len(classes), l2=l2)
    return TextEmotionClassifier(weight, bias, classes, embedder=embedder, metadata=metadata)
