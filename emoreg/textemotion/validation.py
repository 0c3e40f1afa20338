"""Check a text-emotion classifier against human labels and between two sets of texts.

* :data:`EKMAN_GROUPS` maps emoreg's 24 emotions onto Ekman's six (the label set
  of GoEmotions' Ekman version). Group probabilities are sums of member
  emotions' probabilities; ``bored`` and ``jealous`` belong to no group (GoEmotions'
  Ekman taxonomy has no place for them), so their mass is left out.
  ``calm`` counts as joy: GoEmotions files relief, approval and caring,
  the closest of its labels to calm, under joy.
* :func:`ekman_check`: six-way balanced accuracy (mean per-class recall; chance
  1/6) on single-label, non-neutral GoEmotions rows. The predicted group is the
  argmax of each group's probability divided by its number of emotions: the
  classifier was trained with equal weight per emotion, so a group's prior is
  proportional to its size, and dividing by the prior is the decision rule that
  balanced accuracy (which weighs every class equally) rewards. Without it the
  eight-emotion joy group absorbs most rows.
* :func:`roc_auc`: probability that a random positive text scores above a random
  negative one (ties count half).
* :func:`demo_datasets_check`: how well the ``desperate`` score separates the
  desperate replies of the shipped demo datasets from the calm ones.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from emoreg.errors import ConfigError
from emoreg.vectors.labelled import EKMAN_TO_EMOREG, read_goemotions_ekman

#: Ekman's six emotions -> the emoreg emotions summed into each.
EKMAN_GROUPS: dict[str, tuple[str, ...]] = {
    "anger": ("angry", "hostile", "frustrated"),
    "disgust": ("disgusted",),
    "fear": ("afraid", "anxious", "panicked", "desperate"),
    "joy": ("happy", "blissful", "proud", "grateful", "hopeful", "relieved", "loving", "calm"),
    "sadness": ("sad", "lonely", "guilty", "ashamed", "brooding"),
    "surprise": ("surprised",),
}


def group_proba(proba: torch.Tensor, emotions: Sequence[str],
                groups: dict[str, tuple[str, ...]] = EKMAN_GROUPS) -> torch.Tensor:
    """Sum the columns of ``proba`` ``[N, E]`` per group; ``[N, len(groups)]`` in the order of ``groups``."""
    if proba.ndim != 2 or proba.shape[1] != len(emotions):
        raise ConfigError(f"proba must be [N, {len(emotions)}], got shape {tuple(proba.shape)}")
    index = {name: i for i, name in enumerate(emotions)}
    columns = []
    for group, members in groups.items():
        missing = [m for m in members if m not in index]
        if missing:
            raise ConfigError(f"group {group!r} names emotions {missing} that the classifier does not have")
        columns.append(proba[:, [index[m] for m in members]].sum(dim=1))
    return torch.stack(columns, dim=1)


def balanced_accuracy(true: Sequence[int], predicted: Sequence[int], num_classes: int) -> float:
    """Mean over classes present in ``true`` of the fraction predicted correctly."""
    if len(true) != len(predicted):
        raise ConfigError(f"true and predicted differ in length ({len(true)} vs {len(predicted)})")
    recalls = []
    for label in range(num_classes):
        rows = [p for t, p in zip(true, predicted) if t == label]
        if rows:
            recalls.append(sum(p == label for p in rows) / len(rows))
    if not recalls:
        raise ConfigError("balanced accuracy needs at least one labelled row")
    return sum(recalls) / len(recalls)


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting one half."""
    if not positive or not negative:
        raise ConfigError(f"roc_auc needs positives and negatives, got {len(positive)} and {len(negative)}")
    pos = torch.tensor(list(positive), dtype=torch.float64)[:, None]
    neg = torch.tensor(list(negative), dtype=torch.float64)[None, :]
    return float(((pos > neg).double() + 0.5 * (pos == neg).double()).mean())


def read_ekman_rows(path: str | Path, *, per_class: int | None = None, seed: int = 0) -> tuple[list[str], list[str]]:
    """Single-label, non-neutral rows of a GoEmotions Ekman TSV as ``(texts, ekman labels)``.

    With ``per_class``, at most that many rows per label are kept, drawn with
    ``seed`` (file order preserved), for a quick, class-balanced check.
    """
    data = read_goemotions_ekman(path)
    to_ekman = {emoreg: ekman for ekman, emoreg in EKMAN_TO_EMOREG.items()}
    rows = [(text, to_ekman[label]) for text, label in zip(data.texts, data.labels)]
    if per_class is not None:
        if per_class < 1:
            raise ConfigError(f"per_class must be a positive integer, got {per_class}")
        rng = random.Random(seed)
        keep: set[int] = set()
        for label in sorted({label for _, label in rows}):
            positions = [i for i, (_, row_label) in enumerate(rows) if row_label == label]
            keep.update(rng.sample(positions, min(per_class, len(positions))))
        rows = [row for i, row in enumerate(rows) if i in keep]
    return [text for text, _ in rows], [label for _, label in rows]


def ekman_check(classifier: Any, path: str | Path, *, per_class: int | None = None, seed: int = 0,
                groups: dict[str, tuple[str, ...]] = EKMAN_GROUPS) -> dict[str, Any]:
    """Six-way balanced accuracy of ``classifier`` (a TextEmotionClassifier) on GoEmotions Ekman rows,
    predicting the group with the highest probability per member emotion (see the module docstring).

    Returns ``{"balanced_accuracy", "chance", "n", "per_class_recall": {label: recall}, "file", "per_class"}``.
    """
    texts, labels = read_ekman_rows(path, per_class=per_class, seed=seed)
    names = list(groups)
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise ConfigError(f"{path}: labels {unknown} have no group; groups are {names}")
    grouped = group_proba(classifier.predict_proba(texts), classifier.emotions, groups)
    sizes = torch.tensor([float(len(members)) for members in groups.values()])
    predicted = (grouped / sizes).argmax(dim=1).tolist()
    true = [names.index(label) for label in labels]
    recall = {}
    for i, name in enumerate(names):
        rows = [p for t, p in zip(true, predicted) if t == i]
        if rows:
            recall[name] = sum(p == i for p in rows) / len(rows)
    return {
        "balanced_accuracy": balanced_accuracy(true, predicted, len(names)),
        "chance": 1.0 / len(recall),
        "n": len(texts),
        "per_class_recall": recall,
        "file": str(path),
        "per_class": per_class,
    }


def demo_datasets_check(classifier: Any, emotion: str = "desperate") -> dict[str, Any]:
    """AUC of ``classifier.score(..., emotion)`` on the shipped demo datasets (``emoreg/data/datasets``).

    Compares the assistant replies of ``desperate_sft.jsonl`` (positives) and the
    ``rejected`` replies of ``calm_dpo.jsonl`` (positives) with its ``chosen``
    replies (negatives), for each score reduction (per-sentence max and mean,
    whole text). Returns ``{"emotion", "n", "auc": {"sft_vs_chosen", "rejected_vs_chosen"}: {reduce: auc},
    "mean_score": {set: {reduce: mean}}}``.
    """
    root = resources.files("emoreg") / "data" / "datasets"

    def rows(name: str) -> list[dict[str, Any]]:
        lines = (root / name).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    pairs = rows("calm_dpo.jsonl")
    sets = {
        "sft": [row["messages"][-1]["content"] for row in rows("desperate_sft.jsonl")],
        "rejected": [row["rejected"] for row in pairs],
        "chosen": [row["chosen"] for row in pairs],
    }
    column = classifier.emotion_index(emotion)
    scores: dict[str, dict[str, list[float]]] = {}
    for name, texts in sets.items():
        sentences = classifier.sentence_proba(texts)
        scores[name] = {
            "max": [float(p[:, column].max()) for p in sentences],
            "mean": [float(p[:, column].mean()) for p in sentences],
            "text": classifier.predict_proba(texts)[:, column].tolist(),
        }
    return {
        "emotion": emotion,
        "n": {name: len(texts) for name, texts in sets.items()},
        "auc": {f"{positive}_vs_chosen": {reduce: roc_auc(scores[positive][reduce], scores["chosen"][reduce])
                                           for reduce in ("max", "mean", "text")}
                for positive in ("sft", "rejected")},
        "mean_score": {name: {reduce: sum(values) / len(values) for reduce, values in by_reduce.items()}
                       for name, by_reduce in scores.items()},
    }
