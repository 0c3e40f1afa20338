import pytest

from emoreg.errors import DataFormatError
from emoreg.utils.records import iter_records, require_text_field


def test_jsonl_csv_tsv(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n\n{"text": "y", "id": 3}\n')
    (tmp_path / "a.csv").write_text('id,text\n1,"hello, world"\n2,bye\n')
    (tmp_path / "a.tsv").write_text("id\ttext\n1\thello\n")
    assert [r for _, r in iter_records(tmp_path / "a.jsonl")] == [{"text": "x"}, {"text": "y", "id": 3}]
    assert [n for n, _ in iter_records(tmp_path / "a.jsonl")] == [1, 3]
    assert [r["text"] for _, r in iter_records(tmp_path / "a.csv")] == ["hello, world", "bye"]
    assert [n for n, _ in iter_records(tmp_path / "a.csv")] == [2, 3]
    assert [r["text"] for _, r in iter_records(tmp_path / "a.tsv")] == ["hello"]


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl, line 2: not valid JSON"):
        list(iter_records(path))


def test_non_object_line(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('[1, 2]\n')
    with pytest.raises(DataFormatError, match="line 1: expected a JSON object"):
        list(iter_records(path))


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        list(iter_records(tmp_path / "nope.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataFormatError, match="cannot tell the format"):
        list(iter_records(tmp_path / "x.txt"))


def test_csv_row_with_extra_fields(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("id,text\n1,a,b\n")
    with pytest.raises(DataFormatError, match="line 2: more fields"):
        list(iter_records(path))


def test_require_text_field_messages():
    with pytest.raises(DataFormatError,
                       match=r"f.jsonl, line 4: missing field 'text'; the record has fields \['body'\]"):
        require_text_field("f.jsonl", 4, {"body": "x"}, "text")
    with pytest.raises(DataFormatError, match="must be a non-empty string"):
        require_text_field("f.jsonl", 4, {"text": "  "}, "text")


@pytest.mark.parametrize("name", ["a.jsonl", "a.csv"])
def test_non_utf8_input_names_the_file_and_line(tmp_path, name):
    path = tmp_path / name
    header = b"text\n" if name.endswith(".csv") else b""
    row = b'{"text": "ok"}\n' if name.endswith(".jsonl") else b"ok\n"
    bad = b'{"text": "caf\xe9"}\n' if name.endswith(".jsonl") else b"caf\xe9\n"
    path.write_bytes(header + row + bad)
    line = 3 if name.endswith(".csv") else 2
    with pytest.raises(DataFormatError, match=rf"{name}, line {line}: not valid UTF-8 \(byte 0xe9 at column"):
        list(iter_records(path))
