"""The confirm stage's plan: what it confirms (each method's best, TRADES at its defaults, PGD-AT
on each schedule), on which new seeds, as which trials, in which order; kept as ``confirm.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hamsweep.core import methods
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
    "confirms_trades",
    "early_baselines",
    "new_seeds",
    "plan_confirm",
    "read_plan",
    "seeds_of",
    "trades_reference",
    "write_plan",
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

    def baseline_of(self, config: str) -> str:
        """The baseline CONFIG a chosen ``config`` is paired with, as its trials hold it."""
        return next(t[BASELINE] for t in self.trials if t.get(CONFIG) == config)

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
