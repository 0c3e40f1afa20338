"""Read residual-stream states of rendered prompts (and replies) for the activation suites.

For each prompt (optionally followed by a reply) this computes, at the output of
the requested decoder layers:

* ``start``: the hidden state at the **last prompt token**, i.e. where the
  assistant turn starts when the prompt ends with a chat template's generation
  prompt;
* ``response``: the mean hidden state over the **reply tokens** only.

Prompt and reply are tokenised separately and concatenated (as
:mod:`emoreg.evals.scoring` does), so the boundary between them is exact.
Rows are padded on the left or the right (``padding_side``) and position ids
are computed from the attention mask, so a row's states do not depend on the
padding of its batch (rows are batched longest first and returned in input
order). Padding never enters a mean, and neither does an
attention sink (the first ``sink_tokens`` real tokens of a row, see
:mod:`emoreg.vectors.tokens`); reply tokens that fall among the sink tokens
(only possible with an empty prompt) are dropped. A prompt's last token must
not be a sink token.

Hooks live only while a batch runs (removed in ``finally``, also on errors) and
the forward pass stops after the last requested layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from emoreg.errors import ConfigError
from emoreg.vectors.capture import check_layers, run_layers
from emoreg.vectors.tokens import content_mask, masked_mean


@dataclass
class StateReadings:
    """Hidden states read from one model, in input order (float32, CPU).

    Attributes:
        start: ``{layer: [N, d]}`` state at each prompt's last token.
        response: ``{layer: [N, d]}`` mean state over each reply's tokens (zeros where a reply has no tokens),
            empty when no replies were given.
        response_tokens: ``[N]`` number of reply tokens averaged per row (zeros when no replies were given).
        prompt_tokens: ``[N]`` number of prompt tokens per row.
    """

    start: dict[int, torch.Tensor]
    response: dict[int, torch.Tensor]
    response_tokens: torch.Tensor
    prompt_tokens: torch.Tensor


def prompt_add_special_tokens(tokenizer) -> bool:
    """Whether a rendered prompt is tokenised with special tokens: not when a chat template rendered it
    (the template already holds the BOS token where the model wants one), as in :mod:`emoreg.models.generation`."""
    return not getattr(tokenizer, "chat_template", None)


def encode_pairs(
    tokenizer, prompts: Sequence[str], replies: Sequence[str] | None = None
) -> list[tuple[list[int], list[int]]]:
    """Token ids ``(prompt_ids, reply_ids)`` per row; replies are tokenised without special tokens."""
    if replies is not None and len(replies) != len(prompts):
        raise ConfigError(f"{len(prompts)} prompts but {len(replies)} replies")
    add_special = prompt_add_special_tokens(tokenizer)
    pairs = []
    for i, prompt in enumerate(prompts):
        prompt_ids = list(tokenizer(prompt, add_special_tokens=add_special)["input_ids"])
        if not prompt_ids:
            raise ConfigError(f"prompt {i} has no tokens")
        reply_ids = list(tokenizer(replies[i], add_special_tokens=False)["input_ids"]) if replies and replies[i] else []
        pairs.append((prompt_ids, reply_ids))
    return pairs


def pad_pairs(
    pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, padding_side: str = "left"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad concatenated prompt+reply rows.

    Returns ``(input_ids [B, T], attention_mask [B, T], last_prompt [B], reply_mask [B, T])``:
    the column of each row's last prompt token and a mask of its reply tokens.
    """
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(len(p) + len(r) for p, r in pairs)
    rows = len(pairs)
    input_ids = torch.full((rows, length), int(pad_id), dtype=torch.long)
    attention = torch.zeros((rows, length), dtype=torch.long)
    reply_mask = torch.zeros((rows, length), dtype=torch.bool)
    last_prompt = torch.zeros(rows, dtype=torch.long)
    for i, (prompt_ids, reply_ids) in enumerate(pairs):
        n = len(prompt_ids) + len(reply_ids)
        offset = length - n if padding_side == "left" else 0
        input_ids[i, offset:offset + n] = torch.tensor(prompt_ids + reply_ids, dtype=torch.long)
        attention[i, offset:offset + n] = 1
        last_prompt[i] = offset + len(prompt_ids) - 1
        reply_mask[i, offset + len(prompt_ids):offset + n] = True
    return input_ids, attention, last_prompt, reply_mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0-based positions counting real tokens only (padding gets 0), so padding does not shift positions."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0) * attention_mask.long()


@torch.inference_mode()
def forward_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int],
    reduce,
) -> None:
    """Run ``model``'s body on one padded batch, calling ``reduce(layer, hidden)`` with each listed layer's output.

    Hooks are scoped to this call; the forward stops after the last listed layer.
    """
    run_layers(model, input_ids, attention_mask, list(layers), reduce,
               position_ids=position_ids_from_mask(attention_mask))


def read_states(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    layers: Sequence[int],
    *,
    replies: Sequence[str] | None = None,
    batch_size: int = 8,
    sink_tokens: int = 1,
    padding_side: str = "left",
) -> StateReadings:
    """States at the last prompt token and mean states over the reply tokens at ``layers`` (see module doc).

    Prompts and reply texts are tokenised here (:func:`encode_pairs`); use :func:`read_token_states` when the
    token ids are already known (e.g. the ids a model generated).
    """
    pairs = encode_pairs(tokenizer, prompts, replies)
    return read_token_states(model, pairs, layers, pad_id=pad_token_id(tokenizer), with_replies=replies is not None,
                             batch_size=batch_size, sink_tokens=sink_tokens, padding_side=padding_side)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (padding is masked out, so any id will do)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _row_reducer(
    last_prompt: torch.Tensor,
    reply_select: torch.Tensor | None,
    start_rows: dict[int, list[torch.Tensor]],
    response_rows: dict[int, list[torch.Tensor]],
):
    """A reducer appending one batch's last-prompt states (and reply means when ``reply_select`` is given)."""

    def reduce(layer: int, hidden: torch.Tensor) -> None:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        start_rows[layer].append(hidden[rows, last_prompt.to(hidden.device)].float().cpu())
        if reply_select is not None:
            means, _ = masked_mean(hidden, reply_select.to(hidden.device))
            response_rows[layer].append(means.cpu())

    return reduce


def read_token_states(
    model: nn.Module,
    pairs: Sequence[tuple[list[int], list[int]]],
    layers: Sequence[int],
    *,
    pad_id: int,
    with_replies: bool = True,
    batch_size: int = 8,
    sink_tokens: int = 1,
    padding_side: str = "left",
) -> StateReadings:
    """:func:`read_states` on token ids ``(prompt_ids, reply_ids)`` per row.

    Raises:
        ConfigError: no rows, a bad layer or batch size, a prompt whose last token is an attention sink.
    """
    if not pairs:
        raise ConfigError("no prompts to read")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    layers = check_layers(model, layers)
    short = [i for i, (p, _) in enumerate(pairs) if len(p) <= sink_tokens]
    if short:
        raise ConfigError(
            f"prompts {short[:5]} have {sink_tokens} token(s) or fewer: their last token is the attention sink"
        )
    start_rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    response_rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    counts: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    # Longest rows first, so that each batch holds rows of similar length (less padding); results are put back
    # in input order below.
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    try:
        for first in range(0, len(pairs), batch_size):
            batch = [pairs[i] for i in order[first:first + batch_size]]
            input_ids, attention, last_prompt, reply_mask = pad_pairs(batch, pad_id, padding_side)
            select = reply_mask & content_mask(attention, sink_tokens)
            counts.append(select.sum(dim=-1))
            reduce = _row_reducer(last_prompt, select if with_replies else None, start_rows, response_rows)
            forward_states(model, input_ids, attention, layers, reduce)
    finally:
        model.train(was_training)
    restore = torch.empty(len(order), dtype=torch.long)
    restore[torch.tensor(order)] = torch.arange(len(order))
    start = {layer: torch.cat(start_rows[layer])[restore] for layer in layers}
    response = {layer: torch.cat(response_rows[layer])[restore] for layer in layers} if with_replies else {}
    prompt_tokens = torch.tensor([len(p) for p, _ in pairs], dtype=torch.long)
    return StateReadings(start=start, response=response, response_tokens=torch.cat(counts)[restore],
                         prompt_tokens=prompt_tokens)


__all__ = [
    "StateReadings",
    "encode_pairs",
    "forward_states",
    "pad_pairs",
    "pad_token_id",
    "position_ids_from_mask",
    "prompt_add_special_tokens",
    "read_states",
    "read_token_states",
]
