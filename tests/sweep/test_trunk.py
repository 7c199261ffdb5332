"""Shared warm-ups end to end: one sweep whose HAM trials fork from a PGD-AT trunk, read back with
DuckDB, pyarrow and Optuna; a fork retrained from scratch gives the same numbers; the plan of
trunks for the shipped and for hand-made specs; a SIGKILLed driver with a trunk resumes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import duckdb
import pytest
import torch
from conftest import (
    HAMSWEEP,
    SHARED_PARAMS,
    checkpoint_whole,
    finished_sweep,
    hamsweep,
    snapshotted_trials,
    wait_for,
    write_spec,
)

from hamsweep.results import store as results
from hamsweep.spec import load_spec
from hamsweep.sweep.search import open_study
from hamsweep.sweep.trunk import plan, predicted_cost

pytestmark = pytest.mark.timeout(600)

EPOCHS, SAMPLES = 4, 5


def _shared_spec(path: Path, **changes) -> Path:
    search = {
        "num_samples": SAMPLES,
        "max_concurrent": 2,
        "params": SHARED_PARAMS,
        **changes.pop("search", {}),
    }
    return write_spec(path, search=search, **changes)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("trunk")
    return finished_sweep(_shared_spec(root / "shared.yaml"), root / "out")


def _sql(out: Path, sql: str) -> list[tuple]:
    """Straight from the Parquet files, not through the project's readers (one part per table after
    compaction)."""
    con = duckdb.connect()
    for table in ("trials", "epochs", "classes"):
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{out / table}/part-*.parquet')"
        )
    return con.execute(sql).fetchall()


def test_one_trunk_runs_to_the_end_and_every_ham_trial_forks_from_it(sweep):
    out, _ = sweep
    trunks = _sql(
        out,
        "SELECT trial, number, status, epochs_run, epochs, trunk_key FROM trials "
        "WHERE role = 'trunk'",
    )
    assert len(trunks) == 1
    trunk, number, status, run, epochs, key = trunks[0]
    assert number is None and status == "completed" and run == epochs == EPOCHS
    search = _sql(
        out, "SELECT trial, trunk, forked_at, ham_warmup_epochs FROM trials WHERE role = 'search'"
    )
    assert len(search) == SAMPLES
    assert all(t == trunk and forked == w for _, t, forked, w in search)
    # the trunk kept the checkpoints forks start from: every warm-up the search can propose
    assert sorted(p.name for p in (out / "trunks" / key).iterdir()) == [
        "epoch-0001",
        "epoch-0002",
        "epoch-0003",
    ]
    state = torch.load(out / "trunks" / key / "epoch-0002" / "last.pt", weights_only=False)
    assert state["epoch"] == 2 and state["config"]["train"]["method"] == "pgd_at"


def test_the_trunks_epochs_are_stored_once_and_forks_hold_only_their_own(sweep):
    out, _ = sweep
    rows = _sql(
        out,
        """SELECT t.trial, t.role, t.forked_at, t.epochs_run, count(e.epoch), min(e.epoch),
                        max(e.epoch), count(DISTINCT e.epoch)
                        FROM trials t JOIN epochs e ON e.trial = t.trial GROUP BY ALL""",
    )
    assert len(rows) == SAMPLES + 1
    for _, role, forked, run, n, lo, hi, distinct in rows:
        first = 1 if role == "trunk" else forked + 1
        assert (lo, hi) == (first, run) and n == distinct == run - first + 1
    assert _sql(
        out,
        "SELECT count(*) FROM epochs JOIN trials USING (trial) "
        "WHERE role = 'search' AND phase <> 'ham'",
    ) == [(0,)]
    assert _sql(
        out,
        "SELECT count(*) FROM epochs JOIN trials USING (trial) "
        "WHERE role = 'trunk' AND phase <> 'pgd_at'",
    ) == [(0,)]


def test_trial_epochs_gives_every_trial_its_whole_history(sweep):
    out, _ = sweep
    con = results.connect(out)
    history = con.execute(
        """SELECT t.trial, t.forked_at, list(h.epoch ORDER BY h.epoch), sum(h.inherited::int)
           FROM trials t JOIN trial_epochs h USING (trial) GROUP BY ALL"""
    ).fetchall()
    runs = dict(con.execute("SELECT trial, epochs_run FROM trials").fetchall())
    for trial, forked, epochs, inherited in history:
        assert epochs == list(range(1, runs[trial] + 1))  # contiguous, no gap, no duplicate
        assert inherited == (forked or 0)
    per_class = con.execute(
        "SELECT count(*) FROM trial_classes WHERE inherited AND split = 'val'"
    ).fetchone()[0]
    # clean + pgd, 4 classes, per inherited epoch
    assert per_class == sum((f or 0) for _, f, _, _ in history) * 2 * 4


def test_a_fork_has_the_numbers_of_the_same_trial_trained_from_scratch(sweep, tmp_path):
    from hamsweep.core.train import run

    out, _ = sweep
    spec = load_spec(out / "spec.yaml")
    ((trial, _number, w, tau, m, temp, _epochs_run),) = _sql(
        out,
        """SELECT trial, number, ham_warmup_epochs, ham_discard_threshold,
        ham_drop_step, ham_temperature, epochs_run FROM trials
        WHERE role = 'search' AND status = 'completed'
        ORDER BY number LIMIT 1""",
    )
    cfg = spec.search_trial_config(
        {
            "ham.warmup_epochs": w,
            "ham.discard_threshold": tau,
            "ham.drop_step": m,
            "ham.temperature": temp,
        }
    )
    records = run(
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": "cpu"})}),
        workdir=tmp_path,
    )
    stored = _sql(
        out,
        f"""SELECT epoch, attack, list(correct ORDER BY class_id) FROM classes
            WHERE trial = '{trial}' AND split = 'val' GROUP BY ALL ORDER BY epoch, attack""",
    )
    mine = sorted(
        (r.epoch, e.attack, list(e.correct))
        for r in records[w:]
        for e in r.evals
        if e.split == "val"
    )
    assert [tuple(x) for x in mine] == stored


def test_forks_wait_for_their_trunk_epoch_and_optuna_counts_full_epochs(sweep):
    out, proc = sweep
    ((key,),) = _sql(out, "SELECT trunk_key FROM trials WHERE role = 'trunk'")
    # renamed into place when complete
    ready = {int(p.name[-4:]): p.stat().st_mtime for p in (out / "trunks" / key).iterdir()}
    for forked, started in _sql(
        out, "SELECT forked_at, epoch_ms(started) / 1000 FROM trials WHERE role = 'search'"
    ):
        assert started >= ready[forked] - 0.01  # never started before its warm-up was there
    assert len(re.findall(r"start .*\(forks \w+ after epoch \d\)", proc.stdout)) == SAMPLES
    study = open_study(out)
    assert len(study.trials) == SAMPLES  # the trunk is not an Optuna trial
    forked = {
        n: w for n, w in _sql(out, "SELECT number, forked_at FROM trials WHERE role = 'search'")
    }
    for t in study.trials:
        # steps are epochs of the full schedule
        assert min(t.intermediate_values) == forked[t.number] + 1


def test_results_list_the_pgd_at_baseline_evaluated_on_the_test_split(sweep):
    out, proc = sweep
    assert "PGD-AT" in proc.stdout and "PGD-AT baseline" in proc.stdout
    table = hamsweep("results", str(out))
    assert table.returncode == 0 and re.search(r"PGD-AT .* completed", table.stdout)
    (tested,) = _sql(
        out,
        "SELECT count(DISTINCT c.trial) FROM classes c JOIN trials t USING (trial) "
        "WHERE split = 'test' AND t.role = 'trunk'",
    )[0]
    assert tested == 1
    # the dashboard drawn from state.json, as from a login node
    status = hamsweep("status", str(out))
    ((trunk,),) = _sql(out, "SELECT trial FROM trials WHERE role = 'trunk'")
    assert (
        f"shared warm-up {trunk} (PGD-AT baseline): epoch {EPOCHS}/{EPOCHS}, completed; "
        f"{SAMPLES} trials forked from it" in status.stdout
    )
    assert re.search(rf"PGD-AT\s+.\s+{trunk}", status.stdout), status.stdout


def test_plan_of_trunks_for_shipped_and_hand_made_specs(tmp_path):
    for name in ("cifar10", "cifar100", "svhn"):
        spec = load_spec(f"search_spaces/{name}.yaml")
        p = plan(spec)
        assert len(p.trunks) == 1 and p.fork_epochs == tuple(range(20, 81, 5))
        assert predicted_cost(spec).ratio <= 0.6
    lr_choice = {**SHARED_PARAMS, "train.lr": {"choice": [0.02, 0.05], "default": 0.05}}
    assert (
        len(plan(load_spec(_shared_spec(tmp_path / "a.yaml", search={"params": lr_choice}))).trunks)
        == 2
    )
    lr_range = {**SHARED_PARAMS, "train.lr": {"loguniform": [0.01, 0.1], "default": 0.05}}
    reason = plan(load_spec(_shared_spec(tmp_path / "b.yaml", search={"params": lr_range}))).reason
    assert "train.lr (loguniform) is searched over a range" in reason
    assert (
        plan(load_spec(_shared_spec(tmp_path / "c.yaml", search={"share_warmup": False}))).reason
        == "search.share_warmup is false"
    )
    no_warmup = {k: v for k, v in SHARED_PARAMS.items() if k != "ham.warmup_epochs"}
    spec = load_spec(
        _shared_spec(tmp_path / "d.yaml", ham={"warmup_epochs": 0}, search={"params": no_warmup})
    )
    assert "no trial has a warm-up" in plan(spec).reason


def test_validate_prints_the_trunks_and_the_predicted_saving(tmp_path):
    proc = hamsweep("validate", "search_spaces/cifar100.yaml")
    assert proc.returncode == 0
    assert re.search(
        r"shared warm-up: 1 PGD-AT trunk of 120 epochs .* 13 trunk checkpoints, 1.8 GB; "
        r"predicted training epochs 3320 instead of 6400 \(0.52x\)",
        proc.stdout,
    ), proc.stdout
    lr_range = {**SHARED_PARAMS, "train.lr": {"loguniform": [0.01, 0.1], "default": 0.05}}
    proc = hamsweep("validate", str(_shared_spec(tmp_path / "b.yaml", search={"params": lr_range})))
    assert "shared warm-up: none (train.lr (loguniform) is searched over a range" in proc.stdout


def test_validate_says_which_trunk_forks_which_method_and_who_has_its_own_schedule(tmp_path):
    methods = {
        "ham": {},
        "frl": {"set": {"train.epochs": EPOCHS + 2}},
        "cfa": {
            "set": {
                "train.epochs": EPOCHS + 4,
                "train.lr_milestones": [0.5],
                "train.lr_factors": [0.1],
            }
        },
        "trades": {},
    }
    spec = write_spec(
        tmp_path / "own.yaml",
        frl={"warmup_epochs": 3},
        scheduler="none",
        confirm={"top_k": 1, "seeds": 2},
        search={"num_samples": 2, "params": {}, "methods": methods},
    )
    proc = hamsweep("validate", str(spec), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    # (the spec file lists the methods in sorted order; ham's warm-up is 1)
    assert (
        f"shared warm-up: 2 PGD-AT trunks (each a PGD-AT baseline): {EPOCHS + 2} epochs, forked "
        f"by frl; {EPOCHS} epochs, forked by ham, forks from epochs 1..3" in proc.stdout
    ), proc.stdout
    assert (
        "own schedules (search.methods.M.set): cfa (train.epochs="
        f"{EPOCHS + 4}, train.lr_milestones=[0.5], train.lr_factors=[0.1]): paired with PGD-AT "
        f"on its schedule; frl (train.epochs={EPOCHS + 2}): forks from a PGD-AT trunk of its own, "
        "paired with PGD-AT on its schedule" in proc.stdout
    ), proc.stdout
    # per seed: the 4 configs, TRADES at its defaults and a PGD-AT on each of the 3 schedules
    assert ": 16 trials, predicted" in proc.stdout, proc.stdout


# epochs of under a second: the trunk still trains when a fork (a new worker: seconds to start)
# checkpoints
KILL_EPOCHS = 16


def _snapshotted(out: Path) -> dict[str, list[int]]:
    """Role -> the epoch of each checkpointed, unfinished trial in Tune's experiment snapshot."""
    found: dict[str, list[int]] = {"trunk": [], "search": []}
    for config, last in snapshotted_trials(out):
        if last.get("epoch", 0) < KILL_EPOCHS and checkpoint_whole(out, last):
            found[config.get("role", "search")].append(last["epoch"])
    return found


def test_sigkilled_driver_with_a_trunk_resumes_without_retraining(tmp_path):
    out = tmp_path / "out"
    spec = _shared_spec(
        tmp_path / "kill.yaml",
        data={"train_size": 4096},
        train={"epochs": KILL_EPOCHS},
        scheduler="none",
        confirm={"top_k": 0},
        search={"num_samples": 3},
    )
    driver = subprocess.Popen(
        [HAMSWEEP, "run", str(spec), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:  # the trunk still training, a fork with a checkpoint of its own
        wait_for(
            lambda: (s := _snapshotted(out))["trunk"] and s["trunk"][0] >= 3 and s["search"],
            300,
            "the trunk at epoch 3 and a fork checkpointed in Tune's snapshot, both unfinished",
        )
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    kept = {p.name for p in (out / "trunks").glob("*/epoch-*")}
    proc = hamsweep("resume", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the trunk's checkpoints survived
    assert kept <= {p.name for p in (out / "trunks").glob("*/epoch-*")}
    rows = _sql(out, "SELECT role, status, epochs_run, resumed_from FROM trials")
    assert sorted(r[0] for r in rows) == ["search"] * 3 + ["trunk"] and all(
        r[1] == "completed" for r in rows
    )
    assert _sql(out, "SELECT count(*) = count(DISTINCT (trial, epoch)) FROM epochs")[0][0]
    assert (
        _sql(
            out, "SELECT count(*) FROM epochs e JOIN trials t USING (trial) WHERE t.role = 'trunk'"
        )[0][0]
        == KILL_EPOCHS
    )
    trunk = next(r for r in rows if r[0] == "trunk")
    assert trunk[3] and trunk[3] >= 3, "the trunk continued from its checkpoint, not from epoch 0"
    assert any(r[3] for r in rows if r[0] == "search"), "a fork continued from its own checkpoint"
    study = open_study(out)
    assert [t.state.name for t in study.trials].count("COMPLETE") == 3
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
