"""``conftest.matches_golden``, the check of every golden file: it fails on a difference, showing
it, and HAMSWEEP_GOLDEN=update writes the file but fails too, so that an update is never a pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import matches_golden


def test_the_same_text_passes_and_another_fails_with_its_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HAMSWEEP_GOLDEN", raising=False)
    golden = tmp_path / "x.sbatch"
    golden.write_text("#SBATCH --nodes=2\n#SBATCH --time=60\n")
    matches_golden(golden, "#SBATCH --nodes=2\n#SBATCH --time=60\n")
    with pytest.raises(AssertionError) as err:
        matches_golden(golden, "#SBATCH --nodes=4\n#SBATCH --time=60\n")
    assert "-#SBATCH --nodes=2" in str(err.value) and "+#SBATCH --nodes=4" in str(err.value)
    with pytest.raises(AssertionError, match="no golden file"):
        matches_golden(tmp_path / "missing.sbatch", "text")


def test_update_writes_the_file_and_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAMSWEEP_GOLDEN", "update")
    golden = tmp_path / "x.sbatch"
    golden.write_text("old\n")
    with pytest.raises(pytest.fail.Exception, match=r"wrote .*x\.sbatch \(changed\)"):
        matches_golden(golden, "new\n")
    assert golden.read_text() == "new\n"
    with pytest.raises(pytest.fail.Exception, match=r"\(unchanged\)"):
        matches_golden(golden, "new\n")
    monkeypatch.delenv("HAMSWEEP_GOLDEN")
    matches_golden(golden, "new\n")  # the rerun without it passes on the written file
