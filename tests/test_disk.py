"""Disk space before a sweep starts (issue 13, part 2): a folder on a small tmpfs the test mounts
itself is refused in one line naming the path, its free space and what the sweep needs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import hamsweep, write_spec

from hamsweep.spec import load_spec
from hamsweep.sweep import disk_needed


@pytest.fixture()
def small_disk(tmp_path: Path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.fail("mounting a 4 MB tmpfs failed: the disk tests need root (make test runs as root)", pytrace=False)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_sweep_that_does_not_fit_its_disk_is_refused_before_anything_starts(small_disk, tmp_path):
    spec = write_spec(tmp_path / "big.yaml", model={"name": "small_cnn", "width": 64})
    need = disk_needed(load_spec(spec))
    assert need > 4 * 1024**2  # the checkpoints of this model do not fit in 4 MB
    proc = hamsweep("run", str(spec), "--out", str(small_disk / "out"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"--out: {small_disk / 'out'}:" in proc.stderr and "free of" in proc.stderr and "95% full" in proc.stderr
    assert not any(small_disk.iterdir())  # nothing written


def test_a_sweep_that_fits_runs_there(small_disk, tmp_path):
    spec = write_spec(tmp_path / "tiny.yaml", search={"num_samples": 1, "max_concurrent": 1, "params": {}}, confirm={"top_k": 0},
                      train={"epochs": 1}, ham={"warmup_epochs": 0})
    assert disk_needed(load_spec(spec)) < 1024**2
    assert "disk: about" in hamsweep("validate", str(spec)).stdout
    proc = hamsweep("run", str(spec), "--out", str(small_disk / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
