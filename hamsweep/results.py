"""Parquet tables: schemas, the part writer, deduplicating readers, DuckDB views.

A results folder holds one sub-folder per table (``trials/``, ``epochs/``, ``classes/``), each a set of part
files. A part is written to a temporary name and renamed into place, so a reader never sees a
half-written file; a part written twice (an epoch re-run after a crash) is harmless because
readers keep the newest row of each key. ``compact`` folds the parts into one.

Column names are module constants: the spec's objective is validated against them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from hamsweep.metrics import SUMMARY_KEYS

if TYPE_CHECKING:
    import duckdb

    from hamsweep.train import EpochRecord

__all__ = [
    "CLASSES",
    "CONFIRM",
    "CONFIRM_CLASSES",
    "EPOCHS",
    "SCHEMA_VERSION",
    "TRIALS",
    "BufferedWriter",
    "check_schema",
    "PartWriter",
    "class_rows",
    "compact",
    "connect",
    "epoch_rows",
    "eval_rows",
    "read_pandas",
    "read_table",
    "replace_table",
    "tables",
    "trials_schema",
]

SCHEMA_VERSION = 3  # 2: epochs.flip_backs; 3: trials.stage, seed, config, baseline and the confirm tables
TRIALS, EPOCHS, CLASSES = "trials", "epochs", "classes"
CONFIRM, CONFIRM_CLASSES = "confirm", "confirm_classes"  # the confirm stage's statistics (hamsweep.confirm)
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
# one row per trial of a sweep; the searched parameters follow as columns `section_field`
TRIAL_SCHEMA = pa.schema(
    [
        ("trial", pa.string()),  # Ray Tune's trial id
        ("number", pa.int32()),  # Optuna's trial number (null for a trunk)
        ("role", pa.string()),  # search | trunk (a shared PGD-AT warm-up run to the end: the PGD-AT baseline)
        ("trunk", pa.string()),  # a fork's trunk: the trial whose epochs 1..forked_at it continues
        ("forked_at", pa.int32()),  # the epoch a fork started from (its warm-up); null: trained from scratch
        ("trunk_key", pa.string()),  # a trunk's warm-up key: its checkpoints are in trunks/<trunk_key>/
        ("stage", pa.string()),  # search | confirm (the winners and PGD-AT retrained on new seeds, on the test split)
        ("seed", pa.int64()),  # train.seed the trial trained with
        ("config", pa.string()),  # confirm: the config it retrains (a search trial id; pgd_at:<key> for a baseline)
        ("baseline", pa.string()),  # confirm: the config of the PGD-AT baseline it is compared with, seed by seed
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
        ("wall_seconds", pa.float64()),
        ("started", pa.timestamp("ms", tz="UTC")),
        ("ended", pa.timestamp("ms", tz="UTC")),
        ("checkpoint", pa.string()),  # the trial's latest checkpoint folder, relative to the sweep folder
        ("node", pa.string()),  # host name of the machine the trial last ran on
        ("devices", pa.string()),  # CUDA_VISIBLE_DEVICES as the trial saw it ("" = no GPU)
    ],
    metadata={"hamsweep.schema_version": str(SCHEMA_VERSION)},
)
_META = {"hamsweep.schema_version": str(SCHEMA_VERSION)}
# the confirm stage: one row per confirmed config (and baseline), attack and summary metric; accuracies as fractions
CONFIRM_SCHEMA = pa.schema(
    [
        ("config", pa.string()),  # trials.config: a search trial id, or pgd_at:<key> for the PGD-AT baseline
        ("label", pa.string()),  # '#12' (the search trial's number) or 'PGD-AT'
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
        ("diff_mean", pa.float64()),  # mean of the paired per-seed differences to the baseline (same seed)
        ("diff_low", pa.float64()),  # t-interval of the paired differences
        ("diff_high", pa.float64()),
        ("paired_seeds", pa.int32()),  # seeds both have
        ("verdict", pa.string()),  # the difference in words, e.g. 'no clear difference (95% CI includes 0)'
        ("confidence", pa.float64()),  # two-sided coverage of the intervals
        ("search_objective", pa.string()),  # the validation metric the search ranked by
        ("search_value", pa.float64()),  # its value at the search trial's best epoch: what got the config chosen
        ("gpu_hours", pa.float64()),  # GPU-hours of its confirm trials (a fork's from its warm-up on)
        ("wall_hours", pa.float64()),  # wall-clock hours of its confirm trials, summed
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
        ("mean", pa.float64()),  # mean over seeds of the class's test accuracy
        ("ci_low", pa.float64()),  # two-stage bootstrap (seeds, then test images): stats.class_intervals
        ("ci_high", pa.float64()),
        ("baseline_mean", pa.float64()),  # the baseline's mean for the same class; null for the baseline
        ("confidence", pa.float64()),
    ],
    metadata=_META,
)
SCHEMAS = {TRIALS: TRIAL_SCHEMA, EPOCHS: EPOCH_SCHEMA, CLASSES: CLASS_SCHEMA, CONFIRM: CONFIRM_SCHEMA,
           CONFIRM_CLASSES: CONFIRM_CLASS_SCHEMA}
KEYS = {TRIALS: ("trial",), EPOCHS: ("trial", "epoch"), CLASSES: ("trial", "epoch", "split", "attack", "class_id"),
        CONFIRM: ("config", "attack", "metric"), CONFIRM_CLASSES: ("config", "attack", "class_id")}


def param_column(key: str) -> str:
    """'ham.drop_step' -> 'ham_drop_step': searched parameters as plain SQL column names."""
    return key.replace(".", "_")


def trials_schema(param_types: Mapping[str, pa.DataType]) -> pa.Schema:
    """The ``trials`` schema of one sweep: the fixed columns, then one per searched parameter."""
    fields = [pa.field(param_column(k), t) for k, t in param_types.items()]
    return pa.schema([*TRIAL_SCHEMA, *fields], metadata=TRIAL_SCHEMA.metadata)
OBJECTIVE_COLUMNS = tuple(f"{ROBUST}_{k}" for k in SUMMARY_KEYS)  # what a sweep may optimise


def epoch_rows(trial: str, record: EpochRecord, cvar_fraction: float) -> list[dict[str, Any]]:
    """One row for ``epochs``: the record's scalars plus the validation summaries (null if not evaluated)."""
    row: dict[str, Any] = {"trial": trial, **{k: v for k, v in record.to_dict().items() if k != "evals"}}
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


def eval_rows(trial: str, epoch: int, evals: Iterable[Any], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (split, attack, class) of ``evals`` (``EvalCounts``) of ``epoch``'s model."""
    return [
        {"trial": trial, "epoch": epoch, "split": e.split, "attack": e.attack, "class_id": c,
         "class_name": class_names[c], "n": n, "correct": k}
        for e in evals
        for c, (n, k) in enumerate(zip(e.n, e.correct))
    ]


class PartWriter:
    """Appends rows to a results folder as atomically renamed Parquet parts."""

    def __init__(self, root: Path, schemas: Mapping[str, pa.Schema] | None = None) -> None:
        self.root = Path(root)
        self.schemas = {**SCHEMAS, **(schemas or {})}  # e.g. this sweep's trials schema

    def append(self, table: str, rows: Iterable[Mapping[str, Any]]) -> Path | None:
        rows = list(rows)
        if not rows:
            return None
        data = pa.Table.from_pylist(rows, schema=self.schemas[table])
        return _write_part(self.root / table, data)


class BufferedWriter:
    """The sweep's single writer: rows are buffered and written as one part per table at most
    every ``interval_s`` seconds (``due()``), and whenever ``flush()`` is called (a trial ended).
    A ``trials`` row replaces the buffered row of the same trial: only its latest state is written."""

    def __init__(self, writer: PartWriter, interval_s: float = 5.0) -> None:
        self.writer = writer
        self.interval_s = interval_s
        self.rows: dict[str, list[Mapping[str, Any]]] = {}
        self.trials: dict[str, Mapping[str, Any]] = {}
        self.last_flush = time.monotonic()

    def add(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        if table == TRIALS:
            self.trials.update({r["trial"]: r for r in rows})
        else:
            self.rows.setdefault(table, []).extend(rows)

    def due(self) -> bool:
        return time.monotonic() - self.last_flush >= self.interval_s

    def flush(self) -> None:
        # epochs and classes first: a trials row never points at epochs not yet on disk
        for table, rows in self.rows.items():
            self.writer.append(table, rows)
        self.writer.append(TRIALS, self.trials.values())
        self.rows, self.trials = {}, {}
        self.last_flush = time.monotonic()


def _write_part(folder: Path, data: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # time-ordered names: readers keep the row from the newest part when a key repeats
    name = f"part-{time.time_ns():020d}-{os.getpid()}.parquet"
    tmp = folder / f".{name}.tmp"
    pq.write_table(data, tmp)
    os.replace(tmp, folder / name)
    return folder / name


def _parts_glob(root: Path, table: str) -> str:
    return str(Path(root) / table / "part-*.parquet")


def _dedup_sql(root: Path, table: str) -> str:
    keys = ", ".join(KEYS[table])
    if len(list((Path(root) / table).glob("part-*.parquet"))) == 1:
        # one part: written by `compact` (or once), so each key is there once; a plain scan of
        # 10 M rows takes ~0.2 s, the deduplication below ~8 s
        return f"SELECT * FROM read_parquet('{_parts_glob(root, table)}')"
    # the newest part's row of each key, whole. (A GROUP BY with arg_max_null per column was 4x
    # slower over 1,000 parts and 10 M rows: 49 s against 11 s; plain arg_max also skips NULLs.)
    return (
        f"SELECT * EXCLUDE (filename) FROM read_parquet('{_parts_glob(root, table)}', filename = true, union_by_name = true) "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY filename DESC) = 1"
    )


def check_schema(root: Path) -> None:
    """A folder written by a newer hamsweep (a schema version above ``SCHEMA_VERSION``) is refused:
    this version would misread its tables."""
    from hamsweep.errors import SpecError

    for table in SCHEMAS:
        for part in sorted((Path(root) / table).glob("part-*.parquet")):
            try:
                meta = pq.read_schema(part).metadata or {}
            except (OSError, ValueError):  # a damaged part: hamsweep.repair sets it aside
                continue
            version = int(meta.get(b"hamsweep.schema_version", b"0"))
            if version > SCHEMA_VERSION:
                raise SpecError(str(root), f"was written by a newer hamsweep ({table} has schema version {version}; this one "
                                           f"reads up to {SCHEMA_VERSION}): upgrade hamsweep to resume or read it")


def _has_parts(root: Path, table: str) -> bool:
    return any((Path(root) / table).glob("part-*.parquet"))


def tables(root: Path) -> list[str]:
    """The tables with at least one part under ``root``."""
    return [t for t in SCHEMAS if _has_parts(root, t)]


# A fork's own rows start after its warm-up; its first ``forked_at`` epochs are its trunk's rows
# (stored once). These views give every trial its whole history, inherited epochs marked.
TRIAL_VIEWS = {
    "trial_epochs": EPOCHS,  # every epoch of every trial, a fork's warm-up (its trunk's rows) included
    "trial_classes": CLASSES,  # the same for the per-class rows
}
_HISTORY_SQL = """SELECT t.trial, x.* EXCLUDE (trial), x.trial <> t.trial AS inherited
FROM trials t JOIN {table} x ON x.trial = t.trial OR (x.trial = t.trunk AND x.epoch <= t.forked_at)"""


def connect(root: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one deduplicated view per table under ``root`` and the views of
    ``TRIAL_VIEWS``; a table with no rows yet (a sweep whose trials all failed at once) is an empty
    view with its columns."""
    import duckdb

    con = duckdb.connect()
    present = tables(root)
    for table in SCHEMAS:
        if table in present:
            con.execute(f"CREATE VIEW {table} AS {_dedup_sql(root, table)}")
        else:
            con.register(table, SCHEMAS[table].empty_table())
    columns = {r[0] for r in con.execute("DESCRIBE trials").fetchall()}
    if {"trunk", "forked_at"} <= columns:  # a folder from before shared warm-ups has no forks
        for view, table in TRIAL_VIEWS.items():
            con.execute(f"CREATE VIEW {view} AS {_HISTORY_SQL.format(table=table)}")
    return con


def read_table(root: Path, table: str) -> pa.Table:
    """A table as pyarrow, one row per key (the newest), sorted by key; empty if nothing was written.
    ``trials`` keeps the parameter columns of its parts; the fixed columns have the schema's types."""
    if not _has_parts(root, table):
        return SCHEMAS[table].empty_table()
    import duckdb

    order = ", ".join(KEYS[table])
    data = duckdb.connect().sql(f"SELECT * FROM ({_dedup_sql(root, table)}) ORDER BY {order}").to_arrow_table()
    written = pq.read_schema(next((Path(root) / table).glob("part-*.parquet")))
    schema = pa.schema([written.field(n) if n in written.names else pa.field(n, data.schema.field(n).type) for n in data.column_names])
    return data.cast(schema.with_metadata(SCHEMAS[table].metadata))


def read_pandas(root: Path, table: str) -> Any:
    """A table as a pandas DataFrame (see ``read_table``)."""
    return read_table(root, table).to_pandas()


def compact(root: Path, keep_trials: set[str] | None = None) -> None:
    """Fold each table's parts into one part (written first, so a crash loses nothing); with
    ``keep_trials``, rows of any other trial are dropped."""
    import pyarrow.compute as pc

    for table in SCHEMAS:
        old = sorted((Path(root) / table).glob("part-*.parquet"))
        if len(old) <= 1 and keep_trials is None or not old:
            continue
        data = read_table(root, table)
        if keep_trials is not None and "trial" in data.column_names:
            data = data.filter(pc.is_in(data["trial"], pa.array(sorted(keep_trials), pa.string())))
        _replace_parts(root, table, data, old)


def replace_table(root: Path, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """``table`` becomes exactly ``rows`` (a derived table, recomputed whole): the new part is
    renamed into place first, then the old parts go, so a crash leaves old or new rows, never none."""
    old = sorted((Path(root) / table).glob("part-*.parquet"))
    _replace_parts(root, table, pa.Table.from_pylist(list(rows), schema=SCHEMAS[table]), old)


def _replace_parts(root: Path, table: str, data: pa.Table, old: list[Path]) -> None:
    _write_part(Path(root) / table, data)
    for path in old:
        path.unlink()
