"""Integrations with training loops: the TRL/transformers callback and ``attach``, the KL anchor and the eval
callback.

The public names below are imported from their modules on first use (:mod:`emoreg.utils.lazy`), so importing
this package does not import transformers' Trainer machinery.
"""

from emoreg.utils.lazy import lazy_exports

_EXPORTS = {
    "EmoRegCallback": "emoreg.integrations.callback",
    "attach": "emoreg.integrations.callback",
    "KLAnchorCallback": "emoreg.integrations.kl_anchor",
    "attach_kl_anchor": "emoreg.integrations.kl_anchor",
    "EmoRegEvalCallback": "emoreg.integrations.eval_callback",
    "attach_eval": "emoreg.integrations.eval_callback",
    "flatten_metrics": "emoreg.integrations.eval_callback",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
