"""User-facing errors: each says what was wrong and how to fix it.

The CLI prints these without a traceback and exits with status 2; anything else is a bug.
"""


class EcalfError(Exception):
    """Base class of every error caused by the user's input, files or environment."""


class ConfigError(EcalfError, ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


class DataError(EcalfError, ValueError):
    """A data file is missing, malformed or too short for the requested windows."""


class BackboneError(EcalfError):
    """A backbone preset or file cannot be loaded (missing package, offline hub, bad file)."""


class CheckpointError(EcalfError):
    """A checkpoint or run directory is missing, corrupted, or belongs to another model."""
