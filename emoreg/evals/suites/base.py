"""The suite interface every eval implements, and the context suites run in.

A suite reads items (its built-in data or a user file in a public format),
turns them into one JSON record per item (``run``, a generator, so the runner
can save each record as soon as it exists and resume an interrupted run), and
reduces the records to metrics (``summarize``). Every metric is
``{"value": float, "ci": [low, high], "n": int}`` (see :mod:`emoreg.evals.statistics`).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from emoreg.evals.judges.base import Judge
from emoreg.models.generation import ReplyGenerationConfig
from emoreg.vectors.bundle import EmotionVectors

Item = dict[str, Any]
Record = dict[str, Any]
Metric = dict[str, Any]


@dataclass
class EvalContext:
    """Everything a suite may use. Suites must not modify the model.

    Attributes:
        model, tokenizer: the model under evaluation (eval mode is set by the helpers that run it).
        vectors: the emotion-vector bundle (required by suites with ``requires_vectors``).
        judge: grades free-form replies (suites with ``uses_judge``).
        seed: seeds sampling; greedy decoding ignores it.
        batch_size: batch size for forward passes and generation.
        generation: reply generation settings (suites may lower ``max_new_tokens`` for their items).
        base_model: the base model for comparisons (KL divergence, concealment): the model itself, or a
            zero-argument callable that loads it (called at most once, by :meth:`get_base_model`).
        layer: the bundle layer to read (default: the bundle's default layer).
        emotions: emotions to report (default: all of the bundle's).
        target_emotions: the emotions a regulariser acted on (concealment reads these; default: ``emotions``).
        progress: called with the number of items just finished (progress bars).
    """

    model: nn.Module
    tokenizer: Any
    vectors: EmotionVectors | None = None
    judge: Judge | None = None
    seed: int = 0
    batch_size: int = 8
    generation: ReplyGenerationConfig = field(default_factory=ReplyGenerationConfig)
    base_model: nn.Module | Callable[[], nn.Module] | None = None
    layer: int | None = None
    emotions: list[str] | None = None
    target_emotions: list[str] | None = None
    progress: Callable[[int], None] | None = None

    def get_base_model(self) -> nn.Module | None:
        """The base model (loaded on first use when given as a callable)."""
        if self.base_model is not None and not isinstance(self.base_model, nn.Module):
            self.base_model = self.base_model()
        return self.base_model

    def read_layer(self) -> int:
        if self.vectors is None:
            raise ValueError("this suite needs an emotion-vector bundle (vectors=...)")
        return self.layer if self.layer is not None else self.vectors.default_layer

    def report_emotions(self) -> list[str]:
        if self.vectors is None:
            return list(self.emotions or [])
        return list(self.emotions or self.vectors.emotions)

    def advance(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress(n)


class Suite(ABC):
    """One evaluation. Subclasses set the class attributes and implement the three methods.

    ``data_parts`` maps each data part to its built-in file (relative to ``emoreg/data/evals``); the first
    part is the suite's main data (``--data SUITE=PATH``), others are addressed as ``SUITE.PART=PATH``.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    data_parts: ClassVar[dict[str, str]] = {}
    data_format: ClassVar[str] = ""
    requires_vectors: ClassVar[bool] = False
    uses_judge: ClassVar[bool] = False
    #: False for suites that read all items together and yield summary records with ids of their own
    #: (e.g. one per emotion): they are not resumed item by item; an unfinished cache entry is run again.
    records_per_item: ClassVar[bool] = True

    def builtin_path(self, part: str) -> Path:
        return Path(str(resources.files("emoreg") / "data" / "evals" / self.data_parts[part]))

    @abstractmethod
    def load(self, part: str, path: Path) -> list[Item]:
        """Read one data part; every item gets a unique string ``id``. Bad data raises
        :class:`emoreg.errors.DataFormatError` naming the file, line and field."""

    def settings(self, ctx: EvalContext) -> dict[str, Any]:
        """Everything besides model and data that changes the records (part of the cache key)."""
        return {}

    @abstractmethod
    def run(self, ctx: EvalContext, items: Sequence[Item]) -> Iterator[Record]:
        """Yield one record per item (same ``id``), in any order, calling ``ctx.advance`` as items finish."""

    @abstractmethod
    def summarize(self, records: Sequence[Record], ctx: EvalContext) -> dict[str, Metric]:
        """Reduce records to metrics with confidence intervals."""


def items_by_part(suite: str, items: Sequence[Item], parts: Sequence[str]) -> dict[str, list[Item]]:
    """``items`` grouped by their ``part`` field, in order; an item of another part is a bug (``ValueError``)."""
    grouped: dict[str, list[Item]] = {part: [] for part in parts}
    for item in items:
        if item.get("part") not in grouped:
            raise ValueError(f"{suite} item {item.get('id')!r} has unknown part {item.get('part')!r}")
        grouped[item["part"]].append(item)
    return grouped


def limit_items(items: Sequence[Item], limit: int | None, seed: int) -> list[Item]:
    """At most ``limit`` items: a seeded random subset kept in file order (never hand-picked)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]
