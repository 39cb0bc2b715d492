"""User-facing errors. The CLI prints these without a traceback and exits with code 2."""
from __future__ import annotations


class UnlearnkitError(Exception):
    """An error caused by user input or environment, with a message that says how to fix it."""


class DataError(UnlearnkitError):
    """A data file is missing, malformed, or has a bad row/key."""


class ConfigError(UnlearnkitError):
    """A config key or value is wrong."""


class ModelError(UnlearnkitError):
    """A model directory cannot be loaded or saved."""


class TrainingDiverged(UnlearnkitError):
    """The loss became NaN/inf; the run was stopped and nothing was saved."""
