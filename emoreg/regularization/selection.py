"""Which token positions a penalty, metric or intervention acts on.

Never padding, never attention-sink positions (the first ``sink_tokens`` real
tokens of every sequence, whatever the padding side; for packed sequences
without an attention mask, the first positions of every packed sequence by
``position_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from emoreg.errors import ConfigError
from emoreg.vectors.tokens import real_token_rank

IGNORE_INDEX = -100


@dataclass
class BatchContext:
    """What the regulariser knows about the forward pass in progress (read from its kwargs)."""

    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    completion_mask: torch.Tensor | None = None


def content_positions(context: BatchContext, batch: int, length: int, sink_tokens: int,
                      device: torch.device) -> torch.Tensor:
    """Real, non-sink positions of the last ``length`` columns, as a bool ``[batch, length]`` mask.

    With a KV cache the layer sees only the newest ``length`` tokens while the
    attention mask covers the whole sequence, so ranks are computed over the
    full mask and the last ``length`` columns are returned.
    """
    if context.attention_mask is not None and context.attention_mask.dim() == 2 \
            and context.attention_mask.shape[0] == batch and context.attention_mask.shape[1] >= length:
        rank = real_token_rank(context.attention_mask.to(device))
        return (rank > sink_tokens)[:, -length:]
    if context.position_ids is not None and context.position_ids.shape[-1] >= length:
        positions = context.position_ids.to(device)
        if positions.dim() == 1:
            positions = positions.unsqueeze(0)
        positions = positions[..., -length:]
        return (positions >= sink_tokens).expand(batch, length)
    keep = torch.ones(batch, length, dtype=torch.bool, device=device)
    keep[:, :sink_tokens] = False
    return keep


def completion_positions(context: BatchContext, batch: int, length: int, device: torch.device) -> torch.Tensor | None:
    """Positions holding completion tokens (labels != -100, or the trainer's completion mask)."""
    if context.completion_mask is not None and tuple(context.completion_mask.shape) == (batch, length):
        return context.completion_mask.to(device).bool()
    if context.labels is not None and tuple(context.labels.shape[-2:]) == (batch, length):
        return context.labels.to(device) != IGNORE_INDEX
    return None


def select_tokens(context: BatchContext, selection: str, batch: int, length: int, sink_tokens: int,
                  device: torch.device) -> torch.Tensor:
    """The bool ``[batch, length]`` mask of positions for ``selection`` (``all``, ``completion``, ``last_prompt``)."""
    content = content_positions(context, batch, length, sink_tokens, device)
    if selection == "all":
        return content
    completion = completion_positions(context, batch, length, device)
    if completion is None:
        raise ConfigError(
            f"selection {selection!r} needs the completion tokens, but this forward pass received no `labels` "
            "(or completion mask) of shape [batch, seq]; use selection='all' for this trainer or pass labels"
        )
    if selection == "completion":
        return completion & content
    if selection == "last_prompt":
        has = completion.any(dim=-1)
        first = torch.where(has, completion.to(torch.int8).argmax(dim=-1), torch.zeros_like(has, dtype=torch.long))
        last_prompt = (first - 1).clamp(min=0)
        mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
        rows = torch.arange(batch, device=device)[has & (first > 0)]
        mask[rows, last_prompt[has & (first > 0)]] = True
        return mask & content
    raise ConfigError(f"unknown selection {selection!r}")
