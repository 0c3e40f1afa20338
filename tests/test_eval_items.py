"""The shared item reader of the suites: one item per record, unique ids, errors that name the file and line."""

import json

import pytest

from emoreg.errors import DataFormatError
from emoreg.evals.items import REPEATS_LINE, UniqueIds, id_or_position, read_items


def _jsonl(tmp_path, records, name="items.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _parse(ids, index, line, record):
    return {"id": ids.claim(id_or_position(record, index), line), "text": record["text"], "line": line}


def test_items_in_file_order_with_their_lines(tmp_path):
    path = _jsonl(tmp_path, [{"id": "a", "text": "x"}, {"text": "y"}, {"id": 7, "text": "z"}])
    assert read_items(path, _parse) == [{"id": "a", "text": "x", "line": 1}, {"id": "1", "text": "y", "line": 2},
                                        {"id": "7", "text": "z", "line": 3}]


def test_csv_records_and_format_override(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("id,text\na,x\n,y\n", encoding="utf-8")
    assert [item["id"] for item in read_items(path, _parse)] == ["a", "1"]
    other = tmp_path / "items.data"
    other.write_text(json.dumps({"id": "q", "text": "x"}) + "\n", encoding="utf-8")
    assert read_items(other, _parse, format="jsonl")[0]["id"] == "q"


def test_repeated_ids_name_both_lines_in_the_suites_wording(tmp_path):
    path = _jsonl(tmp_path, [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}])
    with pytest.raises(DataFormatError, match=r"items.jsonl, line 3: field 'id' 'a' repeats line 1$"):
        read_items(path, _parse)
    with pytest.raises(DataFormatError, match=r"line 3: duplicate id 'a' \(first at line 1\)$"):
        read_items(path, _parse, duplicate="duplicate id {id!r} (first at line {first})")


def test_empty_files_are_errors(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"empty.jsonl: no items found$"):
        read_items(path, _parse)
    with pytest.raises(DataFormatError, match=r"empty.jsonl: no tasks$"):
        read_items(path, _parse, empty="no tasks")


def test_parse_errors_pass_through_in_record_order(tmp_path):
    path = _jsonl(tmp_path, [{"id": "a", "text": "x"}, {"id": "a"}])

    def strict(ids, index, line, record):
        if "text" not in record:
            raise DataFormatError(f"{path}, line {line}: no text")
        return _parse(ids, index, line, record)

    with pytest.raises(DataFormatError, match="line 2: no text"):  # the suite's own check comes first here
        read_items(path, strict)


def test_unique_ids_alone():
    ids = UniqueIds("file.yaml")
    assert ids.duplicate == REPEATS_LINE
    assert ids.claim("a", 4) == "a" and ids.claim("b", 9) == "b"
    with pytest.raises(DataFormatError, match=r"^file.yaml, line 12: field 'id' 'a' repeats line 4$"):
        ids.claim("a", 12)
    places = UniqueIds("file.json", duplicate="duplicate scenario id {id!r}")
    places.claim("s1", where="file.json, scenario 1")
    with pytest.raises(DataFormatError, match=r"^file.json, scenario 2: duplicate scenario id 's1'$"):
        places.claim("s1", where="file.json, scenario 2")
    anywhere = UniqueIds("ab.jsonl", duplicate="field 'id' {id!r} appears more than once")
    anywhere.claim("q")
    with pytest.raises(DataFormatError, match=r"^ab.jsonl: field 'id' 'q' appears more than once$"):
        anywhere.claim("q")


def test_id_or_position():
    assert id_or_position({"id": "x"}, 3) == "x"
    assert id_or_position({"id": 0}, 3) == "0"
    assert id_or_position({"id": ""}, 3) == "3"
    assert id_or_position({"id": None}, 3) == "3"
    assert id_or_position({}, 5) == "5"
