"""Fake eval suites for the runner, CLI and callback tests: real forward passes, tiny data, no judge model.

``NllSuite`` scores each item's text by the model's mean token negative log-likelihood (so records
depend on the weights and the cache key must follow them), remembers which item ids it ran, and can
be told to fail after some records (to test resuming).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from emoreg.errors import DataFormatError
from emoreg.evals.judges.base import Judge, Verdict
from emoreg.evals.scoring import mean_token_nll
from emoreg.evals.statistics import mean, rate
from emoreg.evals.suites.base import EvalContext, Suite
from emoreg.utils.records import iter_records


def write_items(path: Path, n: int, prefix: str = "item") -> Path:
    """A JSONL file of ``n`` items ``{"id", "text"}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"id": f"{prefix}-{i}", "text": f"{prefix} number {i} says hello {'!' * i}"}))
            handle.write("\n")
    return path


class NllSuite(Suite):
    """Mean token NLL of each item's text; two data parts whose built-in files are set per test."""

    name = "fake_nll"
    description = "mean token negative log-likelihood of short texts (a test suite)"
    data_parts: ClassVar[dict[str, str]] = {"main": "fake/main.jsonl", "extra": "fake/extra.jsonl"}
    data_format = 'JSONL: {"id": str, "text": str}'
    builtin_files: ClassVar[dict[str, Path]] = {}

    def __init__(self, fail_after: int | None = None, on_run: Callable[[EvalContext], None] | None = None) -> None:
        self.fail_after = fail_after
        self.on_run = on_run
        self.ran_ids: list[str] = []

    def builtin_path(self, part: str) -> Path:
        return self.builtin_files[part]

    def load(self, part: str, path: Path) -> list[dict[str, Any]]:
        items = []
        for line, record in iter_records(path):
            if not isinstance(record.get("text"), str):
                raise DataFormatError(f"{path}, line {line}: field 'text' must be a string")
            items.append({"id": str(record["id"]), "text": record["text"], "part": part})
        return items

    def settings(self, ctx: EvalContext) -> dict[str, Any]:
        return {"batch_size": ctx.batch_size}

    def run(self, ctx: EvalContext, items: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if self.on_run is not None:
            self.on_run(ctx)
        for count, item in enumerate(items):
            if self.fail_after is not None and count >= self.fail_after:
                raise RuntimeError("simulated failure (e.g. a judge endpoint went down)")
            nll, tokens = mean_token_nll(ctx.model, ctx.tokenizer, [item["text"]])
            self.ran_ids.append(item["id"])
            ctx.advance()
            yield {"id": item["id"], "part": item["part"], "score": nll, "tokens": tokens}

    def summarize(self, records, ctx):
        return {"mean_nll": mean([r["score"] for r in records]),
                "extra_share": rate(sum(r["part"] == "extra" for r in records), len(records))}


class VectorSuite(NllSuite):
    name = "fake_vectors"
    requires_vectors = True


class JudgedSuite(NllSuite):
    name = "fake_judged"
    uses_judge = True

    def run(self, ctx, items):
        for item in items:
            verdict = ctx.judge.judge("aligned", {"question": "q", "answer": item["text"]})
            yield {"id": item["id"], "part": item["part"], "score": verdict.score, "verdict": verdict.to_dict()}


class LengthJudge(Judge):
    """Scores an answer by its length (a deterministic stand-in for a model judge)."""

    name = "length"

    def judge(self, task, fields, *, prompt_template=None):
        return Verdict(judge=self.name, score=float(len(fields["answer"])))
