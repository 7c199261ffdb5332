"""Damaged sweep folders (issue 13, part 3): a truncated Parquet part, a journal ending in half a
line, a corrupt newest checkpoint are set aside (renamed, said so) and the sweep resumes from its
last good state. The folder is a copy of ``conftest.confirmed_sweep``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import hamsweep

from hamsweep.core.train import LAST
from hamsweep.results import store as results
from hamsweep.results.study import JOURNAL, open_study
from hamsweep.sweep.repair import DAMAGED, set_aside_damage
from hamsweep.sweep.trial import HISTORY, restore_checkpoint


@pytest.fixture()
def folder(confirmed_sweep: tuple[Path, subprocess.CompletedProcess], tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(confirmed_sweep[0], out, ignore=shutil.ignore_patterns("report"))
    return out


def _truncated_part(out: Path, table: str) -> Path:
    """A newer part of ``table`` cut in half, as a disk that filled up under a copy leaves it."""
    (part,) = sorted((out / table).glob("part-*.parquet"))
    bad = part.with_name("part-99999999999999999999-1.parquet")
    bad.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    return bad


def test_a_clean_folder_has_nothing_to_set_aside(folder):
    assert set_aside_damage(folder, "ray") == []


def test_a_truncated_part_is_set_aside_and_the_table_reads(folder):
    rows = results.read_table(folder, results.TRIALS).num_rows
    bad = _truncated_part(folder, results.TRIALS)
    with pytest.raises(Exception):  # noqa: B017 - what a reader meets without the repair
        pq.read_table(bad)
    (line,) = set_aside_damage(folder, "ray")
    assert (
        "damaged Parquet part of trials" in line
        and not bad.exists()
        and bad.with_name(bad.name + DAMAGED).exists()
    )
    assert results.read_table(folder, results.TRIALS).num_rows == rows


def test_an_unfinished_temporary_part_is_removed(folder):
    tmp = folder / results.EPOCHS / ".part-00000000000000000001-1.parquet.tmp"
    tmp.write_bytes(b"PAR1 cut short by a full disk")
    (line,) = set_aside_damage(folder, "ray")
    assert "removed 1 unfinished temporary part file(s) of epochs" in line and not tmp.exists()


def test_half_a_journal_line_is_cut_and_the_whole_file_kept(folder):
    before = [(t.number, t.state.name) for t in open_study(folder).trials]
    journal = folder / JOURNAL
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "cut-sh')
    (line,) = set_aside_damage(folder, "ray")
    assert "damaged Optuna journal" in line and (
        folder / f"{JOURNAL}{DAMAGED}-1"
    ).read_bytes().startswith(whole)
    assert (
        journal.read_bytes() == whole
        and [(t.number, t.state.name) for t in open_study(folder).trials] == before
    )


def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_previous_one_restored(folder, tmp_path):
    trials = results.read_table(folder, results.TRIALS).to_pylist()
    row = next(r for r in trials if r["role"] == "baseline")  # PGD-AT on a confirm seed
    trial_dir = folder / "ray" / f"trial_{row['trial']}"
    complete = sorted(f for f in trial_dir.glob("checkpoint_*") if (f / LAST).is_file())
    assert len(complete) >= 2  # prune_checkpoints keeps the two newest with their weights
    (complete[-1] / LAST).write_bytes(b"\x80 half a pickle")
    # as a killed driver leaves it: not ended
    results.PartWriter(
        folder, {results.TRIALS: results.read_table(folder, results.TRIALS).schema}
    ).append(results.TRIALS, [{**row, "status": "running"}])
    (line,) = set_aside_damage(folder, "ray")
    assert "damaged checkpoint" in line and (complete[-1] / f"{LAST}{DAMAGED}").exists()
    from ray.tune import Checkpoint

    # Tune hands the damaged newest one
    restore_checkpoint(tmp_path / "work", Checkpoint.from_directory(str(complete[-1])))
    restored = torch.load(
        tmp_path / "work" / "checkpoint" / LAST, map_location="cpu", weights_only=False
    )
    assert (
        restored["epoch"]
        == torch.load(complete[-2] / LAST, map_location="cpu", weights_only=False)["epoch"]
    )


def test_a_checkpoint_without_its_history_is_not_continued_from(tmp_path):
    """A kill while Ray copies a checkpoint can leave last.pt without history.json: continuing from
    it would lose the epochs' rows the killed driver had not written, so the trial starts over."""
    from ray.tune import Checkpoint

    first = tmp_path / "trial_x" / "checkpoint_000000"
    first.mkdir(parents=True)
    torch.save({"epoch": 1}, first / LAST)  # no history.json: the copy was cut short
    restore_checkpoint(tmp_path / "work", Checkpoint.from_directory(str(first)))
    assert (tmp_path / "work").is_dir() and not (tmp_path / "work" / "checkpoint").exists()
    (first / HISTORY).write_text('[{"epoch": 1}]')
    restore_checkpoint(tmp_path / "work", Checkpoint.from_directory(str(first)))
    assert torch.load(tmp_path / "work" / "checkpoint" / LAST, weights_only=False) == {"epoch": 1}


def test_resume_of_a_damaged_folder_says_what_it_set_aside_and_finishes(folder):
    rows = results.read_table(folder, results.TRIALS).num_rows
    _truncated_part(folder, results.EPOCHS)
    (folder / JOURNAL).write_bytes((folder / JOURNAL).read_bytes() + b'{"op_code": 5, "wor')
    proc = hamsweep("resume", str(folder))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "set aside a damaged Parquet part of epochs" in proc.stderr
        and "set aside a damaged Optuna journal" in proc.stderr
    )
    assert results.read_table(folder, results.TRIALS).num_rows == rows
    assert "confirmed on the test split" in proc.stdout
