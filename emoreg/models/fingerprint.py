"""Identify a model well enough to tell whether a vector bundle belongs to it.

A fingerprint records the architecture, hidden size and decoder-layer count
(which must match for a bundle to be applied at all) and a hash of a few weight
tensors (which tells the exact checkpoint apart from a fine-tuned child of the
same base). Weights are rounded to bfloat16 before hashing, so the same
checkpoint loaded in float32 or bfloat16 gives the same hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from emoreg.models.layout import find_decoder_layers, hidden_size, num_layers, unwrap_model

_HASH_ELEMENTS = 4096


@dataclass(frozen=True)
class ModelFingerprint:
    """What a bundle remembers about the model it was extracted from."""

    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    weights_sha256: str | None
    name_or_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelFingerprint":
        return cls(
            architecture=str(data["architecture"]),
            model_type=str(data.get("model_type", "")),
            hidden_size=int(data["hidden_size"]),
            num_layers=int(data["num_layers"]),
            weights_sha256=data.get("weights_sha256"),
            name_or_path=str(data.get("name_or_path", "")),
        )

    def describe(self) -> str:
        name = f" {self.name_or_path!r}" if self.name_or_path else ""
        weights = f", weights {self.weights_sha256[:12]}" if self.weights_sha256 else ""
        return f"{self.architecture}{name} ({self.num_layers} layers, hidden size {self.hidden_size}{weights})"


def fingerprint_model(model: nn.Module) -> ModelFingerprint:
    """Compute the fingerprint of ``model`` (wrappers are looked through)."""
    base = unwrap_model(model)
    config = getattr(base, "config", None)
    architectures = getattr(config, "architectures", None) or [type(base).__name__]
    return ModelFingerprint(
        architecture=str(architectures[0]),
        model_type=str(getattr(config, "model_type", "")),
        hidden_size=hidden_size(base),
        num_layers=num_layers(base),
        weights_sha256=_weights_hash(base),
        name_or_path=str(getattr(config, "_name_or_path", "") or ""),
    )


def _weights_hash(model: nn.Module) -> str | None:
    """SHA-256 over the first elements of a few weight tensors, or ``None``
    when the weights are not materialised (DeepSpeed ZeRO-3 partitions, meta tensors)."""
    tensors = []
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        tensors.append(embeddings.weight)
    layers = find_decoder_layers(model)
    for index in sorted({0, len(layers) // 2, len(layers) - 1}):
        params = [p for p in layers[index].parameters() if p.dim() >= 1]
        if params:
            tensors.append(params[0])
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor.device.type == "meta" or tensor.numel() == 0 or hasattr(tensor, "ds_id"):
            return None
        flat = tensor.detach().reshape(-1)[:_HASH_ELEMENTS]
        rounded = flat.to(device="cpu", dtype=torch.bfloat16).to(torch.float32)
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(rounded.numpy().tobytes())
    return digest.hexdigest()
