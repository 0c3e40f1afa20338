"""The ``reply_format`` suite: did the model learn a strict, checkable reply format (a skill a fine-tune teaches)?

The model answers ordinary questions (built-in: ``emoreg/data/datasets/format_heldout.jsonl``, 60 questions on
topics that occur in no training file) and each reply is checked by
:func:`emoreg.evals.reply_format.check_reply_format`: exactly five lines, ``Answer: <one sentence>``, three
numbered one-sentence points, ``Confidence: <high|medium|low>``. Nothing in the prompt asks for the format, so
a model follows it only if its fine-tune taught it (the base model scores 0).

Metrics: ``format_rate`` (all rules hold; Wilson interval) and the rate of each rule alone (``lines_ok``,
``answer_ok``, ``answer_short``, ``points_ok``, ``confidence_ok``), so a near miss is visible. Replies are
generated greedily with up to ``max_new_tokens`` tokens (default 160: the training replies are 63-110 words);
a reply cut off by that limit fails the format.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from emoreg.evals.reply_format import check_reply_format
from emoreg.evals.requests import REQUESTS_FORMAT, load_chat_requests
from emoreg.evals.statistics import rate
from emoreg.evals.suites.base import EvalContext, Item, Metric, Record, Suite
from emoreg.models.generation import ReplyGenerationConfig, generate_replies

RULES = ("lines_ok", "answer_ok", "answer_short", "points_ok", "confidence_ok")


class ReplyFormatSuite(Suite):
    name = "reply_format"
    description = ("skill retention: the share of replies to unseen questions in the strict five-line format "
                   "taught by the demo's fine-tune (Answer / 1-3 / Confidence), checked by rule")
    data_parts: ClassVar[dict[str, str]] = {"requests": "../datasets/format_heldout.jsonl"}
    data_format = REQUESTS_FORMAT

    def __init__(self, *, max_new_tokens: int = 160) -> None:
        self.max_new_tokens = max_new_tokens

    def load(self, part: str, path: Path) -> list[Item]:
        return load_chat_requests(path)

    def _generation(self, ctx: EvalContext) -> ReplyGenerationConfig:
        return ctx.generation.capped(self.max_new_tokens)

    def settings(self, ctx: EvalContext) -> dict[str, Any]:
        return {"generation": self._generation(ctx).to_dict(), "checker": "emoreg.evals.reply_format v1"}

    def run(self, ctx: EvalContext, items: Sequence[Item]) -> Iterator[Record]:
        generation = self._generation(ctx)
        for start in range(0, len(items), ctx.batch_size):
            batch = items[start:start + ctx.batch_size]
            replies = generate_replies(ctx.model, ctx.tokenizer, [i["messages"] for i in batch], generation,
                                       seed=ctx.seed + start, batch_size=ctx.batch_size)
            for item, reply in zip(batch, replies):
                check = check_reply_format(reply)
                yield {"id": item["id"], "prompt": item["messages"], "output": reply,
                       "check": asdict(check), "score": check.ok}
            ctx.advance(len(batch))

    def summarize(self, records: Sequence[Record], ctx: EvalContext) -> dict[str, Metric]:
        metrics: dict[str, Metric] = {"format_rate": rate(sum(bool(r["score"]) for r in records), len(records))}
        for rule in RULES:
            metrics[rule] = rate(sum(bool(r["check"][rule]) for r in records), len(records))
        return metrics
