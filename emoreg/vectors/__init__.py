"""Emotion vectors: the corpus, extraction, the bundle format, validation and scanning."""
