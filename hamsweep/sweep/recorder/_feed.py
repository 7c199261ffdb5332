"""The Recorder's dashboard feed: frames of the live view (``dashboard.make_view``) and its log
lines of trial events, no more often than a terminal can usefully show."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hamsweep.sweep.dashboard import SweepState, TrialView

__all__ = ["DashboardFeed"]

_REFRESH_S = 1.0  # a frame at least once a second ...
_EVENT_FRAME_S = 0.5  # ... and on a trial's event, at most twice a second (1,000 trials: ~25 ms)


class DashboardFeed:
    """``view``: the driver's live dashboard (``update``, ``event``, ``close``); ``now``: the
    sweep's state as of now (called only when a frame is drawn: it moves every trial's clock)."""

    def __init__(self, view: Any, now: Callable[[], SweepState]) -> None:
        self.view, self.now = view, now
        self._frame = 0.0  # time.monotonic() of the last frame

    def tick(self, event: bool = False) -> None:
        """A frame if one is due (sooner after a trial's ``event``)."""
        at = time.monotonic()
        if at - self._frame >= (_EVENT_FRAME_S if event else _REFRESH_S):
            self.draw()
            self._frame = at

    def draw(self) -> None:
        self.view.update(self.now())

    def event(self, view: TrialView, event: str) -> None:
        """A trial started, reported an epoch or ended (``dashboard.EVENTS``)."""
        self.view.event(self.now(), view, event)

    def close(self) -> None:
        self.view.close()
