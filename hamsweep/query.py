"""``hamsweep query DIR "SQL"``: DuckDB over a results folder, printed as a table, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa

from hamsweep.errors import SpecError
from hamsweep.results import SCHEMAS, connect, retrying, tables

__all__ = ["FORMATS", "query", "render", "run"]

FORMATS = ("table", "csv", "json")


def run(folder: Path | str, sql: str, fmt: str) -> None:
    """``hamsweep query``: print ``sql``'s answer over ``folder`` in ``fmt``."""
    if fmt not in FORMATS:
        raise SpecError("--format", f"unknown format {fmt!r}; valid formats are {', '.join(FORMATS)}")
    print(render(query(Path(folder), sql), fmt))


def query(root: Path, sql: str) -> pa.Table:
    """Run ``sql`` with one view per table of ``root`` (``epochs``, ``classes``); one-line errors."""
    import duckdb

    root = Path(root)
    if not tables(root):
        raise SpecError(str(root), f"holds no results tables ({', '.join(SCHEMAS)}); pass a run folder")
    try:
        return retrying(lambda: connect(root).sql(sql).to_arrow_table())  # a live sweep compacts under us
    except duckdb.Error as err:
        message = " ".join(str(err).split())  # DuckDB's messages span lines
        raise SpecError("SQL", f"{message} (views: {', '.join(sorted(SCHEMAS))})") from None
    except AttributeError:  # a statement with no result, e.g. CREATE
        raise SpecError("SQL", "the statement returns no rows; pass a SELECT") from None


def render(table: pa.Table, fmt: str) -> str:
    """``table`` as text in ``fmt`` (one of FORMATS)."""
    rows = table.to_pylist()
    if fmt == "json":
        return json.dumps([{k: _json_value(v) for k, v in r.items()} for r in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(table.column_names)
        writer.writerows([r[c] for c in table.column_names] for r in rows)
        return out.getvalue().rstrip("\n")
    return _rich_table(table)


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _rich_table(table: pa.Table) -> str:
    from rich.console import Console
    from rich.table import Table

    t = Table(*table.column_names)
    for row in table.to_pylist():
        t.add_row(*("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(t)
    return console.export_text().rstrip("\n")
