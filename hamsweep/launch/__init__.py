"""Where a sweep runs. ``launch`` checks everything, prepares the sweep folder, then hands it to a
launcher: ``local`` (this process, the default) or ``slurm`` (submitit). ``status`` and ``cancel``
work on any sweep folder from any machine that sees it, through its ``launch.json``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from hamsweep import rundir
from hamsweep.errors import JobFailed, NotRunning, SpecError
from hamsweep.launch._base import LAUNCH, JobState, Launch, Launcher, read_launch, write_launch
from hamsweep.launch._driver import carrying
from hamsweep.spec import SweepSpec
from hamsweep.spec.cluster import LocalProfile, SlurmProfile

__all__ = [
    "LAUNCH",
    "JobState",
    "Launch",
    "cancel",
    "launch",
    "launched_profile",
    "launcher_for",
    "status_frame",
    "watch",
]

_WATCH_S = 2.0  # status refresh, in seconds: reads two small files and asks SLURM once


def launcher_for(kind: str, profile: SlurmProfile | None = None) -> Launcher:
    from hamsweep.launch.local import LocalLauncher
    from hamsweep.launch.slurm import SlurmLauncher

    return SlurmLauncher(profile) if kind == "slurm" else LocalLauncher()


def launch(
    spec: SweepSpec,
    out: Path | None,
    *,
    profile: LocalProfile | SlurmProfile,
    resume: bool,
    detach: bool,
    address: str | None = None,
    console: Console | None = None,
) -> Path:
    """Check, prepare ``out`` and run the sweep there (local) or submit it (SLURM; attached unless
    ``detach``). SLURM mode jobs, attached: the driver runs here and submits each trial as a job."""
    from hamsweep.sweep.driver import drive, prepare_sweep, wide_console

    console = console or wide_console()
    if isinstance(profile, LocalProfile):
        if detach:
            raise SpecError(
                "--detach",
                "needs a SLURM profile (--cluster cluster/slurm.yaml); "
                "a local sweep runs in this terminal",
            )
        _refuse_running(out, resume)
        out = prepare_sweep(spec, out, resume=resume, check_here=address is None)
        with carrying(out, launcher_for("local").start(out, console)) as record:
            write_launch(out, record)
            return drive(out, address=address, console=console)
    launcher = launcher_for("slurm", profile)
    launcher.check(spec)
    if out is None:
        rundir.check_writable(Path(profile.shared_folder), "shared_folder")
    _refuse_running(out, resume)
    out = Path(
        out if out is not None else Path(profile.shared_folder) / rundir.default_out(spec.name).name
    )
    new = not out.exists()
    out = prepare_sweep(spec, out, resume=resume, check_here=False)
    # the driver runs here, as a local one does; each trial is a SLURM job
    if profile.mode == "jobs" and not detach:
        record, jobs = launcher.attach(out)
        record.profile = profile.model_dump(mode="json")
        with carrying(out, record):
            write_launch(out, record)
            console.print(
                f"{spec.name}: each trial a SLURM job ({profile.describe()})\nsweep folder: {out}",
                highlight=False,
                soft_wrap=True,
            )
            return drive(out, console=console, jobs=jobs)
    try:
        record = launcher.start(out, console)
    except BaseException:
        if new:  # nothing was submitted: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    record.profile = profile.model_dump(mode="json")  # `hamsweep resume DIR` submits with it again
    write_launch(out, record)
    console.print(
        f"submitted {spec.name} as SLURM job {record.job} ({profile.describe()})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"sweep folder: {out}\n  watch:  hamsweep status "
        f"{out} --watch\n  cancel: hamsweep cancel {out}",
        highlight=False,
        soft_wrap=True,
    )
    if not detach:
        job = watch(out, console, detach_hint=True)
        if job is not None and job.ok is False:
            raise JobFailed(
                f"{job.detail}; the sweep is unfinished (its log: {launcher.log(record)}); "
                f"continue it with: hamsweep resume {out}"
            )
    return out


def launched_profile(out: Path) -> SlurmProfile | None:
    """The SLURM profile the sweep in ``out`` was launched with, if any: a
    resume goes back there."""
    from hamsweep.spec import validate

    record = read_launch(out)
    if record is None or record.kind != "slurm" or not record.profile:
        return None
    return validate(SlurmProfile, record.profile)


def _refuse_running(out: Path | None, resume: bool) -> None:
    """Two drivers on one folder would corrupt it: a resume waits until the first has ended."""
    if not resume or out is None or (record := read_launch(Path(out))) is None:
        return
    state = launcher_for(record.kind).state(record)
    if state.phase != "ended" and not (record.kind == "local" and record.pid == os.getpid()):
        raise SpecError(
            "--resume",
            f"{out} is still being swept ({state.detail}); watch it with hamsweep status, or "
            "hamsweep cancel it first",
        )


def status_frame(out: Path) -> tuple[Group, JobState | None]:
    """One status frame of the sweep in ``out``: where it runs, then the
    dashboard of its last state."""
    from hamsweep.sweep.dashboard import STATE_FILE, render, state_from_json

    record = read_launch(out)
    job = launcher_for(record.kind).state(record) if record is not None else None
    where = (
        "launched from no hamsweep command we know of"
        if record is None
        else (
            f"{'cancelled; ' if record.cancelled else ''}{job.phase}: {job.detail}" if job else ""
        )
    )
    parts: list = [Text(f"{out}: {where}")]
    path = out / STATE_FILE
    if path.is_file():
        state = state_from_json(path.read_text())
        if job is not None and job.phase == "running":
            # a live sweep's clock runs on; an ended one stays where it stopped
            state.now = time.time()
        parts.append(render(state))
    else:
        parts.append(
            Text(
                "no trial has reported yet"
                if job is None or job.phase != "ended"
                else "the sweep ended before any trial reported"
            )
        )
    return Group(*parts), job


def watch(out: Path, console: Console, *, detach_hint: bool = False) -> JobState | None:
    """Redraw the status until the sweep's driver has ended or, on another machine, gone silent
    (Ctrl-C stops watching, not the sweep)."""
    frame, job = status_frame(out)
    try:
        with Live(frame, console=console, auto_refresh=False) as live:
            while job is not None and job.phase != "ended":
                time.sleep(_WATCH_S)
                frame, job = status_frame(out)
                live.update(frame, refresh=True)
    except KeyboardInterrupt:
        if detach_hint:
            console.print(
                f"detached: the sweep goes on. Watch it with: hamsweep status {out} --watch",
                highlight=False,
                soft_wrap=True,
            )
        return None
    return job


def cancel(out: Path, console: Console) -> Launch:
    """Stop the sweep in ``out`` wherever it runs; its folder stays resumable. A local driver that
    is not running (ended, its PID another process's now, silent on another
    machine) is ``NotRunning``."""
    record = read_launch(out)
    if record is None:
        raise SpecError(str(out), f"holds no {LAUNCH}: not a sweep folder started by hamsweep run")
    launcher = launcher_for(record.kind)
    if record.kind == "local" and (job := launcher.state(record)).phase == "ended":
        raise NotRunning(
            f"the recorded driver is not running: {job.detail}; resume with: hamsweep resume {out}"
        )
    launcher.cancel(record, console)
    record.cancelled = True
    write_launch(out, record)
    return record
