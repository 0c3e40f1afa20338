"""Training datasets for the recipes: built-in names, local files and cached Hugging Face datasets.

``data.source`` is resolved in this order:

1. a built-in dataset name: ``emoreg/data/datasets/<name>.jsonl`` (found with :mod:`importlib.resources`);
2. a local ``.json`` (JSON lines, or one JSON array of objects), ``.jsonl`` or ``.parquet`` file;
3. a Hugging Face dataset id, from the local cache only (never downloaded; ``data.split`` picks the split).

Every row is checked for the columns its trainer needs, and an error names the file, the line (or row) and
the column:

* ``sft``: ``messages`` (a conversation with at least one assistant message), or ``prompt`` + ``completion``,
  or ``text``; the first row decides the layout and every row must follow it;
* ``dpo``: ``prompt``, ``chosen``, ``rejected``;
* ``grpo``: ``prompt`` (other columns are kept: reward functions receive them as keyword arguments).

Text fields are non-empty strings, or lists of ``{"role", "content"}`` messages (conversational data).
``data.limit`` keeps the first N rows, so a limited run is deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from emoreg.errors import ConfigError, DataFormatError
from emoreg.utils.records import iter_records

#: Column layouts each trainer accepts, in order of preference.
LAYOUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "sft": (("messages",), ("prompt", "completion"), ("text",)),
    "dpo": (("prompt", "chosen", "rejected"),),
    "grpo": (("prompt",),),
}
ROLES = ("system", "user", "assistant", "tool")
FILE_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class DataSource:
    """Where ``data.source`` points: ``kind`` is ``"builtin"``, ``"file"`` or ``"hub"``."""

    kind: str
    location: str


def builtin_folder():
    """The folder of the built-in datasets, ``emoreg/data/datasets`` (an importlib.resources Traversable)."""
    return resources.files("emoreg") / "data" / "datasets"


def builtin_datasets() -> list[str]:
    """Names of the built-in training datasets (``emoreg/data/datasets/*.jsonl``)."""
    folder = builtin_folder()
    if not folder.is_dir():
        return []
    return sorted(entry.name[: -len(".jsonl")] for entry in folder.iterdir() if entry.name.endswith(".jsonl"))


def resolve_source(source: str) -> DataSource:
    """Classify ``data.source`` as a built-in dataset, a local file or a Hugging Face dataset id."""
    if source in builtin_datasets():
        path = builtin_folder() / f"{source}.jsonl"
        return DataSource("builtin", str(path))
    path = Path(source).expanduser()
    if path.suffix.lower() in FILE_SUFFIXES:
        if not path.is_file():
            raise DataFormatError(f"data.source: {path} does not exist")
        return DataSource("file", str(path))
    if path.exists():
        raise DataFormatError(f"data.source: {path} is not a .json, .jsonl or .parquet file")
    return DataSource("hub", source)


def load_rows(source: str, trainer_type: str, *, split: str = "train", limit: int | None = None) -> list[dict]:
    """The validated rows of ``source`` for ``trainer_type`` (the first ``limit`` rows when given)."""
    if trainer_type not in LAYOUTS:
        raise ConfigError(f"trainer.type must be one of {sorted(LAYOUTS)}, got {trainer_type!r}")
    resolved = resolve_source(source)
    rows: list[dict] = []
    layout: tuple[str, ...] | None = None
    for where, record in _iter_source(resolved, split):
        if limit is not None and len(rows) >= limit:
            break
        if layout is None:
            layout = _choose_layout(where, record, trainer_type)
        rows.append(_check_row(where, record, layout, trainer_type))
    if not rows:
        raise DataFormatError(f"{resolved.location}: no rows (expected {_describe(trainer_type)})")
    return rows


def load_training_dataset(source: str, trainer_type: str, *, split: str = "train", limit: int | None = None):
    """:func:`load_rows` as a :class:`datasets.Dataset`."""
    from datasets import Dataset

    return Dataset.from_list(load_rows(source, trainer_type, split=split, limit=limit))


# ---------------------------------------------------------------------------------------------- reading


def _iter_source(source: DataSource, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if source.kind == "hub":
        yield from _iter_hub(source.location, split)
        return
    path = Path(source.location)
    if path.suffix.lower() == ".parquet":
        yield from _iter_parquet(path)
    elif path.suffix.lower() == ".json" and _starts_with_array(path):
        yield from _iter_json_array(path)
    else:
        for number, record in iter_records(path, format="jsonl"):
            yield f"{path}, line {number}", record


def _starts_with_array(path: Path) -> bool:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                return line.lstrip().startswith("[")
    return False


def _iter_json_array(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataFormatError(f"{path}, item {index}: expected a JSON object, got {type(item).__name__}")
        yield f"{path}, item {index}", item


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataFormatError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    for index, record in enumerate(table.to_pylist()):
        yield f"{path}, row {index}", record


def _iter_hub(name: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A dataset from the local Hugging Face cache only; nothing is downloaded."""
    import datasets
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    builtins = builtin_datasets()
    try:
        local = snapshot_download(name, repo_type="dataset", local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):  # not in the cache, or not an id
        raise DataFormatError(
            f"data.source {name!r} is not a built-in dataset ({', '.join(builtins) or 'none installed'}), "
            f"not a local .json/.jsonl/.parquet file, and not a Hugging Face dataset in the local cache "
            f"(emoreg never downloads datasets; fetch it first with `huggingface-cli download --repo-type dataset "
            f"{name}` on a machine with network access, or pass a local file)"
        ) from None
    try:
        dataset = datasets.load_dataset(local, split=split)
    except ValueError as exc:  # unknown split
        raise DataFormatError(f"data.source {name!r} (cached at {local}): cannot load split {split!r}: {exc}") from None
    for index, record in enumerate(dataset):
        yield f"{name} [{split}], row {index}", dict(record)


# ---------------------------------------------------------------------------------------------- checking


def _describe(trainer_type: str) -> str:
    return " or ".join("+".join(layout) for layout in LAYOUTS[trainer_type]) + " columns"


def _choose_layout(where: str, record: dict[str, Any], trainer_type: str) -> tuple[str, ...]:
    for layout in LAYOUTS[trainer_type]:
        if all(column in record for column in layout):
            return layout
    raise DataFormatError(f"{where}: a {trainer_type} row needs {_describe(trainer_type)}; "
                          f"this record has fields {sorted(record)}")


def _check_row(where: str, record: dict[str, Any], layout: tuple[str, ...], trainer_type: str) -> dict[str, Any]:
    for column in layout:
        if column not in record:
            raise DataFormatError(f"{where}: missing column {column!r} (the first row uses {'+'.join(layout)}); "
                                  f"this record has fields {sorted(record)}")
    kinds = {column: _check_value(where, column, record[column], need_assistant=column == "messages")
             for column in layout}
    if len(set(kinds.values())) > 1:
        raise DataFormatError(f"{where}: columns {list(layout)} mix plain strings and message lists "
                              f"({kinds}); use one or the other")
    if trainer_type == "grpo":
        return dict(record)
    return {column: record[column] for column in layout}


def _check_value(where: str, column: str, value: Any, *, need_assistant: bool) -> str:
    """Return ``"text"`` or ``"messages"``, or raise naming the column."""
    if isinstance(value, str):
        if column == "messages":
            raise DataFormatError(f"{where}: column 'messages' must be a list of {{role, content}} messages, "
                                  f"got a string")
        if not value.strip():
            raise DataFormatError(f"{where}: column {column!r} is an empty string")
        return "text"
    if not isinstance(value, list) or not value:
        raise DataFormatError(f"{where}: column {column!r} must be a non-empty string or a non-empty list of "
                              f"messages, got {value!r:.60}")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise DataFormatError(f"{where}: column {column!r}, message {index}: expected an object with 'role' and "
                                  f"'content', got {message!r:.60}")
        if message["role"] not in ROLES:
            raise DataFormatError(f"{where}: column {column!r}, message {index}: role must be one of {list(ROLES)}, "
                                  f"got {message['role']!r}")
        if not isinstance(message["content"], str):
            raise DataFormatError(f"{where}: column {column!r}, message {index}: content must be a string, got "
                                  f"{type(message['content']).__name__}")
    if need_assistant and not any(m["role"] == "assistant" for m in value):
        raise DataFormatError(f"{where}: column {column!r} has no assistant message to train on")
    return "messages"
