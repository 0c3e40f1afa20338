"""Coefficient schedules by optimizer step."""

from __future__ import annotations

import math

from emoreg.errors import ConfigError


def scheduled_coef(
    coef: float,
    step: int,
    *,
    schedule: str = "constant",
    warmup_steps: int = 0,
    total_steps: int | None = None,
) -> float:
    """The coefficient at optimizer step ``step`` (0-based: the number of updates done so far).

    * ``constant``: ``coef`` (after the optional linear warmup).
    * ``linear_warmup``: rises linearly from 0 at step 0 to ``coef`` at ``warmup_steps``, then constant.
    * ``linear_decay``: after the warmup, falls linearly to 0 at ``total_steps``.
    * ``cosine``: after the warmup, half a cosine from ``coef`` to 0 at ``total_steps``.

    Every schedule starts with the linear warmup when ``warmup_steps > 0``.
    """
    if step < 0:
        raise ConfigError(f"step must be >= 0, got {step}")
    if schedule == "linear_warmup" and warmup_steps <= 0:
        raise ConfigError("schedule 'linear_warmup' needs warmup_steps > 0")
    if warmup_steps > 0 and step < warmup_steps:
        return coef * step / warmup_steps
    if schedule in ("constant", "linear_warmup"):
        return coef
    if total_steps is None:
        raise ConfigError(f"schedule {schedule!r} needs total_steps (or a trainer with max_steps)")
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear_decay":
        return coef * (1.0 - progress)
    if schedule == "cosine":
        return coef * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"unknown schedule {schedule!r}")
