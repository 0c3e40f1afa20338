"""The :class:`EmoRegCallback` for transformers/TRL trainers, and :func:`attach`.

Two ways to use it with any TRL trainer (SFT, DPO, GRPO, RLOO, KTO, reward):

* ``emoreg.attach(trainer, vectors, config)`` (**recommended**): one line after
  building the trainer. It registers the callback *first* and wraps the
  trainer's ``log`` so the ``emoreg/`` metrics reach every ``report_to``
  backend and ``trainer_state.json``; it reads the trainer's exact
  gradient-accumulation count (also for a short last window) and fp16 loss
  scale; and it removes the hooks even when ``train()`` raises.
* ``callbacks=[EmoRegCallback(vectors, config)]``: the same regularisation and
  gradients. Metrics are merged in ``on_log``, which the transformers Trainer
  calls after reporters registered earlier by ``report_to`` have already sent
  the step's logs: those backends miss them (the console, ``log_history`` and
  later callbacks get them). If ``train()`` raises, call ``callback.detach()``.

The penalty reaches the gradient through the trainer's own backward pass
(:mod:`emoreg.regularization.gradient`), scaled by
``coef / gradient_accumulation_steps * loss_scale``: per micro-batch the
objective is ``loss + coef * R``, consistent with gradient accumulation; ``R``
is a token mean per micro-batch and rank, and DDP/DeepSpeed average it over ranks.

With adaptive directions (``config.refit``) the callback refits at the start of
training and after every ``refit.every``-th optimizer step, on every rank; the
refitted directions are saved beside each checkpoint (:data:`REFIT_FILE`) and a
resumed run continues with them. The tokenizer comes from the ``tokenizer``
argument, else the trainer's ``processing_class`` (or ``tokenizer``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from emoreg.errors import ConfigError
from emoreg.models.provenance import STATE_FILE, read_state, write_state
from emoreg.regularization.config import RegularizerConfig
from emoreg.regularization.regularizer import Regularizer
from emoreg.vectors.bundle import EmotionVectors
from emoreg.version import __version__

logger = logging.getLogger(__name__)

REFIT_FILE = "emoreg_refit.safetensors"


class EmoRegCallback(TrainerCallback):
    """Regularise emotion-vector activations during ``trainer.train()``.

    Args:
        vectors: an :class:`EmotionVectors` bundle, a bundle path or ``"default"``.
        config: a :class:`RegularizerConfig` or a dict.
        trainer: set by :func:`attach`; enables exact gradient accumulation on a
            short last window, fp16 loss scales and full metric reporting.
        tokenizer: the model's tokenizer, needed with ``config.refit``; by default the
            trainer's ``processing_class`` (the tokenizer of a processor).
    """

    def __init__(self, vectors: EmotionVectors | str, config: RegularizerConfig | dict[str, Any], *,
                 trainer: Any = None, tokenizer: Any = None) -> None:
        self.vectors = EmotionVectors.from_pretrained(vectors) if isinstance(vectors, (str, Path)) else vectors
        self.config = RegularizerConfig.coerce(config)
        self.trainer = trainer
        self.tokenizer = tokenizer
        self.regularizer: Regularizer | None = None
        self._micro_in_epoch = 0
        self._steps_in_epoch: int | None = None
        self._optimizer = None
        self._warned_reporters = False
        self._restored: dict[str, Any] | None = None

    # ------------------------------------------------------------------ lifecycle
    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        if model is None:
            raise ConfigError("EmoRegCallback needs the model (it is passed by the transformers Trainer)")
        self._check_precision(args)
        self.detach()
        tokenizer = self._tokenizer(kwargs) if self.config.refit is not None else None
        self.regularizer = Regularizer(model, self.vectors, self.config, inject="autograd", tokenizer=tokenizer)
        if self.config.total_steps is None and state.max_steps and state.max_steps > 0:
            self.regularizer.total_steps = int(state.max_steps)
        self.regularizer.set_step(state.global_step)
        self._restore_from_checkpoint(args, state)
        self._optimizer = optimizer
        try:
            self._steps_in_epoch = len(train_dataloader) if train_dataloader is not None else None
        except TypeError:
            self._steps_in_epoch = None
        self.regularizer.attach()
        if self.regularizer.refit_enabled and not self.regularizer.refit_ready:
            self.regularizer.refit(step=state.global_step)  # on every rank
        logger.info("emoreg: regularising %s at layers %s (%s)", list(self.config.emotions),
                    self.regularizer.layers, self.config.mode)

    def _tokenizer(self, kwargs: dict[str, Any]) -> Any:
        """The tokenizer for refit texts: the argument, else the trainer's processing class (or tokenizer)."""
        candidates = [self.tokenizer, kwargs.get("processing_class"), kwargs.get("tokenizer")]
        if self.trainer is not None:
            candidates += [getattr(self.trainer, "processing_class", None), getattr(self.trainer, "tokenizer", None)]
        for candidate in candidates:
            if candidate is None:
                continue
            inner = getattr(candidate, "tokenizer", None)  # a processor (multimodal) wraps its tokenizer
            return inner if inner is not None and not callable(getattr(candidate, "encode", None)) else candidate
        raise ConfigError("refit needs the model's tokenizer and none is available: give the trainer a "
                          "processing_class, or pass EmoRegCallback(..., tokenizer=tokenizer)")

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._micro_in_epoch = 0

    def on_step_begin(self, args, state, control, **kwargs):
        if self.regularizer is None:
            return
        self.regularizer.set_step(state.global_step)
        self.regularizer.gradient_scale = self._loss_scale(args) / self._accumulation_steps(args)

    def on_substep_end(self, args, state, control, **kwargs):
        self._micro_in_epoch += 1

    def on_step_end(self, args, state, control, **kwargs):
        # The schedule position stays at the step just taken until the next step begins, so the
        # logged coef is the one that step used.
        self._micro_in_epoch += 1
        if self.regularizer is not None and self.regularizer.refit_due(state.global_step):
            self.regularizer.refit(step=state.global_step)  # on every rank: collective under ZeRO-3

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.trainer is not None or self.regularizer is None or logs is None or not is_training_log(logs):
            return
        metrics = self.regularizer.metrics()
        logs.update(metrics)
        if state.log_history:
            state.log_history[-1].update(metrics)
        reporters = [r for r in (args.report_to or []) if r not in ("none", None)]
        if reporters and not self._warned_reporters:
            logger.warning("emoreg: with callbacks=[EmoRegCallback(...)] the report_to backends %s registered before "
                           "it do not receive the emoreg/ metrics; use emoreg.attach(trainer, vectors, config)",
                           reporters)
            self._warned_reporters = True

    def on_save(self, args, state, control, **kwargs):
        if self.regularizer is None or not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            write_checkpoint_files(checkpoint, self.regularizer, self.vectors, self.config)

    def on_train_end(self, args, state, control, **kwargs):
        if self.regularizer is not None and state.is_world_process_zero and args.output_dir:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            write_checkpoint_files(Path(args.output_dir), self.regularizer, self.vectors, self.config)
        self.detach()

    def detach(self) -> None:
        """Remove the hooks (safe to call at any time)."""
        if self.regularizer is not None:
            self.regularizer.detach()

    # ------------------------------------------------------------------ scaling
    def _accumulation_steps(self, args) -> int:
        if self.trainer is not None and getattr(self.trainer, "current_gradient_accumulation_steps", None):
            return int(self.trainer.current_gradient_accumulation_steps)
        steps = int(args.gradient_accumulation_steps)
        if self._steps_in_epoch:
            remaining = self._steps_in_epoch - self._micro_in_epoch
            if 0 < remaining < steps:
                return remaining
        return steps

    def _loss_scale(self, args) -> float:
        """The fp16 GradScaler's current scale (1 without one); fp16 without a readable scaler is refused."""
        scaler = None
        if self.trainer is not None:
            scaler = getattr(getattr(self.trainer, "accelerator", None), "scaler", None)
        if scaler is None and self._optimizer is not None:
            scaler = getattr(self._optimizer, "scaler", None)
        if scaler is None:
            if getattr(args, "fp16", False):
                raise ConfigError("emoreg: fp16 training without a readable GradScaler; the penalty could not "
                                  "follow the loss scale. Train in bf16 or fp32")
            return 1.0
        scale = scaler.get_scale() if hasattr(scaler, "get_scale") else None
        if scale is None or not math.isfinite(float(scale)):
            raise ConfigError("emoreg: cannot read the fp16 loss scale; train in bf16 or fp32")
        return float(scale)

    def _check_precision(self, args) -> None:
        if not getattr(args, "fp16", False):
            return
        deepspeed = bool(getattr(args, "deepspeed", None)) or getattr(args, "deepspeed_plugin", None) is not None
        if deepspeed:
            raise ConfigError("emoreg does not support fp16 with DeepSpeed (its dynamic loss scale is applied inside "
                              "the engine, where emoreg cannot follow it); use bf16, which needs no loss scaling")

    # ------------------------------------------------------------------ resume
    def _restore_from_checkpoint(self, args, state) -> None:
        if state.global_step <= 0 or not args.output_dir:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        saved = read_state(checkpoint)
        if saved is not None:
            self.regularizer.load_state_dict(saved.get("regularizer", {}))
            self._restored = saved
            logger.info("emoreg: resumed the schedule at step %d from %s", state.global_step, checkpoint / STATE_FILE)
            self._restore_refit(checkpoint, saved.get("regularizer", {}).get("refit"))

    def _restore_refit(self, checkpoint: Path, saved: dict[str, Any] | None) -> None:
        if not self.regularizer.refit_enabled:
            return
        file = checkpoint / REFIT_FILE
        if saved is None or not file.is_file():
            logger.warning("emoreg: %s has no refitted directions; refitting now", checkpoint)
            return
        from safetensors.torch import load_file

        try:
            self.regularizer.load_refit_state_dict(load_file(str(file)), count=int(saved.get("count", 1)),
                                                   step=saved.get("step"))
        except ConfigError as error:  # the run's config changed: its penalised emotions or layers differ
            logger.warning("emoreg: not resuming the refitted directions of %s (%s); refitting now", file, error)
            return
        logger.info("emoreg: resumed the refitted directions of step %s from %s", saved.get("step"), file)


def write_checkpoint_files(directory: Path, regularizer: Regularizer, vectors: EmotionVectors,
                           config: RegularizerConfig) -> None:
    """Save the schedule state (``emoreg_state.json``; with ``refit``, the refitted directions in
    :data:`REFIT_FILE`), the config and the bundle's identity (``emoreg_config.json``) next to a checkpoint."""
    state = {"regularizer": regularizer.state_dict(), "library_version": __version__}
    refit = regularizer.refit_state_dict()
    if refit:
        from safetensors.torch import save_file

        save_file(refit, str(directory / REFIT_FILE), metadata={"library_version": __version__})
        state["regularizer"]["refit"]["file"] = REFIT_FILE
    write_state(directory, state)
    config.save_pretrained(directory, layers=regularizer.layers, vectors=vectors)


def is_training_log(logs: dict[str, Any]) -> bool:
    """Training logs, not evaluation or final summary logs (which every rank also sends)."""
    return not any(str(k).startswith(("eval_", "test_", "train_runtime")) for k in logs)


def attach(trainer: Any, vectors: EmotionVectors | str, config: RegularizerConfig | dict[str, Any], *,
           tokenizer: Any = None) -> EmoRegCallback:
    """Add emoreg to a built trainer, with full integration (see the module docstring); returns the callback.

    ``tokenizer`` (for ``config.refit``) defaults to the trainer's ``processing_class``.
    """
    callback = EmoRegCallback(vectors, config, trainer=trainer, tokenizer=tokenizer)
    handler = trainer.callback_handler
    handler.callbacks.insert(0, callback)
    original_log = trainer.log
    original_train = trainer.train

    def log(logs: dict[str, float], *args, **kwargs):
        if callback.regularizer is not None and callback.regularizer.attached and is_training_log(logs):
            logs.update(callback.regularizer.metrics())
        return original_log(logs, *args, **kwargs)

    def train(*args, **kwargs):
        try:
            return original_train(*args, **kwargs)
        finally:
            callback.detach()

    trainer.log = log
    trainer.train = train
    return callback


