"""A comparison under the same device-hours for each method (``search.method_hours``, issue 21) in
a real sweep on a local Ray: TRADES (from scratch, a full schedule a trial) against FAAL (a
one-epoch fine-tune of the shared PGD-AT trunk), each with a budget set from this machine's pace,
SIGKILLed during the search and again during the confirm stage and resumed. The cheaper method gets
more trials, a method's trials stop once its hours are spent, the search ends when no method has
hours left and the confirm stage follows; nothing is trained twice. Each method's spending is
recomputed from the Parquet ``trials`` rows: its trials' own device-seconds and, once, the trunk
warm-up it forks from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from conftest import (
    HAMSWEEP,
    checkpoint_whole,
    hamsweep,
    snapshotted_trials,
    wait_for,
    write_spec,
)

from hamsweep.results.read import read_table
from hamsweep.results.schema import TRIALS
from hamsweep.spec import load_spec
from hamsweep.sweep.hours import measure, predict

pytestmark = pytest.mark.timeout(600)

# each method's budget: 6 TRADES trials as `validate --time` predicts them here, fewer as they run
# (it times neither a trial's start-up nor the contention of two trials on 2 cores: 1 to 5 have
# been seen); FAAL's trials are cheap enough that it gets more, up to CAP
TRADES_TRIALS = 6
CAP = 12  # num_samples: the most trials a method may get
EPOCHS, WARMUP = 8, 7  # FAAL fine-tunes the trunk's last epoch
CONCURRENT = 2


def _write(path: Path, hours: float | None) -> Path:
    return write_spec(
        path,
        name="hours",
        # twice the tiny data: trials long enough for a kill to land in one
        data={"train_size": 2048},
        train={"method": "trades", "epochs": EPOCHS},
        faal={"warmup_epochs": WARMUP},
        scheduler="none",
        # the PGD-AT baseline trains in the confirm stage (not early, in the search's slots)
        confirm={"top_k": 1, "seeds": 1, "early": False},
        search={
            "num_samples": CAP,
            "max_concurrent": CONCURRENT,
            "method_hours": hours,
            "params": {},
            "methods": {
                "trades": {"params": {"train.trades_beta": {"choice": [3.0, 6.0], "default": 6.0}}},
                "faal": {"params": {"faal.eta": {"loguniform": [0.1, 1.0], "default": 0.5}}},
            },
        },
    )


def _half_trained(out: Path, stage: str) -> bool:
    """A trial of ``stage`` (the search's trunk aside) is in Tune's snapshot unfinished, past its
    first epoch, its checkpoint whole on disk: a kill now lands in the middle of it."""
    return any(
        config.get("stage", "search") == stage
        and (stage == "confirm" or config.get("role") != "trunk")
        and 0 < last.get("epoch", 0) < EPOCHS
        and checkpoint_whole(out, last)
        for config, last in snapshotted_trials(out, unfinished=True)
    )


def _killed_when(cmd: list[str], ready: Callable[[], bool], what: str) -> None:
    """Run ``cmd`` (a sweep's driver) and SIGKILL it, and all it started, once ``ready``."""
    driver = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for(ready, 400, what)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


@pytest.fixture(scope="module")
def hours_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The sweep, SIGKILLed while a search trial is half-trained and again while a confirm trial
    is, resumed to its end; and its budget per method in CPU-hours, set from this machine's pace
    (timed as ``validate --time`` does), so that the test means the same on a slower machine."""
    root = tmp_path_factory.mktemp("hours")
    plain = load_spec(_write(root / "plain.yaml", None))
    trades_trial = predict(plain, measure(plain)).search["trades"] / CAP
    hours = float(f"{TRADES_TRIALS * trades_trial:.3g}")
    spec, out = _write(root / "hours.yaml", hours), root / "out"
    run = [HAMSWEEP, "run", str(spec), "--out", str(out)]
    _killed_when(run, lambda: _half_trained(out, "search"), "a search trial half-trained")
    resume = [HAMSWEEP, "resume", str(out)]
    _killed_when(resume, lambda: _half_trained(out, "confirm"), "a confirm trial half-trained")
    proc = hamsweep("resume", str(out), timeout=550)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, hours


def _trials(out: Path) -> list[dict]:
    """The trials table, one row per trial: its newest (the parts hold a row per flush)."""
    return read_table(out, TRIALS).to_pylist()


def _spending(trials: list[dict]) -> dict[str, tuple[float, float, int]]:
    """method -> (device-seconds of its search, its mean device-seconds an epoch, its trials),
    recomputed from the rows as the budget rule counts them: own cost, and each trunk's warm-up
    as far as the method's latest fork from it, once."""
    by_id = {t["trial"]: t for t in trials}
    out: dict[str, tuple[float, float, int]] = {}
    for method in ("trades", "faal"):
        mine = [t for t in trials if t["stage"] == "search" and t["role"] == "search"]
        mine = [t for t in mine if t["train_method"] == method]
        own = sum(t["device_seconds"] for t in mine)
        epochs = sum(t["epochs_run"] - (t["forked_at"] or 0) for t in mine)
        warmups: dict[str, float] = {}
        for t in mine:
            if t["trunk"]:
                k = by_id[t["trunk"]]
                share = k["device_seconds"] / k["epochs_run"] * t["forked_at"]
                warmups[t["trunk"]] = max(warmups.get(t["trunk"], 0.0), share)
        out[method] = (own + sum(warmups.values()), own / epochs, len(mine))
    return out


def test_each_method_spent_the_same_hours_to_within_an_epoch(hours_sweep):
    out, hours = hours_sweep
    budget = hours * 3600
    for method, (spent, epoch, count) in _spending(_trials(out)).items():
        # the rule: stop at the epoch after which half an epoch more would pass the hours, and
        # start no trial while half an epoch more would (timing between the driver's clock and
        # the rows adds a little: an epoch's worth either way)
        assert spent <= budget + CONCURRENT * epoch + epoch, (method, spent, epoch)
        assert count == CAP or spent >= budget - 1.5 * epoch, (method, spent, epoch, count)


def test_the_cheaper_method_got_more_trials_and_the_budget_stopped_the_dearer(hours_sweep):
    out, hours = hours_sweep
    trials = _trials(out)
    spending = _spending(trials)
    assert spending["faal"][2] > spending["trades"][2] >= 1, spending
    search = [t for t in trials if t["role"] == "search" and t["stage"] == "search"]
    assert all(t["status"] in ("completed", "stopped") for t in search), search
    stopped = [t for t in search if t["status"] == "stopped"]
    for t in stopped:  # no ASHA here: only the budget stops a trial
        assert t["stop_reason"].startswith(
            f"{t['train_method']}'s search budget of {hours:g} device-hours spent, at epoch "
        ), t["stop_reason"]
        assert t["epochs_run"] < EPOCHS
    # the confirm stage followed: the best config of each method with a complete trial (one
    # the budget stopped before its last epoch is not a candidate) and PGD-AT on the new seed
    complete = sorted({t["train_method"] for t in search if t["status"] == "completed"})
    confirm = [t for t in trials if t["stage"] == "confirm"]
    assert "faal" in complete
    # and TRADES at its defaults where its best config is another (confirm.trades)
    chosen = json.loads((out / "confirm.json").read_text())["chosen"]
    reference = [c["params"]["train.method"] for c in chosen if c["reference"]]
    assert reference in ([], ["trades"])
    assert [c["params"] for c in chosen if c["reference"]] in (
        [],
        [{"train.method": "trades", "train.trades_beta": 6.0}],
    )
    assert sorted(t["train_method"] for t in confirm if t["role"] == "confirm") == sorted(
        complete + reference
    )
    assert all(t["status"] == "completed" for t in confirm), confirm


def test_validate_says_the_budget_rule(hours_sweep):
    out, hours = hours_sweep
    proc = hamsweep("validate", str(out / "spec.yaml"))
    assert proc.returncode == 0, proc.stderr
    # (the spec as written here lists the methods in alphabetical order)
    assert f"{hours:g} CPU-hours of search for each of faal, trades, up to {CAP} trials each" in (
        proc.stdout
    ), proc.stdout


def test_the_confirmed_table_says_what_each_methods_search_spent(hours_sweep):
    import json

    out, _ = hours_sweep
    spending = _spending(_trials(out))
    rows = json.loads(hamsweep("results", str(out), "--format", "json").stdout)
    assert rows[0]["config"] == "PGD-AT" and rows[0]["search_trials"] is None
    for r in rows[1:]:
        spent, _, count = spending[r["train.method"]]
        assert r["search_trials"] == count, r
        assert r["search_device_hours"] == pytest.approx(spent / 3600, rel=1e-9), r
    shown = hamsweep("results", str(out)).stdout
    assert "search (inherited warm-up counted once): " in shown
    latex = hamsweep("results", str(out), "--format", "latex").stdout
    assert "& trials & search CPU-h \\\\" in latex


def test_nothing_was_trained_twice_across_the_kills(hours_sweep):
    """Every ended trial's epoch rows, read from the Parquet parts as written: each epoch once,
    from its first own epoch (after its fork) to its last, none missing; and some trial of the
    search and of the confirm stage continued from its checkpoint."""
    out, _ = hours_sweep
    rows = duckdb.sql(
        f"""SELECT e.trial, count(*), count(DISTINCT e.epoch), min(e.epoch), max(e.epoch),
                   any_value(t.forked_at), any_value(t.epochs_run)
            FROM read_parquet('{out}/epochs/*.parquet', union_by_name = true) e
            JOIN (SELECT DISTINCT trial, forked_at, epochs_run FROM '{out}/trials/*.parquet'
                  WHERE status IN ('completed', 'stopped')) t USING (trial)
            GROUP BY e.trial"""
    ).fetchall()
    assert rows
    for trial, n, distinct, first, last, forked_at, epochs_run in rows:
        assert n == distinct == last - first + 1, trial  # once each, none missing
        assert first == (forked_at or 0) + 1 and last == epochs_run, trial
    resumed = {(t["stage"]) for t in _trials(out) if t["resumed_from"]}
    assert resumed == {"search", "confirm"}, resumed
