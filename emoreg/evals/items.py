"""Read a suite's data file into items, each with a unique string ``id``.

:func:`read_items` is the loop the record-file suites share: the records of a JSONL, CSV or TSV file in order
(:func:`emoreg.utils.records.iter_records`), one item per record from the suite's own ``parse`` function, ids
kept unique by a :class:`UniqueIds`, and an error for a file without items. ``parse`` claims the item's id
itself, at the point of its checks where the id is known, so each suite keeps the order in which it reports a
record's faults. Suites whose data is not a record file (YAML, scenario lists) use :class:`UniqueIds` alone.

Every error is a :class:`~emoreg.errors.DataFormatError` that names the file and line; the wording of a repeated
id is the suite's (``duplicate=``, a :meth:`str.format` template with ``{id}`` and ``{first}``, where the id was
first given).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from emoreg.errors import DataFormatError
from emoreg.utils.records import iter_records

#: The usual wording of a repeated id: ``field 'id' 'a' repeats line 1``.
REPEATS_LINE = "field 'id' {id!r} repeats line {first}"


class UniqueIds:
    """The ids of one data file given so far and where each was first given; a repeated id is an error.

    Args:
        path: the file (errors start with it).
        duplicate: the error's text after ``"<path>, line <n>: "``; ``{id}`` is the repeated id and ``{first}``
            the line (or place) it was first given on.
    """

    def __init__(self, path: str | Path, duplicate: str = REPEATS_LINE) -> None:
        self.path = path
        self.duplicate = duplicate
        self.first: dict[str, Any] = {}

    def claim(self, item_id: str, line: int | None = None, *, where: str | None = None) -> str:
        """Record ``item_id`` as given on ``line`` and return it; raise if it was given before.

        ``where`` replaces ``"<path>, line <line>"`` at the start of the error (and is what a later repeat names
        as ``{first}`` when ``line`` is ``None``); without either the error starts with the path alone.
        """
        if where is None:
            where = f"{self.path}, line {line}" if line is not None else f"{self.path}"
        if item_id in self.first:
            raise DataFormatError(f"{where}: " + self.duplicate.format(id=item_id, first=self.first[item_id]))
        self.first[item_id] = line if line is not None else where
        return item_id


#: ``parse(ids, index, line, record) -> item``: one record (0-based ``index``, 1-based ``line``) as an item whose
#: ``id`` it claimed from ``ids``.
ParseRecord = Callable[[UniqueIds, int, int, dict[str, Any]], dict[str, Any]]


def read_items(path: str | Path, parse: ParseRecord, *, duplicate: str = REPEATS_LINE,
               empty: str = "no items found", format: str | None = None) -> list[dict[str, Any]]:
    """The items of the record file ``path`` in file order, one per record (see the module doc).

    ``empty`` is the error's text after ``"<path>: "`` when the file has no record; ``format`` overrides the
    format :func:`~emoreg.utils.records.iter_records` tells from the extension.
    """
    ids = UniqueIds(path, duplicate)
    items = [parse(ids, index, line, record) for index, (line, record) in enumerate(iter_records(path, format=format))]
    if not items:
        raise DataFormatError(f"{path}: {empty}")
    return items


def id_or_position(record: dict[str, Any], index: int) -> str:
    """``record["id"]`` as a string, or the record's 0-based position in the file when it has no (or an empty) id."""
    raw = record.get("id")
    return str(raw) if raw not in (None, "") else str(index)
