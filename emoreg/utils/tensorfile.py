"""Save and load a directory of one safetensors file and one JSON metadata file, as emoreg's artefacts are saved.

The emotion-vector bundle (:mod:`emoreg.vectors.bundle`) and the text-emotion classifier
(:mod:`emoreg.textemotion.classifier`) are such directories. A :class:`TensorDirectory` names the two files and
the format tag; it writes them atomically (:func:`emoreg.utils.atomic.atomic_directory`: the safetensors header
carries the format and version, the JSON is indented with a final newline) and reads them back with errors that
name the file at fault (:class:`~emoreg.errors.BundleError`). Checking the metadata's fields is the owner's job:
:meth:`TensorDirectory.read_metadata` returns the parsed JSON, :meth:`TensorDirectory.read_tensors` the tensors.
Loading reads safetensors and JSON only, never pickle.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from emoreg.errors import BundleError
from emoreg.utils.atomic import atomic_directory


@dataclass(frozen=True)
class TensorDirectory:
    """The layout of one kind of saved directory.

    Attributes:
        tensors_file, metadata_file: the file names (``vectors.safetensors``, ``bundle.json``).
        format, format_version: the format tag written into the safetensors header; the JSON's own
            ``format`` field is what :meth:`holds` recognises.
        kind: what the directory holds, in load errors (``"vector bundle"``: "no such vector bundle directory").
        what: the same in refusals to replace a directory (``"an emoreg bundle"``: "does not hold an emoreg
            bundle").
    """

    tensors_file: str
    metadata_file: str
    format: str
    format_version: int
    kind: str
    what: str

    def holds(self, path: str | Path) -> bool:
        """Whether ``path`` is a directory whose metadata file is a JSON object with this ``format``."""
        try:
            data = json.loads((Path(path) / self.metadata_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(data, dict) and data.get("format") == self.format

    def save(self, path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any], *,
             keep_other_files: bool = False) -> Path:
        """Write ``tensors`` and ``metadata`` to directory ``path`` atomically; return ``path``.

        ``path`` must be new, an empty directory or one that :meth:`holds` this format (anything else is refused
        with a :class:`~emoreg.errors.ConfigError`, before and after the work). With ``keep_other_files``, files
        and folders of an existing directory other than the two written here are carried over.
        """
        path = Path(path)
        with atomic_directory(path, is_ours=self.holds, what=self.what) as tmp:
            if keep_other_files and path.is_dir():
                for existing in path.iterdir():
                    if existing.name in (self.tensors_file, self.metadata_file):
                        continue
                    if existing.is_dir() and not existing.is_symlink():
                        shutil.copytree(existing, tmp / existing.name, symlinks=True)
                    else:
                        shutil.copy2(existing, tmp / existing.name, follow_symlinks=False)
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / self.tensors_file),
                      metadata={"format": self.format, "format_version": str(self.format_version)})
            (tmp / self.metadata_file).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        return path

    def read_metadata(self, path: Path) -> tuple[Path, Any]:
        """The metadata file of directory ``path`` and its parsed JSON (any JSON value: the caller checks it).

        Raises:
            BundleError: ``path`` is not a directory, either file is missing, or the metadata is not valid JSON.
        """
        if not path.is_dir():
            raise BundleError(f"{path}: no such {self.kind} directory (expected {self.tensors_file} and "
                              f"{self.metadata_file})")
        meta_path, tensor_path = path / self.metadata_file, path / self.tensors_file
        for required in (meta_path, tensor_path):
            if not required.is_file():
                raise BundleError(f"{path}: not a {self.kind}, {required.name} is missing")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            detail = f"{exc.msg}, line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise BundleError(f"{meta_path}: not valid JSON ({detail})") from None
        return meta_path, meta

    def read_tensors(self, path: Path, required: Sequence[str]) -> dict[str, torch.Tensor]:
        """The tensors of directory ``path``; a missing ``required`` tensor or an unreadable file is a
        :class:`~emoreg.errors.BundleError`."""
        tensor_path = path / self.tensors_file
        try:
            tensors = load_file(str(tensor_path))
        except Exception as exc:  # noqa: BLE001 (safetensors raises its own error types)
            raise BundleError(f"{tensor_path}: cannot read safetensors file ({exc})") from None
        for name in required:
            if name not in tensors:
                raise BundleError(f"{tensor_path}: missing tensor {name!r}")
        return tensors
