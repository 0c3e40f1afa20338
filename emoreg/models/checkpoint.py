"""Load any trained artefact for evaluation: a model reference, a full save, or a PEFT adapter.

:func:`load_for_eval` accepts what :func:`emoreg.models.loading.load_model_and_tokenizer`
accepts (``"default"``, hub ids, ``.gguf`` files, model directories) plus:

* a PEFT adapter directory (``adapter_config.json``): its base model is loaded
  (``base_model`` from the directory's ``emoreg_train.json`` when present, since
  it is the reference the run was given, e.g. ``"default"``, which resolves
  offline; else the adapter's ``base_model_name_or_path``), the adapter applied
  and merged (``merge_and_unload``);
* a Trainer/DeepSpeed save: a directory with ``config.json`` and weights
  (ZeRO-3 writes them when ``stage3_gather_16bit_weights_on_model_save`` is
  true). A directory holding only ZeRO shards (``global_step*/``) is refused
  with the two ways to get loadable weights; a training output directory with
  ``checkpoint-*`` subdirectories but no model at the top is refused with the
  list of checkpoints to choose from.

The tokenizer comes from the checkpoint directory when it has one, else from the base model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emoreg.errors import ModelLoadError
from emoreg.models.provenance import TRAIN_INFO_FILE, read_json_object, read_provenance

ADAPTER_CONFIG_FILE = "adapter_config.json"
_WEIGHT_PATTERNS = ("model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
                    "pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class CheckpointInfo:
    """What :func:`load_for_eval` found out about a model reference.

    Attributes:
        ref: the reference as given.
        kind: ``"default"``, ``"hub"``, ``"gguf"``, ``"directory"`` or ``"peft_adapter"``.
        base: the model this one was trained from, when known (the adapter's base, or
            ``base_model`` of ``emoreg_train.json``); ``None`` otherwise.
        emoreg_config: the checkpoint's ``emoreg_config.json`` (regulariser settings) or ``None``.
        train_info: the checkpoint's ``emoreg_train.json`` or ``None``.
        adapter: for PEFT adapters, ``{"base_model_name_or_path", "peft_type", "loaded_base"}``.
    """

    ref: str
    kind: str
    base: str | None = None
    emoreg_config: dict[str, Any] | None = None
    train_info: dict[str, Any] | None = None
    adapter: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "kind": self.kind, "base": self.base, "emoreg_config": self.emoreg_config,
                "train_info": self.train_info, "adapter": self.adapter}


def load_for_eval(ref: str, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu"):
    """Load ``(model, tokenizer, info)`` for evaluation; ``info`` is a :class:`CheckpointInfo`.

    The model is in eval mode on ``device``; the tokenizer has a pad token.
    """
    from emoreg.models.loading import load_model_and_tokenizer, resolve_model_source

    path = Path(ref).expanduser()
    if not path.is_dir():
        source = resolve_model_source(ref)
        model, tokenizer = load_model_and_tokenizer(ref, dtype=dtype, device=device)
        return model, tokenizer, CheckpointInfo(ref=ref, kind=source.kind)
    provenance = read_provenance(path)
    trained_from = provenance.base_model
    if (path / ADAPTER_CONFIG_FILE).is_file():
        model, tokenizer, adapter = _load_adapter(path, trained_from, dtype, device)
        info = CheckpointInfo(ref=ref, kind="peft_adapter", base=adapter["loaded_base"],
                              emoreg_config=provenance.emoreg_config, train_info=provenance.train_info,
                              adapter=adapter)
        return model, tokenizer, info
    check_model_directory(path)
    if has_tokenizer(path) or not trained_from:
        model, tokenizer = load_model_and_tokenizer(str(path), dtype=dtype, device=device)
    else:
        model = _load_weights_only(path, dtype, device)
        tokenizer = load_tokenizer(trained_from)
    info = CheckpointInfo(ref=ref, kind="directory", base=trained_from, emoreg_config=provenance.emoreg_config,
                          train_info=provenance.train_info)
    return model, tokenizer, info


def has_weights(directory: Path) -> bool:
    """Whether ``directory`` holds transformers model weights (safetensors or bin, sharded or not)."""
    return any(any(directory.glob(pattern)) for pattern in _WEIGHT_PATTERNS)


def has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in _TOKENIZER_FILES)


def check_model_directory(path: Path) -> None:
    """Raise a :class:`ModelLoadError` saying what to do when ``path`` holds no loadable model.

    Weights must be safetensors: pickle files (``pytorch_model.bin``) can run code when they are loaded, and
    emoreg never unpickles them.
    """
    if (path / "config.json").is_file() and has_weights(path):
        safetensors = any(path.glob("model*.safetensors")) or (path / "model.safetensors.index.json").is_file()
        if not safetensors:
            pickles = sorted(p.name for p in path.glob("pytorch_model*.bin"))
            raise ModelLoadError(
                f"{path} holds its weights only as pickle files ({', '.join(pickles) or 'pytorch_model.bin'}); "
                "emoreg loads safetensors only (a pickle file can run code when it is loaded). In an environment "
                "you trust, convert it: AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR) writes "
                "model.safetensors"
            )
        return
    shards = sorted(p.name for p in path.glob("global_step*") if p.is_dir())
    if shards:
        script = " or run the zero_to_fp32.py script DeepSpeed left there " \
                 f"(python {path / 'zero_to_fp32.py'} {path} OUTPUT_DIR)" if (path / "zero_to_fp32.py").is_file() \
            else " or convert the shards with DeepSpeed's zero_to_fp32.py script"
        raise ModelLoadError(
            f"{path} holds only DeepSpeed ZeRO shards ({', '.join(shards)}), no model weights: train with "
            f"\"stage3_gather_16bit_weights_on_model_save\": true in the DeepSpeed config so the Trainer saves "
            f"model.safetensors,{script}, then evaluate that directory"
        )
    checkpoints = sorted((p for p in path.glob("checkpoint-*") if p.is_dir()), key=_checkpoint_step)
    if checkpoints:
        raise ModelLoadError(
            f"{path} is a training output directory without a model at its top level; choose one of its "
            f"checkpoints: {', '.join(str(p) for p in checkpoints)}"
        )
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    listing = ", ".join(found[:20]) + (f" and {len(found) - 20} more" if len(found) > 20 else "")
    raise ModelLoadError(
        f"{path} holds no model: expected config.json with model.safetensors or pytorch_model.bin "
        f"(a saved transformers model) or adapter_config.json (a PEFT adapter); found {listing or 'nothing'}"
    )


def load_tokenizer(ref: str):
    """The tokenizer of a model reference (``"default"``, directory, ``.gguf`` file or hub id), with a pad token."""
    from transformers import AutoTokenizer

    from emoreg.models.loading import cached_default_checkpoint, resolve_model_source

    source = resolve_model_source(ref)
    try:
        if source.kind == "default":
            tokenizer = AutoTokenizer.from_pretrained(str(cached_default_checkpoint(source)))
        elif source.kind == "gguf":
            tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
        elif source.kind == "directory":
            tokenizer = AutoTokenizer.from_pretrained(source.location)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source.location, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not load the tokenizer of {source.describe()}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_adapter(path: Path, trained_from: str | None, dtype, device):
    from emoreg.models.loading import load_model_and_tokenizer

    adapter_config = read_json_object(path / ADAPTER_CONFIG_FILE) or {}
    declared = adapter_config.get("base_model_name_or_path")
    base = str(trained_from or declared or "")
    if not base:
        raise ModelLoadError(
            f"{path / ADAPTER_CONFIG_FILE}: field 'base_model_name_or_path' is empty and there is no "
            f"{TRAIN_INFO_FILE} naming the base model; cannot tell which model the adapter belongs to"
        )
    try:
        model, tokenizer = load_model_and_tokenizer(base, dtype=dtype, device=device)
    except ModelLoadError as exc:
        raise ModelLoadError(f"loading the base model {base!r} of the PEFT adapter in {path}: {exc}") from exc
    try:
        from peft import PeftModel

        merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"could not apply the PEFT adapter in {path} to {base!r}: {exc}") from exc
    if has_tokenizer(path):
        tokenizer = load_tokenizer(str(path))
    merged.to(device)
    merged.eval()
    adapter = {"base_model_name_or_path": declared, "peft_type": adapter_config.get("peft_type"),
               "loaded_base": base}
    return merged, tokenizer, adapter


def _load_weights_only(path: Path, dtype, device):
    from transformers import AutoModelForCausalLM

    from emoreg.models.loading import parse_dtype

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=parse_dtype(dtype))
    except (ValueError, KeyError, OSError) as exc:
        raise ModelLoadError(f"could not load {path} as a causal language model: {exc}") from exc
    model.to(device)
    model.eval()
    return model


def _checkpoint_step(path: Path) -> tuple[int, str]:
    match = re.search(r"(\d+)$", path.name)
    return (int(match.group(1)) if match else -1, path.name)
