"""SLURM mode jobs (one job per trial) against the project's real local SLURM
(cluster/local/slurm.sh; `make test` starts it): an attached sweep on the gpu partition with ASHA, a
trial job killed mid-way, a detached driver requeued, then cancelled, bad input. No mocks: real
sbatch, squeue, sacct, scancel."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import (
    HAMSWEEP,
    REPO,
    hamsweep,
    matches_golden,
    snapshotted_epochs,
    wait_for,
    write_spec,
)
from test_slurm import attached_gpu_sweep, job_ids, release_requeued, squeue, write_profile

from hamsweep.launch import read_launch
from hamsweep.launch.jobs import driver_profile, listed_jobs, trial_profile
from hamsweep.launch.slurm import executor
from hamsweep.results import store as results
from hamsweep.spec import load_spec
from hamsweep.spec.cluster import load_profile
from hamsweep.sweep.recorder import param_types

pytestmark = pytest.mark.timeout(600)


def sacct_states(ids: list[str]) -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", ",".join(ids), "-o", "JobID,State"],
        capture_output=True,
        text=True,
    ).stdout
    return {
        job: state.split(" ")[0] for job, state in (line.split("|") for line in out.splitlines())
    }


def jobs_profile(path: Path, **fields: object) -> Path:
    return write_profile(path, mode="jobs", **fields)


@pytest.fixture(scope="module")
def jobs_sweep(
    slurm, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    """The tiny sweep (5 trials, ASHA) in mode jobs: each trial job takes one fake GPU."""
    return attached_gpu_sweep(tmp_path_factory.mktemp("jobs"), slurm.gpus, 500, mode="jobs")


def test_mode_jobs_sweep_has_the_shape_of_a_local_one(jobs_sweep, slurm):
    out, _ = jobs_sweep
    spec = load_spec(out / "spec.yaml")
    launch = read_launch(out)
    assert launch.kind == "slurm" and launch.mode == "jobs" and launch.job is None and launch.pid
    trials = results.read_table(out, results.TRIALS)
    assert trials.schema.names == results.trials_schema(param_types(spec.search.params)).names
    assert trials.num_rows == spec.search.num_samples
    for table in (results.EPOCHS, results.CLASSES):
        assert results.read_table(out, table).schema.names == results.SCHEMAS[table].names
    con = results.connect(out)
    # the final evaluation ran
    assert con.execute("SELECT count(*) FROM classes WHERE split = 'test'").fetchone()[0] > 0
    assert con.execute("SELECT count(*) = count(DISTINCT (trial, epoch)) FROM epochs").fetchone()[0]
    rows = trials.to_pylist()
    assert {r["devices"] for r in rows} <= {str(i) for i in range(slurm.gpus)} and all(
        r["node"] for r in rows
    )


def test_each_trial_ran_in_its_own_job_and_asha_cancelled_the_stopped_ones(jobs_sweep):
    out, _ = jobs_sweep
    jobs = listed_jobs(out)  # job id -> trial number
    rows = {r["number"]: r for r in results.read_table(out, results.TRIALS).to_pylist()}
    assert sorted(jobs.values()) == sorted(rows)  # one job per trial, none restarted
    states = sacct_states(list(jobs))
    stopped = {n for n, r in rows.items() if r["status"] == "stopped"}
    assert stopped and len(stopped) < len(rows), rows  # ASHA cut some, not all
    for job, number in jobs.items():
        assert states[job] == ("CANCELLED" if number in stopped else "COMPLETED"), (
            number,
            rows[number]["status"],
            states,
        )
    assert all(squeue(job) == "" for job in jobs)


def test_a_killed_trial_job_is_retried_from_its_checkpoint_and_an_interrupted_one_continues(
    slurm, tmp_path
):
    # long enough (32 epochs of about 1 s here, 3 under load) that each job still trains when it is
    # stopped: with 16, the second job could end before its USR2 landed on a quiet machine (one job
    # fewer)
    spec = write_spec(
        tmp_path / "one.yaml",
        data={"train_size": 2048},
        train={"epochs": 32},
        scheduler="none",
        confirm={"top_k": 0},
        search={"num_samples": 1, "max_concurrent": 1},
    )
    out = tmp_path / "out"
    cmd = [
        HAMSWEEP,
        "run",
        str(spec),
        "--cluster",
        str(jobs_profile(tmp_path / "prof.yaml")),
        "--out",
        str(out),
    ]
    driver = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        wait_for(
            lambda: "trial jobs: 1 running" in hamsweep("status", str(out)).stdout,
            300,
            "the trial's job to run",
        )
        assert f"running: driver process {driver.pid}" in hamsweep("status", str(out)).stdout
        # killed (a crash, a user's scancel) after two epochs reported: Tune restarts the trial from
        # its checkpoint
        wait_for(
            lambda: list((out / "ray").glob("trial_*/checkpoint_000001")),
            300,
            "two reported epochs",
        )
        (first,) = listed_jobs(out)
        subprocess.run(["scancel", first], check=True)
        # interrupted (USR2: a time limit near, or a preemption) after two more: the proxy goes on
        # in a new job
        wait_for(lambda: len(listed_jobs(out)) == 2, 300, "the trial's second job")
        second = max(listed_jobs(out), key=int)
        wait_for(
            lambda: (
                out / "ray" / "work" / "00000" / "jobs" / second / "results" / "000002.json"
            ).is_file(),
            300,
            "two epochs of the second job",
        )
        subprocess.run(["scancel", "--signal=USR2", second], check=True)
        _, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            # what a killed driver leaves
            subprocess.run(["scancel", *listed_jobs(out)], capture_output=True)
    assert driver.returncode == 0, err[-3000:]
    jobs = sorted(listed_jobs(out), key=int)
    assert len(jobs) == 3 and set(listed_jobs(out).values()) == {0}
    assert [sacct_states(jobs)[j] for j in jobs] == ["CANCELLED", "FAILED", "COMPLETED"]
    (row,) = results.read_table(out, results.TRIALS).to_pylist()
    # the USR2 is no failure
    assert row["status"] == "completed" and row["restarts"] == 1 and row["resumed_from"] >= 4, row
    con = results.connect(out)
    assert con.execute("SELECT count(*), count(DISTINCT epoch) FROM epochs").fetchone() == (32, 32)


def test_a_requeued_detached_driver_resumes_its_trials_in_new_jobs_and_cancel_leaves_no_job(
    slurm, tmp_path
):
    spec = write_spec(
        tmp_path / "long.yaml",
        train={"epochs": 50},
        scheduler="none",
        search={"num_samples": 3, "max_concurrent": 2},
    )
    out = tmp_path / "out"
    proc = hamsweep(
        "run",
        str(spec),
        "--cluster",
        str(jobs_profile(tmp_path / "prof.yaml")),
        "--out",
        str(out),
        "--detach",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    driver = read_launch(out).job
    try:
        _requeue_the_driver(out, driver)
    except BaseException:
        # leave no sweep running behind
        subprocess.run(["scancel", driver, *listed_jobs(out)], capture_output=True)
        raise

    cancelled = hamsweep("cancel", str(out))
    assert cancelled.returncode == 0, cancelled.stderr
    trial_jobs = sorted(listed_jobs(out), key=int)
    assert all(squeue(j) == "" for j in [driver, *trial_jobs])
    assert set(sacct_states([driver, *trial_jobs]).values()) == {"CANCELLED"}
    launch = read_launch(out)
    assert launch.cancelled and launch.trial_jobs == trial_jobs
    shown = hamsweep("status", str(out))
    assert "cancelled" in shown.stdout and f"SLURM job {driver} CANCELLED" in shown.stdout
    assert "trial jobs: 0 running, 0 queued, 4 ended" in shown.stdout


def _requeue_the_driver(out: Path, driver: str) -> None:
    wait_for(
        lambda: len(listed_jobs(out)) == 2 and snapshotted_epochs(out) >= 2,
        300,
        "two trial jobs with checkpointed epochs",
    )
    first = sorted(listed_jobs(out), key=int)
    # submitit's checkpoint path (a time limit or a preemption): the driver stops its trial jobs,
    # requeues, and its rerun restarts each trial from Tune's checkpoint in a new job
    subprocess.run(["scancel", "--signal=USR2", driver], check=True)
    release_requeued(driver)
    wait_for(
        lambda: (
            len(listed_jobs(out)) == 4
            and all(squeue(j) == "RUNNING" for j in listed_jobs(out) if j not in first)
        ),
        300,
        "the trials' new jobs",
    )
    assert set(sacct_states(first).values()) == {"CANCELLED"}
    assert sorted(listed_jobs(out).values()) == [0, 0, 1, 1]
    # restored, not from scratch
    assert any(
        (out / "ray" / "work" / f"{n:05d}" / "checkpoint" / "last.pt").is_file() for n in (0, 1)
    )


@pytest.mark.parametrize(
    ("fields", "resources", "key", "hint"),
    [
        ({"partition": "nope"}, {}, "partition", "debug"),
        ({"nodes": 2}, {}, "nodes", "one-node job"),
        ({}, {"gpu": 1}, "resources.gpu", "gpus_per_node 0"),
        ({"driver_cpus": 0}, {}, "driver_cpus", ">= 1"),
    ],
)
def test_bad_input_fails_in_one_line_before_submitting(
    slurm, tmp_path, fields, resources, key, hint
):
    prof = jobs_profile(tmp_path / "prof.yaml", **fields)
    spec = write_spec(tmp_path / "tiny.yaml", resources=resources)
    before = job_ids()
    proc = subprocess.run(
        [HAMSWEEP, "run", str(spec), "--cluster", str(prof), "--detach"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert key in proc.stderr and hint in proc.stderr
    assert job_ids() <= before  # no new job
    assert not (tmp_path / "shared").exists()


@pytest.mark.parametrize("which", ["trial", "driver"])
def test_sbatch_scripts_of_the_documented_profile_in_mode_jobs_are_pinned(which):
    """The sbatch files of a trial job (cifar100's resources) and of the detached driver, for
    cluster/slurm.yaml in mode jobs. After a deliberate change, regenerate them with
    HAMSWEEP_GOLDEN=update (the test then fails) and review the diff."""
    profile = load_profile(REPO / "cluster" / "slurm.yaml").model_copy(
        update={"mode": "jobs", "nodes": 1}
    )
    spec = load_spec(REPO / "search_spaces" / "cifar100.yaml")
    folder = Path("/shared/runs/cifar100-20261126-120000/slurm")
    job = trial_profile(profile, spec) if which == "trial" else driver_profile(profile)
    ex = executor(
        job, folder, "hamsweep-cifar100-20261126-120000" + ("-7" if which == "trial" else "")
    )
    text = ex._executor._make_submission_file_text(
        f"python -u -m submitit.core._submit {folder}", "uid"
    )
    golden = Path(__file__).parent / "golden" / f"slurm_jobs_{which}.sbatch"
    matches_golden(golden, text)


def test_a_trunk_its_forks_and_the_confirm_stage_run_as_trial_jobs(slurm, tmp_path):
    from conftest import SHARED_PARAMS

    from hamsweep.sweep.confirm import FIRST_NUMBER

    spec = write_spec(
        tmp_path / "shared.yaml",
        scheduler="none",
        confirm={"top_k": 1, "seeds": 1},
        search={"num_samples": 3, "max_concurrent": 2, "params": SHARED_PARAMS},
    )
    out = tmp_path / "out"
    proc = hamsweep(
        "run", str(spec), "--cluster", str(jobs_profile(tmp_path / "prof.yaml")), "--out", str(out)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = results.read_table(out, results.TRIALS).to_pylist()
    confirm = [r for r in rows if r["stage"] == "confirm"]
    rows = [r for r in rows if r["stage"] == "search"]
    trunk = next(r for r in rows if r["role"] == "trunk")
    assert trunk["status"] == "completed" and trunk["epochs_run"] == 4 and trunk["number"] is None
    forks = [r for r in rows if r["role"] == "search"]
    assert len(forks) == 3 and all(
        r["trunk"] == trunk["trial"] and r["forked_at"] == r["ham_warmup_epochs"] for r in forks
    )
    assert {p.name for p in (out / "trunks" / trunk["trunk_key"]).iterdir()} == {
        "epoch-0001",
        "epoch-0002",
        "epoch-0003",
    }
    # job id -> trial number: the trunk's job is number -1, the confirm stage's from FIRST_NUMBER
    jobs = listed_jobs(out)
    assert sorted(jobs.values()) == [
        -FIRST_NUMBER - 1,
        -1,
        *sorted(r["number"] for r in forks),
        FIRST_NUMBER,
    ]
    # the confirm stage: PGD-AT and the best config on seed 1, each evaluated on the test split in
    # its job
    assert sorted((r["role"], r["seed"], r["status"]) for r in confirm) == [
        ("baseline", 1, "completed"),
        ("confirm", 1, "completed"),
    ]
    con = results.connect(out)
    assert (
        con.execute("SELECT count(DISTINCT trial) FROM classes WHERE split = 'test'").fetchone()[0]
        == 2
    )
    assert con.execute("SELECT count(DISTINCT config) FROM confirm").fetchone()[0] == 2
    assert (
        con.execute(
            "SELECT count(*) FROM epochs e JOIN trials t USING (trial) "
            "WHERE e.epoch <= coalesce(t.forked_at, 0)"
        ).fetchone()[0]
        == 0
    )


def test_a_comparison_of_methods_runs_each_method_and_its_confirm_stage_as_trial_jobs(
    slurm, tmp_path
):
    """search.methods (issue 21) in mode jobs: TRADES from scratch, FAAL forked from the shared
    PGD-AT trunk, each a job of its own, then each method's best and PGD-AT on a new seed."""
    spec = write_spec(
        tmp_path / "methods.yaml",
        train={"method": "trades", "epochs": 3},
        faal={"warmup_epochs": 2},
        scheduler="none",
        confirm={"top_k": 1, "seeds": 1},
        search={
            "num_samples": 1,
            "max_concurrent": 2,
            "params": {},
            "methods": {"trades": {}, "faal": {}},
        },
    )
    out = tmp_path / "out"
    proc = hamsweep(
        "run", str(spec), "--cluster", str(jobs_profile(tmp_path / "prof.yaml")), "--out", str(out)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = results.read_table(out, results.TRIALS).to_pylist()
    assert all(r["status"] == "completed" for r in rows), rows
    search = {
        r["train_method"]: r for r in rows if r["stage"] == "search" and r["role"] == "search"
    }
    trunk = next(r for r in rows if r["stage"] == "search" and r["role"] == "trunk")
    assert set(search) == {"trades", "faal"}
    assert (search["faal"]["trunk"], search["faal"]["forked_at"]) == (trunk["trial"], 2)
    assert search["trades"]["forked_at"] is None
    confirm = sorted((r["role"], r["train_method"]) for r in rows if r["stage"] == "confirm")
    assert confirm == [("baseline", None), ("confirm", "faal"), ("confirm", "trades")]
    # one SLURM job per trial: the trunk, the two searched, the confirm stage's three
    assert len(listed_jobs(out)) == len(rows) == 6
    labels = {r[0] for r in results.connect(out).execute("SELECT label FROM confirm").fetchall()}
    assert labels == {
        "PGD-AT",
        f"TRADES #{search['trades']['number']}",
        f"FAAL #{search['faal']['number']}",
    }
