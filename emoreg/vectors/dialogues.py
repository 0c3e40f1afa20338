"""The dialogue corpus: emotion in chat format, read at the turn where it is expressed.

Stories teach a direction what an emotion looks like in narrative prose. The
regulariser acts inside a conversation, mostly on the assistant's reply
tokens, so a second source reads the model there (persona-vectors style):

* ``speaker="assistant"``: an ordinary request and a reply in which the
  assistant itself speaks in the emotion's voice; the direction averages the
  assistant turn's tokens.
* ``speaker="user"``: a user message that expresses the emotion; the direction
  averages the user turn's tokens.

Each dialogue is rendered with the tokenizer's chat template (plain
``User:``/``Assistant:`` lines when it has none) and only the tokens of the
read turn's content enter the mean. File format (JSONL/CSV/TSV)::

    {"emotion": "desperate", "topic": "money", "speaker": "assistant", "user": "...", "assistant": "..."}
    {"emotion": "desperate", "topic": "money", "speaker": "user", "user": "..."}

The built-in dialogues (``emoreg/data/corpus/dialogues``) never name their
emotion: the story corpus's banned-word lists apply to both turns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from emoreg.errors import DataFormatError
from emoreg.utils.records import iter_records, require_text_field

SPEAKERS = ("user", "assistant")


@dataclass(frozen=True)
class Dialogue:
    """A one- or two-turn chat whose ``speaker`` turn expresses ``emotion``."""

    emotion: str
    topic: str
    speaker: str
    user: str
    assistant: str | None = None

    @property
    def read_text(self) -> str:
        """The content of the turn the direction reads."""
        return self.assistant if self.speaker == "assistant" else self.user  # type: ignore[return-value]

    def messages(self) -> list[dict[str, str]]:
        """The chat, ending with the read turn."""
        messages = [{"role": "user", "content": self.user}]
        if self.speaker == "assistant":
            messages.append({"role": "assistant", "content": self.assistant or ""})
        return messages


def load_dialogues(path) -> list[Dialogue]:
    """Read dialogues from a JSONL/CSV/TSV file (``emotion``, ``topic``, ``speaker``, ``user``, ``assistant``)."""
    dialogues = []
    for number, record in iter_records(path):
        emotion = require_text_field(path, number, record, "emotion").strip().lower()
        if not re.fullmatch(r"[a-z][a-z0-9_\-]*", emotion):
            raise DataFormatError(
                f"{path}, line {number}: field 'emotion' must be a lower-case name like 'desperate', got {emotion!r}"
            )
        speaker = require_text_field(path, number, record, "speaker").strip().lower()
        if speaker not in SPEAKERS:
            raise DataFormatError(
                f"{path}, line {number}: field 'speaker' must be 'user' or 'assistant', got {speaker!r}"
            )
        user = require_text_field(path, number, record, "user").strip()
        assistant = None
        if speaker == "assistant":
            assistant = require_text_field(path, number, record, "assistant").strip()
        topic = record.get("topic") or "default"
        if not isinstance(topic, str):
            raise DataFormatError(f"{path}, line {number}: field 'topic' must be a string, got {topic!r:.60}")
        dialogues.append(Dialogue(emotion=emotion, topic=topic.strip(), speaker=speaker, user=user,
                                  assistant=assistant))
    if not dialogues:
        raise DataFormatError(f"{path}: no dialogues found (expected JSON lines with 'emotion', 'speaker', 'user')")
    return dialogues


def render_dialogue(tokenizer, dialogue: Dialogue) -> tuple[str, tuple[int, int]]:
    """The chat as the model reads it, and the character span of the read turn's content.

    Uses the tokenizer's chat template; without one, ``User: ...`` / ``Assistant: ...`` lines.
    """
    messages = dialogue.messages()
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    else:
        text = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
    content = dialogue.read_text
    start = text.rfind(content)
    if start < 0:
        raise DataFormatError(
            f"the chat template changed the {dialogue.speaker} turn's text ({content[:40]!r}...), so its tokens "
            "cannot be located; use a tokenizer whose template keeps message content verbatim"
        )
    return text, (start, start + len(content))


__all__ = ["Dialogue", "SPEAKERS", "load_dialogues", "render_dialogue"]
