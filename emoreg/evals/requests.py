"""Read chat requests (the prompts a generating suite answers) from JSONL, CSV or TSV.

A row is ``{"id"?, "messages": [{"role", "content"}, ...]}`` ending with a user turn, or
``{"id"?, "prompt": "..."}`` (one user turn). Ids default to the row's position and must be unique.
Bad rows raise :class:`~emoreg.errors.DataFormatError` naming the file, line and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emoreg.errors import DataFormatError
from emoreg.evals.items import UniqueIds, read_items

REQUESTS_FORMAT = 'JSONL: {"id"?, "messages": [{"role", "content"}, ...]} or {"id"?, "prompt": "..."}'


def load_chat_requests(path: Path) -> list[dict[str, Any]]:
    """``[{"id": str, "messages": [...]}, ...]`` in file order (see the module doc)."""

    def parse(ids: UniqueIds, index: int, line: int, record: dict[str, Any]) -> dict[str, Any]:
        if "messages" in record:
            messages = record["messages"]
            if (not isinstance(messages, list) or not messages
                    or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role")
                               for m in messages)):
                raise DataFormatError(f"{path}, line {line}: field 'messages' must be a non-empty list of "
                                      "{'role': ..., 'content': ...} objects")
            if messages[-1]["role"] != "user":
                raise DataFormatError(f"{path}, line {line}: field 'messages' must end with a user turn")
        elif isinstance(record.get("prompt"), str) and record["prompt"].strip():
            messages = [{"role": "user", "content": record["prompt"]}]
        else:
            raise DataFormatError(f"{path}, line {line}: expected a 'messages' list or a 'prompt' string")
        return {"id": ids.claim(str(record.get("id", index)), line), "messages": messages}

    return read_items(path, parse, duplicate="duplicate id {id!r}")
