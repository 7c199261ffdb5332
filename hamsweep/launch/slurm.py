"""SLURM through submitit. ``mode: ray``: one job of N nodes becomes a Ray cluster whose rank 0 runs
the same driver as a local sweep (``hamsweep.launch.allocation``). ``mode: jobs``: the driver runs
here (or, detached, in a small CPU job) and each trial is a job of its own
(``hamsweep.launch.jobs``).

The calls to SLURM's tools (submit, ask, cancel) are ``hamsweep.launch._slurm_cli``'s, which both
modes share; its public names are this module's too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from hamsweep.errors import SpecError
from hamsweep.launch._base import JobState, Launch, Launcher
from hamsweep.launch._slurm_cli import (
    ACTIVE,
    JOBS_DIR,
    QUEUED,
    RUNNING,
    cancel_and_wait,
    executor,
    job_states,
    partitions,
    scancel,
)
from hamsweep.spec import SweepSpec
from hamsweep.spec.cluster import SlurmProfile, check_fits

if TYPE_CHECKING:
    from hamsweep.launch.jobs import TrialJobs

__all__ = [
    "ACTIVE",
    "JOBS_DIR",
    "SlurmLauncher",
    "cancel_and_wait",
    "executor",
    "job_states",
    "partitions",
    "scancel",
]


class SlurmLauncher(Launcher):
    kind = "slurm"

    def __init__(self, profile: SlurmProfile | None = None) -> None:
        self.profile = profile  # None when only state/cancel are asked for

    def check(self, spec: SweepSpec) -> None:
        """What submitting needs, nothing written (``hamsweep run`` and ``hamsweep validate`` both
        check it): a trial that fits a node of the profile, then of this machine ``sbatch``, and a
        partition that ``sinfo`` knows."""
        p = self._profile()
        # the files' own error first: it holds wherever this runs
        check_fits(p, spec.resources.cpu, spec.resources.gpu)
        if shutil.which("sbatch") is None:
            raise SpecError(
                "--cluster",
                "sbatch is not on PATH: submit from a SLURM login node, "
                "or run locally without --cluster",
            )
        if p.partition is not None:
            known = partitions()
            if p.partition not in known:
                raise SpecError(
                    "partition",
                    f"unknown partition {p.partition!r}; this cluster has {', '.join(known)}",
                )

    def start(self, out: Path, console: Console) -> Launch:
        """Submit the driver's job: the whole allocation (mode ray) or a small CPU job (mode jobs,
        detached)."""
        from hamsweep.launch.allocation import SweepJob
        from hamsweep.launch.jobs import JobsDriver, driver_profile

        p = self._profile()
        if p.mode == "jobs":
            ex, fn = (
                executor(driver_profile(p), out / JOBS_DIR, f"hamsweep-{out.name}"),
                JobsDriver(str(out), p.model_dump(mode="json")),
            )
        else:
            ex, fn = executor(p, out / JOBS_DIR, f"hamsweep-{out.name}"), SweepJob(str(out))
        try:
            job = ex.submit(fn)
        except Exception as err:
            raise SpecError("--cluster", f"sbatch refused the job: {_first_line(err)}") from None
        return Launch(kind=self.kind, out=str(out), mode=p.mode, job=str(job.job_id))

    def attach(self, out: Path) -> tuple[Launch, TrialJobs]:
        """Mode jobs, attached: the launch record of a driver in this process, and its trial
        jobs."""
        from hamsweep.launch.jobs import TrialJobs

        return Launch(kind=self.kind, out=str(out), mode="jobs", pid=os.getpid()), TrialJobs(
            out, self._profile()
        )

    def state(self, launch: Launch) -> JobState:
        from hamsweep.launch.local import LocalLauncher

        # mode jobs, attached: the driver is a process on the launching machine
        if launch.job is None:
            driver = LocalLauncher().state(launch)
            return JobState(driver.phase, driver.detail + _trial_jobs(launch), driver.ok)
        jid = launch.job
        state, detail = job_states([jid]).get(jid, ("UNKNOWN", "not in squeue or sacct"))
        phase = "queued" if state in QUEUED else "running" if state in RUNNING else "ended"
        return JobState(
            phase,
            f"SLURM job {jid} {state} {detail}".strip() + _trial_jobs(launch),
            ok=state == "COMPLETED" if phase == "ended" else None,
        )

    def cancel(self, launch: Launch, console: Console) -> None:
        """scancel the sweep's jobs and wait until SLURM has none of them left. Mode jobs: the
        driver first (its trials can then submit nothing more), then every trial job it
        submitted."""
        from hamsweep.launch.local import LocalLauncher

        # mode jobs, attached: Ctrl-C the driver, wait for it
        if launch.job is None and launch.pid is not None:
            LocalLauncher().cancel(launch, console)
        cancel_and_wait([j for j in [launch.job, *launch.trial_jobs] if j])
        if launch.mode == "jobs" and launch.out is not None:
            from hamsweep.launch.jobs import settle

            launch.trial_jobs = settle(Path(launch.out))

    def log(self, launch: Launch) -> Path | None:
        return (
            None if launch.out is None else Path(launch.out) / JOBS_DIR / f"{launch.job}_0_log.err"
        )

    def _profile(self) -> SlurmProfile:
        if self.profile is None:
            raise SpecError("--cluster", "a SLURM profile is needed to launch")
        return self.profile


def _trial_jobs(launch: Launch) -> str:
    """Mode jobs: how many trial jobs are where, as the driver last saw them (read from the sweep
    folder)."""
    if launch.mode != "jobs" or launch.out is None:
        return ""
    from hamsweep.launch.jobs import read_states

    states = read_states(Path(launch.out))
    running = sum(s in RUNNING for s in states.values())
    queued = sum(s in QUEUED for s in states.values())
    return (
        f"; trial jobs: {running} running, {queued} queued, {len(states) - running - queued} ended"
        if states
        else ""
    )


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or [type(err).__name__])[-1]
