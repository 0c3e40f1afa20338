"""Log-probability scoring: answer choices, continuations and perplexity, batched.

A continuation is scored as the sum of its tokens' log-probabilities given the
prompt. Prompt and continuation are tokenised separately and concatenated, so
the continuation's tokens are the same whatever the prompt (as lm-eval-harness
does); batches are right-padded and padding never enters a score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ContinuationScore:
    """Summed log-probability of a continuation and its token count."""

    logprob: float
    tokens: int


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_continuations(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    batch_size: int = 8,
    add_special_tokens: bool = True,
) -> list[ContinuationScore]:
    """``log p(continuation_i | prompt_i)`` for each pair (model in eval mode)."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    was_training = model.training
    model.eval()
    try:
        results: list[ContinuationScore] = []
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        for start in range(0, len(prompts), batch_size):
            rows = []
            for prompt, continuation in zip(prompts[start:start + batch_size],
                                            continuations[start:start + batch_size]):
                prompt_ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
                continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
                if not continuation_ids:
                    raise ValueError(f"continuation {continuation!r} has no tokens")
                if not prompt_ids:
                    raise ValueError("a prompt must have at least one token")
                rows.append((prompt_ids, continuation_ids))
            length = max(len(p) + len(c) for p, c in rows)
            input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
            attention = torch.zeros((len(rows), length), dtype=torch.long)
            for i, (p, c) in enumerate(rows):
                ids = p + c
                input_ids[i, : len(ids)] = torch.tensor(ids)
                attention[i, : len(ids)] = 1
            device = _device(model)
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for i, (p, c) in enumerate(rows):
                positions = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=logprobs.device)
                targets = torch.tensor(c, device=logprobs.device)
                total = logprobs[i, positions, targets].sum()
                results.append(ContinuationScore(float(total), len(c)))
        return results
    finally:
        model.train(was_training)


@torch.no_grad()
def mean_token_nll(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 8,
                   max_length: int = 512) -> tuple[float, int]:
    """Mean negative log-likelihood per predicted token over ``texts`` and the token count.

    Every token after the first of each text is predicted; perplexity is ``exp`` of the mean.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                                truncation=True, max_length=max_length)
            device = _device(model)
            input_ids = encoded["input_ids"].to(device)
            attention = encoded["attention_mask"].to(device)
            logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = input_ids[:, 1:]
            mask = (attention[:, 1:] * attention[:, :-1]).bool()
            picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            total += float(-(picked[mask]).sum())
            count += int(mask.sum())
        return (total / count if count else float("nan")), count
    finally:
        model.train(was_training)


@dataclass
class TextScore:
    """Per-text sums over the predicted tokens (every real token after the first).

    ``nll``: summed negative log-likelihood; ``kl``: summed ``KL(reference || model)`` of the next-token
    distributions at the same positions (``None`` without a reference); ``truncated``: the text was cut
    to ``max_length`` tokens.
    """

    nll: float
    tokens: int
    kl: float | None = None
    truncated: bool = False


def _text_logprobs(model: nn.Module, input_ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    device = _device(model)
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)


@torch.no_grad()
def score_texts(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    reference: nn.Module | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
) -> list[TextScore]:
    """Per-text summed token NLL under ``model`` and, with ``reference``, summed ``KL(reference || model)``.

    Texts are tokenised with the tokenizer's special tokens (as :func:`mean_token_nll`), right-padded
    (position ids stay those of an unpadded text) and cut to ``max_length`` tokens. Position ``t``
    contributes ``-log p(x_{t+1} | x_{<=t})`` and ``sum_v p_ref(v) (log p_ref(v) - log p_model(v))`` for
    every real next token ``x_{t+1}``. Both models must share the tokenizer's vocabulary; models are
    put in eval mode and restored.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (one predicted token), got {max_length}")
    models = [model] + ([reference] if reference is not None else [])
    modes = [m.training for m in models]
    old_side = tokenizer.padding_side
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for m in models:
        m.eval()
    tokenizer.padding_side = "right"
    try:
        results: list[TextScore] = []
        for start in range(0, len(texts), batch_size):
            rows = [tokenizer(text)["input_ids"] for text in texts[start:start + batch_size]]
            length = min(max(len(r) for r in rows), max_length)
            input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
            attention = torch.zeros((len(rows), length), dtype=torch.long)
            for i, ids in enumerate(rows):
                ids = ids[:max_length]
                input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention[i, : len(ids)] = 1
            logprobs = _text_logprobs(model, input_ids, attention)
            targets = input_ids[:, 1:].to(logprobs.device)
            mask = (attention[:, 1:] * attention[:, :-1]).bool().to(logprobs.device)
            nll = -(logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)) * mask
            kl = None
            if reference is not None:
                reference_logprobs = _text_logprobs(reference, input_ids, attention).to(logprobs.device)
                if reference_logprobs.shape != logprobs.shape:
                    raise ValueError(f"the reference model's vocabulary ({reference_logprobs.shape[-1]}) differs "
                                     f"from the model's ({logprobs.shape[-1]}); KL needs the same vocabulary")
                per_position = (reference_logprobs.exp() * (reference_logprobs - logprobs)).sum(-1)
                kl = per_position * mask
            for i, ids in enumerate(rows):
                results.append(TextScore(
                    nll=float(nll[i].sum()), tokens=int(mask[i].sum()),
                    kl=None if kl is None else float(kl[i].sum()), truncated=len(ids) > max_length,
                ))
        return results
    finally:
        tokenizer.padding_side = old_side
        for m, mode in zip(models, modes):
            m.train(mode)
