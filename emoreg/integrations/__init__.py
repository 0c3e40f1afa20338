"""Integrations with training loops: the TRL/transformers callback and ``attach``."""

from emoreg.integrations.callback import EmoRegCallback, attach

__all__ = ["EmoRegCallback", "attach"]
