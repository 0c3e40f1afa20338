"""emoreg: keep a language model's emotion vectors in check during fine-tuning.

Extract emotion vectors for any causal LM, regularise them during training, and
measure whether the failure modes they drive go down.
"""

from emoreg.vectors.bundle import EmotionVectors, LayerStats
from emoreg.version import __version__

__all__ = ["EmotionVectors", "LayerStats", "__version__"]
