"""The project's test SLURM (cluster/local/slurm.sh) behaves as the launcher needs a real one to:
jobs run and are accounted in sacct, fake GPUs reach jobs, requeue works, and submitit (which reads
states from sacct only) gets results and sees cancellations. Each test takes a few seconds."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import submitit
from conftest import LocalSlurm
from submitit.core.utils import UncompletedJobError

T = TypeVar("T")
WAIT_S = 30.0  # a job starts in ~1 s here; anything near this is a broken cluster


def run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=WAIT_S).stdout


def sbatch(*args: str) -> str:
    return run("sbatch", "--parsable", *args).strip()


def wait_for(
    what: str, probe: Callable[[], T], until: Callable[[T], bool], timeout_s: float = WAIT_S
) -> T:
    """Polls `probe` until its value passes `until`; fails with the last value after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not until(value := probe()):
        if time.monotonic() > deadline:
            pytest.fail(
                f"no {what} after {timeout_s:.0f} s (last seen: {value!r}); "
                f"squeue:\n{run('squeue')}"
            )
        time.sleep(0.1)
    return value


def sacct_states(job: str) -> list[str]:
    """Every record of the job in accounting, oldest first (a requeue adds one)."""
    return run("sacct", "-n", "-X", "-P", "--duplicates", "-o", "State", "-j", job).split()


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def squeue_state(job: str) -> str:
    return run("squeue", "-h", "-j", job, "-o", "%T").strip()


def test_a_job_is_accounted_in_sacct(slurm: LocalSlurm, tmp_path: Path):
    out = tmp_path / "out"
    job = sbatch("--output", str(out), "--wrap", "echo hello from $SLURM_JOB_PARTITION")
    wait_for("COMPLETED in sacct", lambda: sacct_states(job), until=lambda s: s == ["COMPLETED"])
    assert run("sacct", "-n", "-X", "-P", "-o", "ExitCode", "-j", job).strip() == "0:0"
    assert out.read_text() == f"hello from {slurm.default_partition}\n"


def test_partitions_are_real(slurm: LocalSlurm):
    assert slurm.default_partition == "debug" and "gpu" in slurm.partitions and slurm.cpus >= 4
    with pytest.raises(subprocess.CalledProcessError) as err:
        sbatch("--partition", "nope", "--wrap", "true")
    assert "invalid partition name" in err.value.stderr.lower()


@pytest.mark.parametrize("gpus", [1, 2])
def test_fake_gpus_reach_the_job(slurm: LocalSlurm, tmp_path: Path, gpus: int):
    assert slurm.gpus == 2
    out = tmp_path / "out"
    job = sbatch(
        "--partition",
        "gpu",
        f"--gres=gpu:{gpus}",
        "--output",
        str(out),
        "--wrap",
        "echo $CUDA_VISIBLE_DEVICES",
    )
    wait_for("COMPLETED in sacct", lambda: sacct_states(job), until=lambda s: s == ["COMPLETED"])
    assert out.read_text().strip() == ",".join(str(i) for i in range(gpus))


def test_more_gpus_than_the_node_has_are_refused(slurm: LocalSlurm):
    with pytest.raises(subprocess.CalledProcessError) as err:
        sbatch(f"--gres=gpu:{slurm.gpus + 1}", "--wrap", "true")
    assert "requested node configuration is not available" in err.value.stderr.lower()


def test_a_requeued_job_runs_again(slurm: LocalSlurm, tmp_path: Path):
    out = tmp_path / "out"
    # the first run waits to be requeued; the second (SLURM_RESTART_COUNT=1) ends at once
    script = (
        'echo "run ${SLURM_RESTART_COUNT:-0}"; [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ] || sleep 60'
    )
    job = sbatch("--open-mode=append", "--output", str(out), "--wrap", script)
    wait_for("first run", lambda: text(out), until=lambda t: "run 0" in t)
    run("scontrol", "requeue", job)
    # a requeued job is held (BeginTime, 6 s here) until its old credential expires; StartTime=now
    # releases it, but not in the second of the requeue: slurmd refuses a launch whose credential is
    # no newer (in whole seconds) than the revoked one ("already killed") and the job FAILs
    wait_for("requeued job pending", lambda: squeue_state(job), until=lambda s: s == "PENDING")
    time.sleep(1.1)
    run("scontrol", "update", f"JobId={job}", "StartTime=now")
    wait_for(
        "COMPLETED after the requeue",
        lambda: sacct_states(job),
        until=lambda s: s == ["REQUEUED", "COMPLETED"],
    )
    assert [line for line in out.read_text().splitlines() if line.startswith("run")] == [
        "run 0",
        "run 1",
    ]


def _executor(folder: Path) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=1)
    return executor


def test_submitit_gets_a_result(slurm: LocalSlurm, tmp_path: Path):
    # a builtin: the job's Python unpickles it without importing this test module
    job = _executor(tmp_path).submit(os.getenv, "SLURM_JOB_PARTITION")
    assert job.result() == slurm.default_partition
    # the result file comes before the job's end; submitit's state comes from sacct
    wait_for(
        "COMPLETED from submitit",
        lambda: job.get_info(mode="force").get("State"),
        until=lambda s: s == "COMPLETED",
    )


def test_submitit_sees_a_cancelled_job(slurm: LocalSlurm, tmp_path: Path):
    job = _executor(tmp_path).submit(time.sleep, 60)
    wait_for("running job", lambda: squeue_state(job.job_id), until=lambda s: s == "RUNNING")
    job.cancel()
    # submitit asks sacct, at most every 2 s this early in a job's life
    wait_for(
        "CANCELLED from submitit",
        lambda: job.state,
        until=lambda s: s.startswith("CANCELLED"),
        timeout_s=10,
    )
    assert job.done()
    job._results_timeout_s = 0  # submitit waits 15 s for a result file a cancelled job never writes
    with pytest.raises(UncompletedJobError, match="has not produced any output"):
        job.result()


def test_a_cluster_folder_munged_cannot_reach_is_one_line(slurm: LocalSlurm, tmp_path: Path):
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)  # as `mktemp -d` makes it: munged (the munge user) cannot enter
    script = Path(__file__).resolve().parents[2] / "cluster" / "local" / "slurm.sh"
    proc = subprocess.run(
        [str(script), "up"],
        env={**os.environ, "HAMSWEEP_SLURM_DIR": str(hidden / "slurm")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"run chmod o+x {hidden}" in proc.stderr and not (hidden / "slurm").exists()
