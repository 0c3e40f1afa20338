"""Training-time regularisation of emotion-vector activations."""

from emoreg.regularization.config import EmotionRule, RefitConfig, RegularizerConfig
from emoreg.regularization.frozen_reader import EmotionReadingReward, FrozenEmotionReader
from emoreg.regularization.regularizer import Regularizer
from emoreg.regularization.schedule import scheduled_coef

__all__ = ["EmotionReadingReward", "EmotionRule", "FrozenEmotionReader", "RefitConfig", "Regularizer",
           "RegularizerConfig", "scheduled_coef"]
