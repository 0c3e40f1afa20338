"""Build the whole comparison report from eval outputs: tables, plots and the HTML page.

An eval output directory (written by ``emoreg eval`` / :func:`emoreg.evals.runner.evaluate_model`) holds
``results.json`` and ``records.jsonl``, read with :mod:`emoreg.evals.outputs`. :func:`write_report` writes into
its ``out_dir``: ``comparison.md``, ``comparison.csv``, ``comparison.json``, the plots that have data
(``shift.png``, ``failure_rates.png``, ``capability.png``, ``concealment.png``) and ``report.html``. Every file
is written atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emoreg.compare.html import render_html
from emoreg.compare.plots import PLOT_FILES, write_plots
from emoreg.compare.shift import probe_records
from emoreg.compare.tables import ModelEval, build_comparison, to_csv, to_json, to_markdown
from emoreg.errors import BundleError
from emoreg.evals.outputs import RECORDS_FILE, load_outputs
from emoreg.utils.atomic import atomic_file

logger = logging.getLogger(__name__)

REPORT_FILES = ("comparison.md", "comparison.csv", "comparison.json", "report.html")


def load_eval_dir(path: str | Path, label: str | None = None) -> ModelEval:
    """One model's eval output directory as a :class:`ModelEval` (label defaults to the directory name)."""
    path = Path(path)
    results, records = load_outputs(path)
    return ModelEval(label=label or path.resolve().name, results=results, records=records,
                     source=str(path / RECORDS_FILE))


def resolve_vectors(models: Sequence[ModelEval], vectors: Any = None) -> tuple[Any, str | None]:
    """The bundle for z-unit shifts: ``vectors`` itself, a ref/path to load, or the base results' ``vectors.ref``.

    Returns ``(EmotionVectors or None, note or None)``; a bundle that cannot be loaded gives None and a note, so
    the report falls back to raw units instead of failing.
    """
    from emoreg.vectors.bundle import EmotionVectors

    if isinstance(vectors, EmotionVectors):
        return vectors, None
    if not models or not probe_records(models[0].records):
        return None, None
    ref = vectors
    if ref is None:
        info = models[0].results.get("vectors")
        ref = info.get("ref") if isinstance(info, dict) else None
    if ref is None:
        return None, "the base results name no vector bundle: shifts are in raw units"
    try:
        return EmotionVectors.from_pretrained(ref), None
    except BundleError as exc:
        logger.warning("cannot load the vector bundle %r for z units: %s", ref, exc)
        return None, f"cannot load the vector bundle {ref!r} ({exc}): shifts are in raw units"


def write_report(models: Sequence[ModelEval], out_dir: str | Path, *, vectors: Any = None,
                 target_emotions: Sequence[str] | None = None, top_k: int = 5,
                 title: str = "emoreg checkpoint comparison") -> dict[str, Any]:
    """Compare ``models`` (the base first) and write tables, plots and ``report.html`` into ``out_dir``.

    Args:
        vectors: an ``EmotionVectors``, a bundle ref/path, or None to load the base results' ``vectors.ref``.
        target_emotions, top_k: see :func:`emoreg.compare.tables.build_comparison`.

    Returns:
        ``{"comparison": the comparison dict, "plots": write_plots' answer, "files": {name: path}}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle, note = resolve_vectors(models, vectors)
    comparison = build_comparison(models, vectors=bundle, target_emotions=target_emotions, top_k=top_k)
    if note:
        comparison["notes"].insert(0, note)
    for stale in PLOT_FILES:  # a plot from an earlier run must not pass for this one's
        (out_dir / stale).unlink(missing_ok=True)
    plots = write_plots(comparison, out_dir)
    comparison["plots"] = {name: {k: v for k, v in entry.items() if k != "path"} | {"written": bool(entry["path"])}
                           for name, entry in plots.items()}
    files = {"comparison.md": out_dir / "comparison.md", "comparison.csv": out_dir / "comparison.csv",
             "comparison.json": out_dir / "comparison.json", "report.html": out_dir / "report.html"}
    with atomic_file(files["comparison.md"]) as handle:
        handle.write(to_markdown(comparison))
    with atomic_file(files["comparison.csv"]) as handle:
        handle.write(to_csv(comparison))
    with atomic_file(files["comparison.json"]) as handle:
        json.dump(to_json(comparison), handle, indent=2, allow_nan=False)
        handle.write("\n")
    with atomic_file(files["report.html"]) as handle:
        handle.write(render_html(comparison, plots, title=title))
    written = {name: str(path) for name, path in files.items()}
    written.update({name: entry["path"] for name, entry in plots.items() if entry["path"]})
    return {"comparison": comparison, "plots": plots, "files": written}
