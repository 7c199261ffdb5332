"""SLURM through submitit. ``mode: ray``: one job of N nodes becomes a Ray cluster whose rank 0 runs
the same driver as a local sweep (``hamsweep.launch.allocation``). ``mode: jobs``: the driver runs
here (or, detached, in a small CPU job) and each trial is a job of its own (``hamsweep.launch.jobs``).

SLURM is polled sparingly: one ``squeue`` (and, for jobs that left the queue, one ``sacct``) per
call for every job id asked about, never one call per job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from hamsweep.errors import SpecError
from hamsweep.launch._base import JobState, Launch, Launcher
from hamsweep.spec import SweepSpec
from hamsweep.spec.cluster import SlurmProfile, check_fits

if TYPE_CHECKING:
    from hamsweep.launch.jobs import TrialJobs

__all__ = ["ACTIVE", "JOBS_DIR", "SlurmLauncher", "cancel_and_wait", "executor", "job_states", "partitions", "scancel"]

JOBS_DIR = "slurm"  # in the sweep folder: submitit's pickles and every job's stdout/stderr
_CANCEL_WAIT_S = 120  # scancel'd jobs leave the queue after SLURM's KillWait (30 s by default)
_QUEUED = ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED")
_RUNNING = ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING")
ACTIVE = _QUEUED + _RUNNING  # a job in any other state has ended


def _slurm(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _said(proc: subprocess.CompletedProcess[str]) -> str:
    """What a failed SLURM command said, in one line: its last line (SLURM's tools end with the fatal one)."""
    lines = proc.stderr.strip().splitlines()
    return lines[-1].strip() if lines else f"exit code {proc.returncode}"


def partitions() -> list[str]:
    """The partitions this cluster has (the default one first), from ``sinfo``."""
    if shutil.which("sinfo") is None:
        raise SpecError("--cluster", "sinfo is not on PATH, so the profile's partition cannot be checked: "
                                     "run this on a SLURM login node, or run locally without --cluster")
    try:
        proc = _slurm("sinfo", "-h", "-o", "%P")
    except subprocess.TimeoutExpired:
        raise SpecError("cluster", "sinfo did not answer in 30 s; is SLURM reachable from here?") from None
    if proc.returncode != 0:
        raise SpecError("cluster", f"sinfo failed: {_said(proc)}; is SLURM reachable from here?")
    names = [p.strip() for p in proc.stdout.split() if p.strip()]
    default = [p.rstrip("*") for p in names if p.endswith("*")]
    return default + sorted({p.rstrip("*") for p in names} - set(default))


def executor(profile: SlurmProfile, folder: Path, name: str) -> Any:
    """A submitit executor for one job of ``profile``: its fields map one to one onto sbatch options."""
    import submitit

    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=profile.max_requeues)
    optional = {"slurm_partition": profile.partition, "slurm_account": profile.account, "slurm_qos": profile.qos,
                "slurm_constraint": profile.constraint, "mem_gb": profile.mem_gb}
    ex.update_parameters(
        name=name, nodes=profile.nodes, tasks_per_node=1, cpus_per_task=profile.cpus_per_task,
        gpus_per_node=profile.gpus_per_node or None, timeout_min=profile.timeout_min,
        slurm_setup=list(profile.setup), slurm_additional_parameters=dict(profile.sbatch_extra),
        slurm_signal_delay_s=profile.signal_delay_s, **{k: v for k, v in optional.items() if v is not None},
    )
    return ex


def job_states(ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (SLURM state, detail) for all ``ids`` in one ``squeue`` (+ one ``sacct`` for those gone)."""
    out: dict[str, tuple[str, str]] = {}
    if not ids:
        return out
    q = _slurm("squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%M|%N|%r")
    for line in q.stdout.splitlines():
        jid, state, elapsed, nodes, reason = (line.split("|") + [""] * 5)[:5]
        where = f"on {nodes} " if nodes else ""
        why = f" ({reason})" if reason and reason != "None" else ""
        out[jid] = (state, f"{where}for {elapsed}{why}")
    gone = [j for j in ids if j not in out]
    if gone:
        a = _slurm("sacct", "-n", "-X", "-P", "-j", ",".join(gone), "-o", "JobID,State,Elapsed,ExitCode")
        for line in a.stdout.splitlines():
            jid, state, elapsed, code = (line.split("|") + [""] * 4)[:4]
            out[jid] = (state.split()[0] if state else "UNKNOWN", f"after {elapsed}, exit code {code}")
    return out


def scancel(ids: list[str]) -> None:
    """Cancel ``ids`` in one call; those already ended are no error."""
    if ids:
        _slurm("scancel", *ids)


class SlurmLauncher(Launcher):
    kind = "slurm"

    def __init__(self, profile: SlurmProfile | None = None) -> None:
        self.profile = profile  # None when only state/cancel are asked for

    def check(self, spec: SweepSpec) -> None:
        """What submitting needs, nothing written (``hamsweep run`` and ``hamsweep validate`` both
        check it): a trial that fits a node of the profile, then of this machine ``sbatch``, and a
        partition that ``sinfo`` knows."""
        p = self._profile()
        check_fits(p, spec.resources.cpu, spec.resources.gpu)  # the files' own error first: it holds wherever this runs
        if shutil.which("sbatch") is None:
            raise SpecError("--cluster", "sbatch is not on PATH: submit from a SLURM login node, or run locally without --cluster")
        if p.partition is not None:
            known = partitions()
            if p.partition not in known:
                raise SpecError("partition", f"unknown partition {p.partition!r}; this cluster has {', '.join(known)}")

    def start(self, out: Path, console: Console) -> Launch:
        """Submit the driver's job: the whole allocation (mode ray) or a small CPU job (mode jobs, detached)."""
        from hamsweep.launch.allocation import SweepJob
        from hamsweep.launch.jobs import JobsDriver, driver_profile

        p = self._profile()
        if p.mode == "jobs":
            ex, fn = executor(driver_profile(p), out / JOBS_DIR, f"hamsweep-{out.name}"), JobsDriver(str(out), p.model_dump(mode="json"))
        else:
            ex, fn = executor(p, out / JOBS_DIR, f"hamsweep-{out.name}"), SweepJob(str(out))
        try:
            job = ex.submit(fn)
        except Exception as err:  # noqa: BLE001 - sbatch refused (account, qos, limits): its words, one line
            raise SpecError("--cluster", f"sbatch refused the job: {_first_line(err)}") from None
        return Launch(kind=self.kind, out=str(out), mode=p.mode, job=str(job.job_id))

    def attach(self, out: Path) -> tuple[Launch, TrialJobs]:
        """Mode jobs, attached: the launch record of a driver in this process, and its trial jobs."""
        from hamsweep.launch.jobs import TrialJobs

        return Launch(kind=self.kind, out=str(out), mode="jobs", pid=os.getpid()), TrialJobs(out, self._profile())

    def state(self, launch: Launch) -> JobState:
        from hamsweep.launch.local import LocalLauncher

        if launch.job is None:  # mode jobs, attached: the driver is a process on the launching machine
            driver = LocalLauncher().state(launch)
            return JobState(driver.phase, driver.detail + _trial_jobs(launch), driver.ok)
        jid = launch.job
        state, detail = job_states([jid]).get(jid, ("UNKNOWN", "not in squeue or sacct"))
        phase = "queued" if state in _QUEUED else "running" if state in _RUNNING else "ended"
        return JobState(phase, f"SLURM job {jid} {state} {detail}".strip() + _trial_jobs(launch),
                        ok=state == "COMPLETED" if phase == "ended" else None)

    def cancel(self, launch: Launch, console: Console) -> None:
        """scancel the sweep's jobs and wait until SLURM has none of them left. Mode jobs: the driver
        first (its trials can then submit nothing more), then every trial job it submitted."""
        from hamsweep.launch.local import LocalLauncher

        if launch.job is None and launch.pid is not None:  # mode jobs, attached: Ctrl-C the driver, wait for it
            LocalLauncher().cancel(launch, console)
        cancel_and_wait([j for j in [launch.job, *launch.trial_jobs] if j])
        if launch.mode == "jobs" and launch.out is not None:
            from hamsweep.launch.jobs import settle

            launch.trial_jobs = settle(Path(launch.out))

    def log(self, launch: Launch) -> Path | None:
        return None if launch.out is None else Path(launch.out) / JOBS_DIR / f"{launch.job}_0_log.err"

    def _profile(self) -> SlurmProfile:
        if self.profile is None:
            raise SpecError("--cluster", "a SLURM profile is needed to launch")
        return self.profile


def cancel_and_wait(ids: list[str]) -> None:
    """scancel ``ids`` and wait (up to ``_CANCEL_WAIT_S``) until none of them is in the queue."""
    if not ids:
        return
    proc = _slurm("scancel", *ids)
    if proc.returncode != 0 and _in_queue(ids):
        raise SpecError("cancel", f"scancel failed: {_said(proc)}")
    deadline = time.monotonic() + _CANCEL_WAIT_S
    while _in_queue(ids) and time.monotonic() < deadline:
        time.sleep(1)


def _trial_jobs(launch: Launch) -> str:
    """Mode jobs: how many trial jobs are where, as the driver last saw them (read from the sweep folder)."""
    if launch.mode != "jobs" or launch.out is None:
        return ""
    from hamsweep.launch.jobs import read_states

    states = read_states(Path(launch.out))
    running = sum(s in _RUNNING for s in states.values())
    queued = sum(s in _QUEUED for s in states.values())
    return f"; trial jobs: {running} running, {queued} queued, {len(states) - running - queued} ended" if states else ""


def _in_queue(ids: list[str]) -> list[str]:
    q = _slurm("squeue", "-h", "-j", ",".join(ids), "-o", "%i")
    return q.stdout.split()


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or [type(err).__name__])[-1]
