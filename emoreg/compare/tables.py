"""The comparison table: one row per model, headline metrics per suite and the shift along target emotions.

:func:`build_comparison` turns each model's eval output (results dict + records, see the runner's
``results.json``/``records.jsonl``) into one JSON-able comparison: rows of ``{"value", "ci", "n"}`` cells for
the headline metrics (:data:`HEADLINE_METRICS`, plus the concealment readings for every target emotion), the
fine-tuning shift of each checkpoint against the first model (the base, :mod:`emoreg.compare.shift`) for every
emotion, and how each checkpoint was made (its emoreg config, or ``"no emoreg"``). :func:`to_markdown` and
:func:`to_csv` render it; :func:`to_json` gives everything with NaN as ``null``.

Target emotions (the shift columns) are, in order of preference: the ones given, the emotions the checkpoints'
emoreg configs regularised, or the ``top_k`` emotions with the largest absolute shift at the start of the
assistant turn over all checkpoints.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from emoreg.compare.shift import PROBES_SUITE, ShiftReport, compute_shift, neutral_std, probe_records
from emoreg.errors import ConfigError
from emoreg.regularization.config import RegularizerConfig, regularized_emotions

#: Headline metrics per suite, in table order (a metric a model lacks leaves its cell empty).
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "sycophancy": ("ab_sycophancy_rate", "pushback_capitulation_rate"),
    "misalignment": ("misaligned_rate",),
    "blackmail": ("blackmail_rate",),
    "reward_hacking": ("reward_hacking_rate",),
    "capability": ("perplexity", "mc_accuracy", "kl_to_base"),
}
#: Concealment metrics shown per target emotion (``<metric>/<emotion>``).
CONCEALMENT_METRICS = ("regularised_shift", "heldout_shift", "possible_concealment",
                       "possible_concealment_other_layers", "possible_concealment_reextracted",
                       "possible_concealment_linear_probe")
CONCEALMENT_SUITE = "concealment"
FLAG_METRIC = "possible_concealment"


@dataclass
class ModelEval:
    """One model's eval output: a label for the tables, the results dict and its records."""

    label: str
    results: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""

    def suite_metrics(self, suite: str) -> dict[str, dict[str, Any]] | None:
        """The metrics of ``suite``, or None when the suite was not run."""
        entry = (self.results.get("suites") or {}).get(suite)
        if not isinstance(entry, Mapping):
            return None
        return dict(entry.get("metrics") or {})


@dataclass
class Column:
    """One metric column: ``key`` is ``<suite>/<metric>`` or ``shift/<emotion>``."""

    key: str
    suite: str
    metric: str
    label: str

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "suite": self.suite, "metric": self.metric, "label": self.label}


NO_EMOREG = "no emoreg"


#: Fields of a rule that :func:`describe_training` reports for every emotion (plus the emotion's own overrides).
_RULE_SUMMARY_FIELDS = ("mode", "kind", "units", "steer_coef", "ablate_to", "band_k", "weight")


def _rule_summaries(config: RegularizerConfig) -> dict[str, dict[str, Any]]:
    """``{emotion: {"mode", "kind", "units", "steer_coef", "ablate_to", "band_k", "weight", overrides...}}``."""
    summaries = {}
    for rule in config.rules():
        spec = config.emotions[rule.emotion]
        keys = dict.fromkeys([*_RULE_SUMMARY_FIELDS, *(spec if isinstance(spec, Mapping) else ())])
        summaries[str(rule.emotion)] = {key: _plain_value(getattr(rule, key)) for key in keys}
    return summaries


def _plain_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def describe_rule(emotion: str, rule: Mapping[str, Any]) -> str:
    """One emotion's treatment in a few words, e.g. ``desperate: penalty/hinge w=1``."""
    mode = rule.get("mode") or "penalty"
    if mode == "penalty":
        return f"{emotion}: penalty/{rule.get('kind') or 'square'} w={_num(rule.get('weight'))}"
    if mode == "steer":
        return f"{emotion}: steer c={_num(rule.get('steer_coef'))}"
    if mode == "ablate":
        return f"{emotion}: ablate to {rule.get('ablate_to') or 'mean'}"
    return f"{emotion}: {mode}"


def describe_training(model_info: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON-able summary of how the model was made.

    Returns ``{"emoreg": bool, "summary": str, "emotions": {emotion: rule}, "modes": [...], "coef", "layers",
    "train_base": base model ref or None, "trainer": trainer type or None}``; ``summary`` is ``"no emoreg"``
    (plus the training base when known) for a model trained without the regulariser or not trained here.
    """
    model_info = model_info or {}
    train_info = model_info.get("train_info") if isinstance(model_info.get("train_info"), Mapping) else {}
    train_base = train_info.get("base_model") if train_info else None
    recipe = train_info.get("recipe") if train_info else None
    trainer = None
    if isinstance(recipe, Mapping) and isinstance(recipe.get("trainer"), Mapping):
        trainer = recipe["trainer"].get("type")
    config = RegularizerConfig.from_saved(model_info)
    info: dict[str, Any] = {"emoreg": config is not None, "emotions": {}, "modes": [], "coef": None, "layers": None,
                            "train_base": train_base, "trainer": trainer}
    tail = []
    if trainer:
        tail.append(f"trainer {trainer}")
    if train_base:
        tail.append(f"trained from {train_base}")
    if config is None:
        info["summary"] = "; ".join([NO_EMOREG, *tail])
        return info
    rules = _rule_summaries(config)
    saved = model_info.get("emoreg_config") if isinstance(model_info.get("emoreg_config"), Mapping) else {}
    layers = saved.get("layers") or config.layers
    info.update(emotions=rules, modes=sorted({str(r.get("mode")) for r in rules.values()}), coef=config.coef,
                layers=list(layers) if layers else None)
    penalized = any((r.get("mode") or "penalty") == "penalty" for r in rules.values())
    parts = [", ".join(describe_rule(e, r) for e, r in rules.items()),
             *([f"coef {_num(config.coef)}"] if penalized else []),  # coef only scales penalties
             f"layers {', '.join(str(layer) for layer in layers)}" if layers else "bundle default layer"]
    info["summary"] = "; ".join(["emoreg " + parts[0], *parts[1:], *tail])
    return info


def _num(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return "?" if value is None else str(value)


def build_comparison(models: Sequence[ModelEval], *, vectors: Any = None, target_emotions: Sequence[str] | None = None,
                     headline: Mapping[str, Sequence[str]] | None = None, top_k: int = 5) -> dict[str, Any]:
    """Compare models; the first is the base every other one is shifted against.

    Args:
        models: the base first, then the checkpoints; labels must be unique.
        vectors: the emotion-vector bundle the probes used (z units for shifts); ``None`` gives raw units.
        target_emotions: emotions for the shift columns (default: see the module docstring).
        headline: ``{suite: [metric, ...]}`` replacing :data:`HEADLINE_METRICS`.
        top_k: how many emotions to show when chosen by largest shift.

    Returns:
        A JSON-able dict: ``models`` (label, ref, role, training), ``columns``, ``rows`` (``{"label", "cells":
        {key: metric or None}}``), ``shifts`` (``{label: ShiftReport dict}``, every emotion), ``shift_units``,
        ``target_emotions`` and ``target_source``, ``metrics`` (every metric of every suite per model),
        ``suites`` (which models ran each suite) and ``notes`` (what was skipped and why).
    """
    if not models:
        raise ConfigError("compare needs at least one model (the base)")
    labels = [m.label for m in models]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"model labels must be unique, got {duplicates} more than once")
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    notes: list[str] = []
    shifts, units = _shifts(models, vectors, notes)
    targets, target_source = _targets(models, shifts, units, target_emotions, top_k)
    columns = _metric_columns(models, headline or HEADLINE_METRICS)
    columns += [Column(f"shift/{e}", PROBES_SUITE, e, f"shift {e} ({units})") for e in targets] if shifts else []
    rows = []
    for model in models:
        cells: dict[str, dict[str, Any] | None] = {}
        for column in columns:
            if column.key.startswith("shift/"):
                report = shifts.get(model.label)
                cells[column.key] = report.metric(column.metric, "start", units) if report else None
            else:
                cells[column.key] = (model.suite_metrics(column.suite) or {}).get(column.metric)
        rows.append({"label": model.label, "cells": cells})
    suites_run = _suites_run(models)
    for suite in list(dict.fromkeys([*(headline or HEADLINE_METRICS), CONCEALMENT_SUITE, PROBES_SUITE])):
        missing = [m.label for m in models if suite not in suites_run.get(m.label, [])]
        if suite == CONCEALMENT_SUITE:
            missing = missing[1:] if missing and missing[0] == models[0].label else missing
        if missing:
            notes.append(f"suite '{suite}' was not run for: {', '.join(missing)}")
    return {
        "models": [_model_entry(m, i) for i, m in enumerate(models)],
        "columns": [c.to_dict() for c in columns],
        "rows": rows,
        "shifts": {label: report.to_dict() for label, report in shifts.items()},
        "shift_units": units if shifts else None,
        "target_emotions": targets,
        "target_source": target_source,
        "metrics": {m.label: {s: m.suite_metrics(s) for s in suites_run.get(m.label, [])} for m in models},
        "suites": suites_run,
        "notes": notes,
    }


def cell_text(metric: Mapping[str, Any] | None, metric_name: str = "") -> str:
    """``value ± CI half-width (n=N)``; ``—`` for a missing cell; ``yes``/``no`` for the concealment flag
    (``metric_name`` ``possible_concealment[_<reading>]`` or ``possible_concealment[_<reading>]/<emotion>``)."""
    if metric is None:
        return "—"
    value = _float(metric.get("value"))
    if metric_name.split("/", 1)[0].startswith(FLAG_METRIC):
        return "—" if value is None else ("yes" if value >= 0.5 else "no")
    if value is None:
        return f"n/a (n={metric.get('n', 0)})"
    ci = metric.get("ci") or [None, None]
    low, high = _float(ci[0]), _float(ci[1])
    text = _fmt(value)
    if low is not None and high is not None:
        text += f" ± {_fmt((high - low) / 2)}"
    return f"{text} (n={metric.get('n', '?')})"


def to_markdown(comparison: Mapping[str, Any]) -> str:
    """The comparison as Markdown: the main table, how each model was made, per-emotion shifts and notes."""
    columns = comparison["columns"]
    lines = ["# Checkpoint comparison", ""]
    header = ["model", *[c["label"] for c in columns]]
    lines += [_md_row(header), _md_row(["---"] * len(header))]
    for row in comparison["rows"]:
        lines.append(_md_row([row["label"], *[cell_text(row["cells"][c["key"]], c["metric"]) for c in columns]]))
    lines += ["", "## How each model was made", ""]
    lines += [f"- **{m['label']}** ({m['ref']}): {m['training']['summary']}" for m in comparison["models"]]
    if comparison["shifts"]:
        units = comparison["shift_units"]
        lines += ["", f"## Shift against {comparison['models'][0]['label']} per emotion ({units} units)", "",
                  ("Mean over paired probe scenarios of checkpoint minus base projection: at the start of the "
                   "assistant turn (`start`) and over the reply (`response`)."), ""]
        labels = list(comparison["shifts"])
        header = ["emotion", *[f"{label} {reading}" for label in labels for reading in ("start", "response")]]
        lines += [_md_row(header), _md_row(["---"] * len(header))]
        first = comparison["shifts"][labels[0]]
        for emotion in first["emotions"]:
            cells = [_shift_cell(comparison["shifts"][label], reading, emotion, units)
                     for label in labels for reading in ("start", "response")]
            lines.append(_md_row([emotion, *cells]))
        for label, shift in comparison["shifts"].items():
            for text, ids in unpaired_notes(shift):
                lines.append(f"\n{label}: {len(ids)} probe scenarios {text}: {', '.join(ids)}")
    if comparison.get("plots"):
        lines += ["", "## Plots", ""]
        for name, entry in comparison["plots"].items():
            lines.append(f"- {name}: " + ("written" if entry.get("written") else f"skipped ({entry.get('skipped')})"))
            lines += [f"  - panel skipped: {reason}" for reason in entry.get("panels_skipped") or []]
    if comparison["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in comparison["notes"]]
    return "\n".join(lines) + "\n"


def unpaired_notes(shift: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(what happened, ids) for scenarios a shift could not use: found in one run only, or without reply tokens."""
    found = [("only in the base run, not paired", shift["only_in_base"]),
             ("only in the checkpoint run, not paired", shift["only_in_checkpoint"]),
             ("without reply tokens, left out of the reply reading", shift["readings"]["response"]["no_response"])]
    return [(text, list(ids)) for text, ids in found if ids]


def to_csv(comparison: Mapping[str, Any]) -> str:
    """One row per model: label, ref, role, how it was made, then per metric column its value, ci_low, ci_high, n."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = [c["key"] for c in comparison["columns"]]
    writer.writerow(["model", "ref", "role", "how_made",
                     *[f"{key}.{part}" for key in keys for part in ("value", "ci_low", "ci_high", "n")]])
    for model, row in zip(comparison["models"], comparison["rows"]):
        values: list[Any] = [row["label"], model["ref"], model["role"], model["training"]["summary"]]
        for key in keys:
            metric = row["cells"][key]
            if metric is None:
                values += ["", "", "", ""]
                continue
            ci = metric.get("ci") or [None, None]
            values += [_csv_number(metric.get("value")), _csv_number(ci[0]), _csv_number(ci[1]), metric.get("n", "")]
        writer.writerow(values)
    return buffer.getvalue()


def to_json(comparison: Mapping[str, Any]) -> dict[str, Any]:
    """The comparison with every NaN or infinity replaced by ``None`` (strict JSON)."""
    return json_safe(comparison)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` and tuples as lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _shifts(models: Sequence[ModelEval], vectors: Any, notes: list[str]) -> tuple[dict[str, ShiftReport], str]:
    base = models[0]
    if len(models) < 2:
        return {}, "raw"
    if not probe_records(base.records, source=base.source or base.label):
        notes.append(f"no probes records for the base ({base.label}): shifts along the emotion vectors skipped")
        return {}, "raw"
    std = None
    if vectors is not None:
        layer = int(next(iter(probe_records(base.records).values()))["layer"])
        std = neutral_std(vectors, layer)
    else:
        notes.append("no vector bundle statistics available: shifts are in raw projection units, not z units")
    shifts = {}
    for model in models[1:]:
        if not probe_records(model.records, source=model.source or model.label):
            notes.append(f"no probes records for {model.label}: its shift is not shown")
            continue
        shifts[model.label] = compute_shift(base.records, model.records, std=std,
                                            base_source=base.source or base.label,
                                            checkpoint_source=model.source or model.label)
    return shifts, "z" if std is not None else "raw"


def _targets(models: Sequence[ModelEval], shifts: Mapping[str, ShiftReport], units: str,
             given: Sequence[str] | None, top_k: int) -> tuple[list[str], str]:
    if given:
        return list(dict.fromkeys(given)), "given"
    regularized: list[str] = []
    for model in models[1:]:
        regularized += regularized_emotions(model.results.get("model"))
    if regularized:
        return list(dict.fromkeys(regularized)), "emoreg_config"
    if not shifts:
        return [], "none"
    largest: dict[str, float] = {}
    for report in shifts.values():
        for emotion in report.emotions:
            value = _float((report.metric(emotion, "start", units) or {}).get("value"))
            if value is not None:
                largest[emotion] = max(largest.get(emotion, 0.0), abs(value))
    order = sorted(largest, key=lambda e: (-largest[e], e))
    return order[:top_k], "largest_shift"


def _metric_columns(models: Sequence[ModelEval], headline: Mapping[str, Sequence[str]]) -> list[Column]:
    """Headline columns some model has, then concealment readings for every emotion any model reports."""
    columns = []
    for suite, metrics in headline.items():
        for metric in metrics:
            if any(metric in (m.suite_metrics(suite) or {}) for m in models):
                columns.append(Column(f"{suite}/{metric}", suite, metric, f"{suite} {metric}"))
    emotions: list[str] = []
    for model in models:
        for name in model.suite_metrics(CONCEALMENT_SUITE) or {}:
            prefix, _, emotion = name.partition("/")
            if prefix == FLAG_METRIC and emotion:
                emotions.append(emotion)
    for emotion in dict.fromkeys(emotions):
        for metric in CONCEALMENT_METRICS:
            name = f"{metric}/{emotion}"
            if any(name in (m.suite_metrics(CONCEALMENT_SUITE) or {}) for m in models):
                columns.append(Column(f"{CONCEALMENT_SUITE}/{name}", CONCEALMENT_SUITE, name,
                                      f"{metric.replace('_', ' ')} {emotion}"))
    return columns


def _suites_run(models: Sequence[ModelEval]) -> dict[str, list[str]]:
    return {m.label: [s for s in (m.results.get("suites") or {}) if m.suite_metrics(s) is not None] for m in models}


def _model_entry(model: ModelEval, index: int) -> dict[str, Any]:
    info = model.results.get("model") or {}
    return {"label": model.label, "ref": str(info.get("ref", model.source or model.label)),
            "role": "base" if index == 0 else "checkpoint", "source": model.source,
            "training": describe_training(info)}


def _shift_cell(shift: Mapping[str, Any], reading: str, emotion: str, units: str) -> str:
    table = shift["readings"][reading][units]
    return cell_text(table.get(emotion) if table else None)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _csv_number(value: Any) -> str:
    number = _float(value)
    return "" if number is None else repr(number)
