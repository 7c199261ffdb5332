"""Who a local sweep's driver is, so that ``status`` and ``cancel`` never
take another process for it.

A PID names a process only while it lives: once the driver has ended, its PID goes to whatever
starts next (soon on a busy login node; after a reboot, to anything). So the launch record also
holds when the process started (the boot it started in and its start time within that boot, from
/proc) and a random token the driver carries while it runs; a process is the driver only if all of
them match. From another machine none of this can be looked at: there the driver's heartbeat file
says how long ago it was last heard from.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hamsweep.launch._base import Launch
from hamsweep.rundir import atomic_write_text

__all__ = [
    "HEARTBEAT",
    "HEARTBEAT_S",
    "SILENT_S",
    "boot_id",
    "carries",
    "carrying",
    "last_heard",
    "not_driver",
    "same_process",
    "send",
    "start_ticks",
    "verifiable",
]

HEARTBEAT = "heartbeat.json"  # in the sweep folder: the driver's token, and whether it has ended
HEARTBEAT_S = 10.0  # the driver rewrites HEARTBEAT this often, in seconds
# seconds without a word after which a driver on another machine counts as not running
SILENT_S = HEARTBEAT_S + 120.0
# the name of the memory file that carries the token: /memfd:hamsweep-driver-<token>
_MEMFD = "hamsweep-driver-"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")  # a new random id at every boot


def boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (field 22 of /proc/<pid>/stat); None
    when no such process runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        # the command name (field 2) may hold spaces and ")": the fields after its
        # last ")" start at field 3
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[22 - 3])
    except (OSError, IndexError, ValueError):
        return None


def carries(pid: int, token: str) -> bool:
    """Process ``pid`` holds open the memory file named by ``token`` (see ``carrying``)."""
    want = f"/memfd:{_MEMFD}{token} (deleted)"
    try:
        fds = list((Path("/proc") / str(pid) / "fd").iterdir())
    except OSError:  # gone, or another user's process: not ours to signal either way
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == want:
                return True
        except OSError:  # closed since the listing
            continue
    return False


def verifiable(launch: Launch) -> bool:
    """The record holds more than a PID (a ``launch.json`` of an older hamsweep does not)."""
    return None not in (launch.pid, launch.boot, launch.start_ticks, launch.token)


def same_process(launch: Launch) -> bool:
    """Process ``launch.pid`` on this machine is the one that started when the record says."""
    return (
        launch.pid is not None
        and start_ticks(launch.pid) == launch.start_ticks
        and boot_id() == launch.boot
    )


def not_driver(launch: Launch) -> str | None:
    """None if process ``launch.pid`` on this machine is the recorded driver, still carrying its
    token; else why not, for people ("" when no such process runs). A record that is not
    ``verifiable`` never passes."""
    if launch.pid is None or start_ticks(launch.pid) is None:
        return ""
    if not verifiable(launch):
        return f"the launch record holds no start time to check process {launch.pid} by"
    if not same_process(launch):
        return f"process {launch.pid} is another program now"
    if not carries(launch.pid, str(launch.token)):
        return f"process {launch.pid} does not carry the sweep's token"
    return None


def send(pid: int, sig: int, is_it: Callable[[], bool]) -> bool:
    """Send ``sig`` to ``pid`` if ``is_it()`` holds; False if not (or the process is gone). Through
    a pidfd where the kernel has them (5.3+): the process checked is the one signalled, even if it
    ends and its PID is reused between the check and the signal."""
    try:
        fd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:
        # an older kernel (RHEL 7's 3.10): check, then signal by PID, microseconds apart
        fd = None
    try:
        if not is_it():
            return False
        if fd is None:
            os.kill(pid, sig)
        else:
            signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


@contextmanager
def carrying(out: Path, launch: Launch) -> Iterator[Launch]:
    """This process is ``launch``'s driver while the block runs: the record gets its PID, start and
    a new token; the process carries the token and keeps a heartbeat in ``out``,
    marked ended on the way out.

    The token is carried as the name of an open memory file (memfd), listed in /proc/<pid>/fd to the
    same user. Not as an environment variable: /proc/<pid>/environ shows the environment the process
    was started with, never what it sets later. Not on the command line: that is the user's, fixed
    at its start too. A memfd needs neither a second process nor a file in the folder, and goes with
    the process however it ends (kill -9 included); its close-on-exec flag keeps
    it from Ray's processes."""
    launch.pid, launch.boot, launch.start_ticks = os.getpid(), boot_id(), start_ticks(os.getpid())
    launch.token = secrets.token_hex(16)
    fd = os.memfd_create(_MEMFD + launch.token)
    beat = _Heartbeat(out / HEARTBEAT, launch.token)
    # before launch.json names the driver: a reader never finds the record without it
    beat.beat(ended=False)
    beat.start()
    try:
        yield launch
    finally:
        beat.stop()
        os.close(fd)


def last_heard(out: Path, launch: Launch) -> tuple[float, bool]:
    """Seconds since ``launch``'s driver was last heard from, and whether it said it had ended: its
    heartbeat (this record's token only), else the dashboard state it writes (a driver of an older
    hamsweep beats no heart), else its launch. File times: the file server's
    clock, not the driver's."""
    from hamsweep.sweep.dashboard import STATE_FILE

    times, ended = [launch.launched], False
    beat = _read_json(out / HEARTBEAT)
    if beat is not None and launch.token is not None and beat.get("token") == launch.token:
        times.append(_mtime(out / HEARTBEAT))
        ended = bool(beat.get("ended"))
    times.append(_mtime(out / STATE_FILE))
    return max(0.0, time.time() - max(times)), ended


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class _Heartbeat(threading.Thread):
    """Rewrites the heartbeat every ``HEARTBEAT_S`` in a thread of its own: the driver's main thread
    can be busy for minutes (starting Ray, the confirm evaluation, compaction) without a word."""

    def __init__(self, path: Path, token: str) -> None:
        super().__init__(name="hamsweep-heartbeat", daemon=True)
        self.path, self.token, self.done = path, token, threading.Event()

    def run(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            self.beat(ended=False)

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.beat(ended=True)

    def beat(self, *, ended: bool) -> None:
        text = json.dumps(
            {"token": self.token, "pid": os.getpid(), "at": time.time(), "ended": ended}
        )
        # a full disk: the Recorder stops the sweep; a missed beat only ages the last one
        with contextlib.suppress(OSError):
            atomic_write_text(self.path, text + "\n")
