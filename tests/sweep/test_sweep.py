"""The sweep engine end to end, through the real CLI: a real local Ray, Optuna's journal, ASHA, the
Parquet tables read back with DuckDB and pyarrow, SIGKILLed drivers and workers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import (
    HAMSWEEP,
    TINY,
    assert_resumed_to_the_end,
    finished_sweep,
    hamsweep,
    snapshotted_epochs,
    wait_for,
    write_spec,
)

from hamsweep.results import store as results
from hamsweep.sweep.driver import _ray_temp_dir
from hamsweep.sweep.search import open_study
from hamsweep.sweep.trial import WORKER_PID

pytestmark = pytest.mark.timeout(600)


def ray_processes(out: Path) -> list[int]:
    """PIDs whose command line names this sweep's Ray session folder."""
    marker = str(_ray_temp_dir(out.resolve()))
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(
                errors="replace"
            ):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("sweep")
    return finished_sweep(write_spec(root / "tiny.yaml"), root / "out")


def test_sweep_runs_exactly_num_samples_trials_with_m_le_k(sweep):
    out, _ = sweep
    trials = results.read_table(out, results.TRIALS).to_pylist()
    assert len(trials) == TINY["search"]["num_samples"]
    assert all(t["ham_drop_step"] <= t["train_attack_steps"] for t in trials)
    first = min(trials, key=lambda t: t["number"])  # the spec's defaults run first
    assert (first["ham_discard_threshold"], first["train_attack_steps"], first["train_lr"]) == (
        0.0,
        3,
        0.05,
    )
    for t in trials:
        assert t["status"] in ("completed", "stopped"), t
        if t["status"] == "completed":
            assert t["epochs_run"] == t["epochs"] == 4 and t["stop_reason"] == "ran all 4 epochs"
        else:
            assert t["epochs_run"] < 4 and t["stop_reason"] == f"ASHA at epoch {t['epochs_run']}"
        assert t["wall_seconds"] > 0 and t["gpu_seconds"] == 0 and t["ended"] >= t["started"]


def test_asha_stopped_some_trials(sweep):
    out, _ = sweep
    statuses = [t["status"] for t in results.read_table(out, results.TRIALS).to_pylist()]
    assert "stopped" in statuses and "completed" in statuses


def test_every_epoch_and_class_is_stored_once(sweep):
    out, _ = sweep
    con = results.connect(out)
    per_trial = dict(
        con.execute(
            "SELECT trial, list(epoch ORDER BY epoch) FROM epochs GROUP BY trial"
        ).fetchall()
    )
    for t in results.read_table(out, results.TRIALS).to_pylist():
        # from epoch 1: no leaked checkpoint
        assert per_trial[t["trial"]] == list(range(1, t["epochs_run"] + 1))
    n_val = con.execute("SELECT count(*) FROM classes WHERE split = 'val'").fetchone()[0]
    n_epochs = con.execute("SELECT count(*) FROM epochs").fetchone()[0]
    assert n_val == n_epochs * 2 * 4  # clean + pgd3, 4 classes
    # compacted: one part per table, no duplicate key, readable by plain pyarrow
    for table in (results.TRIALS, results.EPOCHS, results.CLASSES):
        assert len(list((out / table).glob("part-*.parquet"))) == 1
    assert (
        pq.read_table(out / "classes").num_rows
        == con.execute("SELECT count(*) FROM classes").fetchone()[0]
    )
    assert (
        pq.read_table(out / "epochs").schema.metadata[b"hamsweep.schema_version"]
        == str(results.SCHEMA_VERSION).encode()
    )


def test_confirm_with_seeds_0_puts_the_best_completed_trial_on_the_test_split(sweep):
    out, proc = sweep
    con = results.connect(out)
    best = con.execute(
        "SELECT trial, best_epoch FROM trials WHERE status = 'completed' "
        "ORDER BY best_objective DESC, number LIMIT 1"
    ).fetchone()
    tested = con.execute(
        "SELECT DISTINCT trial, epoch, attack FROM classes WHERE split = 'test' ORDER BY attack"
    ).fetchall()
    assert tested == [(best[0], best[1], "clean"), (best[0], best[1], "pgd3")]
    assert f"test evaluation: trial {best[0]}" in proc.stdout


def test_optuna_journal_tells_the_truth(sweep):
    out, _ = sweep
    study = open_study(out)
    rows = {t["number"]: t for t in results.read_table(out, results.TRIALS).to_pylist()}
    assert sorted(t.number for t in study.trials) == sorted(rows)
    for t in study.trials:
        row = rows[t.number]
        assert t.state.name == {"completed": "COMPLETE", "stopped": "PRUNED"}[row["status"]]
        assert sorted(t.intermediate_values) == list(range(1, row["epochs_run"] + 1))
        if t.state.name == "COMPLETE":
            assert t.value == pytest.approx(row["best_objective"])
        assert t.params["ham.drop_step"] <= t.params["train.attack_steps"]


def test_sweep_folder_layout_token_and_no_leftover_ray(sweep):
    out, proc = sweep
    for name in (
        "spec.yaml",
        "manifest.json",
        "optuna.journal",
        "ray_token",
        "trials",
        "epochs",
        "classes",
        "ray",
    ):
        assert (out / name).exists(), name
    assert stat.S_IMODE((out / "ray_token").stat().st_mode) == 0o600
    assert not (
        out / "ray" / "work"
    ).exists()  # local training copies are gone; Ray holds the checkpoints
    assert not _ray_temp_dir(out.resolve()).exists()
    assert ray_processes(out) == []
    assert not (Path.home() / ".ray").exists() or "hamsweep" not in str(
        list((Path.home() / ".ray").iterdir())
    )
    # Ray's own console output is off: no experiment tables, no TensorBoard hints
    for noise in ("Trial status", "TensorBoard", "tensorboard", "Current time"):
        assert noise not in proc.stdout + proc.stderr


def test_results_and_query_commands(sweep):
    out, _ = sweep
    shown = hamsweep("results", str(out), "--top", "3")
    assert shown.returncode == 0, shown.stderr
    best = (
        results.connect(out)
        .execute("SELECT trial FROM trials ORDER BY best_objective DESC, number LIMIT 1")
        .fetchone()[0]
    )
    assert best in shown.stdout
    bad = hamsweep("results", str(out), "--by", "accuracy")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "worst_robust" in bad.stderr
    q = hamsweep("query", str(out), "SELECT count(*) AS n FROM trials", "--format", "csv")
    assert q.stdout.split() == ["n", "5"]


def test_evaluate_command_is_idempotent(sweep):
    out, _ = sweep
    before = (
        results.connect(out)
        .execute("SELECT count(*) FROM classes WHERE split = 'test'")
        .fetchone()[0]
    )
    proc = hamsweep("evaluate", str(out), "--top", "1")
    assert proc.returncode == 0, proc.stderr
    after = (
        results.connect(out)
        .execute("SELECT count(*) FROM classes WHERE split = 'test'")
        .fetchone()[0]
    )
    assert after == before  # the same rows again: readers keep one per key


def test_bad_spec_starts_nothing(tmp_path):
    spec = write_spec(tmp_path / "bad.yaml", objective={"metric": "accuracy"})
    proc = hamsweep("run", str(spec), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "objective.metric" in proc.stderr and "worst_robust" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_request_on_a_cpu_machine_is_refused_before_ray_starts(tmp_path):
    spec = write_spec(tmp_path / "gpu.yaml", resources={"gpu": 1})
    proc = hamsweep("run", str(spec), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "resources.gpu" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_existing_folder_is_not_overwritten_and_resume_needs_the_same_spec(sweep, tmp_path):
    out, _ = sweep
    spec = write_spec(tmp_path / "tiny.yaml")
    proc = hamsweep("run", str(spec), "--out", str(out))
    assert proc.returncode == 2 and "--resume" in proc.stderr
    other = write_spec(tmp_path / "other.yaml", train={"epochs": 5})
    proc = hamsweep("run", str(other), "--resume", str(out))
    assert proc.returncode == 2 and "differs" in proc.stderr and "train" in proc.stderr


def _checkpoints(out: Path) -> int:
    return len(list((out / "ray").glob("trial_*/checkpoint_*")))


def _slow_spec(path: Path, epochs: int = 6, train_size: int = 1024, **search: int) -> Path:
    """Trials of ``epochs`` epochs, no ASHA, no final evaluation: long enough to be interrupted.
    An epoch of 1024 images takes about 0.2 s here: a test that must catch a trial between two
    checkpoints (Tune snapshots once a second) asks for more images."""
    return write_spec(
        path,
        data={"train_size": train_size},
        train={"epochs": epochs},
        scheduler="none",
        search={"max_concurrent": 1, **search},
        confirm={"top_k": 0},
    )


def _driver(spec: Path, out: Path) -> subprocess.Popen:
    """`hamsweep run` in its own process group (Ray's daemons are its children)."""
    return subprocess.Popen(
        [HAMSWEEP, "run", str(spec), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _workers(out: Path) -> list[int]:
    """The live processes that trained the sweep's trials (Ray renames a worker's command line:
    ``ray_processes`` does not see them)."""
    pids = [int(f.read_text()) for f in (out / "ray" / "work").glob(f"*/{WORKER_PID}")]
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def _files(folder: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_sigkilled_driver_resumes_to_exactly_num_samples_trials(tmp_path):
    """Resumed from a copy in another folder, as a user who moved the sweep would: Tune's snapshot
    holds the first folder's absolute paths, and the resume must neither read nor write there."""
    first = tmp_path / "first"
    spec = _slow_spec(tmp_path / "kill.yaml", train_size=8192, num_samples=4, max_concurrent=2)
    driver = _driver(spec, first)
    try:
        wait_for(
            lambda: (
                snapshotted_epochs(first, unfinished=True) >= 1 and snapshotted_epochs(first) >= 3
            ),
            300,
            "three checkpointed epochs in Tune's snapshot, one of a trial still running",
        )
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray daemons: power loss
        driver.wait()
    wait_for(lambda: ray_processes(first) == [], 60, "the killed sweep's Ray processes to exit")
    wait_for(lambda: not _workers(first), 60, "the killed sweep's trial workers to exit")
    out = tmp_path / "copy"
    shutil.copytree(first, out, symlinks=True)
    untouched = _files(first)
    proc = hamsweep("resume", str(out))
    assert _files(first) == untouched  # the first folder is another sweep now
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_resumed_to_the_end(out, trials=4, epochs=6)
    study = open_study(out)
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(finished) == 4 and not [t for t in study.trials if t.state.name == "RUNNING"]


def test_a_driver_killed_before_tunes_first_snapshot_resumes_every_trial(tmp_path):
    """Killed after Tune wrote tuner.pkl but before its first experiment snapshot (found by
    bench/chaos.py): Tune's restore of such a folder proposes nothing more (num_samples 1)."""
    out = tmp_path / "out"
    driver = _driver(_slow_spec(tmp_path / "early.yaml", num_samples=3, max_concurrent=1), out)
    try:
        wait_for(lambda: (out / "ray" / "tuner.pkl").is_file(), 300, "Tune's tuner.pkl")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    for snapshot in ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl"):
        for path in (out / "ray").glob(snapshot):  # as a kill a moment earlier leaves it
            path.unlink()
    wait_for(lambda: ray_processes(out) == [], 60, "the killed sweep's Ray processes to exit")
    proc = hamsweep("resume", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = results.read_table(out, results.TRIALS).to_pylist()
    assert len([t for t in trials if t["role"] == "search"]) == 3 and all(
        t["status"] == "completed" for t in trials
    )


def test_killed_worker_restarts_from_its_checkpoint(tmp_path):
    out = tmp_path / "out"
    driver = _driver(_slow_spec(tmp_path / "worker.yaml", num_samples=1), out)
    try:
        # two on disk: the driver has taken the first in hand (one just written may not be Tune's
        # yet)
        wait_for(
            lambda: _checkpoints(out) >= 2 and list((out / "ray" / "work").glob("*/worker.pid")),
            300,
            "two checkpoints",
        )
        pid = int(next((out / "ray" / "work").glob("*/worker.pid")).read_text())
        os.kill(pid, signal.SIGKILL)
        _, err = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, err[-3000:]
    (t,) = results.read_table(out, results.TRIALS).to_pylist()
    assert t["status"] == "completed" and t["restarts"] == 1 and t["resumed_from"] >= 1
    epochs = (
        results.connect(out).execute("SELECT list(epoch ORDER BY epoch) FROM epochs").fetchone()[0]
    )
    assert epochs == [1, 2, 3, 4, 5, 6]


def test_local_sweep_is_watched_and_cancelled_from_another_terminal(tmp_path):
    out = tmp_path / "out"
    # 40 epochs: the first trial still runs when status looks (CI once saw both 6-epoch trials done
    # by then); cancel ends it
    driver = _driver(_slow_spec(tmp_path / "cancel.yaml", epochs=40, num_samples=2), out)
    try:
        wait_for(lambda: snapshotted_epochs(out) >= 1, 300, "a first checkpointed epoch")
        shown = hamsweep("status", str(out))
        assert shown.returncode == 0 and f"running: driver process {driver.pid}" in shown.stdout, (
            shown.stdout + shown.stderr
        )
        # one trial at a time: the first runs, or (on a loaded machine, the snapshot lagging) has
        # just ended
        assert re.search(r"trials: (1 running|0 running, 1 done)", shown.stdout), shown.stdout
        proc = hamsweep("cancel", str(out))
        assert proc.returncode == 0, proc.stderr
        _, err = driver.communicate(timeout=60)  # cancel returned: the driver has already ended
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130 and f"hamsweep resume {out}" in err
    assert ray_processes(out) == []
    shown = hamsweep("status", str(out))
    assert "cancelled; ended" in shown.stdout


def test_diverging_trials_fail_with_their_reason_and_the_sweep_goes_on(tmp_path):
    params = dict(
        TINY["search"]["params"], **{"train.lr": {"loguniform": [1e8, 1e9], "default": 1e8}}
    )
    spec = write_spec(
        tmp_path / "nan.yaml",
        search={"num_samples": 2, "max_concurrent": 1, "params": params},
        scheduler="none",
    )
    proc = hamsweep("run", str(spec), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = results.read_table(tmp_path / "out", results.TRIALS).to_pylist()
    assert len(trials) == 2
    for t in trials:
        assert t["status"] == "failed" and t["stop_reason"].startswith("diverged: train loss is"), t
        assert t["restarts"] == 0  # deterministic: not retried
    assert {t.state.name for t in open_study(tmp_path / "out").trials} == {"FAIL"}
    assert "no completed trial" in proc.stdout


def test_ctrl_c_stops_the_sweep_with_a_resume_hint_and_resume_finishes_it(tmp_path):
    out = tmp_path / "out"
    driver = _driver(_slow_spec(tmp_path / "int.yaml", num_samples=2), out)
    try:
        wait_for(lambda: _checkpoints(out) >= 1, 300, "a checkpoint")
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "hamsweep: error: stopped with 2 of 2 trials unfinished; "
        f"continue with: hamsweep resume {out}"
    )
    proc = hamsweep("resume", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = results.read_table(out, results.TRIALS).to_pylist()
    assert [t["status"] for t in trials] == ["completed", "completed"]
    assert results.connect(out).execute("SELECT count(*) FROM epochs").fetchone()[0] == 12


def test_wall_budget_stops_the_sweep_and_says_so(tmp_path):
    spec = write_spec(
        tmp_path / "budget.yaml",
        data={"train_size": 1024},
        train={"epochs": 80},
        scheduler="none",
        search={"num_samples": 6, "max_concurrent": 1},
        confirm={"top_k": 0},
        budget={"wall_hours": 0.015},
    )
    proc = hamsweep("run", str(spec), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "budget: 0.015 wall-clock hours reached" in proc.stdout
    trials = results.read_table(tmp_path / "out", results.TRIALS).to_pylist()
    assert 1 <= len(trials) < 6
    stopped = [t for t in trials if t["status"] == "stopped"]
    assert stopped and all(
        t["stop_reason"] == "budget: 0.015 wall-clock hours reached" for t in stopped
    )
    states = {t.number: t.state.name for t in open_study(tmp_path / "out").trials}
    assert all(states[t["number"]] == "PRUNED" for t in stopped)


def test_address_runs_the_sweep_on_an_existing_ray_cluster(tmp_path):
    import secrets
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(16))
    token.chmod(0o600)
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    temp = Path("/tmp") / f"hs-test-{secrets.token_hex(3)}"
    ray_cli = str(Path(HAMSWEEP).with_name("ray"))
    head = subprocess.Popen(
        [
            ray_cli,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            "--object-store-memory=100000000",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        spec = write_spec(
            tmp_path / "addr.yaml",
            search={"num_samples": 2, "max_concurrent": 2},
            confirm={"top_k": 0},
        )
        proc = subprocess.run(
            [
                HAMSWEEP,
                "run",
                str(spec),
                "--out",
                str(tmp_path / "out"),
                "--address",
                f"127.0.0.1:{port}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(results.read_table(tmp_path / "out", results.TRIALS)) == 2
        assert head.poll() is None  # the cluster is not ours: it keeps running
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def test_only_the_newest_two_checkpoints_of_a_trial_keep_their_files(sweep):
    out, _ = sweep
    for trial in (out / "ray").glob("trial_*"):
        folders = sorted(trial.glob("checkpoint_*"))
        full = [f for f in folders if (f / "last.pt").is_file()]
        assert full == folders[-2:] and all((f / "history.json").is_file() for f in full)
        assert all(not any(f.iterdir()) for f in folders[:-2])  # kept for Tune, emptied
