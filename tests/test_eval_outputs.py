"""An eval output directory: ``results.json`` and ``records.jsonl`` written and read back by one module."""

from __future__ import annotations

import json

import pytest

from emoreg.errors import DataFormatError
from emoreg.evals.outputs import RECORDS_FILE, RESULTS_FILE, load_outputs, load_records, write_outputs

RESULTS = {"model": {"ref": "m"}, "limit": {"a": 2, "b": None},
           "suites": {"a": {"metrics": {"rate": {"value": 0.5, "ci": [0.1, 0.9], "n": 2}}}}}
RECORDS = [{"id": "a-0", "suite": "a", "score": 1.0}, {"id": "a-1", "suite": "a", "score": [1, 2]}]


def test_written_outputs_read_back_the_same(tmp_path):
    write_outputs(tmp_path / "out", RESULTS, RECORDS)
    assert (RESULTS_FILE, RECORDS_FILE) == ("results.json", "records.jsonl")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [RECORDS_FILE, RESULTS_FILE]
    assert (tmp_path / "out" / RESULTS_FILE).read_text() == json.dumps(RESULTS, indent=2) + "\n"
    assert (tmp_path / "out" / RECORDS_FILE).read_text() == "".join(json.dumps(r) + "\n" for r in RECORDS)
    assert load_outputs(tmp_path / "out") == (RESULTS, RECORDS)


def test_missing_outputs(tmp_path):
    with pytest.raises(DataFormatError, match="no such eval output directory"):
        load_outputs(tmp_path / "nope")
    (tmp_path / "out").mkdir()
    with pytest.raises(DataFormatError, match="no such results file"):
        load_outputs(tmp_path / "out")
    assert load_records(tmp_path / "out" / RECORDS_FILE) == []
    write_outputs(tmp_path / "out", RESULTS, [])
    assert load_outputs(tmp_path / "out") == (RESULTS, [])
