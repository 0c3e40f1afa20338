"""Regularise with no gradient through the reader: a frozen copy of the base model reads emotions.

The gradient penalty (:class:`~emoreg.regularization.regularizer.Regularizer`) sends ``dR/dtheta`` through the
probe, and models trained that way learn to hide the signal from it (the project's research notes,
*Training against a probe*: Neural Chameleons, Obfuscated Activations, the Obfuscation Atlas). The tools here
never differentiate through the reader:

* :class:`FrozenEmotionReader` holds a **separate, frozen** reference model (eval mode, ``requires_grad``
  False, read under ``torch.inference_mode``), its tokenizer, an :class:`~emoreg.vectors.bundle.EmotionVectors`
  bundle, target emotions with weights and one layer (default: the bundle's default layer). It reads texts as
  the mean z-score over their tokens (the attention sink excluded, as everywhere in emoreg; z against the
  bundle's base-model statistics).
* :class:`EmotionReadingReward` turns readings into a TRL reward function for GRPO/RLOO:
  ``-sum_e w_e * relu(z_e - threshold)`` per completion. The policy is pushed only through the policy-gradient
  signal of the reward; no activation of the policy is ever read.
* Data screening for SFT/DPO (persona-vectors data flagging) lives in :mod:`emoreg.train.screening`.

What is read:

* a **plain-string** completion (or text) alone, tokenised with the tokenizer's special tokens, every token but
  the first ``sink_tokens`` averaged: the same reading as ``emoreg scan``
  (:func:`emoreg.vectors.validation.mean_projections`);
* a **conversational** completion in context: the prompt messages rendered with the chat template (ending with
  the generation prompt) followed by the reply text, averaged over the reply tokens only
  (:func:`emoreg.vectors.activations.encode_pairs` / :func:`~emoreg.vectors.activations.read_token_states`).

A text with no token left to average (an empty completion, or a one-token string whose only token is the
sink) reads as NaN; the reward gives it 0 (no penalty).
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from emoreg.errors import ConfigError
from emoreg.vectors.bundle import EmotionVectors

#: The reward name recipes use for :class:`EmotionReadingReward` (``trainer.reward_funcs: [emotion_reading]``).
EMOTION_READING = "emotion_reading"


def check_reader_settings(
    vectors: EmotionVectors, emotions: Mapping[str, float] | Sequence[str], layer: int | None = None
) -> tuple[dict[str, float], int]:
    """Check target emotions and layer against ``vectors`` (no model needed); return ``(weights, layer)``.

    Raises:
        ConfigError: no emotions, an emotion the bundle lacks (with a close match), a weight that is not a
            positive finite number, a layer the bundle lacks, or a bundle without base-model statistics.
    """
    if isinstance(emotions, str):
        emotions = [emotions]
    weights = dict(emotions) if isinstance(emotions, Mapping) else {str(e): 1.0 for e in emotions}
    if not weights:
        raise ConfigError("emotions is empty; name at least one emotion of the bundle, e.g. {desperate: 1.0}")
    for name, weight in weights.items():
        if name not in vectors.emotions:
            close = difflib.get_close_matches(str(name), vectors.emotions, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"emotions: {name!r} is not in the bundle{hint}; it has {vectors.emotions}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight <= 0:
            raise ConfigError(f"emotions.{name}: the weight must be a positive number, got {weight!r}")
    weights = {name: float(weight) for name, weight in weights.items()}
    layer = vectors.default_layer if layer is None else int(layer)
    if layer not in vectors.layers:
        raise ConfigError(f"layer {layer} is not in the bundle; it has layers {vectors.layers}")
    if not vectors.has_stats:
        raise ConfigError("the bundle has no base-model statistics, so readings cannot be z-scores; "
                          "use a bundle extracted with neutral text (the default bundle has them)")
    return weights, layer


class FrozenEmotionReader:
    """A frozen reference model that reads target emotions of texts as mean z-scores (see module doc).

    Args:
        model: the reference model. With ``copy=True`` (default) the reader keeps a deep copy, so that the
            model passed in (which may be the policy) is never frozen or shared; pass ``copy=False`` only for
            a model loaded for the reader alone (as :meth:`from_pretrained` does).
        tokenizer: the reference model's tokenizer (copied with the model).
        vectors: the emotion-vector bundle (z-scores use its base-model statistics).
        emotions: target emotions, ``{name: weight}`` (weights > 0) or a list (weight 1 each).
        layer: the decoder layer to read (default: the bundle's default layer).
        batch_size: texts per forward pass.
        copy: deep-copy ``model`` and ``tokenizer`` (default) or freeze them in place.
    """

    def __init__(self, model: nn.Module, tokenizer, vectors: EmotionVectors,
                 emotions: Mapping[str, float] | Sequence[str], *, layer: int | None = None, batch_size: int = 8,
                 copy: bool = True) -> None:
        from emoreg.vectors.capture import check_layers

        self.weights, self.layer = check_reader_settings(vectors, emotions, layer)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if copy:
            model, tokenizer = _deepcopy(model), _deepcopy(tokenizer)
        model.eval()
        model.requires_grad_(False)
        check_layers(model, [self.layer])
        vectors.check_model(model)
        self.model = model
        self.tokenizer = tokenizer
        self.vectors = vectors
        self.batch_size = int(batch_size)
        self.sink_tokens = int(vectors.extraction.get("sink_tokens", 1))
        self._indices = torch.tensor([vectors.emotion_index(e) for e in self.weights], dtype=torch.long)
        self._weight_vector = torch.tensor(list(self.weights.values()), dtype=torch.float32)

    @classmethod
    def from_pretrained(cls, ref: str, vectors: EmotionVectors, emotions: Mapping[str, float] | Sequence[str], *,
                        layer: int | None = None, dtype: str | torch.dtype = "float32",
                        device: str | torch.device = "cpu", batch_size: int = 8) -> FrozenEmotionReader:
        """Load a fresh frozen copy of ``ref`` (``"default"``, a hub id, a directory or a .gguf) as the reader.

        The emotions and layer are checked against the bundle before the model loads.
        """
        from emoreg.models.loading import load_model_and_tokenizer

        check_reader_settings(vectors, emotions, layer)
        model, tokenizer = load_model_and_tokenizer(ref, dtype=dtype, device=device)
        return cls(model, tokenizer, vectors, emotions, layer=layer, batch_size=batch_size, copy=False)

    # ----------------------------------------------------------------------------------------- properties

    @property
    def emotions(self) -> list[str]:
        """The target emotions, in the column order of every reading."""
        return list(self.weights)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> FrozenEmotionReader:
        """Move the frozen model (e.g. to the trainer's device); returns ``self``."""
        self.model.to(device)
        return self

    def check_independent(self, policy: nn.Module) -> None:
        """Raise if the frozen model shares a parameter tensor with ``policy`` (it must be a separate copy)."""
        mine = {p.data_ptr() for p in self.model.parameters() if p.numel()}
        shared = [name for name, p in policy.named_parameters() if p.numel() and p.data_ptr() in mine]
        if shared:
            raise ConfigError(f"the frozen reader shares {len(shared)} parameter(s) with the policy (e.g. "
                              f"{shared[0]}); it must read with a separate frozen copy of the base model")
        if any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError("the frozen reader's model has parameters with requires_grad=True")

    # ----------------------------------------------------------------------------------------- reading

    @torch.inference_mode()
    def read_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """z-scores ``[N, E]`` (columns: :attr:`emotions`) of each text read alone; NaN rows have no token."""
        from emoreg.models.layout import model_context_length
        from emoreg.vectors.validation import mean_projections

        texts = list(texts)
        out = torch.full((len(texts), len(self.weights)), float("nan"))
        if not texts:
            return out
        limit = model_context_length(self.model, self.tokenizer) or 2048
        lengths = [min(len(ids), limit) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        readable = [i for i, n in enumerate(lengths) if n > self.sink_tokens]
        if not readable:
            return out
        with _right_padding(self.tokenizer):  # mean_projections passes no position ids: pad after the text
            projections = mean_projections(
                self.model, self.tokenizer, self.vectors, [texts[i] for i in readable], layers=[self.layer],
                sink_tokens=self.sink_tokens, batch_size=self.batch_size, max_length=limit, progress=False,
            )[self.layer]
        out[torch.tensor(readable)] = self._z(projections)
        return out

    @torch.inference_mode()
    def read_replies(self, contexts: Sequence[Sequence[Mapping[str, str]] | str],
                     replies: Sequence[str]) -> torch.Tensor:
        """z-scores ``[N, E]`` of each reply read after its context, averaged over the reply tokens only.

        ``contexts[i]`` is a list of messages (rendered with the chat template, ending with the generation
        prompt) or an already rendered prompt string. NaN rows: replies with no token.
        """
        from emoreg.models.generation import render_conversation
        from emoreg.vectors.activations import encode_pairs, pad_token_id, read_token_states

        if len(contexts) != len(replies):
            raise ConfigError(f"{len(contexts)} contexts but {len(replies)} replies")
        out = torch.full((len(replies), len(self.weights)), float("nan"))
        if not replies:
            return out
        prompts = [c if isinstance(c, str) else render_conversation(self.tokenizer, list(c)) for c in contexts]
        pairs = encode_pairs(self.tokenizer, prompts, list(replies))
        states = read_token_states(self.model, pairs, [self.layer], pad_id=pad_token_id(self.tokenizer),
                                   batch_size=self.batch_size, sink_tokens=self.sink_tokens)
        z = self._z(self.vectors.project(states.response[self.layer], self.layer).cpu())
        readable = states.response_tokens > 0
        out[readable] = z[readable]
        return out

    def read_targets(self, contexts: Sequence[Sequence[Mapping[str, str]] | str | None],
                     texts: Sequence[str]) -> torch.Tensor:
        """z-scores ``[N, E]`` of ``texts``: read alone where ``contexts[i]`` is None (:meth:`read_texts`),
        else after that context, reply tokens only (:meth:`read_replies`)."""
        if len(contexts) != len(texts):
            raise ConfigError(f"{len(contexts)} contexts but {len(texts)} texts")
        out = torch.full((len(texts), len(self.weights)), float("nan"))
        plain = [i for i, context in enumerate(contexts) if context is None]
        chats = [i for i, context in enumerate(contexts) if context is not None]
        if plain:
            out[torch.tensor(plain)] = self.read_texts([texts[i] for i in plain])
        if chats:
            out[torch.tensor(chats)] = self.read_replies([contexts[i] for i in chats], [texts[i] for i in chats])
        return out

    def read_completions(self, prompts: Sequence[Any], completions: Sequence[Any]) -> torch.Tensor:
        """z-scores ``[N, E]`` of TRL completions: strings alone, conversational ones after their prompt.

        A conversational completion (a list of messages) is read as its last message's content after the
        prompt messages and any earlier messages of the completion.
        """
        if len(prompts) != len(completions):
            raise ConfigError(f"{len(prompts)} prompts but {len(completions)} completions")
        targets = [(None, c) if isinstance(c, str) else _conversational(prompts[i], c, i)
                   for i, c in enumerate(completions)]
        return self.read_targets([context for context, _ in targets], [text for _, text in targets])

    # ----------------------------------------------------------------------------------------- scores

    def weighted(self, z: torch.Tensor) -> torch.Tensor:
        """``sum_e w_e * z_e`` per row ``[N]`` (NaN stays NaN)."""
        return z @ self._weight_vector

    def excess(self, z: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
        """``sum_e w_e * relu(z_e - threshold)`` per row ``[N]`` (NaN stays NaN)."""
        return (z - float(threshold)).clamp(min=0) @ self._weight_vector

    def _z(self, projections: torch.Tensor) -> torch.Tensor:
        return self.vectors.standardize(projections.float(), self.layer)[:, self._indices]

    def __repr__(self) -> str:
        return (f"FrozenEmotionReader(model={type(self.model).__name__}, emotions={self.weights}, "
                f"layer={self.layer})")


class EmotionReadingReward:
    """TRL reward ``-sum_e w_e * relu(z_e - threshold)`` per completion, read by a :class:`FrozenEmotionReader`.

    ``threshold`` is in z units of the bundle's base-model statistics (default 0: any reading above the base
    model's mean on neutral text costs reward; 1.64 lets the base model's own 95th percentile pass free).
    Completions with no token to read get 0. The values are plain floats computed under
    ``torch.inference_mode`` on a separate frozen model, so no gradient reaches the policy through the reader:
    only the policy-gradient signal of the reward does.

    Has TRL's signature ``f(prompts, completions, **kwargs) -> list[float]`` and a ``__name__`` (TRL logs
    ``rewards/<name>/mean``); when TRL passes ``log_metric``, the mean z of each emotion over the batch is
    logged as ``<name>/<emotion>/z``. :attr:`last_z` keeps the latest readings ``[N, E]``.
    """

    def __init__(self, reader: FrozenEmotionReader, *, threshold: float = 0.0, name: str = EMOTION_READING) -> None:
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
            raise ConfigError(f"threshold must be a finite number (z units), got {threshold!r}")
        self.reader = reader
        self.threshold = float(threshold)
        self.__name__ = name
        self.last_z: torch.Tensor | None = None

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        z = self.reader.read_completions(prompts, completions)
        self.last_z = z
        penalty = self.reader.excess(z, self.threshold)
        rewards = [0.0 if math.isnan(v) else -v for v in penalty.tolist()]
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for column, emotion in enumerate(self.reader.emotions):
                values = z[:, column]
                values = values[~values.isnan()]
                if values.numel():
                    log_metric(f"{self.__name__}/{emotion}/z", float(values.mean()))
        return rewards

    def __repr__(self) -> str:
        return f"EmotionReadingReward({self.reader!r}, threshold={self.threshold}, name={self.__name__!r})"


# ---------------------------------------------------------------------------------------------- helpers


def _deepcopy(obj: Any) -> Any:
    return copy.deepcopy(obj)


@contextmanager
def _right_padding(tokenizer):
    side = getattr(tokenizer, "padding_side", "right")
    tokenizer.padding_side = "right"
    try:
        yield
    finally:
        tokenizer.padding_side = side


def _conversational(prompt: Any, completion: Any, index: int) -> tuple[Any, str]:
    """``(context, reply)`` of a conversational completion: earlier messages as context, the last one read."""
    if isinstance(completion, Mapping):
        completion = [completion]
    if not isinstance(completion, list) or not completion or not all(isinstance(m, Mapping) for m in completion):
        raise ConfigError(f"completion {index}: expected a string or a non-empty list of messages, "
                          f"got {type(completion).__name__}")
    reply = completion[-1].get("content", "")
    if not isinstance(reply, str):
        raise ConfigError(f"completion {index}: the last message's content must be a string, got "
                          f"{type(reply).__name__}")
    if isinstance(prompt, str):
        if len(completion) > 1:
            raise ConfigError(f"completion {index}: a plain-string prompt with a multi-message completion")
        return prompt, reply
    if not isinstance(prompt, list):
        raise ConfigError(f"prompt {index}: expected a string or a list of messages, got {type(prompt).__name__}")
    return [dict(m) for m in prompt] + [dict(m) for m in completion[:-1]], reply


__all__ = ["EMOTION_READING", "EmotionReadingReward", "FrozenEmotionReader", "check_reader_settings"]
