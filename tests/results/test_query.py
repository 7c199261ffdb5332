"""`hamsweep query`: SQL over a run folder's Parquet, through the real CLI."""

from __future__ import annotations

import csv
import io
import json

from conftest import epoch_record
from test_cli import _assert_user_error, hamsweep

from hamsweep.results.schema import CLASSES, EPOCHS, class_rows, epoch_rows
from hamsweep.results.writer import PartWriter


def _folder(tmp_path):
    w = PartWriter(tmp_path)
    # epoch 2 twice: the newest row counts
    for epoch, correct in [(1, (3, 1)), (2, (4, 2)), (2, (4, 3))]:
        rec = epoch_record(epoch, correct)
        w.append(EPOCHS, epoch_rows("t", rec, 0.2))
        w.append(CLASSES, class_rows("t", rec, ["cat", "dog"]))
    return tmp_path


WORST_PER_EPOCH = (
    "SELECT epoch, min(correct / n) AS worst FROM classes WHERE attack = 'pgd20' "
    "GROUP BY epoch ORDER BY epoch"
)


def test_query_formats(tmp_path):
    folder = _folder(tmp_path)
    as_json = hamsweep("query", folder, WORST_PER_EPOCH, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [{"epoch": 1, "worst": 0.25}, {"epoch": 2, "worst": 0.75}]
    as_csv = hamsweep(
        "query", folder, "SELECT epoch, robust_worst FROM epochs ORDER BY epoch", "--format", "csv"
    )
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [
        ["epoch", "robust_worst"],
        ["1", "0.25"],
        ["2", "0.75"],
    ]
    table = hamsweep("query", folder, WORST_PER_EPOCH)
    assert "worst" in table.stdout and "0.75" in table.stdout


def test_query_errors_are_one_line(tmp_path):
    folder = _folder(tmp_path / "run")
    _assert_user_error(
        hamsweep("query", folder, "SELEC 1"),
        r"SQL: Parser Error: .* \(views: class_state, classes, confirm, confirm_classes, epochs, "
        r"trials\)",
    )
    _assert_user_error(
        hamsweep("query", folder, "SELECT * FROM nosuch"), r"SQL: Catalog Error: .*nosuch"
    )
    # a single run has no sweep trials: the view is there, with its columns, and empty
    empty = hamsweep(
        "query",
        folder,
        "SELECT count(*) AS n, min(best_objective) AS b FROM trials",
        "--format",
        "csv",
    )
    assert empty.returncode == 0 and empty.stdout.split() == ["n,b", "0,"], empty.stderr
    _assert_user_error(
        hamsweep("query", tmp_path / "empty", "SELECT 1"), r"holds no results tables"
    )
    _assert_user_error(
        hamsweep("query", folder, "SELECT 1", "--format", "xml"), r"--format: unknown format 'xml'"
    )


def test_a_plain_query_starts_without_typer_and_answers_as_the_typer_command(tmp_path):
    """``hamsweep query DIR SQL [--format F]`` skips typer's start-up (hamsweep._entry); every other
    form goes through hamsweep.cli, and both print the same."""
    import subprocess
    import sys

    folder = _folder(tmp_path)
    probe = (
        "import sys; sys.argv = ['hamsweep'] + sys.argv[1:]; "
        "from hamsweep._entry import main; main(); "
        "print('typer' in sys.modules, 'pydantic' in sys.modules, 'torch' in sys.modules)"
    )
    for fmt in ("csv", "json", "table"):
        fast = subprocess.run(
            [sys.executable, "-c", probe, "query", str(folder), WORST_PER_EPOCH, f"--format={fmt}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert fast.endswith("False False False\n")
        typed = subprocess.run(
            [
                sys.executable,
                "-m",
                "hamsweep.cli",
                "query",
                str(folder),
                WORST_PER_EPOCH,
                "--format",
                fmt,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert fast.removesuffix("False False False\n") == typed
    slow = subprocess.run(
        [sys.executable, "-c", probe, "query", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "Usage: hamsweep query" in slow  # typer's help


def test_duplicate_names_are_renamed_as_duckdb_names_them_in_every_format(tmp_path):
    """Two columns of one name: each value stays under its own header, in every format, and the
    names are made unique as DuckDB itself names them (``SELECT * FROM (...)``):
    a, a_1, A_2, a_1_1."""
    from hamsweep.results.query import unique_names
    from hamsweep.results.read import connect

    folder = _folder(tmp_path)
    sql = "SELECT 1 AS a, 2 AS a, 3 AS A, 4 AS a_1"
    ducks = connect(folder).sql(f"SELECT * FROM ({sql})").columns
    assert ducks == ["a", "a_1", "A_2", "a_1_1"] == unique_names(["a", "a", "A", "a_1"])
    as_json = hamsweep("query", folder, sql, "--format", "json")
    assert json.loads(as_json.stdout) == [{"a": 1, "a_1": 2, "A_2": 3, "a_1_1": 4}], as_json.stderr
    as_csv = hamsweep("query", folder, sql, "--format", "csv")
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [ducks, ["1", "2", "3", "4"]]
    lines = hamsweep("query", folder, sql).stdout.splitlines()
    header, row = (
        next(ln for ln in lines if "a_1" in ln),
        next(ln for ln in lines if "1" in ln and "a" not in ln),
    )
    assert [c.strip() for c in header.split("┃")[1:-1]] == ducks and [
        c.strip() for c in row.split("│")[1:-1]
    ] == ["1", "2", "3", "4"]


def test_a_column_selected_twice_keeps_every_value_in_its_place(tmp_path):
    """``SELECT epoch, *``: the issue's case, every value after the duplicate once
    shifted by one."""
    folder = _folder(tmp_path)
    sql = "SELECT attack, correct, * FROM classes ORDER BY epoch, attack, class_id"
    expected = hamsweep(
        "query",
        folder,
        "SELECT * FROM classes ORDER BY epoch, attack, class_id",
        "--format",
        "json",
    )
    rows = json.loads(hamsweep("query", folder, sql, "--format", "json").stdout)
    for row, plain in zip(rows, json.loads(expected.stdout), strict=True):
        assert row == {
            "attack": plain["attack"],
            "correct": plain["correct"],
            "attack_1": plain["attack"],
            "correct_1": plain["correct"],
            **{k: v for k, v in plain.items() if k not in ("attack", "correct")},
        }
    as_csv = list(csv.reader(io.StringIO(hamsweep("query", folder, sql, "--format", "csv").stdout)))
    assert [dict(zip(as_csv[0], r, strict=True)) for r in as_csv[1:]] == [
        {k: "" if v is None else str(v) for k, v in r.items()} for r in rows
    ]
    table = hamsweep("query", folder, sql).stdout.splitlines()
    header = next(ln for ln in table if "attack_1" in ln)
    names = [c.strip() for c in header.split("┃")[1:-1]]
    cells = [[c.strip() for c in ln.split("│")[1:-1]] for ln in table if ln.startswith("│")]
    assert names == as_csv[0] and len(cells) == len(rows)
    for cell, row in zip(cells, rows, strict=True):
        assert (
            cell[names.index("correct_1")] == str(row["correct"])
            and cell[names.index("attack_1")] == row["attack"]
        )
