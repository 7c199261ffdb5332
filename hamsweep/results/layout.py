"""How a results folder lies on disk: one sub-folder per table (``trials/``, ``epochs/``,
``classes/``), each a set of Parquet part files, and how one part is written.

A part is written to a temporary name and renamed into place, so a reader never sees a
half-written file; a part written twice (an epoch re-run after a crash) is harmless because
readers keep the newest row of each key (``hamsweep.results.read``). A part is named when it is
written, ``part-<stem>.parquet`` (``<stem>``: its time and pid; ``part-<stem>.fresh.parquet`` for a
*fresh* part, none of whose keys was on disk yet). A compaction (``hamsweep.results.writer``) folds
the parts into one *base* part, ``part-<stem>.base-<n>.parquet``, named after the newest part it
holds: ``parts`` tells the newest base, the parts newer than it, and the ones it covers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hamsweep.results.schema import SCHEMAS

__all__ = [
    "PART_GLOB",
    "Parts",
    "parts",
    "tables",
]


PART_GLOB = "part-*.parquet"
_BASE = ".base-"  # in a base part's name: part-<stem>.base-<n>.parquet
_FRESH = ".fresh"  # in a fresh part's name: part-<stem>.fresh.parquet (PartWriter.append)


def _write_part(folder: Path, data: pa.Table, stem: str | None = None, fresh: bool = False) -> Path:
    """``data`` as a new part of ``folder``: a flush part named by the time now (readers keep the
    row of the newest part when a key repeats; ``fresh``: see ``PartWriter.append``) or, with
    ``stem``, a base covering the parts up to it."""
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time_ns()
    mark = _FRESH if fresh else ""
    name = (
        f"part-{now:020d}-{os.getpid()}{mark}.parquet"
        if stem is None
        else f"part-{stem}{_BASE}{now:020d}.parquet"
    )
    tmp = folder / f".{name}.tmp"
    pq.write_table(data, tmp)
    os.replace(tmp, folder / name)
    return folder / name


def _stem(part: Path) -> str:
    """'part-<time>-<pid>[.base-<n>].parquet' -> '<time>-<pid>'; stems sort as
    the parts were written."""
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
    recent = sorted(
        (p for p in found if _BASE not in p.name and _stem(p) > edge), key=lambda p: p.name
    )
    return Parts(base, recent, [p for p in found if p != base and p not in recent])


def _has_parts(root: Path, table: str) -> bool:
    return any((Path(root) / table).glob(PART_GLOB))


def tables(root: Path) -> list[str]:
    """The tables with at least one part under ``root``."""
    return [t for t in SCHEMAS if _has_parts(root, t)]
