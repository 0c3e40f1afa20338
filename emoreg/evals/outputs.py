"""An eval output directory: ``results.json`` and ``records.jsonl``, written and read here only.

``results.json`` is the results dict of :func:`emoreg.evals.running.run_suites` (``{"suites": {name:
{"metrics": {metric: {"value", "ci", "n"}}, ...}}, ...}``); ``records.jsonl`` holds every record, one JSON
object a line, with the ``"suite"`` it came from. Both are written atomically; readers check the fields
that the comparison and the demo rely on and name the file (and line) of any problem.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emoreg.errors import DataFormatError
from emoreg.utils.atomic import atomic_file
from emoreg.utils.records import iter_records

RESULTS_FILE = "results.json"
RECORDS_FILE = "records.jsonl"


def write_outputs(out_dir: str | Path, results: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> None:
    """Write ``results.json`` and ``records.jsonl`` into ``out_dir``, each atomically."""
    out = Path(out_dir)
    with atomic_file(out / RESULTS_FILE) as handle:
        json.dump(results, handle, indent=2)
        handle.write("\n")
    with atomic_file(out / RECORDS_FILE) as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json``; errors name the file and what is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such results file (expected the {RESULTS_FILE} that emoreg eval writes)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(results, dict):
        raise DataFormatError(f"{path}: expected a JSON object, got {type(results).__name__}")
    if not isinstance(results.get("suites"), dict):
        raise DataFormatError(f"{path}: field 'suites': expected a mapping of suite name to its results")
    for name, entry in results["suites"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            raise DataFormatError(f"{path}: field 'suites.{name}.metrics': expected a mapping of metric name to "
                                  "{value, ci, n}")
    return results


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``records.jsonl``: one JSON object per line with ``id`` and ``suite``; a missing file gives []."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, record in iter_records(path, format="jsonl"):
        for field in ("id", "suite"):
            if field not in record:
                raise DataFormatError(f"{path}, line {number}: missing field {field!r}")
        records.append(record)
    return records


def load_outputs(directory: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(results, records)`` of an eval output directory (see :func:`load_results` and :func:`load_records`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataFormatError(f"{directory}: no such eval output directory (expected {RESULTS_FILE} and "
                              f"{RECORDS_FILE})")
    return load_results(directory / RESULTS_FILE), load_records(directory / RECORDS_FILE)
