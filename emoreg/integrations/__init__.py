"""Integrations with training loops: the TRL/transformers callback and ``attach``, and the KL anchor."""

from emoreg.integrations.callback import EmoRegCallback, attach
from emoreg.integrations.kl_anchor import KLAnchorCallback, attach_kl_anchor

__all__ = ["EmoRegCallback", "KLAnchorCallback", "attach", "attach_kl_anchor"]
