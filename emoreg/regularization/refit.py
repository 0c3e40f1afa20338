"""Adaptive directions: re-extract the penalised emotions' directions from the model being trained.

Why: a penalty along a *fixed* direction can be met by moving the emotion into
other directions; a probe refitted on the trained model then sees as much of
the emotion as before, or more (Neural Chameleons, arXiv 2512.11949; Obfuscated
Activations, arXiv 2412.09565; retraining the probe recovers detection,
arXiv 2510.21531). With ``RegularizerConfig.refit`` the regulariser re-extracts
each penalised emotion's direction from the *current* model every
``refit.every`` optimizer steps and penalises along both the bundle's (fixed)
direction and the refitted one.

The refitted direction of emotion ``e`` at layer ``l`` (read the way the bundle
was extracted, :mod:`emoreg.vectors.extraction`):

1. A fixed, seeded subset of the built-in corpus: ``texts_per_emotion`` stories
   of ``e`` and as many neutral texts, tokenised once (right padding,
   ``max_length`` tokens).
2. Each text's residual activation at the output of layer ``l`` is averaged
   over its tokens: a story from the bundle's ``token_offset`` on (adapted to
   short texts by :func:`emoreg.vectors.tokens.offset_mask`), a neutral text
   over all its tokens; the first ``sink_tokens`` (attention sinks) never count.
3. ``raw = mean over e's stories - mean over the neutral texts`` (each text
   weighted equally).
4. The top principal components of the neutral texts' *token* activations, as
   many as explain the bundle's ``pca_variance`` (at most ``max_pcs``), are
   projected out and the result is unit-normalised
   (:func:`~emoreg.vectors.extraction.principal_components`,
   :func:`~emoreg.vectors.extraction.unit_directions`).
5. The sign is chosen so that the cosine with the fixed direction is >= 0.

``token_offset``, ``sink_tokens``, ``pca_variance`` and ``max_pcs`` come from
the bundle's recorded extraction settings (:class:`ExtractionConfig`'s defaults
when the bundle records none). Note the baseline differs from the bundle's
story directions (mean over the other emotions' stories): a refit reads one
emotion's stories, so its natural baseline is neutral text.

**Statistics and thresholds of a refitted direction.** Its z units, hinge
threshold (the rule's ``threshold_percentile``, unless an explicit ``threshold``
is given) and 95th percentile (for ``frac_above_p95``) are measured on the same
neutral texts' tokens (after the sink), with the *current* model, at each
refit; mean and std are population statistics (std at least 1e-6), percentiles
are ``torch.quantile``'s linear interpolation. Why the current model and not
the base model: the refitted direction exists only in the current model's
representation, so "how far above neutral text" must be measured in that same
representation; a base-model baseline would count any drift of the whole
representation along the new direction (neutral text included) as emotion, and
would need the base model's activations to be kept. What the refitted row
therefore penalises is emotion *relative to the current model's neutral text*;
a general drift of neutral text is still caught by the fixed direction, whose
statistics stay the bundle's base-model ones.

**The read.** A refit runs the model's body (no LM head) in eval mode under
``torch.no_grad`` (modules' train/eval flags are restored afterwards, also on
errors), with the regulariser's hooks suspended (no penalty, intervention or
metric) and with scoped capture hooks removed in ``finally``. Under several
processes every rank reads every text (a ZeRO-3 forward is collective, so all
ranks must take the same path; the forward then runs to the last layer instead
of stopping after the last one read) and rank 0's results are broadcast, so
all ranks penalise the very same directions. Cost: one forward over
``(number of penalised emotions + 1) * texts_per_emotion`` texts of at most
``max_length`` tokens, plus a ``d x d`` eigendecomposition per layer, every
``every`` steps. Memory: the neutral texts' token activations of one refit
(``texts_per_emotion * max_length * d`` floats per layer) are kept until the
statistics are computed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from emoreg.errors import ConfigError, DataFormatError
from emoreg.regularization.config import RefitConfig
from emoreg.vectors.bundle import EmotionVectors
from emoreg.vectors.capture import run_layers
from emoreg.vectors.corpus import load_builtin_corpus, load_builtin_neutral
from emoreg.vectors.extraction import ExtractionConfig, principal_components, unit_directions
from emoreg.vectors.tokens import content_mask, offset_mask

#: Row label of a neutral text in a refit batch (stories carry their emotion's index).
NEUTRAL_ROW = -1


@dataclass(frozen=True)
class ReadConfig:
    """How texts are averaged and denoised: the bundle's extraction settings."""

    token_offset: int = ExtractionConfig.token_offset
    sink_tokens: int = ExtractionConfig.sink_tokens
    pca_variance: float = ExtractionConfig.pca_variance
    max_pcs: int | None = ExtractionConfig.max_pcs

    @classmethod
    def from_bundle(cls, vectors: EmotionVectors) -> ReadConfig:
        """The settings recorded in ``vectors.extraction`` (the defaults where it records none)."""
        recorded = vectors.extraction or {}
        defaults = cls()
        max_pcs = recorded.get("max_pcs", defaults.max_pcs)
        return cls(token_offset=int(recorded.get("token_offset", defaults.token_offset)),
                   sink_tokens=int(recorded.get("sink_tokens", defaults.sink_tokens)),
                   pca_variance=float(recorded.get("pca_variance", defaults.pca_variance)),
                   max_pcs=None if max_pcs is None else int(max_pcs))


@dataclass(frozen=True)
class RefitDirection:
    """One emotion's refitted direction at one layer and its neutral-text statistics (current model).

    ``threshold_raw`` is the projection at the rule's ``threshold_percentile``; ``cos`` the cosine with the
    fixed (bundle) direction, >= 0 by the choice of sign.
    """

    direction: torch.Tensor  # [d] float32, unit norm
    mean: float
    std: float
    p95: float
    threshold_raw: float
    cos: float

    def to_tensor(self) -> torch.Tensor:
        """``[mean, std, p95, threshold_raw, cos]`` (float64), the statistics as saved in checkpoints."""
        return torch.tensor([self.mean, self.std, self.p95, self.threshold_raw, self.cos], dtype=torch.float64)

    @classmethod
    def from_tensors(cls, direction: torch.Tensor, stats: torch.Tensor) -> RefitDirection:
        mean, std, p95, threshold_raw, cos = (float(v) for v in stats.to(torch.float64))
        return cls(direction.detach().to(torch.float32).cpu(), mean, std, p95, threshold_raw, cos)


@dataclass
class RefitBatch:
    """One padded batch of the refit texts; ``labels[i]`` is the story's emotion index or :data:`NEUTRAL_ROW`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def refit_texts(emotions: Sequence[str], texts_per_emotion: int, seed: int) -> tuple[dict[str, list[str]], list[str]]:
    """The fixed subsets: ``texts_per_emotion`` built-in stories per emotion and as many neutral texts.

    Each subset depends only on the seed and its own name (not on the other emotions listed): stories in
    corpus order, sampled with ``random.Random(f"{seed}:{emotion}")``, neutral texts with
    ``random.Random(f"{seed}:neutral")``. Fewer texts than asked exist: all of them are used.
    """
    try:
        corpus = load_builtin_corpus(list(emotions))
    except DataFormatError as error:
        raise ConfigError(f"refit reads the built-in stories of each penalised emotion: {error}") from None
    stories: dict[str, list[str]] = {}
    for emotion in emotions:
        texts = [story.text for story in corpus.stories if story.emotion == emotion]
        if len(texts) < 2:
            raise ConfigError(f"refit: the built-in corpus has {len(texts)} stories of {emotion!r}; it needs 2")
        stories[emotion] = _sample(texts, texts_per_emotion, f"{seed}:{emotion}")
    neutral = _sample([text.text for text in load_builtin_neutral()], texts_per_emotion, f"{seed}:neutral")
    return stories, neutral


def _sample(texts: list[str], n: int, seed: str) -> list[str]:
    if n >= len(texts):
        return list(texts)
    chosen = sorted(random.Random(seed).sample(range(len(texts)), n))
    return [texts[i] for i in chosen]


def tokenize_refit_texts(tokenizer, stories: Mapping[str, Sequence[str]], neutral: Sequence[str], *,
                         max_length: int, batch_size: int) -> list[RefitBatch]:
    """Tokenise once into right-padded batches of similar lengths (stories and neutral texts mixed).

    Right padding whatever the tokenizer's ``padding_side`` (the attention mask keeps pads out, and no pad
    token is needed); special tokens as the tokenizer adds them; truncated to ``max_length``.
    """
    texts: list[str] = []
    labels: list[int] = []
    for index, emotion_texts in enumerate(stories.values()):
        texts += list(emotion_texts)
        labels += [index] * len(emotion_texts)
    texts += list(neutral)
    labels += [NEUTRAL_ROW] * len(neutral)
    encoded = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    pad_id = next((i for i in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
                   if i is not None), 0)
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        input_ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            input_ids[r, :len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.long)
            attention[r, :len(encoded[i])] = 1
        batches.append(RefitBatch(input_ids, attention, torch.tensor([labels[i] for i in rows], dtype=torch.long)))
    return batches


class _LayerReadings:
    """What one refit read keeps at one layer: per-emotion sums of story means, neutral means and tokens."""

    def __init__(self, emotions: int, d: int, device: torch.device) -> None:
        self.story_sums = torch.zeros(emotions, d, dtype=torch.float64, device=device)
        self.story_counts = torch.zeros(emotions, dtype=torch.float64, device=device)
        self.neutral_sum = torch.zeros(d, dtype=torch.float64, device=device)
        self.neutral_count = 0
        self.neutral_tokens: list[torch.Tensor] = []


class RefitReader:
    """The refit texts of the penalised ``emotions``, tokenised once; :meth:`refit` reads a model with them.

    Args:
        tokenizer: the trained model's tokenizer.
        emotions: the emotions to refit (the penalised ones), each with built-in stories.
        config: the :class:`RefitConfig`.
        settings: token rule and denoising (the bundle's: :meth:`ReadConfig.from_bundle`).
    """

    def __init__(self, tokenizer, emotions: Sequence[str], config: RefitConfig, settings: ReadConfig) -> None:
        if tokenizer is None:
            raise ConfigError("refit needs the model's tokenizer to read its texts; pass tokenizer=...")
        self.emotions = list(emotions)
        self.config = config
        self.settings = settings
        stories, neutral = refit_texts(self.emotions, config.texts_per_emotion, config.seed)
        self.texts = {"stories": stories, "neutral": neutral}
        self.batches = tokenize_refit_texts(tokenizer, stories, neutral, max_length=config.max_length,
                                            batch_size=config.batch_size)
        for batch in self.batches:
            masks = self._masks(batch)
            if not masks.any(dim=-1).all():
                raise ConfigError(f"refit: some texts have no token left after the first {settings.sink_tokens} "
                                  f"(attention sink) at max_length={config.max_length}; raise refit.max_length")

    def _masks(self, batch: RefitBatch) -> torch.Tensor:
        """Positions each row averages: stories from the token offset on, neutral texts after the sink."""
        stories = offset_mask(batch.attention_mask, self.settings.token_offset, self.settings.sink_tokens)
        neutral = content_mask(batch.attention_mask, self.settings.sink_tokens)
        return torch.where((batch.labels == NEUTRAL_ROW).unsqueeze(-1), neutral, stories)

    # ------------------------------------------------------------------ reading
    def read(self, model: nn.Module, layers: Sequence[int]) -> dict[int, _LayerReadings]:
        """Run the refit texts through ``model`` (eval mode, no grad; modes restored) and reduce each layer."""
        readings: dict[int, _LayerReadings] = {}
        stop_early = not _partitioned(model)
        with torch.no_grad(), eval_mode(model):
            for batch in self.batches:
                mask = self._masks(batch)
                neutral_rows = batch.labels == NEUTRAL_ROW

                def reduce(layer: int, hidden: torch.Tensor, mask=mask, batch=batch, neutral_rows=neutral_rows):
                    device = hidden.device
                    x = hidden.to(torch.promote_types(hidden.dtype, torch.float32))
                    if layer not in readings:
                        readings[layer] = _LayerReadings(len(self.emotions), x.shape[-1], device)
                    acc = readings[layer]
                    weights = mask.to(device, x.dtype)
                    means = torch.einsum("btd,bt->bd", x, weights) / weights.sum(-1, keepdim=True)
                    labels = batch.labels.to(device)
                    stories = ~neutral_rows.to(device)
                    acc.story_sums.index_add_(0, labels[stories], means[stories].to(torch.float64))
                    acc.story_counts.index_add_(0, labels[stories],
                                                torch.ones(int(stories.sum()), dtype=torch.float64, device=device))
                    neutral = neutral_rows.to(device)
                    acc.neutral_sum += means[neutral].to(torch.float64).sum(0)
                    acc.neutral_count += int(neutral.sum())
                    acc.neutral_tokens.append(x[neutral][mask.to(device)[neutral]])

                run_layers(model, batch.input_ids, batch.attention_mask, layers, reduce, stop_after_last=stop_early)
        return readings

    def fit(self, readings: Mapping[int, _LayerReadings], fixed: Mapping[int, Mapping[str, torch.Tensor]],
            threshold_percentiles: Mapping[str, float]) -> dict[int, dict[str, RefitDirection]]:
        """Refitted directions and statistics per layer and emotion from one read (see the module docstring).

        ``fixed[layer][emotion]`` is the bundle's direction (for the sign and the cosine);
        ``threshold_percentiles[emotion]`` the percentile of the emotion's hinge threshold.
        """
        out: dict[int, dict[str, RefitDirection]] = {}
        for layer, acc in readings.items():
            tokens = torch.cat(acc.neutral_tokens)
            if tokens.shape[0] < 2 or acc.neutral_count < 1:
                raise DataFormatError("refit: the neutral texts have fewer than 2 tokens after the attention sink")
            finite = bool(torch.isfinite(acc.story_sums).all() and torch.isfinite(tokens).all())
            if _on_any_rank(not finite):  # decided together, so that no rank waits in the broadcast below
                raise DataFormatError(f"refit: non-finite activations (NaN or Inf) at layer {layer} on the refit "
                                      "texts; the model has diverged or needs float32/bf16")
            raw = acc.story_sums / acc.story_counts[:, None] - acc.neutral_sum / acc.neutral_count  # [E, d]
            basis = None
            if self.settings.pca_variance > 0 and self.settings.max_pcs != 0:
                sum_x = tokens.sum(0, dtype=torch.float64)
                sum_xx = (tokens.T @ tokens).to(torch.float64)
                basis, _ = principal_components(sum_x, sum_xx, float(tokens.shape[0]),
                                                pca_variance=self.settings.pca_variance, max_pcs=self.settings.max_pcs)
            unit = unit_directions(raw, basis, layer, "refitted")  # [E, d] float64
            reference = torch.stack([fixed[layer][e].to(unit) for e in self.emotions])
            cos = (unit * (reference / reference.norm(dim=-1, keepdim=True))).sum(-1)
            sign = torch.where(cos < 0, -1.0, 1.0).to(unit)
            unit, cos = unit * sign[:, None], cos * sign
            projections = tokens.to(torch.float64) @ unit.T  # [N, E]
            mean = projections.mean(0)
            std = ((projections - mean) ** 2).mean(0).sqrt().clamp(min=1e-6)
            levels = torch.tensor([[0.95, threshold_percentiles[e] / 100] for e in self.emotions],
                                  dtype=torch.float64, device=unit.device)
            quantiles = torch.stack([torch.quantile(projections[:, j], levels[j]) for j in range(len(self.emotions))])
            packed = torch.cat([unit, torch.stack([mean, std, quantiles[:, 0], quantiles[:, 1], cos], dim=1)], dim=1)
            packed = _broadcast_from_first_rank(packed).cpu()
            out[layer] = {emotion: RefitDirection.from_tensors(packed[j, :-5], packed[j, -5:])
                          for j, emotion in enumerate(self.emotions)}
        return out

    def refit(self, model: nn.Module, layers: Sequence[int], fixed: Mapping[int, Mapping[str, torch.Tensor]],
              threshold_percentiles: Mapping[str, float]) -> dict[int, dict[str, RefitDirection]]:
        """Read ``model`` and return the refitted directions ``{layer: {emotion: RefitDirection}}``."""
        return self.fit(self.read(model, layers), fixed, threshold_percentiles)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module of ``model`` in eval mode; restore each module's own flag afterwards (also on errors)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


def _partitioned(model: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions the model's parameters (then a forward is collective)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _on_any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (every rank must call it)."""
    if not _distributed():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _broadcast_from_first_rank(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank when a process group runs (no-op otherwise)."""
    if _distributed():
        work = tensor.contiguous().clone()
        if dist.get_backend() == "nccl" and work.device.type != "cuda":
            work = work.cuda()
        dist.broadcast(work, src=0)
        return work.to(tensor.device)
    return tensor
