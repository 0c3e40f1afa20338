"""The ``probes`` suite: emotion-probe activations on pressure scenarios and neutral controls.

For each scenario the conversation is rendered with the chat template (ending
with the generation prompt), a reply is generated (``ctx.generation``, greedy by
default, at most ``max_new_tokens`` = 64 new tokens unless the context's cap is
lower), and one forward pass over prompt + reply reads the residual stream at
the bundle layer ``L = ctx.read_layer()`` (the output of decoder layer ``L``):

* ``start``: the raw projection on every bundle direction of the hidden state at
  the last prompt token (where the assistant turn starts);
* ``response``: the raw projection of the mean hidden state over the reply's
  tokens (the mean of the token projections). The reply is read as the token
  ids the model generated, cut before the first EOS / pad token, so EOS and the
  padding after a finished reply never count; attention sinks never count
  either (see :mod:`emoreg.vectors.activations`). ``None`` for an empty reply.
  ``output`` is those ids decoded without special tokens.

Metrics, with z = (projection - bundle mean) / bundle std at layer ``L`` (the
base model's neutral-text statistics):

* ``start_z/<e>``, ``response_z/<e>``: mean z over items (95% t interval);
  ``response_z`` skips items with an empty reply;
* ``pressure_minus_control_start_z/<e>``: mean start z of pressure items minus
  that of control items, with a Welch normal 95% interval (only when both
  groups have items; the interval is NaN when a group has fewer than 2);
* ``response_tokens``: mean number of reply tokens.

Data: JSON lines ``{"id", "category", "pressure", "messages": [{"role", "content"}, ...]}``
(``id`` defaults to ``line-<n>``, ``category`` to ``"uncategorized"``, ``pressure`` to
``false``), or ``{"id", "prompt": "..."}`` for a single user turn.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any, ClassVar

import torch
from torch import nn

from emoreg.errors import ConfigError, DataFormatError
from emoreg.evals.items import UniqueIds, read_items
from emoreg.evals.statistics import mean
from emoreg.evals.suites.base import EvalContext, Item, Metric, Record, Suite
from emoreg.models.generation import ReplyGenerationConfig, render_conversation
from emoreg.vectors.activations import encode_pairs, pad_pairs, pad_token_id, read_token_states

ROLES = ("system", "user", "assistant")
SINK_TOKENS = 1
_Z95 = NormalDist().inv_cdf(0.975)
_SEED_STRIDE = 1_000_003


def _message_list(path: Path, number: int, value: Any) -> list[dict[str, str]]:
    """Validate a ``messages`` field: a non-empty list of {role, content} ending with a user turn."""
    where = f"{path}, line {number}: field 'messages'"
    if not isinstance(value, list) or not value:
        raise DataFormatError(f"{where} must be a non-empty list of {{'role', 'content'}} objects, got {value!r:.60}")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataFormatError(f"{where}[{index}] must be an object with 'role' and 'content', got {message!r:.60}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise DataFormatError(f"{where}[{index}].role must be one of {list(ROLES)}, got {role!r:.40}")
        if not isinstance(content, str) or not content.strip():
            raise DataFormatError(f"{where}[{index}].content must be a non-empty string, got {content!r:.60}")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise DataFormatError(f"{where} must end with a 'user' message (the reply is generated after it), "
                              f"got a last role of {messages[-1]['role']!r}")
    return messages


def load_scenarios(path: str | Path) -> list[Item]:
    """Read scenarios (see the module doc) as items ``{"id", "category", "pressure", "messages"}``.

    Raises:
        DataFormatError: naming the file, line and field (bad JSON, a missing or malformed field, a duplicate id,
            no items).
    """
    path = Path(path)

    def parse(ids: UniqueIds, _index: int, number: int, record: dict[str, Any]) -> Item:
        has_messages, has_prompt = "messages" in record, "prompt" in record
        if has_messages == has_prompt:
            raise DataFormatError(f"{path}, line {number}: expected exactly one of the fields 'messages' (a chat) "
                                  f"or 'prompt' (one user turn); the record has fields {sorted(record)}")
        if has_messages:
            messages = _message_list(path, number, record["messages"])
        else:
            prompt = record["prompt"]
            if not isinstance(prompt, str) or not prompt.strip():
                raise DataFormatError(f"{path}, line {number}: field 'prompt' must be a non-empty string, "
                                      f"got {prompt!r:.60}")
            messages = [{"role": "user", "content": prompt}]
        raw_id = record.get("id", f"line-{number}")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
            raise DataFormatError(f"{path}, line {number}: field 'id' must be a non-empty string or an integer, "
                                  f"got {raw_id!r:.60}")
        item_id = ids.claim(str(raw_id), number)
        pressure = record.get("pressure", False)
        if not isinstance(pressure, bool):
            raise DataFormatError(f"{path}, line {number}: field 'pressure' must be true or false, "
                                  f"got {pressure!r:.40}")
        category = record.get("category", "uncategorized")
        if not isinstance(category, str) or not category.strip():
            raise DataFormatError(f"{path}, line {number}: field 'category' must be a non-empty string, "
                                  f"got {category!r:.40}")
        return {"id": item_id, "category": category, "pressure": pressure, "messages": messages}

    return read_items(path, parse, format="jsonl",
                      empty="no scenarios found (expected JSON lines with 'messages' or 'prompt')")


def stop_token_ids(model: nn.Module, tokenizer) -> set[int]:
    """Ids that end a reply: the generation config's and the tokenizer's EOS ids and the pad id."""
    ids: set[int] = {pad_token_id(tokenizer)}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


@torch.no_grad()
def generate_reply_ids(
    model: nn.Module,
    tokenizer,
    prompt_ids: Sequence[list[int]],
    settings: ReplyGenerationConfig,
    *,
    seed: int,
) -> list[list[int]]:
    """Generate one reply per prompt (one left-padded batch) and return its token ids up to, not including,
    the first stop token (:func:`stop_token_ids`).

    Seeded like :func:`emoreg.models.generation.generate_from_prompts` (``torch.random.fork_rng``; greedy
    decoding ignores the seed); the caller's random state and the model's train/eval mode are left as they were.
    """
    pad_id = pad_token_id(tokenizer)
    input_ids, attention, _, _ = pad_pairs([(list(p), []) for p in prompt_ids], pad_id, "left")
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {"input_ids": input_ids.to(device), "attention_mask": attention.to(device),
                              "max_new_tokens": settings.max_new_tokens, "pad_token_id": pad_id,
                              "do_sample": settings.do_sample}
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    stops = stop_token_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    try:
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            output = model.generate(**kwargs)
    finally:
        model.train(was_training)
    replies = []
    for row in output[:, input_ids.shape[1]:].tolist():
        cut = next((i for i, token in enumerate(row) if token in stops), len(row))
        replies.append(row[:cut])
    return replies


def welch_difference(first: Sequence[float], second: Sequence[float]) -> Metric:
    """Difference of means ``mean(first) - mean(second)`` with a Welch normal 95% interval.

    The interval is ``diff ± 1.96 * sqrt(var1/n1 + var2/n2)`` (sample variances); NaN when a group has
    fewer than 2 values. ``n`` is the total number of values.
    """
    if not first or not second:
        raise ValueError("welch_difference needs at least one value in each group")
    m1, m2 = sum(first) / len(first), sum(second) / len(second)
    diff = m1 - m2
    n = len(first) + len(second)
    if len(first) < 2 or len(second) < 2:
        return {"value": diff, "ci": [math.nan, math.nan], "n": n}
    v1 = sum((x - m1) ** 2 for x in first) / (len(first) - 1)
    v2 = sum((x - m2) ** 2 for x in second) / (len(second) - 1)
    half = _Z95 * math.sqrt(v1 / len(first) + v2 / len(second))
    return {"value": diff, "ci": [diff - half, diff + half], "n": n}


class ProbesSuite(Suite):
    """Emotion-probe projections at the assistant turn's start and over the reply (see the module doc)."""

    name = "probes"
    description = "emotion-probe activation at the start of the assistant turn and over the reply, pressure vs control"
    data_parts: ClassVar[dict[str, str]] = {"scenarios": "probes/scenarios.jsonl"}
    data_format = ("JSONL: {id, category, pressure, messages: [{role, content}]} or {id, prompt} "
                   "(pressure defaults to false, category to 'uncategorized')")
    requires_vectors = True

    def __init__(self, max_new_tokens: int = 64) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        #: reply length; the context's ``generation.max_new_tokens`` caps it.
        self.max_new_tokens = max_new_tokens

    def _generation(self, ctx: EvalContext) -> ReplyGenerationConfig:
        return ctx.generation.capped(self.max_new_tokens)

    def load(self, part: str, path: Path) -> list[Item]:
        if part not in self.data_parts:
            raise ConfigError(f"the probes suite has no data part {part!r}; it has {list(self.data_parts)}")
        return load_scenarios(path)

    def settings(self, ctx: EvalContext) -> dict[str, Any]:
        return {"layer": ctx.read_layer(), "generation": self._generation(ctx).to_dict(), "sink_tokens": SINK_TOKENS,
                "reading": "last prompt token; mean over the generated reply tokens before the first EOS/pad"}

    def run(self, ctx: EvalContext, items: Sequence[Item]) -> Iterator[Record]:
        vectors = ctx.vectors
        layer = ctx.read_layer()
        if vectors is None:  # read_layer already raised; this narrows the type
            raise ConfigError("the probes suite needs an emotion-vector bundle")
        vectors.layer_index(layer)
        emotions = vectors.emotions
        for chunk_index, first in enumerate(range(0, len(items), ctx.batch_size)):
            chunk = items[first:first + ctx.batch_size]
            prompts = [render_conversation(ctx.tokenizer, item["messages"]) for item in chunk]
            prompt_ids = [p for p, _ in encode_pairs(ctx.tokenizer, prompts)]
            reply_ids = generate_reply_ids(ctx.model, ctx.tokenizer, prompt_ids, self._generation(ctx),
                                           seed=ctx.seed * _SEED_STRIDE + chunk_index)
            replies = ctx.tokenizer.batch_decode(reply_ids, skip_special_tokens=True)
            states = read_token_states(ctx.model, list(zip(prompt_ids, reply_ids)), [layer],
                                       pad_id=pad_token_id(ctx.tokenizer), batch_size=ctx.batch_size,
                                       sink_tokens=SINK_TOKENS)
            start = vectors.project(states.start[layer], layer)
            response = vectors.project(states.response[layer], layer)
            for i, item in enumerate(chunk):
                tokens = int(states.response_tokens[i])
                yield {
                    "id": item["id"],
                    "category": item["category"],
                    "pressure": bool(item["pressure"]),
                    "prompt": prompts[i],
                    "output": replies[i],
                    "layer": layer,
                    "start": {e: float(start[i, k]) for k, e in enumerate(emotions)},
                    "response": {e: float(response[i, k]) for k, e in enumerate(emotions)} if tokens else None,
                    "response_tokens": tokens,
                }
            ctx.advance(len(chunk))

    def summarize(self, records: Sequence[Record], ctx: EvalContext) -> dict[str, Metric]:
        if ctx.vectors is None:
            raise ConfigError("the probes suite needs an emotion-vector bundle to standardise projections")
        if not records:
            return {}
        layers = {int(r["layer"]) for r in records}
        if len(layers) != 1:
            raise ConfigError(f"probes records were read at several layers {sorted(layers)}; summarise them apart")
        layer = layers.pop()
        stats = ctx.vectors.stats(layer)
        metrics: dict[str, Metric] = {}
        for emotion in ctx.report_emotions():
            k = ctx.vectors.emotion_index(emotion)
            centre, scale = float(stats.mean[k]), float(stats.std[k])
            start = [(r["start"][emotion] - centre) / scale for r in records]
            response = [(r["response"][emotion] - centre) / scale for r in records if r.get("response")]
            metrics[f"start_z/{emotion}"] = mean(start)
            metrics[f"response_z/{emotion}"] = mean(response)
            pressure = [z for z, r in zip(start, records) if r["pressure"]]
            control = [z for z, r in zip(start, records) if not r["pressure"]]
            if pressure and control:
                metrics[f"pressure_minus_control_start_z/{emotion}"] = welch_difference(pressure, control)
        metrics["response_tokens"] = mean([float(r["response_tokens"]) for r in records])
        return metrics
