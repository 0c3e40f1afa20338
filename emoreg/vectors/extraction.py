"""Extract emotion vectors from a causal LM (the recipe of Sofroniew et al., 2026).

1. Each story's residual activations are averaged over its tokens from a token
   offset on (``token_offset``, adapted to short stories: see
   :func:`emoreg.vectors.tokens.offset_mask`), at every selected layer.
2. Per emotion, the mean over its stories minus the mean over all emotions
   (each emotion weighted equally) gives the raw direction.
3. The top principal components of token-level activations on neutral text,
   as many as explain ``pca_variance`` of its variance, are projected out.
4. Directions are unit-normalised.
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
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from emoreg.errors import ConfigError, DataFormatError
from emoreg.models.fingerprint import fingerprint_model
from emoreg.models.layout import hidden_size, num_layers
from emoreg.vectors.bundle import DEFAULT_PERCENTILES, EmotionVectors
from emoreg.vectors.capture import TokenizedBatch, check_layers, forward_layers, tokenize_batches
from emoreg.vectors.corpus import Corpus
from emoreg.vectors.tokens import content_mask, masked_mean, offset_mask

logger = logging.getLogger(__name__)


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

    def validate(self) -> None:
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


@dataclass
class ExtractionResult:
    """The bundle plus what validation needs (story means, labels, denoising bases)."""

    vectors: EmotionVectors
    story_means: torch.Tensor | None  # [stories, layers, d] float16, or None
    story_emotions: list[str]
    story_topics: list[str]
    neutral_bases: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [d, k] float32
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
    corpus.validate()
    layers = check_layers(model, config.layers)
    default_layer = config.default_layer
    if default_layer is None:
        default_layer = _nearest(layers, round(2 * num_layers(model) / 3))
    elif default_layer not in layers:
        raise ConfigError(f"default_layer {default_layer} is not among the extracted layers {layers}")
    start_time = time.perf_counter()
    emotions = corpus.emotions
    token_count = 0

    # Pass 1: per-story means from the offset on -> per-emotion sums.
    story_texts = [s.text for s in corpus.stories]
    story_labels = torch.tensor([emotions.index(s.emotion) for s in corpus.stories])
    n_layers, n_emotions = len(layers), len(emotions)
    d = hidden_size(model)
    emotion_sums = torch.zeros(n_layers, n_emotions, d, dtype=torch.float64)
    story_means = torch.zeros(len(story_texts), n_layers, d, dtype=torch.float16) if keep_story_means else None
    layer_pos = {layer: i for i, layer in enumerate(layers)}

    def run(texts: list[str], desc: str, make_reducer) -> int:
        tokens = 0
        batches = tokenize_batches(tokenizer, texts, batch_size=config.batch_size, max_length=config.max_length)
        bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not progress)
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
                           truncated, len(texts), config.max_length)
        return tokens

    def story_reducer(batch: TokenizedBatch):
        mask = offset_mask(batch.attention_mask, config.token_offset, config.sink_tokens)
        empty = [batch.indices[i] for i in range(len(batch.indices)) if not mask[i].any()]
        if empty:
            raise DataFormatError(
                f"stories {empty[:5]} have no tokens left after the first {config.sink_tokens} (attention sink); "
                "they are too short"
            )
        labels = story_labels[batch.indices]
        index = torch.tensor(batch.indices)

        def reduce(layer: int, hidden: torch.Tensor) -> None:
            means, _ = masked_mean(hidden, mask.to(hidden.device))
            means = means.cpu()
            emotion_sums[layer_pos[layer]].index_add_(0, labels, means.to(torch.float64))
            if story_means is not None:
                story_means[index, layer_pos[layer]] = means.to(torch.float16)

        return reduce

    token_count += run(story_texts, "emoreg extract: stories", story_reducer)
    _check_finite(emotion_sums, layers, "story")
    counts = torch.bincount(story_labels, minlength=n_emotions).to(torch.float64)
    emotion_means = emotion_sums / counts[None, :, None]  # [L, E, d]
    raw = emotion_means - emotion_means.mean(dim=1, keepdim=True)

    # Pass 2: neutral token moments -> principal components to project out.
    neutral_texts = [t.text for t in corpus.neutral]
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
        token_count += run(neutral_texts, "emoreg extract: neutral PCA", moment_reducer)
        _check_finite(sum_xx, layers, "neutral")
    directions = torch.zeros(n_layers, n_emotions, d, dtype=torch.float32)
    bases: dict[int, torch.Tensor] = {}
    pca_report: dict[str, Any] = {}
    for layer, i in layer_pos.items():
        vectors = raw[i]
        if need_pca:
            basis, explained = _principal_components(sum_x[i], sum_xx[i], n_tokens[i], config)
            vectors = vectors - (vectors @ basis) @ basis.T
            bases[layer] = basis.to(torch.float32)
            pca_report[str(layer)] = {"components": int(basis.shape[1]), "variance_explained": round(explained, 4)}
        norms = vectors.norm(dim=-1, keepdim=True)
        if (norms == 0).any():
            raise DataFormatError(f"an emotion's direction vanished at layer {layer} (identical stories?)")
        directions[i] = (vectors / norms).to(torch.float32)

    # Pass 3: base-model projection statistics on neutral text.
    proj_sum = torch.zeros(n_layers, n_emotions, dtype=torch.float64)
    proj_sq = torch.zeros(n_layers, n_emotions, dtype=torch.float64)
    proj_n = torch.zeros(n_layers, dtype=torch.float64)
    generator = torch.Generator().manual_seed(config.seed)
    samples = {layer: _UniformSample(config.stat_sample_tokens, generator) for layer in layers}

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

        return reduce

    token_count += run(neutral_texts, "emoreg extract: neutral statistics", stats_reducer)
    _check_finite(proj_sq, layers, "neutral")
    if (proj_n < 2).any():
        raise DataFormatError("the neutral texts have fewer than 2 tokens after the attention sink; add neutral text")
    mean = proj_sum / proj_n[:, None]
    var = (proj_sq / proj_n[:, None] - mean**2).clamp(min=0)
    std = var.sqrt().clamp(min=1e-6)
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
        method="difference of means (emotion mean minus mean over emotions), neutral PCs projected out",
        offset_rule="each story averages real tokens from min(token_offset, n_tokens // 2) on, never the sink tokens",
        stories_per_emotion={e: int(c) for e, c in zip(emotions, counts.tolist())},
        topics=len(corpus.topics),
        neutral_texts=len(corpus.neutral),
        neutral_tokens=int(proj_n[0]),
        neutral_pca=pca_report,
        tokens=token_count,
        seconds=round(seconds, 2),
        model=model_description or "",
    )
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
        story_emotions=[s.emotion for s in corpus.stories],
        story_topics=[s.topic for s in corpus.stories],
        neutral_bases=bases,
        seconds=seconds,
        tokens=token_count,
    )


def _principal_components(
    sum_x: torch.Tensor, sum_xx: torch.Tensor, n: torch.Tensor, config: ExtractionConfig
) -> tuple[torch.Tensor, float]:
    """Top principal components (columns, float64) explaining ``pca_variance`` of the variance."""
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
    k = int(torch.searchsorted(cumulative, torch.tensor(config.pca_variance, dtype=cumulative.dtype)).item()) + 1
    if config.max_pcs is not None:
        k = min(k, config.max_pcs)
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


__all__ = ["ExtractionConfig", "ExtractionResult", "extract_emotion_vectors"]

