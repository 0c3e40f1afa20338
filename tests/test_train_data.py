"""emoreg.train.data: built-in names, .jsonl/.json/.parquet files, cached hub ids; column errors name file, line
and column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import emoreg.train.data as train_data
from emoreg.errors import ConfigError, DataFormatError
from emoreg.train.data import builtin_datasets, load_rows, load_training_dataset, resolve_source

USER = {"role": "user", "content": "the build is broken"}
ASSISTANT = {"role": "assistant", "content": "let us look at the log"}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("trainer_type, row", [
    ("sft", {"messages": [USER, ASSISTANT]}),
    ("sft", {"prompt": "q", "completion": " a"}),
    ("sft", {"prompt": [USER], "completion": [ASSISTANT]}),
    ("sft", {"text": "plain text"}),
    ("dpo", {"prompt": "q", "chosen": " calm", "rejected": " desperate"}),
    ("dpo", {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [{"role": "assistant", "content": "no"}]}),
    ("grpo", {"prompt": "q"}),
    ("grpo", {"prompt": [USER]}),
])
def test_each_layout_loads_from_jsonl(tmp_path, trainer_type, row):
    path = _jsonl(tmp_path / "rows.jsonl", [{**row, "id": str(i)} for i in range(3)])
    rows = load_rows(str(path), trainer_type)
    assert len(rows) == 3
    assert all(r[k] == row[k] for r in rows for k in row)
    # sft/dpo keep only the columns the trainer reads; grpo keeps the rest for the reward functions
    assert ("id" in rows[0]) == (trainer_type == "grpo")


def test_json_array_json_lines_and_parquet_give_the_same_rows(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f" a{i}"} for i in range(4)]
    as_lines = _jsonl(tmp_path / "lines.json", rows)
    as_array = tmp_path / "array.json"
    as_array.write_text(json.dumps(rows, indent=1))
    import pyarrow as pa
    import pyarrow.parquet as pq

    as_parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), as_parquet)
    for path in (as_lines, as_array, as_parquet):
        assert load_rows(str(path), "sft") == rows, path
    dataset = load_training_dataset(str(as_parquet), "sft", limit=2)
    assert dataset.column_names == ["prompt", "completion"] and dataset["prompt"] == ["q0", "q1"]


@pytest.mark.parametrize("trainer_type, rows, expected", [
    ("sft", [{"messages": [USER, ASSISTANT]}, {"prompt": "x", "completion": "y"}],
     r"rows\.jsonl, line 2: missing column 'messages' \(the first row uses messages\)"),
    ("sft", [{"question": "q", "answer": "a"}],
     r"rows\.jsonl, line 1: a sft row needs messages or prompt\+completion or text columns; "
     r".*\['answer', 'question'\]"),
    ("sft", [{"messages": [USER]}], r"line 1: column 'messages' has no assistant message"),
    ("sft", [{"messages": "hello"}], r"line 1: column 'messages' must be a list of \{role, content\} messages"),
    ("sft", [{"messages": [{"role": "robot", "content": "x"}, ASSISTANT]}],
     r"line 1: column 'messages', message 0: role must be one of"),
    ("sft", [{"messages": [{"role": "user"}, ASSISTANT]}], r"line 1: column 'messages', message 0: expected an object"),
    ("sft", [{"text": "ok"}, {"text": "  "}], r"rows\.jsonl, line 2: column 'text' is an empty string"),
    ("sft", [{"prompt": [USER], "completion": "a"}], r"line 1: columns \['prompt', 'completion'\] mix plain strings"),
    ("dpo", [{"prompt": "q", "chosen": "a", "rejected": 3}], r"line 1: column 'rejected' must be a non-empty string"),
    ("dpo", [{"prompt": "q", "chosen": "a"}], r"line 1: a dpo row needs prompt\+chosen\+rejected columns"),
    ("grpo", [{"text": "q"}], r"line 1: a grpo row needs prompt columns; this record has fields \['text'\]"),
])
def test_column_errors_name_file_line_and_column(tmp_path, trainer_type, rows, expected):
    path = _jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataFormatError, match=expected):
        load_rows(str(path), trainer_type)


def test_json_and_parquet_errors_name_the_item_or_row(tmp_path):
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_rows(str(bad_line), "sft")
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"prompt": "q"}, {"text": "t"}]))
    with pytest.raises(DataFormatError, match=r"array\.json, item 1: missing column 'prompt'"):
        load_rows(str(array), "grpo")
    not_objects = tmp_path / "numbers.json"
    not_objects.write_text("[1, 2]")
    with pytest.raises(DataFormatError, match=r"numbers\.json, item 0: expected a JSON object, got int"):
        load_rows(str(not_objects), "grpo")
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "chosen": "a", "rejected": "b"},
                                         {"prompt": "q", "chosen": "", "rejected": "b"}]), parquet)
    with pytest.raises(DataFormatError, match=r"rows\.parquet, row 1: column 'chosen' is an empty string"):
        load_rows(str(parquet), "dpo")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    with pytest.raises(DataFormatError, match=r"garbage\.parquet: not a readable parquet file"):
        load_rows(str(garbage), "dpo")


def test_limit_keeps_the_first_rows_and_empty_files_are_errors(tmp_path):
    path = _jsonl(tmp_path / "rows.jsonl", [{"prompt": f"q{i}"} for i in range(10)])
    assert [r["prompt"] for r in load_rows(str(path), "grpo", limit=3)] == ["q0", "q1", "q2"]
    empty = _jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataFormatError, match=r"empty\.jsonl: no rows \(expected prompt columns\)"):
        load_rows(str(empty), "grpo")
    with pytest.raises(ConfigError, match="trainer.type must be one of"):
        load_rows(str(path), "ppo")


def test_sources_resolve_to_builtin_file_or_hub(tmp_path, monkeypatch):
    folder = tmp_path / "datasets"
    folder.mkdir()
    _jsonl(folder / "toy_sft.jsonl", [{"text": "hello"}])
    monkeypatch.setattr(train_data, "builtin_folder", lambda: folder)
    assert builtin_datasets() == ["toy_sft"]
    assert resolve_source("toy_sft").kind == "builtin"
    assert load_rows("toy_sft", "sft") == [{"text": "hello"}]
    assert resolve_source(str(folder / "toy_sft.jsonl")).kind == "file"
    assert resolve_source("someone/some-dataset").kind == "hub"
    with pytest.raises(DataFormatError, match=r"missing\.jsonl does not exist"):
        resolve_source(str(tmp_path / "missing.jsonl"))
    other = tmp_path / "rows.csv"
    other.write_text("text\nhello\n")
    with pytest.raises(DataFormatError, match=r"rows\.csv is not a \.json, \.jsonl or \.parquet file"):
        resolve_source(str(other))


def test_uncached_hub_dataset_names_the_offline_alternatives(tmp_path, monkeypatch):
    monkeypatch.setattr(train_data, "builtin_folder", lambda: tmp_path / "none")
    with pytest.raises(DataFormatError, match=r"'no-such-user-xyz/no-such-set' is not a built-in dataset \(none "
                                              r"installed\).*not a Hugging Face dataset in the local cache"):
        load_rows("no-such-user-xyz/no-such-set", "sft")


@pytest.mark.parametrize("name, trainer_type", [("desperate_sft", "sft"), ("calm_dpo", "dpo"),
                                                ("grpo_prompts", "grpo")])
def test_shipped_builtin_datasets_load_for_their_trainer(name, trainer_type):
    if name not in builtin_datasets():
        pytest.skip(f"built-in dataset {name!r} is not in emoreg/data/datasets/ yet")
    rows = load_rows(name, trainer_type)
    assert len(rows) >= 8
