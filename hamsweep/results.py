"""Parquet tables: schemas, the part writer, deduplicating readers, DuckDB views.

A results folder holds one sub-folder per table (``epochs/``, ``classes/``), each a set of part
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
    "EPOCHS",
    "SCHEMA_VERSION",
    "PartWriter",
    "class_rows",
    "compact",
    "connect",
    "epoch_rows",
    "read_table",
]

SCHEMA_VERSION = 1
EPOCHS, CLASSES = "epochs", "classes"
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
SCHEMAS = {EPOCHS: EPOCH_SCHEMA, CLASSES: CLASS_SCHEMA}
KEYS = {EPOCHS: ("trial", "epoch"), CLASSES: ("trial", "epoch", "split", "attack", "class_id")}
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
    return [
        {"trial": trial, "epoch": record.epoch, "split": e.split, "attack": e.attack, "class_id": c,
         "class_name": class_names[c], "n": n, "correct": k}
        for e in record.evals
        for c, (n, k) in enumerate(zip(e.n, e.correct))
    ]


class PartWriter:
    """Appends rows to a results folder as atomically renamed Parquet parts."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def append(self, table: str, rows: Iterable[Mapping[str, Any]]) -> Path | None:
        rows = list(rows)
        if not rows:
            return None
        data = pa.Table.from_pylist(rows, schema=SCHEMAS[table])
        return _write_part(self.root / table, data)


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
    cols = ", ".join(SCHEMAS[table].names)
    return (
        f"SELECT {cols} FROM read_parquet('{_parts_glob(root, table)}', filename = true, union_by_name = true) "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY filename DESC) = 1"
    )


def connect(root: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one deduplicated view per table that has parts under ``root``."""
    import duckdb

    con = duckdb.connect()
    for table in SCHEMAS:
        if any((Path(root) / table).glob("part-*.parquet")):
            con.execute(f"CREATE VIEW {table} AS {_dedup_sql(root, table)}")
    return con


def read_table(root: Path, table: str) -> pa.Table:
    """A table as pyarrow, one row per key (the newest), sorted by key; empty if nothing was written."""
    if not any((Path(root) / table).glob("part-*.parquet")):
        return SCHEMAS[table].empty_table()
    import duckdb

    order = ", ".join(KEYS[table])
    rel = duckdb.connect().sql(f"SELECT * FROM ({_dedup_sql(root, table)}) ORDER BY {order}")
    return rel.to_arrow_table().cast(SCHEMAS[table])


def compact(root: Path) -> None:
    """Fold each table's parts into one part (written first, so a crash loses nothing)."""
    for table in SCHEMAS:
        old = sorted((Path(root) / table).glob("part-*.parquet"))
        if len(old) <= 1:
            continue
        _write_part(Path(root) / table, read_table(root, table))
        for path in old:
            path.unlink()
