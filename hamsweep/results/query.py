"""``hamsweep query DIR "SQL"``: DuckDB over a results folder, printed as a table, CSV or JSON.

Every format is rendered by column position, never through per-row dicts, so a value always sits
under its own header. Two result columns can share a name (``SELECT 1 AS a, 2 AS a``, or
``SELECT config, * FROM confirm_classes``); a JSON object cannot hold two equal keys, so in all
three formats the names are made unique the way DuckDB names them when such a result becomes a table
(``SELECT * FROM (...)``, ``CREATE TABLE ... AS``, ``.df()``): the first keeps its name, the next
get ``_1``, ``_2``, ... compared case-insensitively, skipping names already taken (``a, a, A, a_1``
-> ``a, a_1, A_2, a_1_1``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa

from hamsweep.errors import SpecError
from hamsweep.results.layout import tables
from hamsweep.results.read import connect, retrying
from hamsweep.results.schema import SCHEMAS

__all__ = ["FORMATS", "query", "render", "run", "unique_names"]

FORMATS = ("table", "csv", "json")


def run(folder: Path | str, sql: str, fmt: str) -> None:
    """``hamsweep query``: print ``sql``'s answer over ``folder`` in ``fmt``."""
    if fmt not in FORMATS:
        raise SpecError(
            "--format", f"unknown format {fmt!r}; valid formats are {', '.join(FORMATS)}"
        )
    print(render(query(Path(folder), sql), fmt))


def query(root: Path, sql: str) -> pa.Table:
    """Run ``sql`` with one view per table of ``root`` (``epochs``,
    ``classes``); one-line errors."""
    import duckdb

    root = Path(root)
    if not tables(root):
        raise SpecError(
            str(root), f"holds no results tables ({', '.join(SCHEMAS)}); pass a run folder"
        )
    try:
        # a live sweep compacts under us
        return retrying(lambda: connect(root).sql(sql).to_arrow_table())
    except duckdb.Error as err:
        message = " ".join(str(err).split())  # DuckDB's messages span lines
        raise SpecError("SQL", f"{message} (views: {', '.join(sorted(SCHEMAS))})") from None
    except AttributeError:  # a statement with no result, e.g. CREATE
        raise SpecError("SQL", "the statement returns no rows; pass a SELECT") from None


def unique_names(names: list[str]) -> list[str]:
    """``names`` with duplicates renamed as DuckDB renames them (QueryResult::DeduplicateColumns):
    ``a, a, A, a_1`` -> ``a, a_1, A_2, a_1_1``; DuckDB compares names case-insensitively."""
    seen: dict[
        str, int
    ] = {}  # lower-cased name -> how many times its base has been suffixed so far
    out = []
    for name in names:
        low = name.lower()
        if low in seen:
            n = seen[low]
            while f"{low}_{n}" in seen:
                n += 1
            seen[low] = n
            name = f"{name}_{n}"
        seen.setdefault(name.lower(), 1)
        out.append(name)
    return out


def render(table: pa.Table, fmt: str) -> str:
    """``table`` as text in ``fmt`` (one of FORMATS), its columns by position under unique names."""
    names = unique_names(table.column_names)
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    rows = list(zip(*columns, strict=True)) if columns else []
    if fmt == "json":
        return json.dumps(
            [dict(zip(names, map(_json_value, row), strict=True)) for row in rows], indent=2
        )
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    return _rich_table(names, rows)


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _cell(v: Any) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _rich_table(names: list[str], rows: list[tuple[Any, ...]]) -> str:
    from rich.console import Console
    from rich.table import Table

    t = Table(*names)
    for row in rows:
        t.add_row(*map(_cell, row))
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(t)
    return console.export_text().rstrip("\n")
