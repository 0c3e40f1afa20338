"""Training-time regularisation of emotion-vector activations."""

from emoreg.regularization.config import EmotionRule, RegularizerConfig
from emoreg.regularization.regularizer import Regularizer
from emoreg.regularization.schedule import scheduled_coef

__all__ = ["EmotionRule", "Regularizer", "RegularizerConfig", "scheduled_coef"]
