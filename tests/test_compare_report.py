"""The whole report: eval dirs in, tables, plots and a self-contained HTML page out."""

from __future__ import annotations

import base64
import json
import re

import pytest
import torch

from emoreg.compare.html import HOW_TO_READ, render_html
from emoreg.compare.report import load_eval_dir, resolve_vectors, write_report
from emoreg.compare.tables import build_comparison
from emoreg.errors import DataFormatError
from emoreg.evals.outputs import load_records, load_results
from emoreg.vectors.bundle import EmotionVectors
from tests.test_compare_tables import EMOTIONS, make_eval, three_models


def write_eval_dir(path, model):
    """An eval output dir as the runner writes it: results.json and records.jsonl."""
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(model.results))
    (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in model.records))
    return path


def small_bundle(tmp_path):
    vectors = EmotionVectors.from_tensors(torch.randn(1, len(EMOTIONS), 8), list(EMOTIONS), [3], default_layer=3,
                                          stats_mean=torch.zeros(1, len(EMOTIONS)),
                                          stats_std=torch.full((1, len(EMOTIONS)), 2.0))
    return vectors.save_pretrained(tmp_path / "bundle")


def test_write_report_from_eval_dirs(tmp_path):
    bundle = small_bundle(tmp_path)
    dirs = []
    for model in three_models():
        model.results["vectors"]["ref"] = str(bundle)
        dirs.append(write_eval_dir(tmp_path / "evals" / model.label, model))
    models = [load_eval_dir(d) for d in dirs]
    assert [m.label for m in models] == ["base", "plain", "emoreg"]
    out = tmp_path / "report"
    report = write_report(models, out)
    for name in ("comparison.md", "comparison.csv", "comparison.json", "report.html", "shift.png",
                 "failure_rates.png", "capability.png", "concealment.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    data = json.loads((out / "comparison.json").read_text())
    assert data["shift_units"] == "z"  # the bundle named in the base's results was loaded
    assert data["rows"][1]["cells"]["shift/desperate"]["value"] == pytest.approx(3.0 / 2.0)
    assert data["plots"]["shift.png"]["written"] is True
    html = (out / "report.html").read_text()
    assert 'src="http' not in html and "<script" not in html and "<link" not in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert '<td class="flag">yes</td>' in html and "Possible concealment" in html
    assert "emoreg: desperate" in html.replace("emoreg desperate", "emoreg: desperate")
    for term, _ in HOW_TO_READ:
        assert term.replace("&", "&amp;") in html or term in html
    assert "letter bias" in html and "rule judge" in html and "n is small" in html
    assert set(report["files"]) >= {"report.html", "comparison.md", "shift.png"}


def test_report_with_missing_suites(tmp_path):
    base = make_eval("base", probes=False, suites=("capability",))
    ckpt = make_eval("ckpt", probes=False, suites=("capability",), kl=0.3)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "shift.png").write_bytes(b"stale")  # an earlier run's plot must not survive
    report = write_report([base, ckpt], out)
    assert not (out / "shift.png").exists() and (out / "capability.png").is_file()
    html = (out / "report.html").read_text()
    assert "<b>shift.png</b> skipped" in html and "<b>failure_rates.png</b> skipped" in html
    assert "<b>concealment.png</b> skipped" in html
    markdown = (out / "comparison.md").read_text()
    assert "- failure_rates.png: skipped (" in markdown and "- capability.png: written" in markdown
    assert "suite 'probes' was not run for: base, ckpt" in markdown
    assert report["comparison"]["shifts"] == {}


def test_html_escapes_and_has_no_external_resources():
    models = three_models()
    models[1].label = "<img src=http://x>"
    html = render_html(build_comparison(models), {})
    assert "<img src=http://x>" not in html and "&lt;img src=http://x&gt;" in html
    assert "http://" not in html.replace("&lt;img src=http://x&gt;", "")


def test_unloadable_bundle_falls_back_to_raw_units(tmp_path):
    models = three_models()
    models[0].results["vectors"]["ref"] = str(tmp_path / "missing")
    bundle, note = resolve_vectors(models)
    assert bundle is None and "cannot load the vector bundle" in note
    report = write_report(models, tmp_path / "out")
    assert report["comparison"]["shift_units"] == "raw"
    assert "cannot load the vector bundle" in report["comparison"]["notes"][0]


def test_load_errors_name_file_and_line(tmp_path):
    with pytest.raises(DataFormatError, match="no such eval output directory"):
        load_eval_dir(tmp_path / "nope")
    (tmp_path / "results.json").write_text("{\"suites\": {\"x\": {}}}")
    with pytest.raises(DataFormatError, match=r"results.json: field 'suites.x.metrics'"):
        load_results(tmp_path / "results.json")
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="results.json: line 1: not valid JSON"):
        load_results(tmp_path / "results.json")
    (tmp_path / "records.jsonl").write_text('{"id": "a", "suite": "probes"}\n\n{"id": "b"}\n')
    with pytest.raises(DataFormatError, match="records.jsonl, line 3: missing field 'suite'"):
        load_records(tmp_path / "records.jsonl")
    (tmp_path / "records.jsonl").write_text('{"id": "a", "suite": "probes"}\n[1]\n')
    with pytest.raises(DataFormatError, match="records.jsonl, line 2: expected a JSON object"):
        load_records(tmp_path / "records.jsonl")


def test_per_reading_concealment_flags_are_columns_and_named_in_the_html(tmp_path):
    from emoreg.compare.html import render_html
    from emoreg.compare.tables import ModelEval, build_comparison

    def results(flag_probe: float) -> dict:
        flag = {"ci": [0.0, 0.0], "n": 8}
        metrics = {"regularised_shift/desperate": {"value": 0.1, "ci": [0.0, 0.2], "n": 8},
                   "heldout_shift/desperate": {"value": 0.3, "ci": [0.1, 0.5], "n": 8},
                   "possible_concealment/desperate": {**flag, "value": 0.0},
                   "possible_concealment_linear_probe/desperate": {"value": flag_probe, "ci": [flag_probe] * 2,
                                                                   "n": 8}}
        return {"model": {}, "suites": {"concealment": {"metrics": metrics}}}

    models = [ModelEval("base", results(0.0), []), ModelEval("penalty", results(1.0), [])]
    comparison = build_comparison(models)
    keys = [c["key"] for c in comparison["columns"]]
    assert "concealment/possible_concealment_linear_probe/desperate" in keys
    page = render_html(comparison, {})
    assert "penalty: desperate (linear_probe)" in page
