"""A KL anchor to the frozen starting model on unrelated prompts: the emotion-agnostic baseline.

emoreg's regularisers act on emotion directions. To tell whether that specificity is worth anything,
compare them with a regulariser that knows nothing about emotions: keep the model's next-token
distributions close to the starting model's on prompts unrelated to the training data. Per training
micro-batch the objective becomes ``loss + coef * KL``, where ``KL`` is the token mean, over the
selected tokens of one batch of *anchor examples*, of

* ``direction="forward"``: ``KL(reference || model) = sum_v p_ref(v) (log p_ref(v) - log p_model(v))``, or
* ``direction="reverse"``: ``KL(model || reference) = sum_v p_model(v) (log p_model(v) - log p_ref(v))``,

at every position whose next token is selected. How that term is scaled for gradient accumulation
is the integration's job (:mod:`emoreg.integrations.kl_anchor`).

Anchor examples (:mod:`emoreg.regularization.anchor_examples`) are chats, whose reply tokens are
scored (a chat ending with a user turn gets a greedy reply of at most ``max_new_tokens`` tokens written
once by the reference when training starts, with ``complete_with_base``), or plain texts, whose tokens
after the first are scored. ``examples: builtin`` is ``emoreg/data/datasets/heldout_requests.jsonl`` (60
ordinary requests); the ``expression`` eval suite and the demo read those same requests, so a run anchored
on them is anchored on that suite's prompts: use another file to compare on that suite.

The reference is the model as it was when :class:`KLAnchor` was built: for a PEFT model the same model
with its adapters disabled (no copy), otherwise a frozen deep copy (eval mode, ``requires_grad`` False).
Reference logits are computed under ``torch.no_grad``; the trained model's forward runs in its current
(training) mode with gradients, on the *unwrapped* module (DDP/DeepSpeed wrappers are not called a second
time; its parameters receive the sum of both forwards' gradients before any reducer hook fires). An emoreg
:class:`~emoreg.regularization.regularizer.Regularizer` attached to the same model is suspended during the
anchor forwards and the reply generation, so it penalises, steers and measures the task data only.

Anchor batches are drawn from an endless stream: pass ``p`` over the examples is a permutation seeded by
``(seed, p)``, and call ``c`` on rank ``r`` of ``W`` takes stream batch ``c * W + r``, so every run, rank
and resume sees the same batches.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emoreg.errors import ConfigError
from emoreg.regularization.anchor_examples import (
    BUILTIN,
    AnchorBatch,
    AnchorExample,
    builtin_examples_path,
    chat_prompt_ids,
    collate,
    encode_example,
    load_anchor_examples,
)
from emoreg.regularization.config import to_plain

logger = logging.getLogger(__name__)

DIRECTIONS = ("forward", "reverse")
#: The logged metric: mean KL (nats per selected token) of the anchor batches since the last log.
METRIC = "emoreg/kl_anchor"


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class KLAnchorConfig:
    """Settings of the KL anchor (see the module docstring).

    Attributes:
        coef: weight of the KL term (> 0); the per-micro-batch objective is ``loss + coef * KL``.
        examples: a JSONL file of anchor examples, or ``"builtin"``.
        batch_size: anchor examples per training micro-batch (one extra forward of the reference and one of
            the model each).
        max_length: tokens per anchor example at most.
        complete_with_base: let the reference write the replies of chats that end with a user turn.
        max_new_tokens: length limit of those replies (greedy decoding).
        direction: ``"forward"`` = KL(reference || model), ``"reverse"`` = KL(model || reference).
        seed: seed of the order in which anchor examples are drawn (and of the reply generation).
    """

    coef: float
    examples: str
    batch_size: int = 4
    max_length: int = 256
    complete_with_base: bool = True
    max_new_tokens: int = 64
    direction: str = "forward"
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "kl_anchor") -> KLAnchorConfig:
        """Build from a mapping; unknown keys (with a close match) and missing required keys are errors."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping of KL-anchor settings, got {type(data).__name__}")
        fields = dataclasses.fields(cls)
        valid = [f.name for f in fields]
        unknown = [key for key in data if key not in valid]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"{source}: unknown key(s) {', '.join(hints)}; valid keys are {sorted(valid)}")
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"{source}: missing required key(s) {missing}; e.g. {{coef: 0.1, examples: builtin}} "
                              f"(examples: a JSONL file of anchor examples, or 'builtin')")
        return cls(**{key: to_plain(value) for key, value in data.items()})

    @classmethod
    def coerce(cls, value: KLAnchorConfig | Mapping[str, Any]) -> KLAnchorConfig:
        return value if isinstance(value, cls) else cls.from_dict(value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def examples_path(self) -> Path:
        """The anchor-example file (the built-in one for ``"builtin"``)."""
        return builtin_examples_path() if self.examples == BUILTIN else Path(self.examples)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field and the expected value."""
        if not _is_number(self.coef) or not math.isfinite(self.coef) or self.coef <= 0:
            raise ConfigError(f"kl_anchor.coef must be a positive number (the weight of the KL term), "
                              f"got {self.coef!r}")
        if not isinstance(self.examples, str) or not self.examples:
            raise ConfigError(f"kl_anchor.examples must be a JSONL file of anchor examples or {BUILTIN!r}, "
                              f"got {self.examples!r}")
        if self.examples != BUILTIN and not Path(self.examples).is_file():
            raise ConfigError(f"kl_anchor.examples: {self.examples} is not a file; give a JSONL file of anchor "
                              f"examples (rows with 'messages' or 'text') or {BUILTIN!r}")
        for name, low in (("batch_size", 1), ("max_length", 2), ("max_new_tokens", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ConfigError(f"kl_anchor.{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.complete_with_base, bool):
            raise ConfigError(f"kl_anchor.complete_with_base must be true or false, got {self.complete_with_base!r}")
        if self.direction not in DIRECTIONS:
            close = difflib.get_close_matches(str(self.direction), DIRECTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"kl_anchor.direction must be one of {list(DIRECTIONS)} (forward: KL(reference || "
                              f"model), reverse: KL(model || reference)), got {self.direction!r}{hint}")
        if not _is_int(self.seed):
            raise ConfigError(f"kl_anchor.seed must be an integer, got {self.seed!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------- the KL


def token_kl(logits: torch.Tensor, reference_logits: torch.Tensor, positions: torch.Tensor,
             direction: str = "forward") -> torch.Tensor:
    """Mean over the True ``positions`` of the KL between next-token distributions (float32 at least).

    ``forward``: ``KL(reference || model)``; ``reverse``: ``KL(model || reference)``. Shapes
    ``[B, K, V]``, ``[B, K, V]`` and ``[B, K]``.
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_model = F.log_softmax(logits[positions].to(dtype), dim=-1)
    log_reference = F.log_softmax(reference_logits[positions].to(dtype), dim=-1)
    log_p, log_q = (log_reference, log_model) if direction == "forward" else (log_model, log_reference)
    p = log_p.exp()
    # 0 * log(0 / q) is 0: a token the first distribution rules out (logit -inf) adds nothing, not NaN
    per_token = torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=dtype, device=p.device)).sum(dim=-1)
    return per_token.mean()


# ---------------------------------------------------------------------------------------------- the anchor


class KLAnchor:
    """The KL term ``coef * KL`` between a frozen reference and the trained model on anchor examples.

    Args:
        model: the model that will be trained (bare, PEFT, DDP or DeepSpeed-wrapped). Its current weights
            are the reference: copied now (full fine-tune) or its adapter-disabled self (PEFT).
        tokenizer: its tokenizer (with a chat template for chat examples).
        config: a :class:`KLAnchorConfig` or a mapping.
        examples: the anchor examples (default: read from ``config.examples``).
        autocast: a context-manager factory both anchor forwards run under (the trainer's mixed precision),
            or None.

    Call :meth:`prepare` once before training (it places the reference, writes the missing replies and
    tokenises), then :meth:`loss` once per training micro-batch.

    Raises:
        ConfigError: a model whose parameters DeepSpeed ZeRO-3 has partitioned (no copy can be made), a
            prompt-learning PEFT adapter, or an emoreg Regularizer attached while the copy is made.
        DataFormatError: bad anchor examples.
    """

    def __init__(self, model: nn.Module, tokenizer, config: KLAnchorConfig | Mapping[str, Any], *,
                 examples: Sequence[AnchorExample] | None = None,
                 autocast: Callable[[], AbstractContextManager] | None = None) -> None:
        from emoreg.models.layout import unwrap_model

        self.config = KLAnchorConfig.coerce(config)
        self.examples = list(examples) if examples is not None else load_anchor_examples(
            self.config.examples_path, complete_with_base=self.config.complete_with_base)
        if not self.examples:
            raise ConfigError("kl_anchor: no anchor examples")
        self.tokenizer = tokenizer
        self.autocast = autocast
        self.policy = unwrap_model(model)
        if any(hasattr(p, "ds_id") for p in self.policy.parameters()):
            raise ConfigError("kl_anchor: the model's parameters are partitioned by DeepSpeed ZeRO-3, so no frozen "
                              "reference can be built from them; use ZeRO-1/2, DDP or a single device")
        self.peft_model = _peft_model(model)
        if self.peft_model is not None:
            _check_peft_adapter(self.peft_model)
            self.reference: nn.Module | None = None
        else:
            self.reference = frozen_copy(self.policy)
        self.rank, self.world_size = 0, 1
        self.calls = 0
        self._pairs: list[tuple[list[int], list[int]]] | None = None
        self._pad_id = 0
        self._kl_sum: torch.Tensor | None = None
        self._kl_count = 0

    # ------------------------------------------------------------------ setup
    @property
    def prepared(self) -> bool:
        return self._pairs is not None

    def prepare(self, model: nn.Module | None = None) -> KLAnchor:
        """Place the reference next to the model, write the missing replies with it, tokenise (idempotent).

        ``model`` is the model as the trainer holds it now (it may be wrapped by then); it must be the model
        the anchor was built for.
        """
        from emoreg.vectors.activations import pad_token_id

        if model is not None:
            self._check_policy(model)
        if self.reference is not None:
            match_placement(self.reference, self.policy)
        for example in self.examples:  # a context that cannot fit fails before any reply is generated
            if example.needs_reply:
                chat_prompt_ids(self.tokenizer, example, self.config.max_length)
        self._write_replies()
        self._pad_id = pad_token_id(self.tokenizer)
        self._pairs = [encode_example(self.tokenizer, example, self.config.max_length) for example in self.examples]
        return self

    def _write_replies(self) -> None:
        from emoreg.models.generation import ReplyGenerationConfig, generate_replies

        missing = [i for i, example in enumerate(self.examples) if example.needs_reply]
        if not missing:
            return
        settings = ReplyGenerationConfig(max_new_tokens=self.config.max_new_tokens)
        with torch.no_grad(), regularizer_suspended(self.policy), self._reference_context():
            generator = self.reference if self.reference is not None else self.peft_model
            replies = generate_replies(generator, self.tokenizer, [list(self.examples[i].context) for i in missing],
                                       settings, seed=self.config.seed, batch_size=self.config.batch_size)
        empty = []
        for index, reply in zip(missing, replies, strict=True):
            if reply.strip():
                self.examples[index] = dataclasses.replace(self.examples[index], reply=reply)
            else:
                empty.append(index)
        if empty:
            logger.warning("kl_anchor: the reference wrote an empty reply to %d anchor chat(s) (first: %s); they "
                           "are left out", len(empty), self.examples[empty[0]].where)
            dropped = set(empty)
            self.examples = [example for i, example in enumerate(self.examples) if i not in dropped]
        if not self.examples:
            raise ConfigError("kl_anchor: no anchor example is left: the reference wrote an empty reply to every "
                              "chat; give chats with assistant replies or text rows")
        logger.info("kl_anchor: the reference wrote %d anchor replies", len(missing) - len(empty))

    # ------------------------------------------------------------------ batches
    def example_indices(self, batch_index: int) -> list[int]:
        """The examples of stream batch ``batch_index`` (see the module docstring)."""
        n, size = len(self.examples), self.config.batch_size
        start = batch_index * size
        indices = []
        for position in range(start, start + size):
            epoch, offset = divmod(position, n)
            indices.append(int(self._permutation(epoch)[offset]))
        return indices

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(self.config.seed) * 1_000_003 + int(epoch))
        return torch.randperm(len(self.examples), generator=generator)

    def batch(self, batch_index: int) -> AnchorBatch:
        """Stream batch ``batch_index``, tokenised and padded (CPU)."""
        if self._pairs is None:
            raise ConfigError("kl_anchor: call prepare() before taking anchor batches (attach_kl_anchor does it "
                              "when training starts)")
        return collate([self._pairs[i] for i in self.example_indices(batch_index)], self._pad_id)

    def next_batch_index(self) -> int:
        """The stream batch the next :meth:`loss` call takes on this rank."""
        return self.calls * self.world_size + self.rank

    # ------------------------------------------------------------------ the term
    def loss(self, model: nn.Module) -> torch.Tensor:
        """``coef * KL`` on the next anchor batch, differentiable with respect to ``model``'s parameters."""
        self._check_policy(model)
        batch = self.batch(self.next_batch_index()).to(_device(self.policy))
        self.calls += 1
        kl = self.kl(batch)
        detached = kl.detach().float()
        self._kl_sum = detached if self._kl_sum is None else self._kl_sum + detached.to(self._kl_sum.device)
        self._kl_count += 1
        return self.config.coef * kl

    def kl(self, batch: AnchorBatch) -> torch.Tensor:
        """The token-mean KL of ``batch`` (already on the model's device) between the reference and the model."""
        from emoreg.vectors.activations import position_ids_from_mask

        keep = batch.positions.any(dim=0).nonzero().flatten()
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                  "position_ids": position_ids_from_mask(batch.attention_mask), "use_cache": False}
        autocast = self.autocast() if self.autocast is not None else nullcontext()
        with regularizer_suspended(self.policy), autocast:
            with torch.no_grad(), self._reference_context():
                reference = self.reference if self.reference is not None else self.policy
                reference_logits = kept_logits(reference, inputs, keep)
            logits = kept_logits(self.policy, inputs, keep)
        return token_kl(logits, reference_logits, batch.positions[:, keep], self.config.direction)

    @contextmanager
    def _reference_context(self) -> Iterator[None]:
        """For PEFT: the policy with its adapters disabled, in eval mode (modes restored on exit)."""
        if self.peft_model is None:
            yield
            return
        modes = [(module, module.training) for module in self.peft_model.modules()]
        try:
            with self.peft_model.disable_adapter():
                self.peft_model.eval()
                yield
        finally:
            for module, training in modes:
                module.training = training

    # ------------------------------------------------------------------ metrics and state
    def metrics(self, *, reset: bool = True) -> dict[str, float]:
        """``{METRIC: mean KL}`` over the :meth:`loss` calls since the last read, averaged across ranks.

        Empty when no call happened on any rank. Every rank must call this at the same points (it all-reduces
        when a process group runs).
        """
        from emoreg.regularization.metrics import all_reduce_sum

        total = float(self._kl_sum) if self._kl_sum is not None else 0.0
        summed = all_reduce_sum(torch.tensor([total, float(self._kl_count)], dtype=torch.float64))
        if reset:
            self._kl_sum, self._kl_count = None, 0
        if float(summed[1]) == 0:
            return {}
        return {METRIC: float(summed[0] / summed[1])}

    def state_dict(self) -> dict[str, Any]:
        """The position in the anchor stream (enough to resume the same batch order)."""
        return {"calls": self.calls}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = int(state.get("calls", 0))

    def _check_policy(self, model: nn.Module) -> None:
        from emoreg.models.layout import unwrap_model

        if unwrap_model(model) is not self.policy:
            raise ConfigError("kl_anchor: called with a different model than the one the anchor was built for "
                              f"({type(unwrap_model(model)).__name__}); build one KLAnchor per trained model")

    def __repr__(self) -> str:
        kind = "adapter-disabled policy" if self.peft_model is not None else "frozen copy"
        return (f"KLAnchor(coef={self.config.coef}, direction={self.config.direction!r}, "
                f"examples={len(self.examples)}, reference={kind})")


# ---------------------------------------------------------------------------------------------- helpers


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with ``requires_grad`` False and the class's own ``forward``.

    An instance-level ``forward`` is dropped from the copy: TRL's fused LM head (``add_fused_lm_head``) closes
    over the *original* model's forward, so the copy would silently run the trained weights, and
    Accelerate's mixed-precision wrapper is replaced by the anchor's own ``autocast``.
    """
    from emoreg.regularization.regularizer import attached_regularizer

    if attached_regularizer(model) is not None:
        raise ConfigError("kl_anchor: an emoreg Regularizer is attached to the model (training is under way); "
                          "build the KL anchor before training starts")
    reference = copy.deepcopy(model)
    reference.__dict__.pop("forward", None)
    reference.eval()
    reference.requires_grad_(False)
    return reference


@torch.no_grad()
def match_placement(reference: nn.Module, model: nn.Module) -> None:
    """Give each parameter and buffer of ``reference`` (a copy of ``model``) the device and dtype of its
    counterpart in ``model`` now (the trainer may have moved or cast the model since the copy was made)."""
    for kind in ("named_parameters", "named_buffers"):
        targets = dict(getattr(model, kind)())
        for name, tensor in getattr(reference, kind)():
            target = targets.get(name)
            if target is not None and (tensor.device != target.device or tensor.dtype != target.dtype):
                tensor.data = tensor.data.to(device=target.device, dtype=target.dtype)


def kept_logits(model: nn.Module, inputs: dict[str, Any], keep: torch.Tensor) -> torch.Tensor:
    """``model``'s logits ``[B, K, V]`` at the sequence positions ``keep`` (only those are projected when the
    forward takes ``logits_to_keep``)."""
    import inspect

    try:
        accepts = "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        accepts = False
    if accepts:
        return model(**inputs, logits_to_keep=keep).logits
    return model(**inputs).logits[:, keep]


@contextmanager
def regularizer_suspended(model: nn.Module) -> Iterator[None]:
    """Suspend an emoreg Regularizer attached to ``model`` (:meth:`Regularizer.suspended
    <emoreg.regularization.regularizer.Regularizer.suspended>`): it neither penalises, edits nor measures the
    forwards run inside the block, and its batch context is left as the task forward set it."""
    from emoreg.regularization.regularizer import attached_regularizer

    regularizer = attached_regularizer(model)
    with regularizer.suspended() if regularizer is not None else nullcontext():
        yield


def _peft_model(model: nn.Module) -> nn.Module | None:
    """The PEFT ``PeftModel`` inside ``model``'s wrappers, or None (never imports peft)."""
    from emoreg.models.layout import wrapper_chain

    peft = sys.modules.get("peft")
    peft_class = getattr(peft, "PeftModel", None) if peft is not None else None
    if peft_class is None:
        return None
    return next((module for module in wrapper_chain(model) if isinstance(module, peft_class)), None)


def _check_peft_adapter(peft_model: nn.Module) -> None:
    config = peft_model.peft_config[peft_model.active_adapter]
    if config.is_prompt_learning or getattr(config, "is_adaption_prompt", False):
        kind = getattr(config.peft_type, "value", config.peft_type)
        raise ConfigError(f"kl_anchor: PEFT {kind} adapters are not supported (the anchor runs the base model's "
                          f"forward, which skips virtual tokens); use LoRA-style adapters")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


__all__ = ["DIRECTIONS", "METRIC", "KLAnchor", "KLAnchorConfig", "frozen_copy", "kept_logits", "match_placement",
           "regularizer_suspended", "token_kl"]
