"""The ``confirm`` and ``confirm_classes`` tables, recomputed from the confirm trials' per-class
test counts: t-intervals over seeds, paired differences against PGD-AT of the same seed (sequential
where seeds come in rounds), per-class intervals, the winner's lead over the second, the cost."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from hamsweep.core import sequential
from hamsweep.keys import BASELINE, CONFIRM, TRUNK
from hamsweep.spec import SweepSpec
from hamsweep.sweep.confirm._plan import (
    _BASELINE_PREFIX,
    ConfirmPlan,
    read_plan,
)

__all__ = ["write_tables"]


def write_tables(out: Path, spec: SweepSpec) -> int:
    """Recompute the ``confirm`` and ``confirm_classes`` tables from the confirm trials' per-class
    test counts (completed trials only: a failed seed is left out, and ``seeds`` says how many
    remain); returns the number of configs (baselines included) in them."""
    from hamsweep.results import store as results

    p = read_plan(out)
    if p is None:
        return 0
    con = results.connect(out)  # one set of views for every query below
    counts = _test_counts(con)
    hours, costs = _hours(con), _costs(con)
    configs = [c for c in [*p.baselines, *(c.trial for c in p.chosen)] if c in counts]
    rows, class_rows = [], []
    for config in configs:
        baseline = None if config in p.baselines else p.baseline_of(config)
        cost = _cost_cells(spec, costs, config, baseline, counts)
        rows += [
            {**r, **cost}
            for r in _summary_rows(
                spec,
                p,
                config,
                counts,
                baseline,
                _search_value(con, p, config),
                hours.get(config, (0.0, 0.0)),
            )
        ]
        class_rows += _class_rows(spec, p, config, counts, baseline)
    _add_lead(spec, p, counts, rows)
    results.replace_table(out, results.CONFIRM, rows)
    results.replace_table(out, results.CONFIRM_CLASSES, class_rows)
    return len(configs)


# config -> attack -> seed -> (class names, n per class, correct per class)
_Counts = dict[str, dict[str, dict[int, tuple[list[str], list[int], list[int]]]]]


def _test_counts(con: Any) -> _Counts:
    sql = f"""SELECT t.config, c.attack, t.seed, list(c.class_name ORDER BY c.class_id),
                     list(c.n ORDER BY c.class_id), list(c.correct ORDER BY c.class_id)
              FROM trials t JOIN classes c ON c.trial = t.trial
              WHERE t.stage = '{CONFIRM}' AND t.status = 'completed' AND c.split = 'test'
              GROUP BY ALL ORDER BY t.config, c.attack, t.seed"""
    found: _Counts = {}
    for config, attack, seed, names, n, correct in con.execute(sql).fetchall():
        found.setdefault(config, {}).setdefault(attack, {})[int(seed)] = (names, n, correct)
    return found


def _hours(con: Any) -> dict[str, tuple[float, float]]:
    """config -> (GPU-hours, wall hours) of its confirm trials."""
    sql = (
        "SELECT config, sum(gpu_seconds) / 3600, sum(wall_seconds) / 3600 FROM trials "
        f"WHERE stage = '{CONFIRM}' GROUP BY config"
    )
    return {c: (g or 0.0, w or 0.0) for c, g, w in con.execute(sql).fetchall()}


def _costs(con: Any) -> dict[str, dict[int, tuple[float, float]]]:
    """config -> seed -> (own, inherited) device-seconds of its confirm trial of that seed
    (``results.COST_COLUMNS``)."""
    sql = f"""SELECT config, seed, sum(device_seconds), sum(inherited_device_seconds) FROM trials
              WHERE stage = '{CONFIRM}' GROUP BY config, seed"""
    found: dict[str, dict[int, tuple[float, float]]] = {}
    for config, seed, own, inherited in con.execute(sql).fetchall():
        found.setdefault(config, {})[int(seed)] = (own or 0.0, inherited or 0.0)
    return found


def _cost_cells(
    spec: SweepSpec,
    costs: dict[str, dict[int, tuple[float, float]]],
    config: str,
    baseline: str | None,
    counts: _Counts,
) -> dict[str, Any]:
    """The confirm table's cost columns of ``config``: means over its evaluated seeds of its own,
    inherited and total device-hours, and the mean over the seeds both have of its total / the
    baseline's total (paired)."""
    import numpy as np

    seeds = sorted(
        {s for by_seed in counts[config].values() for s in by_seed} & set(costs.get(config, {}))
    )
    own = np.array([costs[config][s][0] for s in seeds]) / 3600
    inherited = np.array([costs[config][s][1] for s in seeds]) / 3600
    cells: dict[str, Any] = {
        "device": spec.resources.device,
        "own_device_hours": _mean(own),
        "inherited_device_hours": _mean(inherited),
        "device_hours": _mean(own + inherited),
    }
    base = costs.get(baseline, {}) if baseline else {}
    paired = [s for s in seeds if s in base and sum(base[s]) > 0]
    ratios = [sum(costs[config][s]) / sum(base[s]) for s in paired]
    cells["cost_ratio"] = _mean(np.array(ratios)) if paired else None
    return cells


def _mean(x: Any) -> float | None:
    return float(x.mean()) if len(x) else None


def _search_value(con: Any, p: ConfirmPlan, config: str) -> float | None:
    """The validation objective that got ``config`` chosen;
    for a baseline, its search trunk's best."""
    chosen = next((c for c in p.chosen if c.trial == config), None)
    if chosen is not None:
        return chosen.value
    key = config.removeprefix(_BASELINE_PREFIX)
    row = con.execute(
        f"SELECT max(best_objective) FROM trials WHERE role = '{TRUNK}' "
        "AND coalesce(stage, 'search') = 'search' AND trunk_key = ?",
        [key],
    ).fetchone()
    return row[0] if row else None


def _per_seed(counts: _Counts, config: str, attack: str) -> tuple[list[int], Any, Any]:
    """(seeds, n, correct) of one config and attack: n, correct (seeds, classes) arrays."""
    import numpy as np

    by_seed = counts.get(config, {}).get(attack, {})
    seeds = sorted(by_seed)
    return seeds, np.array([by_seed[s][1] for s in seeds]), np.array([by_seed[s][2] for s in seeds])


def _summary_rows(
    spec: SweepSpec,
    p: ConfirmPlan,
    config: str,
    counts: _Counts,
    baseline: str | None,
    search_value: float | None,
    hours: tuple[float, float],
) -> list[dict[str, Any]]:
    from hamsweep.core import stats

    conf, metric = spec.confirm.confidence, spec.objective.primary
    chosen = next((c for c in p.chosen if c.trial == config), None)
    rows = []
    for attack in counts[config]:
        seeds, n, correct = _per_seed(counts, config, attack)
        values = stats.seed_summaries(n, correct, spec.eval.cvar_fraction)
        base_seeds, bn, bc = _per_seed(counts, baseline, attack) if baseline else ([], None, None)
        base = stats.seed_summaries(bn, bc, spec.eval.cvar_fraction) if base_seeds else {}
        paired = [s for s in seeds if s in base_seeds]
        for key in stats.CONFIRM_KEYS:
            ci = stats.t_interval(values[key], conf)
            row = {
                "config": config,
                "label": p.label(config),
                "role": BASELINE if chosen is None else CONFIRM,
                "number": chosen.number if chosen else None,
                "baseline": baseline,
                "attack": attack,
                "metric": key,
                "seeds": ci.n,
                "mean": ci.mean,
                "std": _null(ci.std),
                "ci_low": _null(ci.low),
                "ci_high": _null(ci.high),
                "confidence": conf,
                "search_objective": metric,
                "search_value": search_value,
                "gpu_hours": hours[0],
                "wall_hours": hours[1],
                "paired_seeds": len(paired),
            }
            if paired:
                d = _difference(
                    spec,
                    [values[key][seeds.index(s)] for s in paired],
                    [base[key][base_seeds.index(s)] for s in paired],
                )
                row.update(
                    diff_mean=d.mean,
                    diff_low=_null(d.low),
                    diff_high=_null(d.high),
                    verdict=d.verdict(),
                )
            rows.append(row)
    return rows


def _add_lead(spec: SweepSpec, p: ConfirmPlan, counts: _Counts, rows: list[dict]) -> None:
    """The lead of the best chosen config over the second, on the best's rows (``lead_*``): the
    two ranked by their confirmed mean of the objective (test split, PGD), then for each attack
    and metric the paired per-seed differences best - second, as the differences to PGD-AT
    (``_difference``)."""
    from hamsweep.core import stats
    from hamsweep.spec.trial import objective_summary

    attack, key = f"pgd{spec.eval.attack_steps}", objective_summary(spec.objective.primary)
    means = {
        r["config"]: r["mean"]
        for r in rows
        if r["role"] == CONFIRM and r["attack"] == attack and r["metric"] == key
    }
    if len(means) < 2:
        return
    best, second = sorted(means, key=lambda c: -means[c])[:2]
    for row in rows:
        if row["config"] != best or row["metric"] not in stats.CONFIRM_KEYS:
            continue
        a = _seed_values(spec, counts, best, row["attack"], row["metric"])
        b = _seed_values(spec, counts, second, row["attack"], row["metric"])
        paired = sorted(set(a) & set(b))
        if not paired:
            continue
        d = _difference(spec, [a[s] for s in paired], [b[s] for s in paired])
        row.update(
            lead_over=p.label(second),
            lead_mean=d.mean,
            lead_low=_null(d.low),
            lead_high=_null(d.high),
            lead_verdict=d.verdict(),
        )


def _seed_values(
    spec: SweepSpec, counts: _Counts, config: str, attack: str, metric: str
) -> dict[int, float]:
    """seed -> the config's ``metric`` (``stats.CONFIRM_KEYS``) under ``attack`` on that seed."""
    from hamsweep.core import stats

    seeds, n, correct = _per_seed(counts, config, attack)
    if not seeds:
        return {}
    values = stats.seed_summaries(n, correct, spec.eval.cvar_fraction)[metric]
    return dict(zip(seeds, map(float, values)))


def _difference(spec: SweepSpec, values: list[float], baseline: list[float]) -> Any:
    """The paired difference of a config to its PGD-AT baseline over the seeds both have, in seed
    order: with seeds in rounds, the group-sequential design's repeated confidence interval at the
    first look that decides (``core.sequential``: its verdict says at how many seeds), else the
    paired t-interval."""
    from hamsweep.core import stats

    design = sequential.design(spec.confirm)
    if design is None or len(values) < design.min_seeds:
        return stats.paired_difference(values, baseline, spec.confirm.confidence)
    return design.read(np.array(values) - np.array(baseline))


def _class_rows(
    spec: SweepSpec, p: ConfirmPlan, config: str, counts: _Counts, baseline: str | None
) -> list[dict[str, Any]]:
    import numpy as np

    from hamsweep.core import stats

    conf, rows = spec.confirm.confidence, []
    for attack, by_seed in counts[config].items():
        seeds, n, correct = _per_seed(counts, config, attack)
        mean, low, high = stats.class_intervals(n, correct, conf)
        base_mean, paired, diff = None, [], None
        if baseline and counts.get(baseline, {}).get(attack):
            base_seeds, bn, bc = _per_seed(counts, baseline, attack)
            # a class without examples: nan, left out
            with np.errstate(invalid="ignore", divide="ignore"):
                base_mean = np.nanmean(bc / bn, axis=0)
            paired = [s for s in seeds if s in base_seeds]
            diff = (
                _class_diff(seeds, n, correct, base_seeds, bn, bc, paired, conf) if paired else None
            )
        names = next(iter(by_seed.values()))[0]
        for c, name in enumerate(names):
            rows.append(
                {
                    "config": config,
                    "label": p.label(config),
                    "attack": attack,
                    "class_id": c,
                    "class_name": name,
                    "seeds": len(seeds),
                    "mean": _null(mean[c]),
                    "ci_low": _null(low[c]),
                    "ci_high": _null(high[c]),
                    "baseline_mean": None if base_mean is None else _null(base_mean[c]),
                    "confidence": conf,
                    "paired_seeds": len(paired) if baseline else None,
                    **_diff_cells(diff, c, len(paired), conf),
                }
            )
    return rows


def _class_diff(
    seeds: list[int],
    n: Any,
    correct: Any,
    base_seeds: list[int],
    bn: Any,
    bc: Any,
    paired: list[int],
    conf: float,
) -> tuple[Any, Any, Any]:
    """stats.class_differences of the config against its baseline over the seeds both have."""
    from hamsweep.core import stats

    mine, theirs = [seeds.index(s) for s in paired], [base_seeds.index(s) for s in paired]
    return stats.class_differences(n[mine], correct[mine], bn[theirs], bc[theirs], conf)


def _diff_cells(
    diff: tuple[Any, Any, Any] | None, c: int, paired: int, conf: float
) -> dict[str, Any]:
    """A class's difference columns: null without a paired seed (and for the baseline itself)."""
    from hamsweep.core import stats

    if diff is None or math.isnan(diff[0][c]):
        return {"diff_mean": None, "diff_low": None, "diff_high": None, "verdict": None}
    d = stats.Interval(
        float(diff[0][c]), math.nan, float(diff[1][c]), float(diff[2][c]), paired, conf
    )
    return {"diff_mean": d.mean, "diff_low": d.low, "diff_high": d.high, "verdict": d.verdict()}


def _null(x: float) -> float | None:
    """nan (no interval from one seed, a class without examples) is stored as null."""
    return None if x is None or math.isnan(x) else float(x)
