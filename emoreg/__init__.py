"""emoreg: keep a language model's emotion vectors in check during fine-tuning.

Extract emotion vectors for any causal LM, regularise them during training, and
measure whether the failure modes they drive go down.
"""

from emoreg.regularization.config import RegularizerConfig
from emoreg.regularization.regularizer import Regularizer
from emoreg.vectors.bundle import EmotionVectors, LayerStats
from emoreg.version import __version__


def __getattr__(name: str):
    # The trainer integration imports transformers' Trainer machinery: load it only when asked for.
    if name in ("EmoRegCallback", "attach"):
        from emoreg.integrations import callback

        return getattr(callback, name)
    raise AttributeError(f"module 'emoreg' has no attribute {name!r}")


__all__ = ["EmoRegCallback", "EmotionVectors", "LayerStats", "Regularizer", "RegularizerConfig", "__version__",
           "attach"]
