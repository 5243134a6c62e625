"""The exceptions vqclip raises for bad input.

Every error a user can cause (a bad config value, a missing or unsafe file, no network) is a
`VQClipError`; the CLI prints its message on one line and exits with code 2. Anything else is a bug.
"""
from __future__ import annotations

import os
from pathlib import Path


def looked_up(path: str | os.PathLike) -> str:
    """`path` as an error message names a file that is not there: a relative path also names the
    folder it was looked up from (config files name their model files relative to where vqclip
    runs, not to themselves)."""
    if Path(path).is_absolute():
        return str(path)
    return f"{path} (looked up from the current folder {os.getcwd()})"


class VQClipError(Exception):
    """Base class: a problem with the user's input or environment, reported in one line."""


class ConfigError(VQClipError):
    """A config key, type or value that is not allowed."""


class CheckpointError(VQClipError):
    """A model file that is missing, corrupt, of the wrong format, or unsafe to load."""


class DownloadError(VQClipError):
    """A file that had to be fetched and could not be."""


class InputImageError(VQClipError):
    """An init image or image prompt that cannot be read or used."""


class OutputError(VQClipError):
    """A file of the run that cannot be written (a full disk, a read-only or missing folder)."""


class NumericalError(VQClipError):
    """The loss or the latent became NaN or infinite and could not be recovered."""


class ResumeError(VQClipError):
    """A run folder that cannot be resumed (no state, a corrupt state, or a change not allowed)."""
