"""The emotion-vector bundle: unit directions per layer and emotion, plus the
base model's projection statistics, tied to the model they came from.

On disk a bundle is a directory with two files:

* ``vectors.safetensors``: ``directions`` ``[layers, emotions, d_model]`` (unit
  norm, float32) and the statistics ``stats.mean``, ``stats.std``
  ``[layers, emotions]`` and ``stats.percentiles`` ``[layers, emotions, q]``;
* ``bundle.json``: format version, emotions, layers, default layer, percentile
  levels, model fingerprint, extraction settings, corpus hash, library version
  and the validation summary.

Loading reads safetensors and JSON only, never pickle.

Layer ``l`` means the output of decoder layer ``l`` (0-based), i.e. the
residual stream after ``l + 1`` blocks.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from emoreg.errors import BundleError
from emoreg.models.fingerprint import ModelFingerprint, fingerprint_model
from emoreg.utils.tensorfile import TensorDirectory
from emoreg.version import __version__

FORMAT_VERSION = 1
TENSORS_FILE = "vectors.safetensors"
METADATA_FILE = "bundle.json"
#: The bundle directory's two files (saving and loading them).
BUNDLE_FILES = TensorDirectory(TENSORS_FILE, METADATA_FILE, format="emoreg-vectors", format_version=FORMAT_VERSION,
                               kind="vector bundle", what="an emoreg bundle")


def is_bundle_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding an emoreg bundle (``bundle.json`` with the bundle format)."""
    return BUNDLE_FILES.holds(path)
DEFAULT_BUNDLE = "default"
DEFAULT_PERCENTILES: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
_UNIT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class LayerStats:
    """Base-model projection statistics at one layer, one entry per emotion."""

    mean: torch.Tensor  # [E]
    std: torch.Tensor  # [E]
    percentiles: torch.Tensor  # [E, Q]
    levels: tuple[float, ...]

    def percentile(self, level: float) -> torch.Tensor:
        """The ``level``-th percentile per emotion (a level stored in the bundle)."""
        for i, stored in enumerate(self.levels):
            if math.isclose(stored, level):
                return self.percentiles[:, i]
        raise BundleError(f"percentile {level} is not stored in the bundle; it has {list(self.levels)}")


class EmotionVectors:
    """Unit emotion directions per layer with the base model's statistics.

    Build one with :meth:`from_pretrained` (a saved bundle or ``"default"``,
    the bundle shipped for the embedded model), :meth:`from_tensors` (vectors
    made elsewhere) or :func:`emoreg.vectors.extraction.extract_emotion_vectors`.
    """

    def __init__(
        self,
        directions: torch.Tensor,
        emotions: Sequence[str],
        layers: Sequence[int],
        *,
        default_layer: int | None = None,
        stats_mean: torch.Tensor | None = None,
        stats_std: torch.Tensor | None = None,
        stats_percentiles: torch.Tensor | None = None,
        percentile_levels: Sequence[float] = DEFAULT_PERCENTILES,
        model_fingerprint: ModelFingerprint | None = None,
        extraction: dict[str, Any] | None = None,
        corpus_sha256: str | None = None,
        validation: dict[str, Any] | None = None,
        library_version: str = __version__,
    ) -> None:
        self._directions = directions.detach().to(torch.float32).cpu().contiguous()
        self._emotions = [str(e) for e in emotions]
        self._layers = [int(layer) for layer in layers]
        self._stats_mean = _optional_float(stats_mean)
        self._stats_std = _optional_float(stats_std)
        self._stats_percentiles = _optional_float(stats_percentiles)
        self._levels = tuple(float(q) for q in percentile_levels)
        self.model_fingerprint = model_fingerprint
        self.extraction = dict(extraction or {})
        self.corpus_sha256 = corpus_sha256
        self.validation = dict(validation or {})
        self.library_version = library_version
        if default_layer is None:
            default_layer = self._layers[min(len(self._layers) - 1, round(2 * len(self._layers) / 3))]
        self._default_layer = int(default_layer)
        self._check()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tensors(
        cls,
        directions: torch.Tensor | dict[int, torch.Tensor],
        emotions: Sequence[str],
        layers: Sequence[int] | None = None,
        *,
        normalize: bool = True,
        **kwargs: Any,
    ) -> EmotionVectors:
        """Build a bundle from raw vectors.

        ``directions`` is ``[layers, emotions, d]`` (with ``layers`` naming the
        decoder layers) or a mapping ``{layer: [emotions, d]}``. Vectors are
        unit-normalised unless ``normalize=False`` (then they must already be
        unit norm). Statistics and metadata are passed as keyword arguments
        (see the constructor).
        """
        if isinstance(directions, dict):
            layers = sorted(directions) if layers is None else list(layers)
            directions = torch.stack([torch.as_tensor(directions[layer]) for layer in layers])
        directions = torch.as_tensor(directions, dtype=torch.float32)
        if directions.dim() == 2:
            directions = directions.unsqueeze(0)
        if layers is None:
            raise BundleError("from_tensors needs `layers` when directions is a tensor")
        if normalize:
            norms = directions.norm(dim=-1, keepdim=True)
            if (norms == 0).any():
                raise BundleError("a direction has zero norm and cannot be normalised")
            directions = directions / norms
        return cls(directions, emotions, layers, **kwargs)

    def _check(self) -> None:
        d = self._directions
        if d.dim() != 3:
            raise BundleError(f"directions must be [layers, emotions, d_model], got shape {tuple(d.shape)}")
        n_layers, n_emotions, _ = d.shape
        if n_layers != len(self._layers):
            raise BundleError(f"directions have {n_layers} layers but {len(self._layers)} layer indices were given")
        if n_emotions != len(self._emotions):
            raise BundleError(f"directions have {n_emotions} emotions but {len(self._emotions)} names were given")
        if len(set(self._emotions)) != len(self._emotions):
            raise BundleError(f"duplicate emotion names: {self._emotions}")
        if len(set(self._layers)) != len(self._layers) or any(layer < 0 for layer in self._layers):
            raise BundleError(f"layers must be distinct non-negative indices, got {self._layers}")
        if not torch.isfinite(d).all():
            raise BundleError("directions contain NaN or Inf")
        norms = d.norm(dim=-1)
        if (norms - 1).abs().max() > _UNIT_TOLERANCE:
            raise BundleError(
                f"directions must be unit norm (max deviation {float((norms - 1).abs().max()):.3g}); "
                "use from_tensors(..., normalize=True)"
            )
        if self._default_layer not in self._layers:
            raise BundleError(f"default layer {self._default_layer} is not among the bundle's layers {self._layers}")
        for name, tensor in (("stats_mean", self._stats_mean), ("stats_std", self._stats_std)):
            if tensor is not None and tuple(tensor.shape) != (n_layers, n_emotions):
                raise BundleError(f"{name} must have shape {(n_layers, n_emotions)}, got {tuple(tensor.shape)}")
        if self._stats_percentiles is not None:
            expected = (n_layers, n_emotions, len(self._levels))
            if tuple(self._stats_percentiles.shape) != expected:
                raise BundleError(
                    f"stats_percentiles must have shape {expected}, got {tuple(self._stats_percentiles.shape)}"
                )
        if self._stats_std is not None and (self._stats_std <= 0).any():
            raise BundleError("stats_std must be positive")

    # ------------------------------------------------------------------ accessors
    @property
    def emotions(self) -> list[str]:
        return list(self._emotions)

    @property
    def layers(self) -> list[int]:
        return list(self._layers)

    @property
    def default_layer(self) -> int:
        return self._default_layer

    @property
    def hidden_size(self) -> int:
        return int(self._directions.shape[-1])

    @property
    def has_stats(self) -> bool:
        return self._stats_mean is not None and self._stats_std is not None

    @property
    def percentile_levels(self) -> tuple[float, ...]:
        return self._levels

    def emotion_index(self, emotion: str) -> int:
        try:
            return self._emotions.index(emotion)
        except ValueError:
            import difflib

            close = difflib.get_close_matches(str(emotion), self._emotions, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BundleError(f"emotion {emotion!r} is not in the bundle{hint}; it has {self._emotions}") from None

    def layer_index(self, layer: int) -> int:
        try:
            return self._layers.index(int(layer))
        except ValueError:
            raise BundleError(f"layer {layer} is not in the bundle; it has layers {self._layers}") from None

    def directions(self, layer: int | None = None) -> torch.Tensor:
        """Unit directions ``[num_emotions, d_model]`` at ``layer`` (default layer when ``None``)."""
        layer = self._default_layer if layer is None else layer
        return self._directions[self.layer_index(layer)].clone()

    def direction(self, emotion: str, layer: int | None = None) -> torch.Tensor:
        """The unit direction ``[d_model]`` of one emotion."""
        return self.directions(layer)[self.emotion_index(emotion)]

    def all_directions(self) -> torch.Tensor:
        """All directions ``[layers, emotions, d_model]`` (a copy)."""
        return self._directions.clone()

    def stats(self, layer: int | None = None) -> LayerStats:
        """Base-model projection statistics on neutral text at ``layer``."""
        if not self.has_stats:
            raise BundleError("this bundle has no base-model statistics (built without neutral text?)")
        index = self.layer_index(self._default_layer if layer is None else layer)
        percentiles = (
            self._stats_percentiles[index]
            if self._stats_percentiles is not None
            else torch.full((len(self._emotions), len(self._levels)), float("nan"))
        )
        return LayerStats(
            mean=self._stats_mean[index].clone(),
            std=self._stats_std[index].clone(),
            percentiles=percentiles.clone(),
            levels=self._levels,
        )

    def project(self, hidden: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Projections ``[..., num_emotions]`` of hidden states ``[..., d_model]`` (computed in float32)."""
        if hidden.shape[-1] != self.hidden_size:
            raise BundleError(
                f"hidden states have size {hidden.shape[-1]} but the bundle's vectors have size {self.hidden_size}"
            )
        directions = self.directions(layer).to(hidden.device)
        return hidden.to(torch.float32) @ directions.T

    def standardize(self, projections: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """z-scores ``(p - mean) / std`` using the base model's statistics at ``layer``."""
        stats = self.stats(layer)
        return (projections - stats.mean.to(projections.device)) / stats.std.to(projections.device)

    def subset(self, emotions: Sequence[str] | None = None, layers: Sequence[int] | None = None) -> EmotionVectors:
        """A bundle restricted to some emotions and/or layers (metadata kept)."""
        emotions = list(emotions) if emotions is not None else self._emotions
        layers = list(layers) if layers is not None else self._layers
        e_idx = torch.tensor([self.emotion_index(e) for e in emotions], dtype=torch.long)
        l_idx = torch.tensor([self.layer_index(layer) for layer in layers], dtype=torch.long)

        def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[l_idx][:, e_idx]

        default_layer = self._default_layer if self._default_layer in layers else None
        return EmotionVectors(
            self._directions[l_idx][:, e_idx],
            emotions,
            layers,
            default_layer=default_layer,
            stats_mean=pick(self._stats_mean),
            stats_std=pick(self._stats_std),
            stats_percentiles=pick(self._stats_percentiles),
            percentile_levels=self._levels,
            model_fingerprint=self.model_fingerprint,
            extraction=self.extraction,
            corpus_sha256=self.corpus_sha256,
            validation=self.validation,
            library_version=self.library_version,
        )

    # ------------------------------------------------------------------ model fit
    def check_model(self, model: torch.nn.Module, *, allow_different_weights: bool = True,
                    fingerprint: ModelFingerprint | None = None) -> None:
        """Raise :class:`BundleError` when the bundle cannot be applied to ``model``.

        Hidden size and layer range must fit. A different architecture or
        weight hash with fitting shapes (e.g. a fine-tuned child of the same
        base) is a warning, or an error when ``allow_different_weights=False``.
        ``fingerprint``: ``model``'s fingerprint when the caller has it (else
        it is computed here).
        """
        theirs = fingerprint if fingerprint is not None else fingerprint_model(model)
        ours = self.model_fingerprint
        ours_desc = ours.describe() if ours else "an unknown model"
        if theirs.hidden_size != self.hidden_size:
            raise BundleError(
                f"the vector bundle was made for {ours_desc} with hidden size {self.hidden_size}, "
                f"but the model is {theirs.describe()}"
            )
        if max(self._layers) >= theirs.num_layers:
            raise BundleError(
                f"the vector bundle has layers up to {max(self._layers)} (made for {ours_desc}), "
                f"but the model is {theirs.describe()}"
            )
        if ours is None:
            return
        problems = []
        if ours.num_layers != theirs.num_layers:
            problems.append(f"layer count {ours.num_layers} vs {theirs.num_layers}")
        if ours.architecture != theirs.architecture:
            problems.append(f"architecture {ours.architecture} vs {theirs.architecture}")
        if ours.weights_sha256 and theirs.weights_sha256 and ours.weights_sha256 != theirs.weights_sha256:
            problems.append("different weights")
        if not problems:
            return
        message = (
            f"the vector bundle was made for {ours_desc} but the model is {theirs.describe()} "
            f"({'; '.join(problems)})"
        )
        if not allow_different_weights:
            raise BundleError(message)
        warnings.warn(message + "; shapes fit, so it is applied (e.g. a fine-tuned child of the same base)",
                      stacklevel=2)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path) -> Path:
        """Write the bundle to directory ``path`` atomically and return it.

        ``path`` must be new, an empty directory or an existing bundle (anything else is refused with a
        :class:`~emoreg.errors.ConfigError`, before and after the work, so nothing that is not a bundle is ever
        replaced). Other files and folders already in a bundle directory (a validation report) are kept."""
        tensors = {"directions": self._directions}
        if self._stats_mean is not None:
            tensors["stats.mean"] = self._stats_mean
        if self._stats_std is not None:
            tensors["stats.std"] = self._stats_std
        if self._stats_percentiles is not None:
            tensors["stats.percentiles"] = self._stats_percentiles
        return BUNDLE_FILES.save(path, tensors, self.metadata(), keep_other_files=True)

    def metadata(self) -> dict[str, Any]:
        """The JSON metadata written to ``bundle.json``."""
        return {
            "format": "emoreg-vectors",
            "format_version": FORMAT_VERSION,
            "library_version": self.library_version,
            "emotions": self._emotions,
            "layers": self._layers,
            "default_layer": self._default_layer,
            "hidden_size": self.hidden_size,
            "percentile_levels": list(self._levels),
            "model_fingerprint": self.model_fingerprint.to_dict() if self.model_fingerprint else None,
            "extraction": self.extraction,
            "corpus_sha256": self.corpus_sha256,
            "validation": self.validation,
        }

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = DEFAULT_BUNDLE) -> EmotionVectors:
        """Load a bundle from a directory, or ``"default"`` for the shipped bundle."""
        path = default_bundle_path() if str(name_or_path) == DEFAULT_BUNDLE else Path(name_or_path)
        if path.is_file() and path.name in (TENSORS_FILE, METADATA_FILE):
            path = path.parent
        meta_path, meta = BUNDLE_FILES.read_metadata(path)
        if not isinstance(meta, dict):
            raise BundleError(f"{meta_path}: expected a JSON object, got a JSON {type(meta).__name__}")
        if meta.get("format") != "emoreg-vectors":
            raise BundleError(f"{meta_path}: not an emoreg vector bundle (field 'format' is {meta.get('format')!r})")
        version = meta.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise BundleError(f"{meta_path}: field 'format_version' must be a positive whole number, got {version!r}")
        if version > FORMAT_VERSION:
            raise BundleError(
                f"{meta_path}: bundle format version {version} is newer than emoreg {__version__} reads "
                f"(up to {FORMAT_VERSION}); upgrade emoreg"
            )
        for field in ("emotions", "layers", "default_layer"):
            if field not in meta:
                raise BundleError(f"{meta_path}: missing field {field!r}")
        if not isinstance(meta["emotions"], list) or not all(isinstance(e, str) and e for e in meta["emotions"]):
            raise BundleError(f"{meta_path}: field 'emotions' must be a list of emotion names, "
                              f"got {meta['emotions']!r:.80}")
        if not isinstance(meta["layers"], list) or not all(
                isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0 for layer in meta["layers"]):
            raise BundleError(f"{meta_path}: field 'layers' must be a list of layer indices (whole numbers >= 0), "
                              f"got {meta['layers']!r:.80}")
        default_layer = meta["default_layer"]
        if isinstance(default_layer, bool) or not isinstance(default_layer, int):
            raise BundleError(f"{meta_path}: field 'default_layer' must be a layer index, got {default_layer!r}")
        tensors = BUNDLE_FILES.read_tensors(path, required=("directions",))
        fingerprint = meta.get("model_fingerprint")
        try:
            return cls(
                tensors["directions"],
                meta["emotions"],
                meta["layers"],
                default_layer=meta["default_layer"],
                stats_mean=tensors.get("stats.mean"),
                stats_std=tensors.get("stats.std"),
                stats_percentiles=tensors.get("stats.percentiles"),
                percentile_levels=meta.get("percentile_levels", DEFAULT_PERCENTILES),
                model_fingerprint=ModelFingerprint.from_dict(fingerprint) if fingerprint else None,
                extraction=meta.get("extraction"),
                corpus_sha256=meta.get("corpus_sha256"),
                validation=meta.get("validation"),
                library_version=meta.get("library_version", "unknown"),
            )
        except BundleError as exc:
            raise BundleError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------ identity
    def content_hash(self) -> str:
        """SHA-256 of the bundle's content: emotions, layers, default layer, directions and statistics.

        It does not depend on how the bundle was saved or loaded, nor on its metadata (model fingerprint,
        extraction settings, validation): eval cache keys, eval results and ``emoreg_train.json`` name the
        bundle by it.
        """
        import hashlib

        digest = hashlib.sha256()
        header = {"emotions": self.emotions, "layers": self.layers, "default_layer": self.default_layer}
        digest.update(json.dumps(header, sort_keys=True, separators=(",", ":"), default=str).encode())
        for layer in self.layers:
            digest.update(self.directions(layer).to(torch.float32).contiguous().numpy().tobytes())
            if self.has_stats:
                stats = self.stats(layer)
                for tensor in (stats.mean, stats.std):
                    digest.update(tensor.to(torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def __repr__(self) -> str:
        model = self.model_fingerprint.describe() if self.model_fingerprint else "unknown model"
        return (
            f"EmotionVectors({len(self._emotions)} emotions, {len(self._layers)} layers, "
            f"default layer {self._default_layer}, d_model {self.hidden_size}, model {model})"
        )


def default_bundle_path() -> Path:
    """The bundle shipped for the embedded default model."""
    return Path(str(resources.files("emoreg") / "data" / "vectors" / "smollm2-135m-instruct"))


def _optional_float(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else torch.as_tensor(tensor).detach().to(torch.float32).cpu().contiguous()
