"""Validate a freshly extracted bundle and write the report next to it.

The report answers: do the directions tell the emotions apart on stories from
topics they never saw (held-out-topic classification per layer, confusion
matrix at the default layer)? What words does each direction promote (logit
lens)? Do the first two principal components of the directions read as valence
and arousal? Do they transfer to human-labelled text (GoEmotions, mapped to
Ekman's six emotions: balanced accuracy per layer against chance)?

:func:`build_validation_report` runs the checks; :mod:`emoreg.vectors.validation_report`
writes the result: ``validation.json`` (everything), ``VALIDATION.md`` (a short
summary) and PNG plots (``accuracy_by_layer.png``, ``confusion.png``,
``valence_arousal.png``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
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
from emoreg.vectors.labelled import EKMAN_TO_EMOREG, read_goemotions_ekman
from emoreg.vectors.tokens import content_mask, masked_mean

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- held-out topics
def heldout_topic_accuracy(result: ExtractionResult) -> dict[str, Any]:
    """Leave-one-topic-out classification of stories by their nearest direction.

    For each topic, the story part of the directions is rebuilt from the stories of all *other*
    topics (same recipe, same neutral components projected out) and, for a bundle built from
    several sources, combined with the other sources' directions as the extraction combines them
    (those sources never contain the held-out stories); each held-out story is assigned the
    emotion whose direction has the largest projection of the story's mean activation, centred on
    the training mean over emotions. Returns accuracy per layer and the confusion matrix at the
    default layer (rows: true emotion, columns: predicted).
    """
    if result.story_means is None:
        raise ValueError("extraction was run without keep_story_means=True")
    vectors = result.vectors
    emotions = list(dict.fromkeys(result.story_emotions))
    labels = torch.tensor([emotions.index(e) for e in result.story_emotions])
    topics = sorted(set(result.story_topics))
    topic_of = [topics.index(t) for t in result.story_topics]
    topic_idx = torch.tensor(topic_of)
    n_emotions = len(emotions)
    others = [(result.source_directions[name], result.source_emotions[name])
              for name in result.source_directions if name != "stories"]
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
            for source_directions, source_emotions in others:
                directions = directions.clone()
                for j, emotion in enumerate(source_emotions):
                    if emotion in emotions:
                        directions[emotions.index(emotion)] += source_directions[li, j].to(torch.float32)
            directions = directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-12)
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
        "method": "leave-one-topic-out; nearest direction of the centred story mean"
                  + ("; story part rebuilt per fold and combined with the other sources' directions" if others else ""),
        "emotions": emotions,
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
def _token_means(model: nn.Module, tokenizer, texts: Sequence[str], layers: Sequence[int], transform, *,
                 sink_tokens: int, batch_size: int, max_length: int, progress: bool,
                 desc: str) -> dict[int, torch.Tensor]:
    """``{layer: [texts, ...]}``: ``transform(layer, means)`` of each text's mean activation (sink excluded)."""
    out: dict[int, torch.Tensor] = {}
    bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress)
    for batch in tokenize_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length):
        mask = content_mask(batch.attention_mask, sink_tokens)
        index = torch.tensor(batch.indices)

        def reduce(layer: int, hidden: torch.Tensor, mask=mask, index=index) -> None:
            value = transform(layer, masked_mean(hidden, mask.to(hidden.device))[0].cpu())
            if layer not in out:
                out[layer] = torch.zeros(len(texts), value.shape[-1], dtype=value.dtype)
            out[layer][index] = value

        forward_layers(model, batch, layers, reduce)
        bar.update(len(batch.indices))
    bar.close()
    return out


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
    directions = {layer: vectors.directions(layer) for layer in layers}
    out = _token_means(model, tokenizer, texts, layers, lambda layer, means: means @ directions[layer].T,
                       sink_tokens=sink_tokens, batch_size=batch_size, max_length=max_length, progress=progress,
                       desc=desc)
    return {layer: out.get(layer, torch.zeros(len(texts), len(vectors.emotions))) for layer in layers}


def mean_activations(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    sink_tokens: int = 1,
    batch_size: int = 16,
    max_length: int = 512,
    progress: bool = True,
    desc: str = "emoreg: activations",
) -> dict[int, torch.Tensor]:
    """Mean activation of each text's tokens (sink excluded): ``{layer: [texts, d]}`` (float16, CPU)."""
    return _token_means(model, tokenizer, texts, layers, lambda layer, means: means.to(torch.float16),
                        sink_tokens=sink_tokens, batch_size=batch_size, max_length=max_length, progress=progress,
                        desc=desc)


def goemotions_check(model: nn.Module, tokenizer, vectors: EmotionVectors, path: str | Path, *,
                     batch_size: int = 16, progress: bool = True, sink_tokens: int = 1,
                     max_neutral: int = 1000, sources: dict[str, EmotionVectors] | None = None) -> dict[str, Any]:
    """Six-way balanced accuracy of the argmax over the Ekman emotions' projections, per layer.

    The primary score standardises projections with the bundle's own base-model statistics (neutral
    dialogues). A secondary score standardises them against the file's own neutral rows (in-domain
    Reddit text; their labels say only "neutral", no emotion label is used), which separates "the
    directions carry the emotion" from "the baseline differs between dialogues and Reddit comments".
    ``sources`` (each source's own directions, with statistics) are scored the same way, per layer,
    where they have all six emotions.
    """
    data = read_goemotions_ekman(path)
    six = [e for e in EKMAN_TO_EMOREG.values()]
    missing = [e for e in six if e not in vectors.emotions]
    if missing:
        raise DataFormatError(f"the GoEmotions check needs the emotions {missing}, which the bundle lacks")
    sub = vectors.subset(emotions=six)
    activations = mean_activations(model, tokenizer, data.texts, sub.layers, sink_tokens=sink_tokens,
                                   batch_size=batch_size, progress=progress, desc="emoreg validate: GoEmotions")
    truth = torch.tensor([six.index(label) for label in data.labels])
    neutral_texts = data.neutral[:max_neutral]
    neutral = mean_activations(model, tokenizer, neutral_texts, sub.layers, sink_tokens=sink_tokens,
                               batch_size=batch_size, progress=progress,
                               desc="emoreg validate: GoEmotions neutral rows") if len(neutral_texts) >= 10 else None
    raw_acc, z_acc, domain_acc = {}, {}, {}
    for layer in sub.layers:
        proj = activations[layer].to(torch.float32) @ sub.directions(layer).T
        raw_acc[str(layer)] = _balanced_accuracy(proj.argmax(-1), truth, len(six))
        if sub.has_stats:
            z_acc[str(layer)] = _balanced_accuracy(sub.standardize(proj, layer).argmax(-1), truth, len(six))
        if neutral is not None:
            baseline = neutral[layer].to(torch.float32) @ sub.directions(layer).T
            z_domain = (proj - baseline.mean(0)) / baseline.std(0).clamp(min=1e-6)
            domain_acc[str(layer)] = _balanced_accuracy(z_domain.argmax(-1), truth, len(six))
    by_source = {}
    for name, source in (sources or {}).items():
        if not set(six) <= set(source.emotions):
            continue
        part = source.subset(emotions=six)
        by_source[name] = {
            str(layer): _balanced_accuracy(part.standardize(activations[layer].to(torch.float32)
                                                            @ part.directions(layer).T, layer).argmax(-1),
                                           truth, len(six))
            for layer in part.layers if layer in activations
        }
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
        "balanced_accuracy_by_source_and_layer": by_source,
        "domain_neutral_rows": len(neutral_texts) if neutral is not None else 0,
        "default_layer_balanced_accuracy": primary[str(vectors.default_layer)],
    }


# --------------------------------------------------------------------------- valence from human ratings
def read_rated_texts(path: str | Path) -> tuple[list[str], list[float]]:
    """Texts with a human valence rating: a VADER ground-truth file (``id<TAB>mean rating<TAB>text``,
    no header: Hutto & Gilbert 2014, MIT licence, shipped in the ``vaderSentiment`` sdist) or a
    JSONL/CSV/TSV file with ``text`` and ``valence`` fields."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    texts, ratings = [], []
    if path.suffix.lower() == ".txt":
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split("\t")
            try:
                rating = float(parts[1])
            except (IndexError, ValueError):
                raise DataFormatError(f"{path}, line {number}: expected id<TAB>rating<TAB>text, got {line[:60]!r}") \
                    from None
            texts.append("\t".join(parts[2:]).strip())
            ratings.append(rating)
    else:
        from emoreg.utils.records import iter_records, require_text_field

        for number, record in iter_records(path):
            texts.append(require_text_field(path, number, record, "text"))
            try:
                ratings.append(float(record.get("valence")))
            except (TypeError, ValueError):
                raise DataFormatError(f"{path}, line {number}: field 'valence' must be a number, "
                                      f"got {record.get('valence')!r:.40}") from None
    keep = [i for i, t in enumerate(texts) if t]
    if len(keep) < 10:
        raise DataFormatError(f"{path}: the valence check needs at least 10 rated texts, found {len(keep)}")
    return [texts[i] for i in keep], [ratings[i] for i in keep]


def valence_check(model: nn.Module, tokenizer, vectors: EmotionVectors, path: str | Path, *,
                  max_rows: int | None = 1000, seed: int = 0, batch_size: int = 16, progress: bool = True,
                  sink_tokens: int = 1, positive: str = "happy", negative: str = "sad") -> dict[str, Any]:
    """Spearman correlation of the (``positive`` - ``negative``) z-reading with human valence ratings, per layer.

    At most ``max_rows`` texts, a seeded random sample (never hand-picked)."""
    for emotion in (positive, negative):
        if emotion not in vectors.emotions:
            raise DataFormatError(f"the valence check needs the emotion {emotion!r}, which the bundle lacks")
    texts, ratings = read_rated_texts(path)
    if max_rows is not None and len(texts) > max_rows:
        generator = torch.Generator().manual_seed(seed)
        keep = sorted(torch.randperm(len(texts), generator=generator)[:max_rows].tolist())
        texts, ratings = [texts[i] for i in keep], [ratings[i] for i in keep]
    sub = vectors.subset(emotions=[positive, negative])
    activations = mean_activations(model, tokenizer, texts, sub.layers, sink_tokens=sink_tokens,
                                   batch_size=batch_size, progress=progress, desc="emoreg validate: valence")
    target = torch.tensor(ratings, dtype=torch.float64)
    rho = {}
    for layer in sub.layers:
        z = sub.standardize(activations[layer].to(torch.float32) @ sub.directions(layer).T, layer)
        rho[str(layer)] = spearman(z[:, 0] - z[:, 1], target)
    best = max(rho, key=lambda k: rho[k])
    return {
        "file": str(path),
        "rows": len(texts),
        "reading": f"z({positive}) - z({negative}), mean over tokens (sink excluded)",
        "spearman_by_layer": rho,
        "default_layer_spearman": rho[str(vectors.default_layer)],
        "best_layer": int(best),
        "best_layer_spearman": rho[best],
    }


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    return _pearson(_ranks(a.to(torch.float64)), _ranks(b.to(torch.float64)))


def _ranks(values: torch.Tensor) -> torch.Tensor:
    order = values.argsort()
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(len(values), dtype=torch.float64)
    for value in values.unique():  # ties share their average rank
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


# --------------------------------------------------------------------------- the model's own replies
def reply_agreement(model: nn.Module, tokenizer, vectors: EmotionVectors, conversations, *, classifier,
                    layer: int | None = None, max_new_tokens: int = 48, batch_size: int = 8,
                    sink_tokens: int = 1, top_fraction: float = 0.25) -> dict[str, Any]:
    """Do the vectors read the emotion of the model's own replies as the text classifier does?

    The model answers ``conversations`` (greedy); each reply is read twice: by the bundle (mean
    z-score over the reply's tokens at ``layer``) and by the text-emotion ``classifier`` (its most
    emotion-laden sentence). Per emotion, AUC of the vector reading for telling the replies the
    classifier ranks in its top ``top_fraction`` for that emotion from the rest.
    """
    from emoreg.models.generation import ReplyGenerationConfig, generate_replies, render_conversation
    from emoreg.vectors.activations import encode_pairs, pad_token_id, read_token_states

    layer = vectors.default_layer if layer is None else layer
    replies = generate_replies(model, tokenizer, conversations, ReplyGenerationConfig(max_new_tokens=max_new_tokens),
                               batch_size=batch_size)
    prompts = [render_conversation(tokenizer, c) for c in conversations]
    readings = read_token_states(model, encode_pairs(tokenizer, prompts, replies), [layer],
                                 pad_id=pad_token_id(tokenizer), batch_size=batch_size, sink_tokens=sink_tokens)
    kept = readings.response_tokens > 0
    emotions = [e for e in vectors.emotions if e in classifier.emotions]
    sub = vectors.subset(emotions=emotions)
    z = sub.standardize(readings.response[layer] @ sub.directions(layer).T, layer)[kept]
    sentences = classifier.sentence_proba([r for r, k in zip(replies, kept.tolist()) if k])
    text_scores = torch.stack([p.max(dim=0).values for p in sentences])  # [N, classifier emotions]
    auc, rho = {}, {}
    for i, emotion in enumerate(emotions):
        scores = text_scores[:, classifier.emotion_index(emotion)]
        cut = torch.quantile(scores, 1 - top_fraction)
        positive = scores >= cut
        auc[emotion] = _auc(z[positive, i], z[~positive, i]) if 0 < positive.sum() < len(scores) else float("nan")
        rho[emotion] = spearman(z[:, i], scores)
    valid = [v for v in auc.values() if v == v]
    return {
        "layer": layer,
        "replies": int(kept.sum()),
        "max_new_tokens": max_new_tokens,
        "method": f"AUC of the reply-mean z-score for the classifier's top {top_fraction:.0%} replies per emotion",
        "auc": auc,
        "spearman": rho,
        "mean_auc": sum(valid) / len(valid) if valid else float("nan"),
    }


def _auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(a positive scores above a negative), ties counted half."""
    diff = positive[:, None] - negative[None, :]
    return float(((diff > 0).to(torch.float64) + 0.5 * (diff == 0).to(torch.float64)).mean())


def _balanced_accuracy(predicted: torch.Tensor, truth: torch.Tensor, classes: int) -> float:
    recalls = [float((predicted[truth == c] == c).float().mean()) for c in range(classes) if (truth == c).any()]
    return sum(recalls) / len(recalls)


# --------------------------------------------------------------------------- report
def builtin_reply_prompts() -> list[list[dict[str, str]]]:
    """Conversations for the reply-agreement check: the built-in probe scenarios (pressure and control), read
    from the probes suite's shipped data file (every record there is a ``messages`` chat; the suite's own
    reader checks the file in the probes tests)."""
    from emoreg.utils.records import iter_records

    path = resources.files("emoreg") / "data" / "evals" / "probes" / "scenarios.jsonl"
    return [record["messages"] for _, record in iter_records(Path(str(path)), format="jsonl")]


def build_validation_report(
    result: ExtractionResult,
    model: nn.Module,
    tokenizer,
    *,
    goemotions_path: str | Path | None = None,
    valence_path: str | Path | None = None,
    reply_classifier=None,
    progress: bool = True,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Run every check and return the report (a JSON-serialisable dict).

    ``goemotions_path`` adds the GoEmotions transfer check (per layer, and per source for bundles
    built from several), ``valence_path`` the correlation with human valence ratings
    (:func:`read_rated_texts`), ``reply_classifier`` (a text-emotion classifier) the agreement
    between the vectors' and the classifier's reading of the model's own replies.
    """
    vectors = result.vectors
    sink_tokens = int(vectors.extraction.get("sink_tokens", 1))
    report: dict[str, Any] = {
        "default_layer": vectors.default_layer,
        "emotions": vectors.emotions,
        "sources": list(vectors.extraction.get("sources", ["stories"])),
        "logit_lens": logit_lens(vectors, model, tokenizer),
        "valence_arousal": valence_arousal(vectors),
    }
    if result.story_means is not None and result.story_emotions:
        report["heldout_topics"] = heldout_topic_accuracy(result)
    if goemotions_path is not None:
        report["goemotions"] = goemotions_check(model, tokenizer, vectors, goemotions_path,
                                                batch_size=batch_size, progress=progress, sink_tokens=sink_tokens,
                                                sources=result.source_vectors())
    if valence_path is not None:
        report["valence_ratings"] = valence_check(model, tokenizer, vectors, valence_path, batch_size=batch_size,
                                                  progress=progress, sink_tokens=sink_tokens)
    if reply_classifier is not None:
        report["reply_agreement"] = reply_agreement(model, tokenizer, vectors, builtin_reply_prompts(),
                                                    classifier=reply_classifier, sink_tokens=sink_tokens)
    return report


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The short validation summary stored in ``bundle.json``."""
    summary: dict[str, Any] = {}
    if "heldout_topics" in report:
        held = report["heldout_topics"]
        summary.update(
            heldout_topic_accuracy_default_layer=round(held["default_layer_accuracy"], 4),
            heldout_topic_best_layer=held["best_layer"],
            heldout_topic_best_accuracy=round(held["best_layer_accuracy"], 4),
            heldout_chance=round(held["chance"], 4),
        )
    summary.update(
        r_pc1_valence=round(report["valence_arousal"].get("r_pc1_valence", float("nan")), 3),
        r_pc2_arousal=round(report["valence_arousal"].get("r_pc2_arousal", float("nan")), 3),
    )
    if "goemotions" in report:
        summary["goemotions_balanced_accuracy_default_layer"] = round(
            report["goemotions"]["default_layer_balanced_accuracy"], 4)
        summary["goemotions_chance"] = round(report["goemotions"]["chance"], 4)
    if "valence_ratings" in report:
        summary["valence_spearman_default_layer"] = round(report["valence_ratings"]["default_layer_spearman"], 3)
        summary["valence_rows"] = report["valence_ratings"]["rows"]
    if "reply_agreement" in report:
        summary["reply_agreement_mean_auc"] = round(report["reply_agreement"]["mean_auc"], 3)
    return summary
