"""`hamsweep query`: SQL over a run folder's Parquet, through the real CLI."""

from __future__ import annotations

import csv
import io
import json

from test_cli import _assert_user_error, hamsweep
from test_results import _record

from hamsweep.results import CLASSES, EPOCHS, PartWriter, class_rows, epoch_rows


def _folder(tmp_path):
    w = PartWriter(tmp_path)
    for epoch, correct in [(1, (3, 1)), (2, (4, 2)), (2, (4, 3))]:  # epoch 2 twice: the newest row counts
        rec = _record(epoch, correct)
        w.append(EPOCHS, epoch_rows("t", rec, 0.2))
        w.append(CLASSES, class_rows("t", rec, ["cat", "dog"]))
    return tmp_path


WORST_PER_EPOCH = "SELECT epoch, min(correct / n) AS worst FROM classes WHERE attack = 'pgd20' GROUP BY epoch ORDER BY epoch"


def test_query_formats(tmp_path):
    folder = _folder(tmp_path)
    as_json = hamsweep("query", folder, WORST_PER_EPOCH, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [{"epoch": 1, "worst": 0.25}, {"epoch": 2, "worst": 0.75}]
    as_csv = hamsweep("query", folder, "SELECT epoch, robust_worst FROM epochs ORDER BY epoch", "--format", "csv")
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [["epoch", "robust_worst"], ["1", "0.25"], ["2", "0.75"]]
    table = hamsweep("query", folder, WORST_PER_EPOCH)
    assert "worst" in table.stdout and "0.75" in table.stdout


def test_query_errors_are_one_line(tmp_path):
    folder = _folder(tmp_path / "run")
    _assert_user_error(hamsweep("query", folder, "SELEC 1"), r"SQL: Parser Error: .* \(views: classes, confirm, confirm_classes, epochs, trials\)")
    _assert_user_error(hamsweep("query", folder, "SELECT * FROM nosuch"), r"SQL: Catalog Error: .*nosuch")
    # a single run has no sweep trials: the view is there, with its columns, and empty
    empty = hamsweep("query", folder, "SELECT count(*) AS n, min(best_objective) AS b FROM trials", "--format", "csv")
    assert empty.returncode == 0 and empty.stdout.split() == ["n,b", "0,"], empty.stderr
    _assert_user_error(hamsweep("query", tmp_path / "empty", "SELECT 1"), r"holds no results tables")
    _assert_user_error(hamsweep("query", folder, "SELECT 1", "--format", "xml"), r"--format: unknown format 'xml'")


def test_a_plain_query_starts_without_typer_and_answers_as_the_typer_command(tmp_path):
    """``hamsweep query DIR SQL [--format F]`` skips typer's start-up (hamsweep._entry); every other
    form goes through hamsweep.cli, and both print the same."""
    import subprocess
    import sys

    folder = _folder(tmp_path)
    probe = ("import sys; sys.argv = ['hamsweep'] + sys.argv[1:]; from hamsweep._entry import main; main(); "
             "print('typer' in sys.modules, 'pydantic' in sys.modules, 'torch' in sys.modules)")
    for fmt in ("csv", "json", "table"):
        fast = subprocess.run([sys.executable, "-c", probe, "query", str(folder), WORST_PER_EPOCH, f"--format={fmt}"],
                              capture_output=True, text=True, check=True).stdout
        assert fast.endswith("False False False\n")
        typed = subprocess.run([sys.executable, "-m", "hamsweep.cli", "query", str(folder), WORST_PER_EPOCH, "--format", fmt],
                               capture_output=True, text=True, check=True).stdout
        assert fast.removesuffix("False False False\n") == typed
    slow = subprocess.run([sys.executable, "-c", probe, "query", "--help"], capture_output=True, text=True, check=True).stdout
    assert "Usage: hamsweep query" in slow  # typer's help
