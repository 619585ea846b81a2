"""Every user-facing error of atp, in one leaf module (it imports nothing from atp).

A :class:`UserError` is a mistake the user can fix: the entry points print its message alone, as one
``error:`` line without a traceback, and exit with its ``exit_code`` (2 unless the class says otherwise).
"""

from __future__ import annotations

import signal
from pathlib import Path


class UserError(RuntimeError):
    """A mistake the user can fix; the entry point prints the message alone (no traceback)."""

    exit_code = 2


class StageInterrupted(UserError):
    """The stage was stopped by a signal; ``last.ckpt`` holds the last finished step (exit status 128 + signal)."""

    exit_code = 143

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class HandOffError(UserError):
    """A stage cannot find or use what the previous stage should have produced."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file cannot be read, is of an unknown format, or does not fit the model."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written; the previous file at that path is unchanged."""


class CheckpointReadError(UserError):
    """A checkpoint to resume from is truncated or corrupt."""


class DivergenceError(UserError):
    """Training produced a non-finite gradient; a post-mortem checkpoint was saved."""


class DataFileError(UserError):
    """A data file that cannot be used; ``path`` names it and ``fix`` says what to run or do."""

    def __init__(self, path: str | Path, problem: str, fix: str = ""):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}" + (f" (fix: {fix})" if fix else ""))


class UnreadableFileError(DataFileError):
    """Missing, truncated or undecodable file."""


class BadLabelValuesError(DataFileError):
    """A label file holding values outside its encoding's table."""


class DatasetLayoutError(DataFileError):
    """The dataset folder is missing or does not have the expected layout."""


class DatasetCheckError(UserError):
    """Raised by :func:`atp.data.check.raise_on_problems`: the message lists every problem."""
