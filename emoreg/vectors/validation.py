"""Validate a freshly extracted bundle and write the report next to it.

The report answers: do the directions tell the emotions apart on stories from
topics they never saw (held-out-topic classification per layer, confusion
matrix at the default layer)? What words does each direction promote (logit
lens)? Do the first two principal components of the directions read as valence
and arousal? Do they transfer to human-labelled text (GoEmotions, mapped to
Ekman's six emotions: balanced accuracy per layer against chance)?

Files written: ``validation.json`` (everything), ``VALIDATION.md`` (a short
summary) and PNG plots (``accuracy_by_layer.png``, ``confusion.png``,
``valence_arousal.png``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from emoreg.errors import DataFormatError
from emoreg.models.layout import final_norm_and_unembedding
from emoreg.vectors.bundle import EmotionVectors
from emoreg.vectors.capture import forward_layers, tokenize_batches
from emoreg.vectors.extraction import ExtractionResult
from emoreg.vectors.tokens import content_mask, masked_mean

logger = logging.getLogger(__name__)

#: GoEmotions' Ekman labels mapped to emoreg emotion names.
EKMAN_TO_EMOREG = {
    "joy": "happy",
    "sadness": "sad",
    "fear": "afraid",
    "anger": "angry",
    "disgust": "disgusted",
    "surprise": "surprised",
}


# --------------------------------------------------------------------------- held-out topics
def heldout_topic_accuracy(result: ExtractionResult) -> dict[str, Any]:
    """Leave-one-topic-out classification of stories by their nearest direction.

    For each topic, directions are rebuilt from the stories of all *other*
    topics (same recipe, same neutral components projected out); each held-out
    story is assigned the emotion whose direction has the largest projection
    of the story's mean activation, centred on the training mean over
    emotions. Returns accuracy per layer and the confusion matrix at the
    default layer (rows: true emotion, columns: predicted).
    """
    if result.story_means is None:
        raise ValueError("extraction was run without keep_story_means=True")
    vectors = result.vectors
    emotions = vectors.emotions
    labels = torch.tensor([emotions.index(e) for e in result.story_emotions])
    topics = sorted(set(result.story_topics))
    topic_of = [topics.index(t) for t in result.story_topics]
    topic_idx = torch.tensor(topic_of)
    n_emotions = len(emotions)
    predictions = torch.full((len(vectors.layers), len(labels)), -1, dtype=torch.long)
    for li, layer in enumerate(vectors.layers):
        x = result.story_means[:, li].to(torch.float32)
        basis = result.neutral_bases.get(layer)
        for t in range(len(topics)):
            train = topic_idx != t
            test = ~train
            means = torch.stack([
                x[train & (labels == e)].mean(0) if (train & (labels == e)).any() else torch.zeros(x.shape[1])
                for e in range(n_emotions)
            ])
            centre = means.mean(0)
            raw = means - centre
            if basis is not None and basis.shape[1] > 0:
                raw = raw - (raw @ basis) @ basis.T
            directions = raw / raw.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            scores = (x[test] - centre) @ directions.T
            predictions[li, test] = scores.argmax(-1)
    accuracy = {str(layer): float((predictions[i] == labels).float().mean()) for i, layer in enumerate(vectors.layers)}
    default_index = vectors.layer_index(vectors.default_layer)
    confusion = torch.zeros(n_emotions, n_emotions, dtype=torch.long)
    for truth, guess in zip(labels.tolist(), predictions[default_index].tolist()):
        confusion[truth, guess] += 1
    per_emotion = {
        e: float(confusion[i, i] / confusion[i].sum().clamp(min=1)) for i, e in enumerate(emotions)
    }
    best_layer = max(vectors.layers, key=lambda layer: accuracy[str(layer)])
    return {
        "method": "leave-one-topic-out; nearest direction of the centred story mean",
        "topics": len(topics),
        "stories": len(labels),
        "chance": 1.0 / n_emotions,
        "accuracy_by_layer": accuracy,
        "default_layer_accuracy": accuracy[str(vectors.default_layer)],
        "best_layer": best_layer,
        "best_layer_accuracy": accuracy[str(best_layer)],
        "per_emotion_recall_default_layer": per_emotion,
        "confusion_default_layer": confusion.tolist(),
    }


# --------------------------------------------------------------------------- logit lens
def logit_lens(vectors: EmotionVectors, model: nn.Module, tokenizer, *, top_k: int = 10,
               layer: int | None = None) -> dict[str, list[str]]:
    """Tokens each direction promotes most when read through the final norm's
    scale and the unembedding (``W_U (g * v)``)."""
    norm, unembedding = final_norm_and_unembedding(model)
    directions = vectors.directions(layer).to(unembedding.device, torch.float32)
    scale = getattr(norm, "weight", None) if norm is not None else None
    if scale is not None and scale.shape[-1] == directions.shape[-1]:
        directions = directions * scale.detach().to(torch.float32)
    with torch.no_grad():
        logits = directions @ unembedding.detach().to(torch.float32).T  # [E, vocab]
    top = logits.topk(top_k, dim=-1).indices
    return {
        emotion: [tokenizer.decode([int(t)]).strip() or repr(tokenizer.decode([int(t)])) for t in top[i]]
        for i, emotion in enumerate(vectors.emotions)
    }


# --------------------------------------------------------------------------- valence / arousal
def load_affect_norms() -> dict[str, dict[str, float]]:
    """Approximate valence/arousal ratings of the built-in emotions (see the JSON's ``_about``)."""
    path = resources.files("emoreg") / "data" / "affect_norms.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def valence_arousal(vectors: EmotionVectors, layer: int | None = None) -> dict[str, Any]:
    """Principal components of the directions and their correlation with valence and arousal."""
    directions = vectors.directions(layer).to(torch.float64)
    centred = directions - directions.mean(0, keepdim=True)
    _, singular, v_t = torch.linalg.svd(centred, full_matrices=False)
    scores = centred @ v_t[:2].T  # [E, 2]
    explained = (singular**2 / (singular**2).sum())[:2].tolist()
    norms = load_affect_norms()
    known = [i for i, e in enumerate(vectors.emotions) if e in norms]
    report: dict[str, Any] = {
        "pc_variance_explained": explained,
        "coordinates": {e: scores[i].tolist() for i, e in enumerate(vectors.emotions)},
        "rated_emotions": len(known),
    }
    if len(known) >= 3:
        valence = torch.tensor([norms[vectors.emotions[i]]["valence"] for i in known], dtype=torch.float64)
        arousal = torch.tensor([norms[vectors.emotions[i]]["arousal"] for i in known], dtype=torch.float64)
        for pc in range(2):
            column = scores[known, pc]
            report[f"r_pc{pc + 1}_valence"] = _pearson(column, valence)
            report[f"r_pc{pc + 1}_arousal"] = _pearson(column, arousal)
    return report


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    return float((a * b).sum()) / denominator if denominator > 0 else 0.0


# --------------------------------------------------------------------------- GoEmotions
@dataclass
class LabelledTexts:
    texts: list[str]
    labels: list[str]
    neutral: list[str]  # single-label rows marked neutral (no emotion label is used from them)


def read_goemotions_ekman(path: str | Path, labels_path: str | Path | None = None) -> LabelledTexts:
    """Single-label, non-neutral rows of a GoEmotions Ekman TSV (``text<TAB>ids<TAB>id``).

    Label ids index ``ekman_labels.txt`` next to the TSV (or ``labels_path``).
    """
    path = Path(path)
    labels_path = Path(labels_path) if labels_path else path.parent / "ekman_labels.txt"
    if not labels_path.is_file():
        raise DataFormatError(f"{labels_path}: label list not found (one Ekman label per line)")
    names = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts, labels, neutral = [], [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2:
                raise DataFormatError(f"{path}, line {number}: expected text<TAB>label ids, got {line[:60]!r}")
            ids = [p for p in parts[1].split(",") if p.strip()]
            if len(ids) != 1:
                continue
            try:
                label = names[int(ids[0])]
            except (ValueError, IndexError):
                raise DataFormatError(f"{path}, line {number}: label id {ids[0]!r} is not in {labels_path}") from None
            if label in EKMAN_TO_EMOREG:
                texts.append(parts[0])
                labels.append(EKMAN_TO_EMOREG[label])
            elif label == "neutral":
                neutral.append(parts[0])
    if not texts:
        raise DataFormatError(f"{path}: no single-label, non-neutral rows found")
    return LabelledTexts(texts, labels, neutral)


def mean_projections(
    model: nn.Module,
    tokenizer,
    vectors: EmotionVectors,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    sink_tokens: int = 1,
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = True,
    desc: str = "emoreg: projections",
) -> dict[int, torch.Tensor]:
    """Mean projection of each text's tokens (sink excluded) on every emotion: ``{layer: [texts, E]}``."""
    layers = list(vectors.layers if layers is None else layers)
    out = {layer: torch.zeros(len(texts), len(vectors.emotions)) for layer in layers}
    directions = {layer: vectors.directions(layer) for layer in layers}
    bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress)
    for batch in tokenize_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length):
        mask = content_mask(batch.attention_mask, sink_tokens)
        index = torch.tensor(batch.indices)

        def reduce(layer: int, hidden: torch.Tensor, mask=mask, index=index) -> None:
            means, _ = masked_mean(hidden, mask.to(hidden.device))
            out[layer][index] = means.cpu() @ directions[layer].T

        forward_layers(model, batch, layers, reduce)
        bar.update(len(batch.indices))
    bar.close()
    return out


def goemotions_check(model: nn.Module, tokenizer, vectors: EmotionVectors, path: str | Path, *,
                     batch_size: int = 16, progress: bool = True, sink_tokens: int = 1,
                     max_neutral: int = 1000) -> dict[str, Any]:
    """Six-way balanced accuracy of the argmax over the Ekman emotions' projections, per layer.

    The primary score standardises projections with the bundle's own base-model statistics (neutral
    dialogues). A secondary score standardises them against the file's own neutral rows (in-domain
    Reddit text; their labels say only "neutral", no emotion label is used), which separates "the
    directions carry the emotion" from "the baseline differs between dialogues and Reddit comments".
    """
    data = read_goemotions_ekman(path)
    six = [e for e in EKMAN_TO_EMOREG.values()]
    missing = [e for e in six if e not in vectors.emotions]
    if missing:
        raise DataFormatError(f"the GoEmotions check needs the emotions {missing}, which the bundle lacks")
    sub = vectors.subset(emotions=six)
    projections = mean_projections(model, tokenizer, sub, data.texts, batch_size=batch_size, progress=progress,
                                   sink_tokens=sink_tokens, desc="emoreg validate: GoEmotions")
    truth = torch.tensor([six.index(label) for label in data.labels])
    neutral_texts = data.neutral[:max_neutral]
    neutral = mean_projections(model, tokenizer, sub, neutral_texts, batch_size=batch_size, progress=progress,
                               sink_tokens=sink_tokens, desc="emoreg validate: GoEmotions neutral rows") \
        if len(neutral_texts) >= 10 else None
    raw_acc, z_acc, domain_acc = {}, {}, {}
    for layer, proj in projections.items():
        raw_acc[str(layer)] = _balanced_accuracy(proj.argmax(-1), truth, len(six))
        if sub.has_stats:
            z_acc[str(layer)] = _balanced_accuracy(sub.standardize(proj, layer).argmax(-1), truth, len(six))
        if neutral is not None:
            baseline = neutral[layer]
            z_domain = (proj - baseline.mean(0)) / baseline.std(0).clamp(min=1e-6)
            domain_acc[str(layer)] = _balanced_accuracy(z_domain.argmax(-1), truth, len(six))
    primary = z_acc or raw_acc
    return {
        "file": str(path),
        "rows": len(data.texts),
        "class_counts": {e: int((truth == i).sum()) for i, e in enumerate(six)},
        "chance": 1.0 / len(six),
        "method": "mean projection over tokens (sink excluded); argmax of z-scores (base-model neutral statistics)",
        "balanced_accuracy_by_layer": primary,
        "balanced_accuracy_raw_by_layer": raw_acc,
        "balanced_accuracy_domain_neutral_by_layer": domain_acc,
        "domain_neutral_rows": len(neutral_texts) if neutral is not None else 0,
        "default_layer_balanced_accuracy": primary[str(vectors.default_layer)],
    }


def _balanced_accuracy(predicted: torch.Tensor, truth: torch.Tensor, classes: int) -> float:
    recalls = [float((predicted[truth == c] == c).float().mean()) for c in range(classes) if (truth == c).any()]
    return sum(recalls) / len(recalls)


# --------------------------------------------------------------------------- report
def build_validation_report(
    result: ExtractionResult,
    model: nn.Module,
    tokenizer,
    *,
    goemotions_path: str | Path | None = None,
    progress: bool = True,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Run every check and return the report (a JSON-serialisable dict)."""
    vectors = result.vectors
    report: dict[str, Any] = {
        "default_layer": vectors.default_layer,
        "emotions": vectors.emotions,
        "heldout_topics": heldout_topic_accuracy(result),
        "logit_lens": logit_lens(vectors, model, tokenizer),
        "valence_arousal": valence_arousal(vectors),
    }
    if goemotions_path is not None:
        report["goemotions"] = goemotions_check(model, tokenizer, vectors, goemotions_path,
                                                batch_size=batch_size, progress=progress,
                                                sink_tokens=int(vectors.extraction.get("sink_tokens", 1)))
    return report


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The short validation summary stored in ``bundle.json``."""
    held = report["heldout_topics"]
    summary = {
        "heldout_topic_accuracy_default_layer": round(held["default_layer_accuracy"], 4),
        "heldout_topic_best_layer": held["best_layer"],
        "heldout_topic_best_accuracy": round(held["best_layer_accuracy"], 4),
        "heldout_chance": round(held["chance"], 4),
        "r_pc1_valence": round(report["valence_arousal"].get("r_pc1_valence", float("nan")), 3),
        "r_pc2_arousal": round(report["valence_arousal"].get("r_pc2_arousal", float("nan")), 3),
    }
    if "goemotions" in report:
        summary["goemotions_balanced_accuracy_default_layer"] = round(
            report["goemotions"]["default_layer_balanced_accuracy"], 4)
        summary["goemotions_chance"] = round(report["goemotions"]["chance"], 4)
    return summary


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
    held = report["heldout_topics"]
    layer = report["default_layer"]
    lines = [
        "# Emotion-vector validation",
        "",
        f"Default layer: **{layer}**. Emotions: {len(report['emotions'])}.",
        "",
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
    va = report["valence_arousal"]
    lines += [
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
    return "\n".join(lines)


def _plots(report: dict[str, Any], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    held = report["heldout_topics"]
    layers = [int(k) for k in held["accuracy_by_layer"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(layers, list(held["accuracy_by_layer"].values()), marker="o", label="held-out-topic stories")
    ax.axhline(held["chance"], linestyle=":", color="grey", label="chance (stories)")
    if "goemotions" in report:
        go = report["goemotions"]
        ax.plot([int(k) for k in go["balanced_accuracy_by_layer"]], list(go["balanced_accuracy_by_layer"].values()),
                marker="s", label="GoEmotions balanced accuracy")
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

    emotions = report["emotions"]
    confusion = torch.tensor(held["confusion_default_layer"], dtype=torch.float32)
    confusion = confusion / confusion.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(confusion.numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(emotions)), emotions, rotation=90, fontsize=7)
    ax.set_yticks(range(len(emotions)), emotions, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Held-out-topic confusion at layer {report['default_layer']} (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    paths.append(directory / "confusion.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

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
