"""A model's identity: its fingerprint (which bundles fit it) and its content hash (which eval results are its).

A fingerprint records the architecture, hidden size and decoder-layer count
(which must match for a bundle to be applied at all) and a hash of a few weight
tensors (which tells the exact checkpoint apart from a fine-tuned child of the
same base). Weights are rounded to bfloat16 before hashing, so the same
checkpoint loaded in float32 or bfloat16 gives the same hash.

The content hash (:func:`model_content_hash`) identifies the exact weights, in
every parameter and at their stored precision: it is the model's identity in
eval cache keys.

Both read at most :data:`SAMPLE_ELEMENTS` elements of a tensor (the fingerprint
the first ones, the content hash evenly spaced ones). DeepSpeed ZeRO-3
partitioned parameters (:func:`is_partitioned`) are gathered one at a time for
the content hash; a fingerprint of partitioned (or meta) weights has no weight
hash. :func:`model_identity` computes both at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from emoreg.errors import ModelLayoutError
from emoreg.models.layout import find_decoder_layers, hidden_size, num_layers, unwrap_model

#: Elements of a tensor that a fingerprint or a content hash reads at most.
SAMPLE_ELEMENTS = 4096


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
    def from_dict(cls, data: dict[str, Any]) -> ModelFingerprint:
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


@dataclass(frozen=True)
class ModelIdentity:
    """A model's fingerprint (``None`` when its decoder layers cannot be found) and its content hash."""

    fingerprint: ModelFingerprint | None
    content_hash: str


def model_identity(model: nn.Module) -> ModelIdentity:
    """The fingerprint and content hash of ``model`` (under ZeRO-3 every rank must call this)."""
    return ModelIdentity(fingerprint=fingerprint_or_none(model), content_hash=model_content_hash(model))


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


def fingerprint_or_none(model: nn.Module) -> ModelFingerprint | None:
    """The fingerprint of ``model``, or ``None`` when its decoder layers cannot be found."""
    try:
        return fingerprint_model(model)
    except ModelLayoutError:
        return None


def model_content_hash(model: nn.Module) -> str:
    """SHA-256 identifying the model's weights, cheap on large models.

    For every parameter (in ``named_parameters`` order, names included): its
    name, shape and dtype, up to 4096 evenly spaced elements (stored values,
    exact), and the float64 sum of the whole tensor, printed to 12 significant
    digits. The sampled elements catch dense changes exactly; the sum catches a
    change anywhere in a tensor (e.g. a few fine-tuned embedding rows) while
    staying equal across devices and reduction orders.
    Values are not rounded to a coarser dtype: a model loaded in bfloat16 and in
    float32 gives different hashes, as it gives different outputs. DeepSpeed
    ZeRO-3 partitions are gathered one parameter at a time (every rank must call this).
    """
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        with _gathered(param):
            tensor = param.detach()
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            flat = tensor.reshape(-1)
            n = flat.numel()
            if n == 0:
                continue
            index = sample_indices(n).to(flat.device)
            digest.update(flat[index].to(device="cpu", dtype=torch.float32).numpy().tobytes())
            total = float(torch.sum(flat, dtype=torch.float64))
            digest.update(f"{total:.12e}|".encode())
    return digest.hexdigest()


def sample_indices(n: int, k: int = SAMPLE_ELEMENTS) -> torch.Tensor:
    """``min(n, k)`` evenly spaced indices into ``n`` elements, first and last included (exact integer arithmetic)."""
    k = min(n, k)
    if k <= 1:
        return torch.zeros(k, dtype=torch.long)
    return torch.arange(k, dtype=torch.long) * (n - 1) // (k - 1)


def is_partitioned(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DeepSpeed ZeRO-3 partitioned parameter (each rank holds only a shard)."""
    return hasattr(tensor, "ds_id")


@contextmanager
def _gathered(param: torch.Tensor) -> Iterator[None]:
    """Materialise a DeepSpeed ZeRO-3 partitioned parameter for the block (no-op otherwise)."""
    if not is_partitioned(param):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
        yield


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
        if tensor.device.type == "meta" or tensor.numel() == 0 or is_partitioned(tensor):
            return None
        flat = tensor.detach().reshape(-1)[:SAMPLE_ELEMENTS]
        rounded = flat.to(device="cpu", dtype=torch.bfloat16).to(torch.float32)
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(rounded.numpy().tobytes())
    return digest.hexdigest()
