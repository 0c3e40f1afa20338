"""Read tabular text records from JSONL, CSV or TSV files with precise errors.

Every reader yields ``(line_number, record)`` pairs so that callers can name the
exact line at fault. Formats are chosen by file extension (``.jsonl``/``.json``
lines, ``.csv``, ``.tsv``/``.tab``); ``format=`` overrides it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from emoreg.errors import DataFormatError

_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}


def detect_format(path: str | Path) -> str:
    """Return ``"jsonl"``, ``"csv"`` or ``"tsv"`` from the file extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise DataFormatError(
            f"{path}: cannot tell the format from the extension {suffix!r}; "
            f"expected one of {sorted(_FORMATS)} (or pass the format explicitly)"
        )
    return _FORMATS[suffix]


def iter_records(path: str | Path, format: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for every non-blank record of ``path``.

    Line numbers are 1-based and refer to the physical line where the record
    starts (for CSV/TSV the header is line 1, so the first record is line 2).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    fmt = format or detect_format(path)
    if fmt not in ("jsonl", "csv", "tsv"):
        raise DataFormatError(f"{path}: unknown format {fmt!r}; expected 'jsonl', 'csv' or 'tsv'")
    try:
        if fmt == "jsonl":
            yield from _iter_jsonl(path)
        else:
            yield from _iter_delimited(path, "," if fmt == "csv" else "\t")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _not_utf8(path: Path) -> DataFormatError:
    """The error for a file that is not UTF-8, naming the first bad line and byte."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return DataFormatError(f"{path}, line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                                       f"column {exc.start + 1}); save the file as UTF-8")
    return DataFormatError(f"{path}: not valid UTF-8; save the file as UTF-8")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{path}, line {number}: not valid JSON "
                                      f"({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise DataFormatError(
                    f"{path}, line {number}: expected a JSON object, got {type(record).__name__}"
                )
            yield number, record


def _iter_delimited(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if reader.fieldnames is None:
            return
        for record in reader:
            if None in record:
                raise DataFormatError(
                    f"{path}, line {reader.line_num}: more fields than the header has ({len(reader.fieldnames)})"
                )
            if not any((value or "").strip() for value in record.values()):
                continue
            yield reader.line_num, dict(record)


def require_text_field(path: str | Path, number: int, record: dict[str, Any], field: str) -> str:
    """Return ``record[field]`` as a non-empty string or raise a precise error."""
    if field not in record:
        raise missing_field_error(path, number, record, field)
    value = record[field]
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(
            f"{path}, line {number}: field {field!r} must be a non-empty string, got {value!r:.60}"
        )
    return value


def missing_field_error(path: str | Path, number: int, record: dict[str, Any], field: str,
                        hint: str = "") -> DataFormatError:
    """The error for a record without ``field``: a CSV/TSV file lacks the column in its header (line 1), a
    JSON line lacks the key on its own line."""
    if Path(path).suffix.lower() in (".csv", ".tsv", ".tab"):
        return DataFormatError(f"{path}, line 1 (header): no column {field!r}; the header has {list(record)}{hint}")
    return DataFormatError(f"{path}, line {number}: missing field {field!r}; the record has fields "
                           f"{sorted(record)}{hint}")
