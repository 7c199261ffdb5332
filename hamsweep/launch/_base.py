"""What every launcher shares: the launch record of a sweep folder and the launcher interface.

``launch.json`` in the sweep folder says where the sweep's driver runs (this machine's process, or
SLURM jobs), so that ``hamsweep status`` and ``hamsweep cancel`` work from any machine that sees the
folder, long after the command that started it has returned.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from rich.console import Console

from hamsweep.rundir import atomic_write_text
from hamsweep.spec import SweepSpec

__all__ = ["LAUNCH", "JobState", "Launch", "Launcher", "read_launch", "write_launch"]

LAUNCH = "launch.json"


@dataclass
class Launch:
    """Where a sweep runs; written when it is launched, read by ``status`` and ``cancel``."""

    kind: str  # "local" or "slurm"
    out: str | None = None  # the sweep folder, absolute
    host: str = field(default_factory=socket.gethostname)  # the machine that launched it
    launched: float = field(default_factory=time.time)  # when, in seconds since the epoch
    mode: str | None = None  # slurm: "ray" (one allocation) or "jobs" (one job per trial)
    pid: int | None = None  # local: the driver's process id on ``host``
    # local: the boot id of ``host`` the driver started in (/proc/sys/kernel/random/boot_id)
    boot: str | None = None
    # local: when the driver started, in clock ticks since that boot (/proc/<pid>/stat)
    start_ticks: int | None = None
    # local: a random token the driver carries while it runs (hamsweep.launch._driver)
    token: str | None = None
    job: str | None = None  # slurm: the job running the driver (mode ray: the whole allocation)
    # slurm, mode jobs: every trial job submitted
    trial_jobs: list[str] = field(default_factory=list)
    cancelled: bool = False  # set by ``hamsweep cancel``
    profile: dict | None = None  # slurm: the profile it was launched with, for ``hamsweep resume``
    # found by read_launch, never stored: this folder is a copy of that one, whose driver it names
    copy_of: str | None = None


@dataclass(frozen=True)
class JobState:
    """A launcher's view of the driver: ``phase`` is one of PHASES,
    ``detail`` one line for people."""

    phase: str  # "queued", "running" or "ended"
    detail: str  # e.g. "SLURM job 12 RUNNING on node3 for 1:02:03"
    ok: bool | None = None  # once ended: whether the driver finished the sweep (None = cannot tell)

    PHASES = ("queued", "running", "ended")


def write_launch(out: Path, launch: Launch) -> None:
    # a reader's finding, not the record's
    data = {k: v for k, v in asdict(launch).items() if k != "copy_of"}
    atomic_write_text(out / LAUNCH, json.dumps(data, indent=2) + "\n")


def read_launch(out: Path) -> Launch | None:
    """The launch record of ``out`` (one of an older hamsweep lacks the newer
    fields: they read as None)."""
    path = out / LAUNCH
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    known = {f.name for f in fields(Launch)}  # a newer hamsweep's record: the fields this one knows
    record = Launch(**{k: v for k, v in data.items() if k in known})
    if record.out is None or not _same_folder(Path(record.out), out):
        # a copied or moved folder: the record now speaks of this one; a copy (the original is still
        # there) must never signal the original's driver, which carries the same token
        record.copy_of = (
            record.out if record.out is not None and Path(record.out).is_dir() else None
        )
        record.out = str(out.resolve())
    return record


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class Launcher:
    """Runs a prepared sweep folder somewhere. Each backend renders its own commands; the control
    flow (check, prepare, start, attach) lives in ``hamsweep.launch.launch``."""

    kind = ""

    def check(self, spec: SweepSpec) -> None:
        """Everything that can be checked before the folder is written; raise ``SpecError``."""

    def start(self, out: Path, console: Console) -> Launch:
        """Start the driver of the prepared folder ``out``; return its launch record."""
        raise NotImplementedError

    def state(self, launch: Launch) -> JobState:
        raise NotImplementedError

    def cancel(self, launch: Launch, console: Console) -> None:
        raise NotImplementedError

    def log(self, launch: Launch) -> Path | None:
        """The driver's output file, if it writes one."""
        return None
