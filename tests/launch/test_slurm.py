"""The SLURM launcher against the project's real local SLURM (cluster/local/slurm.sh; `make test`
starts it): mode ray end to end, status from outside, requeues by USR2 (submitit's checkpoint path)
and by `scontrol requeue` (SIGTERM, a restart from scratch), cancel, fake GPUs, bad profiles."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    HAMSWEEP,
    REPO,
    assert_resumed_to_the_end,
    hamsweep,
    matches_golden,
    snapshotted_epochs,
    wait_for,
    write_spec,
)

from hamsweep.launch import read_launch
from hamsweep.launch.slurm import executor
from hamsweep.results import store as results
from hamsweep.spec import load_spec
from hamsweep.spec.cluster import load_profile
from hamsweep.sweep.recorder import param_types
from hamsweep.sweep.search import open_study

pytestmark = pytest.mark.timeout(900)

GOLDEN = Path(__file__).parent / "golden" / "slurm_ray.sbatch"


def write_profile(path: Path, **fields: object) -> Path:
    profile = {
        "kind": "slurm",
        "mode": "ray",
        "partition": "debug",
        "nodes": 1,
        "cpus_per_task": 2,
        "timeout_min": 60,
        "shared_folder": str(path.parent / "shared"),
        **fields,
    }
    path.write_text(yaml.safe_dump(profile))
    return path


def squeue(job: str) -> str:
    return subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True
    ).stdout.strip()


def sacct_state(job: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"], capture_output=True, text=True
    ).stdout
    return out.strip().split("\n")[-1].split(" ")[0] if out.strip() else ""


def ray_processes(job: str) -> list[str]:
    """Command lines of processes in this job's Ray temp folders
    (/tmp/hamsweep-ray-<job>-<restart>)."""
    marker, found = f"hamsweep-ray-{job}-", []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (
                (proc / "cmdline").read_bytes().decode(errors="replace")
                if proc.name.isdigit()
                else ""
            )
        except OSError:
            continue
        if marker in cmd:
            found.append(cmd)
    return found


def release_requeued(job: str) -> None:
    """A requeued job is held ~120 s (BeginTime): start it now."""
    wait_for(lambda: squeue(job) == "PENDING", 120, f"job {job} requeued")
    # a release in the requeue's own second makes slurmd refuse the launch: the job FAILs
    time.sleep(1.1)
    subprocess.run(
        ["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, capture_output=True
    )


def job_ids() -> set[str]:
    """Every job slurmctld knows now: at once, unlike sacct, where a job can show up seconds
    later."""
    out = subprocess.run(["scontrol", "-o", "show", "jobs"], capture_output=True, text=True).stdout
    return set(re.findall(r"^JobId=(\d+)", out, flags=re.M))


def attached_gpu_sweep(
    root: Path, gpus: int, timeout: float, **profile: object
) -> tuple[Path, subprocess.CompletedProcess]:
    """The tiny sweep, attached, on the gpu partition: each trial takes one of the node's fake
    GPUs."""
    spec = write_spec(root / "tiny.yaml", resources={"cpu": 1, "gpu": 1})
    prof = write_profile(root / "prof.yaml", partition="gpu", gpus_per_node=gpus, **profile)
    proc = hamsweep(
        "run", str(spec), "--cluster", str(prof), "--out", str(root / "out"), timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "out", proc


@pytest.fixture(scope="module")
def gpu_sweep(
    slurm, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    return attached_gpu_sweep(tmp_path_factory.mktemp("slurm"), slurm.gpus, 800)


def test_mode_ray_sweep_has_the_shape_of_a_local_one(gpu_sweep):
    out, proc = gpu_sweep
    spec = load_spec(out / "spec.yaml")
    launch = read_launch(out)
    assert (
        launch.kind == "slurm" and launch.mode == "ray" and sacct_state(launch.job) == "COMPLETED"
    )
    assert f"SLURM job {launch.job}" in proc.stdout
    trials = results.read_table(out, results.TRIALS)
    assert trials.schema.names == results.trials_schema(param_types(spec.search.params)).names
    assert trials.num_rows == spec.search.num_samples
    for table in (results.EPOCHS, results.CLASSES):
        assert results.read_table(out, table).schema.names == results.SCHEMAS[table].names
    con = results.connect(out)
    # the final evaluation ran
    assert con.execute("SELECT count(*) FROM classes WHERE split = 'test'").fetchone()[0] > 0
    assert (
        con.execute("SELECT count(*), count(DISTINCT (trial, epoch)) FROM epochs").fetchone()[0] > 0
    )
    assert ray_processes(launch.job) == [] and not list(
        Path("/tmp").glob(f"hamsweep-ray-{launch.job}-*")
    )


def test_fake_gpus_reach_each_trial_as_cuda_visible_devices(gpu_sweep, slurm):
    out, _ = gpu_sweep
    rows = results.read_table(out, results.TRIALS).to_pylist()
    seen = {r["devices"] for r in rows}
    assert seen and seen <= {str(i) for i in range(slurm.gpus)}, seen  # one GPU each, of the job's
    assert all(r["node"] for r in rows)


def test_status_of_a_finished_sweep(gpu_sweep):
    out, _ = gpu_sweep
    shown = hamsweep("status", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "ended" in shown.stdout and "COMPLETED" in shown.stdout and "5 done" not in shown.stdout
    first = results.read_table(out, results.TRIALS).to_pylist()[0]["trial"]
    assert first in shown.stdout


def _slow_sweep(root: Path, train_size: int = 1024, **search: int) -> tuple[Path, Path]:
    spec = write_spec(
        root / "slow.yaml",
        data={"train_size": train_size},
        train={"epochs": 6},
        scheduler="none",
        search={"num_samples": 4, "max_concurrent": 2, **search},
        confirm={"top_k": 0},
    )
    return spec, write_profile(root / "prof.yaml")


def _detach(spec: Path, prof: Path, out: Path) -> str:
    proc = hamsweep(
        "run", str(spec), "--cluster", str(prof), "--out", str(out), "--detach", timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_launch(out).job


def test_detached_sweep_survives_a_usr2_and_a_sigterm_requeue(slurm, tmp_path):
    out = tmp_path / "out"
    # an epoch of 1024 images takes about 0.2 s here: too short to catch a trial between two
    # checkpoints in Tune's snapshot (taken once a second)
    job = _detach(*_slow_sweep(tmp_path, train_size=8192), out)
    # a trial that has not ended has a whole checkpoint in the snapshot: the resume continues it
    # (the trials are fast: epochs of trials that ended are no sign of one)
    wait_for(
        lambda: snapshotted_epochs(out, unfinished=True) >= 1 and snapshotted_epochs(out) >= 3,
        300,
        "three checkpointed epochs, one of a trial still running",
    )
    shown = hamsweep("status", str(out))
    assert shown.returncode == 0 and "RUNNING" in shown.stdout and "running" in shown.stdout

    # submitit's checkpoint path: USR2 as before a time limit; the job requeues itself
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    release_requeued(job)
    before = snapshotted_epochs(out)
    wait_for(
        lambda: squeue(job) == "RUNNING" and snapshotted_epochs(out) >= before + 2,
        300,
        "progress after the USR2 requeue",
    )
    # SLURM's own requeue: SIGTERM (submitit ignores it), then a restart from scratch
    subprocess.run(["scontrol", "requeue", job], check=True)
    release_requeued(job)
    wait_for(
        lambda: sacct_state(job) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
        600,
        "the requeued job to end",
    )

    assert sacct_state(job) == "COMPLETED", (out / "slurm" / f"{job}_0_log.err").read_text()[-3000:]
    # three runs of the job, each its own Ray
    assert len(list((out / "slurm").glob(f"ray-{job}-*"))) == 3
    assert_resumed_to_the_end(out, trials=4, epochs=6)
    study = open_study(out)
    states = sorted(t.state.name for t in study.trials)
    # a proposal asked less than a snapshot (1 s) before the job was stopped is unknown to the
    # restored Tune: it stays in the journal as FAIL and its trial runs again as a new Optuna trial
    assert [s for s in states if s != "FAIL"] == ["COMPLETE"] * 4, states
    assert ray_processes(job) == []
    # a killed run's temp folder goes at the next run
    assert not list(Path("/tmp").glob(f"hamsweep-ray-{job}-*"))


def test_cancel_leaves_no_job_and_no_ray_process(slurm, tmp_path):
    out = tmp_path / "out"
    job = _detach(*_slow_sweep(tmp_path), out)
    wait_for(lambda: snapshotted_epochs(out) >= 1, 300, "a first checkpointed epoch")
    proc = hamsweep("cancel", str(out))
    assert proc.returncode == 0, proc.stderr
    assert squeue(job) == "" and sacct_state(job) == "CANCELLED"
    wait_for(lambda: ray_processes(job) == [], 30, "the job's Ray processes to end")
    assert read_launch(out).cancelled
    shown = hamsweep("status", str(out))
    assert "cancelled" in shown.stdout and "CANCELLED" in shown.stdout
    # resume without --cluster: back on SLURM with the profile in launch.json
    again = hamsweep("resume", str(out), "--detach", timeout=120)
    assert again.returncode == 0 and "continuing on SLURM" in again.stderr, again.stderr
    second = read_launch(out)
    assert (
        second.kind == "slurm"
        and second.job != job
        and not second.cancelled
        and second.profile["partition"] == "debug"
    )
    assert hamsweep("cancel", str(out)).returncode == 0 and squeue(second.job) == ""


def test_a_failing_job_ends_the_attached_run_with_its_log(slurm, tmp_path):
    prof = write_profile(tmp_path / "prof.yaml", setup=["echo the site setup failed >&2", "exit 3"])
    out = tmp_path / "out"
    proc = hamsweep(
        "run",
        str(write_spec(tmp_path / "tiny.yaml")),
        "--cluster",
        str(prof),
        "--out",
        str(out),
        timeout=300,
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    job = read_launch(out).job
    assert f"SLURM job {job} FAILED" in proc.stderr and "hamsweep resume" in proc.stderr
    log = proc.stderr.split("its log: ")[1].split(")")[0]
    assert "the site setup failed" in Path(log).read_text()


@pytest.mark.parametrize(
    ("fields", "path", "key", "hint"),
    [
        ({"partition": "nope"}, None, "partition", "debug"),
        ({}, "no-sbatch", "--cluster", "sbatch"),
        ({"shared_folder": "FILE/runs"}, None, "shared_folder", "not a writable folder"),
        ({"nodes": 0}, None, "nodes", ">= 1"),
    ],
)
def test_bad_profiles_fail_in_one_line_before_submitting(slurm, tmp_path, fields, path, key, hint):
    (tmp_path / "FILE").write_text("a file, not a folder")
    if "shared_folder" in fields:
        fields = {"shared_folder": str(tmp_path / fields["shared_folder"])}
    prof = write_profile(tmp_path / "prof.yaml", **fields)
    spec = write_spec(tmp_path / "tiny.yaml")
    env = dict(os.environ)
    if path == "no-sbatch":
        (tmp_path / "bin").mkdir()
        env["PATH"] = str(tmp_path / "bin")
    before = job_ids()
    proc = subprocess.run(
        [HAMSWEEP, "run", str(spec), "--cluster", str(prof)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert key in proc.stderr and hint in proc.stderr
    assert job_ids() <= before  # no new job (old ones may age out of slurmctld meanwhile)
    assert not (tmp_path / "shared").exists()


def test_sbatch_script_of_the_documented_profile_is_pinned(tmp_path):
    """The sbatch file cluster/slurm.yaml produces. After a deliberate change, regenerate it with
    HAMSWEEP_GOLDEN=update (the test then fails) and review the diff."""
    profile = load_profile(REPO / "cluster" / "slurm.yaml")
    ex = executor(
        profile,
        Path("/shared/runs/cifar100-20261126-120000/slurm"),
        "hamsweep-cifar100-20261126-120000",
    )
    text = ex._executor._make_submission_file_text(
        "python -u -m submitit.core._submit /shared/runs/cifar100-20261126-120000/slurm", "uid"
    )
    matches_golden(GOLDEN, text)


def test_two_sweeps_share_one_allocation_node_without_interfering(slurm, tmp_path):
    """Issue 13, part 4: two mode-ray sweeps of two users' jobs on the same node at the same time,
    each with its own Ray (temp folder, ports, token): both finish, neither sees the other's
    trials."""
    outs, jobs = [tmp_path / f"out{i}" for i in range(2)], []
    for i, out in enumerate(outs):
        spec = write_spec(
            tmp_path / f"twin{i}.yaml",
            name=f"twin{i}",
            train={"epochs": 4},
            scheduler="none",
            search={"num_samples": 2, "max_concurrent": 1, "seed": i},
            confirm={"top_k": 0},
        )
        jobs.append(_detach(spec, write_profile(tmp_path / f"prof{i}.yaml", cpus_per_task=2), out))
    wait_for(
        lambda: (
            all(squeue(j) == "RUNNING" for j in jobs)
            or any(sacct_state(j) == "COMPLETED" for j in jobs)
        ),
        300,
        "both jobs running",
    )
    assert all(squeue(j) == "RUNNING" for j in jobs), "the two jobs did not run at the same time"
    wait_for(lambda: all(sacct_state(j) == "COMPLETED" for j in jobs), 600, "both sweeps completed")
    spans = []
    for out, job in zip(outs, jobs):
        trials = results.read_table(out, results.TRIALS).to_pylist()
        assert len([t for t in trials if t["role"] == "search"]) == 2, trials
        assert all(t["status"] == "completed" and t["node"] == trials[0]["node"] for t in trials)
        spans.append((min(t["started"] for t in trials), max(t["ended"] for t in trials)))
        assert ray_processes(job) == []  # each job stopped its own Ray
    # the two sweeps trained at the same time
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]
    assert (outs[0] / "ray_token").read_text() != (outs[1] / "ray_token").read_text()
