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

from hamsweep.sweep.confirm._cost import baseline_epochs, confirm_cost
from hamsweep.sweep.confirm._evaluate import evaluate_top
from hamsweep.sweep.confirm._plan import (
    BASELINE_LABEL,
    CONFIRM_FILE,
    FIRST_NUMBER,
    TRADES_DEFAULTS,
    Chosen,
    ConfirmPlan,
    add_round,
    confirms_trades,
    early_baselines,
    new_seeds,
    plan_confirm,
    read_plan,
    seeds_of,
    trades_reference,
    write_plan,
)
from hamsweep.sweep.confirm._rounds import test_objective, undecided
from hamsweep.sweep.confirm._tables import write_tables

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
