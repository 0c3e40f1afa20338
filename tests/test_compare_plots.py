"""Comparison plots: written as non-empty PNGs when there is data, skipped with a reason when not."""

from __future__ import annotations

import math
from pathlib import Path

from emoreg.compare.plots import write_plots
from emoreg.compare.tables import build_comparison
from tests.test_compare_tables import make_eval, three_models

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = Path(path).read_bytes()
    return data.startswith(PNG_MAGIC) and len(data) > 2000


def test_all_plots_written(tmp_path):
    plots = write_plots(build_comparison(three_models()), tmp_path)
    assert set(plots) == {"shift.png", "failure_rates.png", "capability.png", "concealment.png"}
    for name, entry in plots.items():
        assert entry["skipped"] is None, name
        assert entry["path"] == str(tmp_path / name) and _is_png(entry["path"])
    assert plots["failure_rates.png"]["panels_skipped"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(plots)  # no temporary files left


def test_missing_suites_skip_plots_and_panels(tmp_path):
    base = make_eval("base", probes=False, suites=("capability",), perplexity=None)
    ckpt = make_eval("ckpt", probes=False, suites=("capability",), kl=0.3, perplexity=None)
    plots = write_plots(build_comparison([base, ckpt]), tmp_path)
    assert plots["shift.png"]["path"] is None and "probes" in plots["shift.png"]["skipped"]
    assert plots["failure_rates.png"]["path"] is None
    assert "no model has blackmail/blackmail_rate" in plots["failure_rates.png"]["skipped"]
    assert plots["failure_rates.png"]["panels_skipped"] == []
    assert plots["concealment.png"]["path"] is None and "concealment" in plots["concealment.png"]["skipped"]
    capability = plots["capability.png"]
    assert _is_png(capability["path"])
    assert capability["panels_skipped"] == ["perplexity (held-out text): no model has capability/perplexity"]
    assert not (tmp_path / "shift.png").exists()


def test_nan_values_and_intervals_do_not_break_plots(tmp_path):
    models = three_models()
    metrics = models[1].results["suites"]["blackmail"]["metrics"]
    metrics["blackmail_rate"] = {"value": math.nan, "ci": [math.nan, math.nan], "n": 0}
    models[1].results["suites"]["capability"]["metrics"]["perplexity"]["ci"] = [math.nan, math.nan]
    plots = write_plots(build_comparison(models), tmp_path)
    assert _is_png(plots["failure_rates.png"]["path"]) and _is_png(plots["capability.png"]["path"])
