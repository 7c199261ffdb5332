"""The Recorder's state file: the dashboard's state as ``state.json`` in the sweep folder, so that
``hamsweep status`` draws the sweep from any machine that sees the folder. Written atomically (a
reader never sees half a file), at most once a second and at most 5% of the driver's time."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from hamsweep.rundir import atomic_write_text
from hamsweep.sweep.dashboard import STATE_FILE, SweepState, state_from_json, state_to_json

__all__ = ["StateFile"]

_STATE_S = 1.0  # at most once a second (~6 ms for 1,000 trials) ...
_SHARE = 20  # ... and at least 20 times as long apart as a write took: at most 5% of the time


class StateFile:
    """``out / STATE_FILE``."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / STATE_FILE
        self._due = 0.0  # time.monotonic() from which the next write is due

    def write(self, state: SweepState) -> None:
        atomic_write_text(self.path, state_to_json(state))

    def read(self) -> SweepState:
        return state_from_json(self.path.read_text())

    def tick(self, state: SweepState, guard: Callable[[Callable[[], None]], None]) -> None:
        """Write ``state`` if due, through ``guard`` (the disk watch's: a full disk stops the
        sweep)."""
        now = time.monotonic()
        if now >= self._due:
            began = time.monotonic()
            guard(lambda: self.write(state))
            self._due = now + max(_STATE_S, _SHARE * (time.monotonic() - began))
