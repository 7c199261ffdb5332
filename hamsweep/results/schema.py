"""Parquet tables: schemas, the part writer, deduplicating readers, DuckDB views.

A results folder holds one sub-folder per table (``trials/``, ``epochs/``, ``classes/``), each a set of part
files. A part is written to a temporary name and renamed into place, so a reader never sees a
half-written file; a part written twice (an epoch re-run after a crash) is harmless because
readers keep the newest row of each key.

Compaction (``compact``; ``compact_live`` while a sweep runs) folds the parts into one *base* part,
``part-<stem>.base-<n>.parquet``, named after the newest part it holds (``<stem>``: its time and
pid). The base holds each key once, and every row of the parts up to its stem: readers ignore
those parts (and older bases), so a reader never counts a row twice, and a compaction killed at
any moment leaves either the old base and its parts or the new base beside parts it covers (the
next compaction deletes them). A reader deduplicates only the parts newer than the base, and keeps
the base's rows whose key none of them has: over a 10 M-row table, far cheaper than deduplicating
every part. Cheaper still, the sweep's writer marks a part *fresh* when none of its keys is on disk
yet (``BufferedWriter``; a restarted trial's epochs written again are not): when every part
newer than the base is fresh, a reader scans them and the base as they are, deduplicating nothing.
While the sweep runs, a covered part is deleted ``COVERED_GRACE_S`` after its base was written, so
that a reader that listed it first still finds it; a part deleted under a reader anyway (the end's
``compact`` deletes at once) makes the reader list and read again (``retrying``).
There is one writer per folder (the sweep's driver): a part is named when it is written.

Column names are module constants: the spec's objective is validated against them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from hamsweep.metrics import SUMMARY_KEYS

if TYPE_CHECKING:
    import duckdb

    from hamsweep.train import EpochRecord

T = TypeVar("T")

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
    "compact_live",
    "connect",
    "device_label",
    "epoch_rows",
    "eval_rows",
    "parts",
    "retrying",
    "read_pandas",
    "read_table",
    "replace_table",
    "tables",
    "trials_schema",
]

SCHEMA_VERSION = 4  # 2: epochs.flip_backs; 3: trials.stage, seed, config, baseline and the confirm tables;
# 4: trials.role names confirm trials ('confirm', 'baseline') and their number is null; trials.device, device_seconds
#    (own cost); the views add inherited and total cost (COST_COLUMNS); confirm's cost is per seed with a ratio to PGD-AT
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
        ("number", pa.int32()),  # Optuna's trial number: search trials only (null for a trunk and the confirm stage)
        ("role", pa.string()),  # search | trunk | confirm | baseline: hamsweep.keys.ROLES
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
        ("device", pa.string()),  # what device_seconds counts: gpu (resources.gpu > 0) | cpu
        ("device_seconds", pa.float64()),  # the trial's own cost: wall seconds x the GPUs (else CPUs) it reserved
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
        ("gpu_hours", pa.float64()),  # GPU-hours of its confirm trials, summed (a fork's from its warm-up on: own cost)
        ("wall_hours", pa.float64()),  # wall-clock hours of its confirm trials, summed
        ("device", pa.string()),  # what the device-hours count: gpu | cpu (resources: GPUs, else CPU cores, x wall time)
        ("own_device_hours", pa.float64()),  # mean over its seeds of a confirm trial's own device-hours
        ("inherited_device_hours", pa.float64()),  # mean over seeds of its trunk's epochs up to its fork point (COST_COLUMNS)
        ("device_hours", pa.float64()),  # own + inherited: what one seed of the config costs, mean over seeds
        ("cost_ratio", pa.float64()),  # mean over paired seeds of device_hours / the baseline's of the same seed; null for it
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
        ("mean", pa.float64()),  # mean over seeds of the class's test accuracy, a fraction in [0, 1]
        ("ci_low", pa.float64()),  # its interval, fractions in [0, 1] (stats.class_intervals: 0 and 1 stay inside)
        ("ci_high", pa.float64()),
        ("baseline_mean", pa.float64()),  # the baseline's mean for the same class, in [0, 1]; null for the baseline
        ("confidence", pa.float64()),  # two-sided coverage of both intervals, in (0, 1)
        ("paired_seeds", pa.int32()),  # seeds the config and its baseline both have; null for the baseline
        ("diff_mean", pa.float64()),  # mean over paired seeds of accuracy - the baseline's, a fraction in [-1, 1]
        ("diff_low", pa.float64()),  # its interval, fractions in [-1, 1] (stats.class_differences);
        ("diff_high", pa.float64()),  # the diff columns are null for the baseline and without a paired seed
        ("verdict", pa.string()),  # the difference in words, e.g. 'higher (95% CI excludes 0)'
    ],
    metadata=_META,
)
SCHEMAS = {TRIALS: TRIAL_SCHEMA, EPOCHS: EPOCH_SCHEMA, CLASSES: CLASS_SCHEMA, CONFIRM: CONFIRM_SCHEMA,
           CONFIRM_CLASSES: CONFIRM_CLASS_SCHEMA}
KEYS = {TRIALS: ("trial",), EPOCHS: ("trial", "epoch"), CLASSES: ("trial", "epoch", "split", "attack", "class_id"),
        CONFIRM: ("config", "attack", "metric"), CONFIRM_CLASSES: ("config", "attack", "class_id")}


PART_GLOB = "part-*.parquet"
_BASE = ".base-"  # in a base part's name: part-<stem>.base-<n>.parquet
_FRESH = ".fresh"  # in a fresh part's name: part-<stem>.fresh.parquet (PartWriter.append)
# the columns by which BufferedWriter tells a fresh part: rows of one epoch's evaluation come together
FRESH_KEYS = {EPOCHS: ("trial", "epoch"), CLASSES: ("trial", "epoch", "split", "attack")}
LIVE_PARTS = 32  # compact_live folds a table's parts into its base once this many are newer than it
COVERED_GRACE_S = 10.0  # compact_live deletes a part this long after a base covers it: a reader that listed it has read it


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

    def append(self, table: str, rows: Iterable[Mapping[str, Any]], fresh: bool = False) -> Path | None:
        """``fresh``: the writer vouches that no older part has any of these keys and that each is
        here once, so readers scan the part as it is (see ``_dedup_sql``)."""
        rows = list(rows)
        if not rows:
            return None
        data = pa.Table.from_pylist(rows, schema=self.schemas[table])
        return _write_part(self.root / table, data, fresh=fresh)


class BufferedWriter:
    """The sweep's single writer: rows are buffered and written as one part per table at most
    every ``interval_s`` seconds (``due()``), and whenever ``flush()`` is called (a trial ended).
    A ``trials`` row replaces the buffered row of the same trial: only its latest state is written.
    After a flush, a table with ``live_parts`` parts newer than its base is compacted (``compact_live``)."""

    def __init__(self, writer: PartWriter, interval_s: float = 5.0, live_parts: int = LIVE_PARTS) -> None:
        self.writer = writer
        self.interval_s = interval_s
        self.live_parts = live_parts
        self.rows: dict[str, list[Mapping[str, Any]]] = {}
        self.trials: dict[str, Mapping[str, Any]] = {}
        self.last_flush = time.monotonic()
        self.seen: dict[str, set[tuple]] = {}  # table -> the FRESH_KEYS of every row on disk

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
            self.writer.append(table, rows, fresh=self._fresh(table, rows))
        self.writer.append(TRIALS, self.trials.values())
        self.rows, self.trials = {}, {}
        compact_live(self.writer.root, limit=self.live_parts)
        self.last_flush = time.monotonic()


    def _fresh(self, table: str, rows: list[Mapping[str, Any]]) -> bool:
        """Whether ``rows`` are a fresh part: each key once, and none of their FRESH_KEYS on disk
        yet (a trial restarted from a checkpoint writes some epochs again: not fresh)."""
        by = FRESH_KEYS.get(table)
        if by is None:
            return False
        if table not in self.seen:  # a resumed sweep: what the killed driver had written
            self.seen[table] = _distinct(self.writer.root, table, by)
        coarse = {tuple(r[k] for k in by) for r in rows}
        full = {tuple(r[k] for k in KEYS[table]) for r in rows}
        fresh = coarse.isdisjoint(self.seen[table]) and len(full) == len(rows)
        self.seen[table] |= coarse
        return fresh


def _distinct(root: Path, table: str, columns: Sequence[str]) -> set[tuple]:
    """The distinct values of ``columns`` in ``table`` (its live parts hold every row)."""
    if not _has_parts(root, table):
        return set()
    import duckdb

    sql = lambda: f"SELECT DISTINCT {', '.join(columns)} FROM {_files(parts(root, table).live)}"  # noqa: E731
    return set(retrying(lambda: duckdb.connect().execute(sql()).fetchall()))


def _write_part(folder: Path, data: pa.Table, stem: str | None = None, fresh: bool = False) -> Path:
    """``data`` as a new part of ``folder``: a flush part named by the time now (readers keep the
    row of the newest part when a key repeats; ``fresh``: see ``PartWriter.append``) or, with
    ``stem``, a base covering the parts up to it."""
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time_ns()
    mark = _FRESH if fresh else ""
    name = f"part-{now:020d}-{os.getpid()}{mark}.parquet" if stem is None else f"part-{stem}{_BASE}{now:020d}.parquet"
    tmp = folder / f".{name}.tmp"
    pq.write_table(data, tmp)
    os.replace(tmp, folder / name)
    return folder / name


def _stem(part: Path) -> str:
    """'part-<time>-<pid>[.base-<n>].parquet' -> '<time>-<pid>'; stems sort as the parts were written."""
    return part.name.removeprefix("part-").split(".", 1)[0]


@dataclass(frozen=True)
class Parts:
    """A table's part files as a reader takes them: the newest base, the parts newer than it
    (oldest first), and the ones it covers (old bases and parts, left by a killed compaction)."""

    base: Path | None
    recent: list[Path]
    covered: list[Path]

    @property
    def live(self) -> list[Path]:
        return [self.base, *self.recent] if self.base is not None else list(self.recent)


def parts(root: Path, table: str) -> Parts:
    """The parts of ``table`` under ``root`` (see ``Parts``)."""
    found = sorted((Path(root) / table).glob(PART_GLOB))
    bases = [p for p in found if _BASE in p.name]
    base = max(bases, key=lambda p: (_stem(p), p.name)) if bases else None
    edge = _stem(base) if base is not None else ""
    recent = sorted((p for p in found if _BASE not in p.name and _stem(p) > edge), key=lambda p: p.name)
    return Parts(base, recent, [p for p in found if p != base and p not in recent])


def _files(paths: Sequence[Path], **options: bool) -> str:
    files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
    flags = "".join(f", {k} = {str(v).lower()}" for k, v in options.items())
    return f"read_parquet([{files}], union_by_name = true{flags})"


def _dedup_sql(root: Path, table: str) -> str:
    """One row per key: the base's rows that no newer part has, and the newest row of each key of
    the parts after the base (the last one written within a part). Over 10 M rows a plain scan
    takes ~0.2 s and a deduplication of every part ~8 s, hence the base."""
    keys = ", ".join(KEYS[table])
    found = parts(root, table)
    if all(_FRESH in p.name for p in found.recent):  # each key once in the base and these parts
        # one scan: DuckDB's windows over it are ~10x faster than over a UNION (0.1 s against 1 s, 10 M rows)
        return f"SELECT * FROM {_files(found.live)}"
    # the newest row of each key, whole. (A GROUP BY with arg_max_null per column was 4x slower
    # over 1,000 parts and 10 M rows: 49 s against 11 s; plain arg_max also skips NULLs.)
    recent = (f"SELECT * EXCLUDE (filename, file_row_number) FROM {_files(found.recent, filename=True, file_row_number=True)} "
              f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY filename DESC, file_row_number DESC) = 1")
    if found.base is None:
        return recent
    return (f"WITH recent AS ({recent}) SELECT * FROM (SELECT * FROM {_files([found.base])}) ANTI JOIN recent USING ({keys}) "
            f"UNION ALL BY NAME SELECT * FROM recent")


def retrying(read: Callable[[], T], attempts: int = 5) -> T:
    """``read()``, again when a part it had listed was deleted under it by a compaction."""
    import duckdb

    for attempt in range(attempts):
        try:
            return read()
        except (duckdb.IOException, FileNotFoundError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def check_schema(root: Path) -> None:
    """A folder written by a newer hamsweep (a schema version above ``SCHEMA_VERSION``) is refused:
    this version would misread its tables."""
    from hamsweep.errors import SpecError

    for table in SCHEMAS:
        for part in sorted((Path(root) / table).glob(PART_GLOB)):
            try:
                meta = pq.read_schema(part).metadata or {}
            except (OSError, ValueError):  # a damaged part: hamsweep.repair sets it aside
                continue
            version = int(meta.get(b"hamsweep.schema_version", b"0"))
            if version > SCHEMA_VERSION:
                raise SpecError(str(root), f"was written by a newer hamsweep ({table} has schema version {version}; this one "
                                           f"reads up to {SCHEMA_VERSION}): upgrade hamsweep to resume or read it")


def _has_parts(root: Path, table: str) -> bool:
    return any((Path(root) / table).glob(PART_GLOB))


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


# trials rows before schema 4: a confirm trial's role said 'search' (or 'trunk', the new seed's PGD-AT)
# and it carried its config's Optuna number; readers see every folder as schema 4 (keys.table_role)
_TRIALS_UPGRADE = """SELECT * REPLACE (
  CASE WHEN stage = 'confirm' AND role = 'trunk' THEN 'baseline' WHEN stage = 'confirm' AND role = 'search' THEN 'confirm'
       ELSE coalesce(role, 'search') END AS role,
  CASE WHEN stage = 'confirm' THEN NULL ELSE number END AS number) FROM ({sql})"""
_OWN_COST = "SELECT *, 'gpu' AS device, gpu_seconds AS device_seconds FROM ({sql})"  # schema < 4: only GPU time was kept
# The cost of a trial, in device-seconds (``device``: GPU-seconds, else CPU-seconds; wall time x what it reserved):
# ``device_seconds`` is what it spent itself. A fork did not train its warm-up: it inherits the share of its
# trunk's measured cost that the trunk's epochs up to the fork point took, the trunk's own cost x
# forked_at / epochs_run (its epochs are PGD-AT epochs of the same work each). Own costs add up to the
# sweep's; own + inherited is what the config would have cost alone, the figure to compare configs by.
COST_COLUMNS = {
    "inherited_device_seconds": "a fork's share of its trunk's cost: trunk device_seconds x forked_at / trunk epochs_run; 0 otherwise",
    "total_device_seconds": "device_seconds + inherited_device_seconds: what the trial's config cost to train",
}
_COST_SQL = """WITH s AS ({sql}), c AS (
  SELECT s.trial, coalesce(k.device_seconds * least(s.forked_at, k.epochs_run) / k.epochs_run, 0.0) AS inherited
  FROM s LEFT JOIN s AS k ON k.trial = s.trunk AND s.forked_at IS NOT NULL AND k.epochs_run > 0)
SELECT s.*, c.inherited AS inherited_device_seconds, s.device_seconds + c.inherited AS total_device_seconds
FROM s JOIN c USING (trial)"""


def device_label(rows: Iterable[Mapping[str, Any]]) -> str:
    """'GPU' or 'CPU': what the device-seconds (or -hours) of ``rows`` of ``trials`` or ``confirm`` count;
    GPU for rows from before schema 4, which kept GPU time only."""
    rows = list(rows)
    return "CPU" if rows and all(r.get("device") == "cpu" for r in rows) else "GPU"


def _trials_sql(sql: str, columns: set[str], costs: bool) -> str:
    """``trials``' rows ``sql`` as this version reads them: the schema-4 roles and, with ``costs``, the
    columns of ``COST_COLUMNS`` (a reader's, never stored: compaction writes what ``read_table`` gives)."""
    if {"stage", "role", "number"} <= columns:
        sql = _TRIALS_UPGRADE.format(sql=sql)
    if not costs:
        return sql
    if "device_seconds" not in columns:
        sql = _OWN_COST.format(sql=sql)
    return _COST_SQL.format(sql=sql) if {"trunk", "forked_at", "epochs_run"} <= columns else sql


def _table_sql(con: duckdb.DuckDBPyConnection, root: Path, table: str, costs: bool = False) -> str:
    """The rows of ``table`` under ``root``, one per key (``_dedup_sql``); ``trials`` as ``_trials_sql`` reads it."""
    sql = _dedup_sql(root, table)
    if table != TRIALS:
        return sql
    columns = {r[0] for r in con.execute(f"DESCRIBE {sql}").fetchall()}
    return _trials_sql(sql, columns, costs)


def connect(root: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one deduplicated view per table under ``root`` and the views of
    ``TRIAL_VIEWS``; a table with no rows yet (a sweep whose trials all failed at once) is an empty
    view with its columns."""
    import duckdb

    con = duckdb.connect()
    present = tables(root)
    for table in SCHEMAS:
        if table in present:
            con.execute(f"CREATE VIEW {table} AS {_table_sql(con, root, table, costs=True)}")
        else:  # DDL, not con.register: registering an Arrow table makes DuckDB import pandas (0.3 s)
            extra = [f"{c} DOUBLE" for c in COST_COLUMNS] if table == TRIALS else []
            con.execute(f"CREATE TABLE {table} ({', '.join([*(f'{f.name} {_duckdb_type(f.type)}' for f in SCHEMAS[table]), *extra])})")
    columns = {r[0] for r in con.execute("DESCRIBE trials").fetchall()}
    if {"trunk", "forked_at"} <= columns:  # a folder from before shared warm-ups has no forks
        for view, table in TRIAL_VIEWS.items():
            con.execute(f"CREATE VIEW {view} AS {_HISTORY_SQL.format(table=table)}")
    return con


def _duckdb_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    return {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}[t]


def read_table(root: Path, table: str) -> pa.Table:
    """A table as pyarrow, one row per key (the newest), sorted by key; empty if nothing was written.
    ``trials`` keeps the parameter columns of its parts; the fixed columns have the schema's types."""
    if not _has_parts(root, table):
        return SCHEMAS[table].empty_table()
    return retrying(lambda: _read(root, table))


def _read(root: Path, table: str) -> pa.Table:
    import duckdb

    order = ", ".join(KEYS[table])
    first = parts(root, table).live[0]
    con = duckdb.connect()
    data = con.sql(f"SELECT * FROM ({_table_sql(con, root, table)}) ORDER BY {order}").to_arrow_table()
    written = pq.read_schema(first)
    schema = pa.schema([written.field(n) if n in written.names else pa.field(n, data.schema.field(n).type) for n in data.column_names])
    return data.cast(schema.with_metadata(SCHEMAS[table].metadata))


def read_pandas(root: Path, table: str) -> Any:
    """A table as a pandas DataFrame (see ``read_table``)."""
    return read_table(root, table).to_pandas()


def compact(root: Path, keep_trials: set[str] | None = None) -> None:
    """Fold each table's parts into one base part (see the module docstring); with ``keep_trials``,
    rows of any other trial are dropped."""
    for table in SCHEMAS:
        found = parts(root, table)
        if found.live and (found.recent or found.covered or keep_trials is not None):
            _fold(root, table, keep_trials)
            _delete_covered(root, table, 0)


def compact_live(root: Path, tables: Iterable[str] = (TRIALS, EPOCHS, CLASSES), limit: int = LIVE_PARTS,
                 grace_s: float = COVERED_GRACE_S) -> list[str]:
    """While a sweep runs: fold a table's parts into its base once ``limit`` parts are newer than
    the base, so that a query reads a few files and deduplicates few rows; parts covered by a base
    for ``grace_s`` are deleted (a reader that listed them before has read them by then). Returns
    the tables folded."""
    folded = []
    for table in tables:
        found = parts(root, table)
        if len(found.recent) >= limit:
            _fold(root, table, None)
            folded.append(table)
        _delete_covered(root, table, grace_s)
    return folded


def _fold(root: Path, table: str, keep_trials: set[str] | None) -> None:
    import pyarrow.compute as pc

    found = parts(root, table)
    data = read_table(root, table)
    if keep_trials is not None and "trial" in data.column_names:
        data = data.filter(pc.is_in(data["trial"], pa.array(sorted(keep_trials), pa.string())))
    newest = found.recent[-1] if found.recent else found.base
    _write_part(Path(root) / table, data, stem=_stem(newest))


def _delete_covered(root: Path, table: str, grace_s: float) -> None:
    """Delete the parts that a base written at least ``grace_s`` ago covers."""
    bases = [(p, _stem(p), int(p.name.split(_BASE, 1)[1].split(".")[0])) for p in (Path(root) / table).glob(f"part-*{_BASE}*")]
    settled = [(stem, p.name) for p, stem, written in bases if written <= time.time_ns() - grace_s * 1e9]
    if not settled:
        return
    edge = max(settled)  # every part up to this base's stem, and every older base, is in it
    for path in parts(root, table).covered:
        if (_stem(path), path.name) < edge if _BASE in path.name else _stem(path) <= edge[0]:
            path.unlink(missing_ok=True)


def replace_table(root: Path, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """``table`` becomes exactly ``rows`` (a derived table, recomputed whole): the new part is
    renamed into place first, then the old parts go, so a crash leaves old or new rows, never none."""
    old = sorted((Path(root) / table).glob(PART_GLOB))
    _write_part(Path(root) / table, pa.Table.from_pylist(list(rows), schema=SCHEMAS[table]))
    for path in old:
        path.unlink(missing_ok=True)
