"""Write a validation report (:func:`emoreg.vectors.validation.build_validation_report`) to a directory.

Files: ``validation.json`` (the whole report), ``VALIDATION.md`` (a short summary with a section per check the
report holds) and the PNG plots ``accuracy_by_layer.png``, ``confusion.png`` (only with the held-out-topic
check) and ``valence_arousal.png``. Plots are drawn with matplotlib's Agg backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def write_validation_report(report: dict[str, Any], directory: str | Path) -> list[Path]:
    """Write ``validation.json``, ``VALIDATION.md`` and the PNG plots into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "validation.json"]
    written[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    written.extend(_plots(report, directory))
    markdown = directory / "VALIDATION.md"
    markdown.write_text(_markdown(report), encoding="utf-8")
    written.append(markdown)
    return written


def _markdown(report: dict[str, Any]) -> str:
    layer = report["default_layer"]
    lines = [
        "# Emotion-vector validation",
        "",
        f"Default layer: **{layer}**. Emotions: {len(report['emotions'])}. "
        f"Sources: {', '.join(report.get('sources', ['stories']))}.",
        "",
    ]
    if "heldout_topics" in report:
        lines += _heldout_markdown(report["heldout_topics"], layer)
    lines += _external_markdown(report, layer)
    return "\n".join(lines + _structure_markdown(report))


def _heldout_markdown(held: dict[str, Any], layer: int) -> list[str]:
    lines = [
        "## Held-out-topic story classification",
        f"{held['method']}; {held['stories']} stories over {held['topics']} topics; chance {held['chance']:.1%}.",
        "",
        f"- default layer {layer}: **{held['default_layer_accuracy']:.1%}**",
        f"- best layer {held['best_layer']}: {held['best_layer_accuracy']:.1%}",
        "",
        "| layer | accuracy |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1%} |" for k, v in held["accuracy_by_layer"].items()]
    lines += ["", "Recall per emotion at the default layer:", "",
              ", ".join(f"{e} {r:.0%}" for e, r in held["per_emotion_recall_default_layer"].items()), ""]
    return lines


def _external_markdown(report: dict[str, Any], layer: int) -> list[str]:
    lines: list[str] = []
    if "goemotions" in report:
        go = report["goemotions"]
        lines += [
            "## External check: GoEmotions (Ekman six, single-label rows)",
            f"{go['rows']} rows from `{go['file']}`; {go['method']}; chance {go['chance']:.1%}.",
            "",
            f"- default layer {layer}: balanced accuracy **{go['default_layer_balanced_accuracy']:.1%}** "
            f"(raw projections: {go['balanced_accuracy_raw_by_layer'][str(layer)]:.1%}"
            + (f"; z against the file's {go['domain_neutral_rows']} neutral rows instead of the bundle's neutral "
               f"dialogues: {go['balanced_accuracy_domain_neutral_by_layer'][str(layer)]:.1%}"
               if go.get("balanced_accuracy_domain_neutral_by_layer") else "") + ")",
            f"- best layer: {max(go['balanced_accuracy_by_layer'], key=go['balanced_accuracy_by_layer'].get)} "
            f"({max(go['balanced_accuracy_by_layer'].values()):.1%})",
            "",
        ]
        by_source = go.get("balanced_accuracy_by_source_and_layer") or {}
        if by_source:
            names = list(by_source)
            lines += ["Each source's own directions (same protocol; the bundle combines them):", "",
                      "| layer | bundle | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
            lines += [f"| {k} | {v:.1%} | " + " | ".join(f"{by_source[n].get(k, float('nan')):.1%}" for n in names)
                      + " |" for k, v in go["balanced_accuracy_by_layer"].items()]
            lines.append("")
    if "valence_ratings" in report:
        va = report["valence_ratings"]
        lines += [
            "## Valence: human ratings",
            f"{va['rows']} rated texts from `{va['file']}`; Spearman correlation of {va['reading']} with the "
            "mean human valence rating.",
            "",
            f"- default layer {layer}: rho = **{va['default_layer_spearman']:.3f}**",
            f"- best layer {va['best_layer']}: rho = {va['best_layer_spearman']:.3f}",
            "",
        ]
    if "reply_agreement" in report:
        ra = report["reply_agreement"]
        lines += [
            "## The model's own replies: vectors against the text-emotion classifier",
            f"{ra['replies']} greedy replies ({ra['max_new_tokens']} tokens) to the built-in probe scenarios, "
            f"layer {ra['layer']}; {ra['method']}. Mean AUC **{ra['mean_auc']:.3f}** (0.5 = no agreement).",
            "",
            ", ".join(f"{e} {v:.2f}" for e, v in sorted(ra["auc"].items(), key=lambda kv: -kv[1])),
            "",
        ]
    return lines


def _structure_markdown(report: dict[str, Any]) -> list[str]:
    va = report["valence_arousal"]
    lines = [
        "## Valence and arousal",
        f"PC1 explains {va['pc_variance_explained'][0]:.1%} of the directions' variance, PC2 "
        f"{va['pc_variance_explained'][1]:.1%}. Correlation with approximate ratings: "
        f"r(PC1, valence) = {va.get('r_pc1_valence', float('nan')):.2f}, "
        f"r(PC2, arousal) = {va.get('r_pc2_arousal', float('nan')):.2f} "
        f"(r(PC1, arousal) = {va.get('r_pc1_arousal', float('nan')):.2f}, "
        f"r(PC2, valence) = {va.get('r_pc2_valence', float('nan')):.2f}). The sign of a PC is arbitrary.",
        "",
        "## Logit lens (top tokens per direction at the default layer)",
        "",
    ]
    lines += [f"- **{e}**: {', '.join(tokens)}" for e, tokens in report["logit_lens"].items()]
    lines += ["", "Plots: `accuracy_by_layer.png`, `confusion.png`, `valence_arousal.png`.", ""]
    return lines


def _plots(report: dict[str, Any], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    held = report.get("heldout_topics")
    fig, ax = plt.subplots(figsize=(7, 4))
    if held is not None:
        layers = [int(k) for k in held["accuracy_by_layer"]]
        ax.plot(layers, list(held["accuracy_by_layer"].values()), marker="o", label="held-out-topic stories")
        ax.axhline(held["chance"], linestyle=":", color="grey", label="chance (stories)")
    if "goemotions" in report:
        go = report["goemotions"]
        ax.plot([int(k) for k in go["balanced_accuracy_by_layer"]], list(go["balanced_accuracy_by_layer"].values()),
                marker="s", label="GoEmotions balanced accuracy")
        for name, by_layer in (go.get("balanced_accuracy_by_source_and_layer") or {}).items():
            ax.plot([int(k) for k in by_layer], list(by_layer.values()), linestyle="--", alpha=0.7,
                    label=f"GoEmotions, {name} directions alone")
        ax.axhline(go["chance"], linestyle="--", color="grey", label="chance (GoEmotions)")
    ax.axvline(report["default_layer"], color="black", alpha=0.3)
    ax.set_xlabel("layer")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Emotion-vector accuracy by layer")
    fig.tight_layout()
    paths.append(directory / "accuracy_by_layer.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    if held is not None:
        paths.append(_confusion_plot(held, report["default_layer"], directory))

    coords = report["valence_arousal"]["coordinates"]
    fig, ax = plt.subplots(figsize=(7, 6))
    for emotion, (x, y) in coords.items():
        ax.scatter([x], [y], color="tab:blue")
        ax.annotate(emotion, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title("Emotion directions: first two principal components")
    fig.tight_layout()
    paths.append(directory / "valence_arousal.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def _confusion_plot(held: dict[str, Any], default_layer: int, directory: Path) -> Path:
    import matplotlib.pyplot as plt

    emotions = held.get("emotions", [])
    confusion = torch.tensor(held["confusion_default_layer"], dtype=torch.float32)
    confusion = confusion / confusion.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(confusion.numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(emotions)), emotions, rotation=90, fontsize=7)
    ax.set_yticks(range(len(emotions)), emotions, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Held-out-topic confusion at layer {default_layer} (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = directory / "confusion.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
