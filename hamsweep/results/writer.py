"""The single writer of a results folder, and its compaction.

There is one writer per folder (the sweep's driver): ``PartWriter`` appends rows as parts
(``hamsweep.results.layout``); ``BufferedWriter`` buffers them and writes one part per table every
``FLUSH_S`` seconds, marking a part *fresh* when none of its keys is on disk yet (a restarted
trial's epochs written again are not), so that readers can skip deduplicating it.

Compaction (``compact``; ``compact_live`` while a sweep runs) folds the parts into one *base* part,
named after the newest part it holds. A compaction killed at any moment leaves either the old base
and its parts or the new base beside parts it covers (the next compaction deletes them). While the
sweep runs, a covered part is deleted ``COVERED_GRACE_S`` after its base was written, so that a
reader that listed it first still finds it; the end's ``compact`` deletes at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from hamsweep.results.layout import _BASE, PART_GLOB, _has_parts, _stem, _write_part, parts
from hamsweep.results.read import _files, read_table, retrying
from hamsweep.results.schema import CLASS_STATE, CLASSES, EPOCHS, KEYS, SCHEMAS, TRIALS

__all__ = [
    "COVERED_GRACE_S",
    "FLUSH_S",
    "FRESH_KEYS",
    "LIVE_PARTS",
    "BufferedWriter",
    "PartWriter",
    "compact",
    "compact_live",
    "replace_table",
]


# the columns by which BufferedWriter tells a fresh part: rows of one
# epoch's evaluation come together
FRESH_KEYS = {
    EPOCHS: ("trial", "epoch"),
    CLASSES: ("trial", "epoch", "split", "attack"),
    CLASS_STATE: ("trial", "epoch"),
}
FLUSH_S = 5.0  # BufferedWriter writes its rows at least this often, in seconds
LIVE_PARTS = 32  # compact_live folds a table's parts into its base once this many are newer than it
# compact_live deletes a part this long after a base covers it: a reader that listed it has read it
COVERED_GRACE_S = 10.0


class PartWriter:
    """Appends rows to a results folder as atomically renamed Parquet parts."""

    def __init__(self, root: Path, schemas: Mapping[str, pa.Schema] | None = None) -> None:
        self.root = Path(root)
        self.schemas = {**SCHEMAS, **(schemas or {})}  # e.g. this sweep's trials schema

    def append(
        self, table: str, rows: Iterable[Mapping[str, Any]], fresh: bool = False
    ) -> Path | None:
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
    After a flush, a table with ``live_parts`` parts newer than its base is
    compacted (``compact_live``)."""

    def __init__(
        self, writer: PartWriter, interval_s: float = FLUSH_S, live_parts: int = LIVE_PARTS
    ) -> None:
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


def compact(root: Path, keep_trials: set[str] | None = None) -> None:
    """Fold each table's parts into one base part (see the module docstring); with ``keep_trials``,
    rows of any other trial are dropped."""
    for table in SCHEMAS:
        found = parts(root, table)
        if found.live and (found.recent or found.covered or keep_trials is not None):
            _fold(root, table, keep_trials)
            _delete_covered(root, table, 0)


def compact_live(
    root: Path,
    tables: Iterable[str] = (TRIALS, EPOCHS, CLASSES, CLASS_STATE),
    limit: int = LIVE_PARTS,
    grace_s: float = COVERED_GRACE_S,
) -> list[str]:
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
    bases = [
        (p, _stem(p), int(p.name.split(_BASE, 1)[1].split(".")[0]))
        for p in (Path(root) / table).glob(f"part-*{_BASE}*")
    ]
    settled = [
        (stem, p.name) for p, stem, written in bases if written <= time.time_ns() - grace_s * 1e9
    ]
    if not settled:
        return
    edge = max(settled)  # every part up to this base's stem, and every older base, is in it
    for path in parts(root, table).covered:
        if (_stem(path), path.name) < edge if _BASE in path.name else _stem(path) <= edge[0]:
            path.unlink(missing_ok=True)


def replace_table(root: Path, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """``table`` becomes exactly ``rows`` (a derived table, recomputed whole): the new part is
    renamed into place first, then the old parts go, so a crash leaves old
    or new rows, never none."""
    old = sorted((Path(root) / table).glob(PART_GLOB))
    _write_part(Path(root) / table, pa.Table.from_pylist(list(rows), schema=SCHEMAS[table]))
    for path in old:
        path.unlink(missing_ok=True)
