"""SLURM's own tools as both SLURM modes call them: submit a job (submitit's ``sbatch``), ask
about jobs (``squeue``, then ``sacct`` for those that left the queue; ``sinfo`` for the
partitions), cancel them (``scancel``). ``hamsweep.launch.slurm`` (the launcher) and
``hamsweep.launch.jobs`` (mode jobs' trial jobs) both build on it, and it on neither of them.

SLURM is polled sparingly: one ``squeue`` (and, for jobs that left the queue, one ``sacct``) per
call for every job id asked about, never one call per job.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hamsweep.errors import SpecError
from hamsweep.spec.cluster import SlurmProfile

__all__ = [
    "ACTIVE",
    "JOBS_DIR",
    "QUEUED",
    "RUNNING",
    "cancel_and_wait",
    "executor",
    "job_states",
    "partitions",
    "scancel",
]

JOBS_DIR = "slurm"  # in the sweep folder: submitit's pickles and every job's stdout/stderr
_CANCEL_WAIT_S = 120  # scancel'd jobs leave the queue after SLURM's KillWait (30 s by default)
QUEUED = (
    "PENDING",
    "CONFIGURING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESV_DEL_HOLD",
    "SUSPENDED",
)
RUNNING = ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING")
ACTIVE = QUEUED + RUNNING  # a job in any other state has ended


def _slurm(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _said(proc: subprocess.CompletedProcess[str]) -> str:
    """What a failed SLURM command said, in one line: its last line (SLURM's tools end with the
    fatal one)."""
    lines = proc.stderr.strip().splitlines()
    return lines[-1].strip() if lines else f"exit code {proc.returncode}"


def partitions() -> list[str]:
    """The partitions this cluster has (the default one first), from ``sinfo``."""
    if shutil.which("sinfo") is None:
        raise SpecError(
            "--cluster",
            "sinfo is not on PATH, so the profile's partition cannot be checked: "
            "run this on a SLURM login node, or run locally without --cluster",
        )
    try:
        proc = _slurm("sinfo", "-h", "-o", "%P")
    except subprocess.TimeoutExpired:
        raise SpecError(
            "cluster", "sinfo did not answer in 30 s; is SLURM reachable from here?"
        ) from None
    if proc.returncode != 0:
        raise SpecError("cluster", f"sinfo failed: {_said(proc)}; is SLURM reachable from here?")
    names = [p.strip() for p in proc.stdout.split() if p.strip()]
    default = [p.rstrip("*") for p in names if p.endswith("*")]
    return default + sorted({p.rstrip("*") for p in names} - set(default))


def executor(profile: SlurmProfile, folder: Path, name: str) -> Any:
    """A submitit executor for one job of ``profile``: its fields map one to one onto sbatch
    options."""
    import submitit

    ex = submitit.AutoExecutor(
        folder=folder, cluster="slurm", slurm_max_num_timeout=profile.max_requeues
    )
    optional = {
        "slurm_partition": profile.partition,
        "slurm_account": profile.account,
        "slurm_qos": profile.qos,
        "slurm_constraint": profile.constraint,
        "mem_gb": profile.mem_gb,
    }
    ex.update_parameters(
        name=name,
        nodes=profile.nodes,
        tasks_per_node=1,
        cpus_per_task=profile.cpus_per_task,
        gpus_per_node=profile.gpus_per_node or None,
        timeout_min=profile.timeout_min,
        slurm_setup=list(profile.setup),
        slurm_additional_parameters=dict(profile.sbatch_extra),
        slurm_signal_delay_s=profile.signal_delay_s,
        **{k: v for k, v in optional.items() if v is not None},
    )
    return ex


def job_states(ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (SLURM state, detail) for all ``ids`` in one ``squeue`` (+ one ``sacct`` for those
    gone)."""
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
        a = _slurm(
            "sacct", "-n", "-X", "-P", "-j", ",".join(gone), "-o", "JobID,State,Elapsed,ExitCode"
        )
        for line in a.stdout.splitlines():
            jid, state, elapsed, code = (line.split("|") + [""] * 4)[:4]
            out[jid] = (
                state.split()[0] if state else "UNKNOWN",
                f"after {elapsed}, exit code {code}",
            )
    return out


def scancel(ids: list[str]) -> None:
    """Cancel ``ids`` in one call; those already ended are no error."""
    if ids:
        _slurm("scancel", *ids)


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


def _in_queue(ids: list[str]) -> list[str]:
    q = _slurm("squeue", "-h", "-j", ",".join(ids), "-o", "%i")
    return q.stdout.split()
