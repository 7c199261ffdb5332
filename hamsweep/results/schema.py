"""The results tables' columns: one pyarrow schema per table (``SCHEMAS``: ``trials``, ``epochs``,
``classes`` and the confirm stage's two), the key of each (``KEYS``: readers keep one row per key),
the schema version every part carries, and the builders of the rows the sweep writes
(``epoch_rows``, ``class_rows``, ``eval_rows``).

Column names are module constants: the spec's objective is validated against them
(``OBJECTIVE_COLUMNS``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from hamsweep.core.methods import CLASS_STATE as _STATE_COLUMNS
from hamsweep.core.metrics import SUMMARY_KEYS

if TYPE_CHECKING:
    from hamsweep.core.train import EpochRecord

__all__ = [
    "CLASSES",
    "CLASS_SCHEMA",
    "CLASS_STATE",
    "CLASS_STATE_SCHEMA",
    "CLEAN",
    "CONFIRM",
    "CONFIRM_CLASSES",
    "CONFIRM_CLASS_SCHEMA",
    "CONFIRM_SCHEMA",
    "EPOCHS",
    "EPOCH_SCHEMA",
    "KEYS",
    "OBJECTIVE_COLUMNS",
    "ROBUST",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "TRIALS",
    "TRIAL_SCHEMA",
    "class_rows",
    "class_state_rows",
    "epoch_rows",
    "eval_rows",
    "param_column",
    "trials_schema",
]


# 2: epochs.flip_backs; 3: trials.stage, seed, config, baseline and the confirm tables;
# 4: trials.role names confirm trials ('confirm', 'baseline') and their number is null;
#    trials.device, device_seconds (own cost); the views add inherited and total cost
#    (COST_COLUMNS); confirm's cost is per seed with a ratio to PGD-AT
# 5: the class_state table (what a method keeps per class, per epoch)
# 6: confirm.lead_* (the best config's lead over the second)
SCHEMA_VERSION = 6
TRIALS, EPOCHS, CLASSES = "trials", "epochs", "classes"
CLASS_STATE = "class_state"
# the confirm stage's statistics (hamsweep.sweep.confirm)
CONFIRM, CONFIRM_CLASSES = ("confirm", "confirm_classes")
ROBUST, CLEAN = "robust", "clean"  # prefixes of the validation summary columns in `epochs`

_SUMMARY_TYPES = {k: pa.float64() for k in SUMMARY_KEYS}
EPOCH_SCHEMA = pa.schema(
    [
        ("trial", pa.string()),
        ("epoch", pa.int32()),
        ("phase", pa.string()),
        ("seconds", pa.float64()),
        ("images", pa.int64()),
        ("images_per_s", pa.float64()),
        ("lr", pa.float64()),
        ("train_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("hard_fraction", pa.float64()),
        ("kept_fraction", pa.float64()),
        ("attack_steps", pa.int64()),
        ("attack_steps_full", pa.int64()),
        ("decision_forwards", pa.int64()),
        ("train_examples", pa.int64()),
        ("empty_batches", pa.int64()),
        ("flip_backs", pa.int64()),  # null outside HAM epochs and in parts of schema version 1
        *[(f"{ROBUST}_{k}", t) for k, t in _SUMMARY_TYPES.items()],  # validation split
        (f"{ROBUST}_worst_class", pa.int32()),
        *[(f"{CLEAN}_{k}", t) for k, t in _SUMMARY_TYPES.items()],
    ],
    metadata={"hamsweep.schema_version": str(SCHEMA_VERSION)},
)
CLASS_SCHEMA = pa.schema(
    [
        ("trial", pa.string()),
        ("epoch", pa.int32()),
        ("split", pa.string()),  # val | test
        ("attack", pa.string()),  # clean | pgd<steps> | autoattack
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("n", pa.int64()),
        ("correct", pa.int64()),
    ],
    metadata={"hamsweep.schema_version": str(SCHEMA_VERSION)},
)
# one row per trial, epoch and class of what the epoch's method trained the class with (weight, eps,
# beta, multipliers) or measured of it (HAM's hard fraction): the columns of
# ``hamsweep.core.methods.CLASS_STATE``, null where the method has no such value
CLASS_STATE_SCHEMA = pa.schema(
    [
        ("trial", pa.string()),
        ("epoch", pa.int32()),
        ("phase", pa.string()),  # the method the epoch trained with
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        *[(column, pa.float64()) for column in _STATE_COLUMNS],
    ],
    metadata={"hamsweep.schema_version": str(SCHEMA_VERSION)},
)
# one row per trial of a sweep; the searched parameters follow as columns `section_field`
TRIAL_SCHEMA = pa.schema(
    [
        ("trial", pa.string()),  # Ray Tune's trial id
        # Optuna's trial number: search trials only (null for a trunk and the confirm stage)
        ("number", pa.int32()),
        ("role", pa.string()),  # search | trunk | confirm | baseline: hamsweep.keys.ROLES
        ("trunk", pa.string()),  # a fork's trunk: the trial whose epochs 1..forked_at it continues
        # the epoch a fork started from (its warm-up); null: trained from scratch
        ("forked_at", pa.int32()),
        # a trunk's warm-up key: its checkpoints are in trunks/<trunk_key>/
        ("trunk_key", pa.string()),
        # search | confirm (the winners and PGD-AT retrained on new seeds, on the test split)
        ("stage", pa.string()),
        ("seed", pa.int64()),  # train.seed the trial trained with
        # confirm: the config it retrains (a search trial id; pgd_at:<key> for a baseline)
        ("config", pa.string()),
        # confirm: the config of the PGD-AT baseline it is compared with, seed by seed
        ("baseline", pa.string()),
        ("status", pa.string()),  # running | completed | stopped (ASHA, budget) | failed
        ("stop_reason", pa.string()),
        ("objective", pa.string()),  # the metric name, e.g. worst_robust (validation split)
        ("best_objective", pa.float64()),
        ("best_epoch", pa.int32()),
        ("last_objective", pa.float64()),
        ("epochs_run", pa.int32()),
        ("epochs", pa.int32()),  # planned
        ("restarts", pa.int32()),  # restarts from a checkpoint after a crash
        ("resumed_from", pa.int32()),  # epoch of the checkpoint the trial last continued from
        ("gpu_seconds", pa.float64()),  # wall seconds x GPUs reserved
        ("device", pa.string()),  # what device_seconds counts: gpu (resources.gpu > 0) | cpu
        # the trial's own cost: wall seconds x the GPUs (else CPUs) it reserved
        ("device_seconds", pa.float64()),
        ("wall_seconds", pa.float64()),
        ("started", pa.timestamp("ms", tz="UTC")),
        ("ended", pa.timestamp("ms", tz="UTC")),
        # the trial's latest checkpoint folder, relative to the sweep folder
        ("checkpoint", pa.string()),
        ("node", pa.string()),  # host name of the machine the trial last ran on
        ("devices", pa.string()),  # CUDA_VISIBLE_DEVICES as the trial saw it ("" = no GPU)
    ],
    metadata={"hamsweep.schema_version": str(SCHEMA_VERSION)},
)
_META = {"hamsweep.schema_version": str(SCHEMA_VERSION)}
# the confirm stage: one row per confirmed config (and baseline), attack and summary
# metric; accuracies as fractions
CONFIRM_SCHEMA = pa.schema(
    [
        # trials.config: a search trial id, or pgd_at:<key> for the PGD-AT baseline
        ("config", pa.string()),
        # '#12' (the search trial's number; 'CFA #12' in a comparison of methods) or 'PGD-AT'
        ("label", pa.string()),
        ("role", pa.string()),  # search (a confirmed config) | trunk (the PGD-AT baseline)
        ("number", pa.int32()),  # the search trial's Optuna number; null for the baseline
        ("baseline", pa.string()),  # the config it is compared with; null for the baseline
        ("attack", pa.string()),  # clean | pgd<steps> | autoattack, on the test split
        ("metric", pa.string()),  # worst | cvar | mean (metrics.summarize, over the classes)
        ("seeds", pa.int32()),  # seeds with a test evaluation
        ("mean", pa.float64()),  # mean over seeds
        ("std", pa.float64()),  # sample standard deviation over seeds (ddof 1); null for one seed
        ("ci_low", pa.float64()),  # t-interval of the mean over seeds
        ("ci_high", pa.float64()),
        # mean of the paired per-seed differences to the baseline (same seed)
        ("diff_mean", pa.float64()),
        # t-interval of the paired differences; with seeds in rounds, the group-sequential test's
        # repeated confidence interval at the look that decided (hamsweep.core.sequential)
        ("diff_low", pa.float64()),
        ("diff_high", pa.float64()),
        ("paired_seeds", pa.int32()),  # seeds both have
        # the difference in words, e.g. 'no clear difference (95% CI includes 0)'
        ("verdict", pa.string()),
        ("confidence", pa.float64()),  # two-sided coverage of the intervals
        ("search_objective", pa.string()),  # the validation metric the search ranked by
        # its value at the search trial's best epoch: what got the config chosen
        ("search_value", pa.float64()),
        # GPU-hours of its confirm trials, summed (a fork's from its warm-up on: own cost)
        ("gpu_hours", pa.float64()),
        ("wall_hours", pa.float64()),  # wall-clock hours of its confirm trials, summed
        # what the device-hours count: gpu | cpu (resources: GPUs, else CPU cores, x wall time)
        ("device", pa.string()),
        # mean over its seeds of a confirm trial's own device-hours
        ("own_device_hours", pa.float64()),
        # mean over seeds of its trunk's epochs up to its fork point (COST_COLUMNS)
        ("inherited_device_hours", pa.float64()),
        # own + inherited: what one seed of the config costs, mean over seeds
        ("device_hours", pa.float64()),
        # mean over paired seeds of device_hours / the baseline's of the same seed; null for it
        ("cost_ratio", pa.float64()),
        # the best config's lead over the second (by their confirmed mean of the objective, on the
        # test split under PGD), filled on the best config's rows only: is the winner's lead real?
        ("lead_over", pa.string()),  # the second's label
        ("lead_mean", pa.float64()),  # mean of the paired per-seed differences best - second
        ("lead_low", pa.float64()),  # their interval, as diff_low's
        ("lead_high", pa.float64()),
        ("lead_verdict", pa.string()),  # in words, as verdict
    ],
    metadata=_META,
)
CONFIRM_CLASS_SCHEMA = pa.schema(
    [
        ("config", pa.string()),
        ("label", pa.string()),
        ("attack", pa.string()),
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("seeds", pa.int32()),
        # mean over seeds of the class's test accuracy, a fraction in [0, 1]
        ("mean", pa.float64()),
        # its interval, fractions in [0, 1] (stats.class_intervals: 0 and 1 stay inside)
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        # the baseline's mean for the same class, in [0, 1]; null for the baseline
        ("baseline_mean", pa.float64()),
        ("confidence", pa.float64()),  # two-sided coverage of both intervals, in (0, 1)
        # seeds the config and its baseline both have; null for the baseline
        ("paired_seeds", pa.int32()),
        # mean over paired seeds of accuracy - the baseline's, a fraction in [-1, 1]
        ("diff_mean", pa.float64()),
        ("diff_low", pa.float64()),  # its interval, fractions in [-1, 1] (stats.class_differences);
        # the diff columns are null for the baseline and without a paired seed
        ("diff_high", pa.float64()),
        ("verdict", pa.string()),  # the difference in words, e.g. 'higher (95% CI excludes 0)'
    ],
    metadata=_META,
)
SCHEMAS = {
    TRIALS: TRIAL_SCHEMA,
    EPOCHS: EPOCH_SCHEMA,
    CLASSES: CLASS_SCHEMA,
    CLASS_STATE: CLASS_STATE_SCHEMA,
    CONFIRM: CONFIRM_SCHEMA,
    CONFIRM_CLASSES: CONFIRM_CLASS_SCHEMA,
}
KEYS = {
    TRIALS: ("trial",),
    EPOCHS: ("trial", "epoch"),
    CLASSES: ("trial", "epoch", "split", "attack", "class_id"),
    CLASS_STATE: ("trial", "epoch", "class_id"),
    CONFIRM: ("config", "attack", "metric"),
    CONFIRM_CLASSES: ("config", "attack", "class_id"),
}


def param_column(key: str) -> str:
    """'ham.drop_step' -> 'ham_drop_step': searched parameters as plain SQL column names."""
    return key.replace(".", "_")


def trials_schema(param_types: Mapping[str, pa.DataType]) -> pa.Schema:
    """The ``trials`` schema of one sweep: the fixed columns, then one per searched parameter."""
    fields = [pa.field(param_column(k), t) for k, t in param_types.items()]
    return pa.schema([*TRIAL_SCHEMA, *fields], metadata=TRIAL_SCHEMA.metadata)


OBJECTIVE_COLUMNS = tuple(f"{ROBUST}_{k}" for k in SUMMARY_KEYS)  # what a sweep may optimise


def epoch_rows(trial: str, record: EpochRecord, cvar_fraction: float) -> list[dict[str, Any]]:
    """One row for ``epochs``: the record's scalars plus the validation summaries
    (null if not evaluated)."""
    row: dict[str, Any] = {
        "trial": trial,
        **{k: v for k, v in record.to_dict().items() if k != "evals"},
    }
    val = [e for e in record.evals if e.split == "val"]
    for e in val:
        prefix = CLEAN if e.attack == "clean" else ROBUST
        summary = e.summary(cvar_fraction)
        row.update({f"{prefix}_{k}": summary[k] for k in SUMMARY_KEYS})
        if prefix == ROBUST:
            row[f"{ROBUST}_worst_class"] = int(summary["worst_class"])
    return [row]


def class_rows(trial: str, record: EpochRecord, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (split, attack, class) of the record's evaluations, for ``classes``."""
    return eval_rows(trial, record.epoch, record.evals, class_names)


def class_state_rows(
    trial: str, record: EpochRecord, class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per class of the record's ``class_state``, for ``class_state`` (none when the
    epoch's method keeps nothing per class)."""
    if not record.class_state:
        return []
    return [
        {
            "trial": trial,
            "epoch": record.epoch,
            "phase": record.phase,
            "class_id": c,
            "class_name": name,
            **{k: values[c] for k, values in record.class_state.items()},
        }
        for c, name in enumerate(class_names)
    ]


def eval_rows(
    trial: str, epoch: int, evals: Iterable[Any], class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per (split, attack, class) of ``evals`` (``EvalCounts``) of ``epoch``'s model."""
    return [
        {
            "trial": trial,
            "epoch": epoch,
            "split": e.split,
            "attack": e.attack,
            "class_id": c,
            "class_name": class_names[c],
            "n": n,
            "correct": k,
        }
        for e in evals
        for c, (n, k) in enumerate(zip(e.n, e.correct))
    ]
