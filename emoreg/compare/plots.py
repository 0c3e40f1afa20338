"""PNG plots of a comparison (matplotlib, Agg backend: no display needed).

Each plot reads the dict built by :func:`emoreg.compare.tables.build_comparison`:

- ``shift.png``: per-emotion shift of every checkpoint against the base (grouped bars, 95% CI error bars), at the
  start of the assistant turn and over the reply;
- ``failure_rates.png``: sycophancy, misalignment, blackmail and reward-hacking rates per model;
- ``capability.png``: perplexity, multiple-choice accuracy and KL to the base per model;
- ``concealment.png``: regularised against held-out shift per target emotion per checkpoint.

A panel whose metric no model has is left out; a plot with no panel is not written. :func:`write_plots` says
which plots were written and why the others were skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emoreg.utils.atomic import atomic_file

#: Panels of failure_rates.png: (suite, metric, title).
FAILURE_PANELS = (
    ("sycophancy", "ab_sycophancy_rate", "sycophancy (A/B)"),
    ("sycophancy", "pushback_capitulation_rate", "capitulation to pushback"),
    ("misalignment", "misaligned_rate", "misaligned answers"),
    ("blackmail", "blackmail_rate", "blackmail"),
    ("reward_hacking", "reward_hacking_rate", "reward hacking"),
)
#: Panels of capability.png: (suite, metric, title).
CAPABILITY_PANELS = (
    ("capability", "perplexity", "perplexity (held-out text)"),
    ("capability", "mc_accuracy", "multiple-choice accuracy"),
    ("capability", "kl_to_base", "KL(base || model) per token"),
)
PLOT_FILES = ("shift.png", "failure_rates.png", "capability.png", "concealment.png")


def write_plots(comparison: Mapping[str, Any], out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Write every plot that has data into ``out_dir``.

    Returns ``{file name: {"path": str or None, "skipped": reason or None, "panels_skipped": [reason, ...]}}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    makers = {
        "shift.png": _shift_figure,
        "failure_rates.png": lambda c: _metric_panels(c, FAILURE_PANELS, "Failure-mode rates (95% CI)"),
        "capability.png": lambda c: _metric_panels(c, CAPABILITY_PANELS, "Capability (95% CI)"),
        "concealment.png": _concealment_figure,
    }
    written: dict[str, dict[str, Any]] = {}
    for name, maker in makers.items():
        figure, skipped_panels, reason = maker(comparison)
        entry: dict[str, Any] = {"path": None, "skipped": reason, "panels_skipped": skipped_panels}
        if figure is not None:
            path = out_dir / name
            try:
                with atomic_file(path, "wb") as handle:
                    figure.savefig(handle, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
            finally:
                _close(figure)
            entry["path"] = str(path)
        written[name] = entry
    return written


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _close(figure: Any) -> None:
    _pyplot().close(figure)


def _value(metric: Mapping[str, Any] | None) -> tuple[float, float, float] | None:
    """(value, lower error, upper error) for an error bar; errors are 0 when the CI is unknown."""
    if not metric:
        return None
    value = metric.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    ci = metric.get("ci") or [None, None]
    low, high = ci[0], ci[1]
    if not all(isinstance(b, (int, float)) and math.isfinite(b) for b in (low, high)):
        return float(value), 0.0, 0.0
    return float(value), max(0.0, value - low), max(0.0, high - value)


def _bars(axis: Any, labels: Sequence[str], series: Sequence[tuple[str, Sequence[tuple[float, float, float] | None]]],
          ylabel: str = "") -> None:
    """Grouped bars: one group per label, one bar per series, CI error bars; missing values leave a gap."""
    count = max(1, len(series))
    width = 0.8 / count
    for index, (name, values) in enumerate(series):
        xs, heights, errors = [], [], [[], []]
        for position, value in enumerate(values):
            if value is None:
                continue
            xs.append(position - 0.4 + width * (index + 0.5))
            heights.append(value[0])
            errors[0].append(value[1])
            errors[1].append(value[2])
        axis.bar(xs, heights, width=width, yerr=errors, capsize=2, label=name, color=f"C{index % 10}")
    axis.set_xticks(range(len(labels)))
    axis.set_xticklabels(labels, rotation=60 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    axis.axhline(0.0, color="black", linewidth=0.6)
    if ylabel:
        axis.set_ylabel(ylabel)


def _shift_figure(comparison: Mapping[str, Any]) -> tuple[Any, list[str], str | None]:
    shifts = comparison.get("shifts") or {}
    if not shifts:
        return None, [], "no checkpoint has probes records paired with the base (probes suite not run)"
    units = comparison.get("shift_units") or "raw"
    emotions = next(iter(shifts.values()))["emotions"]
    plt = _pyplot()
    figure, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.45 * len(emotions) * max(1, len(shifts)) + 2), 8))
    for axis, reading, title in zip(axes, ("start", "response"), ("start of the assistant turn", "over the reply")):
        series = []
        for label, shift in shifts.items():
            table = shift["readings"][reading][units] or {}
            series.append((label, [_value(table.get(e)) for e in emotions]))
        _bars(axis, emotions, series, f"shift ({'z' if units == 'z' else 'raw projection'})")
        axis.set_title(f"Shift against {comparison['models'][0]['label']}: {title}")
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure, [], None


def _metric_panels(comparison: Mapping[str, Any], panels: Sequence[tuple[str, str, str]],
                   title: str) -> tuple[Any, list[str], str | None]:
    labels = [m["label"] for m in comparison["models"]]
    metrics = comparison.get("metrics") or {}
    present, skipped = [], []
    for suite, metric, panel_title in panels:
        values = [_value(((metrics.get(label) or {}).get(suite) or {}).get(metric)) for label in labels]
        if any(v is not None for v in values):
            present.append((panel_title, values))
        else:
            skipped.append(f"{panel_title}: no model has {suite}/{metric}")
    if not present:  # the plot's reason says it all; no per-panel reasons
        return None, [], f"none of the metrics were computed ({'; '.join(skipped)})"
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present) + 1, 3.6), squeeze=False)
    for axis, (panel_title, values) in zip(axes[0], present):
        _bars(axis, labels, [(panel_title, values)])
        axis.set_title(panel_title, fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return figure, skipped, None


def _concealment_figure(comparison: Mapping[str, Any]) -> tuple[Any, list[str], str | None]:
    metrics = comparison.get("metrics") or {}
    models = [m["label"] for m in comparison["models"] if (metrics.get(m["label"]) or {}).get("concealment")]
    if not models:
        return None, [], "no model has concealment metrics (concealment suite not run)"
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models) + 1, 3.8), squeeze=False)
    for axis, label in zip(axes[0], models):
        found = metrics[label]["concealment"]
        emotions = [name.split("/", 1)[1] for name in found if name.startswith("regularised_shift/")]
        series = [(reading.replace("_", " "), [_value(found.get(f"{reading}/{e}")) for e in emotions])
                  for reading in ("regularised_shift", "heldout_shift")]
        _bars(axis, emotions, series, "shift (z)")
        flagged = [e for e in emotions if (_value(found.get(f"possible_concealment/{e}")) or (0.0,))[0] >= 0.5]
        axis.set_title(label + (f"\npossible concealment: {', '.join(flagged)}" if flagged else ""), fontsize=9,
                       color="darkred" if flagged else "black")
        axis.legend(fontsize=8)
    figure.suptitle("Regularised direction vs held-out probes")
    figure.tight_layout()
    return figure, [], None
