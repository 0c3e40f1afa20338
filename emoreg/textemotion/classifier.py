"""A text-level emotion classifier: multinomial logistic regression on sentence embeddings.

``p(label | text) = softmax(W @ embed(text) + b)`` with ``W`` ``[C, 384]`` and
``b`` ``[C]``, where the labels are the emotions and, optionally, a last
``"neutral"`` class for emotion-free text. It is fitted with an L2 penalty on
``W`` (full-batch L-BFGS from zero, a convex problem, so the fit is
deterministic). With a neutral class, an emotion's probability is absolute: plain
helpful text gets low probabilities for every emotion rather than being forced
onto the least unlikely one. The embeddings come from
:class:`~emoreg.textemotion.embedder.SentenceEmbedder` (all-MiniLM-L6-v2), never
from the model under study, so the scores measure the emotion a reply's *text*
expresses.

On disk a classifier is a directory with ``classifier.safetensors`` (``weight``,
``bias``, float32) and ``classifier.json`` (format, labels, emotions, embedder,
training settings and validation numbers). Loading reads safetensors and JSON
only. ``TextEmotionClassifier.from_pretrained("default")`` loads the one shipped
in ``emoreg/data/textemotion`` (24 emotions + neutral, trained by
``scripts/train_text_emotion.py`` on emoreg's own story corpus and neutral dialogues).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from emoreg.errors import BundleError, ConfigError
from emoreg.textemotion.embedder import DEFAULT_EMBEDDER, SentenceEmbedder
from emoreg.textemotion.sentences import split_sentences
from emoreg.utils.tensorfile import TensorDirectory
from emoreg.version import __version__

FORMAT = "emoreg-textemotion"
FORMAT_VERSION = 1
TENSORS_FILE = "classifier.safetensors"
METADATA_FILE = "classifier.json"
DEFAULT_CLASSIFIER = "default"
NEUTRAL = "neutral"
SCORE_REDUCTIONS = ("max", "mean", "text")
#: The classifier directory's two files (saving and loading them).
CLASSIFIER_FILES = TensorDirectory(TENSORS_FILE, METADATA_FILE, format=FORMAT, format_version=FORMAT_VERSION,
                                   kind="text-emotion classifier", what="a text-emotion classifier")


def is_classifier_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a saved classifier (``classifier.json`` with the classifier format)."""
    return CLASSIFIER_FILES.holds(path)


def default_classifier_path() -> Path:
    """Directory of the classifier shipped with the package."""
    return Path(str(resources.files("emoreg") / "data" / "textemotion"))


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    l2: float = 1e-3,
    max_iter: int = 300,
    tolerance: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit multinomial logistic regression; return ``(weight [C, D], bias [C])`` as float32.

    Minimises ``mean cross-entropy + l2 / 2 * ||weight||^2`` (the bias is not
    penalised) with full-batch L-BFGS in float64, starting from zero, until the
    largest gradient entry is below ``tolerance`` or after ``max_iter``
    iterations. The objective is strictly convex for ``l2 > 0``, so the result
    does not depend on a seed or on the order of the rows.
    """
    if features.ndim != 2:
        raise ConfigError(f"features must be [N, D], got shape {tuple(features.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ConfigError(f"labels must be [N] with N = {features.shape[0]}, got shape {tuple(labels.shape)}")
    if features.shape[0] == 0:
        raise ConfigError("cannot fit a classifier on zero examples")
    if l2 <= 0:
        raise ConfigError(f"l2 must be positive (it makes the fit unique), got {l2}")
    labels = labels.long()
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ConfigError(f"labels must lie in [0, {num_classes}), got range "
                          f"[{int(labels.min())}, {int(labels.max())}]")
    x = features.detach().to(torch.float64)
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach().float(), bias.detach().float()


class TextEmotionClassifier:
    """Probabilities of emotions for texts, from a linear softmax layer on sentence embeddings.

    ``labels`` name the rows of ``weight``: the emotions, optionally followed by
    ``"neutral"``. :attr:`emotions` excludes the neutral class, and the
    probabilities returned for emotions come from the softmax over all labels,
    so with a neutral class a row sums to ``1 - p(neutral)``.

    The embedder is loaded on first use (``embedder`` may be a loaded
    :class:`SentenceEmbedder`, ``"default"`` or a local model directory), so
    inspecting a classifier's metadata costs nothing.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        labels: Sequence[str],
        *,
        embedder: SentenceEmbedder | str = DEFAULT_EMBEDDER,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        labels = list(labels)
        if weight.ndim != 2 or weight.shape[0] != len(labels):
            raise ConfigError(f"weight must be [labels={len(labels)}, D], got shape {tuple(weight.shape)}")
        if bias.shape != (len(labels),):
            raise ConfigError(f"bias must be [{len(labels)}], got shape {tuple(bias.shape)}")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"label names must be unique, got {labels}")
        if NEUTRAL in labels[:-1]:
            raise ConfigError(f"{NEUTRAL!r} must be the last label, got {labels}")
        self.weight = weight.detach().float().cpu()
        self.bias = bias.detach().float().cpu()
        self.labels = labels
        self.emotions = [label for label in labels if label != NEUTRAL]
        self.has_neutral = labels[-1] == NEUTRAL
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._embedder = embedder

    @property
    def embedder(self) -> SentenceEmbedder:
        """The sentence embedder (loaded on first access)."""
        if not isinstance(self._embedder, SentenceEmbedder):
            self._embedder = SentenceEmbedder(self._embedder)
        if self._embedder.dim != self.weight.shape[1]:
            raise ConfigError(
                f"the embedder gives {self._embedder.dim}-dimensional embeddings but the classifier expects "
                f"{self.weight.shape[1]}"
            )
        return self._embedder

    def emotion_index(self, emotion: str) -> int:
        """Column of ``emotion`` in :meth:`predict_proba`, or a :class:`ConfigError` listing the known ones."""
        try:
            return self.emotions.index(emotion)
        except ValueError:
            raise ConfigError(f"emotion {emotion!r} is not one the classifier knows; it has {self.emotions}") from None

    def predict_proba_embeddings(self, embeddings: torch.Tensor, *, include_neutral: bool = False) -> torch.Tensor:
        """Probabilities ``[N, E]`` (``[N, E + 1]`` with ``include_neutral`` and a neutral class, neutral last)
        for precomputed embeddings ``[N, D]``."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.weight.shape[1]:
            raise ConfigError(f"embeddings must be [N, {self.weight.shape[1]}], got shape {tuple(embeddings.shape)}")
        proba = torch.softmax(embeddings.float() @ self.weight.T + self.bias, dim=-1)
        return proba if include_neutral or not self.has_neutral else proba[:, :-1]

    def predict_proba(self, texts: Sequence[str], *, include_neutral: bool = False) -> torch.Tensor:
        """Probabilities ``[N, E]`` of each whole text, columns in the order of :attr:`emotions`
        (plus ``neutral`` last with ``include_neutral``)."""
        return self.predict_proba_embeddings(self.embedder.embed(texts), include_neutral=include_neutral)

    def sentence_proba(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """For each text, the probabilities ``[sentences, E]`` of its sentences (the whole text when it has none)."""
        if isinstance(texts, str):
            raise TypeError("sentence_proba() takes a sequence of texts, not a single string; wrap it in a list")
        pieces = [split_sentences(text) or [text] for text in texts]
        proba = self.predict_proba([sentence for sentences in pieces for sentence in sentences])
        return list(torch.split(proba, [len(sentences) for sentences in pieces]))

    def score(self, texts: Sequence[str], emotion: str, *, reduce: str = "max") -> list[float]:
        """How strongly each text expresses ``emotion``: the probability of ``emotion`` for its sentences,
        reduced by ``reduce``: ``"max"`` (default: the most ``emotion``-laden sentence), ``"mean"`` over
        sentences, or ``"text"`` (the whole text embedded at once).

        Replies mix instructions with emotional asides, and a whole-reply embedding
        dilutes the aside, so the per-sentence maximum is the better measure of
        how much a reply *sounds* like ``emotion``.
        """
        column = self.emotion_index(emotion)
        if reduce not in SCORE_REDUCTIONS:
            raise ConfigError(f"reduce must be one of {SCORE_REDUCTIONS}, got {reduce!r}")
        if reduce == "text":
            return self.predict_proba(texts)[:, column].tolist()
        per_text = self.sentence_proba(texts)
        if reduce == "max":
            return [float(p[:, column].max()) for p in per_text]
        return [float(p[:, column].mean()) for p in per_text]

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``classifier.safetensors`` and ``classifier.json`` to directory ``path`` atomically.

        ``path`` must be new, an empty directory or an existing classifier directory (anything else is refused
        with a :class:`~emoreg.errors.ConfigError`)."""
        meta = {**self.metadata, "format": FORMAT, "format_version": FORMAT_VERSION,
                "library_version": __version__, "labels": self.labels, "emotions": self.emotions,
                "embedding_dim": int(self.weight.shape[1])}
        return CLASSIFIER_FILES.save(path, {"weight": self.weight, "bias": self.bias}, meta)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path = DEFAULT_CLASSIFIER, *, embedder: SentenceEmbedder | str = DEFAULT_EMBEDDER,
    ) -> TextEmotionClassifier:
        """Load a classifier directory, or ``"default"`` for the shipped one."""
        path = default_classifier_path() if str(name_or_path) == DEFAULT_CLASSIFIER else Path(name_or_path)
        meta_path, meta = CLASSIFIER_FILES.read_metadata(path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise BundleError(f"{meta_path}: not an emoreg text-emotion classifier (field 'format' must be {FORMAT!r})")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise BundleError(f"{meta_path}: format version {version!r} is not supported by emoreg {__version__} "
                              f"(supports up to {FORMAT_VERSION}); upgrade emoreg")
        labels = meta.get("labels")
        if not isinstance(labels, list) or not all(isinstance(e, str) for e in labels):
            raise BundleError(f"{meta_path}: field 'labels' must be a list of names")
        tensors = CLASSIFIER_FILES.read_tensors(path, required=("weight", "bias"))
        try:
            return cls(tensors["weight"], tensors["bias"], labels, embedder=embedder, metadata=meta)
        except ConfigError as exc:
            raise BundleError(f"{path}: {exc}") from None
