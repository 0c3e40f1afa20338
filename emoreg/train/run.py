"""Run a recipe: build the TRL config, data, model (+ LoRA) and trainer, attach emoreg, train, save.

Order matters for fast failures: the recipe is validated when loaded, then the TRL config is built
(value errors), the data and the ``kl_anchor`` examples are read and checked, the vector bundle is loaded
and the frozen-reader settings (``data.screen``, ``frozen_reader``) are checked against it, and only then
any model: first the frozen reader's copy of the base model (screening, or the ``emotion_reading``
reward), then the policy. With a ``kl_anchor`` block, the KL anchor is attached last (after emoreg), and
its frozen reference is copied from the policy as loaded.

Outputs, in ``output_dir`` and in every ``checkpoint-N`` directory: the trainer's own files, the
regulariser's ``emoreg_config.json`` and ``emoreg_state.json`` (when emoreg is enabled) and
``emoreg_train.json`` = ``{"base_model", "recipe", "vectors", "regularizer", "screening", "frozen_reader",
"emoreg_version"}`` (``screening``: what :mod:`emoreg.train.screening` dropped; ``frozen_reader``: the
``emotion_reading`` reward's settings; each null when unused). :mod:`emoreg.models.provenance` writes and
reads these files.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from emoreg.errors import ConfigError
from emoreg.models.provenance import STATE_FILE, write_train_info
from emoreg.train.data import load_rows
from emoreg.train.recipe import Recipe, trl_config_class
from emoreg.train.rewards import resolve_reward
from emoreg.version import __version__

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run reports: where it saved, how far it got, its losses and wall time."""

    output_dir: str
    global_step: int
    train_loss: float | None
    final_loss: float | None
    seconds: float
    log_history: list[dict[str, Any]]


# ---------------------------------------------------------------------------------------------- pieces


def build_training_args(recipe: Recipe):
    """The TRL config (``trl.SFTConfig`` / ``DPOConfig`` / ``GRPOConfig``) of the recipe.

    ``bf16`` defaults to whether a CUDA device with bfloat16 exists (TRL's own default, bf16 on, fails
    on a CPU-only machine) unless the recipe sets ``bf16`` or ``fp16``.
    """
    import torch

    config_class = trl_config_class(recipe.trainer.type)
    args = dict(recipe.trainer.args)
    args["output_dir"] = recipe.output_dir
    args["seed"] = recipe.seed
    names = {f.name for f in dataclasses.fields(config_class)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    args[checkpointing] = recipe.model.gradient_checkpointing
    if "bf16" not in args and "fp16" not in args:
        args["bf16"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if recipe.trainer.type == "grpo" and recipe.trainer.reward_weights is not None:
        args["reward_weights"] = list(recipe.trainer.reward_weights)
    try:
        return config_class(**args)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"trainer.args: trl.{config_class.__name__} rejected the settings: {exc}") from None


def build_peft_config(recipe: Recipe):
    """A ``peft.LoraConfig`` for the model, or None when LoRA is off."""
    lora = recipe.model.lora
    if not lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, task_type="CAUSAL_LM")


def vectors_identity(ref: str, vectors) -> dict[str, Any]:
    """The bundle's reference and fingerprint (:meth:`EmotionVectors.content_hash
    <emoreg.vectors.bundle.EmotionVectors.content_hash>`, as eval results record it), plus the model it was
    made for."""
    fingerprint = vectors.model_fingerprint
    return {
        "ref": ref,
        "fingerprint": vectors.content_hash(),
        "model_fingerprint": fingerprint.to_dict() if fingerprint else None,
        "emotions": list(vectors.emotions),
        "default_layer": vectors.default_layer,
    }


def train_info(recipe: Recipe, vectors_info: dict[str, Any] | None, *, screening: dict[str, Any] | None = None,
               frozen_reader: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``emoreg_train.json``."""
    regularizer = recipe.regularizer_config()
    return {
        "base_model": recipe.model.ref,
        "recipe": recipe.to_dict(),
        "vectors": vectors_info,
        "regularizer": regularizer.to_dict() if regularizer is not None else None,
        "screening": screening,
        "frozen_reader": frozen_reader,
        "emoreg_version": __version__,
    }


def check_reader_blocks(recipe: Recipe, bundle) -> None:
    """Check ``data.screen`` and ``frozen_reader`` emotions and layers against the bundle (no model loads)."""
    from emoreg.regularization.frozen_reader import check_reader_settings

    for where, spec in (("data.screen", recipe.data.screen), ("frozen_reader", recipe.frozen_reader)):
        if spec is None:
            continue
        try:
            check_reader_settings(bundle, dict(spec.emotions), spec.layer)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc} (bundle {recipe.emoreg.vectors})") from None


def load_frozen_reader(recipe: Recipe, spec, bundle):
    """A :class:`FrozenEmotionReader` on a fresh frozen copy of the recipe's base model (``model.ref``)."""
    from emoreg.regularization.frozen_reader import FrozenEmotionReader

    return FrozenEmotionReader.from_pretrained(recipe.model.ref, bundle, dict(spec.emotions), layer=spec.layer,
                                               dtype=recipe.model.dtype, batch_size=spec.batch_size)


def screen_training_rows(recipe: Recipe, rows: list[dict[str, Any]], bundle) -> tuple[list[dict[str, Any]], dict]:
    """Apply ``data.screen``: read every row's target with the frozen base model and drop those above max_z."""
    from emoreg.train.screening import screen_rows

    spec = recipe.data.screen
    reader = load_frozen_reader(recipe, spec, bundle)  # freed when this returns
    result = screen_rows(rows, recipe.trainer.type, reader, max_z=spec.max_z, mode=spec.mode)
    logger.warning("data.screen: dropped %d of %d rows whose frozen-base reading (%s at layer %d) is above "
                   "max_z=%s", len(result.dropped), len(rows), result.field, result.layer, spec.max_z)
    return result.kept, result.to_dict()


def build_rewards(recipe: Recipe, bundle=None) -> list:
    """The GRPO reward functions: built-ins, ``module:function``, and ``emotion_reading`` (frozen reader)."""
    from emoreg.regularization.frozen_reader import EMOTION_READING, EmotionReadingReward

    rewards = []
    for name in recipe.trainer.reward_funcs:
        if name == EMOTION_READING:
            spec = recipe.frozen_reader
            reader = load_frozen_reader(recipe, spec, bundle)
            rewards.append(EmotionReadingReward(reader, threshold=spec.threshold, name=EMOTION_READING))
        else:
            rewards.append(resolve_reward(name))
    return rewards


class TrainInfoCallback(TrainerCallback):
    """Write ``emoreg_train.json`` into every checkpoint and, at the end, into the output directory."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            write_train_info(checkpoint, self.info)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_train_info(Path(args.output_dir), self.info)


def missing_checkpoint_files(checkpoint: Path, *, needs_emoreg: bool) -> list[str]:
    """What a checkpoint directory lacks to be resumed from (empty: complete).

    The transformers Trainer writes ``trainer_state.json`` after the weights, optimizer and RNG state, and the
    emoreg callback writes ``emoreg_state.json`` after that (``on_save``): a run killed during a save leaves a
    ``checkpoint-N`` without them.
    """
    missing = [] if (checkpoint / "trainer_state.json").is_file() else ["trainer_state.json"]
    if needs_emoreg and not (checkpoint / STATE_FILE).is_file():
        missing.append(STATE_FILE)
    return missing


def resolve_resume(recipe: Recipe) -> str | None:
    """The checkpoint to resume from: None, the last complete one in output_dir (``true``) or the given path.

    With ``true``, incomplete checkpoints (a run killed while saving) are skipped with a warning naming them;
    a given path must be complete.
    """
    resume = recipe.resume_from_checkpoint
    if resume is None or resume is False:
        return None
    needs_emoreg = bool(recipe.emoreg.enabled)
    if resume is True:
        output = Path(recipe.output_dir)
        numbered = []
        if output.is_dir():
            for child in output.iterdir():
                match = re.fullmatch(r"checkpoint-(\d+)", child.name)
                if match and child.is_dir():
                    numbered.append((int(match.group(1)), child))
        if not numbered:
            raise ConfigError(f"resume_from_checkpoint=true, but {recipe.output_dir} has no checkpoint-N directory")
        skipped = []
        for _, checkpoint in sorted(numbered, reverse=True):
            missing = missing_checkpoint_files(checkpoint, needs_emoreg=needs_emoreg)
            if not missing:
                if skipped:
                    logger.warning("emoreg: skipping incomplete checkpoint(s) %s (a run stopped while saving); "
                                   "resuming from %s", "; ".join(skipped), checkpoint)
                return str(checkpoint)
            skipped.append(f"{checkpoint.name} (no {', '.join(missing)})")
        raise ConfigError(f"resume_from_checkpoint=true, but no checkpoint in {recipe.output_dir} is complete: "
                          f"{'; '.join(skipped)}")
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"resume_from_checkpoint: {resume} is not a checkpoint directory")
    missing = missing_checkpoint_files(path, needs_emoreg=needs_emoreg)
    if missing:
        raise ConfigError(f"resume_from_checkpoint: {resume} is incomplete (no {', '.join(missing)}; the run "
                          "probably stopped while saving it); resume from an earlier checkpoint")
    return str(resume)


def attach_eval_callback(trainer, recipe: Recipe):
    """Add the recipe's EmoRegEvalCallback (via ``attach_eval``, so every reporter gets its metrics)."""
    from emoreg.integrations.eval_callback import attach_eval

    spec = recipe.eval
    return attach_eval(trainer, list(spec.suites), vectors=recipe.emoreg.vectors, every_n_steps=spec.every_n_steps,
                       limit=spec.limit, judge=spec.judge, seed=recipe.seed, max_new_tokens=spec.max_new_tokens,
                       base_model=recipe.model.ref)


# ---------------------------------------------------------------------------------------------- trainer


def check_regularizer_against_bundle(recipe: Recipe, vectors) -> None:
    """The regulariser's emotions and layers exist in the bundle (checked before any model loads)."""
    from emoreg.errors import BundleError

    config = recipe.regularizer_config()
    if config is None:
        return
    for where, names in (("emoreg.regularizer.emotions", list(config.emotions)),
                         ("emoreg.regularizer.log_emotions", list(config.log_emotions))):
        for name in names:
            try:
                vectors.emotion_index(name)
            except BundleError as exc:
                raise ConfigError(f"{where}: {exc} ({recipe.emoreg.vectors})") from None
    for layer in config.layers or []:
        try:
            vectors.layer_index(layer)
        except BundleError as exc:
            raise ConfigError(f"emoreg.regularizer.layers: {exc} ({recipe.emoreg.vectors})") from None


def build_trainer(recipe: Recipe, *, callbacks: Sequence[TrainerCallback] = ()):
    """Build the TRL trainer with emoreg attached; returns ``(trainer, emoreg_callback or None)``."""
    import transformers
    import trl
    from datasets import Dataset

    from emoreg.integrations import attach, attach_kl_anchor
    from emoreg.models.loading import load_model_and_tokenizer
    from emoreg.regularization.anchor_examples import load_anchor_examples
    from emoreg.regularization.frozen_reader import EMOTION_READING, EmotionReadingReward
    from emoreg.vectors.bundle import EmotionVectors

    args = build_training_args(recipe)
    rows = load_rows(recipe.data.source, recipe.trainer.type, split=recipe.data.split, limit=recipe.data.limit)
    anchor_config = recipe.kl_anchor_config()
    anchor_examples = None  # bad anchor rows fail before any model loads
    if anchor_config is not None:
        anchor_examples = load_anchor_examples(anchor_config.examples_path,
                                               complete_with_base=anchor_config.complete_with_base)
    for name in recipe.trainer.reward_funcs:  # import errors of module:function rewards before any model loads
        if name != EMOTION_READING:
            resolve_reward(name)
    uses_reader = recipe.data.screen is not None or recipe.frozen_reader is not None
    bundle = EmotionVectors.from_pretrained(recipe.emoreg.vectors) if recipe.emoreg.enabled or uses_reader else None
    vectors = bundle if recipe.emoreg.enabled else None
    if uses_reader:
        check_reader_blocks(recipe, bundle)
    if vectors is not None:
        check_regularizer_against_bundle(recipe, vectors)
    bundle_info = vectors_identity(recipe.emoreg.vectors, bundle) if bundle is not None else None
    screening = None
    if recipe.data.screen is not None:
        rows, screening = screen_training_rows(recipe, rows, bundle)
        screening["vectors"] = bundle_info
    dataset = Dataset.from_list(rows)
    rewards = build_rewards(recipe, bundle)
    readers = [r.reader for r in rewards if isinstance(r, EmotionReadingReward)]
    reader_info = None
    if readers:
        spec = recipe.frozen_reader
        reader_info = {"reward": EMOTION_READING, "base_model": recipe.model.ref, "emotions": readers[0].weights,
                       "layer": readers[0].layer, "threshold": spec.threshold, "vectors": bundle_info}
    info = train_info(recipe, bundle_info if vectors is not None else None, screening=screening,
                      frozen_reader=reader_info)

    transformers.set_seed(recipe.seed)
    model, tokenizer = load_model_and_tokenizer(recipe.model.ref, dtype=recipe.model.dtype)
    if vectors is not None:
        vectors.check_model(model)
    common = {"model": model, "args": args, "train_dataset": dataset, "processing_class": tokenizer,
              "peft_config": build_peft_config(recipe)}
    if recipe.trainer.type == "sft":
        trainer = trl.SFTTrainer(**common)
    elif recipe.trainer.type == "dpo":
        trainer = trl.DPOTrainer(**common)
    else:
        trainer = trl.GRPOTrainer(reward_funcs=rewards, **common)
    for reader in readers:  # a separate frozen copy, on the policy's device
        reader.check_independent(trainer.model)
        reader.to(trainer.accelerator.device)
    trainer.add_callback(TrainInfoCallback(info))
    if recipe.eval.enabled:
        attach_eval_callback(trainer, recipe)
    for callback in callbacks:
        trainer.add_callback(callback)
    emoreg_callback = attach(trainer, vectors, recipe.regularizer_config()) if vectors is not None else None
    if anchor_config is not None:  # the reference is copied now, from the model as loaded
        attach_kl_anchor(trainer, anchor_config, examples=anchor_examples)
    return trainer, emoreg_callback


def train(recipe: Recipe, *, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Train as the recipe says, save the final model into ``output_dir`` and return a :class:`TrainResult`."""
    start = time.perf_counter()
    resume = resolve_resume(recipe)
    trainer, _ = build_trainer(recipe, callbacks=callbacks)
    output = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(recipe.output_dir)
    history = list(trainer.state.log_history)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return TrainResult(
        output_dir=recipe.output_dir,
        global_step=int(trainer.state.global_step),
        train_loss=float(output.training_loss) if output.training_loss is not None else None,
        final_loss=float(losses[-1]) if losses else None,
        seconds=time.perf_counter() - start,
        log_history=history,
    )
