"""Emotion vectors: the corpus, extraction, the bundle format, validation and scanning.

The public names below are imported from their modules on first use (:mod:`emoreg.utils.lazy`).
"""

from emoreg.utils.lazy import lazy_exports

_EXPORTS = {
    "EmotionVectors": "emoreg.vectors.bundle",
    "LayerStats": "emoreg.vectors.bundle",
    "ExtractionConfig": "emoreg.vectors.extraction",
    "extract_emotion_vectors": "emoreg.vectors.extraction",
    "load_builtin_corpus": "emoreg.vectors.corpus",
    "read_scan_rows": "emoreg.vectors.scan",
    "scan_rows": "emoreg.vectors.scan",
    "write_scan": "emoreg.vectors.scan",
    "build_validation_report": "emoreg.vectors.validation",
    "read_token_states": "emoreg.vectors.activations",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
