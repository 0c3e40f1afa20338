"""Configuration of the training-time regulariser.

A :class:`RegularizerConfig` names the emotions to act on and how. Top-level
fields are defaults; each emotion may override them::

    RegularizerConfig(mode="penalty", kind="hinge", coef=0.1,
                      emotions={"desperate": 1.0,                          # weight, defaults otherwise
                                "hostile": {"weight": 0.5, "kind": "band"},
                                "calm": {"mode": "steer", "steer_coef": 4.0}})

Modes: ``penalty`` (an extra loss term; ``kind`` is ``square``, ``hinge`` or
``band``), ``ablate`` (CAFT: set the projection to the base-model mean or to
zero), ``clamp`` (clip the projection into a band) and ``steer`` (preventative
steering: add ``steer_coef * v``, or with ``units="z"`` add ``steer_coef * std * v``,
which moves the projection by ``steer_coef`` of the base model's standard deviations
on neutral text at that layer). Interventions edit the forward pass of training
steps only, unless ``during_generation`` is on.

Units: ``hinge`` and ``band`` (always), clamp bounds (always) and ``square``
with ``units="z"`` work on projections standardised by the bundle's base-model
statistics, ``z = (p - mean) / std``: the same coefficient means the same thing
at every layer, emotion and model. ``square`` with ``units="raw"`` penalises
the raw projection ``(h . v)^2`` (for centred vectors and exactness tests; on
SmolLM2 raw projections sit near -100, so it pulls every token far from where
the model lives).

Adaptive directions (``refit``, penalty mode only): every ``refit.every``
optimizer steps the penalised emotions' directions are re-extracted from the
*current* model on a fixed subset of the built-in stories, and penalised
alongside the bundle's fixed directions (see :mod:`emoreg.regularization.refit`).

Loaded from dicts or OmegaConf YAML; unknown keys are errors listing the valid ones. A checkpoint
trained with emoreg keeps its config in ``emoreg_config.json``
(:meth:`RegularizerConfig.save_pretrained` / :meth:`RegularizerConfig.from_pretrained`);
:meth:`RegularizerConfig.from_saved` and :func:`regularized_emotions` read it from what a checkpoint
saved (the ``"model"`` entry of eval results, ``CheckpointInfo.to_dict()``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emoreg.errors import ConfigError
from emoreg.models.provenance import CONFIG_FILE, TRAIN_INFO_FILE, read_config, write_config
from emoreg.version import __version__

if TYPE_CHECKING:
    from emoreg.vectors.bundle import EmotionVectors

MODES = ("penalty", "ablate", "clamp", "steer")
KINDS = ("square", "hinge", "band")
UNITS = ("raw", "z")
SELECTIONS = ("all", "completion", "last_prompt")
SCHEDULES = ("constant", "linear_warmup", "linear_decay", "cosine")
ABLATE_TARGETS = ("mean", "zero")


@dataclass(frozen=True)
class EmotionRule:
    """What to do with one emotion (defaults come from the :class:`RegularizerConfig`)."""

    emotion: str
    weight: float = 1.0
    mode: str = "penalty"
    kind: str = "square"
    units: str = "raw"
    threshold: float | None = None
    threshold_percentile: float = 95.0
    band_k: float = 2.0
    ablate_to: str = "mean"
    clamp_low: float | None = None
    clamp_high: float | None = None
    clamp_percentiles: tuple[float, float] = (5.0, 95.0)
    steer_coef: float = 0.0


@dataclass(frozen=True)
class RefitConfig:
    """Adaptive directions: re-extract the penalised emotions' directions from the model being trained.

    Attributes:
        every: optimizer steps between refits (> 0); the first refit runs before the first step.
        texts_per_emotion: stories per penalised emotion (a fixed seeded subset of the built-in
            corpus's stories) and, shared by all emotions, the same number of built-in neutral texts.
        weight: weight of the refitted direction's penalty relative to the fixed direction's.
        seed: seed of the subsets.
        max_length: tokens per text (longer texts are truncated).
        batch_size: texts per forward pass of a refit.
    """

    every: int
    texts_per_emotion: int = 16
    weight: float = 1.0
    seed: int = 0
    max_length: int = 256
    batch_size: int = 8

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "refit") -> RefitConfig:
        """Build from a plain dict; unknown keys are errors listing the valid ones."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping like {{'every': 50}}, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        _reject_unknown(data, valid, source)
        if "every" not in data:
            raise ConfigError(f"{source}.every is required: the number of optimizer steps between refits")
        return cls(**{k: to_plain(v) for k, v in data.items()})

    def validate(self) -> None:
        for name in ("every", "texts_per_emotion", "seed", "max_length", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"refit.{name} must be an integer, got {value!r}")
        if self.every < 1:
            raise ConfigError(f"refit.every must be > 0 (optimizer steps between refits), got {self.every}")
        if self.texts_per_emotion < 2:
            raise ConfigError(f"refit.texts_per_emotion must be >= 2, got {self.texts_per_emotion}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not self.weight >= 0:
            raise ConfigError(f"refit.weight must be a number >= 0, got {self.weight!r}")
        if self.max_length < 2:
            raise ConfigError(f"refit.max_length must be >= 2, got {self.max_length}")
        if self.batch_size < 1:
            raise ConfigError(f"refit.batch_size must be >= 1, got {self.batch_size}")


#: Fields of EmotionRule that a config's top level sets as defaults.
_RULE_DEFAULT_FIELDS = tuple(f.name for f in dataclasses.fields(EmotionRule) if f.name not in ("emotion", "weight"))


@dataclass
class RegularizerConfig:
    """How emoreg regularises emotion activations during training.

    Attributes:
        emotions: ``{emotion: weight}`` or ``{emotion: {overrides}}``; the
            override keys are the rule fields below plus ``weight``.
        mode, kind, units, threshold, threshold_percentile, band_k, ablate_to,
            clamp_low, clamp_high, clamp_percentiles, steer_coef: defaults for
            every emotion (see the module docstring).
        coef: penalty coefficient (the objective is ``loss + coef * R``).
        layers: decoder layers to act on; ``None`` means the bundle's default layer.
        selection: ``all`` real tokens except attention sinks, ``completion``
            tokens only (labels != -100), or the ``last_prompt`` token.
        sink_tokens: leading real tokens of each sequence never selected nor edited.
        schedule, warmup_steps, total_steps: coefficient schedule by optimizer
            step (``total_steps=None`` takes the trainer's ``max_steps``).
        during_generation: also apply interventions during ``generate``
            (GRPO/RLOO rollouts); off by default.
        allow_different_weights: accept a bundle whose weight hash differs
            from the model's (a fine-tuned child of the same base).
        log_emotions: extra emotions whose activation is logged without being
            regularised.
        refit: adaptive directions (a :class:`RefitConfig` or a dict such as
            ``{"every": 50}``), or ``None`` (off). Needs at least one penalised emotion;
            only penalised emotions get a refitted direction.
    """

    emotions: dict[str, Any] = field(default_factory=dict)
    mode: str = "penalty"
    kind: str = "square"
    units: str = "raw"
    coef: float = 0.1
    threshold: float | None = None
    threshold_percentile: float = 95.0
    band_k: float = 2.0
    ablate_to: str = "mean"
    clamp_low: float | None = None
    clamp_high: float | None = None
    clamp_percentiles: tuple[float, float] = (5.0, 95.0)
    steer_coef: float = 0.0
    layers: list[int] | None = None
    selection: str = "all"
    sink_tokens: int = 1
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    during_generation: bool = False
    allow_different_weights: bool = True
    log_emotions: list[str] = field(default_factory=list)
    refit: RefitConfig | None = None

    def __post_init__(self) -> None:
        if self.refit is not None and not isinstance(self.refit, RefitConfig):
            self.refit = RefitConfig.from_dict(to_plain(self.refit), source="refit")
        if isinstance(self.clamp_percentiles, list):
            self.clamp_percentiles = tuple(self.clamp_percentiles)
        if self.layers is not None:
            self.layers = [int(layer) for layer in self.layers]
        self.emotions = dict(self.emotions)
        self.log_emotions = list(self.log_emotions)
        self.validate()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> RegularizerConfig:
        """Build from a plain dict; unknown keys are errors listing the valid ones."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of regulariser settings, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        _reject_unknown(data, valid, source)
        return cls(**{k: to_plain(v) for k, v in data.items()})

    @classmethod
    def from_yaml(cls, path: str | Path, *, key: str | None = None) -> RegularizerConfig:
        """Load from an OmegaConf YAML file (optionally the mapping under ``key``, e.g. ``emoreg``)."""
        from omegaconf import OmegaConf

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        source = str(path)
        if key is not None:
            if not isinstance(data, dict) or key not in data:
                raise ConfigError(f"{path}: no '{key}' section")
            data, source = data[key], f"{path}: {key}"
        return cls.from_dict(data, source=source)

    @classmethod
    def coerce(cls, value: RegularizerConfig | dict[str, Any]) -> RegularizerConfig:
        return value if isinstance(value, cls) else cls.from_dict(value)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["clamp_percentiles"] = list(self.clamp_percentiles)
        return data

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | Path, *, layers: list[int] | None = None,
                        vectors: EmotionVectors | None = None) -> Path:
        """Write ``emoreg_config.json`` into ``directory`` (created if needed) atomically and return its path.

        The file is ``{"library_version", "config": to_dict(), "layers", "vectors"}``: ``layers`` are the
        layers a :class:`~emoreg.regularization.regularizer.Regularizer` acted on, ``vectors`` the bundle's
        emotions, default layer, corpus hash and model fingerprint (each ``null`` when not given).
        """
        bundle = None
        if vectors is not None:
            bundle = {
                "emotions": vectors.emotions,
                "default_layer": vectors.default_layer,
                "corpus_sha256": vectors.corpus_sha256,
                "model_fingerprint": vectors.model_fingerprint.to_dict() if vectors.model_fingerprint else None,
            }
        info = {"library_version": __version__, "config": self.to_dict(),
                "layers": list(layers) if layers is not None else None, "vectors": bundle}
        return write_config(directory, info)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> RegularizerConfig:
        """The config in ``directory``'s ``emoreg_config.json`` (written by :meth:`save_pretrained` or by training).

        Raises:
            ConfigError: there is no such file, or its ``config`` is missing or not a valid config.
            ModelLoadError: the file is not valid JSON.
        """
        path = Path(directory)
        saved = read_config(path)
        if saved is None:
            raise ConfigError(f"{path}: no {CONFIG_FILE} (RegularizerConfig.save_pretrained or an emoreg training "
                              "run writes one)")
        if "config" not in saved:
            raise ConfigError(f"{path / CONFIG_FILE}: missing field 'config'")
        return cls._from_saved_dict(saved["config"], f"{path / CONFIG_FILE}: config")

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any] | None) -> RegularizerConfig | None:
        """The config a checkpoint was trained with, or ``None`` (trained without emoreg, or not by emoreg).

        ``saved`` maps file to content as the ``"model"`` entry of eval results and
        :meth:`CheckpointInfo.to_dict <emoreg.models.checkpoint.CheckpointInfo.to_dict>` do:
        ``"emoreg_config"`` (its ``emoreg_config.json``), whose ``config`` is used when it names an emotion,
        else ``"train_info"`` (its ``emoreg_train.json``), whose ``regularizer`` is used when it names an emotion.
        A saved config that is not valid is a :class:`ConfigError` naming the file and field.
        """
        saved = saved or {}
        emoreg_config = saved.get("emoreg_config")
        if isinstance(emoreg_config, Mapping):
            config = emoreg_config.get("config")
            if isinstance(config, Mapping) and config.get("emotions"):
                return cls._from_saved_dict(dict(config), f"{CONFIG_FILE}: config")
        train_info = saved.get("train_info")
        if isinstance(train_info, Mapping):
            config = train_info.get("regularizer")
            if isinstance(config, Mapping) and config.get("emotions"):
                return cls._from_saved_dict(dict(config), f"{TRAIN_INFO_FILE}: regularizer")
        return None

    @classmethod
    def _from_saved_dict(cls, data: Any, source: str) -> RegularizerConfig:
        """:meth:`from_dict` whose errors all name ``source`` (the file and field the dict was read from)."""
        try:
            return cls.from_dict(data, source=source)
        except ConfigError as exc:
            message = str(exc)
            raise ConfigError(message if message.startswith(source) else f"{source}: {message}") from None

    # ------------------------------------------------------------------ rules
    def rules(self) -> list[EmotionRule]:
        """One :class:`EmotionRule` per emotion, with the top-level defaults filled in."""
        rules = []
        defaults = {name: getattr(self, name) for name in _RULE_DEFAULT_FIELDS}
        for emotion, spec in self.emotions.items():
            values = dict(defaults)
            if isinstance(spec, (int, float)) and not isinstance(spec, bool):
                values["weight"] = float(spec)
            elif isinstance(spec, dict):
                _reject_unknown(spec, ("weight",) + _RULE_DEFAULT_FIELDS, f"emotions.{emotion}")
                values.update({k: to_plain(v) for k, v in spec.items()})
            else:
                raise ConfigError(
                    f"emotions.{emotion}: expected a weight (number) or a mapping of overrides, got {spec!r}"
                )
            if isinstance(values.get("clamp_percentiles"), list):
                values["clamp_percentiles"] = tuple(values["clamp_percentiles"])
            rules.append(EmotionRule(emotion=emotion, **values))
        return rules

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field and the valid values."""
        _choice("mode", self.mode, MODES)
        _choice("kind", self.kind, KINDS)
        _choice("units", self.units, UNITS)
        _choice("selection", self.selection, SELECTIONS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("ablate_to", self.ablate_to, ABLATE_TARGETS)
        if not isinstance(self.emotions, dict) or not self.emotions:
            raise ConfigError("emotions: name at least one emotion, e.g. emotions={'desperate': 1.0}")
        if self.coef < 0:
            raise ConfigError(f"coef must be >= 0, got {self.coef}")
        if self.sink_tokens < 0:
            raise ConfigError(f"sink_tokens must be >= 0, got {self.sink_tokens}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.total_steps is not None and self.total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1 or None, got {self.total_steps}")
        if self.layers is not None and (not self.layers or any(layer < 0 for layer in self.layers)):
            raise ConfigError(f"layers must be a non-empty list of layer indices or None, got {self.layers}")
        for rule in self.rules():
            where = f"emotions.{rule.emotion}"
            _choice(f"{where}.mode", rule.mode, MODES)
            _choice(f"{where}.kind", rule.kind, KINDS)
            _choice(f"{where}.units", rule.units, UNITS)
            _choice(f"{where}.ablate_to", rule.ablate_to, ABLATE_TARGETS)
            if rule.weight < 0:
                raise ConfigError(f"{where}.weight must be >= 0, got {rule.weight}")
            if rule.band_k < 0:
                raise ConfigError(f"{where}.band_k must be >= 0, got {rule.band_k}")
            if not 0 <= rule.threshold_percentile <= 100:
                raise ConfigError(f"{where}.threshold_percentile must be in [0, 100], got {rule.threshold_percentile}")
            low, high = rule.clamp_percentiles
            if not 0 <= low < high <= 100:
                raise ConfigError(f"{where}.clamp_percentiles must be (low, high) with 0 <= low < high <= 100")
            if rule.clamp_low is not None and rule.clamp_high is not None and rule.clamp_low > rule.clamp_high:
                raise ConfigError(f"{where}: clamp_low {rule.clamp_low} is above clamp_high {rule.clamp_high}")
        if self.refit is not None and not self.refit_emotions:
            modes = sorted({rule.mode for rule in self.rules()})
            raise ConfigError(f"refit re-extracts the directions of penalised emotions and is valid only with "
                              f"mode 'penalty'; no emotion is penalised here (mode {', '.join(map(repr, modes))})")

    @property
    def refit_emotions(self) -> list[str]:
        """The emotions that get a refitted direction: the penalised ones (when ``refit`` is set)."""
        if self.refit is None:
            return []
        return [rule.emotion for rule in self.rules() if rule.mode == "penalty"]

    @property
    def needs_statistics(self) -> bool:
        """Whether the bundle's base-model statistics are needed."""
        for rule in self.rules():
            if rule.mode == "penalty" and (rule.kind in ("hinge", "band") or rule.units == "z"):
                return True
            if rule.mode == "clamp" or (rule.mode == "ablate" and rule.ablate_to == "mean"):
                return True
            if rule.mode == "steer" and rule.units == "z":
                return True
        return False


def _choice(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name} must be one of {list(options)}, got {value!r}")


def _reject_unknown(data: dict[str, Any], valid, source: str) -> None:
    unknown = [k for k in data if k not in valid]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), list(valid), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{source}: unknown key(s) {', '.join(hints)}; valid keys are {sorted(valid)}")


def regularized_emotions(saved: Mapping[str, Any] | None) -> list[str]:
    """The emotions a checkpoint's regulariser acted on, from what it saved (see
    :meth:`RegularizerConfig.from_saved`); empty when it was trained without emoreg."""
    config = RegularizerConfig.from_saved(saved)
    return [str(emotion) for emotion in config.emotions] if config is not None else []


def to_plain(value: Any) -> Any:
    """Turn OmegaConf containers into plain Python values."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return value
