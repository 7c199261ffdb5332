"""The confirm stage: the search's winners against PGD-AT, over new seeds, on the test split.

A sweep picks the maximum of many noisy validation numbers, so its winner is partly chosen for its
luck. After the search, ``confirm.top_k`` completed trials (by the validation objective at their
best epoch) and the PGD-AT baseline are trained again on ``confirm.seeds`` new values of
``train.seed`` (init, data order, attacks; the train/validation split stays), each evaluated per
class on the test split from its best checkpoint (chosen on validation, as in the search). These
trials are the tail of the sweep's own Tune run (``search.Searcher`` hands them out once every
search trial has ended): resumable, budgeted and drawn on the dashboard like the others.

Each new seed gets its own trunk per warm-up config (the chosen configs' ``spec.trial.warmup_part``
with that seed): a PGD-AT run to the last epoch that **is** the baseline of that seed, and from
which every chosen HAM config of that seed forks at its warm-up epoch. One seed costs one trunk plus
the post-warm-up part of each config.

``write_tables`` turns the stored per-class test counts into the ``confirm`` and ``confirm_classes``
tables (``hamsweep.core.stats``: t-intervals over seeds, paired differences against PGD-AT of the
same seed, per-class intervals and paired per-class differences that keep their coverage at 0 and
100%).

With ``confirm.seeds: 0`` nothing is retrained: ``evaluate_top`` (also ``hamsweep evaluate``)
evaluates the top-k completed search trials' own ``best.pt`` and the PGD-AT baselines' in the
driver, one seed, no interval. Every test-split evaluation goes through
``evaluation.evaluate_checkpoint`` into ``classes`` with ``split = 'test'`` and ``epoch`` = the
checkpoint's epoch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hamsweep.core import methods, sequential
from hamsweep.errors import SpecError
from hamsweep.keys import BASELINE, CONFIG, CONFIRM, KEEP, NUMBER, ROLE, STAGE, TRUNK
from hamsweep.rundir import atomic_write_text
from hamsweep.spec import METHOD_KEY, SweepSpec
from hamsweep.spec.trial import WARMUP_FREE_KEYS, warmup_key

__all__ = [
    "BASELINE_LABEL",
    "CONFIRM_FILE",
    "FIRST_NUMBER",
    "TRADES_DEFAULTS",
    "Chosen",
    "ConfirmPlan",
    "add_round",
    "baseline_epochs",
    "confirm_cost",
    "confirms_trades",
    "early_baselines",
    "evaluate_top",
    "new_seeds",
    "plan_confirm",
    "read_plan",
    "seeds_of",
    "test_objective",
    "trades_reference",
    "undecided",
    "write_plan",
    "write_tables",
]

# in the sweep folder: the configs chosen for the confirm stage, its seeds and trials
CONFIRM_FILE = "confirm.json"
# confirm trials' numbers (work folders, SLURM job names): never an Optuna number of the search
FIRST_NUMBER = 1_000_000
BASELINE_LABEL = "PGD-AT"  # how a baseline is named in tables
# the CONFIG of TRADES at its defaults where no search trial ran them (``trades_reference``)
TRADES_DEFAULTS = "trades:defaults"
_TRADES = "trades"  # TRADES's train.method
# a baseline's CONFIG: the prefix and its warm-up key at the search's seed
_BASELINE_PREFIX = "pgd_at:"


@dataclass(frozen=True)
class Chosen:
    """A search trial chosen for confirmation."""

    trial: str  # its Tune trial id (``TRADES_DEFAULTS`` for a TRADES that no search trial ran)
    number: int | None  # its Optuna number (None: no search trial)
    params: dict[str, Any]  # its searched 'section.field' values
    value: float | None  # the validation objective at its best epoch: what got it chosen
    reference: bool = False  # TRADES at its defaults, confirmed as a reference (``confirm.trades``)


@dataclass(frozen=True)
class ConfirmPlan:
    """What the confirm stage trains: the chosen configs, the new seeds, and every trial's Tune
    config in the order they are handed out (for each seed its baselines first, then the
    chosen configs)."""

    chosen: tuple[Chosen, ...]
    seeds: tuple[int, ...]
    trials: tuple[dict[str, Any], ...]
    # baseline CONFIG -> its searched warm-up values (without the seed)
    baselines: dict[str, dict[str, Any]]

    def label(self, config: str) -> str:
        """'#12' for a chosen config ('CFA #12' where trials differ in method; 'TRADES (defaults)'
        or 'TRADES #3 (defaults)' for the reference), 'PGD-AT' for the baseline (with what sets it
        apart when there are several)."""
        chosen = next((c for c in self.chosen if c.trial == config), None)
        if chosen is not None:
            method = chosen.params.get("train.method")
            parts = [
                methods.get(method).title if method else "",
                "" if chosen.number is None else f"#{chosen.number}",
                "(defaults)" if chosen.reference else "",
            ]
            return " ".join(p for p in parts if p)
        params = self.baselines.get(config, {})
        if len(self.baselines) < 2 or not params:
            return BASELINE_LABEL
        others = [b for c, b in self.baselines.items() if c != config]
        differ = {k: v for k, v in params.items() if any(o.get(k) != v for o in others)}
        values = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in (differ or params).items())
        return f"{BASELINE_LABEL} ({values})"


def _short(value: Any) -> str:
    """A value as a label shows it: numbers with 4 significant digits, lists of them in []."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_short, value)) + "]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def new_seeds(spec: SweepSpec, count: int | None = None) -> tuple[int, ...]:
    """``count`` (default ``confirm.seeds``) values of ``train.seed`` that no search trial trained
    with: the next integers after the largest the search used. A later round of seeds takes the
    values after the earlier rounds' (``add_round``)."""
    dist = spec.search.space.get("train.seed")
    used = (
        [spec.train.seed]
        if dist is None
        else list(dist.choices or ()) + [b for b in (dist.low, dist.high) if isinstance(b, int)]
    )
    start = max(int(u) for u in used) + 1
    return tuple(range(start, start + (spec.confirm.seeds if count is None else count)))


def _baseline_params(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """A config's values that its PGD-AT baseline shares: its method's schedule
    (``spec.schedules``) and its searched values but the methods' own (``WARMUP_FREE_KEYS``)."""
    own = {k: v for k, v in params.items() if k not in WARMUP_FREE_KEYS}
    return {**spec.schedules().get(params.get(METHOD_KEY), {}), **own}  # type: ignore[arg-type]


def _baseline_config(spec: SweepSpec, params: dict[str, Any]) -> str:
    """The baseline CONFIG of a config: PGD-AT with its warm-up part, keyed at the search's seed (so
    it is the search trunk's key when the search had one)."""
    from hamsweep.sweep.trunk import trunk_config

    return _BASELINE_PREFIX + warmup_key(trunk_config(spec, _baseline_params(spec, params)))


def _known_baselines(spec: SweepSpec) -> dict[str, dict[str, Any]]:
    """The baselines known before the search ends, CONFIG -> values: when nothing the search varies
    changes a warm-up (every key it searches is a method's own, or ``train.method``), PGD-AT on
    each compared method's schedule (one for all but a method's own ``set``), in the spec's
    order; empty otherwise."""
    if any(k not in WARMUP_FREE_KEYS for k in spec.search.space):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for m in spec.methods:
        params = _baseline_params(spec, {METHOD_KEY: m} if spec.search.methods else {})
        out.setdefault(_baseline_config(spec, params), params)
    return out


def confirms_trades(spec: SweepSpec) -> bool:
    """Whether the confirm stage adds TRADES at its defaults (``confirm.trades``, a comparison)."""
    return bool(spec.search.methods) and spec.confirm.trades and spec.confirm.retrains


def trades_reference(
    spec: SweepSpec, chosen: list[Chosen], complete: dict[str, tuple[int, dict[str, Any], float]]
) -> Chosen | None:
    """TRADES at its defaults for the confirm stage of a comparison (``confirm.trades``): a search
    trial of them when one completed, else a config no search trial ran (``TRADES_DEFAULTS``);
    None when a chosen config is it already (or nothing is confirmed). ``complete``: Tune trial id
    -> (Optuna number, params, validation objective) of each complete search trial."""
    if not chosen or not confirms_trades(spec):
        return None
    if _TRADES in spec.search.methods:
        defaults = spec.defaults(_TRADES)
    else:
        common = {k: d.default for k, d in spec.search.params.items()}
        defaults = {METHOD_KEY: _TRADES, **common}
    if any(c.params == defaults for c in chosen):
        return None
    for tid, (number, params, value) in sorted(complete.items(), key=lambda kv: kv[1][0]):
        if params == defaults:
            return Chosen(tid, number, defaults, value, reference=True)
    return Chosen(TRADES_DEFAULTS, None, defaults, None, reference=True)


def plan_confirm(spec: SweepSpec, chosen: list[Chosen]) -> ConfirmPlan:
    """The confirm trials of ``chosen`` (see the module docstring); none when nothing was chosen.
    The baselines known before the search ended come first, in the order ``early_baselines``
    numbers them."""

    seeds = new_seeds(spec) if chosen else ()
    baselines = {
        **(_known_baselines(spec) if chosen else {}),
        **{_baseline_config(spec, c.params): _baseline_params(spec, c.params) for c in chosen},
    }
    p = ConfirmPlan(tuple(chosen), (), (), baselines)
    return add_round(spec, p, {c.trial: len(seeds) for c in chosen})[0]


def add_round(
    spec: SweepSpec, p: ConfirmPlan, more: dict[str, int]
) -> tuple[ConfirmPlan, list[dict[str, Any]]]:
    """``p`` with more seeds for chosen configs (``more``: search trial id -> how many more) and
    their baselines: the plan, and the new trials in the order they are handed out (for each seed
    its baselines first, then the configs). A config's seeds are the first of the one sequence of
    new seeds (``new_seeds``) it has not had, so configs that get rounds at different times still
    share seeds and PGD-AT baselines: a baseline is added on a seed only where it has none yet,
    keeping every epoch any config it pairs with forks at. Numbers stay unique over rounds: a
    trial's number comes from its seed's index in that sequence and its config's (or baseline's)
    index among all chosen ones."""
    from hamsweep.sweep.trunk import plan

    shared = plan(spec)
    own = {c: len(seeds_of(p, c)) for c in more}
    seq = new_seeds(spec, max([len(p.seeds), *(own[c] + n for c, n in more.items())]))
    new = {c: set(seq[own[c] : own[c] + n]) for c, n in more.items()}
    has = {(t[CONFIG], t["train.seed"]) for t in p.trials}
    base = {c.trial: _baseline_config(spec, c.params) for c in p.chosen}
    trials: list[dict[str, Any]] = []
    for s, seed in enumerate(seq):
        getting = [c for c in p.chosen if seed in new.get(c.trial, ())]
        for b, (config, params) in enumerate(p.baselines.items()):
            if (config, seed) in has or all(base[c.trial] != config for c in getting):
                continue
            pairs = [c for c in p.chosen if base[c.trial] == config]
            trials.append(
                {
                    ROLE: TRUNK,
                    STAGE: CONFIRM,
                    CONFIG: config,
                    KEEP: _fork_epochs(spec, shared, pairs),
                    **params,
                    "train.seed": seed,
                    NUMBER: -(FIRST_NUMBER + 1 + s * len(p.baselines) + b),
                }
            )
        for i, c in enumerate(p.chosen):
            if c in getting:
                trials.append(
                    {
                        STAGE: CONFIRM,
                        CONFIG: c.trial,
                        BASELINE: base[c.trial],
                        **c.params,
                        "train.seed": seed,
                        NUMBER: FIRST_NUMBER + s * len(p.chosen) + i,
                    }
                )
    grown = ConfirmPlan(p.chosen, tuple(seq), p.trials + tuple(trials), p.baselines)
    return grown, trials


def seeds_of(p: ConfirmPlan, config: str) -> list[int]:
    """The seeds the plan trains chosen ``config`` (or a baseline) on, in the order added."""
    return [t["train.seed"] for t in p.trials if t.get(CONFIG) == config]


def early_baselines(spec: SweepSpec) -> list[dict[str, Any]]:
    """The first round's PGD-AT baselines, one per new seed and schedule, when they are known before
    the search ends (``_known_baselines``): they may then train while the search's slots would idle
    (``stages.Stages.early_baseline``), keeping every epoch a chosen config may fork at. Empty when
    the baseline depends on what the search chooses, nothing is retrained, or
    ``confirm.early`` is false."""
    from hamsweep.sweep.trunk import plan

    known = _known_baselines(spec)
    if not spec.confirm.retrains or not spec.confirm.early or not known:
        return []
    # a chosen config may fork at any epoch the search trunk of its schedule keeps
    keep = {_BASELINE_PREFIX + t.key: list(t.keep) for t in plan(spec).trunks}
    return [
        {
            ROLE: TRUNK,
            STAGE: CONFIRM,
            CONFIG: config,
            KEEP: keep.get(config, []),
            **params,
            "train.seed": seed,
            NUMBER: -(FIRST_NUMBER + 1 + s * len(known) + b),  # as ``add_round`` numbers them
        }
        for s, seed in enumerate(new_seeds(spec))
        for b, (config, params) in enumerate(known.items())
    ]


def test_objective(spec: SweepSpec, result: dict[str, Any]) -> float | None:
    """The objective (``objective.primary`` on PGD-``eval.attack_steps``) of a confirm trial's
    test evaluation, the number seeds in rounds are decided on; None without one (it failed)."""
    from hamsweep.core.metrics import summarize
    from hamsweep.spec.trial import objective_summary

    attack = f"pgd{spec.eval.attack_steps}"
    for e in (result.get("test") or {}).get("evals", ()):
        if e["split"] == "test" and e["attack"] == attack:
            summary = summarize(np.array(e["n"]), np.array(e["correct"]), spec.eval.cvar_fraction)
            return float(summary[objective_summary(spec.objective.primary)])
    return None


def undecided(
    spec: SweepSpec, p: ConfirmPlan, values: dict[tuple[str, int], float | None]
) -> tuple[dict[str, int], bool]:
    """The chosen configs whose every trial so far (and its baseline's on the same seeds) has ended,
    whose difference to PGD-AT (``test_objective``, seed by seed) the group-sequential design
    (``core.sequential.design``) has not decided, and that may get more seeds: config -> how many
    more (to the design's next look); and whether some config still has trials running.
    ``values``: (CONFIG, seed) -> test objective (None: that trial failed) of the ended ones."""
    design = sequential.design(spec.confirm)
    if design is None:
        return {}, False
    out, running = {}, False
    for c in p.chosen:
        base, seeds = _baseline_config(spec, c.params), seeds_of(p, c.trial)
        if any((k, s) not in values for s in seeds for k in (c.trial, base)):
            running = True  # its round has not ended: decided once it has
            continue
        d = [
            values[(c.trial, s)] - values[(base, s)]  # type: ignore[operator]
            for s in seeds
            if values[(c.trial, s)] is not None and values[(base, s)] is not None
        ]
        if len(d) >= design.min_seeds and design.read(d).final:
            continue
        if len(seeds) < design.max_seeds:
            out[c.trial] = design.next_seeds(len(seeds)) - len(seeds)
    return out, running


def _fork_epochs(spec: SweepSpec, shared: Any, chosen: list[Chosen]) -> list[int]:
    """The warm-up epochs at which ``chosen`` fork from their trunk: the checkpoints it keeps."""
    cfgs = [spec.search_trial_config(c.params) for c in chosen]
    return sorted({cfg.fork_epoch() for cfg in cfgs if shared.forks(cfg)})


def write_plan(out: Path, p: ConfirmPlan) -> None:
    """The plan as ``confirm.json`` (atomically): what was chosen,
    read by ``status`` and the tables."""
    data = {
        "seeds": list(p.seeds),
        "chosen": [asdict(c) for c in p.chosen],
        "trials": list(p.trials),
        "baselines": p.baselines,
    }
    atomic_write_text(Path(out) / CONFIRM_FILE, json.dumps(data, indent=1))


def read_plan(out: Path) -> ConfirmPlan | None:
    """The folder's confirm plan; None before the search has ended (or without a confirm stage)."""
    path = Path(out) / CONFIRM_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    chosen = tuple(Chosen(**c) for c in data["chosen"])
    return ConfirmPlan(chosen, tuple(data["seeds"]), tuple(data["trials"]), data["baselines"])


# ---- the confirm tables ----
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
        baseline = (
            None
            if config in p.baselines
            else next(t[BASELINE] for t in p.trials if t.get(CONFIG) == config)
        )
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


# ---- confirm.seeds: 0, the search's own checkpoints on the test split ----
def evaluate_top(
    out: Path, spec: SweepSpec, k: int, *, autoattack: bool = False, console: Any = None
) -> int:
    """Evaluate the top-``k`` completed trials' best checkpoints on the test split, and the PGD-AT
    baselines (the trunks run to the end) beside them; returns how many. ``console``: rich's, for
    one line per evaluation."""
    from rich.console import Console

    from hamsweep.results import store as results
    from hamsweep.results.tables import top_trials

    console = console or Console()
    rows = top_trials(out, k, spec.objective.primary, completed_only=True)
    rows += top_trials(out, k, spec.objective.primary, completed_only=True, role=TRUNK)
    if not rows:
        console.print("test evaluation: no completed trial to evaluate", highlight=False)
        return 0
    writer = results.PartWriter(out)
    for row in rows:
        evals, epoch, names = _evaluate(out, spec, row, autoattack)
        writer.append(results.CLASSES, results.eval_rows(row["trial"], epoch, evals, names))
        worst = min(
            c / n for e in evals if e.attack != "clean" for n, c in zip(e.n, e.correct) if n
        )
        name = "PGD-AT baseline" if row.get("role") == TRUNK else f"#{row['number']}"
        console.print(
            f"test evaluation: trial {row['trial']} ({name}) "
            f"test worst-class robust {100 * worst:.1f}%",
            highlight=False,
        )
    return len(rows)


def _evaluate(
    out: Path, spec: SweepSpec, row: dict[str, Any], autoattack: bool
) -> tuple[list[Any], int, tuple[str, ...]]:
    from hamsweep.core import data
    from hamsweep.core.evaluation import evaluate_checkpoint
    from hamsweep.core.train import BEST, pick_device
    from hamsweep.results.store import param_column
    from hamsweep.sweep.trunk import trunk_config

    params = {k: row[param_column(k)] for k in spec.search.space}
    if row.get("role") == TRUNK:  # a trunk's row holds only its warm-up keys; HAM's are null
        cfg = trunk_config(spec, {k: v for k, v in params.items() if v is not None})
    else:
        cfg = spec.trial_config(params)
    path = Path(out) / (row["checkpoint"] or "-") / BEST
    if not row["checkpoint"] or not path.is_file():
        raise SpecError(
            str(out),
            f"trial {row['trial']} has no best checkpoint ({path}); it cannot be evaluated",
        )
    dataset = data.load(cfg.data)
    evals, epoch = evaluate_checkpoint(
        path, cfg, dataset, device=pick_device(cfg.train.device), autoattack=autoattack
    )
    return evals, epoch, tuple(dataset.classes)


# ---- what the stage costs (printed by `hamsweep validate`) ----
def confirm_cost(spec: SweepSpec) -> tuple[float, int]:
    """(predicted training epochs of the confirm stage's first round, its trials): per seed, the
    ``confirm.top_k`` configs of each method (each its epochs after its warm-up, its fork epochs
    averaged as ``trunk.predicted_cost`` does), TRADES at its defaults in a comparison
    (``confirms_trades``), and a PGD-AT baseline per schedule among them."""
    from hamsweep.sweep.trunk import plan

    c = spec.confirm
    if not c.retrains:
        return 0.0, 0
    p = plan(spec)

    def after(m: str) -> float:
        """A config of ``m``'s epochs after its fork (all of them when it does not fork)."""
        e = spec.epochs(m)
        forks = [w for w in p.fork_epochs if w < e]
        if not p.shared or not methods.get(m).fork_key or not forks:
            return float(e)
        return sum(e - w for w in forks) / len(forks)

    configs = {m: c.top_k * after(m) for m in spec.methods}
    count = c.top_k * len(spec.methods)
    if confirms_trades(spec):
        configs[_TRADES] = configs.get(_TRADES, 0.0) + spec.epochs(_TRADES)
        count += 1
    baselines = _first_baselines(spec)
    return c.seeds * (sum(baselines.values()) + sum(configs.values())), c.seeds * (
        count + len(baselines)
    )


def _first_baselines(spec: SweepSpec) -> dict[str, int]:
    """The PGD-AT baselines of the methods the confirm stage confirms (TRADES at its defaults
    included), one per schedule (``spec.schedules``): CONFIG -> its epochs."""
    confirmed = [*spec.methods, *([_TRADES] if confirms_trades(spec) else [])]
    return {_baseline_config(spec, {METHOD_KEY: m}): spec.epochs(m) for m in confirmed}


def baseline_epochs(spec: SweepSpec) -> int:
    """Training epochs of one seed's PGD-AT baselines (one per schedule, ``_first_baselines``)."""
    return sum(_first_baselines(spec).values())
