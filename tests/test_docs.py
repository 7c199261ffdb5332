"""The documentation is true: docs/tables.md lists exactly the columns the tables and views have,
and every ``hamsweep query`` example in the README and docs/ runs, as written, on a real sweep
(``conftest.confirmed_sweep``), with an answer this file recomputes from the Parquet files with
pyarrow and numpy (not the project's readers). A new example without a recomputation here fails."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import CONFIRM_CVAR, hamsweep
from scipy import stats as scipy_stats

from hamsweep.keys import ROLES
from hamsweep.results import store as results

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TABLES_DOC = ROOT / "docs" / "tables.md"
_TYPES = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE"}  # the doc's short name -> DuckDB's DESCRIBE
PARAM_ROW = "<section>_<field>"  # the doc's row standing for one column per searched key


# ---- the reference page ----
def documented() -> dict[str, list[tuple[str, str]]]:
    """docs/tables.md: table -> [(column, type)] from each '## `name`' section's column table."""
    found: dict[str, list[tuple[str, str]]] = {}
    section = None
    for line in TABLES_DOC.read_text().splitlines():
        if m := re.match(r"## `(\w+)`", line):
            section = m.group(1)
        elif line.startswith("## "):
            section = "views" if line.strip() == "## Views" else None
        elif section and (m := re.match(r"\| `([^`]+)` \| ([A-Z ]+) \|", line)):
            found.setdefault(section, []).append((m.group(1), _TYPES.get(m.group(2), m.group(2))))
    return found


def test_the_reference_lists_every_column_of_every_schema():
    doc = documented()
    for table, schema in results.SCHEMAS.items():
        names = [c for c, _ in doc[table] if c != PARAM_ROW]
        expected = [f.name for f in schema] + (
            list(results.COST_COLUMNS) if table == results.TRIALS else []
        )
        assert sorted(names) == sorted(expected), f"docs/tables.md, {table}"
        types = dict(doc[table])
        for f in schema:
            assert types[f.name] == _TYPES.get(
                results._duckdb_type(f.type), results._duckdb_type(f.type)
            ), (table, f.name)
    assert set(doc) == {*results.SCHEMAS, "views"}
    assert [c for c, _ in doc["views"]] == ["inherited"]


def test_the_reference_names_every_role():
    text = TABLES_DOC.read_text()
    for role in ROLES:
        assert f"| `{role}` |" in text


def test_the_views_of_a_real_sweep_have_exactly_the_documented_columns(confirmed_sweep):
    out, _ = confirmed_sweep
    con = results.connect(out)
    doc = documented()
    params = [
        c
        for c in pq.read_schema(next((out / "trials").glob("*.parquet"))).names
        if c not in {f.name for f in results.TRIAL_SCHEMA}
    ]
    assert params, "the fixture searches some keys"
    for table in results.SCHEMAS:
        described = [(r[0], r[1]) for r in con.execute(f"DESCRIBE {table}").fetchall()]
        want = [(c, t) for c, t in doc[table] if c != PARAM_ROW]
        got = [(c, t) for c, t in described if c not in params]
        assert sorted(got) == sorted(want), table
    for view, table in results.TRIAL_VIEWS.items():
        columns = [r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()]
        base = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
        assert columns == [*base, "inherited"], view


# ---- the SQL examples ----
def examples() -> list[tuple[str, str, list[str]]]:
    """(comment, SQL, the command's arguments) of every `hamsweep query` in a fenced bash block of
    the docs; the comment is the '# ...' line above it."""
    found = []
    for path in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            lines, comment = block.splitlines(), None
            i = 0
            while i < len(lines):
                line = lines[i]
                if line.startswith("#"):
                    comment = line.lstrip("# ").strip()
                elif re.match(r"\s*(\S*/)?hamsweep query ", line):
                    text = line
                    while text.count('"') % 2:  # the SQL spans lines up to its closing quote
                        i += 1
                        text += "\n" + lines[i]
                    args = shlex.split(text.split("hamsweep", 1)[1])
                    found.append((f"{path.name}: {comment}", args[2], args))
                i += 1
    return found


def test_the_docs_have_sql_examples_and_each_has_a_recomputation():
    found = examples()
    assert len(found) >= 8
    assert {c for c, _, _ in found} == set(CHECKS), (
        "add a recomputation to CHECKS for a new example (or drop an old one)"
    )


@pytest.fixture(scope="module")
def data(confirmed_sweep) -> dict:
    """The finished sweep's tables straight from their Parquet files
    (one part each after compaction)."""
    out, _ = confirmed_sweep
    names = ("trials", "epochs", "classes", "class_state")
    tables = {t: pq.read_table(out / t).to_pylist() for t in names}
    for t in names:
        keys = [tuple(r[k] for k in results.KEYS[t]) for r in tables[t]]
        assert len(keys) == len(set(keys)), f"{t}: one row per key in the compacted part"
    return {"out": out, **tables}


def test_every_sql_example_runs_as_written_and_agrees_with_a_recomputation(data):
    out = data["out"]
    ran = 0
    for comment, _sql, args in examples():
        cli = [a if a not in ("runs/sweep1", "runs/demo") else str(out) for a in args]
        proc = hamsweep(*cli)
        assert proc.returncode == 0 and proc.stdout.strip(), f"{comment}: {proc.stderr[-2000:]}"
        answer = hamsweep(*cli[:3], "--format", "json")
        assert answer.returncode == 0, answer.stderr
        rows = json.loads(answer.stdout)
        assert rows, f"{comment}: the example answers nothing on the sweep"
        CHECKS[comment](data, rows)
        ran += 1
    assert ran == len(CHECKS)


# ---- the recomputations, one per example ----
def _acc(r: dict) -> float:
    return r["correct"] / r["n"]


def _worst(rows: list[dict]) -> tuple[str, float]:
    """The worst class of per-class rows: (name, accuracy); a tie goes to the lowest class id."""
    r = min(rows, key=lambda r: (_acc(r), r["class_id"]))
    return r["class_name"], _acc(r)


def _pgd_val(r: dict) -> bool:
    return r["split"] == "val" and r["attack"].startswith("pgd")


def _search(data: dict) -> list[dict]:
    return [t for t in data["trials"] if t["role"] == "search"]


def _approx(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (
        a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    )


def worst_class_per_search_trial(data: dict, rows: list[dict]) -> None:
    want = []
    for t in _search(data):
        at = [
            r
            for r in data["classes"]
            if r["trial"] == t["trial"] and r["epoch"] == t["best_epoch"] and _pgd_val(r)
        ]
        if at:
            name, robust = _worst(at)
            want.append(
                {
                    "number": t["number"],
                    "status": t["status"],
                    "worst_class": name,
                    "robust": robust,
                }
            )
    want.sort(key=lambda w: (-w["robust"], w["number"]))
    assert len(rows) == len(want) == len(_search(data))
    for got, w in zip(rows, want):
        assert got.keys() == w.keys() and all(
            _approx(got[k], w[k]) if isinstance(w[k], float) else got[k] == w[k] for k in w
        )


def worst_class_how_often(data: dict, rows: list[dict]) -> None:
    by: dict[tuple, list[dict]] = {}
    for r in data["classes"]:
        if _pgd_val(r):
            by.setdefault((r["trial"], r["epoch"]), []).append(r)
    counts = Counter(_worst(rs)[0] for rs in by.values())
    assert [(r["worst"], r["times"]) for r in rows] == sorted(
        counts.items(), key=lambda kv: (-kv[1], kv[0])
    )


def _history(data: dict, t: dict) -> list[dict]:
    """A trial's epochs, its trunk's up to its fork point first (inherited)."""
    own = [{**e, "inherited": False} for e in data["epochs"] if e["trial"] == t["trial"]]
    if t["trunk"] is None or t["forked_at"] is None:
        return sorted(own, key=lambda e: e["epoch"])
    warm = [
        {**e, "inherited": True}
        for e in data["epochs"]
        if e["trial"] == t["trunk"] and e["epoch"] <= t["forked_at"]
    ]
    return sorted(warm + own, key=lambda e: e["epoch"])


def hard_fraction_of_the_best(data: dict, rows: list[dict]) -> None:
    best = min(_search(data), key=lambda t: (-t["best_objective"], t["number"]))
    want = _history(data, best)
    assert best["forked_at"] is not None and any(w["inherited"] for w in want), (
        "the fixture's best trial is a fork"
    )
    assert (
        [r["epoch"] for r in rows]
        == [w["epoch"] for w in want]
        == list(range(1, best["epochs_run"] + 1))
    )
    for r, w in zip(rows, want):
        assert (r["phase"], r["inherited"]) == (w["phase"], w["inherited"])
        assert _approx(r["hard_fraction"], w["hard_fraction"]) and _approx(
            r["robust_worst"], w["robust_worst"]
        )


def class_state_of_the_best(data: dict, rows: list[dict]) -> None:
    best = min(_search(data), key=lambda t: (-t["best_objective"], t["number"]))
    mine = [r for r in data["class_state"] if r["trial"] == best["trial"]]
    want = sorted(mine, key=lambda r: (r["epoch"], r["class_id"]))
    # the HAM epochs after the fork, every class of each
    epochs = sorted({r["epoch"] for r in want})
    assert epochs == list(range(best["forked_at"] + 1, best["epochs_run"] + 1))
    assert len(want) == len(epochs) * len({r["class_id"] for r in want}) == len(rows)
    for r, w in zip(rows, want):
        assert (r["epoch"], r["class_name"]) == (w["epoch"], w["class_name"])
        assert _approx(r["hard_fraction"], w["hard_fraction"])
    # each class's hard fraction is a share of its AEs: in [0, 1]
    assert all(0 <= w["hard_fraction"] <= 1 for w in want if w["hard_fraction"] is not None)


def gain_over_the_baseline(data: dict, rows: list[dict]) -> None:
    epoch = {(e["trial"], e["epoch"]): e for e in data["epochs"]}
    want = []
    for t in _search(data):
        own, base = (
            epoch.get((t["trial"], t["best_epoch"])),
            epoch.get((t["trunk"], t["best_epoch"])),
        )
        if own is not None and base is not None:
            want.append((t["number"], t["best_epoch"], own["robust_worst"] - base["robust_worst"]))
    want.sort(key=lambda w: (-w[2], w[0]))
    assert len(rows) == len(want) > 0
    for r, (number, ep, gain) in zip(rows, want):
        assert (r["number"], r["epoch"]) == (number, ep) and _approx(r["gain"], gain)


def _inherited(data: dict, t: dict) -> float:
    """The documented rule, written out: a fork's share of its trunk,
    own cost x forked_at / epochs_run."""
    if t["trunk"] is None or t["forked_at"] is None:
        return 0.0
    k = next(x for x in data["trials"] if x["trial"] == t["trunk"])
    return k["device_seconds"] * min(t["forked_at"], k["epochs_run"]) / k["epochs_run"]


def roles_and_costs(data: dict, rows: list[dict]) -> None:
    want: dict[tuple[str, str], list[float]] = {}
    for t in data["trials"]:
        w = want.setdefault((t["role"], t["stage"]), [0, 0.0, 0.0])
        w[0] += 1
        w[1] += t["device_seconds"] / 3600
        w[2] += (t["device_seconds"] + _inherited(data, t)) / 3600
    # stage DESC, then role (a stable sort)
    order = sorted(sorted(want), key=lambda k: k[1], reverse=True)
    assert [(r["role"], r["stage"]) for r in rows] == order
    assert {r["role"] for r in rows} == set(ROLES), "every role is in the fixture"
    for r in rows:
        n, own, total = want[(r["role"], r["stage"])]
        assert (
            r["trials"] == n and _approx(r["own_hours"], own) and _approx(r["total_hours"], total)
        )
        assert (
            r["total_hours"] > r["own_hours"]
            if r["role"] in ("search", "confirm")
            else _approx(r["total_hours"], r["own_hours"])
        )


def _cvar(acc: np.ndarray) -> float:
    return float(np.sort(acc)[: math.ceil(CONFIRM_CVAR * len(acc))].mean())


def _t(x: np.ndarray) -> tuple[float, float, float]:
    half = scipy_stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def confirmed_table(data: dict, rows: list[dict]) -> None:
    confirm = {
        t["trial"]: t
        for t in data["trials"]
        if t["stage"] == "confirm" and t["status"] == "completed"
    }
    acc: dict[str, dict[int, dict[int, float]]] = {}
    for r in data["classes"]:
        if r["trial"] in confirm and r["split"] == "test" and r["attack"].startswith("pgd"):
            t = confirm[r["trial"]]
            acc.setdefault(t["config"], {}).setdefault(t["seed"], {})[r["class_id"]] = _acc(r)
    cvar = {
        c: {s: _cvar(np.array([v[i] for i in sorted(v)])) for s, v in by.items()}
        for c, by in acc.items()
    }
    cost = {
        (t["config"], t["seed"]): (t["device_seconds"] + _inherited(data, t)) / 3600
        for t in confirm.values()
    }
    baseline_of = {t["config"]: t["baseline"] for t in confirm.values()}
    labels = {r["label"] for r in rows}
    assert len(rows) == len(cvar) and "PGD-AT" in labels
    for r in rows:
        config = next(c for c in cvar if _label(data, c) == r["label"])
        seeds = sorted(cvar[config])
        x = np.array([cvar[config][s] for s in seeds])
        assert r["seeds"] == len(seeds) and _approx(r["mean"], float(x.mean()))
        assert _approx(r["device_hours"], float(np.mean([cost[(config, s)] for s in seeds])))
        base = baseline_of[config]
        if base is None:
            assert r["diff_mean"] is None and r["cost_ratio"] is None
            continue
        d = np.array([cvar[config][s] - cvar[base][s] for s in seeds])
        assert all(
            _approx(a, b) for a, b in zip((r["diff_mean"], r["diff_low"], r["diff_high"]), _t(d))
        )
        ratio = np.mean([cost[(config, s)] / cost[(base, s)] for s in seeds])
        assert _approx(r["cost_ratio"], float(ratio))


def _label(data: dict, config: str) -> str:
    """'PGD-AT' for the baseline (one in the fixture), else '#<number>' of the search trial the
    config retrains."""
    if config.startswith("pgd_at:"):
        return "PGD-AT"
    return "#" + str(next(t["number"] for t in data["trials"] if t["trial"] == config))


def worst_class_per_epoch(data: dict, rows: list[dict]) -> None:
    by: dict[int, list[dict]] = {}
    for r in data["classes"]:
        if _pgd_val(r):
            by.setdefault(r["epoch"], []).append(r)
    assert [r["epoch"] for r in rows] == sorted(by)
    for r in rows:
        name, robust = _worst(by[r["epoch"]])
        assert r["worst_class"] == name and _approx(r["robust"], robust)


def attack_ratio_per_epoch(data: dict, rows: list[dict]) -> None:
    want = sorted(data["epochs"], key=lambda e: e["epoch"])
    assert [r["epoch"] for r in rows] == [e["epoch"] for e in want]
    assert sorted((r["epoch"], r["phase"], round(r["attack_ratio"], 12)) for r in rows) == sorted(
        (e["epoch"], e["phase"], round(e["attack_steps"] / e["attack_steps_full"], 12))
        for e in want
    )


CHECKS: dict[str, Callable[[dict, list[dict]], None]] = {
    "README.md: the worst class of each search trial at its best epoch "
    "(validation, PGD; a tie goes to the lowest class id)": worst_class_per_search_trial,
    "README.md: which class is the worst how often, "
    "over all trials and evaluated epochs": worst_class_how_often,
    "README.md: HAM's hard fraction over the epochs of the best search trial, "
    "its warm-up (the trunk's epochs) included": hard_fraction_of_the_best,
    "README.md: what the method did to each class: the best search trial's per-class hard "
    "fraction over its HAM epochs": class_state_of_the_best,
    "README.md: each search trial against the PGD-AT baseline at the same epoch: "
    "does HAM lift the worst class?": gain_over_the_baseline,
    "README.md: how many trials of each role and stage, and what they cost in device-hours "
    "(own, and with inherited warm-ups)": roles_and_costs,
    "README.md: the confirmed table: each config and PGD-AT on the test split over seeds, "
    "with the paired difference and cost ratio": confirmed_table,
    "README.md: the worst class of each epoch on the validation split, "
    "from the per-class counts": worst_class_per_epoch,
    "README.md: HAM's hard fraction and the attack compute it saved, "
    "per epoch": attack_ratio_per_epoch,
}


# ---- cost: the own costs are the sweep's ----
def test_own_costs_add_up_to_the_sweeps_and_fit_in_its_wall_time(data):
    out, trials = data["out"], data["trials"]
    own = sum(t["device_seconds"] for t in trials)
    # the fixture reserves CPUs only: CPU-seconds, not 0 GPU-seconds
    assert all(t["device"] == "cpu" for t in trials)
    assert own > 0 and all(
        # resources.cpu 1
        t["device_seconds"] == pytest.approx(t["wall_seconds"] * 1.0)
        for t in trials
    )
    # what the dashboard drew last: the driver's own sum
    state = json.loads((out / "state.json").read_text())
    assert sum(v["device_seconds"] for v in state["trials"].values()) == pytest.approx(
        own, rel=1e-6
    )
    # a physical bound: never more trial-seconds than the concurrency allowed over the sweep's span
    span = max(t["ended"] for t in trials) - min(t["started"] for t in trials)
    assert own <= span.total_seconds() * 2 * 1.05  # max_concurrent 2, resources.cpu 1
    con = results.connect(out)
    view_own, view_total = con.execute(
        "SELECT sum(device_seconds), sum(total_device_seconds) FROM trials"
    ).fetchone()
    assert view_own == pytest.approx(own) and view_total == pytest.approx(
        sum(t["device_seconds"] + _inherited(data, t) for t in trials)
    )
