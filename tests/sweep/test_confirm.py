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
from conftest import (
    CONFIRM_CLASSES,
    CONFIRM_CVAR,
    CONFIRM_EPOCHS,
    CONFIRM_PARAMS,
    CONFIRM_SAMPLES,
    CONFIRM_SEEDS,
    CONFIRM_TOP_K,
    confirm_spec,
    hamsweep,
)
from scipy import stats as scipy_stats

from hamsweep.errors import SpecError
from hamsweep.spec import SweepSpec, load_spec, validate
from hamsweep.spec.trial import warmup_key
from hamsweep.sweep.confirm import FIRST_NUMBER, Chosen, confirm_cost, new_seeds, plan_confirm
from hamsweep.sweep.search import BEST, OBJECTIVE, make_searcher
from hamsweep.sweep.trunk import epoch_dir, plan, trunk_config

pytestmark = pytest.mark.timeout(600)

PARAMS, EPOCHS, SAMPLES, TOP_K, SEEDS, CLASSES, CVAR = (
    CONFIRM_PARAMS,
    CONFIRM_EPOCHS,
    CONFIRM_SAMPLES,
    CONFIRM_TOP_K,
    CONFIRM_SEEDS,
    CONFIRM_CLASSES,
    CONFIRM_CVAR,
)


@pytest.fixture(scope="module")
def sweep(
    confirmed_sweep: tuple[Path, subprocess.CompletedProcess],
) -> tuple[Path, subprocess.CompletedProcess]:
    return confirmed_sweep


def _sql(out: Path, sql: str) -> list[tuple]:
    """Straight from the Parquet files (one part per table after compaction), not
    the project's readers."""
    con = duckdb.connect()
    for table in ("trials", "epochs", "classes", "confirm", "confirm_classes"):
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{out / table}/part-*.parquet')"
        )
    return con.execute(sql).fetchall()


def test_the_resumed_sweep_has_exactly_the_confirm_trials_expected(sweep):
    out, _ = sweep
    rows = _sql(
        out, "SELECT stage, role, seed, status, count(*) FROM trials GROUP BY ALL ORDER BY ALL"
    )
    assert rows == [
        ("confirm", "baseline", 1, "completed", 1),
        ("confirm", "baseline", 2, "completed", 1),
        ("confirm", "confirm", 1, "completed", TOP_K),
        ("confirm", "confirm", 2, "completed", TOP_K),
        ("search", "search", 0, "completed", SAMPLES),
        ("search", "trunk", 0, "completed", 1),
    ]
    # only the search's trials have an Optuna number
    # (a confirm trial's config is its search trial's id)
    assert _sql(out, "SELECT role, count(number) FROM trials GROUP BY ALL ORDER BY ALL") == [
        ("baseline", 0),
        ("confirm", 0),
        ("search", SAMPLES),
        ("trunk", 0),
    ]
    # every epoch once: a trunk's 1..E, a fork's after its warm-up;
    # each fork forked from its own seed's trunk
    epochs = _sql(
        out,
        "SELECT t.trial, t.role, t.forked_at, t.ham_warmup_epochs, count(e.epoch), "
        "count(DISTINCT e.epoch), min(e.epoch), "
        "max(e.epoch), k.seed = t.seed FROM trials t JOIN epochs e "
        "USING (trial) LEFT JOIN trials k ON k.trial = t.trunk "
        "WHERE t.stage = 'confirm' GROUP BY ALL",
    )
    assert len(epochs) == SEEDS * (TOP_K + 1)
    for _, role, forked, warmup, n, distinct, lo, hi, same_seed in epochs:
        first = 1 if role == "baseline" else warmup + 1
        assert (n, distinct, lo, hi) == (EPOCHS - first + 1,) * 2 + (first, EPOCHS)
        assert role == "baseline" or (forked == warmup and same_seed)
    # one test evaluation per confirm trial, of its best (validation) checkpoint;
    # none for the search
    tests = _sql(
        out,
        "SELECT t.stage, count(DISTINCT c.trial), count(*), bool_and(c.epoch = t.best_epoch) "
        "FROM classes c "
        "JOIN trials t USING (trial) WHERE c.split = 'test' GROUP BY ALL",
    )
    assert tests == [("confirm", SEEDS * (TOP_K + 1), SEEDS * (TOP_K + 1) * 2 * CLASSES, True)]
    assert _sql(
        out,
        "SELECT count(*) = count(DISTINCT (trial, epoch, split, attack, class_id)) FROM classes",
    ) == [(True,)]
    assert _sql(out, "SELECT count(*), count(DISTINCT (config, attack, metric)) FROM confirm") == [
        ((TOP_K + 1) * 2 * 3,) * 2
    ]
    assert _sql(
        out, "SELECT count(*), count(DISTINCT (config, attack, class_id)) FROM confirm_classes"
    ) == [((TOP_K + 1) * 2 * CLASSES,) * 2]


def test_the_kill_landed_in_the_confirm_stage_and_trials_continued(sweep):
    out, proc = sweep
    resumed = _sql(out, "SELECT count(*) FROM trials WHERE stage = 'confirm' AND resumed_from > 0")[
        0
    ][0]
    assert resumed >= 1, (
        "no confirm trial continued from its checkpoint; "
        f"resume said: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    )
    study = json.loads((out / "confirm.json").read_text())
    assert len(study["trials"]) == SEEDS * (TOP_K + 1) and study["seeds"] == [1, 2]


def test_the_chosen_configs_are_the_best_completed_by_the_validation_objective(sweep):
    out, _ = sweep
    best = _sql(
        out,
        "SELECT trial, best_objective FROM trials "
        "WHERE stage = 'search' AND role = 'search' AND status = 'completed' "
        "ORDER BY best_objective DESC, number LIMIT 2",
    )
    chosen = _sql(
        out,
        "SELECT DISTINCT config, search_value FROM confirm WHERE role = 'confirm' "
        "ORDER BY search_value DESC, config",
    )
    # the search value beside the confirmed value: what chose it
    assert sorted(chosen) == sorted(best)
    baseline = _sql(out, "SELECT DISTINCT search_value FROM confirm WHERE role = 'baseline'")
    assert baseline == _sql(
        out, "SELECT best_objective FROM trials WHERE stage = 'search' AND role = 'trunk'"
    )


def _per_seed(out: Path) -> dict[tuple[str, str], dict[int, np.ndarray]]:
    """(config, attack) -> seed -> per-class test accuracy, from the classes and trials
    files via pyarrow."""
    trials = pq.read_table(out / "trials").to_pylist()
    classes = pq.read_table(out / "classes").to_pylist()
    of = {t["trial"]: t for t in trials if t["stage"] == "confirm"}
    found: dict[tuple[str, str], dict[int, dict[int, float]]] = {}
    for r in classes:
        if r["split"] == "test" and r["trial"] in of:
            t = of[r["trial"]]
            found.setdefault((t["config"], r["attack"]), {}).setdefault(t["seed"], {})[
                r["class_id"]
            ] = r["correct"] / r["n"]
    return {
        k: {s: np.array([c[i] for i in sorted(c)]) for s, c in v.items()} for k, v in found.items()
    }


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
    rows = _sql(
        out,
        "SELECT config, baseline, attack, metric, seeds, mean, std, ci_low, ci_high, "
        "diff_mean, diff_low, diff_high, "
        "verdict, paired_seeds FROM confirm",
    )
    for (
        config,
        baseline,
        attack,
        metric,
        seeds,
        mean,
        std,
        low,
        high,
        d,
        d_low,
        d_high,
        verdict,
        paired,
    ) in rows:
        values = [_summary(a, metric) for _, a in sorted(accs[(config, attack)].items())]
        assert seeds == SEEDS and (mean, std, low, high) == pytest.approx(
            _t(values), nan_ok=True, abs=1e-12
        )
        if baseline is None:
            assert d is None and verdict is None
            continue
        base = [_summary(a, metric) for _, a in sorted(accs[(baseline, attack)].items())]
        diff = _t([v - b for v, b in zip(values, base)])
        assert paired == SEEDS and (d, d_low, d_high) == pytest.approx(
            (diff[0], diff[2], diff[3]), abs=1e-12
        )
        words = (
            "higher"
            if diff[2] > 0
            else "lower"
            if diff[3] < 0
            else "no clear difference (95% CI includes 0)"
        )
        assert verdict.startswith(words), verdict


def test_the_confirm_tables_cost_is_own_plus_inherited_per_seed_with_a_paired_ratio(sweep):
    """Recomputed from the trials file: a confirmed fork inherits its seed's baseline trunk up to
    its fork point (own x forked_at / epochs_run); device-hours are per seed; the ratio pairs each
    seed with the baseline's."""
    out, _ = sweep
    trials = {t["trial"]: t for t in pq.read_table(out / "trials").to_pylist()}
    per_seed: dict[str, dict[int, tuple[float, float]]] = {}
    for t in trials.values():
        if t["stage"] == "confirm":
            k = trials.get(t["trunk"]) if t["forked_at"] is not None else None
            inherited = k["device_seconds"] * t["forked_at"] / k["epochs_run"] if k else 0.0
            per_seed.setdefault(t["config"], {})[t["seed"]] = (
                t["device_seconds"] / 3600,
                inherited / 3600,
            )
    rows = _sql(
        out,
        "SELECT DISTINCT config, baseline, device, own_device_hours, inherited_device_hours, "
        "device_hours, cost_ratio FROM confirm",
    )
    assert len(rows) == TOP_K + 1
    for config, baseline, device, own, inherited, total, ratio in rows:
        seeds = per_seed[config]
        assert device == "cpu" and len(seeds) == SEEDS
        assert own == pytest.approx(np.mean([o for o, _ in seeds.values()]), rel=1e-9)
        assert inherited == pytest.approx(np.mean([i for _, i in seeds.values()]), rel=1e-9)
        assert total == pytest.approx(own + inherited, rel=1e-9)
        if baseline is None:
            assert inherited == 0 and ratio is None
            continue
        assert inherited > 0  # every confirmed config forks from its seed's trunk
        assert ratio == pytest.approx(
            np.mean([sum(seeds[s]) / sum(per_seed[baseline][s]) for s in seeds]), rel=1e-9
        )


def _counts_per_seed(out: Path) -> dict[tuple[str, str], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """(config, attack) -> seed -> (n, correct) per class of the test split, from the Parquet
    files via pyarrow."""
    of = {
        t["trial"]: t for t in pq.read_table(out / "trials").to_pylist() if t["stage"] == "confirm"
    }
    found: dict[tuple[str, str], dict[int, dict[int, tuple[int, int]]]] = {}
    for r in pq.read_table(out / "classes").to_pylist():
        if r["split"] == "test" and r["trial"] in of:
            t = of[r["trial"]]
            found.setdefault((t["config"], r["attack"]), {}).setdefault(t["seed"], {})[
                r["class_id"]
            ] = (r["n"], r["correct"])
    return {
        k: {
            s: (np.array([c[i][0] for i in sorted(c)]), np.array([c[i][1] for i in sorted(c)]))
            for s, c in v.items()
        }
        for k, v in found.items()
    }


def _class_ci(
    by_seed: dict[int, tuple[np.ndarray, np.ndarray]], conf: float
) -> list[tuple[float, float]]:
    """The per-class interval written out class by class: a Pearson dispersion over the
    classes strictly between 0 and 1, widened by (t / z)^2 and floored at 1, then Jeffreys on
    the effective images."""
    seeds, classes = sorted(by_seed), len(next(iter(by_seed.values()))[0])
    chi2, df, per_class = 0.0, 0, []
    for c in range(classes):
        ns = [by_seed[s][0][c] for s in seeds if by_seed[s][0][c] > 0]
        accs = [by_seed[s][1][c] / by_seed[s][0][c] for s in seeds if by_seed[s][0][c] > 0]
        m = sum(accs) / len(accs)
        per_class.append((m, sum(ns)))
        if 0 < m < 1:
            chi2 += sum((a - m) ** 2 / (m * (1 - m) / n) for a, n in zip(accs, ns))
            df += len(accs) - 1
    z = scipy_stats.norm.ppf((1 + conf) / 2)
    deff = max(1.0, chi2 / df * (scipy_stats.t.ppf((1 + conf) / 2, df) / z) ** 2) if df else 1.0
    out = []
    for m, images in per_class:
        eff = images / deff
        x, tail = m * eff, (1 - conf) / 2
        out.append(
            (
                0.0 if m == 0 else scipy_stats.beta.ppf(tail, x + 0.5, eff - x + 0.5),
                1.0 if m == 1 else scipy_stats.beta.ppf(1 - tail, x + 0.5, eff - x + 0.5),
            )
        )
    return out


def _class_diff(
    mine: dict[int, tuple[np.ndarray, np.ndarray]],
    base: dict[int, tuple[np.ndarray, np.ndarray]],
    conf: float,
) -> list[tuple[float, float, float]]:
    """The per-class paired difference written out: per-seed differences over the seeds both
    have, each arm's variance from its Jeffreys-shrunk pooled accuracy, a Pearson dispersion over
    the classes not at one bound in both arms on every seed, Student's t (the normal's without
    degrees of freedom)."""
    seeds = sorted(set(mine) & set(base))
    classes = len(mine[seeds[0]][0])
    chi2, df, parts = 0.0, 0, []
    for c in range(classes):
        arms = [(mine[s][0][c], mine[s][1][c], base[s][0][c], base[s][1][c]) for s in seeds]
        pa = (sum(a[1] for a in arms) + 0.5) / (sum(a[0] for a in arms) + 1)
        pb = (sum(a[3] for a in arms) + 0.5) / (sum(a[2] for a in arms) + 1)
        d = [k / n - j / m for n, k, m, j in arms]
        v = [pa * (1 - pa) / n + pb * (1 - pb) / m for n, _, m, _ in arms]
        mean = sum(d) / len(d)
        parts.append((mean, sum(v), len(d)))
        if len(d) > 1 and not (
            all(k == j == 0 for _, k, _, j in arms) or all(k == n and j == m for n, k, m, j in arms)
        ):
            chi2 += sum((x - mean) ** 2 / vx for x, vx in zip(d, v))
            df += len(d) - 1
    phi, q = (
        (chi2 / df, scipy_stats.t.ppf((1 + conf) / 2, df))
        if df
        else (1.0, scipy_stats.norm.ppf((1 + conf) / 2))
    )
    return [
        (
            mean,
            max(-1.0, mean - q * math.sqrt(phi * v) / k),
            min(1.0, mean + q * math.sqrt(phi * v) / k),
        )
        for mean, v, k in parts
    ]


def test_per_class_rows_agree_with_a_recomputation_from_the_counts(sweep):
    out, _ = sweep
    counts = _counts_per_seed(out)
    rows = _sql(
        out,
        "SELECT config, attack, class_id, seeds, mean, ci_low, ci_high, baseline_mean, "
        "confidence, paired_seeds, "
        "diff_mean, diff_low, diff_high, verdict FROM confirm_classes",
    )
    baseline_of = dict(_sql(out, "SELECT DISTINCT config, baseline FROM confirm"))
    assert len(rows) == (TOP_K + 1) * 2 * CLASSES
    for (
        config,
        attack,
        c,
        seeds,
        mean,
        low,
        high,
        base_mean,
        conf,
        paired,
        d,
        d_low,
        d_high,
        verdict,
    ) in rows:
        by_seed = counts[(config, attack)]
        assert seeds == SEEDS and conf == 0.95
        assert mean == pytest.approx(np.mean([k[c] / n[c] for n, k in by_seed.values()]), abs=1e-12)
        assert (low, high) == pytest.approx(_class_ci(by_seed, conf)[c], abs=1e-9)
        assert 0 <= low <= mean <= high <= 1 and low < high  # never a point, at 0 and 1 included
        baseline = baseline_of[config]
        if baseline is None:
            assert (
                config.startswith("pgd_at:")
                and (base_mean, paired, d, d_low, d_high, verdict) == (None,) * 6
            )
            continue
        base = counts[(baseline, attack)]
        assert base_mean == pytest.approx(
            np.mean([k[c] / n[c] for n, k in base.values()]), abs=1e-12
        )
        want = _class_diff(by_seed, base, conf)[c]
        assert paired == SEEDS and (d, d_low, d_high) == pytest.approx(want, abs=1e-9)
        assert d_low <= d <= d_high and d_low < d_high
        words = (
            "higher"
            if want[1] > 0
            else "lower"
            if want[2] < 0
            else "no clear difference (95% CI includes 0)"
        )
        assert verdict.startswith(words), verdict


def test_the_run_ends_with_the_confirmed_table_and_results_prints_it_first(sweep):
    out, proc = sweep
    assert proc.stdout.rfind("confirmed on the test split") > proc.stdout.rfind(
        "trials by validation"
    )
    shown = hamsweep("results", str(out))
    assert shown.returncode == 0 and shown.stdout.find(
        "confirmed on the test split"
    ) < shown.stdout.find("trials by validation")
    assert "includes 0" in shown.stdout or "excl. 0" in shown.stdout  # the difference in words
    rows = json.loads(hamsweep("results", str(out), "--format", "json").stdout)
    assert next(r["config"] for r in rows) == "PGD-AT" and len(rows) == TOP_K + 1
    assert all(r["verdict"] for r in rows[1:]) and all(0 <= r["worst_mean"] <= 1 for r in rows)
    csv = hamsweep("results", str(out), "--format", "csv").stdout.splitlines()
    assert csv[0].startswith("config,") and len(csv) == TOP_K + 2
    latex = hamsweep("results", str(out), "--format", "latex").stdout
    assert (
        latex.count("\\toprule") == 1
        and "\\bottomrule" in latex
        and "\\textbf{" in latex
        and "\\#" in latex
    )
    state = json.loads((out / "state.json").read_text())
    assert state["confirm_trials"] == SEEDS * (TOP_K + 1)
    assert sum(
        v["stage"] == "confirm" and v["status"] == "completed" for v in state["trials"].values()
    ) == SEEDS * (TOP_K + 1)


# ---- the parts on their own ----
def _spec(**sections) -> SweepSpec:
    base = {
        "train": {"epochs": 6},
        "ham": {"warmup_epochs": 3},
        "search": {"params": PARAMS, "num_samples": 2, "max_concurrent": 2},
    }
    return validate(SweepSpec, {**base, **sections})


def test_final_eval_is_confirm_with_seeds_0_and_both_is_an_error():
    dumped = _spec(final_eval={"top_k": 2, "autoattack": True}).confirm.model_dump()
    assert {k: dumped[k] for k in ("top_k", "seeds", "autoattack", "confidence")} == {
        "top_k": 2,
        "seeds": 0,
        "autoattack": True,
        "confidence": 0.95,
    }
    assert dumped["max_seeds"] is None  # no rounds: nothing is retrained
    with pytest.raises(SpecError, match=r"^final_eval: is the older name of confirm"):
        _spec(final_eval={"top_k": 1}, confirm={"top_k": 1})


def test_new_seeds_follow_every_seed_the_search_used():
    assert new_seeds(_spec(confirm={"seeds": 3})) == (1, 2, 3)
    searched = {**PARAMS, "train.seed": {"choice": [0, 5], "default": 0}}
    assert new_seeds(_spec(search={"params": searched}, confirm={"seeds": 2})) == (6, 7)


def test_the_plan_hands_each_seeds_trunk_before_its_configs():
    spec = _spec(confirm={"top_k": 2, "seeds": 2})
    chosen = [
        Chosen(
            "a",
            4,
            {"ham.warmup_epochs": 2, "ham.temperature": None, "ham.discard_threshold": 0.1},
            0.5,
        ),
        Chosen(
            "b",
            1,
            {"ham.warmup_epochs": 4, "ham.temperature": 1.0, "ham.discard_threshold": 0.2},
            0.4,
        ),
    ]
    p = plan_confirm(spec, chosen)
    assert [(t.get("role", "search"), t.get("config"), t["train.seed"]) for t in p.trials] == [
        ("trunk", next(iter(p.baselines)), 1),
        ("search", "a", 1),
        ("search", "b", 1),
        ("trunk", next(iter(p.baselines)), 2),
        ("search", "a", 2),
        ("search", "b", 2),
    ]
    # the trunk keeps the epochs its configs fork at, no others
    assert p.trials[0]["keep"] == [2, 4]
    numbers = [t["optuna_trial"] for t in p.trials]
    assert len(set(numbers)) == len(numbers) and all(abs(n) >= FIRST_NUMBER for n in numbers)
    assert (p.label("a"), p.label(next(iter(p.baselines)))) == ("#4", "PGD-AT")
    assert plan_confirm(spec, []).trials == ()


def test_the_searcher_hands_out_the_confirm_stage_once_the_search_has_ended(tmp_path):
    spec = _spec(confirm={"top_k": 1, "seeds": 2, "early": False})  # early: test_search.py
    s = make_searcher(spec, tmp_path)
    planned: list = []
    s.confirm_sink = planned.append
    assert s.suggest("trunk")["role"] == "trunk"
    for w in (2, 3, 4):  # the search's trunk reached every warm-up epoch
        epoch_dir(tmp_path, plan(spec).trunks[0].key, w).mkdir(parents=True)
    first, second = s.suggest("t0"), s.suggest("t1")
    assert first["fork"] == second["fork"] == plan(spec).trunks[0].key
    # num_samples proposed, none ended: nothing more yet
    assert s.suggest("t2") is None and not planned
    s.on_trial_complete("t0", {OBJECTIVE: 0.2, BEST: 0.2, "epoch": 6})
    assert s.suggest("t3") is None and not planned  # one search trial still runs
    s.on_trial_complete("t1", {OBJECTIVE: 0.1, BEST: 0.3, "epoch": 6})
    trunk1 = s.suggest("c0")
    assert planned and [c.trial for c in planned[0].chosen] == ["t1"]  # the highest best objective
    assert trunk1["role"] == "trunk" and trunk1["stage"] == "confirm" and trunk1["train.seed"] == 1
    # seed 1's config waits for its trunk's warm-up epoch: seed 2's trunk goes first
    trunk2 = s.suggest("c1")
    assert trunk2["role"] == "trunk" and trunk2["train.seed"] == 2 and s.suggest("c2") is None
    # PGD-AT of the search's warm-up config
    assert planned[0].trials[1]["baseline"] == f"pgd_at:{plan(spec).trunks[0].key}"
    seed1 = warmup_key(trunk_config(spec, {"train.seed": 1}))
    assert seed1 != plan(spec).trunks[0].key  # a new seed is a new warm-up
    epoch_dir(tmp_path, seed1, second["ham.warmup_epochs"]).mkdir(parents=True, exist_ok=True)
    config = s.suggest("c2")
    assert config["config"] == "t1" and config["fork"] == seed1 and config["train.seed"] == 1
    # seed 2's trunk failed: its config trains its own warm-up
    s.on_trial_complete("c1", {"epoch": 2}, error=True)
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
    assert (
        f"{trials} trials, predicted {epochs:.0f} training epochs" in line
        and "train.seed 1, 2" in line
    )
