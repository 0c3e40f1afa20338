"""``emoreg compare``: the --from-evals path on synthetic eval dirs, and the full path with evaluate_model faked."""

from __future__ import annotations

import json
import sys
import types

import pytest

import emoreg.evals.suites as suites_package
from emoreg.cli.common import parse_data_specs as parse_data
from emoreg.cli.compare import unique_labels
from emoreg.cli.main import main
from emoreg.errors import ConfigError
from tests.test_compare_report import write_eval_dir
from tests.test_compare_tables import EMOREG_CONFIG, make_probe_records, make_results, three_models


def test_from_evals_builds_the_report(tmp_path, capsys):
    dirs = [str(write_eval_dir(tmp_path / "evals" / m.label, m)) for m in three_models()]
    out = tmp_path / "report"
    assert main(["compare", "--from-evals", *dirs, "--out", str(out), "--target-emotions", "hostile,desperate"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'report.html'}" in printed and "| plain |" in printed
    data = json.loads((out / "comparison.json").read_text())
    assert [m["label"] for m in data["models"]] == ["base", "plain", "emoreg"]
    assert data["target_emotions"] == ["hostile", "desperate"]
    assert data["shift_units"] == "z"  # from the base results' vectors ref ("default")
    html = (out / "report.html").read_text()
    assert 'src="http' not in html and html.count("data:image/png;base64,") == 4
    assert (out / "comparison.csv").read_text().splitlines()[0].startswith("model,ref,role,how_made,")


def test_from_evals_labels_and_errors(tmp_path, capsys):
    models = three_models()[:2]
    dirs = [str(write_eval_dir(tmp_path / name, m)) for name, m in zip(("a", "b"), models)]
    assert main(["compare", "--from-evals", *dirs, "--labels", "before,after", "--out", str(tmp_path / "o")]) == 0
    assert "| after |" in (tmp_path / "o" / "comparison.md").read_text()
    assert main(["compare", "--from-evals", *dirs, "--labels", "one", "--out", str(tmp_path / "o")]) == 2
    assert "--labels: expected 2 labels" in capsys.readouterr().err
    assert main(["compare", "default", "--from-evals", *dirs, "--out", str(tmp_path / "o")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["compare", "--from-evals", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such eval output directory" in capsys.readouterr().err
    assert main(["compare", "default", "--out", str(tmp_path / "o")]) == 2
    assert "at least one checkpoint" in capsys.readouterr().err


@pytest.fixture
def fake_runner(monkeypatch):
    """Replace emoreg.evals.runner with a module whose evaluate_model records its calls and writes outputs."""
    calls = []

    def evaluate_model(model, **kwargs):
        calls.append({"model": model, **kwargs})
        is_base = kwargs["base"] == "none"
        offsets = {} if is_base else {"desperate": 2.0}
        results = make_results(model, emoreg_config=None if is_base else EMOREG_CONFIG)
        out_dir = kwargs["out_dir"]
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results))
        (out_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_probe_records(offsets)))
        return results

    module = types.ModuleType("emoreg.evals.runner")
    module.evaluate_model = evaluate_model
    monkeypatch.setitem(sys.modules, "emoreg.evals.runner", module)
    return calls


def test_full_path_calls_evaluate_model(tmp_path, fake_runner):
    base = "default"
    ckpt1, ckpt2 = tmp_path / "runs" / "checkpoint-8", tmp_path / "other" / "checkpoint-8"
    ckpt1.mkdir(parents=True)
    ckpt2.mkdir(parents=True)
    out = tmp_path / "cmp"
    code = main(["compare", base, str(ckpt1), str(ckpt2), "--out", str(out),
                 "--suites", "probes,capability,concealment",
                 "--limit", "5", "--seed", "3", "--judge", "hf:judge", "--data", "probes=p.jsonl",
                 "--data", "capability.multiple_choice=mc.jsonl", "--batch-size", "2", "--max-new-tokens", "16",
                 "--cache-dir", str(tmp_path / "cache"), "--dtype", "bfloat16", "--device", "cpu"])
    assert code == 0
    assert [c["model"] for c in fake_runner] == [base, str(ckpt1), str(ckpt2)]
    assert [c["out_dir"] for c in fake_runner] == [out / "evals" / "base", out / "evals" / "checkpoint-8",
                                                  out / "evals" / "checkpoint-8-2"]
    assert fake_runner[0]["base"] == "none" and fake_runner[1]["base"] == base and fake_runner[2]["base"] == base
    assert fake_runner[0]["suites"] == ["probes", "capability"]  # concealment needs a base to compare with
    assert fake_runner[1]["suites"] == ["probes", "capability", "concealment"]
    for call in fake_runner:
        assert call["vectors"] == "default" and call["limit"] == 5 and call["seed"] == 3
        assert call["judge"] == "hf:judge" and call["batch_size"] == 2 and call["max_new_tokens"] == 16
        assert call["data"] == {"probes": "p.jsonl", "capability.multiple_choice": "mc.jsonl"}
        assert call["cache_dir"] == str(tmp_path / "cache") and call["dtype"] == "bfloat16" and call["device"] == "cpu"
    data = json.loads((out / "comparison.json").read_text())
    assert [m["label"] for m in data["models"]] == ["base", "checkpoint-8", "checkpoint-8-2"]
    assert data["target_emotions"] == ["desperate", "calm"]  # from the checkpoints' emoreg config
    assert (out / "report.html").is_file()


def test_full_path_all_suites_from_the_registry(tmp_path, fake_runner, monkeypatch):
    monkeypatch.setattr(suites_package, "SUITE_NAMES", ("probes", "concealment", "capability"), raising=False)
    assert main(["compare", "default", "default", "--out", str(tmp_path / "o")]) == 0
    assert fake_runner[0]["suites"] == ["probes", "capability"]
    assert fake_runner[1]["suites"] == ["probes", "concealment", "capability"]
    assert [c["out_dir"].name for c in fake_runner] == ["base", "default"]
    assert fake_runner[0]["data"] is None and fake_runner[0]["limit"] is None


def test_bad_numbers_fail_before_any_evaluation(tmp_path, fake_runner, capsys):
    assert main(["compare", "default", "x", "--out", str(tmp_path), "--suites", "probes", "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err and fake_runner == []


def test_parse_data_and_labels():
    assert parse_data(["a=x.jsonl", "b.part=y=z.jsonl"]) == {"a": "x.jsonl", "b.part": "y=z.jsonl"}
    for bad in (["a"], ["=x"], ["a="]):
        with pytest.raises(ConfigError, match="--data: expected SUITE=PATH"):
            parse_data(bad)
    with pytest.raises(ConfigError, match="given twice"):
        parse_data(["a=x", "a=y"])
    assert unique_labels(["base", "base", "ckpt", "ckpt", "base-2"]) == ["base", "base-2", "ckpt", "ckpt-2",
                                                                          "base-2-2"]
