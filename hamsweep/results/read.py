"""Reading a results folder: one row per key, as this version reads it, as pyarrow
(``read_table``, ``read_pandas``) or as an in-memory DuckDB with one view per table (``connect``).

A base part holds each key once, and every row of the parts up to its stem: readers ignore those
parts (and older bases), so a reader never counts a row twice. A reader deduplicates only the parts
newer than the base, and keeps the base's rows whose key none of them has: over a 10 M-row table,
far cheaper than deduplicating every part. Cheaper still, when every part newer than the base is
*fresh* (none of its keys was on disk when it was written), a reader scans them and the base as
they are, deduplicating nothing. A part deleted under a reader by a compaction makes the reader
list and read again (``retrying``).

Older folders read as the current schema (``_TRIALS_UPGRADE``), a folder of a newer hamsweep is
refused (``check_schema``), and the views add each trial's cost columns (``COST_COLUMNS``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from hamsweep.results.layout import _FRESH, PART_GLOB, _has_parts, parts, tables
from hamsweep.results.schema import (
    CLASS_STATE,
    CLASSES,
    EPOCHS,
    KEYS,
    SCHEMA_VERSION,
    SCHEMAS,
    TRIALS,
)

if TYPE_CHECKING:
    import duckdb

__all__ = [
    "COST_COLUMNS",
    "TRIAL_VIEWS",
    "check_schema",
    "connect",
    "device_label",
    "read_pandas",
    "read_table",
    "retrying",
]


T = TypeVar("T")


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
        # one scan: DuckDB's windows over it are ~10x faster than over a UNION (0.1
        # s against 1 s, 10 M rows)
        return f"SELECT * FROM {_files(found.live)}"
    # the newest row of each key, whole. (A GROUP BY with arg_max_null per column was 4x slower
    # over 1,000 parts and 10 M rows: 49 s against 11 s; plain arg_max also skips NULLs.)
    recent = (
        "SELECT * EXCLUDE (filename, file_row_number) FROM "
        f"{_files(found.recent, filename=True, file_row_number=True)} QUALIFY row_number() OVER "
        f"(PARTITION BY {keys} ORDER BY filename DESC, file_row_number DESC) = 1"
    )
    if found.base is None:
        return recent
    return (
        f"WITH recent AS ({recent}) SELECT * FROM (SELECT * FROM {_files([found.base])}) ANTI JOIN "
        f"recent USING ({keys}) UNION ALL BY NAME SELECT * FROM recent"
    )


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
            except (OSError, ValueError):  # a damaged part: hamsweep.sweep.repair sets it aside
                continue
            version = int(meta.get(b"hamsweep.schema_version", b"0"))
            if version > SCHEMA_VERSION:
                raise SpecError(
                    str(root),
                    f"was written by a newer hamsweep ({table} has schema version {version}; this "
                    f"one reads up to {SCHEMA_VERSION}): upgrade hamsweep to resume or read it",
                )


# A fork's own rows start after its warm-up; its first ``forked_at`` epochs are its trunk's rows
# (stored once). These views give every trial its whole history, inherited epochs marked.
TRIAL_VIEWS = {
    # every epoch of every trial, a fork's warm-up (its trunk's rows) included
    "trial_epochs": EPOCHS,
    "trial_classes": CLASSES,  # the same for the per-class rows
    "trial_class_state": CLASS_STATE,  # and for what the method kept per class
}
_HISTORY_SQL = """SELECT t.trial, x.* EXCLUDE (trial), x.trial <> t.trial AS inherited
FROM trials t JOIN {table} x ON x.trial = t.trial OR \
(x.trial = t.trunk AND x.epoch <= t.forked_at)"""


# trials rows before schema 4: a confirm trial's role said 'search' (or 'trunk', the new seed's
# PGD-AT) and it carried its config's Optuna number; readers see every folder as
# schema 4 (keys.table_role)
_TRIALS_UPGRADE = """SELECT * REPLACE (
  CASE WHEN stage = 'confirm' AND role = 'trunk' THEN 'baseline' \
WHEN stage = 'confirm' AND role = 'search' THEN 'confirm'
       ELSE coalesce(role, 'search') END AS role,
  CASE WHEN stage = 'confirm' THEN NULL ELSE number END AS number) FROM ({sql})"""
# schema < 4: only GPU time was kept
_OWN_COST = "SELECT *, 'gpu' AS device, gpu_seconds AS device_seconds FROM ({sql})"
# The cost of a trial, in device-seconds (``device``: GPU-seconds, else CPU-seconds; wall time x
# what it reserved): ``device_seconds`` is what it spent itself. A fork did not train its warm-up:
# it inherits the share of its trunk's measured cost that the trunk's epochs up to the fork point
# took, the trunk's own cost x forked_at / epochs_run (its epochs are PGD-AT epochs of the same work
# each). Own costs add up to the sweep's; own + inherited is what the config would have cost alone,
# the figure to compare configs by.
COST_COLUMNS = {
    "inherited_device_seconds": (
        "a fork's share of its trunk's cost: trunk device_seconds "
        "x forked_at / trunk epochs_run; 0 otherwise"
    ),
    "total_device_seconds": (
        "device_seconds + inherited_device_seconds: what the trial's config cost to train"
    ),
}
_COST_SQL = """WITH s AS ({sql}), c AS (
  SELECT s.trial, coalesce(k.device_seconds * least(s.forked_at, k.epochs_run) \
/ k.epochs_run, 0.0) AS inherited
  FROM s LEFT JOIN s AS k ON k.trial = s.trunk AND s.forked_at IS NOT NULL AND k.epochs_run > 0)
SELECT s.*, c.inherited AS inherited_device_seconds, \
s.device_seconds + c.inherited AS total_device_seconds
FROM s JOIN c USING (trial)"""


def device_label(rows: Iterable[Mapping[str, Any]]) -> str:
    """'GPU' or 'CPU': what the device-seconds (or -hours) of ``rows`` of ``trials`` or ``confirm``
    count; GPU for rows from before schema 4, which kept GPU time only."""
    rows = list(rows)
    return "CPU" if rows and all(r.get("device") == "cpu" for r in rows) else "GPU"


def _trials_sql(sql: str, columns: set[str], costs: bool) -> str:
    """``trials``' rows ``sql`` as this version reads them: the schema-4 roles and, with ``costs``,
    the columns of ``COST_COLUMNS`` (a reader's, never stored: compaction writes what
    ``read_table`` gives)."""
    if {"stage", "role", "number"} <= columns:
        sql = _TRIALS_UPGRADE.format(sql=sql)
    if not costs:
        return sql
    if "device_seconds" not in columns:
        sql = _OWN_COST.format(sql=sql)
    return _COST_SQL.format(sql=sql) if {"trunk", "forked_at", "epochs_run"} <= columns else sql


def _table_sql(con: duckdb.DuckDBPyConnection, root: Path, table: str, costs: bool = False) -> str:
    """The rows of ``table`` under ``root``, one per key (``_dedup_sql``); ``trials`` as
    ``_trials_sql`` reads it."""
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
        else:
            # DDL, not con.register: registering an Arrow table makes DuckDB import pandas (0.3 s)
            extra = [f"{c} DOUBLE" for c in COST_COLUMNS] if table == TRIALS else []
            column_defs = [*(f"{f.name} {_duckdb_type(f.type)}" for f in SCHEMAS[table]), *extra]
            con.execute(f"CREATE TABLE {table} ({', '.join(column_defs)})")
    columns = {r[0] for r in con.execute("DESCRIBE trials").fetchall()}
    if {"trunk", "forked_at"} <= columns:  # a folder from before shared warm-ups has no forks
        for view, table in TRIAL_VIEWS.items():
            con.execute(f"CREATE VIEW {view} AS {_HISTORY_SQL.format(table=table)}")
    return con


def _duckdb_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    return {
        pa.string(): "VARCHAR",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float64(): "DOUBLE",
        pa.bool_(): "BOOLEAN",
    }[t]


def read_table(root: Path, table: str) -> pa.Table:
    """A table as pyarrow, one row per key (the newest), sorted by key; empty if nothing was
    written. ``trials`` keeps the parameter columns of its parts; the fixed columns
    have the schema's types."""
    if not _has_parts(root, table):
        return SCHEMAS[table].empty_table()
    return retrying(lambda: _read(root, table))


def _read(root: Path, table: str) -> pa.Table:
    import duckdb

    order = ", ".join(KEYS[table])
    first = parts(root, table).live[0]
    con = duckdb.connect()
    data = con.sql(
        f"SELECT * FROM ({_table_sql(con, root, table)}) ORDER BY {order}"
    ).to_arrow_table()
    written = pq.read_schema(first)
    schema = pa.schema(
        [
            written.field(n) if n in written.names else pa.field(n, data.schema.field(n).type)
            for n in data.column_names
        ]
    )
    return data.cast(schema.with_metadata(SCHEMAS[table].metadata))


def read_pandas(root: Path, table: str) -> Any:
    """A table as a pandas DataFrame (see ``read_table``)."""
    return read_table(root, table).to_pandas()
