"""What emoreg writes next to a trained checkpoint, and reads back: the one owner of these three files.

* ``emoreg_train.json`` (:data:`TRAIN_INFO_FILE`): how the run was made, ``{"base_model", "recipe",
  "vectors", "regularizer", "screening", "frozen_reader", "emoreg_version"}`` (see :mod:`emoreg.train.run`).
* ``emoreg_config.json`` (:data:`CONFIG_FILE`): the regulariser's settings, ``{"library_version", "config",
  "layers", "vectors"}`` (see :meth:`RegularizerConfig.save_pretrained
  <emoreg.regularization.config.RegularizerConfig.save_pretrained>`).
* ``emoreg_state.json`` (:data:`STATE_FILE`): the regulariser's schedule state, from which a resumed run
  continues, ``{"regularizer", "library_version"}`` (see :mod:`emoreg.integrations.callback`).

Each is written atomically (a run killed while saving leaves the old file or none, never half of one) as
JSON indented by two spaces with a final newline. :func:`read_provenance` reads how a checkpoint was made
into a :class:`CheckpointProvenance`; :func:`read_state` reads the resume state. A file that is not a JSON
object, or a known field of the wrong type, is a :class:`~emoreg.errors.ModelLoadError` naming the file
and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emoreg.errors import ModelLoadError
from emoreg.utils.atomic import atomic_file

TRAIN_INFO_FILE = "emoreg_train.json"
CONFIG_FILE = "emoreg_config.json"
STATE_FILE = "emoreg_state.json"


@dataclass(frozen=True)
class CheckpointProvenance:
    """How a checkpoint was made, as emoreg recorded it next to it (each ``None`` when its file is absent).

    Attributes:
        train_info: the content of ``emoreg_train.json``.
        emoreg_config: the content of ``emoreg_config.json``.
    """

    train_info: dict[str, Any] | None = None
    emoreg_config: dict[str, Any] | None = None

    @property
    def base_model(self) -> str | None:
        """The model reference the run started from (``base_model`` of ``emoreg_train.json``), or ``None``."""
        return (self.train_info or {}).get("base_model") or None


# ---------------------------------------------------------------------------------------------- writing
def write_train_info(directory: str | Path, info: dict[str, Any]) -> Path:
    """Write ``emoreg_train.json`` into ``directory`` (created if needed); values JSON lacks become strings."""
    return _write(Path(directory) / TRAIN_INFO_FILE, info, default=str)


def write_config(directory: str | Path, info: dict[str, Any]) -> Path:
    """Write ``emoreg_config.json`` into ``directory`` (created if needed)."""
    return _write(Path(directory) / CONFIG_FILE, info)


def write_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``emoreg_state.json`` into ``directory`` (created if needed)."""
    return _write(Path(directory) / STATE_FILE, state)


def _write(path: Path, data: dict[str, Any], *, default: Callable[[Any], Any] | None = None) -> Path:
    with atomic_file(path) as handle:
        handle.write(json.dumps(data, indent=2, default=default) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- reading
def read_provenance(directory: str | Path) -> CheckpointProvenance:
    """``emoreg_train.json`` and ``emoreg_config.json`` of ``directory``, those present."""
    return CheckpointProvenance(train_info=read_train_info(directory), emoreg_config=read_config(directory))


def read_train_info(directory: str | Path) -> dict[str, Any] | None:
    """The content of ``directory``'s ``emoreg_train.json``, or ``None`` without one."""
    path = Path(directory) / TRAIN_INFO_FILE
    info = read_json_object(path)
    base = None if info is None else info.get("base_model")
    if base is not None and not isinstance(base, str):
        raise ModelLoadError(f"{path}: field 'base_model' must be a model reference (a string), got {base!r:.80}")
    return info


def read_config(directory: str | Path) -> dict[str, Any] | None:
    """The content of ``directory``'s ``emoreg_config.json``, or ``None`` without one."""
    return read_json_object(Path(directory) / CONFIG_FILE, object_fields=("config",))


def read_state(directory: str | Path) -> dict[str, Any] | None:
    """The content of ``directory``'s ``emoreg_state.json``, or ``None`` without one."""
    return read_json_object(Path(directory) / STATE_FILE, object_fields=("regularizer",))


def read_json_object(path: str | Path, *, object_fields: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """A JSON file holding one object, or ``None`` when there is no such file.

    Raises:
        ModelLoadError: the file is not UTF-8 JSON or not an object, or one of ``object_fields`` is present
            but not an object.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = f"{exc.msg}, line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise ModelLoadError(f"{path}: not valid JSON ({detail})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for field in object_fields:
        if field in data and not isinstance(data[field], dict):
            raise ModelLoadError(f"{path}: field {field!r} must be a JSON object, got {data[field]!r:.80}")
    return data


__all__ = ["CONFIG_FILE", "STATE_FILE", "TRAIN_INFO_FILE", "CheckpointProvenance", "read_config",
           "read_json_object", "read_provenance", "read_state", "read_train_info", "write_config", "write_state",
           "write_train_info"]
