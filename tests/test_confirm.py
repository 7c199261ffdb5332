"""The confirm stage end to end: one sweep whose driver is SIGKILLed during the confirm stage and
resumed (``conftest.confirmed_sweep``), read back straight from its Parquet files (DuckDB, pyarrow)
and recomputed here with numpy and scipy; the plan, the searcher's hand-out and the spec section on
their own."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import (CONFIRM_CLASSES, CONFIRM_CVAR, CONFIRM_EPOCHS, CONFIRM_PARAMS, CONFIRM_SAMPLES, CONFIRM_SEEDS,
                      CONFIRM_TOP_K, confirm_spec, hamsweep)
from scipy import stats as scipy_stats

from hamsweep.confirm import FIRST_NUMBER, Chosen, confirm_cost, new_seeds, plan_confirm
from hamsweep.errors import SpecError
from hamsweep.search import BEST, OBJECTIVE, make_searcher
from hamsweep.spec import SweepSpec, load_spec, validate
from hamsweep.spec.trial import warmup_key
from hamsweep.trunk import epoch_dir, plan, trunk_config

pytestmark = pytest.mark.timeout(600)

PARAMS, EPOCHS, SAMPLES, TOP_K, SEEDS, CLASSES, CVAR = (CONFIRM_PARAMS, CONFIRM_EPOCHS, CONFIRM_SAMPLES, CONFIRM_TOP_K,
                                                      CONFIRM_SEEDS, CONFIRM_CLASSES, CONFIRM_CVAR)


@pytest.fixture(scope="module")
def sweep(confirmed_sweep: tuple[Path, subprocess.CompletedProcess]) -> tuple[Path, subprocess.CompletedProcess]:
    return confirmed_sweep


def _sql(out: Path, sql: str) -> list[tuple]:
    """Straight from the Parquet files (one part per table after compaction), not the project's readers."""
    con = duckdb.connect()
    for table in ("trials", "epochs", "classes", "confirm", "confirm_classes"):
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{out / table}/part-*.parquet')")
    return con.execute(sql).fetchall()


def test_the_resumed_sweep_has_exactly_the_confirm_trials_expected(sweep):
    out, _ = sweep
    rows = _sql(out, "SELECT stage, role, seed, status, count(*) FROM trials GROUP BY ALL ORDER BY ALL")
    assert rows == [("confirm", "search", 1, "completed", TOP_K), ("confirm", "search", 2, "completed", TOP_K),
                    ("confirm", "trunk", 1, "completed", 1), ("confirm", "trunk", 2, "completed", 1),
                    ("search", "search", 0, "completed", SAMPLES), ("search", "trunk", 0, "completed", 1)]
    # every epoch once: a trunk's 1..E, a fork's after its warm-up; each fork forked from its own seed's trunk
    epochs = _sql(out, """SELECT t.trial, t.role, t.forked_at, t.ham_warmup_epochs, count(e.epoch), count(DISTINCT e.epoch), min(e.epoch),
                          max(e.epoch), k.seed = t.seed FROM trials t JOIN epochs e USING (trial) LEFT JOIN trials k ON k.trial = t.trunk
                          WHERE t.stage = 'confirm' GROUP BY ALL""")
    assert len(epochs) == SEEDS * (TOP_K + 1)
    for _, role, forked, warmup, n, distinct, lo, hi, same_seed in epochs:
        first = 1 if role == "trunk" else warmup + 1
        assert (n, distinct, lo, hi) == (EPOCHS - first + 1,) * 2 + (first, EPOCHS)
        assert role == "trunk" or (forked == warmup and same_seed)
    # one test evaluation per confirm trial, of its best (validation) checkpoint; none for the search
    tests = _sql(out, """SELECT t.stage, count(DISTINCT c.trial), count(*), bool_and(c.epoch = t.best_epoch) FROM classes c
                         JOIN trials t USING (trial) WHERE c.split = 'test' GROUP BY ALL""")
    assert tests == [("confirm", SEEDS * (TOP_K + 1), SEEDS * (TOP_K + 1) * 2 * CLASSES, True)]
    assert _sql(out, "SELECT count(*) = count(DISTINCT (trial, epoch, split, attack, class_id)) FROM classes") == [(True,)]
    assert _sql(out, "SELECT count(*), count(DISTINCT (config, attack, metric)) FROM confirm") == [((TOP_K + 1) * 2 * 3,) * 2]
    assert _sql(out, "SELECT count(*), count(DISTINCT (config, attack, class_id)) FROM confirm_classes") == [((TOP_K + 1) * 2 * CLASSES,) * 2]


def test_the_kill_landed_in_the_confirm_stage_and_trials_continued(sweep):
    out, proc = sweep
    resumed = _sql(out, "SELECT count(*) FROM trials WHERE stage = 'confirm' AND resumed_from > 0")[0][0]
    assert resumed >= 1, f"no confirm trial continued from its checkpoint; resume said: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    study = json.loads((out / "confirm.json").read_text())
    assert len(study["trials"]) == SEEDS * (TOP_K + 1) and study["seeds"] == [1, 2]


def test_the_chosen_configs_are_the_best_completed_by_the_validation_objective(sweep):
    out, _ = sweep
    best = _sql(out, """SELECT trial, best_objective FROM trials WHERE stage = 'search' AND role = 'search' AND status = 'completed'
                        ORDER BY best_objective DESC, number LIMIT 2""")
    chosen = _sql(out, "SELECT DISTINCT config, search_value FROM confirm WHERE role = 'search' ORDER BY search_value DESC, config")
    assert sorted(chosen) == sorted(best)  # the search value beside the confirmed value: what chose it
    baseline = _sql(out, "SELECT DISTINCT search_value FROM confirm WHERE role = 'trunk'")
    assert baseline == _sql(out, "SELECT best_objective FROM trials WHERE stage = 'search' AND role = 'trunk'")


def _per_seed(out: Path) -> dict[tuple[str, str], dict[int, np.ndarray]]:
    """(config, attack) -> seed -> per-class test accuracy, from the classes and trials files via pyarrow."""
    trials = pq.read_table(out / "trials").to_pylist()
    classes = pq.read_table(out / "classes").to_pylist()
    of = {t["trial"]: t for t in trials if t["stage"] == "confirm"}
    found: dict[tuple[str, str], dict[int, dict[int, float]]] = {}
    for r in classes:
        if r["split"] == "test" and r["trial"] in of:
            t = of[r["trial"]]
            found.setdefault((t["config"], r["attack"]), {}).setdefault(t["seed"], {})[r["class_id"]] = r["correct"] / r["n"]
    return {k: {s: np.array([c[i] for i in sorted(c)]) for s, c in v.items()} for k, v in found.items()}


def _summary(acc: np.ndarray, metric: str) -> float:
    k = math.ceil(CVAR * len(acc))
    return {"worst": acc.min(), "mean": acc.mean(), "cvar": np.sort(acc)[:k].mean()}[metric]


def _t(values: list[float]) -> tuple[float, float, float, float]:
    x = np.array(values)
    half = scipy_stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean(), x.std(ddof=1), x.mean() - half, x.mean() + half


def test_the_confirm_table_agrees_with_a_recomputation_from_the_class_rows(sweep):
    out, _ = sweep
    accs = _per_seed(out)
    rows = _sql(out, """SELECT config, baseline, attack, metric, seeds, mean, std, ci_low, ci_high, diff_mean, diff_low, diff_high,
                        verdict, paired_seeds FROM confirm""")
    for config, baseline, attack, metric, seeds, mean, std, low, high, d, d_low, d_high, verdict, paired in rows:
        values = [_summary(a, metric) for _, a in sorted(accs[(config, attack)].items())]
        assert seeds == SEEDS and (mean, std, low, high) == pytest.approx(_t(values), nan_ok=True, abs=1e-12)
        if baseline is None:
            assert d is None and verdict is None
            continue
        base = [_summary(a, metric) for _, a in sorted(accs[(baseline, attack)].items())]
        diff = _t([v - b for v, b in zip(values, base)])
        assert paired == SEEDS and (d, d_low, d_high) == pytest.approx((diff[0], diff[2], diff[3]), abs=1e-12)
        words = "higher" if diff[2] > 0 else "lower" if diff[3] < 0 else "no clear difference (95% CI includes 0)"
        assert verdict.startswith(words), verdict


def test_per_class_means_agree_and_their_intervals_are_ordered(sweep):
    out, _ = sweep
    accs = _per_seed(out)
    for config, attack, class_id, mean, low, high, base in _sql(
            out, "SELECT config, attack, class_id, mean, ci_low, ci_high, baseline_mean FROM confirm_classes"):
        assert mean == pytest.approx(np.mean([a[class_id] for a in accs[(config, attack)].values()]), abs=1e-12)
        assert 0 <= low <= high <= 1
        assert (base is None) == config.startswith("pgd_at:")


def test_the_run_ends_with_the_confirmed_table_and_results_prints_it_first(sweep):
    out, proc = sweep
    assert proc.stdout.rfind("confirmed on the test split") > proc.stdout.rfind("trials by validation")
    shown = hamsweep("results", str(out))
    assert shown.returncode == 0 and shown.stdout.find("confirmed on the test split") < shown.stdout.find("trials by validation")
    assert "includes 0" in shown.stdout or "excl. 0" in shown.stdout  # the difference in words
    rows = json.loads(hamsweep("results", str(out), "--format", "json").stdout)
    assert [r["config"] for r in rows][0] == "PGD-AT" and len(rows) == TOP_K + 1
    assert all(r["verdict"] for r in rows[1:]) and all(0 <= r["worst_mean"] <= 1 for r in rows)
    csv = hamsweep("results", str(out), "--format", "csv").stdout.splitlines()
    assert csv[0].startswith("config,") and len(csv) == TOP_K + 2
    latex = hamsweep("results", str(out), "--format", "latex").stdout
    assert latex.count("\\toprule") == 1 and "\\bottomrule" in latex and "\\textbf{" in latex and "\\#" in latex
    state = json.loads((out / "state.json").read_text())
    assert state["confirm_trials"] == SEEDS * (TOP_K + 1)
    assert sum(v["stage"] == "confirm" and v["status"] == "completed" for v in state["trials"].values()) == SEEDS * (TOP_K + 1)


# ---- the parts on their own ----
def _spec(**sections) -> SweepSpec:
    base = {"train": {"epochs": 6}, "ham": {"warmup_epochs": 3}, "search": {"params": PARAMS, "num_samples": 2, "max_concurrent": 2}}
    return validate(SweepSpec, {**base, **sections})


def test_final_eval_is_confirm_with_seeds_0_and_both_is_an_error():
    assert _spec(final_eval={"top_k": 2, "autoattack": True}).confirm.model_dump() == {
        "top_k": 2, "seeds": 0, "autoattack": True, "confidence": 0.95}
    with pytest.raises(SpecError, match="^final_eval: is the older name of confirm"):
        _spec(final_eval={"top_k": 1}, confirm={"top_k": 1})


def test_new_seeds_follow_every_seed_the_search_used():
    assert new_seeds(_spec(confirm={"seeds": 3})) == (1, 2, 3)
    searched = {**PARAMS, "train.seed": {"choice": [0, 5], "default": 0}}
    assert new_seeds(_spec(search={"params": searched}, confirm={"seeds": 2})) == (6, 7)


def test_the_plan_hands_each_seeds_trunk_before_its_configs():
    spec = _spec(confirm={"top_k": 2, "seeds": 2})
    chosen = [Chosen("a", 4, {"ham.warmup_epochs": 2, "ham.temperature": None, "ham.discard_threshold": 0.1}, 0.5),
              Chosen("b", 1, {"ham.warmup_epochs": 4, "ham.temperature": 1.0, "ham.discard_threshold": 0.2}, 0.4)]
    p = plan_confirm(spec, chosen)
    assert [(t.get("role", "search"), t.get("config"), t["train.seed"]) for t in p.trials] == [
        ("trunk", next(iter(p.baselines)), 1), ("search", "a", 1), ("search", "b", 1),
        ("trunk", next(iter(p.baselines)), 2), ("search", "a", 2), ("search", "b", 2)]
    assert p.trials[0]["keep"] == [2, 4]  # the trunk keeps the epochs its configs fork at, no others
    numbers = [t["optuna_trial"] for t in p.trials]
    assert len(set(numbers)) == len(numbers) and all(abs(n) >= FIRST_NUMBER for n in numbers)
    assert (p.label("a"), p.label(next(iter(p.baselines)))) == ("#4", "PGD-AT")
    assert plan_confirm(spec, []).trials == ()


def test_the_searcher_hands_out_the_confirm_stage_once_the_search_has_ended(tmp_path):
    spec = _spec(confirm={"top_k": 1, "seeds": 2})
    s = make_searcher(spec, tmp_path)
    planned: list = []
    s.confirm_sink = planned.append
    assert s.suggest("trunk")["role"] == "trunk"
    for w in (2, 3, 4):  # the search's trunk reached every warm-up epoch
        epoch_dir(tmp_path, plan(spec).trunks[0].key, w).mkdir(parents=True)
    first, second = s.suggest("t0"), s.suggest("t1")
    assert first["fork"] == second["fork"] == plan(spec).trunks[0].key
    assert s.suggest("t2") is None and not planned  # num_samples proposed, none ended: nothing more yet
    s.on_trial_complete("t0", {OBJECTIVE: 0.2, BEST: 0.2, "epoch": 6})
    assert s.suggest("t3") is None and not planned  # one search trial still runs
    s.on_trial_complete("t1", {OBJECTIVE: 0.1, BEST: 0.3, "epoch": 6})
    trunk1 = s.suggest("c0")
    assert planned and [c.trial for c in planned[0].chosen] == ["t1"]  # the highest best objective
    assert trunk1["role"] == "trunk" and trunk1["stage"] == "confirm" and trunk1["train.seed"] == 1
    trunk2 = s.suggest("c1")  # seed 1's config waits for its trunk's warm-up epoch: seed 2's trunk goes first
    assert trunk2["role"] == "trunk" and trunk2["train.seed"] == 2 and s.suggest("c2") is None
    assert planned[0].trials[1]["baseline"] == f"pgd_at:{plan(spec).trunks[0].key}"  # PGD-AT of the search's warm-up config
    seed1 = warmup_key(trunk_config(spec, {"train.seed": 1}))
    assert seed1 != plan(spec).trunks[0].key  # a new seed is a new warm-up
    epoch_dir(tmp_path, seed1, second["ham.warmup_epochs"]).mkdir(parents=True, exist_ok=True)
    config = s.suggest("c2")
    assert config["config"] == "t1" and config["fork"] == seed1 and config["train.seed"] == 1
    s.on_trial_complete("c1", {"epoch": 2}, error=True)  # seed 2's trunk failed: its config trains its own warm-up
    config = s.suggest("c3")
    assert config["train.seed"] == 2 and "fork" not in config
    assert s.suggest("c4") == "FINISHED"


def test_validate_prints_the_confirm_stage_and_its_cost(tmp_path):
    spec = confirm_spec(tmp_path / "c.yaml")
    proc = hamsweep("validate", str(spec))
    assert proc.returncode == 0, proc.stderr
    epochs, trials = confirm_cost(load_spec(spec))
    assert trials == SEEDS * (TOP_K + 1)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("confirm:"))
    assert f"{trials} trials, predicted {epochs:.0f} training epochs" in line and "train.seed 1, 2" in line
