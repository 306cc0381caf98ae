"""The errors noprop raises for what a user can fix; the CLI prints their message and exits 2.

A leaf: it imports nothing of the package, so every module can raise these without importing
another (the modules that raise each also re-export it: ``from noprop.config import ConfigError``
still works)."""

from __future__ import annotations


class ConfigError(ValueError):
    """An option has a value that cannot work; the message names the option."""


class DataError(RuntimeError):
    """A dataset file is missing, corrupt or not what it claims to be. The message names the file
    and says what to do."""


class CheckpointError(RuntimeError):
    """A checkpoint or weights file cannot be read or does not match the run."""


class RunDirError(RuntimeError):
    """The output folder cannot be used as asked."""


class DistributedError(RuntimeError):
    """A rank of a parallel run failed, or did not reach a collective in time."""


class DivergenceError(RuntimeError):
    """A loss became NaN or inf. The last good checkpoint is kept."""


class PresetError(KeyError):
    """An unknown preset name. KeyError's str() wraps the message in quotes, so __str__ is
    overridden to print the message as written."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# what the CLI reports as "noprop: error: ..." (exit 2) rather than a traceback
USER_ERRORS = (ConfigError, DataError, CheckpointError, RunDirError, DistributedError, DivergenceError, PresetError)
