"""The results folder's public surface as one module: the Parquet tables, their writer and their
readers. The code lives in one module per job, and this module re-exports every name it held
before the split (code, notebooks and the pickles of old sweep folders import
``hamsweep.results.store``, and ``hamsweep.results`` looks its names up here):

- ``hamsweep.results.schema``: the table names, the pyarrow schemas (``SCHEMAS``, ``KEYS``,
  ``SCHEMA_VERSION``, ``trials_schema``, ``param_column``) and the row builders (``epoch_rows``,
  ``class_rows``, ``eval_rows``);
- ``hamsweep.results.layout``: the part files of a table on disk (``parts``, ``Parts``,
  ``tables``, ``PART_GLOB``) and the atomic write of one part;
- ``hamsweep.results.read``: the deduplicating readers (``read_table``, ``read_pandas``,
  ``retrying``), the DuckDB views (``connect``, ``TRIAL_VIEWS``), the upgrades of older folders
  (``check_schema``) and the cost columns (``COST_COLUMNS``, ``device_label``);
- ``hamsweep.results.writer``: the single writer (``PartWriter``, ``BufferedWriter``, ``FLUSH_S``)
  and its compaction (``compact``, ``compact_live``, ``replace_table``).
"""

from __future__ import annotations

# every name the module held, its private helpers too (tests and notebooks reach some); those
# outside ``__all__`` are re-exported all the same, hence the noqa
from hamsweep.results.layout import (  # noqa: F401
    _BASE,
    _FRESH,
    PART_GLOB,
    Parts,
    _has_parts,
    _stem,
    _write_part,
    parts,
    tables,
)
from hamsweep.results.read import (  # noqa: F401
    _COST_SQL,
    _HISTORY_SQL,
    _OWN_COST,
    _TRIALS_UPGRADE,
    COST_COLUMNS,
    TRIAL_VIEWS,
    _dedup_sql,
    _duckdb_type,
    _files,
    _read,
    _table_sql,
    _trials_sql,
    check_schema,
    connect,
    device_label,
    read_pandas,
    read_table,
    retrying,
)
from hamsweep.results.schema import (  # noqa: F401
    _META,
    _SUMMARY_TYPES,
    CLASS_SCHEMA,
    CLASS_STATE,
    CLASS_STATE_SCHEMA,
    CLASSES,
    CLEAN,
    CONFIRM,
    CONFIRM_CLASS_SCHEMA,
    CONFIRM_CLASSES,
    CONFIRM_SCHEMA,
    EPOCH_SCHEMA,
    EPOCHS,
    KEYS,
    OBJECTIVE_COLUMNS,
    ROBUST,
    SCHEMA_VERSION,
    SCHEMAS,
    TRIAL_SCHEMA,
    TRIALS,
    class_rows,
    class_state_rows,
    epoch_rows,
    eval_rows,
    param_column,
    trials_schema,
)
from hamsweep.results.writer import (  # noqa: F401
    COVERED_GRACE_S,
    FLUSH_S,
    FRESH_KEYS,
    LIVE_PARTS,
    BufferedWriter,
    PartWriter,
    _delete_covered,
    _distinct,
    _fold,
    compact,
    compact_live,
    replace_table,
)

__all__ = [
    "CLASSES",
    "CLASS_STATE",
    "CONFIRM",
    "CONFIRM_CLASSES",
    "EPOCHS",
    "SCHEMA_VERSION",
    "TRIALS",
    "BufferedWriter",
    "PartWriter",
    "check_schema",
    "class_rows",
    "class_state_rows",
    "compact",
    "compact_live",
    "connect",
    "device_label",
    "epoch_rows",
    "eval_rows",
    "parts",
    "read_pandas",
    "read_table",
    "replace_table",
    "retrying",
    "tables",
    "trials_schema",
]
