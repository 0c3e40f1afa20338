"""Extract emotion vectors from a causal LM (the recipe of Sofroniew et al., 2026, from several sources).

1. Each example's residual activations are averaged at every selected layer,
   by its source's rule (:data:`SOURCES`): a story from a token offset on
   (adapted to short stories: see :func:`emoreg.vectors.tokens.offset_mask`), a
   dialogue over the tokens of the turn it reads (assistant or user, in the
   chat-template rendering), a labelled text over all its tokens.
2. Per source and emotion, the mean over its examples minus the mean over the
   source's emotions (each weighted equally), or minus its neutral rows' mean
   for labelled text that has them, gives the raw direction.
3. The top principal components of token-level activations on neutral text,
   as many as explain ``pca_variance`` of its variance, are projected out, and
   each source's directions are unit-normalised.
4. An emotion in several sources gets the mean of their unit directions,
   renormalised.
5. The base model's projection statistics on neutral text (mean, std,
   percentiles) are measured per layer and emotion.

Attention-sink positions (the first ``sink_tokens`` real tokens of every
sequence) never enter a mean or a statistic. Activations are reduced on the
fly inside the layer hooks (running sums); only per-story means are kept, and
only when asked for (for the validation report).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from emoreg.errors import ConfigError, DataFormatError
from emoreg.models.fingerprint import fingerprint_model
from emoreg.models.layout import hidden_size, num_layers
from emoreg.vectors.bundle import DEFAULT_PERCENTILES, EmotionVectors
from emoreg.vectors.capture import (
    TokenizedBatch,
    check_layers,
    forward_layers,
    tokenize_batches,
    tokenize_span_batches,
)
from emoreg.vectors.corpus import Corpus
from emoreg.vectors.dialogues import render_dialogue
from emoreg.vectors.labelled import NEUTRAL
from emoreg.vectors.tokens import content_mask, masked_mean, offset_mask

logger = logging.getLogger(__name__)

#: Example sources a direction can be built from, and how each reads its texts.
SOURCES = {
    "stories": "story tokens from the token offset on (short stories: from half their length)",
    "dialogues": "tokens of the read turn's content in the chat-template rendering (assistant or user turn)",
    "labelled": "every token of each labelled text but the attention sink; rows labelled neutral are the baseline",
}


@dataclass
class ExtractionConfig:
    """Settings of an extraction run (all recorded in the bundle)."""

    layers: list[int] | None = None
    token_offset: int = 50
    sink_tokens: int = 1
    batch_size: int = 8
    max_length: int = 512
    pca_variance: float = 0.5
    max_pcs: int | None = None
    default_layer: int | None = None
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    stat_sample_tokens: int = 50_000
    seed: int = 0
    #: which of the corpus's example sources build the directions ("stories", "dialogues", "labelled");
    #: None: every source the corpus has examples for
    sources: tuple[str, ...] | None = None

    def validate(self) -> None:
        if self.sources is not None:
            unknown = [s for s in self.sources if s not in SOURCES]
            if unknown or not self.sources:
                raise ConfigError(f"sources must be a non-empty subset of {list(SOURCES)}, got {list(self.sources)}")
            if len(set(self.sources)) != len(self.sources):
                raise ConfigError(f"sources must not repeat, got {list(self.sources)}")

        if self.token_offset < 0:
            raise ConfigError(f"token_offset must be >= 0, got {self.token_offset}")
        if self.sink_tokens < 0:
            raise ConfigError(f"sink_tokens must be >= 0, got {self.sink_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length}")
        if not 0.0 <= self.pca_variance < 1.0:
            raise ConfigError(f"pca_variance must be in [0, 1) (0 disables denoising), got {self.pca_variance}")
        if self.max_pcs is not None and self.max_pcs < 0:
            raise ConfigError(f"max_pcs must be >= 0 or None, got {self.max_pcs}")
        if any(not 0 <= q <= 100 for q in self.percentiles):
            raise ConfigError(f"percentiles must lie in [0, 100], got {self.percentiles}")
        if self.stat_sample_tokens < 100:
            raise ConfigError(f"stat_sample_tokens must be >= 100, got {self.stat_sample_tokens}")

    def resolved_sources(self, corpus: Corpus) -> tuple[str, ...]:
        """``sources``, or every source ``corpus`` has examples for (in the order of :data:`SOURCES`)."""
        if self.sources is not None:
            return tuple(self.sources)
        present = {"stories": corpus.stories, "dialogues": corpus.dialogues, "labelled": corpus.labelled}
        return tuple(name for name in SOURCES if present[name]) or ("stories",)


@dataclass
class ExtractionResult:
    """The bundle plus what validation needs (story means, labels, denoising bases)."""

    vectors: EmotionVectors
    story_means: torch.Tensor | None  # [stories, layers, d] float16, or None
    story_emotions: list[str]
    story_topics: list[str]
    neutral_bases: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [d, k] float32
    #: each source's own unit directions ``[layers, its emotions, d]`` and emotions, before combining
    source_directions: dict[str, torch.Tensor] = field(default_factory=dict)
    source_emotions: dict[str, list[str]] = field(default_factory=dict)
    #: each source's neutral-text projection mean and std ``[layers, its emotions]`` (several sources only)
    source_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def source_vectors(self) -> dict[str, EmotionVectors]:
        """Each source's own directions as a bundle (with mean/std statistics), to validate them alone."""
        return {
            name: EmotionVectors(self.source_directions[name], self.source_emotions[name], self.vectors.layers,
                                 default_layer=self.vectors.default_layer, stats_mean=mean, stats_std=std)
            for name, (mean, std) in self.source_stats.items()
        }
    seconds: float = 0.0
    tokens: int = 0


class _UniformSample:
    """A seeded uniform sample of at most ``capacity`` rows from a stream (bottom-k random keys)."""

    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        self.capacity = capacity
        self.generator = generator
        self.chunks: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        self.size = 0

    def add(self, rows: torch.Tensor) -> None:
        self.chunks.append(rows)
        self.keys.append(torch.rand(rows.shape[0], generator=self.generator))
        self.size += rows.shape[0]
        if self.size > 2 * self.capacity:
            self._shrink()

    def _shrink(self) -> None:
        rows, keys = torch.cat(self.chunks), torch.cat(self.keys)
        order = torch.argsort(keys)[: self.capacity]
        self.chunks, self.keys, self.size = [rows[order]], [keys[order]], len(order)

    def result(self) -> torch.Tensor:
        self._shrink()
        return self.chunks[0]


def extract_emotion_vectors(
    model: nn.Module,
    tokenizer,
    corpus: Corpus,
    config: ExtractionConfig | None = None,
    *,
    keep_story_means: bool = False,
    progress: bool = True,
    model_description: str | None = None,
) -> ExtractionResult:
    """Extract a vector bundle from ``model`` with ``corpus``.

    Args:
        keep_story_means: keep every story's mean activation (float16,
            ``[stories, layers, d]``) for the validation report.
        progress: show progress bars.
        model_description: recorded in the bundle's extraction settings.
    """
    config = config or ExtractionConfig()
    config.validate()
    config = replace(config, sources=config.resolved_sources(corpus))
    if "stories" in config.sources:
        corpus.validate()
    elif len(corpus.neutral) < 2:
        raise DataFormatError(f"the corpus needs at least 2 neutral texts for denoising; it has {len(corpus.neutral)}")
    layers = check_layers(model, config.layers)
    default_layer = config.default_layer
    if default_layer is None:
        default_layer = _nearest(layers, round(2 * num_layers(model) / 3))
    elif default_layer not in layers:
        raise ConfigError(f"default_layer {default_layer} is not among the extracted layers {layers}")
    start_time = time.perf_counter()
    sources = {name: _source_examples(corpus, name, tokenizer) for name in config.sources}
    emotions = list(dict.fromkeys(e for examples in sources.values() for e in examples.emotions))
    n_layers = len(layers)
    d = hidden_size(model)
    layer_pos = {layer: i for i, layer in enumerate(layers)}
    token_count = 0

    def run(batches, n_texts: int, desc: str, make_reducer) -> int:
        tokens = 0
        bar = tqdm(total=n_texts, desc=desc, unit="text", disable=not progress)
        truncated = 0
        for batch in batches:
            reducer = make_reducer(batch)
            forward_layers(model, batch, layers, reducer)
            tokens += int(batch.attention_mask.sum())
            truncated += sum(batch.truncated)
            bar.update(len(batch.indices))
        bar.close()
        if truncated:
            logger.warning("%d of %d texts were longer than max_length=%d tokens and were truncated",
                           truncated, n_texts, config.max_length)
        return tokens

    # Pass 1: per-example means (each source's token rule) -> per-source, per-emotion sums.
    source_means: dict[str, torch.Tensor] = {}  # name -> [L, its emotions, d] float64
    story_means = None
    for name, examples in sources.items():
        labels = torch.tensor([examples.classes.index(e) for e in examples.labels])
        sums = torch.zeros(n_layers, len(examples.classes), d, dtype=torch.float64)
        kept = None
        if keep_story_means and name == "stories":
            kept = story_means = torch.zeros(len(examples.texts), n_layers, d, dtype=torch.float16)

        def example_reducer(batch: TokenizedBatch, labels=labels, sums=sums, kept=kept, name=name):
            if batch.selected is not None:
                mask = batch.selected & content_mask(batch.attention_mask, config.sink_tokens)
            elif name == "stories":
                mask = offset_mask(batch.attention_mask, config.token_offset, config.sink_tokens)
            else:
                mask = content_mask(batch.attention_mask, config.sink_tokens)
            empty = [batch.indices[i] for i in range(len(batch.indices)) if not mask[i].any()]
            if empty:
                raise DataFormatError(
                    f"{name} {empty[:5]} have no tokens left to average after the first {config.sink_tokens} "
                    "(attention sink); they are too short"
                )
            batch_labels = labels[batch.indices]
            index = torch.tensor(batch.indices)

            def reduce(layer: int, hidden: torch.Tensor) -> None:
                means, _ = masked_mean(hidden, mask.to(hidden.device))
                means = means.cpu()
                sums[layer_pos[layer]].index_add_(0, batch_labels, means.to(torch.float64))
                if kept is not None:
                    kept[index, layer_pos[layer]] = means.to(torch.float16)

            return reduce

        if examples.spans is not None:
            batches = tokenize_span_batches(tokenizer, examples.texts, examples.spans,
                                            batch_size=config.batch_size, max_length=config.max_length)
        else:
            batches = tokenize_batches(tokenizer, examples.texts, batch_size=config.batch_size,
                                       max_length=config.max_length)
        token_count += run(batches, len(examples.texts), f"emoreg extract: {name}", example_reducer)
        _check_finite(sums, layers, name)
        counts = torch.bincount(labels, minlength=len(examples.classes)).to(torch.float64)
        source_means[name] = sums / counts[None, :, None]  # [L, classes, d]

    # Pass 2: neutral token moments -> principal components to project out.
    neutral_texts = [t.text for t in corpus.neutral]
    def _neutral_batches():
        return tokenize_batches(tokenizer, neutral_texts, batch_size=config.batch_size, max_length=config.max_length)

    n_tokens = torch.zeros(n_layers, dtype=torch.float64)
    sum_x = torch.zeros(n_layers, d, dtype=torch.float64)
    sum_xx = torch.zeros(n_layers, d, d, dtype=torch.float64)

    def moment_reducer(batch: TokenizedBatch):
        mask = content_mask(batch.attention_mask, config.sink_tokens)

        def reduce(layer: int, hidden: torch.Tensor) -> None:
            # The batch's second moments in float32 (fast), accumulated across batches in float64.
            x = hidden[mask.to(hidden.device)].to(torch.float32)
            i = layer_pos[layer]
            n_tokens[i] += x.shape[0]
            sum_x[i] += x.sum(0, dtype=torch.float64).cpu()
            sum_xx[i] += (x.T @ x).cpu().to(torch.float64)

        return reduce

    need_pca = config.pca_variance > 0 and config.max_pcs != 0
    if need_pca:
        token_count += run(_neutral_batches(), len(neutral_texts), "emoreg extract: neutral PCA", moment_reducer)
        _check_finite(sum_xx, layers, "neutral")
    n_emotions = len(emotions)
    bases: dict[int, torch.Tensor] = {}
    pca_report: dict[str, Any] = {}
    for layer, i in layer_pos.items():
        if need_pca:
            basis, explained = principal_components(sum_x[i], sum_xx[i], n_tokens[i],
                                                    pca_variance=config.pca_variance, max_pcs=config.max_pcs)
            bases[layer] = basis
            pca_report[str(layer)] = {"components": int(basis.shape[1]), "variance_explained": round(explained, 4)}
    # Each source: its emotions' means minus their mean (or minus its neutral rows' mean, when it has them),
    # neutral PCs projected out, unit norm.
    source_directions: dict[str, torch.Tensor] = {}
    for name, means in source_means.items():
        classes = sources[name].classes
        keep = [classes.index(e) for e in sources[name].emotions]
        unit = torch.zeros(n_layers, len(keep), d, dtype=torch.float64)
        for layer, i in layer_pos.items():
            baseline = sources[name].baseline
            centre = means[i, classes.index(baseline)] if baseline else means[i, keep].mean(dim=0)
            unit[i] = unit_directions(means[i, keep] - centre, bases.get(layer), layer, name)
        source_directions[name] = unit
    # Combined: per emotion, the mean of the unit directions of the sources that have it, renormalised.
    combined = torch.zeros(n_layers, n_emotions, d, dtype=torch.float64)
    for name, unit in source_directions.items():
        for j, emotion in enumerate(sources[name].emotions):
            combined[:, emotions.index(emotion)] += unit[:, j]
    directions = unit_directions(combined, None, None, "combined").to(torch.float32)
    bases = {layer: basis.to(torch.float32) for layer, basis in bases.items()}

    # Pass 3: base-model projection statistics on neutral text.
    proj_sum = torch.zeros(n_layers, n_emotions, dtype=torch.float64)
    proj_sq = torch.zeros(n_layers, n_emotions, dtype=torch.float64)
    proj_n = torch.zeros(n_layers, dtype=torch.float64)
    generator = torch.Generator().manual_seed(config.seed)
    samples = {layer: _UniformSample(config.stat_sample_tokens, generator) for layer in layers}

    # Each source's own directions get mean and std too, so validation can score them alone (several sources only).
    per_source = {name: unit.to(torch.float32) for name, unit in source_directions.items()} if len(sources) > 1 else {}
    source_sum = {name: torch.zeros(n_layers, unit.shape[1], dtype=torch.float64) for name, unit in per_source.items()}
    source_sq = {name: torch.zeros(n_layers, unit.shape[1], dtype=torch.float64) for name, unit in per_source.items()}

    def stats_reducer(batch: TokenizedBatch):
        mask = content_mask(batch.attention_mask, config.sink_tokens)

        def reduce(layer: int, hidden: torch.Tensor) -> None:
            i = layer_pos[layer]
            x = hidden[mask.to(hidden.device)].to(torch.float32)
            proj = (x @ directions[i].to(x.device).T).cpu()
            proj_sum[i] += proj.sum(0, dtype=torch.float64)
            proj_sq[i] += (proj.to(torch.float64) ** 2).sum(0)
            proj_n[i] += proj.shape[0]
            samples[layer].add(proj)
            for name, unit in per_source.items():
                own = (x @ unit[i].to(x.device).T).cpu().to(torch.float64)
                source_sum[name][i] += own.sum(0)
                source_sq[name][i] += (own**2).sum(0)

        return reduce

    token_count += run(_neutral_batches(), len(neutral_texts), "emoreg extract: neutral statistics", stats_reducer)
    _check_finite(proj_sq, layers, "neutral")
    if (proj_n < 2).any():
        raise DataFormatError("the neutral texts have fewer than 2 tokens after the attention sink; add neutral text")
    mean, std = _mean_and_std(proj_sum, proj_sq, proj_n)
    source_stats = {name: _mean_and_std(source_sum[name], source_sq[name], proj_n) for name in per_source}
    levels = torch.tensor(config.percentiles, dtype=torch.float32) / 100
    percentiles = torch.stack(
        [torch.quantile(samples[layer].result(), levels, dim=0).T for layer in layers]
    )  # [L, E, Q]

    seconds = time.perf_counter() - start_time
    extraction = asdict(config)
    extraction.update(
        layers=layers,
        default_layer=default_layer,
        percentiles=list(config.percentiles),
        sources=list(config.sources),
        method="difference of means (emotion mean minus mean over emotions), neutral PCs projected out",
        offset_rule="each story averages real tokens from min(token_offset, n_tokens // 2) on, never the sink tokens",
        combine="per emotion, the mean of the unit directions of the sources that have it, renormalised",
        source_details={name: examples.describe() for name, examples in sources.items()},
        topics=len(corpus.topics),
        neutral_texts=len(corpus.neutral),
        neutral_tokens=int(proj_n[0]),
        neutral_pca=pca_report,
        tokens=token_count,
        seconds=round(seconds, 2),
        model=model_description or "",
    )
    if "stories" in sources:
        extraction["stories_per_emotion"] = sources["stories"].describe()["per_emotion"]
    vectors = EmotionVectors(
        directions,
        emotions,
        layers,
        default_layer=default_layer,
        stats_mean=mean.to(torch.float32),
        stats_std=std.to(torch.float32),
        stats_percentiles=percentiles,
        percentile_levels=config.percentiles,
        model_fingerprint=fingerprint_model(model),
        extraction=extraction,
        corpus_sha256=corpus.content_hash(),
    )
    return ExtractionResult(
        vectors=vectors,
        story_means=story_means,
        story_emotions=[s.emotion for s in corpus.stories] if "stories" in sources else [],
        story_topics=[s.topic for s in corpus.stories] if "stories" in sources else [],
        neutral_bases=bases,
        source_directions={name: unit.to(torch.float32) for name, unit in source_directions.items()},
        source_emotions={name: list(examples.emotions) for name, examples in sources.items()},
        source_stats={name: (m.to(torch.float32), sd.to(torch.float32)) for name, (m, sd) in source_stats.items()},
        seconds=seconds,
        tokens=token_count,
    )


@dataclass
class _SourceExamples:
    """One source's texts as the model reads them, their emotions, and (dialogues) the spans to average."""

    name: str
    texts: list[str]
    labels: list[str]
    spans: list[tuple[int, int]] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: a label whose rows are the baseline the emotions are measured against (not an emotion); None: their mean
    baseline: str | None = None

    @property
    def classes(self) -> list[str]:
        """Every label, the neutral baseline included (the rows of the per-class sums)."""
        return list(dict.fromkeys(self.labels))

    @property
    def emotions(self) -> list[str]:
        return [label for label in self.classes if label != self.baseline]

    def describe(self) -> dict[str, Any]:
        counts = {e: self.labels.count(e) for e in self.classes}
        return {"examples": len(self.texts), "per_emotion": counts, "token_rule": SOURCES[self.name], **self.details}


def _source_examples(corpus: Corpus, name: str, tokenizer) -> _SourceExamples:
    """The corpus's examples of source ``name``, checked to support a difference of means."""
    if name == "stories":
        examples = _SourceExamples(name, [s.text for s in corpus.stories], [s.emotion for s in corpus.stories])
    elif name == "dialogues":
        rendered = [render_dialogue(tokenizer, dialogue) for dialogue in corpus.dialogues]
        speakers = {sp: sum(d.speaker == sp for d in corpus.dialogues) for sp in ("user", "assistant")}
        examples = _SourceExamples(name, [text for text, _ in rendered], [d.emotion for d in corpus.dialogues],
                                   spans=[span for _, span in rendered], details={"turns_read": speakers})
    else:
        examples = _SourceExamples(name, [t.text for t in corpus.labelled], [t.emotion for t in corpus.labelled],
                                   details=dict(corpus.labelled_description))
        if NEUTRAL in examples.labels:
            examples.baseline = NEUTRAL
            examples.details["baseline"] = "the mean of the rows labelled neutral"
    counts = {e: examples.labels.count(e) for e in examples.classes}
    if not examples.texts:
        raise DataFormatError(f"the source {name!r} was selected but the corpus has no {name}")
    thin = {e: n for e, n in counts.items() if n < 2}
    if thin:
        raise DataFormatError(f"every emotion of the {name} source needs at least 2 examples; too few for {thin}")
    if len(counts) < 2 or not examples.emotions:
        raise DataFormatError(
            f"difference-of-means extraction needs at least 2 emotions per source; {name} has {sorted(counts)}"
        )
    return examples


def unit_directions(raw: torch.Tensor, basis: torch.Tensor | None, layer: int | None = None,
                    what: str = "extracted") -> torch.Tensor:
    """``raw`` ``[..., d]`` with ``basis``'s components (columns, e.g. from :func:`principal_components`)
    projected out, unit-normalised. ``layer`` and ``what`` only name the directions in the error raised
    when one vanishes."""
    if basis is not None:
        raw = raw - (raw @ basis) @ basis.T
    norms = raw.norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        where = f" at layer {layer}" if layer is not None else ""
        raise DataFormatError(f"an emotion's direction vanished{where} in the {what} directions (identical texts?)")
    return raw / norms


def _mean_and_std(total: torch.Tensor, squares: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = total / n[:, None]
    var = (squares / n[:, None] - mean**2).clamp(min=0)
    return mean, var.sqrt().clamp(min=1e-6)


def principal_components(
    sum_x: torch.Tensor, sum_xx: torch.Tensor, n: torch.Tensor | float, *, pca_variance: float,
    max_pcs: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Top principal components of token activations from their moments, and the variance they explain.

    ``sum_x`` ``[d]``, ``sum_xx`` ``[d, d]`` (float64) and ``n`` are the sum, the sum of outer products
    and the count of the tokens. Returns the fewest leading components (columns ``[d, k]``, float64)
    explaining at least ``pca_variance`` of the variance, at most ``max_pcs`` and at most ``d - 1``.
    """
    mean = sum_x / n
    covariance = sum_xx / n - torch.outer(mean, mean)
    covariance = (covariance + covariance.T) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvalues = eigenvalues.flip(0).clamp(min=0)
    eigenvectors = eigenvectors.flip(1)
    total = float(eigenvalues.sum())
    if total <= 0:
        return eigenvectors[:, :0], 0.0
    cumulative = torch.cumsum(eigenvalues, 0) / total
    target = torch.tensor(pca_variance, dtype=cumulative.dtype, device=cumulative.device)
    k = int(torch.searchsorted(cumulative, target).item()) + 1
    if max_pcs is not None:
        k = min(k, max_pcs)
    k = min(k, eigenvectors.shape[1] - 1)
    explained = float(cumulative[k - 1]) if k > 0 else 0.0
    return eigenvectors[:, :k], explained


def _check_finite(accumulator: torch.Tensor, layers: list[int], what: str) -> None:
    """NaN/Inf activations propagate into the running sums; name the first layer they reached."""
    bad = ~torch.isfinite(accumulator.reshape(len(layers), -1)).all(dim=1)
    if bad.any():
        layer = layers[int(bad.nonzero()[0])]
        raise DataFormatError(
            f"non-finite activations (NaN or Inf) at layer {layer} on {what} text; "
            "try dtype float32 or check the model"
        )


def _nearest(options: list[int], target: int) -> int:
    return min(options, key=lambda layer: (abs(layer - target), layer))


__all__ = ["ExtractionConfig", "ExtractionResult", "extract_emotion_vectors", "principal_components",
           "unit_directions"]

