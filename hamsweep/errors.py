"""The project's exceptions: one base class, a few subclasses, each a one-line message.

A ``HamsweepError`` is something the user can fix (or must know about); the CLI prints its
message on one line and exits with its ``exit_code``, never a traceback.
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "DiskFull",
    "DivergenceError",
    "HamsweepError",
    "Interrupted",
    "JobFailed",
    "NotRunning",
    "SpecError",
]


class HamsweepError(Exception):
    """Base class; the message is one line that says what was wrong and what is valid."""

    exit_code: int = 2


class SpecError(HamsweepError, ValueError):
    """A spec, profile or override is invalid; the message starts with the key path.

    Also a ``ValueError``, so that pydantic validators may raise it and keep its key.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class DataError(HamsweepError):
    """A dataset cannot be loaded: missing files, wrong format, nothing to download from."""


class DivergenceError(HamsweepError):
    """Training produced a non-finite loss; the message names the epoch and batch."""

    exit_code = 1


class Interrupted(HamsweepError):
    """The user stopped a run (Ctrl-C); the message says how to continue it."""

    exit_code = 130


class JobFailed(HamsweepError):
    """A sweep's cluster job ended without finishing the sweep; the message names its log."""

    exit_code = 1


class NotRunning(HamsweepError):
    """``hamsweep cancel`` of a sweep whose recorded driver is not running; the message
    says how to resume it."""

    exit_code = 1


class DiskFull(HamsweepError):
    """A running sweep stopped cleanly on a disk that filled up; the message names the
    path and how to continue."""

    exit_code = 1


class RestoreFailed(HamsweepError):
    """``resume`` of a sweep whose Tune snapshot would not load; the sweep is not started over."""

    exit_code = 1
