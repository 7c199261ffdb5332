"""The default launcher: the driver runs in this process, on a local Ray it starts itself (or on a
running cluster given by ``--address``). ``status`` and ``cancel`` know the driver by more than its
PID (``hamsweep.launch._driver``): a process that fails the check is never signalled."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from rich.console import Console

from hamsweep.errors import SpecError
from hamsweep.launch._base import LAUNCH, JobState, Launch, Launcher
from hamsweep.launch._driver import (
    SILENT_S,
    last_heard,
    not_driver,
    same_process,
    send,
    start_ticks,
    verifiable,
)

__all__ = ["LocalLauncher"]

_CANCEL_WAIT_S = 120  # a Ctrl-C'd driver saves its state and stops its trials: give it time


def _ago(seconds: float) -> str:
    """'42 s', '3 min', '5 h', '2 days': how long, for people (rounded down)."""
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= (2 if unit == "days" else 1) * size:
            return f"{seconds // size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _heard(launch: Launch, where: str, why: str) -> JobState:
    """A driver whose process cannot be checked from here (``why``), judged by when
    it was last heard from."""
    age, ended = last_heard(Path(str(launch.out)), launch)
    heard = f"last heard {_ago(age)} ago"
    if ended:
        return JobState("ended", f"{where} has ended ({heard})")
    if age > SILENT_S:
        return JobState("ended", f"{where}: not running ({heard})")
    return JobState("running", f"{where} ({heard}; {why})")


class LocalLauncher(Launcher):
    kind = "local"

    def start(self, out: Path, console: Console) -> Launch:
        # the driver's identity: _driver.carrying, around the sweep
        return Launch(kind=self.kind, out=str(out))

    def state(self, launch: Launch) -> JobState:
        where = f"driver process {launch.pid} on {launch.host}"
        if launch.copy_of is not None:
            return JobState(
                "ended", f"this folder is a copy of {launch.copy_of}; the {where} is that folder's"
            )
        if launch.host != socket.gethostname():
            return _heard(launch, where, "its process is not checkable from this machine")
        if (
            not verifiable(launch)
            and launch.pid is not None
            and start_ticks(launch.pid) is not None
        ):
            return _heard(
                launch,
                where,
                f"process {launch.pid} runs, but {LAUNCH} holds no start time to check it by",
            )
        why = not_driver(launch)
        if why is None:
            return JobState("running", where)
        return JobState("ended", f"{where} has ended" + (f" ({why})" if why else ""))

    def cancel(self, launch: Launch, console: Console) -> None:
        """Ctrl-C the driver (it stops its trials and keeps the folder resumable), then wait for it.
        A driver that is not running is left alone; one that cannot be checked
        from here is an error."""
        if launch.copy_of is not None:
            return  # the driver is the original folder's (``state``)
        if launch.host != socket.gethostname():
            if self.state(launch).phase == "ended":
                return
            raise SpecError(
                "cancel",
                f"the driver runs on {launch.host} (process "
                f"{launch.pid}): run hamsweep cancel there",
            )
        if (
            not verifiable(launch)
            and launch.pid is not None
            and start_ticks(launch.pid) is not None
        ):
            raise SpecError(
                "cancel",
                f"{LAUNCH} names process {launch.pid} but no start time or token (written by an "
                "older hamsweep), so it may be another program now and is not signalled; if it is "
                f"the sweep's driver, Ctrl-C it in its terminal (or kill -INT {launch.pid})",
            )
        pid = launch.pid
        if pid is None or not send(pid, signal.SIGINT, lambda: not_driver(launch) is None):
            return
        deadline = time.monotonic() + _CANCEL_WAIT_S
        while same_process(launch) and time.monotonic() < deadline:
            time.sleep(0.5)
        # the same process by its start (its token may be closed already, on the
        # way out) is still the driver
        send(pid, signal.SIGTERM, lambda: same_process(launch))
