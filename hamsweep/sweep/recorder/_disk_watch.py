"""The Recorder's disk watch: a sweep whose folder (or Ray's temp folder) runs out of room stops
cleanly, as Ctrl-C stops it, instead of crashing the driver or hanging Ray (``hamsweep.sweep.disk``
says how much room is enough)."""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from hamsweep.errors import DiskFull
from hamsweep.sweep import disk

__all__ = ["DiskWatch"]

_DISK_S = 1.0  # free space is looked at at most once a second


class DiskWatch:
    """``full``: why the sweep stopped on a full disk, None while there is room."""

    def __init__(self, out: Path, ray_temp: Path | None, keep_free: int) -> None:
        self.out = Path(out)
        self.ray_temp = ray_temp  # the session folder of the sweep's own Ray (None on a cluster's)
        self.keep_free = keep_free  # bytes the sweep folder keeps free while running
        self.full: DiskFull | None = None
        self._at = 0.0  # time.monotonic() of the last look

    @property
    def resume(self) -> str:
        return f"hamsweep resume {self.out}"

    def low(self) -> DiskFull | None:
        """``disk.low_now`` of the sweep's folder and Ray's temp folder: why it cannot go on, or
        None."""
        return disk.low_now(self.out, self.ray_temp, self.keep_free, self.resume)

    def check(self, at_once: bool = False) -> bool:
        """At most every ``_DISK_S`` (``at_once``: now): is a disk too full to go on? Then the sweep
        stops. True once it has stopped for a full disk."""
        if self.full is None and (at_once or time.monotonic() - self._at >= _DISK_S):
            self._at = time.monotonic()
            if (full := self.low()) is not None:
                self.stop_for(full)
        return self.full is not None

    def guard(self, write: Callable[[], None]) -> None:
        """``write()``; a full disk stops the sweep cleanly instead of crashing the driver. (A write
        that did not fit is left to the resumed sweep: its trials send their epochs again from their
        checkpoints, and ``repair`` removes a temporary part cut short.)"""
        try:
            write()
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            if self.full is None:
                self.stop_for(self.low() or self._refused(err))

    def _refused(self, err: OSError) -> DiskFull:
        return DiskFull(
            f"--out: {self.out}: no space left on its disk (writing {err.filename}); stopped "
            f"cleanly: free space, then continue with: {self.resume}"
        )

    def stop_for(self, full: DiskFull) -> None:
        """End the Tune run as Ctrl-C does (SIGUSR1: Tune's own graceful stop, which snapshots its
        state once more and leaves the unfinished trials to ``resume``); the driver then raises
        ``full``."""
        self.full = full
        if graceful_stop():
            os.kill(os.getpid(), signal.SIGUSR1)

    def must_stop_now(self) -> bool:
        """A full disk and no handler of Tune's to stop the run gracefully: the stopper ends it."""
        return self.full is not None and not graceful_stop()


def graceful_stop() -> bool:
    """Whether Tune's SIGUSR1 handler is set (it is while ``fit`` runs in the main thread)."""
    return callable(signal.getsignal(signal.SIGUSR1))
