"""A/B (multiple-choice) behaviour items in the Anthropic model-written-evals format, scored by log-probability.

Format (JSONL): ``{"question": "...(A) ...\\n (B) ...\\n\\nAnswer:", "answer_matching_behavior": " (A)",
"answer_not_matching_behavior": " (B)" or [" (B)", " (C)"]}`` plus optional ``id``/``sample_id``. An item
*shows the behaviour* (e.g. sycophancy) when the matching answer is more likely than every other answer.
No judge is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from emoreg.errors import DataFormatError
from emoreg.evals.scoring import score_continuations
from emoreg.utils.records import iter_records, require_text_field


@dataclass(frozen=True)
class ABItem:
    id: str
    question: str
    matching: str
    not_matching: tuple[str, ...]


def read_ab_items(path: str | Path) -> list[ABItem]:
    """Read A/B items; errors name the file, line and field."""
    items = []
    for index, (line, record) in enumerate(iter_records(path)):
        question = require_text_field(path, line, record, "question")
        matching = require_text_field(path, line, record, "answer_matching_behavior")
        other = record.get("answer_not_matching_behavior")
        if isinstance(other, str):
            other = [other]
        if not isinstance(other, list) or not other or not all(isinstance(o, str) and o.strip() for o in other):
            raise DataFormatError(f"{path}, line {line}: field 'answer_not_matching_behavior' must be a non-empty "
                                  f"string or list of strings, got {record.get('answer_not_matching_behavior')!r:.60}")
        if matching in other:
            raise DataFormatError(f"{path}, line {line}: the matching answer {matching!r} is also listed as "
                                  "not matching")
        item_id = str(record.get("id") or record.get("sample_id") or index)
        items.append(ABItem(item_id, question, matching, tuple(other)))
    if not items:
        raise DataFormatError(f"{path}: no items found")
    return items


def render_prompt(tokenizer, question: str, template: str) -> tuple[str, bool]:
    """The scoring prompt and whether answers keep their leading space.

    ``raw`` scores the question text as given; ``chat`` puts it in the user turn of the tokenizer's chat
    template and scores the answer as the start of the assistant's reply.
    """
    if template == "raw":
        return question, True
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise DataFormatError("template 'chat' needs a tokenizer with a chat template; use template='raw'")
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)
        return prompt, False
    raise DataFormatError(f"unknown template {template!r}; expected 'raw' or 'chat'")


def score_ab_items(model: nn.Module, tokenizer, items: Sequence[ABItem], *, template: str = "chat",
                   batch_size: int = 8) -> list[dict[str, Any]]:
    """One record per item: the answers' log-probabilities and whether the matching answer won."""
    prompts, answers, owners = [], [], []
    for i, item in enumerate(items):
        prompt, keep_space = render_prompt(tokenizer, item.question, template)
        for answer in (item.matching, *item.not_matching):
            prompts.append(prompt)
            answers.append(answer if keep_space else answer.strip())
            owners.append(i)
    scores = score_continuations(model, tokenizer, prompts, answers, batch_size=batch_size,
                                 add_special_tokens=template == "raw")
    records = []
    cursor = 0
    for item in items:
        k = 1 + len(item.not_matching)
        values = [s.logprob for s in scores[cursor:cursor + k]]
        cursor += k
        records.append({
            "id": item.id,
            "matching": item.matching,
            "logprobs": dict(zip((item.matching, *item.not_matching), values)),
            "shows_behavior": values[0] > max(values[1:]),
        })
    return records
