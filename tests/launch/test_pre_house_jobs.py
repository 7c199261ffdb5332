"""A mode-jobs trial that the release before the house move (issue 19, part 5) pickled for SLURM
runs with this one: submitit's ``<job>_submitted.pkl`` holds ``hamsweep.launch.jobs.TrialJob``
with the old release's spec and Tune config (tests/fixtures/pre_house/jobs, made by 8b70c57 as its
README.txt says). The job is run as submitit's job runner runs it on a node
(``python -m submitit.core._submit <folder>``), here and as a job of the project's real SLURM
(cluster/local/slurm.sh; `make test` starts it), and it must train and write its results, the same
numbers the old release's run of the same pickle wrote (``expected.json``)."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PRE_HOUSE_JOBS as FIXTURE
from conftest import pre_house_comparable as _comparable

pytestmark = pytest.mark.timeout(300)

JOB = "1"  # the job id the pickle was saved under (submitit names it <job>_submitted.pkl)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "jobs"
    shutil.copytree(FIXTURE, root)
    return root


def _runner(root: Path) -> list[str]:
    # the pickled job names its sweep folder relative to where the job starts: ``sweep`` here
    return [sys.executable, "-u", "-m", "submitit.core._submit", str(root / "slurm")]


def test_the_fixture_pickles_the_old_trial_job():
    pickled = (FIXTURE / "slurm" / f"{JOB}_submitted.pkl").read_bytes()
    assert b"hamsweep.launch.jobs" in pickled and b"TrialJob" in pickled
    config = json.loads((FIXTURE / "config.json").read_text())
    assert config["role"] == "trunk" and config["keep"]  # a trunk: it keeps epochs for forks


@pytest.mark.parametrize(("job", "name"), [("2", "JobsDriver"), ("3", "SweepJob")])
def test_an_old_pickled_driver_job_loads_with_its_state(job, name):
    """A driver's job (mode jobs detached; mode ray's allocation) queued before the move and
    started after it: submitit's loader gives the class at its path, the profile validates, and
    the job would ``drive`` its folder, which resumes as tests/sweep/test_pre_house.py shows."""
    from submitit.core.utils import DelayedSubmission

    from hamsweep.launch.allocation import SweepJob
    from hamsweep.launch.jobs import JobsDriver
    from hamsweep.spec import validate
    from hamsweep.spec.cluster import SlurmProfile

    pickled = FIXTURE / "slurm" / f"{job}_submitted.pkl"
    assert name.encode() in pickled.read_bytes()
    fn = DelayedSubmission.load(pickled).function
    assert type(fn) is {"JobsDriver": JobsDriver, "SweepJob": SweepJob}[name]
    assert fn.out == "sweep"
    if isinstance(fn, JobsDriver):
        dumped = validate(SlurmProfile, fn.profile_data).model_dump(mode="json")
        assert {
            k: dumped[k] for k in fn.profile_data
        } == fn.profile_data  # each old field as it was
        assert dumped["mode"] == "jobs"


def test_an_old_pickled_trial_job_runs_in_submitits_runner(pre_house_job, fixture_arithmetic):
    """On this machine's job environment (``local``: the job id from SUBMITIT_LOCAL_JOB_ID where
    SLURM gives SLURM_JOB_ID), as submitit's runner loads and runs it on a node."""
    root, _ = pre_house_job
    _trained(root, JOB, fixture_arithmetic)


def test_an_old_pickled_trial_job_runs_as_a_slurm_job(
    slurm, tmp_path, pre_house_job, fixture_arithmetic
):
    """On the project's real SLURM: the job is queued held, gets the old pickle under its id (as
    submitit renames it after sbatch), and is released."""
    root = _copy(tmp_path)
    script = root / "job.sh"
    script.write_text(
        f"#!/bin/bash\nexport SUBMITIT_EXECUTOR=slurm\nexec {shlex.join(_runner(root))}\n"
    )
    log = root / "slurm" / "%j_0_log"
    job = _slurm(
        "sbatch",
        "--parsable",
        "--hold",
        "--chdir",
        str(root),
        "--cpus-per-task",
        "1",
        "--output",
        f"{log}.out",
        "--error",
        f"{log}.err",
        str(script),
    ).strip()
    # a fresh test cluster numbers its first job 1, the fixture's id: then there is nothing to move
    os.replace(root / "slurm" / f"{JOB}_submitted.pkl", root / "slurm" / f"{job}_submitted.pkl")
    _slurm("scontrol", "release", job)
    deadline = time.monotonic() + 180
    while (state := _sacct(job)) not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        assert time.monotonic() < deadline, f"SLURM job {job} still {state!r} after 180 s"
        time.sleep(1)
    err = root / "slurm" / f"{job}_0_log.err"
    assert state == "COMPLETED", err.read_text()[-3000:] if err.is_file() else state
    _trained(root, job, fixture_arithmetic)
    # the same numbers as the runner's run of the same pickle on this machine, bit for bit
    ran = _messages(root, job)
    assert [_comparable(m["result"]) for m in ran] == [
        _comparable(m["result"]) for m in pre_house_job[1]
    ]


def _slurm(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout


def _sacct(job: str) -> str:
    out = _slurm("sacct", "-n", "-X", "-P", "-j", job, "-o", "State").split()
    return out[-1] if out else ""


def _messages(root: Path, job: str) -> list[dict]:
    config = json.loads((FIXTURE / "config.json").read_text())
    folder = root / "sweep" / "ray" / "work" / f"{config['optuna_trial']:05d}" / "jobs" / job
    return [json.loads(p.read_text()) for p in sorted((folder / "results").glob("*.json"))]


def _trained(root: Path, job: str, arithmetic: str | None) -> None:
    """The job trained the old release's trial to its end and wrote what the proxy reads: the
    same numbers as the old release's run of the same pickle (where this machine computes the
    fixtures' numbers bit for bit: ``fixture_arithmetic``)."""
    with (root / "slurm" / f"{job}_0_result.pkl").open("rb") as f:
        assert pickle.load(f)[0] == "success"
    config = json.loads((FIXTURE / "config.json").read_text())
    work = root / "sweep" / "ray" / "work" / f"{config['optuna_trial']:05d}"
    folder = work / "jobs" / job
    assert (folder / "done").is_file()
    messages = _messages(root, job)
    expected = json.loads((FIXTURE / "expected.json").read_text())
    assert [m["result"]["epoch"] for m in messages] == [r["epoch"] for r in expected]
    for m in messages:  # each epoch's checkpoint copy beside its message, for the proxy
        assert (folder / m["checkpoint"] / "last.pt").is_file()
    # the trunk kept the epochs its forks start from, in the sweep folder
    kept = sorted(p.name for p in (root / "sweep" / "trunks").glob("*/epoch-*"))
    assert kept == [f"epoch-{e:04d}" for e in config["keep"]]
    got = [_comparable(m["result"]) for m in messages]
    assert [sorted(g) for g in got] == [sorted(e) for e in expected]  # the same fields
    if arithmetic is not None:
        pytest.skip(f"{arithmetic}; the job ran to its end and wrote every epoch's result")
    # bit-identical to the old release's run of the same pickle: per-class counts, losses, objective
    assert got == expected
