"""The default launcher: the driver runs in this process, on a local Ray it starts itself (or on a
running cluster given by ``--address``)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from rich.console import Console

from hamsweep.errors import SpecError
from hamsweep.launch._base import JobState, Launch, Launcher

__all__ = ["LocalLauncher"]

_CANCEL_WAIT_S = 120  # a Ctrl-C'd driver saves its state and stops its trials: give it time


def _alive(pid: int) -> bool:
    """The process runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class LocalLauncher(Launcher):
    kind = "local"

    def start(self, out: Path, console: Console) -> Launch:
        return Launch(kind=self.kind, out=str(out), pid=os.getpid())

    def state(self, launch: Launch) -> JobState:
        if launch.host != socket.gethostname():
            return JobState("running", f"driver process {launch.pid} on {launch.host} (not checkable from this machine)")
        if launch.pid is not None and _alive(launch.pid):
            return JobState("running", f"driver process {launch.pid} on {launch.host}")
        return JobState("ended", f"driver process {launch.pid} on {launch.host} has ended")

    def cancel(self, launch: Launch, console: Console) -> None:
        """Ctrl-C the driver (it stops its trials and keeps the folder resumable), then wait for it."""
        if launch.host != socket.gethostname():
            raise SpecError("cancel", f"the driver runs on {launch.host} (process {launch.pid}): run hamsweep cancel there")
        if launch.pid is None or not _alive(launch.pid):
            return
        os.kill(launch.pid, signal.SIGINT)
        deadline = time.monotonic() + _CANCEL_WAIT_S
        while _alive(launch.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _alive(launch.pid):
            os.kill(launch.pid, signal.SIGTERM)
