"""Screen SFT/DPO training rows with a frozen reader before training (persona-vectors data flagging).

Each row's training target is read by the frozen base model (:class:`~emoreg.regularization.frozen_reader.
FrozenEmotionReader`), no gradient ever flows through the reader, and rows whose weighted reading
``score = sum_e w_e * z_e`` exceeds ``max_z`` are dropped (with one emotion at weight 1, the score is its z).

What is read per layout (the layouts of :mod:`emoreg.train.data`):

* SFT ``messages``: the **last assistant turn**, after the messages before it (rendered with the chat
  template), averaged over the reply tokens only;
* SFT ``prompt`` + ``completion``: the completion's last message after the prompt (conversational), or the
  completion string alone;
* SFT ``text``: the whole text;
* DPO: ``chosen``, after the prompt (conversational) or alone (strings).

Only ``mode: drop`` exists: TRL's SFTTrainer and DPOTrainer take no per-row loss weights, so reweighting
rows would mean patching their loss functions; ``reweight`` is refused with an error that says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from emoreg.errors import ConfigError, DataFormatError

logger = logging.getLogger(__name__)

SCREEN_MODES = ("drop",)
SCREEN_TRAINER_TYPES = ("sft", "dpo")


@dataclass
class ScreenResult:
    """The outcome of :func:`screen_rows`: the kept rows and what was dropped (0-based row indices)."""

    kept: list[dict[str, Any]]
    scores: list[float]
    dropped: list[int]
    field: str
    emotions: dict[str, float]
    layer: int
    max_z: float
    mode: str = "drop"

    def to_dict(self) -> dict[str, Any]:
        """What ``emoreg_train.json`` records under ``screening``."""
        finite = [s for s in self.scores if math.isfinite(s)]
        return {
            "mode": self.mode,
            "emotions": dict(self.emotions),
            "layer": self.layer,
            "max_z": self.max_z,
            "field": self.field,
            "rows_before": len(self.scores),
            "rows_after": len(self.kept),
            "dropped": len(self.dropped),
            "dropped_rows": list(self.dropped),
            "dropped_scores": [round(self.scores[i], 4) for i in self.dropped],
            "score_mean": round(sum(finite) / len(finite), 4) if finite else None,
            "score_max": round(max(finite), 4) if finite else None,
        }


def screened_target(row: dict[str, Any], trainer_type: str, index: int) -> tuple[Any, str, str]:
    """``(context or None, text, field)``: what the reader reads in one row (see module doc).

    ``context`` None means the text is read alone.
    """
    if trainer_type not in SCREEN_TRAINER_TYPES:
        raise ConfigError(f"data.screen is for trainer.type sft or dpo (rows with a training target), "
                          f"not {trainer_type!r}")
    if trainer_type == "dpo":
        return _in_context(row, "prompt", "chosen", index)
    if "messages" in row:
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            raise DataFormatError(f"data.screen: row {index}, field 'messages': no assistant turn to read")
        return [dict(m) for m in messages[:last]], messages[last]["content"], "messages (last assistant turn)"
    if "completion" in row:
        return _in_context(row, "prompt", "completion", index)
    if "text" in row:
        return None, row["text"], "text"
    raise DataFormatError(f"data.screen: row {index} has no messages, completion or text field "
                          f"(fields {sorted(row)})")


def screen_rows(rows: Sequence[dict[str, Any]], trainer_type: str, reader, *, max_z: float,
                mode: str = "drop") -> ScreenResult:
    """Read every row's target with ``reader`` and drop those whose weighted z exceeds ``max_z``.

    Raises:
        ConfigError: an unsupported mode or trainer type, or no row left after screening.
        DataFormatError: a row whose target has no token to read (names the row and field).
    """
    if mode not in SCREEN_MODES:
        raise ConfigError(screen_mode_error(mode))
    if not rows:
        raise DataFormatError("data.screen: no rows to screen")
    targets = [screened_target(row, trainer_type, i) for i, row in enumerate(rows)]
    z = reader.read_targets([context for context, _, _ in targets], [text for _, text, _ in targets])
    scores = reader.weighted(z).tolist()
    unread = [i for i, s in enumerate(scores) if math.isnan(s)]
    if unread:
        first = unread[0]
        raise DataFormatError(f"data.screen: row {first}, field {targets[first][2]!r}: no token to read after the "
                              f"attention sink ({len(unread)} such row(s): {unread[:5]})")
    dropped = [i for i, s in enumerate(scores) if s > max_z]
    dropped_set = set(dropped)
    kept = [row for i, row in enumerate(rows) if i not in dropped_set]
    fields = sorted({t[2] for t in targets})
    result = ScreenResult(kept=kept, scores=scores, dropped=dropped, field=", ".join(fields),
                          emotions=dict(reader.weights), layer=reader.layer, max_z=float(max_z), mode=mode)
    if not kept:
        raise ConfigError(f"data.screen dropped all {len(rows)} rows: every weighted reading of "
                          f"{fields[0]} is above max_z={max_z} (lowest {min(scores):.3f}); raise data.screen.max_z "
                          f"or check data.screen.emotions")
    logger.info("data.screen: dropped %d of %d rows (weighted z of %s > %s)", len(dropped), len(rows),
                ", ".join(fields), max_z)
    return result


def _in_context(row: dict[str, Any], prompt_key: str, target_key: str, index: int) -> tuple[Any, str, str]:
    target = row[target_key]
    if isinstance(target, str):
        return None, target, target_key
    if not isinstance(target, list) or not target:
        raise DataFormatError(f"data.screen: row {index}, field {target_key!r}: expected a string or messages")
    prompt = row.get(prompt_key)
    context = [dict(m) for m in prompt] if isinstance(prompt, list) else []
    context += [dict(m) for m in target[:-1]]
    return context, target[-1]["content"], f"{target_key} (last message)"


def screen_mode_error(mode: str) -> str:
    """The message for an unsupported ``data.screen.mode`` (``reweight`` gets the reason it is not supported)."""
    if mode == "reweight":
        return ("data.screen.mode 'reweight' is not supported: TRL's SFTTrainer and DPOTrainer take no per-row "
                "loss weights; use mode 'drop'")
    return f"data.screen.mode must be one of {list(SCREEN_MODES)}, got {mode!r}"


__all__ = ["SCREEN_MODES", "SCREEN_TRAINER_TYPES", "ScreenResult", "screen_mode_error", "screen_rows",
           "screened_target"]
