"""Batched, reproducible reply generation for the eval suites.

Conversations are rendered with the tokenizer's chat template (a plain
``role: content`` transcript when it has none), left-padded, and generated in
batches. Greedy decoding is the default; sampling is seeded per batch inside
``torch.random.fork_rng`` so results depend only on the seed and the batch
order, and the caller's random state is left untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

Message = dict[str, str]


@dataclass(frozen=True)
class ReplyGenerationConfig:
    """How replies are generated (part of every generating suite's cache key).

    In an :class:`~emoreg.evals.suites.base.EvalContext`, ``max_new_tokens`` is a cap: each generating suite
    uses its own reply length (short for probes and pushback, long for code) unless the cap is lower
    (see :meth:`capped`).
    """

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0

    def capped(self, suite_tokens: int) -> ReplyGenerationConfig:
        """These settings with ``max_new_tokens`` lowered to ``suite_tokens`` when the cap is higher."""
        return ReplyGenerationConfig(min(self.max_new_tokens, suite_tokens), self.do_sample, self.temperature,
                                     self.top_p)

    def to_dict(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                "temperature": self.temperature, "top_p": self.top_p}


def render_conversation(tokenizer, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
    """The prompt text for ``messages``, ending where the assistant's reply starts."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    if add_generation_prompt:
        lines.append("assistant:")
    return "\n".join(lines)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_replies(
    model: nn.Module,
    tokenizer,
    conversations: Sequence[Sequence[Message]],
    settings: ReplyGenerationConfig = ReplyGenerationConfig(),
    *,
    seed: int = 0,
    batch_size: int = 8,
    max_prompt_tokens: int | None = None,
) -> list[str]:
    """One reply per conversation (special tokens stripped), in input order.

    ``max_prompt_tokens`` keeps the *last* tokens of longer prompts (left truncation).
    """
    prompts = [render_conversation(tokenizer, c) for c in conversations]
    return generate_from_prompts(model, tokenizer, prompts, settings, seed=seed, batch_size=batch_size,
                                 max_prompt_tokens=max_prompt_tokens)


@torch.no_grad()
def generate_from_prompts(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    settings: ReplyGenerationConfig = ReplyGenerationConfig(),
    *,
    seed: int = 0,
    batch_size: int = 8,
    max_prompt_tokens: int | None = None,
) -> list[str]:
    """Generate a continuation of each already-rendered prompt."""
    was_training = model.training
    old_side = tokenizer.padding_side
    old_truncation_side = getattr(tokenizer, "truncation_side", "right")
    model.eval()
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # A chat template already contains the BOS token where the model wants one.
    add_special = not getattr(tokenizer, "chat_template", None)
    replies: list[str] = []
    try:
        for batch_index, start in enumerate(range(0, len(prompts), batch_size)):
            batch = list(prompts[start:start + batch_size])
            encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=add_special,
                                truncation=max_prompt_tokens is not None, max_length=max_prompt_tokens)
            device = _device(model)
            kwargs = {
                "input_ids": encoded["input_ids"].to(device),
                "attention_mask": encoded["attention_mask"].to(device),
                "max_new_tokens": settings.max_new_tokens,
                "pad_token_id": pad_id,
                "do_sample": settings.do_sample,
            }
            if settings.do_sample:
                kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
            else:  # silence "temperature is set but do_sample=False" from generation configs
                kwargs.update(temperature=None, top_p=None, top_k=None)
            devices = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed * 100_003 + batch_index)
                output = model.generate(**kwargs)
            new_tokens = output[:, encoded["input_ids"].shape[1]:]
            replies.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return replies
    finally:
        tokenizer.padding_side = old_side
        tokenizer.truncation_side = old_truncation_side
        model.train(was_training)
