"""``emoreg eval``: argument handling, --list-suites, one-line errors with exit 2, a run on a tiny model."""

from __future__ import annotations

import json

import pytest

from emoreg.cli.common import parse_data_specs
from emoreg.cli.eval import default_out_dir, format_table
from emoreg.cli.main import main
from emoreg.errors import ConfigError
from emoreg.evals import suites as registry
from tests.eval_fakes import NllSuite, write_items


@pytest.fixture
def fake_probes(tmp_path, monkeypatch):
    """The registry's 'probes' entry points at the fake NLL suite (named 'probes')."""
    files = {"main": write_items(tmp_path / "data" / "main.jsonl", 4, "main"),
             "extra": write_items(tmp_path / "data" / "extra.jsonl", 2, "extra")}
    monkeypatch.setattr(NllSuite, "builtin_files", files)
    monkeypatch.setattr(NllSuite, "name", "probes")
    monkeypatch.setitem(registry._CLASSES, "probes", ("tests.eval_fakes", "NllSuite"))
    return files


def test_parse_data_specs():
    assert parse_data_specs(["probes=a.jsonl", "sycophancy.pushback=b.jsonl"]) == {
        "probes": "a.jsonl", "sycophancy.pushback": "b.jsonl"}
    for bad in (["probes"], ["=x"], ["probes="]):
        with pytest.raises(ConfigError, match="expected SUITE=PATH"):
            parse_data_specs(bad)
    with pytest.raises(ConfigError, match="given twice"):
        parse_data_specs(["probes=a", "probes=b"])


def test_default_out_dir():
    assert str(default_out_dir("default")) == "evals/default"
    assert str(default_out_dir("runs/sft/checkpoint-40/")) == "evals/checkpoint-40"
    assert str(default_out_dir("models/My Model.gguf")) == "evals/My_Model"


def test_format_table():
    table = format_table({"suites": {"probes": {"metrics": {
        "start_z/calm": {"value": 0.123456, "ci": [0.1, 0.2], "n": 80},
        "rate": {"value": float("nan"), "ci": [float("nan"), float("nan")], "n": 0}}}}})
    lines = table.splitlines()
    assert lines[0].split() == ["suite", "metric", "value", "95%", "CI", "n"]
    assert "0.1235" in lines[2] and "[0.1, 0.2]" in lines[2] and lines[2].rstrip().endswith("80")
    assert "nan" in lines[3]


def test_list_suites(capsys, fake_probes):
    assert main(["eval", "--list-suites"]) == 0
    out = capsys.readouterr().out
    assert "mean token negative log-likelihood" in out and "--data probes=PATH" in out
    assert "--data probes.extra=PATH" in out
    for name in registry.SUITE_NAMES:
        assert f"\n{name}\n" in f"\n{out}"


@pytest.mark.parametrize("argv, message", [
    (["eval"], "give the MODEL"),
    (["eval", "default", "--suites", "probs"], "did you mean 'probes'"),
    (["eval", "default", "--limit", "0"], "--limit must be positive"),
    (["eval", "default", "--data", "probes"], "expected SUITE=PATH"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("emoreg eval: error:")


def test_eval_run_writes_results_and_prints_a_table(tmp_path, capsys, fake_probes, tiny_llama, tiny_tokenizer):
    model_dir = tmp_path / "model"
    tiny_llama.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    out = tmp_path / "out"
    mine = write_items(tmp_path / "mine.jsonl", 5, "mine")
    argv = ["eval", str(model_dir), "--suites", "probes", "--limit", "3", "--out", str(out), "--cache-dir",
            str(tmp_path / "cache"), "--no-progress", "--data", f"probes.extra={mine}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mean_nll" in printed and "extra_share" in printed and str(out / "results.json") in printed
    results = json.loads((out / "results.json").read_text())
    entry = results["suites"]["probes"]
    assert entry["n_records"] == 6 and entry["data"]["extra"]["path"] == str(mine)
    assert results["model"]["ref"] == str(model_dir) and results["limit"] == 3
    assert main(argv + ["--no-cache"]) == 0
    assert json.loads((out / "results.json").read_text())["suites"]["probes"]["cache"] == "off"
