"""Numbers the terminal cuts: ``results``, ``status`` and the live dashboard of a sweep folder drawn
at 80, 120 and 160 columns, counting the number cells shown cut (``0.494`` -> ``0.4…``) or wrapped.

    .venv/bin/python bench/table_widths.py DIR [--widths 80 120 160] [--show 3]

DIR is any sweep folder (a copy of a finished one: nothing is written). The tables are built by the
code the commands run (``tables.confirmed_table``/``results_table``, ``launch.status_frame``,
``dashboard.render`` of DIR/state.json) and measured by ``tests/cut_cells.py``: every cell holding a
number, laid out at the width rich gives its column. Prints one line per view and width: number
cells, cut (shortened, folded, or past the terminal's right edge), of those past the edge, wrapped
whole over lines, and up to ``--show`` cut cells as 'column: text -> shown'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root: hamsweep and tests.cut_cells

from tests.cut_cells import number_cells  # noqa: E402


def views(folder: Path) -> dict[str, Any]:
    """view name -> renderable, as the commands draw them; a view the folder
    cannot draw is left out."""
    from rich.console import Group

    from hamsweep import rundir
    from hamsweep.launch import status_frame
    from hamsweep.results import store
    from hamsweep.results.tables import confirmed_table, results_table
    from hamsweep.spec import SweepSpec, validate
    from hamsweep.sweep.dashboard import STATE_FILE, render, state_from_json

    spec = validate(SweepSpec, rundir.read_spec(folder))
    out: dict[str, Any] = {}
    if store.CONFIRM in store.tables(folder):
        out["results: confirmed"] = confirmed_table(folder, spec)
    out["results: ranking"] = results_table(folder, spec)
    if (folder / STATE_FILE).is_file():
        out["dashboard"] = render(state_from_json((folder / STATE_FILE).read_text()))
    out["status"] = Group(status_frame(folder)[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--widths", type=int, nargs="+", default=[80, 120, 160])
    parser.add_argument("--show", type=int, default=3, help="cut cells to print per view and width")
    args = parser.parse_args()
    drawn = views(args.folder)
    print(f"{'view':<20} {'width':>5} {'numbers':>7} {'cut':>4} {'past edge':>9} {'wrapped':>7}")
    for name, renderable in drawn.items():
        for width in args.widths:
            cells = number_cells(renderable, width)
            cut = [c for c in cells if c.cut]
            print(
                f"{name:<20} {width:>5} {len(cells):>7} {len(cut):>4} "
                f"{sum(c.cropped for c in cut):>9} {sum(c.wrapped for c in cells):>7}"
            )
            for c in cut[: args.show]:
                print(f"{'':<27}{c.column}: {c.text!r} -> {c.shown!r}")


if __name__ == "__main__":
    main()
