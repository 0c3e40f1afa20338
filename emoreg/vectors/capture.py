"""Run a model over batches of text and hand each decoder layer's output to a reducer.

Activations are reduced inside the forward hook, one layer at a time, so no
more than one layer's hidden states of one batch exist at once. Hooks are
removed when the context ends, also on errors. The forward stops after the
last requested layer (later layers and the LM head are never run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from emoreg.errors import ConfigError
from emoreg.models.layout import find_decoder_layers, hidden_from_output, unwrap_model

logger = logging.getLogger(__name__)

Reducer = Callable[[int, torch.Tensor], None]


class _StopForward(Exception):
    """Raised by the last hook to skip the rest of the forward pass."""


@dataclass
class TokenizedBatch:
    """One padded batch: indices into the caller's text list and the model inputs."""

    indices: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    truncated: list[bool]
    #: positions whose activations a reader should average (``tokenize_span_batches``); None: the reader's rule
    selected: torch.Tensor | None = None


def check_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    """Validate layer indices against the model (all layers when ``None``)."""
    count = len(find_decoder_layers(model))
    if layers is None:
        return list(range(count))
    layers = [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < count]
    if bad:
        raise ConfigError(f"layers {bad} are out of range: the model has {count} decoder layers (0 to {count - 1})")
    if not layers:
        raise ConfigError("no layers selected")
    return sorted(set(layers))


def tokenize_batches(
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int,
    max_length: int,
) -> Iterator[TokenizedBatch]:
    """Tokenise ``texts`` in order, in padded batches, truncating to ``max_length``.

    Texts are sorted by length within windows of 16 batches to limit padding;
    each batch carries the original indices.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    for indices in _length_sorted_batches(texts, batch_size):
        full = tokenizer([texts[i] for i in indices], add_special_tokens=True, truncation=False)["input_ids"]
        truncated = [len(ids) > max_length for ids in full]
        encoded = tokenizer(
            [texts[i] for i in indices],
            add_special_tokens=True,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        yield TokenizedBatch(indices, encoded["input_ids"], encoded["attention_mask"], truncated)


def _length_sorted_batches(texts: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    """Batches of indices in order, sorted by length (longest first) within windows of 16 batches."""
    lengths = [len(t) for t in texts]
    window = batch_size * 16
    for start in range(0, len(texts), window):
        chunk = sorted(range(start, min(start + window, len(texts))), key=lambda i: -lengths[i])
        for b in range(0, len(chunk), batch_size):
            yield chunk[b : b + batch_size]


def tokenize_span_batches(
    tokenizer,
    texts: Sequence[str],
    spans: Sequence[tuple[int, int]],
    *,
    batch_size: int,
    max_length: int,
) -> Iterator[TokenizedBatch]:
    """Like :func:`tokenize_batches` for rendered chats, with ``selected`` marking each text's span.

    ``spans[i]`` is a character range of ``texts[i]``; a token is selected when its characters lie
    inside it. No special tokens are added (a chat template writes its own). Padding follows the
    tokenizer's ``padding_side``. Needs a fast tokenizer (offset mapping).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if len(texts) != len(spans):
        raise ValueError(f"{len(texts)} texts but {len(spans)} spans")
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("reading a span of a text needs a fast tokenizer (offset mapping); this one is not")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ConfigError("the tokenizer has neither a pad token nor an EOS token to pad with")
    left = getattr(tokenizer, "padding_side", "right") == "left"
    for indices in _length_sorted_batches(texts, batch_size):
        encoded = tokenizer([texts[i] for i in indices], add_special_tokens=False, return_offsets_mapping=True)
        rows = []
        for i, ids, offsets in zip(indices, encoded["input_ids"], encoded["offset_mapping"]):
            first, last = spans[i]
            inside = [s >= first and e <= last and e > s for s, e in offsets]
            rows.append((list(ids), inside))
        truncated = [len(ids) > max_length for ids, _ in rows]
        width = min(max(len(ids) for ids, _ in rows), max_length)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        selected = torch.zeros((len(rows), width), dtype=torch.bool)
        for r, (ids, inside) in enumerate(rows):
            ids, inside = ids[:max_length], inside[:max_length]
            cols = slice(width - len(ids), width) if left else slice(0, len(ids))
            input_ids[r, cols] = torch.tensor(ids, dtype=torch.long)
            attention[r, cols] = 1
            selected[r, cols] = torch.tensor(inside, dtype=torch.bool)
        yield TokenizedBatch(indices, input_ids, attention, truncated, selected)


@contextmanager
def layer_reducers(model: nn.Module, layers: Sequence[int], reducer: Reducer, *, stop_after_last: bool = True):
    """Call ``reducer(layer, hidden)`` with each listed decoder layer's output while active."""
    modules = find_decoder_layers(model)
    last = max(layers)
    handles = []

    def make_hook(index: int):
        def hook(_module, _args, output):
            reducer(index, hidden_from_output(output))
            if stop_after_last and index == last:
                raise _StopForward

        return hook

    try:
        for index in layers:
            handles.append(modules[index].register_forward_hook(make_hook(index)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def backbone(model: nn.Module) -> nn.Module:
    """The transformer body without the LM head (``base_model`` of a PreTrainedModel)."""
    base = unwrap_model(model)
    return getattr(base, "base_model", base)


@torch.inference_mode()
def forward_layers(model: nn.Module, batch: TokenizedBatch, layers: Sequence[int], reducer: Reducer) -> None:
    """Run ``model``'s body on ``batch``, reducing the outputs of ``layers`` with ``reducer``."""
    run_layers(model, batch.input_ids, batch.attention_mask, layers, reducer)


def run_layers(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int],
               reducer: Reducer, *, stop_after_last: bool = True, position_ids: torch.Tensor | None = None) -> None:
    """Run ``model``'s body (no LM head) on one batch, reducing the outputs of ``layers`` with ``reducer``.

    Runs in the caller's grad mode and module modes (:func:`forward_layers` wraps it in inference mode).
    ``stop_after_last=False`` runs every layer even after the last one read: needed where all ranks must
    take the same forward path (DeepSpeed ZeRO-3 gathers each layer's parameters collectively).
    ``position_ids`` are passed to the body when given (else it derives its own).
    """
    device = next(model.parameters()).device
    body = backbone(model)
    inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    if position_ids is not None:
        inputs["position_ids"] = position_ids.to(device)
    with layer_reducers(model, layers, reducer, stop_after_last=stop_after_last):
        try:
            body(**inputs, use_cache=False)
        except _StopForward:
            pass
