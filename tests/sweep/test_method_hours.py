"""A comparison under the same device-hours for each method (``search.method_hours``, issue 21) in
a real sweep on a local Ray: TRADES (from scratch, a full schedule a trial) against FAAL (a
one-epoch fine-tune of the shared PGD-AT trunk). The cheaper method gets more trials, a method's
trials stop once its hours are spent, the search ends when no method has hours left and the
confirm stage follows. Each method's spending is recomputed from the Parquet ``trials`` rows
(DuckDB): its trials' own device-seconds and, once, the trunk warm-up it forks from."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import hamsweep, write_spec

from hamsweep.results.read import read_table
from hamsweep.results.schema import TRIALS

pytestmark = pytest.mark.timeout(600)

HOURS = 0.0015  # each method's search: 5.4 device-seconds (CPU cores x wall seconds here)
CAP = 8  # num_samples: the most trials a method may get
EPOCHS, WARMUP = 8, 7  # FAAL fine-tunes the trunk's last epoch
CONCURRENT = 2


@pytest.fixture(scope="module")
def hours_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hours")
    spec = write_spec(
        root / "hours.yaml",
        name="hours",
        train={"method": "trades", "epochs": EPOCHS},
        faal={"warmup_epochs": WARMUP},
        scheduler="none",
        confirm={"top_k": 1, "seeds": 1},
        search={
            "num_samples": CAP,
            "max_concurrent": CONCURRENT,
            "method_hours": HOURS,
            "params": {},
            "methods": {
                "trades": {"params": {"train.trades_beta": {"choice": [3.0, 6.0], "default": 6.0}}},
                "faal": {"params": {"faal.eta": {"loguniform": [0.1, 1.0], "default": 0.5}}},
            },
        },
    )
    out = root / "out"
    proc = hamsweep("run", str(spec), "--out", str(out), timeout=550)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


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
    budget = HOURS * 3600
    for method, (spent, epoch, count) in _spending(_trials(hours_sweep)).items():
        # the rule: stop at the epoch after which half an epoch more would pass the hours, and
        # start no trial while half an epoch more would (timing between the driver's clock and
        # the rows adds a little: an epoch's worth either way)
        assert spent <= budget + CONCURRENT * epoch + epoch, (method, spent, epoch)
        assert count == CAP or spent >= budget - 1.5 * epoch, (method, spent, epoch, count)


def test_the_cheaper_method_got_more_trials_and_the_budget_stopped_the_dearer(hours_sweep):
    trials = _trials(hours_sweep)
    spending = _spending(trials)
    assert spending["faal"][2] > spending["trades"][2] >= 1, spending
    search = [t for t in trials if t["role"] == "search" and t["stage"] == "search"]
    assert all(t["status"] in ("completed", "stopped") for t in search), search
    stopped = [t for t in search if t["status"] == "stopped"]
    for t in stopped:  # no ASHA here: only the budget stops a trial
        assert t["stop_reason"].startswith(
            f"{t['train_method']}'s search budget of {HOURS:g} device-hours spent, at epoch "
        ), t["stop_reason"]
        assert t["epochs_run"] < EPOCHS
    # the confirm stage followed: each method's best config and PGD-AT on the new seed
    confirm = [t for t in trials if t["stage"] == "confirm"]
    assert sorted(t["train_method"] for t in confirm if t["role"] == "confirm") == [
        "faal",
        "trades",
    ]
    assert all(t["status"] == "completed" for t in confirm), confirm


def test_validate_says_the_budget_rule(hours_sweep):
    proc = hamsweep("validate", str(hours_sweep / "spec.yaml"))
    assert proc.returncode == 0, proc.stderr
    # (the spec as written here lists the methods in alphabetical order)
    assert f"{HOURS:g} CPU-hours of search for each of faal, trades, up to {CAP} trials each" in (
        proc.stdout
    ), proc.stdout
