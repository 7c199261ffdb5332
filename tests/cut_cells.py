"""Numbers a terminal of a given width cuts: every table cell of a rich renderable, drawn at the
width rich gives its column, compared with the cell's text.

Used by ``tests/results/test_widths.py`` and ``bench/table_widths.py`` (which imports it with the
repo root on sys.path). It lays the cells out exactly as ``rich.table.Table`` does (its column
widths, its padded cells, the column's ``no_wrap`` and ``overflow``), through two of its private
methods (``_calculate_column_widths``, ``_get_cells``; rich pinned in constraints.txt).

A number is a whitespace-separated word holding a digit and nothing but digits and the signs that
numbers are written with here (``0.494``, ``56.3±2.4``, ``[-0.3,``, ``2/6``, ``#12``, ``1e-04``,
``0:01:23``). A cell's number is *cut* when it does not appear whole among the words drawn
(``0.4…``, or folded over two lines) or its column runs past the terminal's right edge (*cropped*);
a number cell is *wrapped* when its words are whole but span lines.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

_NUMBER_CHARS = set("0123456789.,+-−±%/[]()#:e×")


@dataclass(frozen=True)
class Cell:
    table: str  # the table's title, or its column headers when it has none
    column: str  # the column's header
    text: str  # what the cell holds
    shown: str  # what the terminal shows, its lines joined by " | "
    cut: bool  # a number of the cell is not shown whole
    # ... because the table runs past the terminal's right edge (else it was shortened or folded)
    cropped: bool
    wrapped: bool  # its numbers are whole but it spans lines


def is_number(word: str) -> bool:
    return any(c.isdigit() for c in word) and set(word) <= _NUMBER_CHARS


def number_cells(renderable: RenderableType, width: int) -> list[Cell]:
    """Every table cell holding a number (headers aside) in ``renderable``
    drawn ``width`` columns wide."""
    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    return [c for c in _walk(console, renderable, width) if any(map(is_number, c.text.split()))]


def _walk(console: Console, renderable: RenderableType, width: int) -> list[Cell]:
    if isinstance(renderable, Group):
        return [c for r in renderable.renderables for c in _walk(console, r, width)]
    if isinstance(renderable, Panel):
        _, right, _, left = Padding.unpack(renderable.padding)
        # two border columns, then the padding
        return _walk(console, renderable.renderable, width - 2 - left - right)
    if isinstance(renderable, Table):
        return _table_cells(console, renderable, width)
    return []


def _plain(console: Console, cell: RenderableType) -> str:
    if isinstance(cell, Text):
        return cell.plain
    return console.render_str(cell).plain if isinstance(cell, str) else ""


def _table_cells(console: Console, table: Table, width: int) -> list[Cell]:
    options = console.options.update_width(width)
    widths = table._calculate_column_widths(
        console, options.update_width((table.width or width) - table._extra_width)
    )
    headers = [_plain(console, c.header) for c in table.columns]
    name = _plain(console, table.title) if table.title else " ".join(headers)
    out = []
    # where each column ends: a table wider than the terminal is cropped at its right edge
    border = 1 if table.box else 0
    ends = [
        border * table.show_edge + sum(widths[: i + 1]) + border * i for i in range(len(widths))
    ]
    for index, (column, col_width) in enumerate(zip(table.columns, widths, strict=True)):
        cells = list(table._get_cells(console, index, column))[int(table.show_header) :][
            : len(column._cells)
        ]
        for raw, cell in zip(column._cells, cells, strict=True):
            render = options.update(
                width=col_width,
                justify=column.justify,
                no_wrap=column.no_wrap,
                overflow=column.overflow,
                height=None,
            )
            lines = [
                "".join(s.text for s in line).rstrip()
                for line in console.render_lines(cell.renderable, render)
            ]
            cropped = any(ends[index] - col_width + cell_len(ln) > width for ln in lines)
            lines = [ln.strip() for ln in lines if ln.strip()]
            text, words = _plain(console, raw), " ".join(lines).split()
            cut = cropped or any(w not in words for w in text.split() if is_number(w))
            out.append(
                Cell(
                    name,
                    headers[index],
                    text,
                    " | ".join(lines),
                    cut,
                    cropped,
                    not cut and len(lines) > 1,
                )
            )
    return out
