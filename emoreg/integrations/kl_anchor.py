"""Add the KL anchor (:mod:`emoreg.regularization.kl_anchor`) to a transformers/TRL trainer.

``attach_kl_anchor(trainer, {"coef": 0.1, "examples": "builtin"})`` after building the trainer (SFT, DPO,
GRPO or any ``transformers.Trainer`` whose ``training_step`` calls ``self.compute_loss``). It builds the
reference right away (a frozen copy of the model as it is now, or for PEFT the adapter-disabled model),
so a resumed run anchors to the same starting model; when training starts it writes the missing anchor
replies with the reference and wraps the trainer's ``compute_loss`` and ``log``; both wrappers are removed
when training ends and when ``train()`` raises.

**The objective.** Each training micro-batch ``i`` (``model.training`` and gradients enabled; evaluation
and no-grad passes are untouched) adds ``coef * KL_i`` to its loss, ``KL_i`` being the token-mean KL of
the next anchor batch. The term goes through the trainer's own loss scaling: when the trainer divides the
micro-batch loss by the accumulation count (``loss_is_scaled_for_ga`` false: DPO, and SFT without
``num_items_in_batch``), the term is added as is; when the trainer's loss is already normalised over the
whole accumulation window (``loss_is_scaled_for_ga`` true: GRPO, and SFT/Trainer with
``num_items_in_batch``, derived exactly as ``Trainer.training_step`` does), the term is added divided by
``trainer.current_gradient_accumulation_steps``. Either way one optimizer step over the ``G`` micro-batches
of its accumulation window (``G`` = ``current_gradient_accumulation_steps``, also for a short last window)
follows the gradient of

    L_task + coef * (1/G) * sum_{i=1..G} KL_i

where ``L_task`` is whatever the trainer optimises for that window; DDP/DeepSpeed average it over the
``R`` ranks (each rank takes its own anchor batches): ``coef / (R G) * sum_{r,i} KL_{r,i}``. fp16 loss
scaling applies to the term with the rest of the loss. The logged ``loss`` includes the term;
``emoreg/kl_anchor`` logs the KL alone (mean since the last log, averaged across ranks).

Not supported (a :class:`~emoreg.errors.ConfigError` when attaching): DeepSpeed ZeRO-3 (a full
fine-tune's parameters are partitioned, so no reference copy can be made; PEFT under ZeRO-3 is refused as
well because it is untested) and FSDP (the anchor forward bypasses the FSDP wrapper).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from emoreg.errors import ConfigError
from emoreg.integrations.callback import is_training_log
from emoreg.regularization.kl_anchor import AnchorExample, KLAnchor, KLAnchorConfig
from emoreg.version import __version__

logger = logging.getLogger(__name__)

STATE_FILE = "emoreg_kl_anchor_state.json"


class KLAnchorCallback(TrainerCallback):
    """Prepares the :class:`KLAnchor` when training starts and scopes its trainer wrappers to training.

    Built by :func:`attach_kl_anchor`, which registers it first among the trainer's callbacks. Saves the
    anchor-stream position next to each checkpoint (``emoreg_kl_anchor_state.json``) and restores it on
    resume, so a resumed run takes the same anchor batches as an uninterrupted one.
    """

    def __init__(self, anchor: KLAnchor, trainer: Any) -> None:
        self.anchor = anchor
        self.trainer = trainer
        self._saved: dict[str, Any] | None = None

    @property
    def installed(self) -> bool:
        """Whether the ``compute_loss`` and ``log`` wrappers are in place."""
        return self._saved is not None

    # ------------------------------------------------------------------ lifecycle
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.uninstall()
        self.anchor.rank, self.anchor.world_size = int(args.process_index), int(args.world_size)
        self.anchor.prepare(model)
        self._restore(args, state)
        self.install()
        logger.info("emoreg: %r", self.anchor)

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            state_file = {"anchor": self.anchor.state_dict(), "config": self.anchor.config.to_dict(),
                          "library_version": __version__}
            (checkpoint / STATE_FILE).write_text(json.dumps(state_file, indent=2) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        self.uninstall()

    def _restore(self, args, state) -> None:
        if state.global_step <= 0 or not args.output_dir:
            return
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
        if path.is_file():
            self.anchor.load_state_dict(json.loads(path.read_text()).get("anchor", {}))
            logger.info("emoreg: resumed the KL-anchor stream at call %d from %s", self.anchor.calls, path)

    # ------------------------------------------------------------------ wrappers
    def install(self) -> None:
        """Wrap the trainer's ``compute_loss`` (adds the KL term) and ``log`` (adds the metric)."""
        if self.installed:
            return
        trainer = self.trainer
        saved = {name: trainer.__dict__.get(name, _ABSENT) for name in ("compute_loss", "log")}
        original_compute_loss, original_log = trainer.compute_loss, trainer.log
        parameters = inspect.signature(original_compute_loss).parameters
        anchor = self.anchor

        def compute_loss(model, inputs, *args, **kwargs):
            result = original_compute_loss(model, inputs, *args, **kwargs)
            if not (model.training and torch.is_grad_enabled()):
                return result
            num_items_in_batch = _argument(parameters, "num_items_in_batch", args, kwargs)
            term = anchor.loss(model) / accumulation_divisor(trainer, num_items_in_batch)
            if isinstance(result, tuple):
                return (result[0] + term.to(result[0].device),) + tuple(result[1:])
            return result + term.to(result.device)

        def log(logs: dict[str, float], *args, **kwargs):
            if is_training_log(logs):
                logs.update(anchor.metrics())
            return original_log(logs, *args, **kwargs)

        trainer.compute_loss = compute_loss
        trainer.log = log
        self._saved = saved

    def uninstall(self) -> None:
        """Restore the trainer's ``compute_loss`` and ``log`` as they were before :meth:`install` (safe to repeat)."""
        if self._saved is None:
            return
        for name, value in self._saved.items():
            if value is _ABSENT:
                self.trainer.__dict__.pop(name, None)
            else:
                setattr(self.trainer, name, value)
        self._saved = None


_ABSENT = object()


def accumulation_divisor(trainer: Any, num_items_in_batch: Any) -> int:
    """What the KL term is divided by so that it is scaled like the trainer's loss (see the module docstring).

    1 when ``Trainer.training_step`` itself divides the loss by the accumulation count, else the current
    accumulation count; ``loss_is_scaled_for_ga`` is read, or derived as ``training_step`` derives it.
    """
    scaled = getattr(trainer, "loss_is_scaled_for_ga", None)
    if scaled is None:
        scaled = (bool(getattr(trainer, "model_accepts_loss_kwargs", False)) and num_items_in_batch is not None) \
            or getattr(trainer, "compute_loss_func", None) is not None
    if not scaled:
        return 1
    steps = getattr(trainer, "current_gradient_accumulation_steps", None) or trainer.args.gradient_accumulation_steps
    return int(steps)


def _argument(parameters, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
    """The value of ``name`` in a ``compute_loss(model, inputs, *args, **kwargs)`` call."""
    if name in kwargs:
        return kwargs[name]
    names = [p for p in parameters if p not in ("self", "model", "inputs")]
    if name in names and names.index(name) < len(args):
        return args[names.index(name)]
    return None


def check_supported(trainer: Any) -> None:
    """Refuse DeepSpeed ZeRO-3 and FSDP (see the module docstring)."""
    plugin = getattr(getattr(getattr(trainer, "accelerator", None), "state", None), "deepspeed_plugin", None)
    stage = getattr(plugin, "zero_stage", None) if plugin is not None else None
    if stage == 3:
        raise ConfigError("kl_anchor does not support DeepSpeed ZeRO-3: a full fine-tune's parameters are "
                          "partitioned, so no frozen reference copy can be made, and PEFT under ZeRO-3 is untested "
                          "and refused too; use ZeRO-1/2 (or DDP) for a run with the KL anchor")
    if getattr(trainer, "is_fsdp_enabled", False):
        raise ConfigError("kl_anchor does not support FSDP: the anchor forward runs the unwrapped model, which "
                          "FSDP has sharded; use DDP or DeepSpeed ZeRO-1/2")


def attach_kl_anchor(trainer: Any, config: KLAnchorConfig | dict[str, Any], *,
                     examples: Sequence[AnchorExample] | None = None) -> KLAnchorCallback:
    """Add the KL anchor to a built trainer (see the module docstring); returns its callback.

    The reference is made now, from ``trainer.model`` as it is (call this before training, and before
    loading other weights into the model). ``examples``: anchor examples already read from
    ``config.examples`` (default: read them now).
    """
    config = KLAnchorConfig.coerce(config)
    check_supported(trainer)
    from transformers import ProcessorMixin

    tokenizer = trainer.processing_class
    if isinstance(tokenizer, ProcessorMixin):
        tokenizer = tokenizer.tokenizer
    if tokenizer is None:
        raise ConfigError("kl_anchor needs the trainer's tokenizer (processing_class) to tokenise anchor examples")
    accelerator = getattr(trainer, "accelerator", None)
    anchor = KLAnchor(trainer.model, tokenizer, config, examples=examples,
                      autocast=accelerator.autocast if accelerator is not None else None)
    callback = KLAnchorCallback(anchor, trainer)
    trainer.callback_handler.callbacks.insert(0, callback)
    original_train = trainer.train

    def train(*args, **kwargs):
        try:
            return original_train(*args, **kwargs)
        finally:
            callback.uninstall()

    trainer.train = train
    return callback


__all__ = ["STATE_FILE", "KLAnchorCallback", "accumulation_divisor", "attach_kl_anchor", "check_supported"]
