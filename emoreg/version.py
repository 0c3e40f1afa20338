"""The library version, recorded in every bundle and checkpoint emoreg writes."""

__version__ = "0.1.0"
