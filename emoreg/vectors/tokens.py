"""Which token positions enter a mean: never padding, never attention sinks.

Models put a huge activation on the first token of a sequence (an attention
sink): on SmolLM2-135M its projection on an emotion direction is about -24,000
against about -110 elsewhere. Any mean, statistic or penalty that includes it
is dominated by it. So the first ``sink_tokens`` *real* tokens of every
sequence are excluded, wherever padding puts them (left or right).
"""

from __future__ import annotations

import torch


def real_token_rank(attention_mask: torch.Tensor) -> torch.Tensor:
    """1-based position of each real token among the real tokens of its row; 0 on padding."""
    real = attention_mask.to(torch.bool)
    return torch.cumsum(real.to(torch.long), dim=-1) * real


def content_mask(attention_mask: torch.Tensor, sink_tokens: int = 1) -> torch.Tensor:
    """Real tokens except the first ``sink_tokens`` real tokens of each row."""
    if sink_tokens < 0:
        raise ValueError(f"sink_tokens must be >= 0, got {sink_tokens}")
    return real_token_rank(attention_mask) > sink_tokens


def offset_mask(attention_mask: torch.Tensor, token_offset: int, sink_tokens: int = 1) -> torch.Tensor:
    """Real tokens from ``token_offset`` on, with an offset that adapts to short texts.

    A row with ``n`` real tokens starts at ``min(token_offset, n // 2)`` (so at
    least the second half of a short story is averaged), and never before
    ``sink_tokens``. Positions count real tokens only (0-based), so padding on
    either side gives the same selection.
    """
    rank = real_token_rank(attention_mask)  # 1-based
    n_real = rank.max(dim=-1, keepdim=True).values
    start = torch.minimum(torch.full_like(n_real, int(token_offset)), n_real // 2)
    start = torch.clamp(start, min=int(sink_tokens))
    return (rank > start) & (rank > 0)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean of ``hidden`` ``[B, T, d]`` over ``mask`` ``[B, T]`` in float32.

    Returns ``(means [B, d], counts [B])``; rows with no selected token get a zero mean.
    """
    weights = mask.to(torch.float32)
    counts = weights.sum(dim=-1)
    sums = torch.einsum("btd,bt->bd", hidden.to(torch.float32), weights)
    return sums / counts.clamp(min=1).unsqueeze(-1), counts
