"""Checkpoint provenance files: their layout on disk, atomic writes, and reading errors that name file and field."""

from __future__ import annotations

import json

import pytest

from emoreg.errors import ModelLoadError
from emoreg.models.provenance import (
    CONFIG_FILE,
    STATE_FILE,
    TRAIN_INFO_FILE,
    CheckpointProvenance,
    read_config,
    read_provenance,
    read_state,
    read_train_info,
    write_config,
    write_state,
    write_train_info,
)


def test_file_names():
    assert (TRAIN_INFO_FILE, CONFIG_FILE, STATE_FILE) == ("emoreg_train.json", "emoreg_config.json",
                                                          "emoreg_state.json")


def test_writes_indented_json_with_a_final_newline_and_reads_it_back(tmp_path):
    directory = tmp_path / "run" / "checkpoint-2"  # created by the first write
    info = {"base_model": "default", "recipe": {"seed": 0}, "path": tmp_path}
    assert write_train_info(directory, info) == directory / TRAIN_INFO_FILE
    assert (directory / TRAIN_INFO_FILE).read_text() == json.dumps(info, indent=2, default=str) + "\n"
    config = {"library_version": "x", "config": {"emotions": {"calm": 1.0}}, "layers": [3], "vectors": None}
    write_config(directory, config)
    assert (directory / CONFIG_FILE).read_text() == json.dumps(config, indent=2) + "\n"
    state = {"regularizer": {"step": 2}, "library_version": "x"}
    write_state(directory, state)
    assert (directory / STATE_FILE).read_text() == json.dumps(state, indent=2) + "\n"
    assert sorted(p.name for p in directory.iterdir()) == sorted([TRAIN_INFO_FILE, CONFIG_FILE, STATE_FILE])

    assert read_train_info(directory)["path"] == str(tmp_path)
    assert read_config(directory) == config and read_state(directory) == state
    provenance = read_provenance(directory)
    assert provenance == CheckpointProvenance(train_info=read_train_info(directory), emoreg_config=config)
    assert provenance.base_model == "default"


def test_absent_files_read_as_none(tmp_path):
    assert read_provenance(tmp_path) == CheckpointProvenance()
    assert read_provenance(tmp_path).base_model is None and read_state(tmp_path) is None


def test_a_failed_write_leaves_the_old_file(tmp_path):
    write_state(tmp_path, {"regularizer": {"step": 1}})
    with pytest.raises(TypeError):
        write_state(tmp_path, {"regularizer": {"step": object()}})
    assert read_state(tmp_path) == {"regularizer": {"step": 1}}
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]


@pytest.mark.parametrize(("name", "text", "message"), [
    (TRAIN_INFO_FILE, "{not json", r"emoreg_train\.json: not valid JSON \(.*line 1\)"),
    (CONFIG_FILE, "[1, 2]", r"emoreg_config\.json: expected a JSON object, got list"),
    (STATE_FILE, b"\xff\xfe", r"emoreg_state\.json: not valid JSON \(not UTF-8\)"),
    (TRAIN_INFO_FILE, '{"base_model": 3}', r"emoreg_train\.json: field 'base_model' must be a model reference"),
    (CONFIG_FILE, '{"config": "calm"}', r"emoreg_config\.json: field 'config' must be a JSON object"),
    (STATE_FILE, '{"regularizer": []}', r"emoreg_state\.json: field 'regularizer' must be a JSON object"),
])
def test_bad_files_are_one_line_errors_naming_file_and_field(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    reader = {TRAIN_INFO_FILE: read_train_info, CONFIG_FILE: read_config, STATE_FILE: read_state}[name]
    with pytest.raises(ModelLoadError, match=message) as caught:
        reader(tmp_path)
    assert "\n" not in str(caught.value)
