"""Training recipes: a strict schema, loading from YAML with dot-list overrides, validation.

A recipe is a YAML file (OmegaConf: ``${...}`` interpolation works) whose keys follow :class:`Recipe`::

    model:   {ref: default, dtype: float32, gradient_checkpointing: false,
              lora: {enabled: false, r: 8, alpha: 16, dropout: 0.05, target_modules: all-linear}}
    data:    {source: desperate_sft, split: train, limit: 32,
              screen: null}   # or {emotions: {desperate: 1.0}, max_z: 2.0, mode: drop, layer: null} (sft, dpo)
    trainer: {type: sft, args: {max_steps: 8, ...}, reward_funcs: [...], reward_weights: null}
    emoreg:  {enabled: true, vectors: default, regularizer: {emotions: {desperate: 1.0}, kind: hinge, ...}}
    frozen_reader: null   # or {emotions: {desperate: 1.0}, layer: null, threshold: 0.0} with the
                          # GRPO reward `emotion_reading` in trainer.reward_funcs
    kl_anchor: null       # or {coef: 0.1, examples: builtin, batch_size: 4, max_length: 256,
                          #     complete_with_base: true, max_new_tokens: 64, direction: forward, seed: 0}
    eval:    {enabled: false, suites: [probes], every_n_steps: null, limit: 20, ...}
    output_dir: runs/sft
    seed: 0
    resume_from_checkpoint: null   # or true (the last checkpoint in output_dir) or a checkpoint path

Every key is checked before anything heavy happens: an unknown key anywhere (in the file or in an
override such as ``trainer.args.max_step=4``) is a :class:`~emoreg.errors.ConfigError` naming the full
dotted key, a close match and the valid keys. ``trainer.args`` is checked against the fields of the TRL
config class of ``trainer.type`` (``trl.SFTConfig``, ``trl.DPOConfig``, ``trl.GRPOConfig``) and
``emoreg.regularizer`` against :class:`~emoreg.regularization.config.RegularizerConfig`.

``data.screen`` and ``frozen_reader`` regularise with no gradient through the reader: a frozen copy of
``model.ref`` reads emotions with the ``emoreg.vectors`` bundle (also when ``emoreg.enabled`` is false), to
drop SFT/DPO rows before training (:mod:`emoreg.train.screening`) or as the GRPO reward ``emotion_reading``
(:class:`~emoreg.regularization.frozen_reader.EmotionReadingReward`). Their emotion names and layer are
checked against the bundle when the run starts, before any model loads.

``kl_anchor`` adds the emotion-agnostic baseline: ``coef * KL`` between a frozen reference copy of the
starting model and the trained model on anchor examples unrelated to the training data
(:mod:`emoreg.regularization.kl_anchor`, :mod:`emoreg.integrations.kl_anchor`), with or without the
``emoreg`` regulariser. Its keys are those of :class:`~emoreg.regularization.kl_anchor.KLAnchorConfig`
(``coef`` and ``examples`` are required; ``examples`` is a JSONL file or ``builtin``); they are checked, and
the file's existence, when the recipe loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoreg.errors import ConfigError
from emoreg.evals.suites import SUITE_NAMES
from emoreg.regularization.config import RegularizerConfig
from emoreg.regularization.frozen_reader import EMOTION_READING
from emoreg.regularization.kl_anchor import KLAnchorConfig

TRAINER_TYPES = ("sft", "dpo", "grpo")
DTYPES = ("float32", "bfloat16", "float16", "auto")
#: The eval suites (the registry in emoreg/evals/suites/ is the one source of the names).
EVAL_SUITES = SUITE_NAMES
#: trainer.args keys that the recipe sets elsewhere (one place for each setting).
_ARGS_SET_BY_RECIPE = {
    "output_dir": "output_dir",
    "seed": "seed",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "activation_checkpointing": "model.gradient_checkpointing",
    "resume_from_checkpoint": "resume_from_checkpoint",
    "reward_weights": "trainer.reward_weights",
}


@dataclass
class RecipeLoraConfig:
    """LoRA adapters (PEFT); ``target_modules`` is a list of module names or ``"all-linear"``."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: Any = "all-linear"


@dataclass
class RecipeModelConfig:
    """Which model to train: ``"default"`` (embedded SmolLM2-135M-Instruct), a hub id, a directory or a .gguf."""

    ref: str = "default"
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    lora: RecipeLoraConfig = field(default_factory=RecipeLoraConfig)


@dataclass
class RecipeScreenConfig:
    """Screen SFT/DPO rows before training: drop rows whose frozen-base reading ``sum_e w_e z_e`` exceeds ``max_z``.

    ``emotions``: ``{name: weight}`` (weights > 0); ``layer``: null for the bundle's default layer; ``mode``:
    only ``drop`` (TRL's SFT/DPO trainers take no per-row weights). See :mod:`emoreg.train.screening`.
    """

    emotions: dict[str, float] = field(default_factory=dict)
    max_z: float = 2.0
    mode: str = "drop"
    layer: int | None = None
    batch_size: int = 8


@dataclass
class RecipeDataConfig:
    """Training data: a built-in dataset name, a local .json/.jsonl/.parquet file or a cached HF dataset."""

    source: str = ""
    split: str = "train"
    limit: int | None = None
    screen: RecipeScreenConfig | None = None


@dataclass
class RecipeTrainerConfig:
    """The TRL trainer and its config (``args``: fields of trl.SFTConfig / DPOConfig / GRPOConfig).

    ``reward_funcs`` (GRPO only): built-in reward names (:mod:`emoreg.train.rewards`) or ``module:function``.
    """

    type: str = "sft"
    args: dict[str, Any] = field(default_factory=dict)
    reward_funcs: list[str] = field(default_factory=list)
    reward_weights: list[float] | None = None


@dataclass
class RecipeEmoRegConfig:
    """The regulariser: a vector bundle (``"default"`` or a path) and a RegularizerConfig mapping."""

    enabled: bool = True
    vectors: str = "default"
    regularizer: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecipeFrozenReaderConfig:
    """The GRPO reward ``emotion_reading``: ``-sum_e w_e * relu(z_e - threshold)`` read by a frozen base model.

    ``threshold`` is in z units of the bundle's base-model statistics (0: the base model's mean on neutral text).
    """

    emotions: dict[str, float] = field(default_factory=dict)
    layer: int | None = None
    threshold: float = 0.0
    batch_size: int = 8


@dataclass
class RecipeEvalConfig:
    """Evaluation during training (EmoRegEvalCallback): suites run every ``every_n_steps`` and at the end."""

    enabled: bool = False
    suites: list[str] = field(default_factory=lambda: ["probes"])
    every_n_steps: int | None = None
    limit: int = 20
    judge: str = "rule"
    max_new_tokens: int = 64


@dataclass
class Recipe:
    """A complete training run. See the module docstring for the YAML layout."""

    model: RecipeModelConfig = field(default_factory=RecipeModelConfig)
    data: RecipeDataConfig = field(default_factory=RecipeDataConfig)
    trainer: RecipeTrainerConfig = field(default_factory=RecipeTrainerConfig)
    emoreg: RecipeEmoRegConfig = field(default_factory=RecipeEmoRegConfig)
    frozen_reader: RecipeFrozenReaderConfig | None = None
    kl_anchor: dict[str, Any] | None = None
    eval: RecipeEvalConfig = field(default_factory=RecipeEvalConfig)
    output_dir: str = "runs/emoreg"
    seed: int = 0
    resume_from_checkpoint: Any = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what ``--print-config`` shows and emoreg_train.json records).

        ``kl_anchor`` is recorded with every setting, defaults included.
        """
        data = dataclasses.asdict(self)
        anchor = self.kl_anchor_config()
        if anchor is not None:
            data["kl_anchor"] = anchor.to_dict()
        return data

    def regularizer_config(self) -> RegularizerConfig | None:
        """The RegularizerConfig, or None when emoreg is disabled."""
        if not self.emoreg.enabled:
            return None
        return _regularizer(self.emoreg.regularizer)

    def kl_anchor_config(self) -> KLAnchorConfig | None:
        """The KLAnchorConfig, or None when there is no ``kl_anchor`` block."""
        if self.kl_anchor is None:
            return None
        return KLAnchorConfig.from_dict(dict(self.kl_anchor), source="kl_anchor")


# ---------------------------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load ``path`` (YAML), apply ``key=value`` overrides and validate everything; no model is touched."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such recipe file")
    try:
        raw = OmegaConf.load(path)
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not a valid YAML recipe ({type(exc).__name__}: {exc})") from None
    data = OmegaConf.to_container(raw, resolve=False)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    return recipe_from_dict(data, overrides=overrides, source=str(path))


def recipe_from_dict(data: dict[str, Any], *, overrides: list[str] | tuple[str, ...] = (),
                     source: str = "recipe") -> Recipe:
    """Build a validated :class:`Recipe` from a mapping (plus ``key=value`` overrides)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_keys(data, Recipe, source)
    override_tree = parse_overrides(overrides)
    check_keys(override_tree, Recipe, "override")
    trainer_type = _get(override_tree, "trainer", "type") or _get(data, "trainer", "type") or RecipeTrainerConfig.type
    if trainer_type in TRAINER_TYPES:  # each source's trainer.args named as such; a bad type is reported below
        for tree, where in ((data, source), (override_tree, "override")):
            args = _get(tree, "trainer", "args")
            if isinstance(args, dict):
                check_trainer_args(args, trainer_type, where)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Recipe), OmegaConf.create(data), override_tree)
        resolved = OmegaConf.to_container(merged, resolve=True)
        recipe = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Recipe), resolved))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        message = str(exc).splitlines()[0]
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{message}") from None
    validate(recipe, source=source, override_tree=override_tree)
    return recipe


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["trainer.args.max_steps=4", ...]`` into a nested dict (values parsed by OmegaConf's grammar)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. trainer.args.max_steps=4")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not key.strip() or any(not p for p in parts):
            raise ConfigError(f"override {item!r}: the key must be a dotted name such as model.lora.r")
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]), resolve=False)["value"]
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override {item!r}: cannot parse the value ({exc})") from None
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} was already given a plain value")
            node = child
        node[parts[-1]] = value
    return tree


# ---------------------------------------------------------------------------------------------- checks


def check_keys(data: Any, schema: type, source: str, prefix: str = "") -> None:
    """Reject keys of ``data`` that ``schema`` (a dataclass) does not have, recursively, with dotted names."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "the recipe"
        raise ConfigError(f"{source}: {where} must be a mapping with keys {_field_names(schema)}, got {data!r:.80}")
    hints = _field_types(schema)
    for key, value in data.items():
        if key not in hints:
            _unknown(source, f"{prefix}{key}", str(key), _field_names(schema))
        nested = _dataclass_of(hints[key])
        if nested is not None and value is not None:
            check_keys(value, nested, source, f"{prefix}{key}.")
        elif (key, prefix) in (("regularizer", "emoreg."), ("kl_anchor", "")) and isinstance(value, dict):
            schema_class = RegularizerConfig if key == "regularizer" else KLAnchorConfig
            valid = [f.name for f in dataclasses.fields(schema_class)]
            for sub in value:
                if sub not in valid:
                    _unknown(source, f"{prefix}{key}.{sub}", str(sub), valid)


def check_trainer_args(args: dict[str, Any], trainer_type: str, source: str) -> None:
    """Reject ``trainer.args`` keys that are not fields of the TRL config class, or that the recipe sets."""
    config_class = trl_config_class(trainer_type)
    valid = [f.name for f in dataclasses.fields(config_class) if f.init]
    for key in args:
        if key in _ARGS_SET_BY_RECIPE:
            raise ConfigError(f"{source}: trainer.args.{key} is set by the recipe key "
                              f"{_ARGS_SET_BY_RECIPE[key]}; set it there instead")
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ConfigError(f"{source}: unknown key 'trainer.args.{key}'{hint}; trainer.args takes the fields of "
                              f"trl.{config_class.__name__} ({len(valid)} fields, e.g. max_steps, learning_rate, "
                              f"per_device_train_batch_size)")
    _check_scalar_types(args, config_class, source)
    max_steps = args.get("max_steps")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)
                                  or max_steps == 0 or max_steps < -1):
        raise ConfigError(f"{source}: trainer.args.max_steps must be a positive number of optimizer steps, or -1 "
                          f"to train for num_train_epochs; got {max_steps!r}")


def _scalar_type(hint: Any) -> type | None:
    """``float``, ``int`` or ``bool`` for a field typed as one of them (optionally ``Optional``), else None."""
    import types
    import typing

    if hint in (float, int, bool):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1 and options[0] in (float, int, bool):
            return options[0]
    return None


def _check_scalar_types(args: dict[str, Any], config_class: type, source: str) -> None:
    """Type-check ``trainer.args`` values of number and boolean fields when the recipe loads (before any model
    loads); numbers written as strings (``"2e-4"``) become numbers, anything else is an error naming the key."""
    import typing

    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # noqa: BLE001 - an annotation this Python cannot resolve: leave the check to the trainer
        return
    for key, value in list(args.items()):
        expected = _scalar_type(hints.get(key))
        if expected is None or value is None:
            continue
        if expected is bool:
            if isinstance(value, bool):
                continue
            if isinstance(value, str) and value.lower() in ("true", "false"):
                args[key] = value.lower() == "true"
                continue
            raise ConfigError(f"{source}: trainer.args.{key} must be true or false, got {value!r}")
        if isinstance(value, bool):
            raise ConfigError(f"{source}: trainer.args.{key} must be a number, got {value!r}")
        if expected is int:
            if isinstance(value, int):
                continue
            if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
                args[key] = int(value)
                continue
            raise ConfigError(f"{source}: trainer.args.{key} must be a whole number, got {value!r}")
        if isinstance(value, (int, float)):
            continue
        try:
            args[key] = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: trainer.args.{key} must be a number, got {value!r}") from None


def validate(recipe: Recipe, *, source: str = "recipe", override_tree: dict[str, Any] | None = None) -> None:
    """Check values that the schema's types cannot: choices, ranges, trainer args, regulariser, rewards."""
    if recipe.trainer.type not in TRAINER_TYPES:
        _bad_choice(source, "trainer.type", recipe.trainer.type, TRAINER_TYPES)
    if recipe.model.dtype not in DTYPES:
        _bad_choice(source, "model.dtype", recipe.model.dtype, DTYPES)
    if not recipe.model.ref:
        raise ConfigError(f"{source}: model.ref is empty; use 'default', a hub id, a directory or a .gguf file")
    if not recipe.data.source:
        raise ConfigError(f"{source}: data.source is empty; name a built-in dataset or a .json/.jsonl/.parquet file")
    if recipe.data.limit is not None and recipe.data.limit < 1:
        raise ConfigError(f"{source}: data.limit must be >= 1 or null, got {recipe.data.limit}")
    lora = recipe.model.lora
    if lora.r < 1 or lora.alpha <= 0 or not 0 <= lora.dropout < 1:
        raise ConfigError(f"{source}: model.lora needs r >= 1, alpha > 0 and 0 <= dropout < 1 "
                          f"(got r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout})")
    if not (isinstance(lora.target_modules, str) or (isinstance(lora.target_modules, list) and lora.target_modules
                                                      and all(isinstance(m, str) for m in lora.target_modules))):
        raise ConfigError(f"{source}: model.lora.target_modules must be 'all-linear' or a list of module names, "
                          f"got {lora.target_modules!r}")
    check_trainer_args(recipe.trainer.args, recipe.trainer.type, source)
    _validate_rewards(recipe, source)
    _validate_screen(recipe, source)
    if recipe.emoreg.enabled:
        try:
            _regularizer(recipe.emoreg.regularizer)
        except ConfigError as exc:
            where = _blame(source, override_tree, ("emoreg", "regularizer"), str(exc))
            raise ConfigError(f"{where}: emoreg.regularizer: {exc}") from None
    if recipe.kl_anchor is not None:
        try:
            recipe.kl_anchor_config()
        except ConfigError as exc:
            raise ConfigError(f"{_blame(source, override_tree, ('kl_anchor',), str(exc))}: {exc}") from None
    _validate_eval(recipe.eval, source)
    resume = recipe.resume_from_checkpoint
    if resume is not None and not isinstance(resume, (bool, str)):
        raise ConfigError(f"{source}: resume_from_checkpoint must be null, true or a checkpoint path, got {resume!r}")
    if isinstance(resume, str) and not Path(resume).is_dir():
        raise ConfigError(f"{source}: resume_from_checkpoint: {resume} is not a checkpoint directory")


def trl_config_class(trainer_type: str) -> type:
    """The TRL config dataclass of ``trainer_type``."""
    import trl

    classes = {"sft": "SFTConfig", "dpo": "DPOConfig", "grpo": "GRPOConfig"}
    if trainer_type not in classes:
        raise ConfigError(f"trainer.type must be one of {list(TRAINER_TYPES)}, got {trainer_type!r}")
    return getattr(trl, classes[trainer_type])


def _validate_rewards(recipe: Recipe, source: str) -> None:
    from emoreg.train.rewards import resolve_reward

    trainer = recipe.trainer
    if trainer.type != "grpo":
        if trainer.reward_funcs or trainer.reward_weights is not None:
            raise ConfigError(f"{source}: trainer.reward_funcs/reward_weights are for trainer.type grpo, "
                              f"not {trainer.type!r}")
        if recipe.frozen_reader is not None:
            raise ConfigError(f"{source}: frozen_reader configures the GRPO reward {EMOTION_READING!r}, not "
                              f"trainer.type {trainer.type!r}; to screen {trainer.type} rows use data.screen")
        return
    if not trainer.reward_funcs:
        raise ConfigError(f"{source}: trainer.reward_funcs: GRPO needs at least one reward (a built-in name such "
                          f"as 'calm_keywords' or 'module:function')")
    for name in trainer.reward_funcs:
        if name == EMOTION_READING:
            continue  # built from the frozen_reader block, checked below
        try:
            resolve_reward(name)
        except ConfigError as exc:
            raise ConfigError(f"{source}: trainer.reward_funcs: {exc}") from None
    _validate_frozen_reader(recipe, source)
    if trainer.reward_weights is not None and len(trainer.reward_weights) != len(trainer.reward_funcs):
        raise ConfigError(f"{source}: trainer.reward_weights has {len(trainer.reward_weights)} entries for "
                          f"{len(trainer.reward_funcs)} reward_funcs")


def _validate_frozen_reader(recipe: Recipe, source: str) -> None:
    spec = recipe.frozen_reader
    named = recipe.trainer.reward_funcs.count(EMOTION_READING)
    if spec is None:
        if named:
            raise ConfigError(f"{source}: trainer.reward_funcs names {EMOTION_READING!r}, which needs a "
                              f"frozen_reader block, e.g. frozen_reader: {{emotions: {{desperate: 1.0}}, "
                              f"threshold: 0.0}}")
        return
    if not named:
        raise ConfigError(f"{source}: frozen_reader is set, but trainer.reward_funcs does not name "
                          f"{EMOTION_READING!r} (add it, or remove the frozen_reader block)")
    if named > 1:
        raise ConfigError(f"{source}: trainer.reward_funcs names {EMOTION_READING!r} {named} times; name it once")
    _check_emotion_weights(spec.emotions, "frozen_reader", source)
    if not math.isfinite(spec.threshold):
        raise ConfigError(f"{source}: frozen_reader.threshold must be a finite number (z units), "
                          f"got {spec.threshold}")
    _check_layer_and_batch(spec.layer, spec.batch_size, "frozen_reader", source)


def _validate_screen(recipe: Recipe, source: str) -> None:
    from emoreg.train.screening import SCREEN_MODES, SCREEN_TRAINER_TYPES, screen_mode_error

    spec = recipe.data.screen
    if spec is None:
        return
    if recipe.trainer.type not in SCREEN_TRAINER_TYPES:
        raise ConfigError(f"{source}: data.screen is for trainer.type sft or dpo (rows with a training target), "
                          f"not {recipe.trainer.type!r}; for GRPO use the reward {EMOTION_READING!r} with a "
                          f"frozen_reader block")
    _check_emotion_weights(spec.emotions, "data.screen", source)
    if spec.mode not in SCREEN_MODES:
        message = screen_mode_error(spec.mode)
        close = difflib.get_close_matches(str(spec.mode), SCREEN_MODES, n=1)
        if close and spec.mode != "reweight":
            message += f" (did you mean {close[0]!r}?)"
        raise ConfigError(f"{source}: {message}")
    if not math.isfinite(spec.max_z):
        raise ConfigError(f"{source}: data.screen.max_z must be a finite number (z units), got {spec.max_z}")
    _check_layer_and_batch(spec.layer, spec.batch_size, "data.screen", source)


def _check_emotion_weights(emotions: dict[str, float], where: str, source: str) -> None:
    if not emotions:
        raise ConfigError(f"{source}: {where}.emotions is empty; name at least one emotion of the bundle with a "
                          f"weight, e.g. {{desperate: 1.0}}")
    for name, weight in emotions.items():
        if not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"{source}: {where}.emotions.{name}: the weight must be a positive number, "
                              f"got {weight}")


def _check_layer_and_batch(layer: int | None, batch_size: int, where: str, source: str) -> None:
    if layer is not None and layer < 0:
        raise ConfigError(f"{source}: {where}.layer must be >= 0 or null (the bundle's default), got {layer}")
    if batch_size < 1:
        raise ConfigError(f"{source}: {where}.batch_size must be >= 1, got {batch_size}")


def _validate_eval(spec: RecipeEvalConfig, source: str) -> None:
    if not spec.enabled:
        return
    if not spec.suites:
        raise ConfigError(f"{source}: eval.suites is empty; name some of {list(EVAL_SUITES)}")
    for suite in spec.suites:
        if suite not in EVAL_SUITES:
            close = difflib.get_close_matches(suite, EVAL_SUITES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: eval.suites: unknown suite {suite!r}{hint}; valid suites are "
                              f"{list(EVAL_SUITES)}")
    if spec.every_n_steps is not None and spec.every_n_steps < 1:
        raise ConfigError(f"{source}: eval.every_n_steps must be >= 1 or null, got {spec.every_n_steps}")
    if spec.limit < 1:
        raise ConfigError(f"{source}: eval.limit must be >= 1, got {spec.limit}")
    try:
        importlib.import_module("emoreg.integrations.eval_callback")
    except ImportError as exc:
        raise ConfigError(f"{source}: eval.enabled needs emoreg.integrations.eval_callback, which cannot be "
                          f"imported ({exc}); set eval.enabled=false") from None


def _blame(source: str, override_tree: dict[str, Any] | None, section: tuple[str, ...], message: str) -> str:
    """``"override"`` when a key the error names was set by a ``key=value`` override, else ``source``."""
    overridden = _get(override_tree or {}, *section)
    if not isinstance(overridden, dict):
        return source
    names = [str(key) for key in _flatten(overridden)]
    return "override" if any(re.search(rf"\b{re.escape(name)}\b", message) for name in names) else source


def _flatten(tree: dict[str, Any]) -> list[str]:
    keys = []
    for key, value in tree.items():
        keys.append(str(key))
        if isinstance(value, dict):
            keys.extend(_flatten(value))
    return keys


def _regularizer(data: dict[str, Any]) -> RegularizerConfig:
    return RegularizerConfig.from_dict(dict(data), source="regularizer")


def _field_types(schema: type) -> dict[str, Any]:
    import typing

    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass of a field type (``X`` or ``X | None``), or None."""
    import typing

    if dataclasses.is_dataclass(hint):
        return hint
    candidates = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
    return candidates[0] if len(candidates) == 1 else None


def _field_names(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def _unknown(source: str, dotted: str, key: str, valid: list[str]) -> None:
    close = difflib.get_close_matches(key, valid, n=1)
    parent = dotted.rsplit(".", 1)[0] + "." if "." in dotted else ""
    hint = f" (did you mean '{parent}{close[0]}'?)" if close else ""
    raise ConfigError(f"{source}: unknown key '{dotted}'{hint}; valid keys here are {sorted(valid)}")


def _bad_choice(source: str, key: str, value: Any, options: tuple[str, ...]) -> None:
    close = difflib.get_close_matches(str(value), options, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{source}: {key} must be one of {list(options)}, got {value!r}{hint}")


def _get(tree: dict[str, Any], *keys: str) -> Any:
    """``tree[k1][k2]...`` or None when a level is missing or not a mapping."""
    node: Any = tree
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node
