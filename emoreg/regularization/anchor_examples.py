"""Anchor examples of the KL anchor (:mod:`emoreg.regularization.kl_anchor`): reading, tokenising, batching.

JSONL rows (a file, or ``"builtin"``: ``emoreg/data/datasets/heldout_requests.jsonl``, 60 ordinary chat
requests ending with a user turn) of one of two kinds:

* ``{"messages": [...]}``: a chat. When it ends with an assistant turn, that turn is the reply; when it ends
  with a user turn, the reply is written later by the reference model (``complete_with_base``). The context
  is rendered with the tokenizer's chat template, ending with the generation prompt
  (:func:`emoreg.models.generation.render_conversation`), and the reply tokenised after it without special
  tokens (:func:`emoreg.vectors.activations.encode_pairs`): the KL is taken where the next token is a reply token.
* ``{"text": "..."}``: plain text, tokenised with the tokenizer's special tokens; the KL is taken where the
  next token is any token after the first.

Other keys (``id``, ...) are ignored. A row is cut to ``max_length`` tokens (the end of the reply or text is
cut); a chat whose context alone does not fit is an error. Errors are
:class:`~emoreg.errors.DataFormatError` naming the file, the line and the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from emoreg.errors import ConfigError, DataFormatError

#: ``examples`` value naming the built-in anchor examples.
BUILTIN = "builtin"
#: The built-in anchor examples, inside the package.
BUILTIN_FILE = ("data", "datasets", "heldout_requests.jsonl")
_ROLES = ("system", "user", "assistant")


def builtin_examples_path() -> Path:
    """The path of the built-in anchor examples, ``emoreg/data/datasets/heldout_requests.jsonl``."""
    return Path(str(resources.files("emoreg").joinpath(*BUILTIN_FILE)))


@dataclass(frozen=True)
class AnchorExample:
    """One anchor example: a chat ``context`` + ``reply`` (None: to be written by the reference), or a ``text``.

    ``where`` names its file and line for error messages.
    """

    where: str
    context: tuple[dict[str, str], ...] | None = None
    reply: str | None = None
    text: str | None = None

    @property
    def is_chat(self) -> bool:
        return self.text is None

    @property
    def needs_reply(self) -> bool:
        return self.is_chat and self.reply is None


def load_anchor_examples(path: str | Path, *, complete_with_base: bool = True) -> list[AnchorExample]:
    """Read anchor examples from a JSONL file (see the module docstring for the row format).

    Raises:
        DataFormatError: a missing file, invalid JSON, a row with neither or both of ``messages`` and ``text``,
            a malformed message, a chat ending with a user turn while ``complete_with_base`` is off, or no
            rows at all; the message names the file, the line and the field.
    """
    from emoreg.utils.records import iter_records

    path = Path(path)
    examples = [_example(f"{path}, line {number}", record, complete_with_base)
                for number, record in iter_records(path, format="jsonl")]
    if not examples:
        raise DataFormatError(f"{path}: no anchor examples (expected JSONL rows with 'messages' or 'text')")
    return examples


def _example(where: str, record: dict[str, Any], complete_with_base: bool) -> AnchorExample:
    has_messages, has_text = "messages" in record, "text" in record
    if has_messages == has_text:
        raise DataFormatError(f"{where}: an anchor row needs exactly one of 'messages' (a chat) or 'text' "
                              f"(plain text); got fields {sorted(record)}")
    if has_text:
        text = record["text"]
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(f"{where}, field 'text': expected a non-empty string, got {text!r:.60}")
        return AnchorExample(where=where, text=text)
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(f"{where}, field 'messages': expected a non-empty list of "
                              f"{{role, content}} messages, got {messages!r:.60}")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES \
                or not isinstance(message.get("content"), str):
            raise DataFormatError(f"{where}, field 'messages[{index}]': expected {{role: one of {list(_ROLES)}, "
                                  f"content: a string}}, got {message!r:.80}")
    last = messages[-1]
    context = tuple({"role": m["role"], "content": m["content"]} for m in messages[:-1])
    if last["role"] == "assistant":
        if not last["content"].strip():
            raise DataFormatError(f"{where}, field 'messages[{len(messages) - 1}]': the assistant reply is empty")
        return AnchorExample(where=where, context=context, reply=last["content"])
    if last["role"] == "user":
        if not complete_with_base:
            raise DataFormatError(f"{where}, field 'messages': the chat ends with a user turn and "
                                  f"kl_anchor.complete_with_base is off; add the assistant reply or turn "
                                  f"complete_with_base on")
        return AnchorExample(where=where, context=context + ({"role": "user", "content": last["content"]},))
    raise DataFormatError(f"{where}, field 'messages': the chat ends with a {last['role']} turn; end it with a "
                          f"user turn (the reference replies) or an assistant turn (the reply)")


def chat_prompt_ids(tokenizer, example: AnchorExample, max_length: int) -> list[int]:
    """Token ids of a chat example's context, rendered with the chat template up to the generation prompt.

    Raises:
        DataFormatError: the context leaves no room for a reply token within ``max_length``.
    """
    from emoreg.models.generation import render_conversation
    from emoreg.vectors.activations import encode_pairs

    prompt_ids = encode_pairs(tokenizer, [render_conversation(tokenizer, list(example.context))])[0][0]
    if len(prompt_ids) >= max_length:
        raise DataFormatError(f"{example.where}, field 'messages': the rendered chat has {len(prompt_ids)} tokens "
                              f"before the reply, and kl_anchor.max_length is {max_length}; raise max_length or "
                              f"shorten the chat")
    return prompt_ids


def encode_example(tokenizer, example: AnchorExample, max_length: int) -> tuple[list[int], list[int]]:
    """``(prompt_ids, target_ids)``: the KL is taken where the next token is one of ``target_ids``.

    A chat's prompt is its context rendered with the chat template (ending with the generation prompt) and
    its targets are the reply tokens, tokenised after it without special tokens
    (:func:`emoreg.vectors.activations.encode_pairs`); a text's prompt is its first token (the text is
    tokenised with the tokenizer's special tokens) and its targets the rest. Targets are cut to fit
    ``max_length``.

    Raises:
        DataFormatError: a chat whose context does not fit, or nothing to take the KL on.
    """
    if example.is_chat:
        if example.reply is None:
            raise ConfigError(f"{example.where}: the reply has not been written yet (KLAnchor.prepare writes it)")
        prompt_ids = chat_prompt_ids(tokenizer, example, max_length)
        target_ids = list(tokenizer(example.reply, add_special_tokens=False)["input_ids"])
        field, what = "messages", "the reply has no token"
    else:
        ids = list(tokenizer(example.text, add_special_tokens=True)["input_ids"])
        prompt_ids, target_ids = ids[:1], ids[1:]
        field, what = "text", "the text has no token after its first one"
    target_ids = target_ids[:max_length - len(prompt_ids)]
    if not target_ids:
        raise DataFormatError(f"{example.where}, field {field!r}: no token to take the KL on ({what})")
    return prompt_ids, target_ids


@dataclass
class AnchorBatch:
    """Right-padded anchor examples: ``input_ids``/``attention_mask`` ``[B, T]`` and ``positions`` ``[B, T]``,
    True where the model's next-token distribution enters the KL (the next token is a target token)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor

    def to(self, device: torch.device) -> AnchorBatch:
        return AnchorBatch(self.input_ids.to(device), self.attention_mask.to(device), self.positions.to(device))


def collate(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> AnchorBatch:
    """Pad ``(prompt_ids, target_ids)`` rows on the right into an :class:`AnchorBatch`."""
    from emoreg.vectors.activations import pad_pairs

    input_ids, attention_mask, _, target_mask = pad_pairs(pairs, pad_id, padding_side="right")
    positions = torch.zeros_like(target_mask)
    positions[:, :-1] = target_mask[:, 1:]
    return AnchorBatch(input_ids, attention_mask, positions)


__all__ = ["BUILTIN", "AnchorBatch", "AnchorExample", "builtin_examples_path", "chat_prompt_ids", "collate",
           "encode_example", "load_anchor_examples"]
