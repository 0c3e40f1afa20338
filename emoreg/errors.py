"""Exceptions raised by emoreg.

Every error names what was wrong and what was expected, so that a user can fix
the input without reading the source. All of them derive from
:class:`EmoRegError`, which the command line turns into a one-line message and
a non-zero exit code.
"""

from __future__ import annotations


class EmoRegError(Exception):
    """Base class of every error emoreg raises on purpose."""


class ConfigError(EmoRegError, ValueError):
    """A configuration value or key is invalid."""


class DataFormatError(EmoRegError, ValueError):
    """A data file (corpus, scan input, eval data) is malformed.

    The message names the file, the line (1-based) and the field at fault.
    """


class ModelLoadError(EmoRegError, OSError):
    """A model could not be loaded (unknown id offline, not a causal LM, ...)."""


class ModelLayoutError(EmoRegError, ValueError):
    """The decoder layers of a model could not be found or do not fit."""


class BundleError(EmoRegError, ValueError):
    """A vector bundle is missing, malformed, or does not fit the model."""
