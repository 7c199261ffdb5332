"""The fair-AT methods (issue 20) in a real sweep: one sweep on a local Ray compares every method
beside HAM (``search.methods``, issue 21: the same number of trials each, each its own sampler),
its driver is SIGKILLed while a fair-AT trial is half-trained and the sweep is resumed to its end,
confirm stage included (each method's best config against PGD-AT). Read back from the
Parquet files with DuckDB: each method's trials completed, the forking ones forked from the shared
PGD-AT trunk at their warm-up, each trial's ``class_state`` rows hold what its method keeps per
class, and a method's state went through the kill in its checkpoint (the resumed trial's rows are
those of an uninterrupted run of the same config: a trial trained alone with ``hamsweep train``)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pytest
import yaml
from conftest import (
    HAMSWEEP,
    checkpoint_whole,
    hamsweep,
    snapshotted_trials,
    wait_for,
    write_spec,
)

from hamsweep.core import methods as registry

pytestmark = pytest.mark.timeout(900)

EPOCHS, WARMUP = 4, 2
FAIR = ("frl", "cfa", "wat", "dafa", "faal")
TITLES = {m: registry.get(m).title for m in FAIR}  # how the confirm table names each method
FORKING = {"frl", "dafa", "faal"}  # they fine-tune a PGD-AT model: fork from the trunk at WARMUP
# the columns each method fills in class_state (the others stay null)
FILLS = {
    "frl": ("multiplier_nat", "multiplier_bnd", "weight", "eps", "step_size"),
    "cfa": ("eps", "step_size", "beta", "train_robust_acc"),
    "wat": ("weight",),
    "dafa": ("weight", "eps", "step_size"),
    "faal": ("weight", "train_robust_acc"),
}
SAMPLES = 1  # trials per method
# two methods on a schedule of their own (search.methods.M.set): DAFA forks from a PGD-AT trunk of
# its own, WAT trains 3 epochs with one lr drop; each meets PGD-AT on its schedule
OWN = {
    "dafa": {"train.epochs": EPOCHS + 1},
    "wat": {"train.epochs": EPOCHS - 1, "train.lr_milestones": [0.5], "train.lr_factors": [0.1]},
}
# (TRADES: the confirm stage's reference at its defaults, on the spec's schedule)
EPOCHS_OF = {m: OWN.get(m, {}).get("train.epochs", EPOCHS) for m in (*FAIR, "trades")}


def _spec(path: Path) -> Path:
    return write_spec(
        path,
        name="fair",
        train={"method": "frl", "epochs": EPOCHS},
        frl={"warmup_epochs": WARMUP},
        dafa={"warmup_epochs": WARMUP},
        faal={"warmup_epochs": WARMUP},
        cfa={"calibrate_after": 1, "fawa_threshold": 0.0},
        scheduler="none",
        # seeds in rounds: 2, and a third where a difference to PGD-AT is undecided
        confirm={"top_k": 1, "seeds": {"min": 2, "max": 3}},
        search={
            "sampler": "tpe",
            "num_samples": SAMPLES,
            "max_concurrent": 2,
            # the budget rule, not an enqueued default, gives each method its turn
            "start_with_defaults": False,
            "params": {},  # (not the tiny spec's, which touch the warm-up)
            "methods": {m: {"set": OWN[m]} if m in OWN else {} for m in FAIR},
        },
    )


SCRATCH = ("cfa", "wat")  # the fair methods that train from scratch


def _fair_half_trained(out: Path) -> bool:
    """A from-scratch fair-AT trial is in Tune's snapshot past its first epoch, unfinished, its
    checkpoint whole on disk (the kill then lands in the middle of its per-class state)."""
    return any(
        config.get("train.method") in SCRATCH
        and 0 < last.get("epoch", 0) < EPOCHS_OF[config["train.method"]]
        and checkpoint_whole(out, last)
        for config, last in snapshotted_trials(out, unfinished=True)
    )


@pytest.fixture(scope="module")
def fair_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fair")
    out, spec = root / "out", _spec(root / "fair.yaml")
    driver = subprocess.Popen(
        [HAMSWEEP, "run", str(spec), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: _fair_half_trained(out), 400, "a fair-AT trial half-trained")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    proc = hamsweep("resume", str(out), timeout=800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _rows(out: Path, sql: str) -> list[tuple]:
    return duckdb.connect().execute(sql.format(out=out)).fetchall()


def test_every_method_ran_to_the_end_and_the_forking_ones_forked_from_the_trunk(fair_sweep):
    trials = _rows(
        fair_sweep,
        "SELECT trial, role, stage, status, train_method, forked_at, trunk, resumed_from "
        "FROM '{out}/trials/*.parquet'",
    )
    search = [t for t in trials if t[1] == "search"]
    assert sorted(t[4] for t in search) == sorted(FAIR * SAMPLES), "each method its turn"
    assert all(t[3] == "completed" for t in trials), trials
    trunks = {t[0] for t in trials if t[1] == "trunk" and t[2] == "search"}
    assert len(trunks) == 2  # the spec's schedule (frl, faal) and dafa's own
    forked = {}
    for _, _, _, _, method, forked_at, trunk, _ in search:
        if method in FORKING:
            assert forked_at == WARMUP and trunk in trunks, method
            forked[method] = trunk
        else:
            assert forked_at is None, method
    assert forked["frl"] == forked["faal"] != forked["dafa"]
    assert any(t[7] for t in trials), "some trial continued from its checkpoint after the kill"
    # the confirm stage retrained each method's best config on new seeds beside PGD-AT
    confirm = _rows(fair_sweep, "SELECT role, seeds, label FROM '{out}/confirm/*.parquet'")
    assert {r[0] for r in confirm} == {"confirm", "baseline"}
    assert {r[1] for r in confirm} <= {2, 3}
    titles = sorted({r[2] for r in confirm if r[0] == "confirm"})  # one label per config
    titles = [t.split(" #")[0] for t in titles]
    # and TRADES at its defaults (confirm.trades), which no search trial ran here
    assert titles == sorted([*TITLES.values(), "TRADES (defaults)"]), confirm
    # the printed table's title gives the range of seeds, each row its own n
    counts = sorted({r[1] for r in confirm})
    span = f"{counts[0]} seeds" if len(counts) == 1 else "2 to 3 seeds (n: each row's)"
    shown = hamsweep("results", str(fair_sweep)).stdout
    assert f"confirmed on the test split, {span}, robust = " in shown, shown


def test_class_state_holds_what_each_method_keeps_per_class(fair_sweep):
    methods = dict(_rows(fair_sweep, "SELECT trial, train_method FROM '{out}/trials/*.parquet'"))
    rows = _rows(
        fair_sweep,
        "SELECT trial, epoch, phase, class_id, multiplier_nat, multiplier_bnd, weight, eps, "
        "step_size, beta, train_robust_acc, hard_fraction FROM '{out}/class_state/*.parquet'",
    )
    columns = (
        "multiplier_nat",
        "multiplier_bnd",
        "weight",
        "eps",
        "step_size",
        "beta",
        "train_robust_acc",
        "hard_fraction",
    )
    seen = set()
    for trial, epoch, phase, class_id, *values in rows:
        method = methods[trial]
        assert phase == method, (trial, epoch, phase)  # a fork's warm-up rows are its trunk's
        first = WARMUP + 1 if method in FORKING else 1
        assert first <= epoch <= EPOCHS_OF[method] and 0 <= class_id < 4
        filled = {c for c, v in zip(columns, values) if v is not None}
        # a class absent from every batch of an epoch may leave a per-example mean null
        assert filled <= set(FILLS[method]) and {"weight", "eps"} & set(FILLS[method]) <= filled
        seen.add(method)
    assert seen == set(FAIR)
    # one row per class of every own epoch of every trial of a fair method, stored once
    want = sum(
        (EPOCHS_OF[m] - (WARMUP if m in FORKING else 0)) * 4 for m in methods.values() if m in FAIR
    )
    assert len(rows) == len({(r[0], r[1], r[3]) for r in rows}) == want


def test_the_killed_trial_continued_as_if_never_stopped(fair_sweep, tmp_path):
    """The class_state of a fair-AT trial (of the search or the confirm stage) that was resumed from
    its checkpoint equals a trial of the same config trained alone, uninterrupted (``hamsweep
    train``, the same seed, data and torch thread count)."""
    resumed = _rows(
        fair_sweep,
        "SELECT trial, train_method, seed, forked_at FROM '{out}/trials/*.parquet' "
        "WHERE resumed_from IS NOT NULL AND role IN ('search', 'confirm') AND train_method IN "
        "('cfa', 'wat') ORDER BY trial",
    )
    assert resumed, "the kill caught a cfa or wat trial half-trained (the fixture waits for one)"
    trial, method, seed, _ = resumed[0]
    spec = yaml.safe_load((fair_sweep / "spec.yaml").read_text())
    spec["search"]["params"], spec["search"]["methods"] = {}, {}
    spec["train"].update(method=method, seed=seed)  # and its own schedule
    spec["train"].update({k.split(".")[1]: v for k, v in OWN.get(method, {}).items()})
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(spec))
    # one torch thread, as the sweep's trial had (resources.cpu): another thread count sums in
    # another order, and the weights would differ in their last bits, then more
    proc = subprocess.run(
        [HAMSWEEP, "train", str(tmp_path / "one.yaml"), "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    sql = (
        "SELECT epoch, class_id, weight, eps, beta, train_robust_acc FROM "
        "'{path}/class_state/*.parquet' WHERE trial = '{trial}' ORDER BY epoch, class_id"
    )
    alone = (
        duckdb.connect()
        .execute(
            sql.format(path=tmp_path / "one", trial="train")  # a standalone run's trial id
        )
        .fetchall()
    )
    swept = duckdb.connect().execute(sql.format(path=fair_sweep, trial=trial)).fetchall()
    assert swept == alone and len(swept) == EPOCHS_OF[method] * 4


def test_each_verdict_is_the_sequential_tests_recomputed_from_the_counts(fair_sweep):
    """The confirmed table's paired difference of each method's config to PGD-AT (the objective,
    mean_robust, on the test split under PGD-3) rebuilt from the per-class counts: per-seed
    accuracies, differences in seed order, the looks at 2 and 3 seeds with the design's boundaries;
    a config got its third seed only where 2 did not decide."""
    from hamsweep.core.sequential import Design

    design = Design(2, 3)
    per_seed = {}  # (config, seed) -> mean over classes of the test accuracy under PGD-3
    for config, seed, acc in _rows(
        fair_sweep,
        "SELECT t.config, t.seed, avg(c.correct / c.n) FROM '{out}/trials/*.parquet' t "
        "JOIN '{out}/classes/*.parquet' c ON c.trial = t.trial WHERE t.stage = 'confirm' "
        "AND c.split = 'test' AND c.attack = 'pgd3' GROUP BY ALL",
    ):
        per_seed[(config, seed)] = acc
    rows = _rows(
        fair_sweep,
        "SELECT config, baseline, diff_low, diff_high, verdict, paired_seeds FROM "
        "'{out}/confirm/*.parquet' WHERE role = 'confirm' AND attack = 'pgd3' AND metric = 'mean'",
    )
    assert len(rows) == len(FAIR) + 1  # and TRADES at its defaults
    for config, baseline, low, high, verdict, paired in rows:
        seeds = sorted(s for c, s in per_seed if c == config and (baseline, s) in per_seed)
        d = np.array([per_seed[(config, s)] - per_seed[(baseline, s)] for s in seeds])
        assert len(seeds) == paired
        for n, c in zip(design.looks, design.boundaries()):
            if n > len(d):
                break
            mean, half = d[:n].mean(), c * d[:n].std(ddof=1) / np.sqrt(n)
            if abs(mean) > half or n == len(d):
                break
        assert (low, high) == pytest.approx((mean - half, mean + half), abs=1e-12)
        assert f"at {n} seeds" in verdict and "sequential CI" in verdict
        decided = bool(abs(mean) > half)
        assert ("excludes 0" in verdict) is decided
        assert paired == (2 if decided and n == 2 else 3), (config, verdict)


def test_the_winners_lead_over_the_second_is_recomputed_from_the_counts(fair_sweep):
    """Of the five methods' confirmed configs, the best and the second by their mean over seeds of
    the objective (test split, PGD-3); the lead is tested as a difference to PGD-AT is."""
    from hamsweep.core.sequential import Design

    per_seed = {}
    for config, seed, acc in _rows(
        fair_sweep,
        "SELECT t.config, t.seed, avg(c.correct / c.n) FROM '{out}/trials/*.parquet' t "
        "JOIN '{out}/classes/*.parquet' c ON c.trial = t.trial WHERE t.role = 'confirm' "
        "AND c.split = 'test' AND c.attack = 'pgd3' GROUP BY ALL",
    ):
        per_seed.setdefault(config, {})[seed] = acc
    ranked = sorted(per_seed, key=lambda c: -np.mean(list(per_seed[c].values())))
    best, second = ranked[:2]
    rows = _rows(
        fair_sweep,
        "SELECT config, label, lead_over, lead_mean, lead_low, lead_high, lead_verdict FROM "
        "'{out}/confirm/*.parquet' WHERE attack = 'pgd3' AND metric = 'mean' AND role = 'confirm'",
    )
    labels = {r[0]: r[1] for r in rows}
    (lead,) = [r for r in rows if r[2] is not None]
    assert lead[0] == best and lead[2] == labels[second]
    seeds = sorted(set(per_seed[best]) & set(per_seed[second]))
    d = np.array([per_seed[best][s] - per_seed[second][s] for s in seeds])
    look = Design(2, 3).read(d) if len(d) >= 2 else None
    assert look is not None and lead[3] == pytest.approx(look.mean, abs=1e-12)
    assert (lead[4], lead[5]) == pytest.approx((look.low, look.high), abs=1e-12)
    assert lead[6] == look.verdict()


def test_each_method_trained_its_own_schedule_and_met_pgd_at_on_it(fair_sweep):
    """A method's ``set`` is what its trials trained (its epochs, its lr drops): its search trial
    ran them all and counted as complete (it was confirmed), its trunk ran them, and each
    confirmed config's PGD-AT baseline ran its schedule on the same seeds."""
    trials = _rows(
        fair_sweep,
        "SELECT DISTINCT trial, role, stage, train_method, epochs_run, config, baseline, seed "
        "FROM '{out}/trials/*.parquet' WHERE status = 'completed'",
    )
    by_config = {}
    for _, role, _, method, epochs_run, config, _, seed in trials:
        if role == "search":
            assert epochs_run == EPOCHS_OF[method], (method, epochs_run)
        by_config.setdefault(config, {})[seed] = (role, epochs_run)
    search_trunks = sorted(t[4] for t in trials if t[1] == "trunk" and t[2] == "search")
    assert search_trunks == [EPOCHS, EPOCHS_OF["dafa"]]
    # the lr a WAT trial trained its last epoch with: one drop, x0.1 at half its 3 epochs
    (lr,) = _rows(
        fair_sweep,
        "SELECT DISTINCT e.lr FROM '{out}/epochs/*.parquet' e JOIN '{out}/trials/*.parquet' t "
        f"USING (trial) WHERE t.train_method = 'wat' AND e.epoch = {EPOCHS_OF['wat']}",
    )
    spec = yaml.safe_load((fair_sweep / "spec.yaml").read_text())
    assert lr[0] == pytest.approx(spec["train"]["lr"] * 0.1)
    confirmed = {
        method: (config, baseline)
        for _, role, stage, method, _, config, baseline, _ in trials
        if stage == "confirm" and role == "confirm"
    }
    assert set(confirmed) == {*FAIR, "trades"}
    for method, (config, baseline) in confirmed.items():
        mine, base = by_config[config], by_config[baseline]
        assert set(base) >= set(mine), method  # paired on every seed it ran
        assert {e for r, e in base.values()} == {EPOCHS_OF[method]}, method
    baselines = {b for _, b in confirmed.values()}
    # frl, cfa and faal on the spec's schedule; dafa's and wat's own
    assert len(baselines) == 3
    assert confirmed["frl"][1] == confirmed["cfa"][1] == confirmed["faal"][1]
    assert confirmed["trades"] == ("trades:defaults", confirmed["frl"][1])


def test_nothing_was_trained_twice_across_the_kill(fair_sweep):
    """Every trial's epoch rows, read from the Parquet parts as written: each epoch once, from its
    first own epoch (after its fork) to its last, none missing."""
    rows = _rows(
        fair_sweep,
        "SELECT e.trial, count(*), count(DISTINCT e.epoch), min(e.epoch), max(e.epoch), "
        "any_value(t.forked_at), any_value(t.epochs_run) "
        "FROM read_parquet('{out}/epochs/*.parquet', union_by_name = true) e "
        "JOIN (SELECT DISTINCT trial, forked_at, epochs_run FROM '{out}/trials/*.parquet' "
        "WHERE status = 'completed') t USING (trial) GROUP BY e.trial",
    )
    assert rows
    for trial, n, distinct, first, last, forked_at, epochs_run in rows:
        assert n == distinct == last - first + 1, trial  # once each, none missing
        assert first == (forked_at or 0) + 1 and last == epochs_run, trial
