"""A sweep folder written by the release before the house move (issue 19, part 5) resumes with
this one. The fixture (tests/fixtures/pre_house/sweep, made by 8b70c57 as its README.txt says) is
a sweep with a shared PGD-AT trunk, ASHA and a confirm stage, SIGKILLed while two HAM forks were
mid-way: Tune's snapshot pickles the old module paths (``hamsweep.recorder.Recorder`` and its bound
methods, ``hamsweep.search.Searcher``, ``Space``, ``Asha``, ``hamsweep.trunk.Plan``, ``Trunk``,
``hamsweep.trial.trial_dirname``, the spec models). It is resumed through the CLI from a copy in
another folder than the one it was written in, as a user who moved it would: the snapshot's
absolute paths name a folder that no longer exists."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from conftest import REPO, hamsweep

pytestmark = pytest.mark.timeout(600)

FIXTURE = REPO / "tests" / "fixtures" / "pre_house" / "sweep"
RESUMED = FIXTURE.with_name("resumed.json")  # the old release's rows after resuming the fixture
CLASS_COLUMNS = "trial, epoch, split, attack, class_id, n, correct"
EPOCHS, SAMPLES = 8, 3  # the fixture spec's train.epochs and search.num_samples
ENDED = ("completed", "stopped")  # a trial's status at the sweep's end: trained out, or cut by ASHA


def _query(out: Path, sql: str) -> list[dict]:
    """``hamsweep query --format json``: the views a user reads (one row per key, the newest)."""
    proc = hamsweep("query", str(out), sql, "--format", "json", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _raw_epochs(out: Path) -> dict[tuple[str, int], float]:
    """(trial, epoch) -> train_loss of every epoch row in the Parquet parts, read by pyarrow
    part by part (duplicates kept: the caller counts them)."""
    rows: dict[tuple[str, int], float] = {}
    for part in sorted((out / "epochs").glob("part-*.parquet")):
        for row in pq.read_table(part, columns=["trial", "epoch", "train_loss"]).to_pylist():
            key = (row["trial"], row["epoch"])
            assert key not in rows, f"epoch row {key} written twice"
            rows[key] = row["train_loss"]
    return rows


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("pre_house") / "moved" / "sweep"
    shutil.copytree(FIXTURE, out, symlinks=True)
    return out, hamsweep("resume", str(out))


def test_the_fixture_is_an_unfinished_sweep_of_the_old_release():
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    assert manifest["git_sha"].startswith("8b70c57")
    tuner = (FIXTURE / "ray" / "tuner.pkl").read_bytes()
    for old in (b"hamsweep.recorder", b"hamsweep.trial", b"hamsweep.spec"):
        assert old in tuner  # Tune pickled the module paths that moved
    (searcher,) = (FIXTURE / "ray").glob("searcher-state-*.pkl")
    assert (
        b"hamsweep.search" in searcher.read_bytes() and b"hamsweep.trunk" in searcher.read_bytes()
    )
    state = json.loads(next((FIXTURE / "ray").glob("experiment_state-*.json")).read_text())
    running = [json.loads(d) for d, _ in state["trial_data"]]
    assert sum(t["status"] == "RUNNING" for t in running) >= 1  # real work left for the resume


def test_an_old_sweep_folder_resumes_to_its_end(resumed):
    out, proc = resumed
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _query(out, "SELECT trial, role, status, epochs_run, epochs, resumed_from FROM trials")
    roles = sorted(t["role"] for t in trials)
    assert roles == sorted(["trunk", *["search"] * SAMPLES, "confirm", "baseline"]), trials
    assert all(t["status"] in ENDED for t in trials), trials
    assert all(t["status"] == "stopped" or t["epochs_run"] == t["epochs"] == EPOCHS for t in trials)
    # the forks that were mid-way went on from their checkpoints, not from their fork point
    assert any(t["role"] == "search" and t["resumed_from"] for t in trials), trials
    # every trial, the ones Tune created after the resume too, kept its checkpoints in this folder
    for t in trials:
        assert any((out / "ray" / f"trial_{t['trial']}").glob("checkpoint_*")), t
    study = _query(out, "SELECT count(*) AS n FROM trials WHERE role = 'search' AND number >= 0")
    assert study == [{"n": SAMPLES}]


def test_the_resumed_rows_continue_the_old_ones(resumed):
    out, _ = resumed
    old, new = _raw_epochs(FIXTURE), _raw_epochs(out)
    assert old and all(new[key] == loss for key, loss in old.items())  # kept, not rewritten
    con = duckdb.connect()
    con.execute(
        "CREATE VIEW epochs AS SELECT * FROM "
        f"read_parquet('{out}/epochs/part-*.parquet', union_by_name = true)"
    )
    trials = _query(out, "SELECT trial, role, forked_at, epochs_run FROM trials")
    for t in trials:
        (got,) = con.execute(
            "SELECT list(epoch ORDER BY epoch) FROM epochs WHERE trial = ?", [t["trial"]]
        ).fetchone()
        first = (t["forked_at"] or 0) + 1  # a fork's rows start after its trunk's epochs
        assert got == list(range(first, t["epochs_run"] + 1)), t  # contiguous, none twice


def _rows(out: Path, trials: list[str]) -> dict[str, list[dict]]:
    """The epoch rows (less their timings) and per-class rows of ``trials``, as in RESUMED."""
    con, found = duckdb.connect(), {}
    for table, select in (
        ("epochs", "* EXCLUDE (seconds, images_per_s)"),
        ("classes", CLASS_COLUMNS),
    ):
        rel = con.sql(
            f"SELECT {select} FROM read_parquet('{out}/{table}/part-*.parquet', "
            f"union_by_name = true) WHERE trial IN ({', '.join(repr(t) for t in trials)}) "
            "ORDER BY ALL"
        )
        found[table] = [dict(zip(rel.columns, row)) for row in rel.fetchall()]
    return json.loads(json.dumps(found))  # through JSON, as RESUMED was stored


def _upto(rows: list[dict], last: dict[str, int]) -> list[dict]:
    return [r for r in rows if r["epoch"] <= last[r["trial"]]]


def test_the_resumed_trials_have_the_numbers_the_old_release_gave_them(resumed, fixture_arithmetic):
    """The trials Tune's snapshot held, resumed by this release and by 8b70c57 (make_fixture.py):
    the same rows, bit for bit (losses, per-class counts, summaries), up to the epoch both runs
    reached (ASHA's cut depends on the order results arrive in), which includes epochs each
    resumed fork trained after the resume. Bit for bit only where this machine computes the
    fixtures' numbers so (``fixture_arithmetic``); elsewhere the same rows, keys and columns."""
    out, _ = resumed
    old = json.loads(RESUMED.read_text())
    trials = sorted({r["trial"] for r in old["epochs"]})
    new = _rows(out, trials)
    last = {
        t: min(max(r["epoch"] for r in rows["epochs"] if r["trial"] == t) for rows in (old, new))
        for t in trials
    }
    runs = _query(out, "SELECT trial, role, resumed_from FROM trials")
    forks = {
        r["trial"]: r["resumed_from"] for r in runs if r["trial"] in trials and r["resumed_from"]
    }
    assert forks and all(last[t] > epoch for t, epoch in forks.items()), (forks, last)
    for table in ("epochs", "classes"):
        keys = ("trial", "epoch", *(("split", "attack", "class_id") if table == "classes" else ()))
        got, want = (
            sorted(tuple(r[k] for k in keys) for r in _upto(rows[table], last))
            for rows in (new, old)
        )
        assert got == want, table
    if fixture_arithmetic is not None:
        pytest.skip(f"{fixture_arithmetic}; the resumed rows are the old release's rows, by key")
    for table in ("epochs", "classes"):
        assert _upto(new[table], last) == _upto(old[table], last), table


def test_results_print_the_resumed_sweep(resumed):
    out, _ = resumed
    proc = hamsweep("results", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for trial in _query(out, "SELECT trial FROM trials WHERE role IN ('search', 'trunk')"):
        assert trial["trial"] in proc.stdout
    assert "PGD-AT" in proc.stdout


def test_a_snapshot_that_does_not_load_stops_the_resume_before_any_trial(tmp_path):
    """Tune itself would log the failure and start the sweep over, every trial again beside the
    old rows; hamsweep stops with one line instead and starts nothing."""
    out = tmp_path / "sweep"
    shutil.copytree(FIXTURE, out, symlinks=True)
    for snapshot in (out / "ray").glob("searcher-state-*.pkl"):
        snapshot.write_bytes(snapshot.read_bytes()[:100])  # a pickle cut short
    marker = ".validate_storage_marker"  # Tune's check that it can write the folder
    before = {p: p.stat().st_mtime_ns for p in (out / "ray").rglob("*") if p.name != marker}
    parts = sorted(out.glob("*/part-*.parquet"))
    proc = hamsweep("resume", str(out), timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("hamsweep: error: could not restore the sweep's Tune state in ")
    assert "UnpicklingError" in line and "rather than start the sweep over" in line
    after = {p: p.stat().st_mtime_ns for p in (out / "ray").rglob("*") if p.name != marker}
    assert after == before  # nothing Tune keeps was rewritten
    assert sorted(out.glob("*/part-*.parquet")) == parts  # no row written
