"""Capability retention: perplexity and KL to the base model on held-out text, multiple-choice accuracy.

Two data parts:

* ``heldout_text`` (JSONL/CSV ``id, text``, ``topic`` optional): every token after the first of each text
  is predicted (texts are cut to ``max_length`` tokens). ``mean_token_nll`` is the token-weighted mean NLL
  over all texts, ``perplexity`` its exponential. With a base model (``ctx.get_base_model()``),
  ``kl_to_base`` is the token-weighted mean of ``KL(base || model)`` between the two next-token
  distributions at the same positions (0 for the base itself). The three confidence intervals come from a
  seeded percentile bootstrap over texts (2000 resamples of whole texts, recomputing the ratio
  sum / tokens each time), so long and short texts keep their weight; the perplexity interval is the
  exponential of the NLL interval. Without a base model ``kl_to_base`` is left out and a record with
  ``part = "note"`` says why.
* ``multiple_choice`` (JSONL ``question, choices: [...], answer`` with ``answer`` a 0-based index or a
  letter "A", "B", ...; CSV/TSV with columns ``question, A, B, C, ..., answer`` also works; ``id`` and
  ``subject`` optional): each choice is scored as the continuation ``" " + choice`` of the prompt
  ``"Question: {question}\\nAnswer:"`` (cloze style, the choices are not listed in the prompt).
  ``mc_accuracy`` picks the choice with the highest summed log-probability (favours short choices),
  ``mc_accuracy_norm`` the highest mean log-probability per token (length-normalised). Ties go to the
  first choice. Both carry Wilson intervals.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from emoreg.errors import ConfigError, DataFormatError
from emoreg.evals.items import UniqueIds, id_or_position, read_items
from emoreg.evals.scoring import score_continuations, score_texts
from emoreg.evals.statistics import rate
from emoreg.evals.suites.base import EvalContext, Item, Metric, Record, Suite, items_by_part
from emoreg.utils.records import require_text_field

MC_PROMPT = "Question: {question}\nAnswer:"
BOOTSTRAP_RESAMPLES = 2000
NO_BASE_REASON = "no base model was given (pass base=... to evaluate_model or --base to emoreg eval)"


def bootstrap_ratio_ci(numerators: Sequence[float], denominators: Sequence[float], *, seed: int,
                       resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``sum(numerators) / sum(denominators)``, resampling units (texts).

    Deterministic given ``seed``; ``(nan, nan)`` with fewer than two units.
    """
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} numerators but {len(denominators)} denominators")
    n = len(numerators)
    if n < 2:
        return (float("nan"), float("nan"))
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(n, (resamples, n), generator=generator)
    top = torch.tensor(numerators, dtype=torch.float64)[index].sum(-1)
    bottom = torch.tensor(denominators, dtype=torch.float64)[index].sum(-1)
    ratios = (top / bottom)[bottom > 0]
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(ratios, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return (low, high)


def _ratio_metric(records: Sequence[Record], field: str, seed: int) -> Metric:
    numerators = [float(r[field]) for r in records]
    tokens = [float(r["tokens"]) for r in records]
    low, high = bootstrap_ratio_ci(numerators, tokens, seed=seed)
    return {"value": sum(numerators) / sum(tokens), "ci": [low, high], "n": len(records)}


def _parse_choices(path: str | Path, line: int, record: dict[str, Any]) -> list[str]:
    choices: Any = record.get("choices")
    if choices is None:  # CSV/TSV: columns A, B, C, ...
        choices = []
        for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            if letter not in record or record[letter] in (None, ""):
                break
            choices.append(record[letter])
        if not choices:
            raise DataFormatError(f"{path}, line {line}: missing field 'choices' (a list, or columns A, B, ...); "
                                  f"the record has fields {sorted(record)}")
    elif isinstance(choices, str) and choices.lstrip().startswith("["):
        try:
            choices = json.loads(choices)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}, line {line}: field 'choices' is not a valid JSON list "
                                  f"({exc.msg})") from None
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise DataFormatError(f"{path}, line {line}: field 'choices' must be a list of at least two non-empty "
                              f"strings, got {record.get('choices')!r:.80}")
    if len({c.strip() for c in choices}) != len(choices):
        raise DataFormatError(f"{path}, line {line}: field 'choices' repeats a choice: {choices!r:.80}")
    return [c.strip() for c in choices]


def _parse_answer(path: str | Path, line: int, record: dict[str, Any], n_choices: int) -> int:
    if "answer" not in record:
        raise DataFormatError(f"{path}, line {line}: missing field 'answer'; the record has fields {sorted(record)}")
    answer = record["answer"]
    index: int | None = None
    if isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    elif isinstance(answer, str):
        text = answer.strip().strip("()").strip()
        if text.isdigit():
            index = int(text)
        elif len(text) == 1 and text.isalpha():
            index = ord(text.upper()) - ord("A")
    if index is None:
        raise DataFormatError(f"{path}, line {line}: field 'answer' must be a 0-based choice index or a letter "
                              f"(A, B, ...), got {answer!r:.40}")
    if not 0 <= index < n_choices:
        raise DataFormatError(f"{path}, line {line}: field 'answer' {answer!r} is out of range for "
                              f"{n_choices} choices")
    return index


def read_heldout_texts(path: str | Path) -> list[Item]:
    """Held-out text items ``{"id", "text", "topic"?}``; errors name the file, line and field."""

    def parse(ids: UniqueIds, index: int, line: int, record: dict[str, Any]) -> Item:
        item: Item = {"id": ids.claim(id_or_position(record, index), line),
                      "text": require_text_field(path, line, record, "text")}
        if isinstance(record.get("topic"), str):
            item["topic"] = record["topic"]
        return item

    return read_items(path, parse)


def read_multiple_choice(path: str | Path) -> list[Item]:
    """Multiple-choice items ``{"id", "question", "choices", "answer": index, "subject"?}``."""

    def parse(ids: UniqueIds, index: int, line: int, record: dict[str, Any]) -> Item:
        question = require_text_field(path, line, record, "question")
        choices = _parse_choices(path, line, record)
        item: Item = {"id": ids.claim(id_or_position(record, index), line), "question": question,
                      "choices": choices, "answer": _parse_answer(path, line, record, len(choices))}
        if isinstance(record.get("subject"), str):
            item["subject"] = record["subject"]
        return item

    return read_items(path, parse)


def _argmax(values: Sequence[float]) -> int:
    """Index of the largest value (the first one on ties)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


class CapabilitySuite(Suite):
    """Perplexity, KL to the base model and multiple-choice accuracy."""

    name: ClassVar[str] = "capability"
    description: ClassVar[str] = (
        "Capability retention: perplexity and KL(base || model) on held-out text (bootstrap CIs over texts), "
        "multiple-choice accuracy by choice log-probability (summed and per-token)"
    )
    data_parts: ClassVar[dict[str, str]] = {"heldout_text": "capability/heldout_text.jsonl",
                                            "multiple_choice": "capability/multiple_choice.jsonl"}
    data_format: ClassVar[str] = (
        "heldout_text: JSONL/CSV {id, text, topic optional}; multiple_choice: JSONL {id, question, "
        "choices: [...], answer: 0-based index or letter} or CSV with columns question, A, B, ..., answer"
    )

    def __init__(self, max_length: int = 1024, mc_prompt: str = MC_PROMPT) -> None:
        """``max_length``: tokens kept per held-out text; ``mc_prompt``: the multiple-choice prompt
        (``{question}`` is filled in, each choice follows after a space)."""
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {max_length}")
        if "{question}" not in mc_prompt:
            raise ConfigError(f"mc_prompt must contain '{{question}}', got {mc_prompt!r}")
        self.max_length = max_length
        self.mc_prompt = mc_prompt

    def load(self, part: str, path: Path) -> list[Item]:
        """Items tagged with their ``part``; ids are ``"<part>/<id in the file>"`` (unique across parts)."""
        if part == "heldout_text":
            items = read_heldout_texts(path)
        elif part == "multiple_choice":
            items = read_multiple_choice(path)
        else:
            raise ConfigError(f"capability has no data part {part!r}; expected one of {', '.join(self.data_parts)}")
        return [{**item, "id": f"{part}/{item['id']}", "part": part} for item in items]

    def settings(self, ctx: EvalContext) -> dict[str, Any]:
        return {"max_length": self.max_length, "mc_prompt": self.mc_prompt, "kl_to_base": ctx.base_model is not None}

    def run(self, ctx: EvalContext, items: Sequence[Item]) -> Iterator[Record]:
        parts = items_by_part("capability", items, ("heldout_text", "multiple_choice"))
        step = max(1, ctx.batch_size)
        texts = parts["heldout_text"]
        if texts:
            base = ctx.get_base_model()
            if base is None:
                yield {"id": "capability/note/kl_to_base", "part": "note", "metric": "kl_to_base",
                       "skipped": True, "reason": NO_BASE_REASON}
            for start in range(0, len(texts), step):
                chunk = texts[start:start + step]
                yield from self._run_texts(ctx, chunk, base)
                ctx.advance(len(chunk))
        questions = parts["multiple_choice"]
        for start in range(0, len(questions), step):
            chunk = questions[start:start + step]
            yield from self._run_choices(ctx, chunk)
            ctx.advance(len(chunk))

    def _run_texts(self, ctx: EvalContext, chunk: Sequence[Item], base) -> Iterator[Record]:
        scores = score_texts(ctx.model, ctx.tokenizer, [item["text"] for item in chunk], reference=base,
                             batch_size=ctx.batch_size, max_length=self.max_length)
        for item, score in zip(chunk, scores):
            mean_nll = score.nll / score.tokens if score.tokens else float("nan")
            record: Record = {"id": item["id"], "part": "heldout_text", "topic": item.get("topic"),
                              "tokens": score.tokens, "truncated": score.truncated, "nll_sum": score.nll,
                              "mean_nll": mean_nll, "score": mean_nll}
            if score.kl is not None:
                record["kl_sum"] = score.kl
                record["kl_mean"] = score.kl / score.tokens if score.tokens else float("nan")
            yield record

    def _run_choices(self, ctx: EvalContext, chunk: Sequence[Item]) -> Iterator[Record]:
        prompts, continuations = [], []
        for item in chunk:
            prompt = self.mc_prompt.format(question=item["question"])
            prompts.extend([prompt] * len(item["choices"]))
            continuations.extend(" " + choice for choice in item["choices"])
        scores = score_continuations(ctx.model, ctx.tokenizer, prompts, continuations, batch_size=ctx.batch_size)
        cursor = 0
        for item in chunk:
            k = len(item["choices"])
            mine = scores[cursor:cursor + k]
            cursor += k
            logprobs = [s.logprob for s in mine]
            per_token = [s.logprob / s.tokens for s in mine]
            predicted, predicted_norm = _argmax(logprobs), _argmax(per_token)
            yield {"id": item["id"], "part": "multiple_choice", "subject": item.get("subject"),
                   "prompt": self.mc_prompt.format(question=item["question"]), "choices": item["choices"],
                   "answer": item["answer"], "logprobs": logprobs, "tokens": [s.tokens for s in mine],
                   "predicted": predicted, "predicted_norm": predicted_norm,
                   "correct": predicted == item["answer"], "correct_norm": predicted_norm == item["answer"],
                   "score": predicted == item["answer"]}

    def summarize(self, records: Sequence[Record], ctx: EvalContext) -> dict[str, Metric]:
        texts = [r for r in records if r.get("part") == "heldout_text" and r.get("tokens", 0) > 0]
        questions = [r for r in records if r.get("part") == "multiple_choice"]
        metrics: dict[str, Metric] = {}
        if texts:
            nll = _ratio_metric(texts, "nll_sum", ctx.seed)
            metrics["mean_token_nll"] = nll
            metrics["perplexity"] = {"value": math.exp(nll["value"]), "ci": [math.exp(v) for v in nll["ci"]],
                                     "n": nll["n"]}
            if all(r.get("kl_sum") is not None for r in texts):
                metrics["kl_to_base"] = _ratio_metric(texts, "kl_sum", ctx.seed)
        if questions:
            metrics["mc_accuracy"] = rate(sum(bool(r["correct"]) for r in questions), len(questions))
            metrics["mc_accuracy_norm"] = rate(sum(bool(r["correct_norm"]) for r in questions), len(questions))
        return metrics
