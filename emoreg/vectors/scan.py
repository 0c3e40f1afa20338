"""Score every row of a data file by emotion: the data-flagging tool.

For each row, the mean projection of its tokens (attention sinks excluded) on
every emotion at one layer, raw and standardised by the base model's
statistics. Rank a fine-tuning set by emotion before training on it
(persona-vectors style data flagging).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from emoreg.errors import DataFormatError
from emoreg.models.layout import model_context_length
from emoreg.utils.atomic import atomic_file
from emoreg.utils.records import iter_records, missing_field_error
from emoreg.vectors.bundle import EmotionVectors
from emoreg.vectors.validation import mean_projections

logger = logging.getLogger(__name__)


@dataclass
class ScanRow:
    """One input row: its id (the ``id_field`` value or the 0-based row index) and text."""

    id: Any
    text: str
    line: int


def read_scan_rows(path: str | Path, text_field: str = "text", id_field: str | None = "id") -> list[ScanRow]:
    """Read the rows to score; a row without ``text_field`` is an error naming the line."""
    rows = []
    for index, (line, record) in enumerate(iter_records(path)):
        if text_field not in record:
            raise missing_field_error(path, line, record, text_field, " (choose one with --text-field)")
        text = record[text_field]
        if not isinstance(text, str):
            raise DataFormatError(f"{path}, line {line}: field {text_field!r} must be a string, "
                                  f"got {type(text).__name__}")
        row_id = record.get(id_field, index) if id_field else index
        rows.append(ScanRow(id=row_id, text=text, line=line))
    if not rows:
        raise DataFormatError(f"{path}: no rows to score (the file is empty or holds only blank lines"
                              f"{' or a header' if Path(path).suffix.lower() in ('.csv', '.tsv', '.tab') else ''})")
    return rows


def scan_rows(
    model: nn.Module,
    tokenizer,
    vectors: EmotionVectors,
    rows: list[ScanRow],
    *,
    layer: int | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield one result per row: ``{"id", "layer", "n_tokens", "truncated", "projection", "z"}``."""
    layer = vectors.default_layer if layer is None else layer
    vectors.layer_index(layer)  # raises a clear error for a layer the bundle lacks
    vectors.check_model(model)
    limit = max_length or model_context_length(model, tokenizer) or 2048
    lengths = [len(ids) for ids in tokenizer([r.text for r in rows], add_special_tokens=True)["input_ids"]]
    truncated = [n > limit for n in lengths]
    if any(truncated):
        logger.warning(
            "%d of %d rows are longer than %d tokens and are truncated (first: line %d)",
            sum(truncated), len(rows), limit, rows[truncated.index(True)].line,
        )
    empty = [r.line for r, n in zip(rows, lengths) if n < 2]
    projections = mean_projections(
        model, tokenizer, vectors, [r.text if r.text else " " for r in rows], layers=[layer],
        batch_size=batch_size, max_length=limit, progress=progress, desc="emoreg scan",
        sink_tokens=int(vectors.extraction.get("sink_tokens", 1)),
    )[layer]
    z = vectors.standardize(projections, layer) if vectors.has_stats else None
    for i, row in enumerate(rows):
        result: dict[str, Any] = {
            "id": row.id,
            "layer": layer,
            "n_tokens": min(lengths[i], limit),
            "truncated": truncated[i],
            "projection": {e: round(float(v), 4) for e, v in zip(vectors.emotions, projections[i])},
        }
        if z is not None:
            result["z"] = {e: round(float(v), 4) for e, v in zip(vectors.emotions, z[i])}
        if row.line in empty:
            result["projection"] = {e: None for e in vectors.emotions}
            result["z"] = {e: None for e in vectors.emotions}
            result["note"] = "no tokens after the attention sink"
        yield result


def write_scan(results: Iterator[dict[str, Any]], out: str | Path) -> int:
    """Write results as JSON lines atomically; return the row count."""
    count = 0
    with atomic_file(out) as handle:
        for result in results:
            handle.write(json.dumps(result) + "\n")
            count += 1
    return count


__all__ = ["ScanRow", "read_scan_rows", "scan_rows", "write_scan"]

